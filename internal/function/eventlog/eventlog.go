// Package eventlog appends CloudEvents to an append-only log on Redis Streams and reads it back.
package eventlog

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"
)

// The log keeps one global stream and, for each subject and each type, a stream of its own,
// so that a subject's history and a type's time window are ranges, not scans. Stream entry
// ids are the append time in milliseconds, which is what time windows and cursors refer to.

//go:embed append.lua
var appendLua string

var appendScript = redis.NewScript(appendLua)

// Key names.
const (
	GlobalStream  = "knfaas:eventstore:log"
	subjectPrefix = "knfaas:eventstore:subject:"
	typePrefix    = "knfaas:eventstore:type:"
	dedupPrefix   = "knfaas:eventstore:seen:"
)

// SubjectStream is the stream of one subject's events.
func SubjectStream(subject string) string { return subjectPrefix + subject }

// TypeStream is the stream of one event type's events.
func TypeStream(typ string) string { return typePrefix + typ }

// DedupKey remembers that (source, id) was appended; the source is length-prefixed so that
// colons inside it cannot make two pairs collide.
func DedupKey(source, id string) string {
	return dedupPrefix + strconv.Itoa(len(source)) + ":" + source + ":" + id
}

// Options bound the log.
type Options struct {
	// Retention drops entries older than this (XTRIM MINID ~) and expires idle subject and
	// type streams.
	Retention time.Duration
	// MaxLen caps the global stream (XADD MAXLEN ~).
	MaxLen int64
	// StreamMaxLen caps each subject and type stream.
	StreamMaxLen int64
	// DedupTTL is how long a (source, id) is remembered; later redeliveries append again. It
	// should not be shorter than Retention, or replaying old events would log them twice.
	DedupTTL time.Duration
}

// Defaults for zero Options fields.
const (
	DefaultRetention    = 30 * 24 * time.Hour
	DefaultMaxLen       = 1_000_000
	DefaultStreamMaxLen = 10_000
	DefaultDedupTTL     = DefaultRetention
)

// Log is the event log.
type Log struct {
	rdb  redis.Cmdable
	opts Options
}

// New returns a Log on rdb.
func New(rdb redis.Cmdable, opts Options) *Log {
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.MaxLen <= 0 {
		opts.MaxLen = DefaultMaxLen
	}
	if opts.StreamMaxLen <= 0 {
		opts.StreamMaxLen = DefaultStreamMaxLen
	}
	if opts.DedupTTL <= 0 {
		opts.DedupTTL = DefaultDedupTTL
	}
	return &Log{rdb: rdb, opts: opts}
}

// Load caches the append script on the server.
func (l *Log) Load(ctx context.Context) error {
	if err := appendScript.Load(ctx, l.rdb).Err(); err != nil {
		return fmt.Errorf("loading append script: %w", err)
	}
	return nil
}

// Appended reports where an event went.
type Appended struct {
	// Cursor is the event's entry id in the global stream.
	Cursor string
	// Duplicate is true when (source, id) was appended before; Cursor is then the first append's.
	Duplicate bool
}

// ErrInvalidEvent is wrapped by Append's errors for events that can never be stored.
var ErrInvalidEvent = errors.New("invalid event")

