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

// Stripe verifies Stripe-Signature: HMAC-SHA256 over "<t>.<body>" keyed with the endpoint's
// signing secret (the whole "whsec_…" string, not decoded), within a timestamp tolerance. As in
// Stripe's libraries, entries that cannot be used (other schemes, v1 values that are not hex)
// are skipped and the delivery is accepted if any v1 entry matches.
type Stripe struct {
	Secrets [][]byte
	// Tolerance bounds the distance of the signed timestamp from now; zero means DefaultTolerance.
	Tolerance time.Duration
}

var _ Verifier = (*Stripe)(nil)

// Verify implements Verifier.
func (s *Stripe) Verify(h http.Header, body []byte, now time.Time) error {
	v := joined(h, HeaderStripeSignature, ",")
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("%s: %w", HeaderStripeSignature, ErrMissing)
	}
	ts, sigs, skip, err := parseStripe(v)
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
		return fmt.Errorf("%s: %d v1 signatures tried%s: %w", HeaderStripeSignature, len(sigs), skip.note(), ErrMismatch)
	}
	return checkTolerance(t, now, s.Tolerance)
}

// ParseStripe splits a Stripe-Signature value into its timestamp (as sent) and its usable v1
// signatures. Entries of other schemes, without '=' or with a v1 value that is not 32 bytes of
// hex are skipped. The header is malformed without t=, with an empty or a second t=, without any usable v1
// (the error lists why each entry was skipped), when longer than 4096 bytes or with more than
// 16 entries.
func ParseStripe(v string) (timestamp string, v1 [][]byte, err error) {
	timestamp, v1, _, err = parseStripe(v)
	return timestamp, v1, err
}

func parseStripe(v string) (timestamp string, v1 [][]byte, skip skipped, err error) {
	if len(v) > maxSignatureHeaderBytes {
		return "", nil, nil, fmt.Errorf("%d bytes, more than %d: %w", len(v), maxSignatureHeaderBytes, ErrMalformed)
	}
	n, sawT := 0, false
	for item := range strings.SplitSeq(v, ",") {
		n++
		if n > maxSignatureEntries {
			return "", nil, nil, fmt.Errorf("more than %d entries: %w", maxSignatureEntries, ErrMalformed)
		}
		key, value, ok := strings.Cut(strings.TrimSpace(item), "=")
		switch {
		case !ok:
			skip.add(n, "is not <scheme>=<value>")
		case key == "t":
			// Two timestamps are not skipped: which one the sender signed would be a guess.
			if sawT {
				return "", nil, nil, fmt.Errorf("two t= entries: %w", ErrMalformed)
			}
			timestamp, sawT = value, true
		case key != "v1":
			skip.add(n, "has scheme %.20q, not v1", key)
		case len(value) != hex.EncodedLen(sha256.Size):
			skip.add(n, "has a v1 value of %d characters, not the %d hex digits of %d bytes", len(value), hex.EncodedLen(sha256.Size), sha256.Size)
		default:
			sig, err := hex.DecodeString(value)
			if err != nil {
				skip.add(n, "has a v1 value that is not hex")
				continue
			}
			v1 = append(v1, sig)
		}
	}
	switch {
	case !sawT:
		return "", nil, nil, fmt.Errorf("no t=: %w", ErrMalformed)
	case timestamp == "":
		return "", nil, nil, fmt.Errorf("t= is empty: %w", ErrMalformed)
	case len(v1) == 0 && len(skip) == 0:
		return "", nil, nil, fmt.Errorf("no v1=: %w", ErrMalformed)
	case len(v1) == 0:
		return "", nil, nil, fmt.Errorf("no usable v1 signature among %d entries (%s): %w", n, skip, ErrMalformed)
	}
	return timestamp, v1, skip, nil
}
