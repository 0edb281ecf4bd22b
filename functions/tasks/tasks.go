// Package main is the tasks function: the public HTTP API where people list, complete and reject
// the human tasks of running processes.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/httpauth"
	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/function/sink"
)

// Source is the source of the reply events the tasks API emits.
const Source = "/knfaas/tasks"

// maxBody bounds a completion payload.
const maxBody = 1 << 20

// Config is read once at start, each default in its tag; authentication settings are
// httpauth's (AUTH_*).
type Config struct {
	// AdminGroups may complete or reject any task, besides each task's assignee and group.
	AdminGroups []string `envconfig:"TASKS_ADMIN_GROUPS"`
	// SendTimeout bounds the publish of a reply to K_SINK; positive.
	SendTimeout time.Duration `envconfig:"TASKS_SEND_TIMEOUT" default:"10s"`
	// Sink is the Broker (set by the SinkBinding).
	Sink string `envconfig:"K_SINK" required:"true"`
	// SigningKey signs every decision (the tasks-signing Secret, key current); the process
	// manager verifies it with the same Secret.
	SigningKey string `envconfig:"TASKS_SIGNING_KEY" required:"true"`
	// SigningKeyPrevious is the key before the last rotation (key previous); this function only
	// signs with the current key, and checks this one for placeholders.
	SigningKeyPrevious string `envconfig:"TASKS_SIGNING_KEY_PREVIOUS"`
}

// Authenticator is what the API needs from internal/function/httpauth.
type Authenticator interface {
	Authenticate(r *http.Request) (httpauth.Identity, error)
}

// Function serves the tasks API.
type Function struct {
	cfg  Config
	rdb  *redis.Client
	auth Authenticator
	keys *process.SigningKeys
	send func(context.Context, event.Event) error
	now  func() time.Time
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{now: time.Now} }

// Start reads the configuration and builds Redis, the authenticator and the sink. It refuses
// to start while a token or signing key still holds a template placeholder (CHANGE-ME).
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	if err := funcstart.ReadConfig("tasks", &cfg); err != nil {
		return err
	}
	keys, err := signingKeys(cfg)
	if err != nil {
		return fmt.Errorf("tasks: refusing to start: %w", err)
	}
	// httpauth refuses a token that still holds a template placeholder, naming it.
	authCfg, err := httpauth.ConfigFromEnv()
	if err != nil {
		return fmt.Errorf("tasks: %w", err)
	}
	auth, err := httpauth.New(ctx, authCfg)
	if err != nil {
		return fmt.Errorf("tasks: %w", err)
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return fmt.Errorf("tasks: %w", err)
	}
	s, err := sink.New(cfg.Sink, cfg.SendTimeout)
	if err != nil {
		return fmt.Errorf("tasks: %w", err)
	}
	f.start(cfg, rdb, auth, keys, s.Send)
	return nil
}

// Check refuses a bad value, naming the variable.
func (c Config) Check() error {
	if c.SendTimeout <= 0 {
		return fmt.Errorf("TASKS_SEND_TIMEOUT (%s) must be positive", c.SendTimeout)
	}
	return nil
}

// signingKeys checks the signing keys for placeholders and length.
func signingKeys(cfg Config) (*process.SigningKeys, error) {
	if err := placeholder.Check("TASKS_SIGNING_KEY (Secret tasks-signing, key current)", cfg.SigningKey); err != nil {
		return nil, err
	}
	if err := placeholder.Check("TASKS_SIGNING_KEY_PREVIOUS (Secret tasks-signing, key previous)", cfg.SigningKeyPrevious); err != nil {
		return nil, err
	}
	keys, err := process.NewSigningKeys(cfg.SigningKey, cfg.SigningKeyPrevious)
	if err != nil {
		return nil, fmt.Errorf("TASKS_SIGNING_KEY: %w", err)
	}
	return keys, nil
}

