package signature

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// HeaderAuthorization is where a bearer token travels by default.
const HeaderAuthorization = "Authorization"

// maxTokenHeaderBytes bounds the header holding a token before anything is compared.
const maxTokenHeaderBytes = 1024

// MinTokenBytes is the shortest token accepted as a secret: a shared token is the only proof
// of a sender that signs nothing, so it must not be guessable.
const MinTokenBytes = 16

// Token verifies a shared secret token: by default "Authorization: Bearer <token>", which is
// what MinIO sends for a webhook target's auth_token; with Header set, the whole value of that
// header, which is how an EventBridge API destination with an API-key connection sends it.
// The body is not signed: the token must travel over TLS, and replays are absorbed by the
// delivery id deduplication and by idempotent consumers.
type Token struct {
	// Secrets are the tokens; any may match (rotation).
	Secrets [][]byte
	// Header names the header holding the bare token; empty means Authorization with the
	// Bearer scheme.
	Header string
}

var _ Verifier = (*Token)(nil)

// Verify implements Verifier. Tokens are compared as SHA-256 digests in constant time, so
// neither their content nor their length leaks through timing.
func (t *Token) Verify(h http.Header, _ []byte, _ time.Time) error {
	name := t.Header
	if name == "" {
		name = HeaderAuthorization
	}
	values := h.Values(name)
	switch {
	case len(values) == 0 || values[0] == "":
		return fmt.Errorf("%s: %w", name, ErrMissing)
	case len(values) > 1:
		return fmt.Errorf("%s: sent %d times: %w", name, len(values), ErrMalformed)
	case len(values[0]) > maxTokenHeaderBytes:
		return fmt.Errorf("%s: %d bytes, more than %d: %w", name, len(values[0]), maxTokenHeaderBytes, ErrMalformed)
	}
	presented := values[0]
	if t.Header == "" {
		scheme, rest, ok := strings.Cut(presented, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return fmt.Errorf("%s: want the Bearer scheme: %w", name, ErrMalformed)
		}
		presented = strings.TrimSpace(rest)
	}
	got := sha256.Sum256([]byte(presented))
	match := 0
	for _, secret := range t.Secrets {
		want := sha256.Sum256(secret)
		match |= subtle.ConstantTimeCompare(got[:], want[:])
	}
	if match != 1 {
		return fmt.Errorf("%s: %w", name, ErrMismatch)
	}
	return nil
}
