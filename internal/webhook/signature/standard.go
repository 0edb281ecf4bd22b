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

// maxStandardSignatures bounds how many entries of webhook-signature are tried.
const maxStandardSignatures = 8

// StandardWebhooks verifies the Standard Webhooks symmetric scheme: webhook-signature holds
// space-separated "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>" entries. Asymmetric
// (v1a) entries are skipped.
type StandardWebhooks struct {
	// Secrets are the decoded keys (see DecodeStandardSecret).
	Secrets   [][]byte
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
// names and falling back to svix-*.
func StandardHeaders(h http.Header) (id, timestamp, signature string) {
	id, timestamp, signature = h.Get(HeaderStandardID), h.Get(HeaderStandardTimestamp), h.Get(HeaderStandardSignature)
	if id == "" && timestamp == "" && signature == "" {
		id, timestamp, signature = h.Get(headerSvixID), h.Get(headerSvixTimestamp), h.Get(headerSvixSignature)
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
	case v == "":
		return fmt.Errorf("%s: %w", HeaderStandardSignature, ErrMissing)
	}
	t, err := parseTimestamp(ts)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderStandardTimestamp, err)
	}
	sigs, err := ParseStandard(v)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderStandardSignature, err)
	}
	if !anyMatch(sha256.New, s.Secrets, sigs, []byte(id), []byte("."), []byte(ts), []byte("."), body) {
		return fmt.Errorf("%s: %w", HeaderStandardSignature, ErrMismatch)
	}
	return checkTolerance(t, now, s.Tolerance)
}

// ParseStandard returns the v1 signatures of a webhook-signature value. Entries of other
// versions are skipped; an entry that is not "<version>,<value>" or a v1 value that is not
// base64 makes the header malformed, and a header without any v1 entry too.
func ParseStandard(v string) ([][]byte, error) {
	var sigs [][]byte
	for entry := range strings.FieldsSeq(v) {
		version, value, ok := strings.Cut(entry, ",")
		if !ok || version == "" || value == "" {
			return nil, fmt.Errorf("entry is not <version>,<signature>: %w", ErrMalformed)
		}
		if version != "v1" {
			continue
		}
		if len(sigs) == maxStandardSignatures {
			return nil, fmt.Errorf("more than %d v1 signatures: %w", maxStandardSignatures, ErrMalformed)
		}
		sig, err := base64.StdEncoding.DecodeString(value)
		if err != nil || len(sig) != sha256.Size {
			return nil, fmt.Errorf("v1 is not %d bytes of base64: %w", sha256.Size, ErrMalformed)
		}
		sigs = append(sigs, sig)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("no v1 signature: %w", ErrMalformed)
	}
	return sigs, nil
}
