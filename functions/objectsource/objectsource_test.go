package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/objectstore"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

const bucket = "photos"

// store is an S3 server (gofakes3, in memory, over real HTTP) with the bucket created.
func startStore(t *testing.T) *minio.Client {
	t.Helper()
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(srv.Close)
	c, err := objectstore.New(objectstore.Config{Endpoint: srv.URL, AccessKeyID: "test", SecretAccessKey: "test-secret", Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	return c
}

func put(t *testing.T, c *minio.Client, key, content string) {
	t.Helper()
	if _, err := c.PutObject(context.Background(), bucket, key, strings.NewReader(content), int64(len(content)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// recorder is the sink: it keeps every accepted event and fails the keys told to fail once.
type recorder struct {
	mu     sync.Mutex
	events []event.Event
	failOn map[string]bool
}

func (r *recorder) send(_ context.Context, e event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failOn[e.Subject()] {
		delete(r.failOn, e.Subject())
		return errors.New("broker refused")
	}
	r.events = append(r.events, e)
	return nil
}

// take returns the events accepted since the last call, in the order they arrived.
func (r *recorder) take() []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

func newSource(t *testing.T, rdb *redis.Client, c *minio.Client, rec *recorder, maxKeys int) *Function {
	t.Helper()
	f := New()
	f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	f.start(Config{Bucket: bucket, Prefix: "uploads/", MaxKeys: maxKeys, Concurrency: 4, SendTimeout: time.Second}, rdb, c, rec.send)
	return f
}

// subjects returns the events' keys sorted, which is S3's listing order: a pass sends up to
// OBJECTSOURCE_CONCURRENCY events at once, so they arrive in any order.
func subjects(events []event.Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.Subject())
	}
	slices.Sort(out)
	return out
}

func TestPassEmitsEachVersionOnce(t *testing.T) {
	ctx := context.Background()
	rds := redistest.Start(t, redistest.Options{})
	store := startStore(t)
	rec := &recorder{}
	src := newSource(t, rds.Client(), store, rec, 1000)

	steps := []struct {
		name       string
		change     func(t *testing.T)
		source     func() *Function
		want       []string // subjects emitted by one pass, in listing order
		wantPruned int
	}{
		{"new objects under the prefix, one event each; other prefixes ignored", func(t *testing.T) {
			put(t, store, "uploads/a.jpg", "aaa")
			put(t, store, "uploads/b.jpg", "bbb")
			put(t, store, "other/c.jpg", "ccc")
		}, nil, []string{"uploads/a.jpg", "uploads/b.jpg"}, 0},
		{"nothing new: nothing emitted", nil, nil, nil, 0},
		{"a changed object: its new version once", func(t *testing.T) { put(t, store, "uploads/a.jpg", "a, changed") }, nil, []string{"uploads/a.jpg"}, 0},
		{"after a restart (a new instance on the same Redis): nothing again", nil, func() *Function {
			return newSource(t, rds.Client(), store, rec, 1000)
		}, nil, 0},
		{"a deleted object is forgotten", func(t *testing.T) {
			if err := store.RemoveObject(ctx, bucket, "uploads/b.jpg", minio.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}, nil, nil, 1},
		{"and emitted again when it comes back", func(t *testing.T) { put(t, store, "uploads/b.jpg", "bbb") }, nil, []string{"uploads/b.jpg"}, 0},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			if step.change != nil {
				step.change(t)
			}
			if step.source != nil {
				src = step.source()
			}
			r, err := src.Pass(ctx)
			if err != nil {
				t.Fatalf("Pass: %v", err)
			}
			got := rec.take()
			if strings.Join(subjects(got), ",") != strings.Join(step.want, ",") || r.Emitted != len(step.want) || r.Pruned != step.wantPruned || !r.Complete {
				t.Fatalf("emitted %v (result %+v), want %v and %d pruned", subjects(got), r, step.want, step.wantPruned)
			}
			for _, e := range got {
				var data objects.Event
				if err := json.Unmarshal(e.Data(), &data); err != nil {
					t.Fatal(err)
				}
				if e.ID() != data.ID() || e.Type() != "com.amazonaws.s3.ObjectCreated:Listed" || e.Source() != Source ||
					data.Bucket != bucket || data.Key != e.Subject() || data.ETag == "" || data.Size == 0 || data.Store != "listing" {
					t.Errorf("event %s: %s", e, e.Data())
				}
			}
		})
	}
	if n := rds.Client().HLen(ctx, keysFor(bucket, "uploads/").seen).Val(); n != 2 {
		t.Fatalf("seen hash holds %d keys, want the 2 objects under the prefix", n)
	}
}

// Replicas ticked at the same time list the same objects; each version is emitted once.
func TestReplicasEmitEachVersionOnce(t *testing.T) {
	ctx := context.Background()
	rds := redistest.Start(t, redistest.Options{})
	store := startStore(t)
	const objectsN, replicas = 60, 4
	for i := range objectsN {
		put(t, store, "uploads/"+strings.Repeat("x", i%7)+time.Duration(i).String()+".jpg", "content")
	}
	rec := &recorder{}
	var wg sync.WaitGroup
	for range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := newSource(t, rds.Client(), store, rec, 1000)
			for range 3 {
				if _, err := src.Pass(ctx); err != nil {
					t.Errorf("Pass: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	got := rec.take()
	ids := map[string]int{}
	for _, e := range got {
		ids[e.ID()]++
	}
	if len(got) != objectsN || len(ids) != objectsN {
		t.Fatalf("%d replicas × 3 passes emitted %d events with %d distinct ids, want %d once each", replicas, len(got), len(ids), objectsN)
	}
}

// A send that fails is not recorded: the pass answers an error and the next pass emits it.
func TestFailedSendIsEmittedByTheNextPass(t *testing.T) {
	ctx := context.Background()
	rds := redistest.Start(t, redistest.Options{})
	store := startStore(t)
	put(t, store, "uploads/a.jpg", "a")
	put(t, store, "uploads/b.jpg", "b")
	rec := &recorder{failOn: map[string]bool{"uploads/b.jpg": true}}
	src := newSource(t, rds.Client(), store, rec, 1000)
	if _, err := src.Pass(ctx); err == nil || !strings.Contains(err.Error(), "uploads/b.jpg") {
		t.Fatalf("Pass with a refused send: %v, want an error naming the object", err)
	}
	if got := subjects(rec.take()); strings.Join(got, ",") != "uploads/a.jpg" {
		t.Fatalf("first pass emitted %v", got)
	}
	if _, err := src.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if got := subjects(rec.take()); strings.Join(got, ",") != "uploads/b.jpg" {
		t.Fatalf("second pass emitted %v, want the refused object", got)
	}
}

// A prefix larger than OBJECTSOURCE_MAX_KEYS is covered in several passes from the cursor.
func TestMaxKeysContinuesFromTheCursor(t *testing.T) {
	ctx := context.Background()
	rds := redistest.Start(t, redistest.Options{})
	store := startStore(t)
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		put(t, store, "uploads/"+k, k)
	}
	rec := &recorder{}
	src := newSource(t, rds.Client(), store, rec, 2)
	tests := []struct {
		want     string
		complete bool
	}{
		{"uploads/a,uploads/b", false},
		{"uploads/c,uploads/d", false},
		{"uploads/e", true},
		{"", false}, // from the start again: a and b seen, and the bound is hit
		{"", false},
		{"", true},
	}
	for i, tt := range tests {
		r, err := src.Pass(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(subjects(rec.take()), ","); got != tt.want || r.Complete != tt.complete || r.Pruned != 0 {
			t.Fatalf("pass %d: emitted %q (%+v), want %q complete=%v", i+1, got, r, tt.want, tt.complete)
		}
	}
}

func TestHandle(t *testing.T) {
	rds := redistest.Start(t, redistest.Options{})
	store := startStore(t)
	put(t, store, "uploads/a.jpg", "a")
	rec := &recorder{}
	src := newSource(t, rds.Client(), store, rec, 1000)
	tests := []struct {
		name      string
		typ       string
		wantCode  int // 0: no error
		wantEvent int
	}{
		{"another event type is refused with 400", "com.example.other", http.StatusBadRequest, 0},
		{"a ping runs a pass", TypePing, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := cloudevents.NewEvent()
			e.SetID("1")
			e.SetSource("/ping")
			e.SetType(tt.typ)
			reply, err := src.Handle(context.Background(), e)
			if reply != nil {
				t.Fatalf("reply %v, want none", reply)
			}
			var res *cehttp.Result
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("Handle: %v", err)
			case tt.wantCode != 0 && (!errors.As(err, &res) || res.StatusCode != tt.wantCode):
				t.Fatalf("Handle = %v, want %d", err, tt.wantCode)
			}
			if got := len(rec.take()); got != tt.wantEvent {
				t.Fatalf("%d events, want %d", got, tt.wantEvent)
			}
		})
	}
}

func TestConfigCheck(t *testing.T) {
	valid := Config{Bucket: "b", MaxKeys: 10, Concurrency: 1, SendTimeout: time.Second, Sink: "http://broker"}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"empty bucket", func(c *Config) { c.Bucket = "" }, "OBJECTSOURCE_BUCKET"},
		{"max keys 0", func(c *Config) { c.MaxKeys = 0 }, "OBJECTSOURCE_MAX_KEYS"},
		{"max keys over the bound", func(c *Config) { c.MaxKeys = MaxMaxKeys + 1 }, "OBJECTSOURCE_MAX_KEYS"},
		{"no concurrency", func(c *Config) { c.Concurrency = 0 }, "OBJECTSOURCE_CONCURRENCY"},
		{"zero timeout", func(c *Config) { c.SendTimeout = 0 }, "OBJECTSOURCE_SEND_TIMEOUT"},
		{"bad endpoint", func(c *Config) { c.Endpoint = "minio:9000" }, "S3_ENDPOINT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.change(&c)
			err := c.Check()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Check = %v, want %q", err, tt.want)
			}
		})
	}
}
