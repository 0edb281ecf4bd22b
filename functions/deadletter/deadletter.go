// Package main is the dead-letter function: the Broker's deadLetterSink, which stores every
// dead letter in Redis so that it can be listed and redriven with `knfaas dlq`.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
)

// It is an HTTP function, not a CloudEvents one, because func-go's CloudEvents runtime reads
// any body whole and cannot answer a full store with Retry-After: Handle bounds the body, parses
// the CloudEvent with the SDK (binary or structured mode) and chooses the answer.

// Config is read once at start; each default is in its tag or, where it is a shared constant,
// preset by Start before the environment is read. Check refuses a bad value.
type Config struct {
	// MaxLetters bounds the number of letters kept; a full store refuses new letters.
	MaxLetters int `envconfig:"DEADLETTER_MAX_LETTERS" default:"100000"`
	// MaxAge bounds how long a letter is kept.
	MaxAge time.Duration `envconfig:"DEADLETTER_MAX_AGE" default:"168h"`
	// MaxBytes bounds the total size of the letters kept; a full store refuses new letters.
	MaxBytes int64 `envconfig:"DEADLETTER_MAX_BYTES" default:"268435456"`
	// MaxEventBytes is the largest event accepted; the request body may add
	// eventsize.DeadLetterOverheadBytes for the error extensions. Unset, it is
	// eventsize.DefaultMaxEventBytes, what a Broker accepts.
	MaxEventBytes int64 `envconfig:"DEADLETTER_MAX_EVENT_BYTES"`
}

// RetryAfter is what a full store answers in Retry-After: letters leave a full store only when
// an operator purges or redrives them, or they age out, so retrying sooner rarely helps.
const RetryAfter = 60 * time.Second

// MaxInflightBytes bounds the request bodies handled at once. A letter is held about three and a
// half times while it is stored (body, parsed data, encoded letter), so 24 MiB keeps a burst of
// large letters under the ksvc's 128 MiB memory limit whatever containerConcurrency says. A
// request over the bound is answered 503 with Retry-After and the broker retries it; one request
// is always admitted, so the largest letter always gets through.
const MaxInflightBytes = 24 << 20

// Function stores dead letters.
type Function struct {
	store    atomic.Pointer[deadletter.Store]
	maxBody  int64
	inflight atomic.Int64
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration and opens the Redis client; a bad value stops start-up.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	cfg := Config{MaxEventBytes: eventsize.DefaultMaxEventBytes}
	rdb, err := funcstart.Open("deadletter", &cfg)
	if err != nil {
		return err
	}
	f.maxBody = cfg.MaxEventBytes + eventsize.DeadLetterOverheadBytes
	f.store.Store(deadletter.NewStore(rdb, deadletter.Options{
		MaxLetters: cfg.MaxLetters, MaxAge: cfg.MaxAge, MaxBytes: cfg.MaxBytes,
	}))
	f.Started(rdb)
	return nil
}

// Check refuses unbounded or contradictory bounds, naming the variable.
func (c Config) Check() error {
	if c.MaxLetters <= 0 || c.MaxAge <= 0 || c.MaxBytes <= 0 || c.MaxEventBytes <= 0 {
		return fmt.Errorf("DEADLETTER_MAX_LETTERS (%d), DEADLETTER_MAX_AGE (%s), DEADLETTER_MAX_BYTES (%d) and DEADLETTER_MAX_EVENT_BYTES (%d) must be positive: retention is never unbounded",
			c.MaxLetters, c.MaxAge, c.MaxBytes, c.MaxEventBytes)
	}
	// A letter may be stored as base64 (4/3 of its data) with its attributes: the largest one
	// accepted must fit in an empty store, or it could never be stored and would be retried
	// forever.
	if need := 2 * (c.MaxEventBytes + eventsize.DeadLetterOverheadBytes); c.MaxBytes < need {
		return fmt.Errorf("DEADLETTER_MAX_BYTES (%d) must be at least %d, twice the largest dead letter accepted (DEADLETTER_MAX_EVENT_BYTES %d + %d bytes of error extensions)",
			c.MaxBytes, need, c.MaxEventBytes, eventsize.DeadLetterOverheadBytes)
	}
	return nil
}

