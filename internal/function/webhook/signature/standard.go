package signature

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Standard Webhooks header names. Svix, which the specification grew out of, sends the same
// values under svix-* names; those are accepted when the webhook-* ones are absent.
const (
	HeaderStandardID        = "webhook-id"
	HeaderStandardTimestamp = "webhook-timestamp"
	HeaderStandardSignature = "webhook-signature"

	headerSvixID        = "svix-id"
	headerSvixTimestamp = "svix-timestamp"
	headerSvixSignature = "svix-signature"
)

// StandardSecretPrefix starts every Standard Webhooks symmetric secret; the rest is base64.
const StandardSecretPrefix = "whsec_"

// standardV1Length is the length of a v1 value: base64 (with padding) of an HMAC-SHA256.
var standardV1Length = base64.StdEncoding.EncodedLen(sha256.Size)

// StandardWebhooks verifies the Standard Webhooks symmetric scheme: webhook-signature holds
// space-separated "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>" entries. As in the
// specification's reference verifiers, entries that cannot be used (asymmetric v1a, other
// versions, malformed values) are skipped and the delivery is accepted if any v1 entry matches.
type StandardWebhooks struct {
	// Secrets are the decoded keys (see DecodeStandardSecret).
	Secrets [][]byte
	// Tolerance bounds the distance of the signed timestamp from now; zero means DefaultTolerance.
	Tolerance time.Duration
}

var _ Verifier = (*StandardWebhooks)(nil)

// DecodeStandardSecret turns "whsec_<base64>" into the HMAC key.
func DecodeStandardSecret(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, StandardSecretPrefix)
	if !ok {
		return nil, fmt.Errorf("secret does not start with %q", StandardSecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("secret after %q is not base64: %w", StandardSecretPrefix, err)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("secret after %q is empty", StandardSecretPrefix)
	}
	return key, nil
}

// StandardHeaders returns the id, timestamp and signature headers, preferring the webhook-*
// names and falling back to svix-*. Signature field lines sent more than once are joined with
// a space, as if they had been sent as one list.
func StandardHeaders(h http.Header) (id, timestamp, signature string) {
	id, timestamp, signature = h.Get(HeaderStandardID), h.Get(HeaderStandardTimestamp), joined(h, HeaderStandardSignature, " ")
	if id == "" && timestamp == "" && signature == "" {
		id, timestamp, signature = h.Get(headerSvixID), h.Get(headerSvixTimestamp), joined(h, headerSvixSignature, " ")
	}
	return id, timestamp, signature
}

// Verify implements Verifier.
func (s *StandardWebhooks) Verify(h http.Header, body []byte, now time.Time) error {
	id, ts, v := StandardHeaders(h)
	switch {
	case id == "":
		return fmt.Errorf("%s: %w", HeaderStandardID, ErrMissing)
	case ts == "":
		return fmt.Errorf("%s: %w", HeaderStandardTimestamp, ErrMissing)
	case strings.TrimSpace(v) == "":
		return fmt.Errorf("%s: %w", HeaderStandardSignature, ErrMissing)
	}
	t, err := parseTimestamp(ts)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderStandardTimestamp, err)
	}
	sigs, skip, err := parseStandard(v)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderStandardSignature, err)
	}
	if !anyMatch(sha256.New, s.Secrets, sigs, []byte(id), []byte("."), []byte(ts), []byte("."), body) {
		return fmt.Errorf("%s: %d v1 signatures tried%s: %w", HeaderStandardSignature, len(sigs), skip.note(), ErrMismatch)
	}
	return checkTolerance(t, now, s.Tolerance)
}

// ParseStandard returns the usable v1 signatures of a webhook-signature value. Entries that
// are not "v1,<base64 of 32 bytes>" are skipped; the header is malformed only when no entry is
// usable (the error lists why each was skipped), when it is longer than 4096 bytes or when it
// has more than 16 entries.
func ParseStandard(v string) ([][]byte, error) {
	sigs, _, err := parseStandard(v)
	return sigs, err
}

func parseStandard(v string) ([][]byte, skipped, error) {
	if len(v) > maxSignatureHeaderBytes {
		return nil, nil, fmt.Errorf("%d bytes, more than %d: %w", len(v), maxSignatureHeaderBytes, ErrMalformed)
	}
	var sigs [][]byte
	var skip skipped
	n := 0
	for entry := range strings.FieldsSeq(v) {
		n++
		if n > maxSignatureEntries {
			return nil, nil, fmt.Errorf("more than %d entries: %w", maxSignatureEntries, ErrMalformed)
		}
		version, value, ok := strings.Cut(entry, ",")
		switch {
		case !ok:
			skip.add(n, "is not <version>,<signature>")
		case version != "v1":
			skip.add(n, "has version %.20q, not v1", version)
		case len(value) != standardV1Length:
			skip.add(n, "has a v1 value of %d characters, not the %d of base64 of %d bytes", len(value), standardV1Length, sha256.Size)
		default:
			sig, err := base64.StdEncoding.DecodeString(value)
			if err != nil || len(sig) != sha256.Size {
				skip.add(n, "has a v1 value that is not base64 of %d bytes", sha256.Size)
				continue
			}
			sigs = append(sigs, sig)
		}
	}
	switch {
	case n == 0:
		return nil, nil, fmt.Errorf("no entries: %w", ErrMalformed)
	case len(sigs) == 0:
		return nil, nil, fmt.Errorf("no usable v1 signature among %d entries (%s): %w", n, skip, ErrMalformed)
	}
	return sigs, skip, nil
}
