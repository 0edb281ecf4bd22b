package httpauth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kelseyhightower/envconfig"

	"github.com/knfaas/knfaas/internal/function/placeholder"
)

// EnvSettings are the environment variables ConfigFromEnv reads. A function sets them in its
// Knative Service; the tokens file is typically a Secret mounted as a volume, so rotating a
// token is an edit of the Secret (kubelet refreshes the file) and a restart of the function.
type EnvSettings struct {
	// TokensFile names a file of static tokens, one per line: name:group1,group2:secret.
	TokensFile string `envconfig:"AUTH_TOKENS_FILE"`
	// Tokens holds the same lines inline (newline- or semicolon-separated), for local runs.
	Tokens string `envconfig:"AUTH_TOKENS"`
	// OIDCIssuer turns on JWT verification for that issuer.
	OIDCIssuer string `envconfig:"AUTH_OIDC_ISSUER"`
	// OIDCAudience is the required "aud" value.
	OIDCAudience string `envconfig:"AUTH_OIDC_AUDIENCE"`
	// OIDCJWKSURL skips discovery and fetches keys from this URL.
	OIDCJWKSURL string `envconfig:"AUTH_OIDC_JWKS_URL"`
	// OIDCGroupsClaim names the claim that lists the caller's groups.
	OIDCGroupsClaim string `envconfig:"AUTH_OIDC_GROUPS_CLAIM" default:"groups"`
}

// ConfigFromEnv reads EnvSettings and the tokens file they name.
func ConfigFromEnv() (Config, error) {
	var s EnvSettings
	if err := envconfig.Process("", &s); err != nil {
		return Config{}, fmt.Errorf("httpauth: reading environment: %w", err)
	}
	return s.Config()
}

// Config turns the settings into a Config, reading the tokens file if one is named.
func (s EnvSettings) Config() (Config, error) {
	var cfg Config
	if s.TokensFile != "" {
		f, err := os.Open(s.TokensFile)
		if err != nil {
			return Config{}, fmt.Errorf("httpauth: opening AUTH_TOKENS_FILE: %w", err)
		}
		defer f.Close()
		toks, err := ParseTokens(f)
		if err != nil {
			return Config{}, fmt.Errorf("httpauth: AUTH_TOKENS_FILE %s: %w", s.TokensFile, err)
		}
		cfg.Tokens = append(cfg.Tokens, toks...)
	}
	if s.Tokens != "" {
		toks, err := ParseTokens(strings.NewReader(strings.ReplaceAll(s.Tokens, ";", "\n")))
		if err != nil {
			return Config{}, fmt.Errorf("httpauth: AUTH_TOKENS: %w", err)
		}
		cfg.Tokens = append(cfg.Tokens, toks...)
	}
	if s.OIDCIssuer != "" {
		cfg.OIDC = &OIDCConfig{
			Issuer:      s.OIDCIssuer,
			Audience:    s.OIDCAudience,
			JWKSURL:     s.OIDCJWKSURL,
			GroupsClaim: s.OIDCGroupsClaim,
		}
	}
	return cfg, nil
}

// ParseTokens reads lines of the form name:groups:secret, where groups is a comma-separated
// list (possibly empty) and the secret is everything after the second colon. Blank lines and
// lines starting with # are skipped. A secret still holding a CHANGE-ME placeholder of the
// Secret templates is refused, every such line named; the other checks are New's.
func ParseTokens(r io.Reader) ([]Token, error) {
	var out []Token
	var placeholders []error
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok1 := strings.Cut(line, ":")
		groups, secret, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("line %d: want name:groups:secret", n)
		}
		name = strings.TrimSpace(name)
		if name == "" {
			return nil, fmt.Errorf("line %d: empty name", n)
		}
		if secret == "" {
			return nil, fmt.Errorf("line %d: empty secret", n)
		}
		if err := placeholder.Check(fmt.Sprintf("line %d: the secret of token %q", n, name), secret); err != nil {
			placeholders = append(placeholders, err)
			continue
		}
		t := Token{Name: name, Secret: secret}
		for g := range strings.SplitSeq(groups, ",") {
			if g = strings.TrimSpace(g); g != "" {
				t.Groups = append(t.Groups, g)
			}
		}
		out = append(out, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading tokens: %w", err)
	}
	if len(placeholders) > 0 {
		return nil, errors.Join(placeholders...)
	}
	return out, nil
}
