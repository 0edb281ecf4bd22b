// Package source loads the webhook function's sources file: one entry per sender, naming its
// provider, the env vars holding its secrets and its limits, validated and with defaults.
package source

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/function/webhook/delivery"
	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

// Providers a source may name.
const (
	ProviderGitHub           = "github"
	ProviderStripe           = "stripe"
	ProviderSlack            = "slack"
	ProviderStandardWebhooks = "standardwebhooks"
	ProviderHMAC             = "hmac"
	ProviderS3               = "s3"
)

// DefaultMaxBodyBytes is the body limit of a source that sets none.
const DefaultMaxBodyBytes = 1 << 20

// DefaultAlgorithm and DefaultEncoding are those of an hmac source that names none.
const (
	DefaultAlgorithm = "sha256"
	DefaultEncoding  = "hex"
)

// maxMaxBodyBytes caps maxBodyBytes: the whole body is held in memory while it is verified.
const maxMaxBodyBytes = 32 << 20

// DefaultDedupTTL is how long a delivery id is remembered per provider: at least as long as
// the provider keeps retrying (or lets a user redeliver) the same delivery.
var DefaultDedupTTL = map[string]time.Duration{
	// GitHub does not retry on its own; deliveries of the past 3 days can be redelivered by
	// hand with the same X-GitHub-Delivery.
	ProviderGitHub: 72 * time.Hour,
	// Stripe retries live-mode events with exponential back-off for up to 3 days; one more
	// day covers a manual resend at the end of that window.
	ProviderStripe: 96 * time.Hour,
	// Slack retries an Events API delivery 3 times within about 5 minutes.
	ProviderSlack: time.Hour,
	// The Standard Webhooks retry schedule ends after about 28 hours (5s … 10h steps).
	ProviderStandardWebhooks: 72 * time.Hour,
	// Unknown senders: as long as the longest of the known ones.
	ProviderHMAC: 96 * time.Hour,
	// An EventBridge API destination retries for up to 24 hours by default; MinIO keeps
	// undelivered events in its queue_dir and sends the same bytes again when the target is
	// back. Twice the EventBridge window; consumers absorb what comes later by (source, id).
	ProviderS3: 48 * time.Hour,
}

// File is the sources file.
type File struct {
	Sources []Config `json:"sources"`
}

// Config is one entry of the sources file, as written.
type Config struct {
	// Name is the path segment: POST /<name>.
	Name string `json:"name"`
	// Provider selects the signature scheme and how the id, type and subject are read.
	Provider string `json:"provider"`
	// SecretEnv names env vars holding the secret; any that is set may match (rotation).
	SecretEnv []string `json:"secretEnv"`
	// Type is the CloudEvent type for standardwebhooks and hmac sources.
	Type string `json:"type,omitempty"`
	// Header, Algorithm, Encoding, Prefix, TimestampHeader and IDHeader configure hmac sources
	// only; Header is required there, Algorithm defaults to DefaultAlgorithm and Encoding to
	// DefaultEncoding. An s3 source takes Header too: the header holding its bare token
	// (unset: "Authorization: Bearer <token>").
	Header          string `json:"header,omitempty"`
	Algorithm       string `json:"algorithm,omitempty"`
	Encoding        string `json:"encoding,omitempty"`
	Prefix          string `json:"prefix,omitempty"`
	TimestampHeader string `json:"timestampHeader,omitempty"`
	IDHeader        string `json:"idHeader,omitempty"`
	// Tolerance is the accepted distance of a signed timestamp from now (a positive Go
	// duration). Unset, the verifier's own default applies: signature.DefaultTolerance.
	Tolerance string `json:"tolerance,omitempty"`
	// DedupTTL is how long a delivery id is remembered (a Go duration of at least 1m). Unset,
	// DefaultDedupTTL of the provider.
	DedupTTL string `json:"dedupTTL,omitempty"`
	// MaxBodyBytes is the largest body accepted, 1 to 32 MiB. Unset, DefaultMaxBodyBytes.
	MaxBodyBytes int64 `json:"maxBodyBytes,omitempty"`
}

// Source is one validated source, ready to verify and describe deliveries.
type Source struct {
	Name         string
	Provider     string
	Verifier     signature.Verifier
	DedupTTL     time.Duration
	MaxBodyBytes int64
	describe     func(h http.Header, body []byte) (delivery.Delivery, error)
}

// Describe reads the delivery's id, type and subject; an error means a 400.
func (s *Source) Describe(h http.Header, body []byte) (delivery.Delivery, error) {
	return s.describe(h, body)
}

// LookupEnv is os.LookupEnv's shape, so tests can supply secrets without the environment.
type LookupEnv func(string) (string, bool)

