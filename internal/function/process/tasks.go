package process

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Task is a human task as stored by the process manager.
type Task struct {
	ID      string `json:"id"`
	Process string `json:"process"`
	// Owner is the process manager that created the task (its PROCESS_OWNER); replies carry it
	// in the knfaasowner extension so they reach that manager's Trigger only.
	Owner    string          `json:"owner"`
	Instance string          `json:"instance"`
	Step     string          `json:"step"`
	Title    string          `json:"title"`
	Assignee string          `json:"assignee,omitempty"`
	Group    string          `json:"group,omitempty"`
	State    string          `json:"state"`
	Actor    string          `json:"actor,omitempty"`
	Created  time.Time       `json:"created"`
	Expires  time.Time       `json:"expires"`
	Decided  *time.Time      `json:"decided,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	// Result is the payload of the decision, as the tasks API recorded it.
	Result json.RawMessage `json:"result,omitempty"`
	// Applied is the decision the process applied (completed or rejected); empty until the
	// process has taken the decision, which then can never be applied again.
	Applied string `json:"applied,omitempty"`
}

// Errors from DecideTask.
var (
	ErrTaskExpired = errors.New("task expired")
	ErrTaskDecided = errors.New("task already decided")
)

//go:embed decide.lua
var decideLua string

var decideScript = redis.NewScript(decideLua)

func taskFrom(f map[string]string) Task {
	t := Task{
		ID: f["id"], Process: f["process"], Owner: f["owner"], Instance: f["instance"], Step: f["step"], Title: f["title"],
		Assignee: f["assignee"], Group: f["group"], State: f["state"], Actor: f["actor"],
		Created: msTime(f["created"]), Expires: msTime(f["expires"]), Applied: f["applied"],
	}
	if d := f["decided"]; d != "" {
		ts := msTime(d)
		t.Decided = &ts
	}
	if json.Valid([]byte(f["data"])) {
		t.Data = json.RawMessage(f["data"])
	}
	if json.Valid([]byte(f["result"])) {
		t.Result = json.RawMessage(f["result"])
	}
	return t
}

// GetTask reads one task; ErrNotFound when there is none.
func GetTask(ctx context.Context, rdb redis.Cmdable, id string) (*Task, error) {
	f, err := rdb.HGetAll(ctx, KeyTaskPrefix+id).Result()
	if err != nil {
		return nil, fmt.Errorf("reading task %s: %w", id, err)
	}
	if len(f) == 0 {
		return nil, fmt.Errorf("task %s: %w", id, ErrNotFound)
	}
	t := taskFrom(f)
	return &t, nil
}

// TaskFilter selects open tasks; empty fields match everything.
type TaskFilter struct {
	Process  string
	Assignee string
}

// ListOpenTasks returns up to limit open tasks, oldest first, that match filter.
func ListOpenTasks(ctx context.Context, rdb redis.Cmdable, filter TaskFilter, limit int) ([]Task, error) {
	ids, err := rdb.ZRange(ctx, KeyOpenTasks, 0, 9999).Result()
	if err != nil {
		return nil, fmt.Errorf("listing open tasks: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, KeyTaskPrefix+id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading open tasks: %w", err)
	}
	out := []Task{}
	for _, c := range cmds {
		t := taskFrom(c.Val())
		if t.State != "open" || (filter.Process != "" && t.Process != filter.Process) || (filter.Assignee != "" && t.Assignee != filter.Assignee) {
			continue
		}
		out = append(out, t)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// DecideTask records decision d once, with its reply event (built by DecisionReply) and the
// reply's payload as the task's result, and returns the reply to publish (still stored on the
// task until AckTaskReply). The same decision by the same actor while the reply is stored
// returns that stored reply again. It refuses with ErrNotFound, ErrTaskExpired or
// ErrTaskDecided (naming who decided).
func DecideTask(ctx context.Context, rdb redis.Scripter, d TaskDecision, reply Emitted) (Emitted, error) {
	id := d.Task
	b, err := json.Marshal(reply)
	if err != nil {
		return Emitted{}, fmt.Errorf("encoding reply of task %s: %w", id, err)
	}
	vals, err := decideScript.Run(ctx, rdb, []string{KeyTaskPrefix + id, KeyOpenTasks}, d.At, d.Decision, d.Actor, b, reply.Data).StringSlice()
	if err != nil {
		return Emitted{}, fmt.Errorf("deciding task %s: %w", id, err)
	}
	switch vals[0] {
	case "notfound":
		return Emitted{}, fmt.Errorf("task %s: %w", id, ErrNotFound)
	case "expired":
		return Emitted{}, fmt.Errorf("task %s: %w", id, ErrTaskExpired)
	case "decided":
		return Emitted{}, fmt.Errorf("task %s was %s by %s: %w", id, vals[1], strconv.Quote(vals[2]), ErrTaskDecided)
	}
	var out Emitted
	if err := json.Unmarshal([]byte(vals[1]), &out); err != nil {
		return Emitted{}, fmt.Errorf("decoding reply of task %s: %w", id, err)
	}
	return out, nil
}

// AckTaskReply forgets a task's reply once it has been published.
func AckTaskReply(ctx context.Context, rdb redis.Cmdable, id string) error {
	if err := rdb.HDel(ctx, KeyTaskPrefix+id, "reply").Err(); err != nil {
		return fmt.Errorf("acknowledging reply of task %s: %w", id, err)
	}
	return nil
}
