package deadletter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Prefix starts every Redis key of the dead-letter store (see functions/deadletter/README.md).
const Prefix = "knfaas:deadletter:"

// Key families under Prefix.
const (
	keyStream   = Prefix + "letters"   // stream of letters, one entry per letter
	keySeen     = Prefix + "seen:"     // + sha256(source, id, dest) → entry id (idempotency)
	keyIndexAll = Prefix + "index:all" // zset entry id scored by arrival ms*1000+seq
	keyIndex    = Prefix + "index:"    // + <type|source|dest|code>:<value> → zset like index:all
	keyRedrive  = Prefix + "redrive:"  // + entry id → hash attempts, lease_until, last_error
	keyBytes    = Prefix + "bytes"     // sum of the sizes of the stored letters (field "size")
)

// Defaults for Options.
const (
	DefaultMaxLetters = 100000
	DefaultMaxAge     = 7 * 24 * time.Hour
	// DefaultMaxBytes bounds the letters' total size: room for 60 dead letters of the largest
	// event a Broker accepts by default, small enough for a laptop and for a cluster's Redis.
	DefaultMaxBytes  = 256 << 20
	defaultTrimBatch = 100
	listPage         = 256
)

// ErrNotFound is returned for a letter id that is not stored (never was, purged, or redriven).
var ErrNotFound = errors.New("dead letter not found")

// ErrFull is matched (errors.Is) by the *FullError that Add returns when the store holds as many
// letters or bytes as it may. Nothing was stored and nothing was evicted: the sender should keep
// the event and try again later.
var ErrFull = errors.New("dead-letter store full")

// ErrTooLarge is matched by the *FullError that Add returns for a letter larger than the whole
// byte bound: it could never be stored, so trying again does not help.
var ErrTooLarge = errors.New("dead letter larger than the dead-letter store's byte bound")

// FullError says why Add refused a letter.
type FullError struct {
	// Letters and Bytes are what the store held; MaxLetters and MaxBytes its bounds.
	Letters, MaxLetters int64
	Bytes, MaxBytes     int64
	// Size is the refused letter's size in bytes.
	Size int64
}

func (e *FullError) Error() string {
	if e.Size > e.MaxBytes {
		return fmt.Sprintf("dead letter of %d bytes is larger than the store's bound of %d bytes", e.Size, e.MaxBytes)
	}
	return fmt.Sprintf("dead-letter store full: %d letters of %d, %d bytes of %d, and this letter needs %d bytes",
		e.Letters, e.MaxLetters, e.Bytes, e.MaxBytes, e.Size)
}

// Is matches ErrTooLarge for a letter that could never fit and ErrFull otherwise.
func (e *FullError) Is(target error) bool {
	if e.Size > e.MaxBytes {
		return target == ErrTooLarge
	}
	return target == ErrFull
}

// Options bound the store. All three bounds always apply. Age is retention: letters older than
// MaxAge are removed. Count and bytes are capacity: when either is reached, Add refuses new
// letters (ErrFull) rather than drop stored ones.
type Options struct {
	// MaxLetters is the most letters kept (0 means the default).
	MaxLetters int
	// MaxAge is how long a letter is kept (0 means the default).
	MaxAge time.Duration
	// MaxBytes bounds the total size of the letters kept (0 means the default); a letter's size
	// is the bytes of its stored fields, mostly its event.
	MaxBytes int64
}

// Store keeps dead letters in Redis.
type Store struct {
	rdb        redis.UniversalClient
	maxLetters int
	maxAgeMs   int64
	maxBytes   int64
}

