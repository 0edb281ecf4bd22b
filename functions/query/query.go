// Package main is the query function: it serves Redis read models as JSON over authenticated
// HTTP, with ETags and cursor pagination.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/httpauth"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/function/redisconn"
)

// Config is read once at start; authentication settings are httpauth.EnvSettings.
type Config struct {
	// Models lists the read models served and the groups allowed to read each:
	// "stock:stock-readers,purchasing;purchase-orders:purchasing" ("*" = any caller).
	Models string `envconfig:"QUERY_MODELS" required:"true"`
	// MaxAge is the Cache-Control max-age; 0 means clients must revalidate every time (cheap:
	// a matching If-None-Match costs one Redis read and answers 304 without a body).
	MaxAge time.Duration `envconfig:"QUERY_MAX_AGE" default:"0s"`
	// DefaultLimit and MaxLimit size list pages.
	DefaultLimit int `envconfig:"QUERY_DEFAULT_LIMIT" default:"50"`
	MaxLimit     int `envconfig:"QUERY_MAX_LIMIT" default:"500"`
}

// Function is the query function.
type Function struct {
	rdb    redis.Cmdable
	auth   *httpauth.Authenticator
	models map[string][]string
	cfg    Config
	cache  string
	mux    *http.ServeMux
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration, the credentials and opens Redis; any error stops start-up.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	if err := funcstart.ReadConfig("query", &cfg); err != nil {
		return err
	}
	authCfg, err := httpauth.ConfigFromEnv()
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	auth, err := httpauth.New(ctx, authCfg)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	if err := f.start(cfg, rdb, auth); err != nil {
		_ = rdb.Close()
		return err
	}
	return nil
}

func (f *Function) start(cfg Config, rdb redis.UniversalClient, auth *httpauth.Authenticator) error {
	models, err := ParseModels(cfg.Models)
	if err != nil {
		return fmt.Errorf("query: QUERY_MODELS: %w", err)
	}
	if cfg.DefaultLimit <= 0 || cfg.MaxLimit < cfg.DefaultLimit {
		return errors.New("query: QUERY_DEFAULT_LIMIT must be positive and at most QUERY_MAX_LIMIT")
	}
	f.cfg, f.rdb, f.auth, f.models = cfg, rdb, auth, models
	f.cache = "private, no-cache"
	if s := int(cfg.MaxAge.Seconds()); s > 0 {
		f.cache = "private, max-age=" + strconv.Itoa(s)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{model}/{key}", f.get)
	mux.HandleFunc("GET /{model}", f.list)
	f.mux = mux
	f.Started(rdb)
	return nil
}

// ParseModels reads "model:group,group;model:group". Model names follow projection.ValidName
// and may not be "health" (func-go serves /health/*).
func ParseModels(s string) (map[string][]string, error) {
	out := map[string][]string{}
	for part := range strings.SplitSeq(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, groups, ok := strings.Cut(part, ":")
		name = strings.TrimSpace(name)
		if !ok || !projection.ValidName(name) || name == "health" {
			return nil, fmt.Errorf("%q: want <model>:<group>[,<group>…] with a lowercase model name other than health", part)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("model %s listed twice", name)
		}
		var gs []string
		for g := range strings.SplitSeq(groups, ",") {
			if g = strings.TrimSpace(g); g != "" {
				gs = append(gs, g)
			}
		}
		if len(gs) == 0 {
			return nil, fmt.Errorf("model %s: no group may read it (use * for any caller)", name)
		}
		out[name] = gs
	}
	if len(out) == 0 {
		return nil, errors.New("no read models listed")
	}
	return out, nil
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle authenticates the caller, then serves the read model.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	if f.RefuseWhileStarting(w, "query") {
		return
	}
	f.mux.ServeHTTP(w, r)
}

// authorize answers 404, 401 or 403 and returns false unless the caller may read the model.
// Unknown models are 404 only after authentication, so anonymous callers cannot list models.
func (f *Function) authorize(w http.ResponseWriter, r *http.Request, model string) bool {
	id, err := f.auth.Authenticate(r)
	if err != nil {
		slog.Info("query: unauthenticated request", "path", r.URL.Path, "err", err)
		httpauth.Unauthorized(w)
		return false
	}
	groups, known := f.models[model]
	if !known {
		http.Error(w, "unknown read model "+model, http.StatusNotFound)
		return false
	}
	if !httpauth.Allowed(id, groups) {
		http.Error(w, fmt.Sprintf("%s may not read %s", id.Subject, model), http.StatusForbidden)
		return false
	}
	return true
}

func (f *Function) get(w http.ResponseWriter, r *http.Request) {
	model, key := r.PathValue("model"), r.PathValue("key")
	if !f.authorize(w, r, model) {
		return
	}
	if !projection.ValidKey(key) {
		http.Error(w, "malformed key: want 1-128 of A-Z a-z 0-9 . _ ~ -, starting with a letter or digit", http.StatusBadRequest)
		return
	}
	e, err := projection.Get(r.Context(), f.rdb, model, key)
	if errors.Is(err, projection.ErrNotFound) {
		http.Error(w, fmt.Sprintf("%s has no entry %s", model, key), http.StatusNotFound)
		return
	}
	if err != nil {
		unavailable(w, err)
		return
	}
	f.respond(w, r, `"`+strconv.FormatInt(e.Version, 10)+`"`, e)
}

func (f *Function) list(w http.ResponseWriter, r *http.Request) {
	model := r.PathValue("model")
	if !f.authorize(w, r, model) {
		return
	}
	after := r.URL.Query().Get("after")
	if after != "" && !projection.ValidKey(after) {
		http.Error(w, "malformed cursor", http.StatusBadRequest)
		return
	}
	limit := f.cfg.DefaultLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > f.cfg.MaxLimit {
			http.Error(w, fmt.Sprintf("limit must be 1..%d", f.cfg.MaxLimit), http.StatusBadRequest)
			return
		}
		limit = n
	}
	// The model version changes with every applied event, so it validates any page of it.
	v, err := projection.ModelVersion(r.Context(), f.rdb, model)
	if err != nil {
		unavailable(w, err)
		return
	}
	etag := `W/"` + strconv.FormatInt(v, 10) + `"`
	if etagMatches(r, etag) {
		f.notModified(w, etag)
		return
	}
	page, err := projection.List(r.Context(), f.rdb, model, after, limit)
	if err != nil {
		unavailable(w, err)
		return
	}
	if page.Entries == nil {
		page.Entries = []projection.Entry{}
	}
	f.respond(w, r, etag, page)
}

func (f *Function) respond(w http.ResponseWriter, r *http.Request, etag string, body any) {
	if etagMatches(r, etag) {
		f.notModified(w, etag)
		return
	}
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", f.cache)
	h.Set("Vary", "Authorization")
	h.Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

func (f *Function) notModified(w http.ResponseWriter, etag string) {
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", f.cache)
	h.Set("Vary", "Authorization")
	w.WriteHeader(http.StatusNotModified)
}

// etagMatches applies If-None-Match's weak comparison (RFC 9110 §13.1.2).
func etagMatches(r *http.Request, etag string) bool {
	inm := r.Header.Get("If-None-Match")
	if inm == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	return slices.ContainsFunc(strings.Split(inm, ","), func(c string) bool {
		c = strings.TrimSpace(c)
		return c == "*" || strings.TrimPrefix(c, "W/") == want
	})
}

func unavailable(w http.ResponseWriter, err error) {
	slog.Error("query: reading redis failed", "err", err)
	http.Error(w, "read model store unavailable", http.StatusServiceUnavailable)
}
