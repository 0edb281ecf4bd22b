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
	"strings"
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

// maxSignatureHeaderBytes bounds a header that may carry several signatures (Stripe-Signature,
// webhook-signature), all its field lines together: a sender rotating keys sends two or three
// entries of under 100 bytes each, and a longer header is refused before any entry is read.
const maxSignatureHeaderBytes = 4096

// maxSignatureEntries bounds how many entries of such a header are examined. A header with
// more is refused when its first extra entry is reached, before anything else is decoded or
// compared, so a header of many tiny entries costs no more than its first 16.
const maxSignatureEntries = 16

// skipped records why entries of a multi-signature header could not be used. The Standard
// Webhooks and Stripe reference verifiers skip such entries and accept the delivery if another
// entry matches; the reasons only reach the log, when no entry matched.
type skipped []string

func (s *skipped) add(entry int, format string, args ...any) {
	*s = append(*s, fmt.Sprintf("entry %d ", entry)+fmt.Sprintf(format, args...))
}

// String lists the reasons; empty when no entry was skipped.
func (s skipped) String() string { return strings.Join(s, "; ") }

// note returns the reasons as a parenthesised suffix for an error, or nothing.
func (s skipped) note() string {
	if len(s) == 0 {
		return ""
	}
	return fmt.Sprintf(" (skipped %s)", s)
}

// joined returns the field lines of a list header as one value, separated by sep.
func joined(h http.Header, name, sep string) string {
	return strings.Join(h.Values(name), sep)
}

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
