package process

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Redis key families owned by the process manager. <id> is the instance id (the start event's
// subject); the timer keys are shared with functions/timer (package deadline).
const (
	KeyInstancePrefix = "knfaas:process:instance:" // hash: state, definition, start data
	KeyTimelinePrefix = "knfaas:process:timeline:" // list: JSON timeline entries, capped
	KeyOutboxPrefix   = "knfaas:process:outbox:"   // list: commands not yet acknowledged as published
	KeySeenPrefix     = "knfaas:process:seen:"     // set: "source id" of every event applied
	KeyInstances      = "knfaas:process:instances" // zset: instance id by last update (ms)
	KeyUnknown        = "knfaas:process:unknown"   // list: events for unknown instances, last 1000
	KeyTaskPrefix     = "knfaas:tasks:task:"       // hash: one human task, id = its command id
	KeyOpenTasks      = "knfaas:tasks:open"        // zset: open task ids by creation time (ms)
)

//go:embed transition.lua
var transitionLua string

// transitionScript is the one atomic step per event. Its SHA changes with its text, so a new
// version of the script is loaded next to the old one, never mixed mid-step.
var transitionScript = redis.NewScript(transitionLua)

// Status says what a transition did with an event.
type Status string

// Statuses returned by Apply.
const (
	// StatusStarted: a new instance was created and its first step issued.
	StatusStarted Status = "started"
	// StatusApplied: the event moved the instance (advance, fail, compensate, retry).
	StatusApplied Status = "applied"
	// StatusDuplicate: the same event (source, id) was applied before; nothing changed.
	StatusDuplicate Status = "duplicate"
	// StatusTimer: a deadline fired that is no longer pending (the reply came first); nothing changed.
	StatusTimer Status = "timer"
	// StatusStale: a reply the instance does not wait for (late, out of order, unknown step),
	// recorded in the timeline and ignored.
	StatusStale Status = "stale"
	// StatusUnknown: no instance has this id; recorded in the unknown-events list.
	StatusUnknown Status = "unknown"
	// StatusConflict: a start event for an instance id that exists.
	StatusConflict Status = "conflict"
	// StatusRefused: an event claiming an authority it cannot prove (an unsigned or unrecorded
	// task decision, a deadline not yet fired by functions/timer); nothing changed, and Apply
	// returns an error wrapping ErrForbidden with it.
	StatusRefused Status = "refused"
)

// Event is the part of a CloudEvent a transition reads.
type Event struct {
	ID, Source, Type, Subject string
	// Command is the knfaascommand extension: the id of the command a reply answers.
	Command string
	// Actor is the knfaasactor extension: who completed a human task.
	Actor string
	// Decided and Signature are the knfaasdecided and knfaassignature extensions of a task
	// decision (see TaskDecision).
	Decided, Signature string
	// Data is the JSON payload; empty means {}.
	Data []byte
}

// EventFrom reads the attributes and extensions a transition uses from a CloudEvent.
func EventFrom(e event.Event) Event {
	return Event{
		ID: e.ID(), Source: e.Source(), Type: e.Type(), Subject: e.Subject(),
		Command: extension(e, ExtCommand), Actor: extension(e, ExtActor),
		Decided: extension(e, ExtDecided), Signature: extension(e, ExtSignature), Data: e.Data(),
	}
}

func extension(e event.Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	s, err := types.ToString(v)
	if err != nil {
		return ""
	}
	return s
}

// Emitted is a command or notification the transition asks to publish.
type Emitted struct {
	ID         string            `json:"id"`
	Type       string            `json:"type"`
	Source     string            `json:"source"`
	Subject    string            `json:"subject"`
	Data       string            `json:"data"`
	Extensions map[string]string `json:"ext"`
	raw        string
}

// Event builds the CloudEvent to publish: the stored attributes and JSON data, stamped with
// the current time.
func (em Emitted) Event() event.Event {
	e := event.New()
	e.SetID(em.ID)
	e.SetType(em.Type)
	e.SetSource(em.Source)
	e.SetSubject(em.Subject)
	e.SetTime(time.Now())
	for k, v := range em.Extensions {
		e.SetExtension(k, v)
	}
	_ = e.SetData(event.ApplicationJSON, []byte(em.Data))
	return e
}

// Result is the outcome of Apply.
type Result struct {
	Status  Status
	Message string
	// Outbox holds every emitted event not yet acknowledged for this instance, in emission
	// order: those of this step and any left by a delivery that crashed before publishing.
	Outbox []Emitted
}

// Options tune an Engine.
type Options struct {
	// Owner names this process manager in the deadlines it schedules, so functions/timer's
	// events reach it (Trigger filter on the knfaasowner extension).
	Owner string
	// Retention is how long a finished instance, its timeline and the instance index entry
	// stay in Redis. Default 7 days.
	Retention time.Duration
	// TimelineMax caps each instance's timeline. Default 500.
	TimelineMax int
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
	// Keys verify the signatures of human task decisions. Without keys every decision is
	// refused.
	Keys *SigningKeys
}

// Engine applies events to process instances stored in Redis.
type Engine struct {
	rdb  redis.Scripter
	defs *Set
	opts Options
	// compiled caches each definition's Lua form; conditions are resolved per instance.
	mu       sync.Mutex
	compiled map[string]*compiledDef
}

// NewEngine returns an Engine for defs.
func NewEngine(rdb redis.Scripter, defs *Set, opts Options) *Engine {
	if opts.Owner == "" {
		opts.Owner = "process"
	}
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.TimelineMax <= 0 {
		opts.TimelineMax = 500
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Engine{rdb: rdb, defs: defs, opts: opts, compiled: map[string]*compiledDef{}}
}

// Definitions is the set the engine starts instances from.
func (e *Engine) Definitions() *Set { return e.defs }

// ErrBadEvent wraps problems with an event that can never be applied.
var ErrBadEvent = errors.New("bad event")

// IsStart reports whether t starts one of the engine's processes.
func (e *Engine) IsStart(t string) bool {
	_, ok := e.defs.ByStart(t)
	return ok
}

// Apply moves the instance named by ev.Subject with one EVALSHA. Errors are transient Redis
// failures, ErrBadEvent for events that can never apply (no subject, data not JSON), or
// ErrForbidden for events that claim an authority they cannot prove: a task decision whose
// signature does not verify, that the tasks function did not record, or a deadline that
// functions/timer has not fired. A refused event changes nothing.
func (e *Engine) Apply(ctx context.Context, ev Event) (Result, error) {
	if ev.Subject == "" {
		if e.IsStart(ev.Type) {
			return Result{}, fmt.Errorf("%w: start event %s has no subject; the subject names the process instance", ErrBadEvent, ev.Type)
		}
		return Result{}, fmt.Errorf("%w: event %s has no subject; replies must carry the instance id as subject", ErrBadEvent, ev.Type)
	}
	data := ev.Data
	if len(data) == 0 {
		data = []byte("{}")
	}
	var start string
	if d, ok := e.defs.ByStart(ev.Type); ok {
		var parsed any
		if err := json.Unmarshal(data, &parsed); err != nil {
			return Result{}, fmt.Errorf("%w: start event data is not JSON: %v", ErrBadEvent, err)
		}
		c, err := e.compile(d, parsed)
		if err != nil {
			return Result{}, err
		}
		start = c
	} else if !json.Valid(data) {
		return Result{}, fmt.Errorf("%w: event data is not JSON", ErrBadEvent)
	}
	// Only a verified decision reaches the script with decision and decided set; the script
	// then checks it against the task it issued and the decision the tasks function recorded.
	var decision, decided string
	if DecisionOf(ev.Type) != "" {
		d, err := e.opts.Keys.verifyDecision(ev)
		if err != nil {
			return Result{Status: StatusRefused, Message: err.Error()}, err
		}
		decision, decided = d.Decision, strconv.FormatInt(d.At, 10)
	}
	evJSON, err := json.Marshal(map[string]string{
		"id": ev.ID, "source": ev.Source, "type": ev.Type, "subject": ev.Subject,
		"command": ev.Command, "actor": ev.Actor, "data": string(data),
		"decision": decision, "decided": decided,
	})
	if err != nil {
		return Result{}, fmt.Errorf("encoding event: %w", err)
	}
	keys := []string{
		KeyInstancePrefix + ev.Subject, KeyTimelinePrefix + ev.Subject, KeyOutboxPrefix + ev.Subject,
		KeySeenPrefix + ev.Subject, deadline.KeyDeadlines, deadline.KeyPayloads, KeyOpenTasks,
		KeyInstances, KeyUnknown,
	}
	args := []any{
		e.opts.Now().UnixMilli(), evJSON, start, e.opts.Retention.Milliseconds(), e.opts.TimelineMax,
		e.opts.Owner, KeyTaskPrefix, deadline.TypeFired, TypeTaskCreated, TypeTaskCompleted, TypeTaskRejected,
		tracing.TraceParent(ctx), // a deadline the step schedules links its fire back to this trace
	}
	vals, err := transitionScript.Run(ctx, e.rdb, keys, args...).StringSlice()
	if err != nil {
		return Result{}, fmt.Errorf("process transition for %s: %w", ev.Subject, err)
	}
	res := Result{Status: Status(vals[0]), Message: vals[1]}
	if res.Status == StatusRefused {
		return res, fmt.Errorf("%w: %s %s for %s: %s", ErrForbidden, ev.Type, ev.ID, ev.Subject, res.Message)
	}
	for _, raw := range vals[2:] {
		var em Emitted
		if err := json.Unmarshal([]byte(raw), &em); err != nil {
			return Result{}, fmt.Errorf("decoding outbox entry of %s: %w", ev.Subject, err)
		}
		em.raw = raw
		res.Outbox = append(res.Outbox, em)
	}
	return res, nil
}

// Ack removes published events from the instance's outbox, in one pipeline for many.
func Ack(ctx context.Context, rdb redis.Cmdable, acks ...Acked) error {
	if len(acks) == 0 {
		return nil
	}
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, a := range acks {
			p.LRem(ctx, KeyOutboxPrefix+a.Instance, 1, a.raw)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("acknowledging %d published events: %w", len(acks), err)
	}
	return nil
}

// Acked names one published outbox entry.
type Acked struct {
	Instance string
	raw      string
}

// Acked returns the acknowledgement of em, published for instance.
func (em Emitted) Acked(instance string) Acked { return Acked{Instance: instance, raw: em.raw} }

type compiledStep struct {
	Name    string          `json:"name"`
	Type    string          `json:"type,omitempty"`
	Task    *HumanTask      `json:"task,omitempty"`
	OK      map[string]bool `json:"ok"`
	Fail    map[string]bool `json:"fail,omitempty"`
	Timeout int64           `json:"timeout"`
	Retries int             `json:"retries"`
	Skip    bool            `json:"skip,omitempty"`
	Comp    *compiledComp   `json:"comp,omitempty"`
	when    *Condition
}

type compiledComp struct {
	Type    string `json:"type"`
	Reply   string `json:"reply,omitempty"`
	Timeout int64  `json:"timeout"`
	Retries int    `json:"retries"`
}

type compiledDef struct {
	Name        string         `json:"name"`
	Completed   string         `json:"completed"`
	Failed      string         `json:"failed"`
	Compensated string         `json:"compensated"`
	Steps       []compiledStep `json:"steps"`
}

// compile returns the definition in the form the script reads, with conditions resolved against
// the start data. The result is stored on the instance, so a redeployed definition never
// changes an instance already running.
func (e *Engine) compile(d *Definition, data any) (string, error) {
	e.mu.Lock()
	c, ok := e.compiled[d.Name]
	if !ok {
		c = &compiledDef{Name: d.Name, Completed: d.Completed, Failed: d.Failed, Compensated: d.Compensated}
		for _, s := range d.Steps {
			cs := compiledStep{Name: s.Name, Timeout: s.Timeout.Milliseconds(), Retries: s.Retries, OK: map[string]bool{}, when: s.When}
			if s.Command != nil {
				cs.Type = s.Command.Type
				for _, t := range s.Command.Success {
					cs.OK[t] = true
				}
				if len(s.Command.Failure) > 0 {
					cs.Fail = map[string]bool{}
					for _, t := range s.Command.Failure {
						cs.Fail[t] = true
					}
				}
			} else {
				cs.Task = s.Task
				cs.OK[TypeTaskCompleted] = true
				cs.Fail = map[string]bool{TypeTaskRejected: true}
			}
			if k := s.Compensate; k != nil {
				r := defaultCompensationRetries
				if k.Retries != nil {
					r = *k.Retries
				}
				cs.Comp = &compiledComp{Type: k.Type, Reply: k.Reply, Timeout: k.Timeout.Milliseconds(), Retries: r}
			}
			c.Steps = append(c.Steps, cs)
		}
		e.compiled[d.Name] = c
	}
	e.mu.Unlock()
	inst := *c
	inst.Steps = append([]compiledStep(nil), c.Steps...)
	for i := range inst.Steps {
		if w := inst.Steps[i].when; w != nil {
			inst.Steps[i].Skip = !w.holds(data)
		}
	}
	b, err := json.Marshal(inst)
	if err != nil {
		return "", fmt.Errorf("encoding process %s: %w", d.Name, err)
	}
	return string(b), nil
}

func (c *Condition) holds(data any) bool {
	v := data
	for _, part := range strings.Split(c.Field, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		v = m[part]
	}
	switch n := v.(type) {
	case float64:
		return n > c.Above
	case string:
		f, err := strconv.ParseFloat(n, 64)
		return err == nil && f > c.Above
	}
	return false
}