// Append stores e once per (source, id), in one round trip.
func (l *Log) Append(ctx context.Context, e event.Event) (Appended, error) {
	if err := e.Validate(); err != nil {
		return Appended{}, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	body, err := json.Marshal(e)
	if err != nil {
		return Appended{}, fmt.Errorf("%w: encoding: %w", ErrInvalidEvent, err)
	}
	hasSubject := "0"
	subjectKey := SubjectStream("")
	if e.Subject() != "" {
		hasSubject, subjectKey = "1", SubjectStream(e.Subject())
	}
	keys := []string{DedupKey(e.Source(), e.ID()), GlobalStream, subjectKey, TypeStream(e.Type())}
	raw, err := appendScript.Run(ctx, l.rdb, keys,
		l.opts.DedupTTL.Milliseconds(), l.opts.Retention.Milliseconds(), l.opts.MaxLen, l.opts.StreamMaxLen,
		hasSubject, body).Slice()
	if err != nil {
		return Appended{}, fmt.Errorf("appending event %s: %w", e.ID(), err)
	}
	if len(raw) != 2 {
		return Appended{}, fmt.Errorf("append script answered %d values, want 2", len(raw))
	}
	dup, _ := raw[0].(int64)
	id, _ := raw[1].(string)
	return Appended{Cursor: id, Duplicate: dup == 1}, nil
}

// Query selects events. Subject or Type picks a stream (Subject wins; Type then filters it);
// neither means the global stream. Since and Until bound the append time (inclusive); After is
// a cursor from a previous Page.
type Query struct {
	Subject string
	Type    string
	Since   time.Time
	Until   time.Time
	After   string
	Limit   int
}

// Record is one stored event and its cursor.
type Record struct {
	Cursor string      `json:"cursor"`
	Event  event.Event `json:"event"`
}

// Page is one page of a Query, oldest first.
type Page struct {
	Records []Record `json:"records"`
	// Next is the cursor to pass as After for the following page; empty when this page was
	// the last one.
	Next string `json:"next,omitempty"`
}

// ErrInvalidQuery is wrapped by Read's errors for queries that cannot be answered.
var ErrInvalidQuery = errors.New("invalid query")

// MaxLimit caps one page.
const MaxLimit = 1000

// Read returns one page of q in one round trip.
func (l *Log) Read(ctx context.Context, q Query) (Page, error) {
	if q.Limit <= 0 || q.Limit > MaxLimit {
		return Page{}, fmt.Errorf("%w: limit must be 1..%d", ErrInvalidQuery, MaxLimit)
	}
	if q.After != "" && !validCursor(q.After) {
		return Page{}, fmt.Errorf("%w: cursor %q", ErrInvalidQuery, q.After)
	}
	key := GlobalStream
	switch {
	case q.Subject != "":
		key = SubjectStream(q.Subject)
	case q.Type != "":
		key = TypeStream(q.Type)
	}
	start, end := "-", "+"
	if !q.Since.IsZero() {
		start = strconv.FormatInt(q.Since.UnixMilli(), 10)
	}
	if q.After != "" && (start == "-" || cursorAfter(q.After, start)) {
		start = "(" + q.After
	}
	if !q.Until.IsZero() {
		end = strconv.FormatInt(q.Until.UnixMilli(), 10)
	}
	msgs, err := l.rdb.XRangeN(ctx, key, start, end, int64(q.Limit)).Result()
	if err != nil {
		return Page{}, fmt.Errorf("reading %s: %w", key, err)
	}
	var p Page
	for _, m := range msgs {
		rec, err := decode(m)
		if err != nil {
			return Page{}, err
		}
		if q.Type != "" && rec.Event.Type() != q.Type {
			continue
		}
		p.Records = append(p.Records, rec)
	}
	if len(msgs) == q.Limit {
		p.Next = msgs[len(msgs)-1].ID
	}
	return p, nil
}

func decode(m redis.XMessage) (Record, error) {
	s, _ := m.Values["ce"].(string)
	var e event.Event
	if err := json.Unmarshal([]byte(s), &e); err != nil {
		return Record{}, fmt.Errorf("decoding stored event %s: %w", m.ID, err)
	}
	return Record{Cursor: m.ID, Event: e}, nil
}

// validCursor accepts stream ids: <ms>-<seq>.
func validCursor(c string) bool {
	ms, seq, ok := strings.Cut(c, "-")
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return ok && err1 == nil && err2 == nil
}

// cursorAfter reports whether cursor c is at or past the millisecond bound ms.
func cursorAfter(c, ms string) bool {
	cm, _, _ := strings.Cut(c, "-")
	a, _ := strconv.ParseUint(cm, 10, 64)
	b, _ := strconv.ParseUint(ms, 10, 64)
	return a >= b
}
