package notify

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// APIPrefix is the path under which the notify function serves its endpoint API.
const APIPrefix = "/api/endpoints"

// API is the authenticated endpoint API: create, list, get, update, disable, enable, rotate
// and replay, on endpoints stored in Redis beside the ConfigMap's. Every request carries
// "Authorization: Bearer <Token>".
type API struct {
	Store      *Store
	Dispatcher *Dispatcher
	// Guard checks, at registration, the addresses an endpoint's host resolves to (the
	// deliveries check them again on every connection).
	Guard *Guard
	// Resolve resolves a host name (net.DefaultResolver's LookupNetIP when nil).
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Token is the bearer token; empty turns the API off (every request answers 404).
	Token string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// apiError is the body of every error answer: what is wrong, and for a 400 each bad field.
type apiError struct {
	Error  string        `json:"error"`
	Fields []*FieldError `json:"fields,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	body := apiError{Error: err.Error(), Fields: FieldErrors(err)}
	writeJSON(w, code, body)
}

// authorized compares the bearer token in constant time (over digests, so the length of the
// token does not show either).
func (a *API) authorized(r *http.Request) bool {
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || given == "" {
		return false
	}
	g, t := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(a.Token))
	return subtle.ConstantTimeCompare(g[:], t[:]) == 1
}

func (a *API) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// ServeHTTP routes:
//
//	GET  /api/endpoints                  every endpoint (ConfigMap and API) with circuit and counters
//	POST /api/endpoints                  create (EndpointRequest) → 201 with the secret
//	GET  /api/endpoints/{name}           one endpoint
//	PUT  /api/endpoints/{name}           replace an API endpoint's settings (not its secret)
//	POST /api/endpoints/{name}/disable   pause an API endpoint: its messages wait
//	POST /api/endpoints/{name}/enable    resume it (and clear a 410 Gone mark, any endpoint)
//	POST /api/endpoints/{name}/rotate    RotateRequest → the new secret
//	POST /api/endpoints/{name}/replay    {"since", "until"} (RFC 3339) → Replay
//	GET  /api/endpoints/{name}/attempts/{msg_…}  the message's state there and its attempts log
//	POST /api/endpoints/{name}/retry/{msg_…}     attempt a pending or dead message there now
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.Token == "" {
		fail(w, http.StatusNotFound, errors.New("the endpoint API is off: NOTIFY_API_TOKEN is not set"))
		return
	}
	if !a.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="notify"`)
		fail(w, http.StatusUnauthorized, errors.New("missing or wrong bearer token"))
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, APIPrefix)
	if !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
		fail(w, http.StatusNotFound, fmt.Errorf("no such path: the API is under %s", APIPrefix))
		return
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if rest == "" || rest == "/" {
		parts = nil
	}
	ctx := r.Context()
	switch {
	case len(parts) == 0 && r.Method == http.MethodGet:
		a.list(ctx, w)
	case len(parts) == 0 && r.Method == http.MethodPost:
		a.create(ctx, w, r)
	case len(parts) == 1 && r.Method == http.MethodGet:
		a.get(ctx, w, parts[0])
	case len(parts) == 1 && r.Method == http.MethodPut:
		a.update(ctx, w, r, parts[0])
	case len(parts) == 2 && r.Method == http.MethodPost:
		switch parts[1] {
		case "disable", "enable":
			a.setPaused(ctx, w, parts[0], parts[1] == "disable")
		case "rotate":
			a.rotate(ctx, w, r, parts[0])
		case "replay":
			a.replay(ctx, w, r, parts[0])
		default:
			fail(w, http.StatusNotFound, fmt.Errorf("no action %q: disable, enable, rotate or replay", parts[1]))
		}
	case len(parts) == 3 && parts[1] == "attempts" && r.Method == http.MethodGet:
		a.attempts(ctx, w, parts[0], parts[2])
	case len(parts) == 3 && parts[1] == "retry" && r.Method == http.MethodPost:
		a.retry(ctx, w, parts[0], parts[2])
	case len(parts) <= 2:
		w.Header().Set("Allow", "GET, POST, PUT")
		fail(w, http.StatusMethodNotAllowed, fmt.Errorf("%s is not allowed on %s", r.Method, r.URL.Path))
	default:
		fail(w, http.StatusNotFound, fmt.Errorf("no such path %s", r.URL.Path))
	}
}

// storeError answers a registry error with its status.
func storeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		fail(w, http.StatusNotFound, err)
	case errors.Is(err, ErrExists), errors.Is(err, ErrConfigured):
		fail(w, http.StatusConflict, err)
	case len(FieldErrors(err)) > 0:
		fail(w, http.StatusBadRequest, err)
	default:
		slog.Error("notify API: Redis failed", "err", err)
		fail(w, http.StatusServiceUnavailable, err)
	}
}

func (a *API) configured(name string) error {
	if a.Dispatcher.IsConfigured(name) {
		return fmt.Errorf("endpoint %s is %w", name, ErrConfigured)
	}
	return nil
}