func (f *Function) start(cfg Config, rdb *redis.Client, auth Authenticator, keys *process.SigningKeys, send func(context.Context, event.Event) error) {
	f.cfg, f.rdb, f.auth, f.keys, f.send = cfg, rdb, auth, keys, send
	f.Started(rdb)
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle routes:
//
//	GET  /tasks?process=&assignee=&limit=   open tasks the caller may act on
//	GET  /tasks/{id}                        one task
//	POST /tasks/{id}/complete               body: JSON payload → dev.knfaas.tasks.completed
//	POST /tasks/{id}/reject                 body: JSON payload → dev.knfaas.tasks.rejected
//
// Task ids may contain "/" and ":"; the action is the last path segment.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	if !f.Running() {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	id, err := f.auth.Authenticate(r)
	if err != nil {
		slog.Info("unauthenticated tasks request", "err", err, "path", r.URL.Path)
		httpauth.Unauthorized(w)
		return
	}
	path := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/tasks"), "/")
	switch {
	case path == "" && r.Method == http.MethodGet:
		f.list(w, r, id)
	case path == "":
		methodNotAllowed(w, "GET")
	case r.Method == http.MethodGet:
		f.get(w, r, id, path)
	case r.Method == http.MethodPost && strings.HasSuffix(path, "/complete"):
		f.decide(w, r, id, strings.TrimSuffix(path, "/complete"), process.DecisionCompleted)
	case r.Method == http.MethodPost && strings.HasSuffix(path, "/reject"):
		f.decide(w, r, id, strings.TrimSuffix(path, "/reject"), process.DecisionRejected)
	case r.Method == http.MethodPost:
		http.Error(w, "POST /tasks/{id}/complete or /tasks/{id}/reject", http.StatusNotFound)
	default:
		methodNotAllowed(w, "GET, POST")
	}
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// may says whether id may see and decide t: its assignee, a member of its group, or an admin.
func (f *Function) may(id httpauth.Identity, t process.Task) bool {
	if t.Assignee != "" && id.Subject == t.Assignee {
		return true
	}
	groups := append([]string{}, f.cfg.AdminGroups...)
	if t.Group != "" {
		groups = append(groups, t.Group)
	}
	return httpauth.Allowed(id, groups)
}

func (f *Function) list(w http.ResponseWriter, r *http.Request, id httpauth.Identity) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			http.Error(w, "limit must be a number from 1 to 1000", http.StatusBadRequest)
			return
		}
		limit = n
	}
	all, err := process.ListOpenTasks(r.Context(), f.rdb, process.TaskFilter{Process: q.Get("process"), Assignee: q.Get("assignee")}, 10000)
	if err != nil {
		slog.Error("listing tasks", "err", err)
		http.Error(w, "listing tasks failed", http.StatusServiceUnavailable)
		return
	}
	out := []process.Task{}
	for _, t := range all {
		if f.may(id, t) {
			out = append(out, t)
			if len(out) == limit {
				break
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tasks": out})
}

func (f *Function) load(w http.ResponseWriter, r *http.Request, id httpauth.Identity, taskID string) (*process.Task, bool) {
	t, err := process.GetTask(r.Context(), f.rdb, taskID)
	switch {
	case errors.Is(err, process.ErrNotFound):
		http.Error(w, fmt.Sprintf("no task %q", taskID), http.StatusNotFound)
		return nil, false
	case err != nil:
		slog.Error("reading task", "task", taskID, "err", err)
		http.Error(w, "reading the task failed", http.StatusServiceUnavailable)
		return nil, false
	case !f.may(id, *t):
		http.Error(w, fmt.Sprintf("%s may not act on task %q: it belongs to its assignee or group", id.Subject, taskID), http.StatusForbidden)
		return nil, false
	}
	return t, true
}

func (f *Function) get(w http.ResponseWriter, r *http.Request, id httpauth.Identity, taskID string) {
	if t, ok := f.load(w, r, id, taskID); ok {
		writeJSON(w, http.StatusOK, t)
	}
}

func (f *Function) decide(w http.ResponseWriter, r *http.Request, id httpauth.Identity, taskID, decision string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	payload, err := objectPayload(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	t, ok := f.load(w, r, id, taskID)
	if !ok {
		return
	}
	data, err := json.Marshal(map[string]any{
		"decision": decision,
		"actor":    map[string]string{"subject": id.Subject, "method": id.Method},
		"payload":  payload,
	})
	if err != nil {
		http.Error(w, "encoding reply", http.StatusInternalServerError)
		return
	}
	d := process.TaskDecision{Task: t.ID, Decision: decision, Actor: id.Subject, At: f.now().UnixMilli()}
	reply, err := process.DecideTask(r.Context(), f.rdb, d, process.DecisionReply(*t, d, Source, string(data), f.keys))
	switch {
	case errors.Is(err, process.ErrNotFound):
		http.Error(w, fmt.Sprintf("no task %q", taskID), http.StatusNotFound)
		return
	case errors.Is(err, process.ErrTaskExpired):
		http.Error(w, fmt.Sprintf("task %q expired at %s; the process has timed out or will shortly", taskID, t.Expires.Format(time.RFC3339)), http.StatusConflict)
		return
	case errors.Is(err, process.ErrTaskDecided):
		http.Error(w, err.Error(), http.StatusConflict)
		return
	case err != nil:
		slog.Error("deciding task", "task", taskID, "err", err)
		http.Error(w, "recording the decision failed", http.StatusServiceUnavailable)
		return
	}
	if err := f.send(r.Context(), reply.Event()); err != nil {
		// The decision is recorded with its reply; the same call again sends it again.
		slog.Error("publishing task reply", "task", taskID, "err", err)
		http.Error(w, "decision recorded but not yet delivered; repeat the same request", http.StatusServiceUnavailable)
		return
	}
	if err := process.AckTaskReply(r.Context(), f.rdb, t.ID); err != nil {
		slog.Warn("acknowledging task reply", "task", taskID, "err", err)
	}
	t, err = process.GetTask(r.Context(), f.rdb, t.ID)
	if err != nil {
		writeJSON(w, http.StatusOK, map[string]string{"id": taskID, "state": decision, "actor": id.Subject})
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// objectPayload returns the decision payload: the body when it is a JSON object, {} when it is
// empty; any other JSON (null, an array, a string, a number, a boolean) is refused.
func objectPayload(body []byte) (json.RawMessage, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return json.RawMessage("{}"), nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("body must be a JSON object: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("body must be a JSON object, not %s", jsonKind(v))
	}
	return body, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
