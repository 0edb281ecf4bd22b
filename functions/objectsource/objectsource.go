// Package main is the objectsource function: on every PingSource tick it lists a bucket prefix
// of an S3-compatible store and emits one event per new or changed object, each object version
// once across restarts and replicas.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/objectstore"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TypePing is the type of the PingSource events that tick the source.
const TypePing = "dev.knative.sources.ping"

// Source is the CloudEvent source of the events it emits.
const Source = "/knfaas/objectsource"

// Bounds of the configuration.
const (
	// MaxMaxKeys bounds OBJECTSOURCE_MAX_KEYS: the keys of one pass are held in memory.
	MaxMaxKeys = 100_000
	// pageSize is how many listed objects share one Redis round trip.
	pageSize = 500
)

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// Bucket is the bucket to list; required.
	Bucket string `envconfig:"OBJECTSOURCE_BUCKET" required:"true"`
	// Prefix limits the listing to keys starting with it.
	Prefix string `envconfig:"OBJECTSOURCE_PREFIX"`
	// MaxKeys bounds the objects one pass lists, 1 to MaxMaxKeys; the next pass continues
	// after the last one.
	MaxKeys int `envconfig:"OBJECTSOURCE_MAX_KEYS" default:"10000"`
	// Concurrency is how many events are sent to K_SINK at once: at least 1.
	Concurrency int `envconfig:"OBJECTSOURCE_CONCURRENCY" default:"16"`
	// SendTimeout bounds each send: positive.
	SendTimeout time.Duration `envconfig:"OBJECTSOURCE_SEND_TIMEOUT" default:"10s"`
	// Sink is the Broker (set by the SinkBinding).
	Sink string `envconfig:"K_SINK" required:"true"`
	objectstore.Config
}

// Check refuses values out of range, naming each variable.
func (c Config) Check() error {
	var errs []error
	if c.Bucket == "" {
		errs = append(errs, errors.New("OBJECTSOURCE_BUCKET is empty: set it to the bucket to list"))
	}
	if c.MaxKeys < 1 || c.MaxKeys > MaxMaxKeys {
		errs = append(errs, fmt.Errorf("OBJECTSOURCE_MAX_KEYS (%d) must be from 1 to %d", c.MaxKeys, MaxMaxKeys))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("OBJECTSOURCE_CONCURRENCY (%d) must be at least 1", c.Concurrency))
	}
	if c.SendTimeout <= 0 {
		errs = append(errs, fmt.Errorf("OBJECTSOURCE_SEND_TIMEOUT (%s) must be positive", c.SendTimeout))
	}
	if err := c.Config.Check(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Function lists a bucket prefix and emits its new object versions.
type Function struct {
	cfg   Config
	keys  keys
	rdb   *redis.Client
	store *minio.Client
	send  func(context.Context, event.Event) error
	log   *slog.Logger
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{log: slog.Default()} }

// Start reads the configuration, refusing a bad value, and opens Redis, the store and the sink.
func (f *Function) Start(_ context.Context, _ map[string]string) error {
	var cfg Config
	rdb, err := funcstart.Open("objectsource", &cfg)
	if err != nil {
		return err
	}
	store, err := objectstore.New(cfg.Config)
	if err != nil {
		return fmt.Errorf("objectsource: %w", err)
	}
	s, err := sink.New(cfg.Sink, cfg.SendTimeout)
	if err != nil {
		return fmt.Errorf("objectsource: %w", err)
	}
	f.start(cfg, rdb, store, s.Send)
	f.log.Info("objectsource started", "bucket", cfg.Bucket, "prefix", cfg.Prefix, "sink", cfg.Sink)
	return nil
}

func (f *Function) start(cfg Config, rdb *redis.Client, store *minio.Client, send func(context.Context, event.Event) error) {
	f.cfg, f.rdb, f.store, f.send = cfg, rdb, store, send
	f.keys = keysFor(cfg.Bucket, cfg.Prefix)
	f.Started(rdb)
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle runs one pass per tick. A pass that could not list or publish everything answers an
// error (5xx): what it did not emit, the next pass emits. A pass that emitted, found versions
// another pass was emitting, or failed is logged.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

// handle is Handle without its span.
func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("objectsource is starting")
	}
	if e.Type() != TypePing {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "objectsource accepts only %s events, not %s", TypePing, e.Type())
	}
	r, err := f.Pass(ctx)
	if r.Emitted > 0 || r.InFlight > 0 || err != nil {
		f.log.Info("pass", "listed", r.Listed, "emitted", r.Emitted, "inFlight", r.InFlight, "pruned", r.Pruned, "complete", r.Complete, "error", err)
	}
	return nil, err
}

// PassResult says what one pass did.
type PassResult struct {
	Listed   int  // objects listed
	Emitted  int  // events accepted by the sink
	InFlight int  // versions another pass was emitting
	Pruned   int  // keys forgotten because they are no longer listed
	Complete bool // the listing reached the end of the prefix (else the next pass continues)
}

