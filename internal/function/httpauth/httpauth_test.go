package httpauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	secretA = "a-very-long-dashboard-secret-1"
	secretB = "a-very-long-dashboard-secret-2"
	secretC = "purchasing-reader-secret-0001"
)

func tokenAuth(t *testing.T) *Authenticator {
	t.Helper()
	a, err := New(context.Background(), Config{Tokens: []Token{
		{Name: "dashboard", Secret: secretA, Groups: []string{"stock-readers"}},
		{Name: "dashboard", Secret: secretB, Groups: []string{"stock-readers"}}, // rotation: new secret, same caller
		{Name: "purchasing", Secret: secretC, Groups: []string{"purchasing", "stock-readers"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func request(authz string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/stock/sku-1", nil)
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	return r
}

func TestStaticTokens(t *testing.T) {
	a := tokenAuth(t)
	cases := []struct {
		name    string
		authz   string
		subject string
		groups  []string
	}{
		{name: "first secret", authz: "Bearer " + secretA, subject: "dashboard", groups: []string{"stock-readers"}},
		{name: "rotated secret", authz: "Bearer " + secretB, subject: "dashboard", groups: []string{"stock-readers"}},
		{name: "scheme is case-insensitive", authz: "bearer " + secretC, subject: "purchasing", groups: []string{"purchasing", "stock-readers"}},
		{name: "no header"},
		{name: "basic scheme", authz: "Basic " + secretA},
		{name: "empty bearer", authz: "Bearer "},
		{name: "unknown secret", authz: "Bearer not-a-known-secret-at-all"},
		{name: "prefix of a secret", authz: "Bearer " + secretA[:len(secretA)-1]},
		{name: "secret with suffix", authz: "Bearer " + secretA + "x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := a.Authenticate(request(tc.authz))
			if tc.subject == "" {
				if !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("got %+v, %v; want ErrUnauthenticated", id, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Subject != tc.subject || id.Method != MethodToken || !slices.Equal(id.Groups, tc.groups) {
				t.Fatalf("got %+v, want subject %q groups %v", id, tc.subject, tc.groups)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cases := map[string]Config{
		"nothing":          {},
		"short secret":     {Tokens: []Token{{Name: "x", Secret: "short"}}},
		"empty name":       {Tokens: []Token{{Secret: secretA}}},
		"duplicate secret": {Tokens: []Token{{Name: "x", Secret: secretA}, {Name: "y", Secret: secretA}}},
		"space in secret":  {Tokens: []Token{{Name: "x", Secret: "has a space inside it"}}},
		"template secret":  {Tokens: []Token{{Name: "manager", Secret: "CHANGE-ME-manager-token-000000"}}},
		"oidc no audience": {OIDC: &OIDCConfig{Issuer: "https://issuer.example", JWKSURL: "https://issuer.example/keys"}},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := New(context.Background(), cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	id := Identity{Subject: "s", Groups: []string{"a", "b"}}
	cases := map[string]struct {
		groups []string
		want   bool
	}{
		"member":     {groups: []string{"x", "b"}, want: true},
		"not member": {groups: []string{"x", "y"}, want: false},
		"anyone":     {groups: []string{AnyGroup}, want: true},
		"nobody":     {groups: nil, want: false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := Allowed(id, tc.groups); got != tc.want {
				t.Fatalf("Allowed = %v, want %v", got, tc.want)
			}
		})
	}
}

// issuer is a local OIDC issuer: it serves a JWKS and the discovery document, and signs JWTs.
type issuer struct {
	srv    *httptest.Server
	signer jose.Signer
	ec     jose.Signer // a key the issuer does not publish
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwk := jose.JSONWebKey{Key: key, KeyID: "k1", Algorithm: string(jose.RS256), Use: "sig"}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jwk}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: other, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{signer: signer, ec: ec}
	mux := http.NewServeMux()
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk.Public()}})
	})
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/keys",
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

type claims struct {
	jwt.Claims
	Groups []string `json:"groups,omitempty"`
}

func (is *issuer) sign(t *testing.T, s jose.Signer, c claims) string {
	t.Helper()
	raw, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestOIDC(t *testing.T) {
	is := newIssuer(t)
	now := time.Now()
	good := claims{
		Claims: jwt.Claims{Issuer: is.srv.URL, Subject: "alice", Audience: jwt.Audience{"knfaas-query"},
			Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now)},
		Groups: []string{"stock-readers"},
	}
	with := func(f func(c *claims)) claims { c := good; f(&c); return c }
	cases := []struct {
		name   string
		token  string
		wantOK bool
	}{
		{name: "good token", token: is.sign(t, is.signer, good), wantOK: true},
		{name: "wrong audience", token: is.sign(t, is.signer, with(func(c *claims) { c.Audience = jwt.Audience{"someone-else"} }))},
		{name: "wrong issuer", token: is.sign(t, is.signer, with(func(c *claims) { c.Issuer = "https://evil.example" }))},
		{name: "expired", token: is.sign(t, is.signer, with(func(c *claims) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Minute)) }))},
		{name: "no subject", token: is.sign(t, is.signer, with(func(c *claims) { c.Subject = "" }))},
		{name: "signed by an unpublished key", token: is.sign(t, is.ec, good)},
		{name: "tampered payload", token: tamper(t, is.sign(t, is.signer, good))},
		{name: "not a JWT", token: "x.y.z"},
	}
	for _, discovery := range []bool{false, true} {
		cfg := OIDCConfig{Issuer: is.srv.URL, Audience: "knfaas-query"}
		if !discovery {
			cfg.JWKSURL = is.srv.URL + "/keys"
		}
		a, err := New(context.Background(), Config{OIDC: &cfg})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			t.Run(map[bool]string{true: "discovery/", false: "jwks/"}[discovery]+tc.name, func(t *testing.T) {
				id, err := a.Authenticate(request("Bearer " + tc.token))
				if !tc.wantOK {
					if !errors.Is(err, ErrUnauthenticated) {
						t.Fatalf("got %+v, %v; want ErrUnauthenticated", id, err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if id.Subject != "alice" || id.Method != MethodOIDC || !slices.Equal(id.Groups, []string{"stock-readers"}) {
					t.Fatalf("got %+v", id)
				}
			})
		}
	}
}

// tamper swaps the payload for one that claims another subject, keeping the signature.
func tamper(t *testing.T, raw string) string {
	t.Helper()
	parts := strings.Split(raw, ".")
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	c["sub"] = "mallory"
	b, _ := json.Marshal(c)
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

func TestTokensAndOIDCTogether(t *testing.T) {
	is := newIssuer(t)
	a, err := New(context.Background(), Config{
		Tokens: []Token{{Name: "svc", Secret: secretA, Groups: []string{"g"}}},
		OIDC:   &OIDCConfig{Issuer: is.srv.URL, Audience: "aud", JWKSURL: is.srv.URL + "/keys", GroupsClaim: "roles"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := a.Authenticate(request("Bearer " + secretA)); err != nil || id.Method != MethodToken {
		t.Fatalf("static token: %+v, %v", id, err)
	}
	raw, err := jwt.Signed(is.signer).Claims(map[string]any{
		"iss": is.srv.URL, "sub": "bob", "aud": "aud", "exp": time.Now().Add(time.Hour).Unix(), "roles": "ops stock-readers",
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate(request("Bearer " + raw))
	if err != nil || id.Method != MethodOIDC || !slices.Equal(id.Groups, []string{"ops", "stock-readers"}) {
		t.Fatalf("jwt with space-separated roles claim: %+v, %v", id, err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	content := "# rotated on 2026-11-01\n" +
		"dashboard:stock-readers:" + secretA + "\n\n" +
		"dashboard:stock-readers:" + secretB + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AUTH_TOKENS_FILE", file)
	t.Setenv("AUTH_TOKENS", "ops:ops,stock-readers:"+secretC)
	t.Setenv("AUTH_OIDC_ISSUER", "https://issuer.example")
	t.Setenv("AUTH_OIDC_AUDIENCE", "knfaas-query")
	cfg, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Tokens) != 3 || cfg.Tokens[1].Secret != secretB || !slices.Equal(cfg.Tokens[2].Groups, []string{"ops", "stock-readers"}) {
		t.Fatalf("tokens = %+v", cfg.Tokens)
	}
	if cfg.OIDC == nil || cfg.OIDC.Audience != "knfaas-query" || cfg.OIDC.GroupsClaim != "groups" {
		t.Fatalf("oidc = %+v", cfg.OIDC)
	}
}

// TestTemplateTokensRefused feeds the lines of the tokens Secret templates (config/3xx-*) as
// shipped: each placeholder must be refused, naming the variable, the file and the line.
func TestTemplateTokensRefused(t *testing.T) {
	const template = "dashboard:stock-readers:CHANGE-ME-dashboard-token-000\n" +
		"buyer:purchasing:CHANGE-ME-buyer-token-0000000000\n"
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(template), 0o600); err != nil {
		t.Fatal(err)
	}
	partly := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(partly, []byte("dashboard:stock-readers:"+secretA+"\nbuyer:purchasing:CHANGE-ME\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		env  map[string]string
		want []string
	}{
		"tokens file as shipped": {map[string]string{"AUTH_TOKENS_FILE": file}, []string{
			"AUTH_TOKENS_FILE " + file, `line 1: the secret of token "dashboard" holds the template placeholder "CHANGE-ME-dashboard-token-000"`,
			`line 2: the secret of token "buyer" holds the template placeholder "CHANGE-ME-buyer-token-0000000000"`}},
		"one template line among real ones": {map[string]string{"AUTH_TOKENS_FILE": partly}, []string{
			"AUTH_TOKENS_FILE " + partly, `line 2: the secret of token "buyer" holds the template placeholder "CHANGE-ME"`}},
		"inline tokens": {map[string]string{"AUTH_TOKENS": "ops:ops:" + secretA + ";manager:managers:CHANGE-ME-manager-token-000000"}, []string{
			"AUTH_TOKENS", `line 2: the secret of token "manager" holds the template placeholder`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("AUTH_TOKENS_FILE", "")
			t.Setenv("AUTH_TOKENS", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := ConfigFromEnv()
			if err == nil {
				t.Fatal("template tokens accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestParseTokens(t *testing.T) {
	cases := map[string]struct {
		in      string
		want    []Token
		wantErr bool
	}{
		"colon in secret": {in: "a:g1,g2:sec:ret", want: []Token{{Name: "a", Secret: "sec:ret", Groups: []string{"g1", "g2"}}}},
		"no groups":       {in: "a::secret", want: []Token{{Name: "a", Secret: "secret"}}},
		"comments":        {in: "# x\n\n  # y\n", want: nil},
		"missing secret":  {in: "a:g", wantErr: true},
		"empty secret":    {in: "a:g:", wantErr: true},
		"empty name":      {in: ":g:secret", wantErr: true},
		"template secret": {in: "buyer:purchasing:CHANGE-ME-buyer-token-0000000000", wantErr: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := ParseTokens(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && !slices.EqualFunc(got, tc.want, func(a, b Token) bool {
				return a.Name == b.Name && a.Secret == b.Secret && slices.Equal(a.Groups, b.Groups)
			}) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParseTokens checks that every parsed token has a name and a secret, and that a token
// that New accepts authenticates with exactly its own secret.
func FuzzParseTokens(f *testing.F) {
	f.Add("dashboard:stock-readers:" + secretA)
	f.Add("a:b:c:d\n#x\n:::\n")
	f.Fuzz(func(t *testing.T, in string) {
		toks, err := ParseTokens(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, tok := range toks {
			if tok.Name == "" || tok.Secret == "" {
				t.Fatalf("parsed token without name or secret: %+v", tok)
			}
		}
		a, err := New(context.Background(), Config{Tokens: toks})
		if err != nil {
			return
		}
		for _, tok := range toks {
			id, err := a.Authenticate(request("Bearer " + tok.Secret))
			if err != nil || id.Subject != tok.Name {
				t.Fatalf("token %+v: %+v, %v", tok, id, err)
			}
		}
	})
}
