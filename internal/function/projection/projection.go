// Package projection applies events to Redis read models exactly once per event, in one round trip.
package projection

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// A projector declares, in Go, how an event changes one entry of its read model (a Change made
// of Ops); the Projector applies it with one Lua script that, atomically, checks the projector's
// inbox for (source, id), applies the ops, evaluates threshold watches, bumps the entry and
// model versions, and records the event in the inbox with a TTL. A redelivered event therefore
// changes nothing and gets back the result of its first application.

//go:embed apply.lua
var applyLua string

var applyScript = redis.NewScript(applyLua)

// DefaultInboxTTL is how long an applied event is remembered: redeliveries later than this
// would be applied again. It must exceed the broker's whole retry window.
const DefaultInboxTTL = 7 * 24 * time.Hour

// OpKind names what an Op does to its field.
type OpKind string

// The operations the script knows.
const (
	// OpIncr adds N to an integer field (HINCRBY); commutative, so delivery order does not matter.
	OpIncr OpKind = "incr"
	// OpSet sets the field to Value (HSET).
	OpSet OpKind = "set"
	// OpDel removes the field (HDEL).
	OpDel OpKind = "del"
	// OpMax sets the field to N when N is larger than the current value (or it is unset);
	// useful for "last seen" timestamps that must not go back on reordered deliveries.
	OpMax OpKind = "max"
)

// Op is one change to one field of an entry.
type Op struct {
	Kind  OpKind
	Field string
	// N is the operand of OpIncr and OpMax.
	N int64
	// Value is the operand of OpSet.
	Value string
}

// Incr returns an op adding n to field.
func Incr(field string, n int64) Op { return Op{Kind: OpIncr, Field: field, N: n} }

// Set returns an op setting field to value.
func Set(field, value string) Op { return Op{Kind: OpSet, Field: field, Value: value} }

// Del returns an op deleting field.
func Del(field string) Op { return Op{Kind: OpDel, Field: field} }

// Max returns an op raising field to n.
func Max(field string, n int64) Op { return Op{Kind: OpMax, Field: field, N: n} }

// Watch asks the script to report when Field (after the ops) drops below Threshold, once per
// dip: it fires again only after the field has been back at or above the threshold.
type Watch struct {
	Field     string
	Threshold int64
}

// Change is what one event does to the read model.
type Change struct {
	// Key is the entry the event changes (often the event's subject).
	Key     string
	Ops     []Op
	Watches []Watch
}

// Directions of a Crossing.
const (
	Below     = "below"
	Recovered = "recovered"
)

// Crossing reports that a watched field crossed its threshold while applying the event.
type Crossing struct {
	Field     string  `json:"field"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Direction string  `json:"direction"`
}

// Result is the outcome of applying one event.
type Result struct {
	// Duplicate is true when the inbox already held the event: nothing changed, and Version and
	// Crossings are those recorded when it was first applied, so a handler can repeat exactly
	// the replies it gave then (a reply lost on the way out is not lost forever).
	Duplicate bool
	// Version is the entry's version after the event.
	Version int64 `json:"version"`
	// Crossings lists the watches that fired.
	Crossings []Crossing `json:"crossings"`
}

// EventRef identifies an event occurrence.
type EventRef struct {
	Source string
	ID     string
}

// Projector applies the changes of one projector (a function that folds events into a read
// model) to its read model, exactly once per event.
type Projector struct {
	rdb      redis.Scripter
	name     string
	model    string
	inboxTTL time.Duration
}

// Options tune a Projector.
type Options struct {
	// InboxTTL is the deduplication horizon; zero means DefaultInboxTTL.
	InboxTTL time.Duration
}

var (
	nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	keyRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$`)
)

// ValidName reports whether s can name a projector or a read model: lowercase letters, digits
// and dashes, starting with a letter, at most 63 characters.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ValidKey reports whether s can be an entry key: 1–128 characters of letters, digits and
// . _ ~ -, starting with a letter or digit. Keys travel in URL paths unescaped.
func ValidKey(s string) bool { return keyRE.MatchString(s) }

// ErrInvalidChange is wrapped by Apply's errors for changes that can never be applied (a bad
// key or field): the event should be rejected with a 4xx, not retried.
var ErrInvalidChange = errors.New("invalid change")

// New returns a Projector writing model on behalf of the projector named projector.
func New(rdb redis.Scripter, projector, model string, opts Options) (*Projector, error) {
	if !ValidName(projector) {
		return nil, fmt.Errorf("projection: invalid projector name %q", projector)
	}
	if !ValidName(model) {
		return nil, fmt.Errorf("projection: invalid read model name %q", model)
	}
	if opts.InboxTTL <= 0 {
		opts.InboxTTL = DefaultInboxTTL
	}
	return &Projector{rdb: rdb, name: projector, model: model, inboxTTL: opts.InboxTTL}, nil
}

// Model is the read model's name.
func (p *Projector) Model() string { return p.model }

// Load makes sure the script is cached on the server, so the first event costs one round trip.
func (p *Projector) Load(ctx context.Context) error {
	if err := applyScript.Load(ctx, p.rdb).Err(); err != nil {
		return fmt.Errorf("loading projection script: %w", err)
	}
	return nil
}

// Open is how a function starts its projector: New, then Load. A Redis that does not answer
// yet is logged, not an error: the function's readiness follows Redis, and Apply sends the
// script itself when the server lacks it.
func Open(ctx context.Context, rdb redis.Scripter, projector, model string, opts Options) (*Projector, error) {
	p, err := New(rdb, projector, model, opts)
	if err != nil {
		return nil, err
	}
	if err := p.Load(ctx); err != nil {
		slog.Warn("redis not reachable yet; readiness will follow it", "err", err)
	}
	return p, nil
}

