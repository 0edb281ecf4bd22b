package signature

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// GitHub header names.
const (
	HeaderGitHubSignature = "X-Hub-Signature-256"
	HeaderGitHubEvent     = "X-GitHub-Event"
	HeaderGitHubDelivery  = "X-GitHub-Delivery"
)

// GitHub verifies X-Hub-Signature-256: "sha256=" and the hex HMAC-SHA256 of the raw body.
type GitHub struct {
	// Secrets are the webhook secrets as configured on GitHub; any may match.
	Secrets [][]byte
}

var _ Verifier = (*GitHub)(nil)

// Verify implements Verifier. GitHub signs no timestamp, so there is no replay window: the
// delivery id deduplication is what stops a replayed delivery from being published twice.
func (g *GitHub) Verify(h http.Header, body []byte, _ time.Time) error {
	v := h.Get(HeaderGitHubSignature)
	if v == "" {
		return fmt.Errorf("%s: %w", HeaderGitHubSignature, ErrMissing)
	}
	sig, err := ParsePrefixedHex(v, "sha256=", sha256.Size)
	if err != nil {
		return fmt.Errorf("%s: %w", HeaderGitHubSignature, err)
	}
	if !anyMatch(sha256.New, g.Secrets, [][]byte{sig}, body) {
		return fmt.Errorf("%s: %w", HeaderGitHubSignature, ErrMismatch)
	}
	return nil
}

// ParsePrefixedHex parses prefix followed by exactly size bytes in hex (either case), the shape
// of GitHub's and Slack's signature headers.
func ParsePrefixedHex(v, prefix string, size int) ([]byte, error) {
	rest, ok := strings.CutPrefix(v, prefix)
	if !ok {
		return nil, fmt.Errorf("want prefix %q: %w", prefix, ErrMalformed)
	}
	if len(rest) != 2*size {
		return nil, fmt.Errorf("want %d hex digits, got %d: %w", 2*size, len(rest), ErrMalformed)
	}
	sig, err := hex.DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("not hex: %w", ErrMalformed)
	}
	return sig, nil
}
