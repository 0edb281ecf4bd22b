// Package process runs declarative, Redis-backed business processes: definitions, the per-instance state machine and the human tasks it creates.
package process

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Definition is one process as written in YAML: the event that starts it, its ordered steps and
// the events it emits when it ends.
type Definition struct {
	// Name identifies the process in command events, timelines and errors.
	Name string `json:"name"`
	// Start is the event type that starts an instance; the event's subject is the instance id.
	Start string `json:"start"`
	// Completed, Failed and Compensated are the event types emitted when the instance completes,
	// when a step fails or times out, and when the compensations of the completed steps have run.
	Completed   string `json:"completed"`
	Failed      string `json:"failed"`
	Compensated string `json:"compensated"`
	Steps       []Step `json:"steps"`
}

// Step is either a command (an event to emit and the replies to wait for) or a human task.
type Step struct {
	Name string `json:"name"`
	// When, if set, skips the step for instances whose start data does not match.
	When *Condition `json:"when,omitempty"`
	// Command and Task are mutually exclusive; exactly one is set.
	Command *Command   `json:"command,omitempty"`
	Task    *HumanTask `json:"task,omitempty"`
	// Timeout bounds the wait for a reply (or the task's completion). Required.
	Timeout Duration `json:"timeout"`
	// Retries re-emits a command that timed out this many times (attempt 2, 3, …) before the
	// step fails. Tasks are not retried.
	Retries int `json:"retries,omitempty"`
	// Compensate, if set, undoes the step when a later step fails.
	Compensate *Compensation `json:"compensate,omitempty"`
}

// Command is an event emitted to a service and the reply types that end the wait.
type Command struct {
	Type    string   `json:"type"`
	Success []string `json:"success"`
	Failure []string `json:"failure,omitempty"`
}

// HumanTask is a human task step: it is completed or rejected through the tasks API.
type HumanTask struct {
	Title string `json:"title"`
	// Assignee (an identity subject) and Group (a group of identities) say who may complete the
	// task; at least one is required.
	Assignee string `json:"assignee,omitempty"`
	Group    string `json:"group,omitempty"`
}

// Compensation is the command that undoes a completed step.
type Compensation struct {
	Type string `json:"type"`
	// Reply, if set, is awaited before the next compensation runs; without it the next one
	// follows at once.
	Reply   string   `json:"reply,omitempty"`
	Timeout Duration `json:"timeout,omitempty"`
	// Retries re-emits the compensation that timed out (default 3) before giving up on it.
	Retries *int `json:"retries,omitempty"`
}

// Condition compares a numeric field of the start event's data.
type Condition struct {
	// Field is a dotted path into the start data, e.g. "amount" or "order.total".
	Field string `json:"field"`
	// Above is true when the field is a number greater than this value. A missing or
	// non-numeric field makes the condition false.
	Above float64 `json:"above"`
}

// Duration is a time.Duration written as "90s", "2m", "24h" in YAML.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("parsing duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Task event types: the process emits created; the tasks API emits completed and rejected,
// which are the replies a task step waits for.
const (
	TypeTaskCreated   = "dev.knfaas.tasks.created"
	TypeTaskCompleted = "dev.knfaas.tasks.completed"
	TypeTaskRejected  = "dev.knfaas.tasks.rejected"
)