// NewStore returns a store on rdb.
func NewStore(rdb redis.UniversalClient, opts Options) *Store {
	if opts.MaxLetters <= 0 {
		opts.MaxLetters = DefaultMaxLetters
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	return &Store{rdb: rdb, maxLetters: opts.MaxLetters, maxAgeMs: opts.MaxAge.Milliseconds(), maxBytes: opts.MaxBytes}
}

// Usage is how much of the store is in use.
type Usage struct {
	Letters, MaxLetters int64
	// Bytes counts the letters stored with a size, which is every letter stored since the byte
	// bound exists.
	Bytes, MaxBytes int64
}

// Usage reads how many letters and bytes the store holds, against its bounds.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	pipe := s.rdb.Pipeline()
	n := pipe.XLen(ctx, keyStream)
	b := pipe.Get(ctx, keyBytes)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Usage{}, fmt.Errorf("reading dead-letter store usage: %w", err)
	}
	bytes, err := b.Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Usage{}, fmt.Errorf("reading dead-letter byte counter: %w", err)
	}
	return Usage{Letters: n.Val(), MaxLetters: int64(s.maxLetters), Bytes: bytes, MaxBytes: s.maxBytes}, nil
}

// IdempotencyKey identifies a dead letter by (source, id, destination): the same event failing
// at the same subscriber is one letter however often it is delivered to the dead-letter sink.
func IdempotencyKey(source, id, dest string) string {
	h := sha256.New()
	for _, s := range []string{source, id, dest} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Add stores l and returns its letter id. stored is false when a letter for the same
// (source, id, destination) is already kept; id is then the earlier letter's. When the store
// holds MaxLetters letters or l does not fit in MaxBytes (after letters older than MaxAge were
// removed), Add stores nothing, evicts nothing, and returns a *FullError matching ErrFull (or
// ErrTooLarge when l alone is larger than MaxBytes).
//
// Any Letter can be added, not only one made by FromEvent: the broker adds the events it parks
// with Reason ReasonParked and Detail set. l.Event should be made by FromEvent's encoding (or be
// the event's JSON structured format) so that a redrive sends the original data.
func (s *Store) Add(ctx context.Context, l Letter) (id string, stored bool, err error) {
	l.Detail = truncate(l.Detail, MaxDetailBytes)
	seen := IdempotencyKey(l.Source, l.EventID, l.Dest)
	code := ""
	if l.Code != 0 {
		code = strconv.Itoa(l.Code)
	}
	errExt := "0"
	if l.ErrorExtensions {
		errExt = "1"
	}
	keys := []string{keyStream, keySeen + seen, keyBytes, keyIndexAll}
	for _, ix := range []struct{ attr, value string }{
		{"type", l.EventType}, {"source", l.Source}, {"dest", l.Dest}, {"code", code}, {"reason", l.Reason},
	} {
		if ix.value != "" {
			keys = append(keys, keyIndex+ix.attr+":"+ix.value)
		}
	}
	// l.Event goes as []byte: go-redis writes it to the connection without another copy.
	args := []any{
		Prefix, s.maxLetters, s.maxAgeMs, defaultTrimBatch, s.maxBytes,
		"type", l.EventType, "source", l.Source, "id", l.EventID, "subject", l.Subject,
		"dest", l.Dest, "code", code, "data", l.ErrorData, "errext", errExt,
		"trigger", l.Trigger, "reason", l.Reason, "detail", l.Detail, "event", []byte(l.Event), "key", seen,
	}
	res, err := addScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return "", false, fmt.Errorf("storing dead letter for event %s: %w", l.EventID, err)
	}
	if len(res) == 4 {
		if n, _ := res[0].(int64); n == -1 {
			full := &FullError{MaxLetters: int64(s.maxLetters), MaxBytes: s.maxBytes}
			full.Letters, _ = res[1].(int64)
			full.Bytes, _ = res[2].(int64)
			full.Size, _ = res[3].(int64)
			return "", false, fmt.Errorf("storing dead letter for event %s: %w", l.EventID, full)
		}
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("storing dead letter for event %s: unexpected reply %v", l.EventID, res)
	}
	n, _ := res[0].(int64)
	id, _ = res[1].(string)
	return id, n == 1, nil
}

