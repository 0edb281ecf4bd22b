// Package notify delivers events to outbound webhook endpoints: endpoint configuration, Standard
// Webhooks signing, a durable retry schedule in Redis and the attempt loop.
package notify

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

// Bounds of an endpoint's configuration.
const (
	// DefaultTimeout bounds one attempt of an endpoint that sets no timeout.
	DefaultTimeout = 15 * time.Second
	// MaxTimeout caps an endpoint's timeout: a delivery's lease must outlast it.
	MaxTimeout = 2 * time.Minute
	// DefaultConcurrency is the bulkhead of an endpoint that sets none: attempts in flight at once.
	DefaultConcurrency = 8
	// MaxConcurrency caps an endpoint's concurrency.
	MaxConcurrency = 256
	// MaxURLBytes caps an endpoint's URL.
	MaxURLBytes = 2048
	// MaxSecrets is how many secrets sign side by side: the current one and, during a rotation,
	// the previous one.
	MaxSecrets = 2
	// MaxHeaders caps an endpoint's custom headers.
	MaxHeaders = 32
	// MaxRateLimit caps an endpoint's rateLimit (attempts per second).
	MaxRateLimit = 100000
)

// File is the endpoints file (the notify-endpoints ConfigMap).
type File struct {
	Endpoints []EndpointConfig `json:"endpoints"`
}

// EndpointConfig is one entry of the endpoints file, as written.
type EndpointConfig struct {
	// Name identifies the endpoint in keys, logs, dead letters and the CLI.
	Name string `json:"name"`
	// URL is where deliveries are POSTed: http or https, no user info, no fragment.
	URL string `json:"url"`
	// Types are the event types the endpoint wants: an exact type, or a prefix ending in "*"
	// ("com.example.order.*"); "*" alone is every type.
	Types []string `json:"types"`
	// SecretEnv names the env vars holding the endpoint's Standard Webhooks secrets (whsec_…):
	// the current one and, during a rotation, the previous one. Every one that is set signs.
	SecretEnv []string `json:"secretEnv"`
	// Headers are added to every delivery; they cannot replace the signed or content headers.
	Headers map[string]string `json:"headers,omitempty"`
	// Timeout bounds one attempt (a Go duration up to MaxTimeout). Unset, DefaultTimeout.
	Timeout string `json:"timeout,omitempty"`
	// Concurrency is the endpoint's bulkhead: attempts in flight at once, 1 to MaxConcurrency.
	// Unset, DefaultConcurrency.
	Concurrency int `json:"concurrency,omitempty"`
	// RateLimit caps the attempts per second at the endpoint, across all instances (counted in
	// Redis); 0 is no cap. Messages over it wait for the next second, no attempt counted.
	RateLimit int `json:"rateLimit,omitempty"`
	// Disabled keeps the endpoint configured but sends it nothing.
	Disabled bool `json:"disabled,omitempty"`
}

// Endpoint is one validated endpoint, ready to deliver to.
type Endpoint struct {
	Name        string
	URL         string
	Types       []string
	Headers     map[string]string
	Timeout     time.Duration
	Concurrency int
	RateLimit   int
	Disabled    bool
	Signer      *Signer
	// Paused (an API endpoint disabled through the API): nothing is sent, its messages wait.
	Paused bool
	// FromAPI: made through the endpoint API (stored in Redis), not declared in the ConfigMap.
	FromAPI bool
	// From overlapEnds on (the end of a rotation's overlap), afterOverlap signs instead of
	// Signer: the previous secret stops at that instant, in every instance.
	overlapEnds  time.Time
	afterOverlap *Signer
}

// signerAt is the signer of an attempt made at t.
func (e *Endpoint) signerAt(t time.Time) *Signer {
	if e.afterOverlap != nil && !t.Before(e.overlapEnds) {
		return e.afterOverlap
	}
	return e.Signer
}

// Wants reports whether the endpoint subscribes to events of type typ.
func (e *Endpoint) Wants(typ string) bool {
	for _, t := range e.Types {
		if prefix, ok := strings.CutSuffix(t, "*"); ok {
			if strings.HasPrefix(typ, prefix) {
				return true
			}
		} else if t == typ {
			return true
		}
	}
	return false
}

