package signature

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"time"
)

// Slack header names.
const (
	HeaderSlackSignature = "X-Slack-Signature"
	HeaderSlackTimestamp = "X-Slack-Request-Timestamp"
)

// Slack verifies X-Slack-Signature: "v0=" and the hex HMAC-SHA256 of "v0:<timestamp>:<body>",
// keyed with the app's signing secret, within a timestamp tolerance.
type Slack struct {
	Secrets [][]byte
	// Tolerance bounds the distance of the signed timestamp from now; zero means DefaultTolerance.
	Tolerance time.Duration
}

var _ Verifier = (*Slack)(nil)

// Verify implements Verifier.
func (s *Slack) Verify(h http.Header, body []byte, now time.Time) error {
	v := h.Get(HeaderSlackSignature)
	if v == "" {
		return fmt.Errorf("%s: %w", HeaderSlackSignature, ErrMissing)
	}
	ts := h.Get(HeaderSlackTimestamp)
	if ts == "" {
		return fmt.Errorf("%s: %w", HeaderSlackTimestamp, ErrMissing)
	}
	sig, err := ParsePrefixedHex(v, "v0=", sha256.Size)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderSlackSignature, err)
	}
	t, err := parseTimestamp(ts)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderSlackTimestamp, err)
	}
	if !anyMatch(sha256.New, s.Secrets, [][]byte{sig}, []byte("v0:"), []byte(ts), []byte(":"), body) {
		return fmt.Errorf("%s: %w", HeaderSlackSignature, ErrMismatch)
	}
	return checkTolerance(t, now, s.Tolerance)
}
