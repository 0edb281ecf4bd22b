package signature

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// HeaderStripeSignature carries "t=<unix>,v1=<hex>[,v1=<hex>…]" (plus v0 and other schemes
// Stripe may add, which are ignored).
const HeaderStripeSignature = "Stripe-Signature"

// maxStripeSignatures bounds how many v1 entries are tried, so a crafted header cannot make one
// request cost thousands of comparisons.
const maxStripeSignatures = 8

// Stripe verifies Stripe-Signature: HMAC-SHA256 over "<t>.<body>" keyed with the endpoint's
// signing secret (the whole "whsec_…" string, not decoded), within a timestamp tolerance.
type Stripe struct {
	Secrets   [][]byte
	Tolerance time.Duration
}

var _ Verifier = (*Stripe)(nil)

// Verify implements Verifier.
func (s *Stripe) Verify(h http.Header, body []byte, now time.Time) error {
	v := h.Get(HeaderStripeSignature)
	if v == "" {
		return fmt.Errorf("%s: %w", HeaderStripeSignature, ErrMissing)
	}
	ts, sigs, err := ParseStripe(v)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderStripeSignature, err)
	}
	t, err := parseTimestamp(ts)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderStripeSignature, err)
	}
	// The signature is checked before the timestamp so that the log tells a stale but genuine
	// delivery apart from a forged one.
	if !anyMatch(sha256.New, s.Secrets, sigs, []byte(ts), []byte("."), body) {
		return fmt.Errorf("%s: %w", HeaderStripeSignature, ErrMismatch)
	}
	return checkTolerance(t, now, s.Tolerance)
}

// ParseStripe splits a Stripe-Signature value into its timestamp (as sent) and its v1
// signatures. Unknown schemes are skipped; a header without t or without any v1 is malformed.
func ParseStripe(v string) (timestamp string, v1 [][]byte, err error) {
	for item := range strings.SplitSeq(v, ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return "", nil, fmt.Errorf("item without '=': %w", ErrMalformed)
		}
		switch key {
		case "t":
			if timestamp != "" {
				return "", nil, fmt.Errorf("two timestamps: %w", ErrMalformed)
			}
			timestamp = value
		case "v1":
			if len(v1) == maxStripeSignatures {
				return "", nil, fmt.Errorf("more than %d v1 signatures: %w", maxStripeSignatures, ErrMalformed)
			}
			sig, err := hex.DecodeString(value)
			if err != nil || len(sig) != sha256.Size {
				return "", nil, fmt.Errorf("v1 is not %d bytes of hex: %w", sha256.Size, ErrMalformed)
			}
			v1 = append(v1, sig)
		}
	}
	if timestamp == "" {
		return "", nil, fmt.Errorf("no t=: %w", ErrMalformed)
	}
	if len(v1) == 0 {
		return "", nil, fmt.Errorf("no v1=: %w", ErrMalformed)
	}
	return timestamp, v1, nil
}
