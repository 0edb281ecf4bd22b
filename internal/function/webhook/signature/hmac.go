package signature

import (
	"crypto/sha1" //nolint:gosec // some senders still sign with HMAC-SHA1; HMAC-SHA1 is not broken.
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"net/http"
	"strings"
	"time"
)

// Algorithms and encodings a generic HMAC source may name.
var (
	Algorithms = map[string]func() hash.Hash{"sha1": sha1.New, "sha256": sha256.New, "sha512": sha512.New}
	Encodings  = map[string]bool{"hex": true, "base64": true}
)

// HMAC verifies a generic HMAC signature carried in one header: Prefix followed by the
// encoded MAC. Without TimestampHeader the MAC covers the body; with it, it covers
// "<timestamp>.<body>" and the timestamp must lie within Tolerance.
type HMAC struct {
	Secrets         [][]byte
	Header          string
	Hash            func() hash.Hash
	Encoding        string // "hex" or "base64"
	Prefix          string
	TimestampHeader string
	// Tolerance bounds the distance of the signed timestamp from now; zero means DefaultTolerance.
	Tolerance time.Duration
}

var _ Verifier = (*HMAC)(nil)

// Verify implements Verifier.
func (m *HMAC) Verify(h http.Header, body []byte, now time.Time) error {
	v := h.Get(m.Header)
	if v == "" {
		return fmt.Errorf("%s: %w", m.Header, ErrMissing)
	}
	sig, err := m.Parse(v)
	if err != nil {
		return fmt.Errorf("%s: %w", m.Header, err)
	}
	parts := [][]byte{body}
	var t time.Time
	if m.TimestampHeader != "" {
		ts := h.Get(m.TimestampHeader)
		if ts == "" {
			return fmt.Errorf("%s: %w", m.TimestampHeader, ErrMissing)
		}
		if t, err = parseTimestamp(ts); err != nil {
			return fmt.Errorf("%s: %w", m.TimestampHeader, err)
		}
		parts = [][]byte{[]byte(ts), []byte("."), body}
	}
	if !anyMatch(m.Hash, m.Secrets, [][]byte{sig}, parts...) {
		return fmt.Errorf("%s: %w", m.Header, ErrMismatch)
	}
	if m.TimestampHeader != "" {
		return checkTolerance(t, now, m.Tolerance)
	}
	return nil
}

// Parse decodes a header value: the prefix, then exactly one MAC in the configured encoding.
func (m *HMAC) Parse(v string) ([]byte, error) {
	rest, ok := strings.CutPrefix(v, m.Prefix)
	if !ok {
		return nil, fmt.Errorf("want prefix %q: %w", m.Prefix, ErrMalformed)
	}
	size := m.Hash().Size()
	var sig []byte
	var err error
	switch m.Encoding {
	case "base64":
		sig, err = base64.StdEncoding.DecodeString(rest)
	default:
		sig, err = hex.DecodeString(rest)
	}
	if err != nil || len(sig) != size {
		return nil, fmt.Errorf("not %d bytes of %s: %w", size, m.Encoding, ErrMalformed)
	}
	return sig, nil
}
