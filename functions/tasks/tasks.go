// Package main is the tasks function: the public HTTP API where people list, complete and reject
// the human tasks of running processes.
package main

import (
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
	"github.com/kelseyhightower/envconfig"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/funchealth"
	"github.com/knfaas/knfaas/internal/httpauth"
	"github.com/knfaas/knfaas/internal/process"
	"github.com/knfaas/knfaas/internal/redisconn"
	"github.com/knfaas/knfaas/internal/sink"
)

// Source is the source of the reply events the tasks API emits.
const Source = "/knfaas/tasks"

// maxBody bounds a completion payload.
const maxBody = 1 << 20

// Config is read once at start; authentication settings are httpauth's (AUTH_*).
type Config struct {
	// AdminGroups may complete or reject any task, besides each task's assignee and group.
	AdminGroups []string `envconfig:"TASKS_ADMIN_GROUPS"`
	// SendTimeout bounds the publish of a reply to K_SINK.
	SendTimeout time.Duration `envconfig:"TASKS_SEND_TIMEOUT" default:"10s"`
	// Sink is the Broker (set by the SinkBinding).
	Sink string `envconfig:"K_SINK" required:"true"`
}

// Authenticator is what the API needs from internal/httpauth.
type Authenticator interface {
	Authenticate(r *http.Request) (httpauth.Identity, error)
}

// Function serves the tasks API.
type Function struct {
	cfg  Config
	rdb  *redis.Client
	auth Authenticator
	send func(context.Context, event.Event) error
	now  func() time.Time
	funchealth.Redis
}

// New returns an unstarted Function.
func New() *Function { return &Function{now: time.Now} }

// Start reads the configuration and builds Redis, the authenticator and the sink.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	if err := envconfig.Process("", &cfg); err != nil {
		return fmt.Errorf("tasks: reading configuration: %w", err)
	}
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
	f.start(cfg, rdb, auth, s.Send)
	return nil
}

func (f *Function) start(cfg Config, rdb *redis.Client, auth Authenticator, send func(context.Context, event.Event) error) {
	f.cfg, f.rdb, f.auth, f.send = cfg, rdb, auth, send
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
		f.decide(w, r, id, strings.TrimSuffix(path, "/complete"), "completed", process.TypeTaskCompleted)
	case r.Method == http.MethodPost && strings.HasSuffix(path, "/reject"):
		f.decide(w, r, id, strings.TrimSuffix(path, "/reject"), "rejected", process.TypeTaskRejected)
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

func (f *Function) decide(w http.ResponseWriter, r *http.Request, id httpauth.Identity, taskID, decision, replyType string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	payload := json.RawMessage("{}")
	if len(strings.TrimSpace(string(body))) > 0 {
		var v map[string]any
		if err := json.Unmarshal(body, &v); err != nil {
			http.Error(w, "body must be a JSON object: "+err.Error(), http.StatusBadRequest)
			return
		}
		payload = body
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
	reply := process.Emitted{
		ID: t.ID + ":" + decision, Type: replyType, Source: Source, Subject: t.Instance, Data: string(data),
		Extensions: map[string]string{"knfaasowner": t.Owner, "knfaascommand": t.ID, "knfaasactor": id.Subject, "knfaasprocess": t.Process, "knfaasstep": t.Step},
	}
	reply, err = process.DecideTask(r.Context(), f.rdb, t.ID, decision, id.Subject, reply, f.now())
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

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