const defaultCompensationRetries = 3

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Parse reads one definition from YAML, rejecting unknown fields, and validates it. Errors name
// the process and the step.
func Parse(data []byte) (*Definition, error) {
	// Decode loosely first to learn the names, so a strict-decoding error can name its step.
	var loose struct {
		Name  string            `json:"name"`
		Steps []json.RawMessage `json:"steps"`
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("process definition is not valid YAML: %w", err)
	}
	if err := json.Unmarshal(js, &loose); err != nil {
		return nil, fmt.Errorf("process definition: %w", err)
	}
	proc := fmt.Sprintf("process %q", loose.Name)
	for i, raw := range loose.Steps {
		var s Step
		if err := strictJSON(raw, &s); err != nil {
			var named struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal(raw, &named)
			return nil, fmt.Errorf("%s step %d %q: %w", proc, i+1, named.Name, err)
		}
	}
	var d Definition
	if err := strictJSON(js, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", proc, err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// Validate checks the definition and returns every problem found, each naming the process and,
// where there is one, the step.
func (d *Definition) Validate() error {
	var errs []error
	proc := fmt.Sprintf("process %q", d.Name)
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(proc+": "+format, args...)) }
	if !namePattern.MatchString(d.Name) {
		bad("name must be lowercase letters, digits and dashes (at most 63)")
	}
	for field, v := range map[string]string{"start": d.Start, "completed": d.Completed, "failed": d.Failed, "compensated": d.Compensated} {
		if v == "" {
			bad("%s event type is required", field)
		}
	}
	if len(d.Steps) == 0 {
		bad("at least one step is required")
	}
	seen := map[string]bool{}
	for i, s := range d.Steps {
		step := fmt.Sprintf("%s step %d %q: ", proc, i+1, s.Name)
		bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(step+format, args...)) }
		switch {
		case !namePattern.MatchString(s.Name):
			bad("name must be lowercase letters, digits and dashes (at most 63)")
		case seen[s.Name]:
			bad("name is used by an earlier step")
		}
		seen[s.Name] = true
		if (s.Command == nil) == (s.Task == nil) {
			bad("exactly one of command or task is required")
		}
		if s.Timeout.Duration <= 0 {
			bad("timeout is required and must be positive")
		}
		if s.Retries < 0 {
			bad("retries must not be negative")
		}
		if c := s.Command; c != nil {
			if c.Type == "" {
				bad("command.type is required")
			}
			if len(c.Success) == 0 {
				bad("command.success needs at least one reply type")
			}
			replies := map[string]bool{}
			for _, t := range append(append([]string{}, c.Success...), c.Failure...) {
				switch {
				case t == "":
					bad("command reply types must not be empty")
				case replies[t]:
					bad("reply type %s is listed twice in success/failure", t)
				case t == d.Start:
					bad("reply type %s is the process start type", t)
				}
				replies[t] = true
			}
		}
		if t := s.Task; t != nil {
			if t.Title == "" {
				bad("task.title is required")
			}
			if t.Assignee == "" && t.Group == "" {
				bad("task needs an assignee or a group")
			}
			if s.Retries != 0 {
				bad("retries is not supported for tasks")
			}
		}
		if c := s.Compensate; c != nil {
			if c.Type == "" {
				bad("compensate.type is required")
			}
			if c.Reply != "" && c.Timeout.Duration <= 0 {
				bad("compensate.timeout is required when compensate.reply is set")
			}
			if c.Retries != nil && *c.Retries < 0 {
				bad("compensate.retries must not be negative")
			}
		}
		if w := s.When; w != nil && w.Field == "" {
			bad("when.field is required")
		}
	}
	return errors.Join(errs...)
}

// Set is the definitions a process manager runs, indexed by start event type.
type Set struct {
	byStart map[string]*Definition
	byName  map[string]*Definition
}

// NewSet indexes defs, refusing two definitions with the same name or start type.
func NewSet(defs ...*Definition) (*Set, error) {
	s := &Set{byStart: map[string]*Definition{}, byName: map[string]*Definition{}}
	for _, d := range defs {
		if o, ok := s.byName[d.Name]; ok && o != d {
			return nil, fmt.Errorf("process %q is defined twice", d.Name)
		}
		if o, ok := s.byStart[d.Start]; ok {
			return nil, fmt.Errorf("process %q and process %q both start on %s", o.Name, d.Name, d.Start)
		}
		s.byStart[d.Start] = d
		s.byName[d.Name] = d
	}
	return s, nil
}

// ByStart returns the definition started by event type t.
func (s *Set) ByStart(t string) (*Definition, bool) {
	d, ok := s.byStart[t]
	return d, ok
}

// HasTasks reports whether any definition has a human task step.
func (s *Set) HasTasks() bool {
	for _, d := range s.byName {
		for _, st := range d.Steps {
			if st.Task != nil {
				return true
			}
		}
	}
	return false
}

// Names lists the process names, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// LoadDir parses every *.yaml / *.yml file in dir (a mounted ConfigMap) as one definition.
// Files whose name starts with ".." (the ConfigMap projection's internal links) are skipped. An
// empty directory is an empty set: the manager starts and refuses every event until definitions
// are added.
func LoadDir(dir string) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading process definitions: %w", err)
	}
	var defs []*Definition
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "..") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("reading process definition: %w", err)
		}
		d, err := Parse(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		defs = append(defs, d)
	}
	return NewSet(defs...)
}