// Stop closes the Redis client.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle stores one dead letter. It answers 2xx only once the letter is stored (or was already),
// so the broker keeps the event and retries on anything else: 503 while Redis is unreachable, and
// 503 with Retry-After while the store is full.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	store := f.store.Load()
	if store == nil {
		http.Error(w, "dead-letter store is starting", http.StatusServiceUnavailable)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "dead letters are POSTed as CloudEvents", http.StatusMethodNotAllowed)
		return
	}
	ctx := r.Context()
	reserve := r.ContentLength
	if reserve < 0 || reserve > f.maxBody {
		reserve = f.maxBody
	}
	if n := f.inflight.Add(reserve); n > MaxInflightBytes && n != reserve {
		f.inflight.Add(-reserve)
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("busy: %d bytes of dead letters being stored already, at most %d at once", n-reserve, MaxInflightBytes),
			http.StatusServiceUnavailable)
		return
	}
	defer f.inflight.Add(-reserve)
	body, err := readBody(w, r, f.maxBody)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("dead letter larger than %d bytes (DEADLETTER_MAX_EVENT_BYTES + %d bytes of error extensions)",
				f.maxBody, eventsize.DeadLetterOverheadBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading the dead letter: "+err.Error(), http.StatusBadRequest)
		return
	}
	// The SDK takes the bytes of a bytes.Reader in one exact-size copy; body is dropped after.
	e, err := binding.ToEvent(ctx, cehttp.NewMessage(r.Header, io.NopCloser(bytes.NewReader(body))))
	body = nil
	if err != nil {
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	ctx = logging.WithEvent(ctx, *e)
	l, err := deadletter.FromEvent(*e)
	e = nil
	if err != nil {
		http.Error(w, fmt.Sprintf("event cannot be stored: %v", err), http.StatusBadRequest)
		return
	}
	id, stored, err := store.Add(ctx, l)
	var full *deadletter.FullError
	switch {
	case errors.Is(err, deadletter.ErrFull) && errors.As(err, &full):
		slog.WarnContext(ctx, "dead-letter store full: answering 503 so the event stays pending on its Trigger; purge or redrive letters (knfaas dlq) or raise DEADLETTER_MAX_LETTERS/DEADLETTER_MAX_BYTES",
			"letters", full.Letters, "maxLetters", full.MaxLetters, "bytes", full.Bytes, "maxBytes", full.MaxBytes,
			"size", full.Size, "type", l.EventType, "source", l.Source, "id", l.EventID, "dest", l.Dest)
		w.Header().Set("Retry-After", strconv.Itoa(int(RetryAfter.Seconds())))
		http.Error(w, full.Error()+"; the event stays with its sender, try again later", http.StatusServiceUnavailable)
		return
	case errors.Is(err, deadletter.ErrTooLarge):
		http.Error(w, err.Error()+" (DEADLETTER_MAX_BYTES)", http.StatusRequestEntityTooLarge)
		return
	case err != nil:
		slog.ErrorContext(ctx, "storing dead letter failed", "type", l.EventType, "source", l.Source, "id", l.EventID, "err", err)
		http.Error(w, "dead-letter store unavailable", http.StatusServiceUnavailable)
		return
	}
	if !l.ErrorExtensions {
		slog.WarnContext(ctx, "stored an event without knativeerror* extensions (posted directly?)",
			"letter", id, "type", l.EventType, "source", l.Source, "id", l.EventID)
	}
	if !stored {
		slog.DebugContext(ctx, "duplicate dead letter", "letter", id, "source", l.Source, "id", l.EventID, "dest", l.Dest)
	}
	w.WriteHeader(http.StatusAccepted)
}

// readBody reads at most limit bytes of the request body into one buffer, sized from
// Content-Length when the sender gave it, so a large letter is not copied while it grows.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead) // ReadFrom wants MinRead free bytes to see EOF without growing
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