// Views returns every endpoint, ConfigMap ones first, each with its circuit, disabled mark and
// counters.
func (a *API) Views(ctx context.Context) ([]EndpointView, error) {
	stored, err := a.Store.APIEndpoints(ctx)
	if err != nil {
		return nil, err
	}
	var views []EndpointView
	for _, ep := range a.Dispatcher.Configured() {
		views = append(views, ConfigView(ep))
	}
	now := a.now()
	for _, name := range sortedNames(stored) {
		if a.Dispatcher.IsConfigured(name) {
			continue
		}
		views = append(views, stored[name].View(now))
	}
	disabled, err := a.Store.Disabled(ctx)
	if err != nil {
		return nil, err
	}
	counters, err := a.Store.Counters(ctx)
	if err != nil {
		return nil, err
	}
	for i := range views {
		v := &views[i]
		c, err := ReadBreaker(ctx, a.Store.rdb, v.Name)
		if err != nil {
			return nil, err
		}
		v.Circuit = &c
		if d := disabled[v.Name]; d != "" {
			v.Disabled = d
		}
		v.Counters = counters[v.Name]
	}
	return views, nil
}

func (a *API) list(ctx context.Context, w http.ResponseWriter) {
	views, err := a.Views(ctx)
	if err != nil {
		storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"endpoints": views})
}

func (a *API) get(ctx context.Context, w http.ResponseWriter, name string) {
	views, err := a.Views(ctx)
	if err != nil {
		storeError(w, err)
		return
	}
	for _, v := range views {
		if v.Name == name {
			writeJSON(w, http.StatusOK, v)
			return
		}
	}
	fail(w, http.StatusNotFound, fmt.Errorf("endpoint %s: %w", name, ErrNotFound))
}

// CheckDestination refuses an endpoint URL whose host is, or resolves to, an address the
// deliveries would refuse (SSRF at registration; the deliveries check again on connect).
func (a *API) CheckDestination(ctx context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fieldError("url", "%v", err)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		resolve := a.Resolve
		if resolve == nil {
			resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
				return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		addrs, err = resolve(rctx, u.Hostname())
		if err != nil || len(addrs) == 0 {
			return fieldError("url", "host %q does not resolve: %v", u.Hostname(), err)
		}
	}
	for _, ip := range addrs {
		if err := a.Guard.Check(net.JoinHostPort(ip.Unmap().String(), port)); err != nil {
			return fieldError("url", "%q resolves to a refused address: %v", raw, err)
		}
	}
	return nil
}

func (a *API) create(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	var q EndpointRequest
	if err := DecodeRequest(r.Body, &q); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if err := q.Validate(true); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if err := a.configured(q.Name); err != nil {
		fail(w, http.StatusConflict, err)
		return
	}
	if err := a.CheckDestination(ctx, q.URL); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	now := a.now().UTC()
	secret := q.Secret
	if secret == "" {
		secret = NewSecret()
	}
	s := StoredEndpoint{Name: q.Name, URL: q.URL, Types: q.Types, Headers: q.Headers, Timeout: q.Timeout,
		Concurrency: q.Concurrency, RateLimit: q.RateLimit, Secret: secret, Created: now, Updated: now}
	if err := a.Store.CreateAPIEndpoint(ctx, s); err != nil {
		storeError(w, err)
		return
	}
	a.refresh(ctx)
	v := s.View(now)
	v.Secret = secret
	writeJSON(w, http.StatusCreated, v)
}

func (a *API) update(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) {
	var q EndpointRequest
	if err := DecodeRequest(r.Body, &q); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if q.Name == "" {
		q.Name = name
	}
	err := q.Validate(false)
	if q.Name != name {
		err = errors.Join(err, fieldError("name", "%q differs from the path's %q: an endpoint cannot be renamed", q.Name, name))
	}
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if err := a.configured(name); err != nil {
		fail(w, http.StatusConflict, err)
		return
	}
	if err := a.CheckDestination(ctx, q.URL); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	now := a.now().UTC()
	s, err := a.Store.UpdateAPIEndpoint(ctx, name, func(s *StoredEndpoint) error {
		s.URL, s.Types, s.Headers, s.Timeout, s.Concurrency, s.RateLimit = q.URL, q.Types, q.Headers, q.Timeout, q.Concurrency, q.RateLimit
		s.Updated = now
		return nil
	})
	if err != nil {
		storeError(w, err)
		return
	}
	a.refresh(ctx)
	writeJSON(w, http.StatusOK, s.View(now))
}

func (a *API) setPaused(ctx context.Context, w http.ResponseWriter, name string, paused bool) {
	now := a.now().UTC()
	if a.Dispatcher.IsConfigured(name) {
		if paused {
			fail(w, http.StatusConflict, fmt.Errorf("endpoint %s is %w (set disabled: true)", name, ErrConfigured))
			return
		}
		if err := a.Store.Enable(ctx, name); err != nil {
			storeError(w, err)
			return
		}
		n, err := a.Store.Resume(ctx, name, now)
		if err != nil {
			storeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "paused": false, "resumed": n})
		return
	}
	s, err := a.Store.UpdateAPIEndpoint(ctx, name, func(s *StoredEndpoint) error {
		s.Paused, s.Updated = paused, now
		return nil
	})
	if err != nil {
		storeError(w, err)
		return
	}
	resumed := 0
	if !paused {
		if err := a.Store.Enable(ctx, name); err != nil {
			storeError(w, err)
			return
		}
		if resumed, err = a.Store.Resume(ctx, name, now); err != nil {
			storeError(w, err)
			return
		}
	}
	a.refresh(ctx)
	writeJSON(w, http.StatusOK, map[string]any{"name": s.Name, "paused": s.Paused, "resumed": resumed})
}