// MaxDetailBytes bounds Letter.Detail as stored; Add cuts a longer detail (at a UTF-8 boundary)
// and marks the cut, so free text from failing endpoints cannot grow a letter unboundedly.
const MaxDetailBytes = 4 << 10

const truncatedMark = " …(truncated)"

func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max - len(truncatedMark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + truncatedMark
}

// Filter selects letters. Empty fields match everything.
type Filter struct {
	IDs    []string // letter ids; when set, only these are considered
	Type   string
	Source string
	Dest   string
	Code   int
	Reason string    // ReasonParked selects parked letters
	Since  time.Time // inclusive
	Until  time.Time // inclusive
	Limit  int       // 0 means no limit
	// OmitEvent leaves Letter.Event empty, for listings that show only the attributes: the
	// events, the bulk of a store, are then neither sent by Redis nor held.
	OmitEvent bool
}

func (f Filter) match(l Letter) bool {
	return (f.Type == "" || l.EventType == f.Type) &&
		(f.Source == "" || l.Source == f.Source) &&
		(f.Dest == "" || l.Dest == f.Dest) &&
		(f.Code == 0 || l.Code == f.Code) &&
		(f.Reason == "" || l.Reason == f.Reason) &&
		(f.Since.IsZero() || !l.Received.Before(f.Since)) &&
		(f.Until.IsZero() || !l.Received.After(f.Until))
}

// List returns the letters matching f, oldest first.
func (s *Store) List(ctx context.Context, f Filter) ([]Letter, error) {
	var out []Letter
	err := s.Scan(ctx, f, func(l Letter) (bool, error) {
		out = append(out, l)
		return true, nil
	})
	return out, err
}

// Scan calls fn with each letter matching f, oldest first, until fn returns false or an
// error, or f.Limit letters were passed. It reads the smallest index that f names (one sorted
// set per attribute value, scored by arrival), so its cost follows the number of candidates in
// the time window, not the size of the stream. It pages by score, not by offset, so letters
// removed meanwhile (by fn itself, a redrive, or retention) never make it skip others.
func (s *Store) Scan(ctx context.Context, f Filter, fn func(Letter) (bool, error)) error {
	if len(f.IDs) > 0 {
		letters, err := s.listIDs(ctx, f)
		if err != nil {
			return err
		}
		for _, l := range letters {
			if more, err := fn(l); err != nil || !more {
				return err
			}
		}
		return nil
	}
	min, max := "-inf", "+inf"
	if !f.Since.IsZero() {
		min = strconv.FormatInt(f.Since.UnixMilli()*1000, 10)
	}
	if !f.Until.IsZero() {
		max = strconv.FormatInt(f.Until.UnixMilli()*1000+999, 10)
	}
	index, err := s.smallestIndex(ctx, f, min, max)
	if err != nil {
		return err
	}
	passed := 0
	for {
		page, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
			Key: index, Start: min, Stop: max, ByScore: true, Count: listPage,
		}).Result()
		if err != nil {
			return fmt.Errorf("reading dead-letter index %s: %w", index, err)
		}
		ids := make([]string, len(page))
		for i, z := range page {
			ids[i], _ = z.Member.(string)
		}
		done := false
		err = s.fetchEach(ctx, ids, f.OmitEvent, func(l Letter) (bool, error) {
			if !f.match(l) {
				return true, nil
			}
			more, err := fn(l)
			if err != nil || !more {
				done = true
				return false, err
			}
			passed++
			if f.Limit > 0 && passed == f.Limit {
				done = true
				return false, nil
			}
			return true, nil
		})
		if err != nil || done {
			return err
		}
		if len(page) < listPage {
			return nil
		}
		min = "(" + strconv.FormatFloat(page[len(page)-1].Score, 'f', -1, 64)
	}
}