// LookupEnv is os.LookupEnv's shape, so tests can supply secrets without the environment.
type LookupEnv func(string) (string, bool)

// Load reads and validates the endpoints file at path.
func Load(path string, env LookupEnv) ([]*Endpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading endpoints file: %w", err)
	}
	eps, err := Parse(data, env)
	if err != nil {
		return nil, fmt.Errorf("endpoints file %s: %w", path, err)
	}
	return eps, nil
}

var (
	namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// typePattern is a CloudEvents type as the platform writes them, optionally ending in "*".
	typePattern = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]{0,254})?\*?$`)
	// tokenPattern is an HTTP header name (RFC 9110 token).
	tokenPattern = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
)

// reservedHeaders are set by the delivery itself; an endpoint's headers cannot replace them.
var reservedHeaders = []string{"webhook-id", "webhook-timestamp", "webhook-signature", "content-type",
	"content-length", "host", "transfer-encoding", "connection", "user-agent"}

// Parse validates an endpoints document. Every problem is reported, each naming its endpoint and
// field, so one start-up shows all that is wrong. An empty list is valid: nothing is delivered.
func Parse(data []byte, env LookupEnv) ([]*Endpoint, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	out := make([]*Endpoint, 0, len(f.Endpoints))
	seen := map[string]bool{}
	var errs []error
	for i, c := range f.Endpoints {
		where := fmt.Sprintf("endpoints[%d]", i)
		if c.Name != "" {
			where = fmt.Sprintf("endpoint %q (endpoints[%d])", c.Name, i)
		}
		ep, err := build(c, env)
		if seen[c.Name] && c.Name != "" {
			err = errors.Join(err, fieldError("name", "used by an earlier endpoint"))
		}
		seen[c.Name] = true
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		out = append(out, ep)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// FieldError is one problem of an endpoint's configuration, naming the field.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

func fieldError(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// FieldErrors lists the FieldErrors inside err (joined or wrapped), in order.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		var fe *FieldError
		switch x := e.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, inner := range x.Unwrap() {
				walk(inner)
			}
		default:
			if errors.As(e, &fe) {
				out = append(out, fe)
			}
		}
	}
	walk(err)
	return out
}

func build(c EndpointConfig, env LookupEnv) (*Endpoint, error) {
	ep, errs := buildSpec(c)
	keys, err := resolveSecrets(c.SecretEnv, env)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	ep.Signer = &Signer{keys: keys}
	return ep, nil
}

// buildSpec validates everything of an endpoint but its secrets.
func buildSpec(c EndpointConfig) (*Endpoint, []error) {
	var errs []error
	bad := func(field, format string, args ...any) { errs = append(errs, fieldError(field, format, args...)) }

	if !namePattern.MatchString(c.Name) {
		bad("name", "%q must be a lower-case DNS label (a-z, 0-9, '-')", c.Name)
	}
	if err := ValidateURL(c.URL); err != nil {
		bad("url", "%v", err)
	}
	if len(c.Types) == 0 {
		bad("types", "required: the event types to deliver (exact, or a prefix ending in *)")
	}
	for _, t := range c.Types {
		if t == "" || !typePattern.MatchString(t) {
			bad("types", "%q is not an event type or a prefix ending in *", t)
		}
	}
	ep := &Endpoint{Name: c.Name, URL: c.URL, Types: slices.Clone(c.Types), Timeout: DefaultTimeout,
		Concurrency: DefaultConcurrency, Disabled: c.Disabled, Headers: map[string]string{}, RateLimit: c.RateLimit}
	if c.RateLimit < 0 || c.RateLimit > MaxRateLimit {
		bad("rateLimit", "%d is not between 0 (no cap) and %d per second", c.RateLimit, MaxRateLimit)
	}
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 || d > MaxTimeout {
			bad("timeout", "%q is not a positive Go duration up to %s (e.g. 10s)", c.Timeout, MaxTimeout)
		}
		ep.Timeout = d
	}
	switch {
	case c.Concurrency == 0:
	case c.Concurrency < 0 || c.Concurrency > MaxConcurrency:
		bad("concurrency", "%d is not between 1 and %d", c.Concurrency, MaxConcurrency)
	default:
		ep.Concurrency = c.Concurrency
	}
	if len(c.Headers) > MaxHeaders {
		bad("headers", "%d headers, at most %d", len(c.Headers), MaxHeaders)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Headers)) {
		v := c.Headers[name]
		switch {
		case !tokenPattern.MatchString(name):
			bad("headers", "%q is not a header name", name)
		case slices.Contains(reservedHeaders, strings.ToLower(name)) || strings.HasPrefix(strings.ToLower(name), "ce-"):
			bad("headers", "%q is set by the delivery itself", name)
		case strings.ContainsAny(v, "\r\n\x00") || len(v) > 4096:
			bad("headers", "value of %q holds a line break or NUL, or is longer than 4096 bytes", name)
		default:
			ep.Headers[http.CanonicalHeaderKey(name)] = v
		}
	}
	return ep, errs
}

// resolveSecrets reads and decodes the named env vars. Unset or empty ones are skipped, so a
// "…_PREVIOUS" variable only needs a value during a rotation; at least one must be set. A
// template placeholder (CHANGE-ME, also inside the base64) is refused.
func resolveSecrets(names []string, env LookupEnv) ([][]byte, error) {
	if len(names) == 0 {
		return nil, fieldError("secretEnv", "required: the env vars holding the endpoint's whsec_ secrets")
	}
	if len(names) > MaxSecrets {
		return nil, fieldError("secretEnv", "%d names, at most %d (current and previous)", len(names), MaxSecrets)
	}
	var keys [][]byte
	var errs []error
	for _, name := range names {
		if strings.TrimSpace(name) == "" {
			errs = append(errs, fieldError("secretEnv", "contains an empty name"))
			continue
		}
		v, ok := env(name)
		if !ok || v == "" {
			continue
		}
		if err := placeholder.Check(name, v); err != nil {
			errs = append(errs, fieldError("secretEnv", "%v", err))
			continue
		}
		k, err := signature.DecodeStandardSecret(v)
		if err != nil {
			errs = append(errs, fieldError("secretEnv", "%s: %v", name, err))
			continue
		}
		if err := placeholder.Check(name+" (decoded)", string(k)); err != nil {
			errs = append(errs, fieldError("secretEnv", "%v", err))
			continue
		}
		if len(k) < 16 {
			errs = append(errs, fieldError("secretEnv", "%s: the key is %d bytes, at least 16 (24 to 64 recommended)", name, len(k)))
			continue
		}
		keys = append(keys, k)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(keys) == 0 {
		return nil, fieldError("secretEnv", "none of %v is set", names)
	}
	return keys, nil
}

// ValidateURL checks an endpoint URL's form: absolute http or https with a host, no user info
// (credentials belong in headers fed from a Secret), no fragment, at most MaxURLBytes. Where
// it may connect is checked on every connection (see Guard), not here: a name resolves anew.
func ValidateURL(raw string) error {
	if raw == "" {
		return errors.New("required")
	}
	if len(raw) > MaxURLBytes {
		return fmt.Errorf("%d bytes, at most %d", len(raw), MaxURLBytes)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: the scheme must be http or https", raw)
	case u.Opaque != "" || u.Host == "":
		return fmt.Errorf("%q has no host", raw)
	case u.User != nil:
		return fmt.Errorf("%q holds user info: put credentials in headers", raw)
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return fmt.Errorf("%q holds a fragment", raw)
	case strings.ContainsAny(raw, " \t\r\n\x00\\"):
		return fmt.Errorf("%q holds a space, control character or backslash", raw)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	if port := u.Port(); port != "" {
		if _, err := net.LookupPort("tcp", port); err != nil || port == "0" {
			return fmt.Errorf("%q: port %q is not a TCP port", raw, port)
		}
	}
	return nil
}