func (a *API) rotate(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) {
	var q RotateRequest
	if err := DecodeRequest(r.Body, &q); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	var errs []error
	overlap, err := ParseOverlap(q.Overlap)
	errs = append(errs, err)
	if q.Secret != "" {
		if _, err := decodeSecret(q.Secret); err != nil {
			errs = append(errs, fieldError("secret", "%v", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if err := a.configured(name); err != nil {
		fail(w, http.StatusConflict, fmt.Errorf("%w (rotate through its secretEnv variables)", err))
		return
	}
	secret := q.Secret
	if secret == "" {
		secret = NewSecret()
	}
	now := a.now().UTC()
	s, err := a.Store.UpdateAPIEndpoint(ctx, name, func(s *StoredEndpoint) error {
		if s.Secret == secret {
			return fieldError("secret", "is the current secret already")
		}
		s.Previous, s.PreviousUntil, s.Secret, s.Updated = s.Secret, now.Add(overlap), secret, now
		return nil
	})
	if err != nil {
		storeError(w, err)
		return
	}
	a.refresh(ctx)
	v := s.View(now)
	v.Secret = secret
	writeJSON(w, http.StatusOK, v)
}

// ReplayRequest is the body of a replay: a time range (RFC 3339); until defaults to now.
type ReplayRequest struct {
	Since string `json:"since"`
	Until string `json:"until,omitempty"`
}

// Parse checks a replay's range at now.
func (q ReplayRequest) Parse(now time.Time) (since, until time.Time, err error) {
	var errs []error
	since, e := time.Parse(time.RFC3339Nano, q.Since)
	if e != nil {
		errs = append(errs, fieldError("since", "%q is not an RFC 3339 time (2006-01-02T15:04:05Z)", q.Since))
	}
	until = now
	if q.Until != "" {
		if until, e = time.Parse(time.RFC3339Nano, q.Until); e != nil {
			errs = append(errs, fieldError("until", "%q is not an RFC 3339 time", q.Until))
		}
	}
	if len(errs) == 0 && !since.Before(until) {
		errs = append(errs, fieldError("since", "%s is not before until (%s)", q.Since, until.Format(time.RFC3339)))
	}
	return since, until, errors.Join(errs...)
}

func (a *API) replay(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) {
	var q ReplayRequest
	if err := DecodeRequest(r.Body, &q); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	now := a.now()
	since, until, err := q.Parse(now)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	a.refresh(ctx)
	ep, ok := a.Dispatcher.Endpoint(name)
	if !ok {
		fail(w, http.StatusNotFound, fmt.Errorf("endpoint %s: %w", name, ErrNotFound))
		return
	}
	res, err := a.Store.Replay(ctx, ep, since, until, now)
	if err != nil {
		storeError(w, err)
		return
	}
	a.Dispatcher.Wake()
	writeJSON(w, http.StatusOK, res)
}

// refresh makes this instance see a change at once (others within RefreshInterval).
func (a *API) refresh(ctx context.Context) {
	if err := a.Dispatcher.Refresh(ctx, true); err != nil {
		slog.Warn("notify API: reading the endpoints back failed", "err", err)
	}
}

// MessageAttempts is a message's state at one endpoint and its attempts log.
type MessageAttempts struct {
	Message  string    `json:"message"`
	Endpoint string    `json:"endpoint"`
	State    string    `json:"state"`
	Attempts []Attempt `json:"attempts"`
}

func (a *API) attempts(ctx context.Context, w http.ResponseWriter, endpoint, message string) {
	states, err := a.Store.States(ctx, message)
	if err != nil {
		storeError(w, err)
		return
	}
	st, ok := states[endpoint]
	if !ok {
		fail(w, http.StatusNotFound, fmt.Errorf("message %s at endpoint %s: %w (never enqueued there, or older than NOTIFY_RETENTION)", message, endpoint, ErrNotFound))
		return
	}
	log, err := a.Store.Attempts(ctx, message, endpoint)
	if err != nil {
		storeError(w, err)
		return
	}
	if log == nil {
		log = []Attempt{}
	}
	writeJSON(w, http.StatusOK, MessageAttempts{Message: message, Endpoint: endpoint, State: st, Attempts: log})
}

func (a *API) retry(ctx context.Context, w http.ResponseWriter, endpoint, message string) {
	scheduled, err := a.Store.Retry(ctx, message, endpoint, a.now())
	if err != nil {
		storeError(w, err)
		return
	}
	if scheduled {
		a.Dispatcher.Wake()
	}
	writeJSON(w, http.StatusOK, map[string]any{"message": message, "endpoint": endpoint, "scheduled": scheduled})
}
