// Package dashboard serves the local dashboard of `knfaas up` at /ui/: services, triggers,
// recent events with their journeys, dead letters (with redrive), processes and open tasks.
package dashboard

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

// Prefix is where the dashboard is served; the path without its last slash redirects to it.
const Prefix = "/ui/"

// Bounds of every list and query parameter.
const (
	// DefaultLimit and MaxLimit bound the rows of a list (?limit=).
	DefaultLimit = 50
	MaxLimit     = 200
	// maxIDLength bounds an event or letter id in a path or query.
	maxIDLength = 256
	// maxSpans bounds the spans drawn for one event; maxTraces the traces.
	maxSpans  = 2000
	maxTraces = 20
	// maxShownBytes bounds a letter's event, answer or detail shown.
	maxShownBytes = 64 << 10
	// maxFormBytes bounds a POST body.
	maxFormBytes = 4 << 10
	// readTimeout bounds the Redis reads of one page.
	readTimeout = 5 * time.Second
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Service is a Knative Service of the run.
type Service struct {
	// Key is namespace/name.
	Key string
	// Instances returns the instances running or starting now.
	Instances func() int
}

// Trigger is a Trigger of the run.
type Trigger struct {
	// Key and Broker are namespace/name; Subscriber is where it delivers.
	Key, Broker, Subscriber string
}

// Options are what the dashboard shows and acts on.
type Options struct {
	// Addr is the host:port of the listener the dashboard is served on. The dashboard is served
	// only when it is a loopback address, and only to requests whose Host header names it.
	Addr string
	// Metrics are the run's counters: cold starts and the triggers' outcomes.
	Metrics  *metrics.Runtime
	Services []Service
	Triggers []Trigger
	// Brokers are the run's brokers as namespace/name: where a letter may be redriven.
	Brokers []string
	// Traces is the run's span store; nil when tracing is off.
	Traces *tracestore.Store
	// Redis holds the dead letters, process instances and tasks.
	Redis       redis.UniversalClient
	DeadLetters *deadletter.Store
	// Publisher returns a sender to broker (namespace/name) for a redrive.
	Publisher func(broker string) (deadletter.Publisher, error)
	// RedriveTimeout bounds one redrive send (30s when 0).
	RedriveTimeout time.Duration
	Log            *slog.Logger
}

// Handler serves the dashboard.
type Handler struct {
	opts     Options
	mux      *http.ServeMux
	pages    map[string]*template.Template
	csrf     *csrfKeys
	hosts    map[string]bool
	loopback bool
	cookie   string
	brokers  map[string]bool
}

// New returns the dashboard of a run, with a new per-run CSRF secret.
func New(opts Options) (*Handler, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.RedriveTimeout <= 0 {
		opts.RedriveTimeout = 30 * time.Second
	}
	h := &Handler{opts: opts, mux: http.NewServeMux(), pages: map[string]*template.Template{}, brokers: map[string]bool{}}
	host, port, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("dashboard address %q: %w", opts.Addr, err)
	}
	ip := net.ParseIP(host)
	h.loopback = ip != nil && ip.IsLoopback()
	h.hosts = allowedHosts(host, port)
	h.cookie = "knfaas_ui_" + port
	if h.csrf, err = newCSRFKeys(); err != nil {
		return nil, err
	}
	for _, b := range opts.Brokers {
		h.brokers[b] = true
	}
	for _, page := range []string{"services", "triggers", "events", "journey", "deadletters", "letter", "redriven", "processes", "instance", "error"} {
		t, err := template.New(page).Funcs(templateFuncs).ParseFS(templateFiles, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("dashboard template %s: %w", page, err)
		}
		h.pages[page] = t
	}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		return nil, fmt.Errorf("dashboard static files: %w", err)
	}
	h.mux.Handle("GET "+Prefix+"static/", http.StripPrefix(Prefix+"static/", http.FileServerFS(static)))
	h.mux.Handle("GET "+strings.TrimSuffix(Prefix, "/"), http.RedirectHandler(Prefix, http.StatusFound))
	h.mux.HandleFunc("GET "+Prefix+"{$}", h.services)
	h.mux.HandleFunc("GET "+Prefix+"triggers", h.triggers)
	h.mux.HandleFunc("GET "+Prefix+"events", h.events)
	h.mux.HandleFunc("GET "+Prefix+"events/{id}", h.journey)
	h.mux.HandleFunc("GET "+Prefix+"deadletters", h.deadLetters)
	h.mux.HandleFunc("GET "+Prefix+"deadletters/{id}", h.letter)
	h.mux.HandleFunc("POST "+Prefix+"deadletters/{id}/redrive", h.redrive)
	h.mux.HandleFunc("GET "+Prefix+"processes", h.processes)
	h.mux.HandleFunc("GET "+Prefix+"processes/{id}", h.instance)
	return h, nil
}

// ServeHTTP refuses what is not for this dashboard (a listener that is not loopback, a Host
// header that names another address, a POST without its CSRF token), then serves the page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Cache-Control", "no-store")
	if !h.loopback {
		http.Error(w, fmt.Sprintf("the dashboard is served only when knfaas up listens on a loopback address (--addr 127.0.0.1:<port>), not %s", h.opts.Addr), http.StatusForbidden)
		return
	}
	if !h.hosts[strings.ToLower(r.Host)] {
		http.Error(w, fmt.Sprintf("refused: the Host header %q does not name this dashboard's loopback address (want one of %s)", truncate(r.Host, 100), h.hostList()), http.StatusForbidden)
		return
	}
	session := h.session(w, r)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := h.checkCSRF(r, session); err != nil {
			http.Error(w, "refused: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	h.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, session)))
}

// render writes page with data, or a plain error.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, page string, data any) {
	view := struct {
		Page string
		CSRF string
		Data any
	}{page, h.csrf.token(sessionOf(r)), data}
	var b strings.Builder
	if err := h.pages[page].ExecuteTemplate(&b, "layout", view); err != nil {
		h.opts.Log.Error("dashboard page", "page", page, "error", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// fail renders an error page naming what could not be read.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	if status >= 500 {
		h.opts.Log.Warn("dashboard", "path", r.URL.Path, "error", err)
	}
	h.render(w, r, status, "error", err.Error())
}

// errBadParam is wrapped by the errors of parameters out of bounds.
var errBadParam = errors.New("bad parameter")

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