// Pass lists up to MaxKeys objects after the cursor and emits every version not seen before.
func (f *Function) Pass(ctx context.Context) (PassResult, error) {
	var r PassResult
	after, err := f.rdb.Get(ctx, f.keys.after).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return r, fmt.Errorf("reading the listing cursor: %w", err)
	}
	listCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := minio.ListObjectsOptions{Prefix: f.cfg.Prefix, Recursive: true, StartAfter: after}
	listed := make(map[string]bool)
	last := after
	var page []minio.ObjectInfo
	var failed error
	flush := func() {
		if len(page) == 0 {
			return
		}
		emitted, inFlight, err := f.emit(ctx, page)
		r.Emitted += emitted
		r.InFlight += inFlight
		failed = errors.Join(failed, err)
		page = page[:0]
	}
	r.Complete = true
	for o := range f.store.ListObjects(listCtx, f.cfg.Bucket, opts) {
		if o.Err != nil {
			flush()
			return r, errors.Join(failed, fmt.Errorf("listing s3://%s/%s: %w", f.cfg.Bucket, f.cfg.Prefix, o.Err))
		}
		if r.Listed == f.cfg.MaxKeys {
			r.Complete = false
			break
		}
		r.Listed++
		listed[o.Key] = true
		last = o.Key
		page = append(page, o)
		if len(page) == pageSize {
			flush()
		}
	}
	flush()
	if err := listCtx.Err(); err != nil && ctx.Err() != nil {
		return r, errors.Join(failed, err)
	}
	pruned, err := f.prune(ctx, after, last, r.Complete, listed)
	r.Pruned = pruned
	failed = errors.Join(failed, err)
	if r.Complete {
		err = f.rdb.Del(ctx, f.keys.after).Err()
	} else {
		err = f.rdb.Set(ctx, f.keys.after, last, 0).Err()
	}
	if err != nil {
		failed = errors.Join(failed, fmt.Errorf("saving the listing cursor: %w", err))
	}
	return r, failed
}

// Event is the event of a listed object version. Its id is objects.Event.ID, the same on
// every replica and after a restart.
func Event(bucket string, o minio.ObjectInfo) objects.Event {
	return objects.Event{
		Bucket:    bucket,
		Key:       o.Key,
		Size:      o.Size,
		ETag:      strings.Trim(o.ETag, `"`),
		VersionID: o.VersionID,
		Name:      objects.NameCreatedListed,
		Time:      o.LastModified.UTC(),
		Store:     objects.StoreListing,
	}
}

// emit claims a page of listed objects in one round trip, sends the claimed ones and records
// them in another.
func (f *Function) emit(ctx context.Context, page []minio.ObjectInfo) (emitted, inFlight int, err error) {
	vs := make([]version, len(page))
	evs := make([]objects.Event, len(page))
	for i, o := range page {
		evs[i] = Event(f.cfg.Bucket, o)
		vs[i] = version{objectKey: o.Key, id: evs[i].ID()}
	}
	token := newToken()
	lease := f.cfg.SendTimeout + 5*time.Second
	if err := claimAll(ctx, f.rdb, f.keys, vs, token, lease); err != nil {
		return 0, 0, err
	}
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
		work  = make(chan int)
	)
	for range f.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				e, err := cloudEvent(evs[i])
				if err == nil {
					err = f.send(ctx, e)
				}
				mu.Lock()
				if err != nil && first == nil {
					first = fmt.Errorf("sending %q: %w", evs[i].Key, err)
				}
				vs[i].published = err == nil
				mu.Unlock()
			}
		}()
	}
	for i, v := range vs {
		switch v.outcome {
		case claimTaken:
			work <- i
		case claimInFlight:
			inFlight++
		}
	}
	close(work)
	wg.Wait()
	for _, v := range vs {
		if v.published {
			emitted++
		}
	}
	return emitted, inFlight, errors.Join(first, settleAll(context.WithoutCancel(ctx), f.rdb, f.keys, vs, token))
}

func cloudEvent(o objects.Event) (event.Event, error) {
	e := cloudevents.NewEvent()
	e.SetID(o.ID())
	e.SetType(o.Type())
	e.SetSource(Source)
	e.SetSubject(o.Key)
	e.SetTime(o.Time)
	if err := e.SetData(cloudevents.ApplicationJSON, o); err != nil {
		return e, fmt.Errorf("encoding %q: %w", o.Key, err)
	}
	return e, nil
}

// prune forgets keys of the listed range that the listing no longer holds (deleted objects), so
// the seen hash stays as large as the prefix. The range is (after, last], or (after, end) when
// the listing was complete.
func (f *Function) prune(ctx context.Context, after, last string, complete bool, listed map[string]bool) (int, error) {
	var gone []string
	iter := f.rdb.HScan(ctx, f.keys.seen, 0, "", 1000).Iterator()
	for iter.Next(ctx) {
		field := iter.Val()
		if !iter.Next(ctx) { // HSCAN yields field, value pairs
			break
		}
		if field > after && (complete || field <= last) && !listed[field] {
			gone = append(gone, field)
		}
	}
	if err := iter.Err(); err != nil {
		return 0, fmt.Errorf("scanning seen objects: %w", err)
	}
	if len(gone) == 0 {
		return 0, nil
	}
	if err := f.rdb.HDel(ctx, f.keys.seen, gone...).Err(); err != nil {
		return 0, fmt.Errorf("forgetting deleted objects: %w", err)
	}
	return len(gone), nil
}
