// Command recorder is a test subscriber: it records every CloudEvent it accepts in Redis so
// tests can count deliveries and duplicates, and misbehaves on request (fail, slow, reply).
//
// Behaviour is chosen per event by extension attributes, obeyed only by the recorder named in
// the extension "target" (all recorders when it is absent):
//
//	failtimes   answer failstatus (default 500) to the first N attempts of this event id
//	failstatus  the status used by failtimes
//	sleepms     wait this long before answering
//	replytype   answer with a reply event of this type (id "reply-<id>")
//
// Redis keys (RECORDER_NAME, default the K_SERVICE name):
//
//	knfaas:test:recorder:<name>:seen      hash id → times accepted
//	knfaas:test:recorder:<name>:attempts  hash id → times received
//	knfaas:test:recorder:<name>:events    list of accepted events (JSON), capped at 100,000
//	knfaas:test:recorder:<name>:data      hash id → the event's data exactly as received
//	knfaas:test:recorder:<name>:ctype     hash id → the event's datacontenttype
//	knfaas:test:recorder:<name>:pids      set of process ids that served
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/redisconn"
)

// Function records events.
type Function struct {
	rdb    *redis.Client
	name   string
	prefix string
	ready  chan struct{}
}

// New returns the function.
func New() *Function { return &Function{ready: make(chan struct{})} }

// Start connects to Redis and registers the process id.
func (f *Function) Start(ctx context.Context, cfg map[string]string) error {
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return err
	}
	name := cfg["RECORDER_NAME"]
	if name == "" {
		name = cfg["K_SERVICE"]
	}
	f.rdb, f.name, f.prefix = rdb, name, "knfaas:test:recorder:"+name+":"
	if err := rdb.SAdd(ctx, f.prefix+"pids", os.Getpid()).Err(); err != nil {
		return fmt.Errorf("registering pid: %w", err)
	}
	close(f.ready)
	return nil
}

// Stop closes Redis.
func (f *Function) Stop(ctx context.Context) error {
	if f.rdb != nil {
		return f.rdb.Close()
	}
	return nil
}

// Ready is true once Start connected to Redis.
func (f *Function) Ready(ctx context.Context) (bool, error) {
	select {
	case <-f.ready:
		return true, nil
	default:
		return false, nil
	}
}

// Handle records one event.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	e, err := binding.ToEvent(ctx, cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	attempts, err := f.rdb.HIncrBy(ctx, f.prefix+"attempts", e.ID(), 1).Result()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	ext := e.Extensions()
	if target, ok := ext["target"]; ok && fmt.Sprint(target) != f.name {
		ext = nil
	}
	if ms, _ := strconv.Atoi(fmt.Sprint(ext["sleepms"])); ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
	if n, _ := strconv.Atoi(fmt.Sprint(ext["failtimes"])); int64(n) >= attempts {
		status, _ := strconv.Atoi(fmt.Sprint(ext["failstatus"]))
		if status == 0 {
			status = http.StatusInternalServerError
		}
		http.Error(w, fmt.Sprintf("failing attempt %d of event %s as told", attempts, e.ID()), status)
		return
	}
	raw, _ := json.Marshal(e)
	pipe := f.rdb.TxPipeline()
	pipe.HIncrBy(ctx, f.prefix+"seen", e.ID(), 1)
	pipe.RPush(ctx, f.prefix+"events", raw)
	pipe.HSet(ctx, f.prefix+"data", e.ID(), e.Data())
	pipe.HSet(ctx, f.prefix+"ctype", e.ID(), e.DataContentType())
	pipe.LTrim(ctx, f.prefix+"events", -100000, -1)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if rt, ok := ext["replytype"]; ok {
		w.Header().Set("Ce-Id", "reply-"+e.ID())
		w.Header().Set("Ce-Type", fmt.Sprint(rt))
		w.Header().Set("Ce-Source", "/recorder")
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"reply":true}`))
		return
	}
	w.WriteHeader(http.StatusAccepted)
}