func (s *Store) smallestIndex(ctx context.Context, f Filter, min, max string) (string, error) {
	var candidates []string
	for _, ix := range []struct{ attr, value string }{
		{"type", f.Type}, {"source", f.Source}, {"dest", f.Dest}, {"code", codeString(f.Code)}, {"reason", f.Reason},
	} {
		if ix.value != "" {
			candidates = append(candidates, keyIndex+ix.attr+":"+ix.value)
		}
	}
	switch len(candidates) {
	case 0:
		return keyIndexAll, nil
	case 1:
		return candidates[0], nil
	}
	pipe := s.rdb.Pipeline()
	counts := make([]*redis.IntCmd, len(candidates))
	for i, k := range candidates {
		counts[i] = pipe.ZCount(ctx, k, min, max)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return "", fmt.Errorf("counting dead-letter indexes: %w", err)
	}
	best := 0
	for i := range counts {
		if counts[i].Val() < counts[best].Val() {
			best = i
		}
	}
	return candidates[best], nil
}

func codeString(code int) string {
	if code == 0 {
		return ""
	}
	return strconv.Itoa(code)
}

func (s *Store) listIDs(ctx context.Context, f Filter) ([]Letter, error) {
	var out []Letter
	err := s.fetchEach(ctx, f.IDs, f.OmitEvent, func(l Letter) (bool, error) {
		if f.match(l) {
			out = append(out, l)
		}
		return f.Limit == 0 || len(out) < f.Limit, nil
	})
	return out, err
}

// Get returns one letter.
func (s *Store) Get(ctx context.Context, id string) (Letter, error) {
	var found []Letter
	err := s.fetchEach(ctx, []string{id}, false, func(l Letter) (bool, error) {
		found = append(found, l)
		return false, nil
	})
	if err != nil {
		return Letter{}, err
	}
	if len(found) == 0 {
		return Letter{}, fmt.Errorf("letter %s: %w", id, ErrNotFound)
	}
	return found[0], nil
}

// fetchBudget bounds the letter bytes one fetch script returns (at least one letter is always
// returned), so neither Redis nor this process builds a reply of many large letters at once.
const fetchBudget = 8 << 20

// fetchEach reads letters by id, in order, skipping ids that are gone, and calls fn with each
// until fn returns false or an error. Letters are read in chunks of at most fetchBudget bytes and
// passed on before the next chunk is read.
func (s *Store) fetchEach(ctx context.Context, ids []string, omitEvent bool, fn func(Letter) (bool, error)) error {
	for _, id := range ids {
		if !validEntryID(id) {
			return fmt.Errorf("letter id %q is not a stream entry id like 1700000000000-0", id)
		}
	}
	omit := "0"
	if omitEvent {
		omit = "1"
	}
	for len(ids) > 0 {
		args := make([]any, 0, len(ids)+3)
		args = append(args, Prefix, fetchBudget, omit)
		for _, id := range ids {
			args = append(args, id)
		}
		res, err := fetchScript.Run(ctx, s.rdb, []string{keyStream}, args...).Slice()
		if err != nil {
			return fmt.Errorf("reading dead letters: %w", err)
		}
		if len(res) == 0 {
			return fmt.Errorf("reading dead letters: empty reply")
		}
		consumed, _ := res[0].(int64)
		if consumed < 1 || int(consumed) > len(ids) {
			return fmt.Errorf("reading dead letters: unexpected reply consuming %d of %d ids", consumed, len(ids))
		}
		ids = ids[consumed:]
		for i := 1; i+1 < len(res); i += 2 {
			l, err := parseEntry(res[i], res[i+1])
			if err != nil {
				return err
			}
			res[i] = nil // let a large letter go as soon as fn is done with it
			if more, err := fn(l); err != nil || !more {
				return err
			}
		}
	}
	return nil
}

// validEntryID accepts "<ms>-<seq>" only, so user input never reaches XRANGE as "-" or "+".
func validEntryID(id string) bool {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}

