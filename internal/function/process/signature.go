package process

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Extensions of a task decision event. knfaascommand names the task, knfaasactor who decided;
// knfaasdecided and knfaassignature make the decision one only the tasks function can produce.
const (
	ExtCommand   = "knfaascommand"
	ExtActor     = "knfaasactor"
	ExtDecided   = "knfaasdecided"
	ExtSignature = "knfaassignature"
)

// Task decisions, as recorded in a task's state and signed.
const (
	DecisionCompleted = "completed"
	DecisionRejected  = "rejected"
)

// MinSigningKeyLen is the shortest signing key accepted (bytes): 32 random bytes, hex or not.
const MinSigningKeyLen = 32

// signatureVersion prefixes every signature and tags the signed message, so a later encoding
// can never be confused with this one.
const (
	signatureVersion = "v1"
	signatureDomain  = "knfaas/task-decision/v1"
)

// ErrForbidden wraps events that claim an authority they cannot prove: a task decision without a
// valid signature or not recorded by the tasks function, a deadline that functions/timer has not
// fired. Such an event never changes state; the process function answers 403.
var ErrForbidden = errors.New("forbidden")

// TaskDecision is what the tasks function signs and the engine verifies: who decided what, when,
// on which task.
type TaskDecision struct {
	// Task is the task id (the knfaascommand extension), "<instance>:<step>:<attempt>".
	Task string
	// Decision is DecisionCompleted or DecisionRejected (from the event type).
	Decision string
	// Actor is the deciding identity's subject (the knfaasactor extension).
	Actor string
	// At is when the decision was recorded, in unix milliseconds (the knfaasdecided extension).
	At int64
}

// Canonical is the signed message: netstrings (decimal byte length, ':', bytes, ',') of a
// domain tag and the four fields, so that no two different decisions encode alike.
func (d TaskDecision) Canonical() []byte {
	var b []byte
	for _, f := range []string{signatureDomain, d.Task, d.Decision, d.Actor, strconv.FormatInt(d.At, 10)} {
		b = strconv.AppendInt(b, int64(len(f)), 10)
		b = append(b, ':')
		b = append(b, f...)
		b = append(b, ',')
	}
	return b
}

// DecisionOf returns the decision a task event type carries, or "" for other types.
func DecisionOf(eventType string) string {
	switch eventType {
	case TypeTaskCompleted:
		return DecisionCompleted
	case TypeTaskRejected:
		return DecisionRejected
	}
	return ""
}

// SigningKeys sign task decisions with the current key and verify them against the current and
// the previous key, so a key can be rotated without refusing decisions signed just before.
type SigningKeys struct {
	keys [][]byte
}

// NewSigningKeys returns the keys; previous may be empty. Each key is used as its bytes and must
// be at least MinSigningKeyLen long.
func NewSigningKeys(current, previous string) (*SigningKeys, error) {
	k := &SigningKeys{}
	for _, v := range []struct{ name, key string }{{"current", current}, {"previous", previous}} {
		if v.key == "" && v.name == "previous" {
			continue
		}
		if len(v.key) < MinSigningKeyLen {
			return nil, fmt.Errorf("the %s signing key has %d bytes, want at least %d (generate one with: openssl rand -hex 32)", v.name, len(v.key), MinSigningKeyLen)
		}
		k.keys = append(k.keys, []byte(v.key))
	}
	return k, nil
}

func mac(key []byte, d TaskDecision) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(d.Canonical())
	return h.Sum(nil)
}

// Sign returns the knfaassignature value for d: "v1=" and the lowercase hex HMAC-SHA256 of
// d.Canonical() under the current key.
func (k *SigningKeys) Sign(d TaskDecision) string {
	return signatureVersion + "=" + hex.EncodeToString(mac(k.keys[0], d))
}

// Verify checks sig against d under every key, in constant time per key. It returns an error
// wrapping ErrForbidden naming what is wrong; a nil SigningKeys verifies nothing.
func (k *SigningKeys) Verify(d TaskDecision, sig string) error {
	if k == nil || len(k.keys) == 0 {
		return fmt.Errorf("%w: no signing key is configured (TASKS_SIGNING_KEY), so no task decision can be verified", ErrForbidden)
	}
	if sig == "" {
		return fmt.Errorf("%w: extension %s is missing: task decisions must be signed by the tasks function", ErrForbidden, ExtSignature)
	}
	v, hexMAC, ok := strings.Cut(sig, "=")
	if !ok || v != signatureVersion {
		return fmt.Errorf("%w: extension %s must be %s=<hex HMAC-SHA256>", ErrForbidden, ExtSignature, signatureVersion)
	}
	got, err := hex.DecodeString(hexMAC)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: extension %s must be %s=<64 hex digits>", ErrForbidden, ExtSignature, signatureVersion)
	}
	for _, key := range k.keys {
		if hmac.Equal(got, mac(key, d)) {
			return nil
		}
	}
	return fmt.Errorf("%w: extension %s does not match task %q, decision %q, actor %q and %s %d: not signed by the tasks function", ErrForbidden, ExtSignature, d.Task, d.Decision, d.Actor, ExtDecided, d.At)
}

// verifyDecision checks the signature of a task decision event and returns what it proves.
func (k *SigningKeys) verifyDecision(ev Event) (TaskDecision, error) {
	d := TaskDecision{Task: ev.Command, Decision: DecisionOf(ev.Type), Actor: ev.Actor}
	switch {
	case d.Task == "":
		return d, fmt.Errorf("%w: %s without extension %s (the task id)", ErrForbidden, ev.Type, ExtCommand)
	case d.Actor == "":
		return d, fmt.Errorf("%w: %s for task %q without extension %s", ErrForbidden, ev.Type, d.Task, ExtActor)
	}
	at, err := strconv.ParseInt(ev.Decided, 10, 64)
	if err != nil || at <= 0 {
		return d, fmt.Errorf("%w: %s for task %q: extension %s must be the decision time in unix milliseconds, got %q", ErrForbidden, ev.Type, d.Task, ExtDecided, ev.Decided)
	}
	d.At = at
	if err := k.Verify(d, ev.Signature); err != nil {
		return d, fmt.Errorf("%s for task %q: %w", ev.Type, d.Task, err)
	}
	return d, nil
}

// DecisionReply builds the signed event that reports decision d on task t, with data (JSON) as
// its payload, from source. Its id is "<task id>:<decision>", so a republished decision is the
// same event.
func DecisionReply(t Task, d TaskDecision, source, data string, keys *SigningKeys) Emitted {
	typ := TypeTaskCompleted
	if d.Decision == DecisionRejected {
		typ = TypeTaskRejected
	}
	return Emitted{
		ID: t.ID + ":" + d.Decision, Type: typ, Source: source, Subject: t.Instance, Data: data,
		Extensions: map[string]string{
			"knfaasowner": t.Owner, "knfaasprocess": t.Process, "knfaasstep": t.Step,
			ExtCommand: t.ID, ExtActor: d.Actor, ExtDecided: strconv.FormatInt(d.At, 10), ExtSignature: keys.Sign(d),
		},
	}
}