// Apply applies ch for the event ref exactly once.
func (p *Projector) Apply(ctx context.Context, ref EventRef, ch Change) (Result, error) {
	keys, args, err := p.scriptInput(ref, ch)
	if err != nil {
		return Result{}, err
	}
	raw, err := applyScript.Run(ctx, p.rdb, keys, args...).Slice()
	if err != nil {
		return Result{}, fmt.Errorf("applying event %s to read model %s: %w", ref.ID, p.model, err)
	}
	return parseResult(raw)
}

func (p *Projector) scriptInput(ref EventRef, ch Change) ([]string, []any, error) {
	if ref.Source == "" || ref.ID == "" {
		return nil, nil, fmt.Errorf("%w: event needs a source and an id", ErrInvalidChange)
	}
	if !ValidKey(ch.Key) {
		return nil, nil, fmt.Errorf("%w: entry key %q", ErrInvalidChange, ch.Key)
	}
	args := make([]any, 0, 4+3*len(ch.Ops)+2*len(ch.Watches))
	args = append(args, p.inboxTTL.Milliseconds(), ch.Key, len(ch.Ops))
	for _, op := range ch.Ops {
		if err := validField(op.Field); err != nil {
			return nil, nil, err
		}
		switch op.Kind {
		case OpIncr, OpMax:
			args = append(args, string(op.Kind), op.Field, op.N)
		case OpSet:
			args = append(args, string(op.Kind), op.Field, op.Value)
		case OpDel:
			args = append(args, string(op.Kind), op.Field, "")
		default:
			return nil, nil, fmt.Errorf("%w: unknown op %q", ErrInvalidChange, op.Kind)
		}
	}
	args = append(args, len(ch.Watches))
	for _, w := range ch.Watches {
		if err := validField(w.Field); err != nil {
			return nil, nil, err
		}
		args = append(args, w.Field, w.Threshold)
	}
	keys := []string{p.InboxKey(ref), p.EntryKey(ch.Key), p.IndexKey(), p.VersionKey()}
	return keys, args, nil
}

func validField(f string) error {
	if f == "" || strings.HasPrefix(f, "_") {
		return fmt.Errorf("%w: field %q is empty or reserved (leading _)", ErrInvalidChange, f)
	}
	return nil
}

func parseResult(raw []any) (Result, error) {
	if len(raw) != 2 {
		return Result{}, fmt.Errorf("projection script answered %d values, want 2", len(raw))
	}
	dup, _ := raw[0].(int64)
	body, _ := raw[1].(string)
	var res Result
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		return Result{}, fmt.Errorf("decoding projection result %q: %w", body, err)
	}
	res.Duplicate = dup == 1
	return res, nil
}

// Key layout. Every key of one read model carries the model name as a hash tag, so the model
// and its inbox live in one Redis Cluster slot and the script's keys are always co-located.

// EntryKey is the hash holding entry key of the model.
func (p *Projector) EntryKey(key string) string { return EntryKey(p.model, key) }

// IndexKey is the sorted set listing the model's entry keys.
func (p *Projector) IndexKey() string { return IndexKey(p.model) }

// VersionKey counts the events applied to the model.
func (p *Projector) VersionKey() string { return VersionKey(p.model) }

// InboxKey remembers that the projector applied ref. The source is length-prefixed so that a
// colon inside it cannot make two different (source, id) pairs collide.
func (p *Projector) InboxKey(ref EventRef) string {
	return inboxPrefix(p.model, p.name) + strconv.Itoa(len(ref.Source)) + ":" + ref.Source + ":" + ref.ID
}

func inboxPrefix(model, projector string) string {
	return "knfaas:projection:inbox:{" + model + "}:" + projector + ":"
}

// EntryKey is the hash holding one entry of model.
func EntryKey(model, key string) string { return "knfaas:projection:entry:{" + model + "}:" + key }

// IndexKey is the sorted set (all scores 0, ordered by member) of model's entry keys.
func IndexKey(model string) string { return "knfaas:projection:index:{" + model + "}" }

// VersionKey is the counter of events applied to model.
func VersionKey(model string) string { return "knfaas:projection:version:{" + model + "}" }

// Drop deletes the read model and the projector's inbox, so that replaying the event log
// rebuilds the model from nothing. Stop the projector (or its Trigger) first: events applied
// during a drop would be half-forgotten.
func (p *Projector) Drop(ctx context.Context) error {
	rdb, ok := p.rdb.(redis.Cmdable)
	if !ok {
		return errors.New("projection: dropping needs a full redis client")
	}
	for _, match := range []string{EntryKey(p.model, "*"), inboxPrefix(p.model, p.name) + "*"} {
		iter := rdb.Scan(ctx, 0, match, 1000).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 1000 {
				if err := rdb.Unlink(ctx, batch...).Err(); err != nil {
					return fmt.Errorf("dropping read model %s: %w", p.model, err)
				}
				batch = batch[:0]
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("scanning read model %s: %w", p.model, err)
		}
		if len(batch) > 0 {
			if err := rdb.Unlink(ctx, batch...).Err(); err != nil {
				return fmt.Errorf("dropping read model %s: %w", p.model, err)
			}
		}
	}
	if err := rdb.Unlink(ctx, p.IndexKey(), p.VersionKey()).Err(); err != nil {
		return fmt.Errorf("dropping read model %s: %w", p.model, err)
	}
	return nil
}
