// Package httpauth authenticates HTTP callers by static bearer tokens or OIDC JWTs.
package httpauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/knfaas/knfaas/internal/function/placeholder"
)

// Methods reported in Identity.Method.
const (
	MethodToken = "token"
	MethodOIDC  = "oidc"
)

// ErrUnauthenticated is wrapped by every error Authenticate returns: the caller presented no
// credentials or credentials that do not verify. Answer 401 (see Unauthorized).
var ErrUnauthenticated = errors.New("unauthenticated")

// Identity is the authenticated caller.
type Identity struct {
	// Subject names the caller: the token's name, or the JWT's "sub" claim.
	Subject string
	// Groups are the groups the token was given, or the values of the JWT's groups claim.
	Groups []string
	// Method is MethodToken or MethodOIDC.
	Method string
}

// Token is one static bearer token.
type Token struct {
	// Name identifies the caller (Identity.Subject); several tokens may share a name, which is
	// how a token is rotated: add the new one, roll the callers, remove the old one.
	Name string
	// Secret is the bearer value the caller sends.
	Secret string
	// Groups are the groups the caller belongs to.
	Groups []string
}

// OIDCConfig selects the OpenID Connect issuer whose JWTs are accepted.
type OIDCConfig struct {
	// Issuer must equal the token's "iss" claim exactly.
	Issuer string
	// Audience must be one of the token's "aud" values.
	Audience string
	// JWKSURL is where the issuer publishes its signing keys; empty means discover it from
	// Issuer + "/.well-known/openid-configuration" when New runs.
	JWKSURL string
	// GroupsClaim names the claim holding the caller's groups (a list of strings or one
	// space-separated string); empty means "groups".
	GroupsClaim string
	// Algorithms are the accepted signing algorithms; empty means RS256 and ES256.
	Algorithms []string
}

// Config lists the credentials an Authenticator accepts. At least one method must be set.
type Config struct {
	Tokens []Token
	OIDC   *OIDCConfig
}

// Authenticator verifies the credentials of HTTP requests. It is safe for concurrent use.
type Authenticator struct {
	tokens      []storedToken
	verifier    *oidc.IDTokenVerifier
	groupsClaim string
}

// storedToken keeps only a digest of the secret: comparing digests of equal length makes the
// comparison time independent of how much of a guessed token was right, including its length.
type storedToken struct {
	digest [sha256.Size]byte
	name   string
	groups []string
}

// New builds an Authenticator. With OIDC set and no JWKSURL it fetches the issuer's discovery
// document, using the HTTP client carried by ctx (oidc.ClientContext) if there is one; ctx also
// configures later key refreshes, but its cancellation is ignored for them.
func New(ctx context.Context, cfg Config) (*Authenticator, error) {
	if len(cfg.Tokens) == 0 && cfg.OIDC == nil {
		return nil, errors.New("httpauth: no tokens and no OIDC issuer configured")
	}
	a := &Authenticator{}
	seen := map[[sha256.Size]byte]bool{}
	for i, t := range cfg.Tokens {
		if err := validateToken(t); err != nil {
			return nil, fmt.Errorf("httpauth: token %d (%q): %w", i+1, t.Name, err)
		}
		d := sha256.Sum256([]byte(t.Secret))
		if seen[d] {
			return nil, fmt.Errorf("httpauth: token %d (%q): the same secret is listed twice", i+1, t.Name)
		}
		seen[d] = true
		a.tokens = append(a.tokens, storedToken{digest: d, name: t.Name, groups: slices.Clone(t.Groups)})
	}
	if o := cfg.OIDC; o != nil {
		if o.Issuer == "" || o.Audience == "" {
			return nil, errors.New("httpauth: OIDC needs both an issuer and an audience")
		}
		algs := o.Algorithms
		if len(algs) == 0 {
			algs = []string{oidc.RS256, oidc.ES256}
		}
		vc := &oidc.Config{ClientID: o.Audience, SupportedSigningAlgs: algs}
		if o.JWKSURL != "" {
			a.verifier = oidc.NewVerifier(o.Issuer, oidc.NewRemoteKeySet(ctx, o.JWKSURL), vc)
		} else {
			p, err := oidc.NewProvider(ctx, o.Issuer)
			if err != nil {
				return nil, fmt.Errorf("httpauth: discovering OIDC issuer %s: %w", o.Issuer, err)
			}
			a.verifier = p.VerifierContext(ctx, vc)
		}
		a.groupsClaim = o.GroupsClaim
		if a.groupsClaim == "" {
			a.groupsClaim = "groups"
		}
	}
	return a, nil
}

// MinSecretLength is the shortest static token accepted: shorter ones are guessable.
const MinSecretLength = 16

func validateToken(t Token) error {
	switch {
	case t.Name == "":
		return errors.New("empty name")
	case len(t.Secret) < MinSecretLength:
		return fmt.Errorf("secret shorter than %d characters", MinSecretLength)
	case strings.IndexFunc(t.Secret, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0:
		return errors.New("secret holds a character other than printable ASCII")
	}
	// ParseTokens names the line; this catches tokens configured some other way.
	return placeholder.Check("secret", t.Secret)
}

// Authenticate returns the identity behind r's "Authorization: Bearer …" header. Every error
// wraps ErrUnauthenticated; its text says why, for logs, and should not be sent to the caller.
func (a *Authenticator) Authenticate(r *http.Request) (Identity, error) {
	raw, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return Identity{}, fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	if id, ok := a.matchToken(raw); ok {
		return id, nil
	}
	if a.verifier == nil || strings.Count(raw, ".") != 2 {
		return Identity{}, fmt.Errorf("%w: unknown bearer token", ErrUnauthenticated)
	}
	tok, err := a.verifier.Verify(r.Context(), raw)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if tok.Subject == "" {
		return Identity{}, fmt.Errorf("%w: JWT has no sub claim", ErrUnauthenticated)
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return Identity{}, fmt.Errorf("%w: decoding JWT claims: %w", ErrUnauthenticated, err)
	}
	return Identity{Subject: tok.Subject, Groups: groupsFrom(claims[a.groupsClaim]), Method: MethodOIDC}, nil
}

// matchToken compares raw with every stored token without stopping at a match, so the time
// taken says nothing about which token (or whether any) matched.
func (a *Authenticator) matchToken(raw string) (Identity, bool) {
	d := sha256.Sum256([]byte(raw))
	found := -1
	for i := range a.tokens {
		eq := subtle.ConstantTimeCompare(d[:], a.tokens[i].digest[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return Identity{}, false
	}
	t := a.tokens[found]
	return Identity{Subject: t.name, Groups: slices.Clone(t.groups), Method: MethodToken}, true
}

func bearer(h string) (string, bool) {
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(prefix):])
	return tok, tok != ""
}

func groupsFrom(v any) []string {
	switch g := v.(type) {
	case string:
		return strings.Fields(g)
	case []any:
		out := make([]string, 0, len(g))
		for _, x := range g {
			if s, ok := x.(string); ok && s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// AnyGroup in an allow list admits every authenticated caller.
const AnyGroup = "*"

// Allowed reports whether id belongs to one of groups, or groups holds AnyGroup. Which groups
// may do what is the caller's decision; a false answer should become a 403.
func Allowed(id Identity, groups []string) bool {
	for _, g := range groups {
		if g == AnyGroup || slices.Contains(id.Groups, g) {
			return true
		}
	}
	return false
}

// Unauthorized answers 401 with a Bearer challenge, without saying why the credentials failed.
func Unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="knfaas"`)
	http.Error(w, "unauthenticated", http.StatusUnauthorized)
}