func parseEntry(entry, redrive any) (Letter, error) {
	e, ok := entry.([]any)
	if !ok || len(e) != 2 {
		return Letter{}, fmt.Errorf("unexpected dead-letter entry %v", entry)
	}
	id, _ := e[0].(string)
	fields := pairs(e[1])
	ms, _, _ := strings.Cut(id, "-")
	msec, _ := strconv.ParseInt(ms, 10, 64)
	code, _ := strconv.Atoi(fields["code"])
	l := Letter{
		ID:              id,
		Received:        time.UnixMilli(msec).UTC(),
		EventType:       fields["type"],
		Source:          fields["source"],
		EventID:         fields["id"],
		Subject:         fields["subject"],
		ErrorExtensions: fields["errext"] == "1",
		Dest:            fields["dest"],
		Code:            code,
		ErrorData:       fields["data"],
		Trigger:         fields["trigger"],
		Reason:          fields["reason"], // absent in letters stored before parking existed
		Detail:          fields["detail"],
		Event:           []byte(fields["event"]),
	}
	if h := pairs(redrive); len(h) > 0 {
		attempts, _ := strconv.Atoi(h["attempts"])
		st := &RedriveState{Attempts: attempts, LastError: h["last_error"]}
		if lease, _ := strconv.ParseInt(h["lease_until"], 10, 64); lease > 0 {
			st.LeaseUntil = time.UnixMilli(lease).UTC()
		}
		l.Redrive = st
	}
	return l, nil
}

func pairs(v any) map[string]string {
	list, _ := v.([]any)
	m := make(map[string]string, len(list)/2)
	for i := 0; i+1 < len(list); i += 2 {
		k, _ := list[i].(string)
		val, _ := list[i+1].(string)
		m[k] = val
	}
	return m
}

// Drop removes letters and everything that indexes them; it returns how many were stored.
func (s *Store) Drop(ctx context.Context, ids ...string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	args := make([]any, 0, len(ids)+1)
	args = append(args, Prefix)
	for _, id := range ids {
		if !validEntryID(id) {
			return 0, fmt.Errorf("letter id %q is not a stream entry id like 1700000000000-0", id)
		}
		args = append(args, id)
	}
	n, err := dropScript.Run(ctx, s.rdb, []string{keyStream}, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("removing dead letters: %w", err)
	}
	return n, nil
}

// ClaimResult says what Claim did.
type ClaimResult int

// Claim outcomes.
const (
	// Claimed: the letter is marked and may be sent once.
	Claimed ClaimResult = iota
	// Gone: the letter is no longer stored (accepted by an earlier run, or purged).
	Gone
	// Busy: another redrive holds an unexpired lease on the letter.
	Busy
)

// Claim marks letter id before it is sent: its attempt count goes up by one and a lease of
// length lease keeps other redrive runs away until it is released or expires. It returns the
// new attempt count, or the lease expiry of whoever holds it when Busy.
func (s *Store) Claim(ctx context.Context, id string, lease time.Duration) (ClaimResult, int, time.Time, error) {
	res, err := claimScript.Run(ctx, s.rdb, []string{keyStream, keyRedrive + id},
		Prefix, id, lease.Milliseconds(), s.maxAgeMs).Slice()
	if err != nil {
		return Gone, 0, time.Time{}, fmt.Errorf("claiming letter %s: %w", id, err)
	}
	switch res[0] {
	case "gone":
		return Gone, 0, time.Time{}, nil
	case "busy":
		ms, _ := strconv.ParseInt(res[1].(string), 10, 64)
		return Busy, 0, time.UnixMilli(ms).UTC(), nil
	}
	attempts, _ := res[1].(int64)
	ms, _ := strconv.ParseInt(res[2].(string), 10, 64)
	return Claimed, int(attempts), time.UnixMilli(ms).UTC(), nil
}

// Release ends a claim whose send was not accepted; the letter stays with reason recorded.
func (s *Store) Release(ctx context.Context, id, reason string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{keyStream, keyRedrive + id},
		Prefix, id, reason, s.maxAgeMs).Err(); err != nil {
		return fmt.Errorf("releasing letter %s: %w", id, err)
	}
	return nil
}
