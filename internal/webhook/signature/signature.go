// Package signature verifies the signatures of webhook deliveries (GitHub, Stripe, Slack,
// Standard Webhooks and generic HMAC senders) over the raw request body.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"time"
)

// Failures a Verifier reports. Callers answer all of them with the same 401 and log which one
// it was: telling a sender which part failed helps an attacker more than a sender.
var (
	// ErrMissing means a header the scheme needs is absent or empty.
	ErrMissing = errors.New("signature header missing")
	// ErrMalformed means a header is present but does not parse.
	ErrMalformed = errors.New("signature header malformed")
	// ErrMismatch means no signature in the request matches any configured secret.
	ErrMismatch = errors.New("no signature matches any configured secret")
	// ErrTimestamp means the signed timestamp lies outside the tolerance window.
	ErrTimestamp = errors.New("signed timestamp outside tolerance")
)

// Verifier checks one delivery: its headers and the body bytes exactly as received.
type Verifier interface {
	Verify(h http.Header, body []byte, now time.Time) error
}

// DefaultTolerance is the timestamp window the timestamped schemes use unless configured
// otherwise; Stripe, Slack and Standard Webhooks all document five minutes.
const DefaultTolerance = 5 * time.Minute

// maxTimestampDigits bounds a timestamp header so that parsing cannot overflow silently.
const maxTimestampDigits = 12

// anyMatch reports whether the MAC of the parts under any secret equals any candidate. Each
// comparison is constant-time (hmac.Equal); with rotation several secrets may be live at once.
func anyMatch(newHash func() hash.Hash, secrets [][]byte, candidates [][]byte, parts ...[]byte) bool {
	for _, secret := range secrets {
		mac := hmac.New(newHash, secret)
		for _, p := range parts {
			mac.Write(p)
		}
		sum := mac.Sum(nil)
		for _, c := range candidates {
			if hmac.Equal(sum, c) {
				return true
			}
		}
	}
	return false
}

// Sum returns the HMAC of the concatenated parts under secret, for tests and senders.
func Sum(newHash func() hash.Hash, secret []byte, parts ...[]byte) []byte {
	mac := hmac.New(newHash, secret)
	for _, p := range parts {
		mac.Write(p)
	}
	return mac.Sum(nil)
}

// SHA256 is the hash most schemes use, named for callers of Sum.
var SHA256 = sha256.New

// parseTimestamp reads a Unix time in seconds as the timestamped schemes send it.
func parseTimestamp(v string) (time.Time, error) {
	if v == "" || len(v) > maxTimestampDigits {
		return time.Time{}, fmt.Errorf("timestamp %.20q: %w", v, ErrMalformed)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return time.Time{}, fmt.Errorf("timestamp %.20q: %w", v, ErrMalformed)
		}
	}
	secs, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %.20q: %w", v, ErrMalformed)
	}
	return time.Unix(secs, 0), nil
}

// checkTolerance rejects timestamps too far in the past (replays) or the future (clock abuse).
func checkTolerance(ts, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	d := now.Sub(ts)
	if d > tolerance || d < -tolerance {
		return fmt.Errorf("timestamp %d is %s from now, tolerance %s: %w", ts.Unix(), d.Round(time.Second), tolerance, ErrTimestamp)
	}
	return nil
}