// Load reads and validates the sources file at path.
func Load(path string, env LookupEnv) (map[string]*Source, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading sources file: %w", err)
	}
	srcs, err := Parse(data, env)
	if err != nil {
		return nil, fmt.Errorf("sources file %s: %w", path, err)
	}
	return srcs, nil
}

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// headerName is an HTTP header name (an RFC 9110 token, bounded).
var headerName = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")

// reservedNames would collide with the paths func-go serves itself.
var reservedNames = map[string]bool{"health": true}

// Parse validates a sources document. Every problem is reported, each naming its source and
// field, so one start-up shows all that is wrong.
func Parse(data []byte, env LookupEnv) (map[string]*Source, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if len(f.Sources) == 0 {
		return nil, errors.New("sources: none configured")
	}
	out := make(map[string]*Source, len(f.Sources))
	var errs []error
	for i, c := range f.Sources {
		where := fmt.Sprintf("sources[%d]", i)
		if c.Name != "" {
			where = fmt.Sprintf("source %q (sources[%d])", c.Name, i)
		}
		s, err := build(c, env)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if _, dup := out[s.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: name: used by an earlier source", where))
			continue
		}
		out[s.Name] = s
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// fieldError names the field of a source that is wrong.
func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...))
}

func build(c Config, env LookupEnv) (*Source, error) {
	var errs []error
	bad := func(field, format string, args ...any) { errs = append(errs, fieldError(field, format, args...)) }

	if !namePattern.MatchString(c.Name) || reservedNames[c.Name] {
		bad("name", "%q must be a lower-case DNS label (a-z, 0-9, '-') other than %q", c.Name, "health")
	}
	ttl, ok := DefaultDedupTTL[c.Provider]
	if !ok {
		bad("provider", "%q is not one of github, stripe, slack, standardwebhooks, hmac, s3", c.Provider)
	}
	var tolerance time.Duration // zero: the verifier applies signature.DefaultTolerance
	if c.Tolerance != "" {
		d, err := time.ParseDuration(c.Tolerance)
		if err != nil || d <= 0 {
			bad("tolerance", "%q is not a positive Go duration (e.g. 5m)", c.Tolerance)
		}
		tolerance = d
	}
	if c.DedupTTL != "" {
		d, err := time.ParseDuration(c.DedupTTL)
		if err != nil || d < time.Minute {
			bad("dedupTTL", "%q is not a Go duration of at least 1m (e.g. 72h)", c.DedupTTL)
		}
		ttl = d
	}
	maxBody := c.MaxBodyBytes
	switch {
	case maxBody == 0:
		maxBody = DefaultMaxBodyBytes
	case maxBody < 0 || maxBody > maxMaxBodyBytes:
		bad("maxBodyBytes", "%d is not between 1 and %d", maxBody, maxMaxBodyBytes)
	}
	secrets, err := resolveSecrets(c, env)
	if err != nil {
		errs = append(errs, err)
	}
	hmacOnly := map[string]string{"header": c.Header, "algorithm": c.Algorithm, "encoding": c.Encoding,
		"prefix": c.Prefix, "timestampHeader": c.TimestampHeader, "idHeader": c.IDHeader}
	if c.Provider != ProviderHMAC {
		for _, field := range []string{"header", "algorithm", "encoding", "prefix", "timestampHeader", "idHeader"} {
			if hmacOnly[field] != "" && (field != "header" || c.Provider != ProviderS3) {
				bad(field, "only hmac sources take it")
			}
		}
	}
	if c.Provider == ProviderS3 {
		if c.Header != "" && !headerName.MatchString(c.Header) {
			bad("header", "%q is not a header name", c.Header)
		}
		if c.Tolerance != "" {
			bad("tolerance", "s3 sources sign no timestamp")
		}
		for i, sec := range secrets {
			if len(sec) < signature.MinTokenBytes {
				bad("secretEnv", "token %d of %v is %d characters, fewer than %d: use a random one (openssl rand -hex 32)", i+1, c.SecretEnv, len(sec), signature.MinTokenBytes)
			}
		}
	}
	needsType := c.Provider == ProviderHMAC || c.Provider == ProviderStandardWebhooks
	switch {
	case needsType && c.Type == "":
		bad("type", "required for %s sources: the CloudEvent type to publish (e.g. com.example.invoice)", c.Provider)
	case !needsType && c.Type != "":
		bad("type", "%s sources take the type from the delivery", c.Provider)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	s := &Source{Name: c.Name, Provider: c.Provider, DedupTTL: ttl, MaxBodyBytes: maxBody}
	switch c.Provider {
	case ProviderGitHub:
		s.Verifier = &signature.GitHub{Secrets: secrets}
		s.describe = delivery.GitHub
	case ProviderStripe:
		s.Verifier = &signature.Stripe{Secrets: secrets, Tolerance: tolerance}
		s.describe = func(_ http.Header, body []byte) (delivery.Delivery, error) { return delivery.Stripe(body) }
	case ProviderSlack:
		s.Verifier = &signature.Slack{Secrets: secrets, Tolerance: tolerance}
		s.describe = delivery.Slack
	case ProviderStandardWebhooks:
		keys := make([][]byte, len(secrets))
		for i, sec := range secrets {
			k, err := signature.DecodeStandardSecret(string(sec))
			if err != nil {
				return nil, fieldError("secretEnv", "secret %d of %v: %v", i+1, c.SecretEnv, err)
			}
			keys[i] = k
		}
		s.Verifier = &signature.StandardWebhooks{Secrets: keys, Tolerance: tolerance}
		typ := c.Type
		s.describe = func(h http.Header, body []byte) (delivery.Delivery, error) {
			return delivery.StandardWebhooks(h, body, typ)
		}
	case ProviderS3:
		// Matches MinIO's webhook notification target, which sends its auth_token in
		// Authorization, prefixing "Bearer " to a one-word token (a two-word value goes as
		// written), and an EventBridge API key connection, which sends the key under the name
		// it was given (Header). Ceph RGW's HTTP push endpoint sends no credentials header, so
		// it needs a proxy that adds one (see TestS3SourceAuthenticatesWhatTheStoresSend).
		s.Verifier = &signature.Token{Secrets: secrets, Header: c.Header}
		s.describe = func(_ http.Header, body []byte) (delivery.Delivery, error) { return delivery.S3(body) }
	case ProviderHMAC:
		v, err := buildHMAC(c, secrets, tolerance)
		if err != nil {
			return nil, err
		}
		s.Verifier = v
		idHeader, typ := c.IDHeader, c.Type
		s.describe = func(h http.Header, body []byte) (delivery.Delivery, error) {
			return delivery.HMAC(h, body, idHeader, typ)
		}
	}
	return s, nil
}

func buildHMAC(c Config, secrets [][]byte, tolerance time.Duration) (*signature.HMAC, error) {
	var errs []error
	if c.Header == "" {
		errs = append(errs, fieldError("header", "required for hmac sources: the header carrying the signature"))
	}
	algorithm := c.Algorithm
	if algorithm == "" {
		algorithm = DefaultAlgorithm
	}
	newHash, ok := signature.Algorithms[algorithm]
	if !ok {
		errs = append(errs, fieldError("algorithm", "%q is not one of sha1, sha256, sha512", c.Algorithm))
	}
	encoding := c.Encoding
	if encoding == "" {
		encoding = DefaultEncoding
	}
	if !signature.Encodings[encoding] {
		errs = append(errs, fieldError("encoding", "%q is not one of hex, base64", c.Encoding))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &signature.HMAC{Secrets: secrets, Header: c.Header, Hash: newHash, Encoding: encoding,
		Prefix: c.Prefix, TimestampHeader: c.TimestampHeader, Tolerance: tolerance}, nil
}

// resolveSecrets reads the named env vars. Unset or empty ones are skipped, so a
// "…_PREVIOUS" variable only needs a value during a rotation; at least one must be set. A value
// still holding a CHANGE-ME placeholder of the Secret template (for a Standard Webhooks secret,
// also inside its base64) is refused: anyone who read the template could sign with it.
func resolveSecrets(c Config, env LookupEnv) ([][]byte, error) {
	if len(c.SecretEnv) == 0 {
		return nil, fieldError("secretEnv", "required: the env vars (fed by secretKeyRef) holding the signing secret")
	}
	var secrets [][]byte
	var placeholders []error
	for _, name := range c.SecretEnv {
		if strings.TrimSpace(name) == "" {
			return nil, fieldError("secretEnv", "contains an empty name")
		}
		v, ok := env(name)
		if !ok || v == "" {
			continue
		}
		if err := templateSecret(c.Provider, name, v); err != nil {
			placeholders = append(placeholders, err)
			continue
		}
		secrets = append(secrets, []byte(v))
	}
	if len(placeholders) > 0 {
		return nil, fieldError("secretEnv", "%v", errors.Join(placeholders...))
	}
	if len(secrets) == 0 {
		return nil, fieldError("secretEnv", "none of %v is set", c.SecretEnv)
	}
	return secrets, nil
}

// templateSecret reports a secret that is still the Secret template's placeholder. The
// template's Standard Webhooks secret is "whsec_" + the base64 of a placeholder, so that it
// decodes like a real one; it is recognised after decoding.
func templateSecret(provider, envName, v string) error {
	if err := placeholder.Check(envName, v); err != nil {
		return err
	}
	if provider != ProviderStandardWebhooks {
		return nil
	}
	if key, err := signature.DecodeStandardSecret(v); err == nil {
		return placeholder.Check(envName+" (base64-decoded after "+signature.StandardSecretPrefix+")", string(key))
	}
	return nil
}
