package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"

	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/objectstore"
)

const bucket = "photos"

// testStore is an S3 server in the test process (gofakes3 over real HTTP) that counts PUTs.
type testStore struct {
	client *minio.Client
	puts   atomic.Int32
}

func startStore(t testing.TB) *testStore {
	t.Helper()
	s := &testStore{}
	fake := gofakes3.New(s3mem.New()).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			s.puts.Add(1)
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c, err := objectstore.New(objectstore.Config{Endpoint: srv.URL, AccessKeyID: "test", SecretAccessKey: "test-secret", Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	s.puts.Store(0)
	s.client = c
	return s
}

// upload puts data and returns the creation event a store would send for it.
func (s *testStore) upload(t testing.TB, key string, data []byte) event.Event {
	t.Helper()
	info, err := s.client.PutObject(context.Background(), bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	o := objects.Event{Bucket: bucket, Key: key, Size: info.Size, ETag: strings.Trim(info.ETag, `"`), Name: objects.NameCreatedPut, Time: time.Now().UTC(), Store: "minio"}
	e := cloudevents.NewEvent()
	e.SetID(o.ID())
	e.SetType(o.Type())
	e.SetSource("/webhooks/objects")
	e.SetSubject(key)
	if err := e.SetData(cloudevents.ApplicationJSON, o); err != nil {
		t.Fatal(err)
	}
	return e
}

func testJPEG(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x + y) % 256), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pngBomb is a valid PNG header (signature and IHDR with a correct CRC) claiming w×h pixels,
// followed by nothing: DecodeConfig reads the dimensions, a full decode would allocate them.
func pngBomb(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	_ = binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	_ = binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

func newFunction(t testing.TB, s *testStore) *Function {
	t.Helper()
	f := New()
	f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := Config{Sizes: "128,512", SourcePrefix: "uploads/", TargetPrefix: "thumbnails/", MaxBytes: 5 << 20, MaxPixels: 4_000_000, Quality: 85}
	if err := f.start(cfg, s.client); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestThumbnails(t *testing.T) {
	s := startStore(t)
	f := newFunction(t, s)
	ctx := context.Background()
	e := s.upload(t, "uploads/holiday/cat.jpg", testJPEG(t, 1200, 800))
	uploaded := s.puts.Load()

	reply, err := f.Handle(ctx, e)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	var created Created
	if err := json.Unmarshal(reply.Data(), &created); err != nil {
		t.Fatal(err)
	}
	want := []Thumbnail{{Key: "thumbnails/holiday/cat-128.jpg", Width: 128, Height: 85}, {Key: "thumbnails/holiday/cat-512.jpg", Width: 512, Height: 341}}
	if reply.Type() != TypeCreated || reply.Subject() != "uploads/holiday/cat.jpg" || len(created.Thumbnails) != len(want) {
		t.Fatalf("reply %s %s", reply, reply.Data())
	}
	for i, w := range want {
		got := created.Thumbnails[i]
		if got.Key != w.Key || got.Width != w.Width || got.Height != w.Height {
			t.Errorf("thumbnail %d = %+v, want %+v", i, got, w)
		}
		// The store holds a JPEG of exactly that size, with the source version in its metadata.
		obj, err := s.client.GetObject(ctx, bucket, w.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, format, err := image.DecodeConfig(obj)
		info, _ := obj.Stat()
		obj.Close()
		if err != nil || format != "jpeg" || cfg.Width != w.Width || cfg.Height != w.Height {
			t.Errorf("stored %s: %s %dx%d (%v)", w.Key, format, cfg.Width, cfg.Height, err)
		}
		if info.UserMetadata[MetaSourceKey] != "uploads/holiday/cat.jpg" || info.UserMetadata[MetaSourceETag] != created.ETag || info.ContentType != "image/jpeg" {
			t.Errorf("stored %s: content type %q, metadata %v", w.Key, info.ContentType, info.UserMetadata)
		}
	}
	puts := s.puts.Load()
	if puts-uploaded != 2 {
		t.Fatalf("%d thumbnails written, want 2", puts-uploaded)
	}

	// A redelivery of the same event: the same reply id, nothing written again.
	again, err := f.Handle(ctx, e)
	if err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if again.ID() != reply.ID() || !bytes.Equal(again.Data(), reply.Data()) || s.puts.Load() != puts {
		t.Fatalf("redelivery: reply %s (first %s), %d PUTs (first %d)", again.ID(), reply.ID(), s.puts.Load(), puts)
	}
}

func TestRefusedAndIgnored(t *testing.T) {
	s := startStore(t)
	f := newFunction(t, s)
	small := testJPEG(t, 64, 48)
	truncated := testJPEG(t, 300, 200)
	truncated = truncated[:len(truncated)/2]
	tests := []struct {
		name     string
		event    func(t *testing.T) event.Event
		wantCode int // 0: acknowledged
		wantText string
		reply    bool
	}{
		{"not an image → 415 with the reason", func(t *testing.T) event.Event {
			return s.upload(t, "uploads/notes.txt", []byte("dear diary"))
		}, http.StatusUnsupportedMediaType, "not an image", false},
		{"decompression bomb → 422 before decoding", func(t *testing.T) event.Event {
			return s.upload(t, "uploads/bomb.png", pngBomb(100_000, 100_000))
		}, http.StatusUnprocessableEntity, "exceeds THUMBNAIL_MAX_PIXELS", false},
		{"corrupt image → 422", func(t *testing.T) event.Event {
			return s.upload(t, "uploads/broken.jpg", truncated)
		}, http.StatusUnprocessableEntity, "corrupt jpeg", false},
		{"larger than THUMBNAIL_MAX_BYTES → 413", func(t *testing.T) event.Event {
			return s.upload(t, "uploads/huge.jpg", bytes.Repeat([]byte{0xff}, 5<<20+1))
		}, http.StatusRequestEntityTooLarge, "THUMBNAIL_MAX_BYTES", false},
		{"object gone since the event → 410 (not retried)", func(t *testing.T) event.Event {
			e := s.upload(t, "uploads/gone.jpg", small)
			if err := s.client.RemoveObject(context.Background(), bucket, "uploads/gone.jpg", minio.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			return e
		}, http.StatusGone, "no longer exists", false},
		{"data that is no object event → 400", func(t *testing.T) event.Event {
			e := s.upload(t, "uploads/x.jpg", small)
			_ = e.SetData(cloudevents.ApplicationJSON, []byte(`{"nope":1}`))
			return e
		}, http.StatusBadRequest, "not an object event", false},
		{"a thumbnail's own creation is ignored (no loop)", func(t *testing.T) event.Event {
			return s.upload(t, "thumbnails/cat-128.jpg", small)
		}, 0, "", false},
		{"a removal is ignored", func(t *testing.T) event.Event {
			e := s.upload(t, "uploads/y.jpg", small)
			e.SetType(objects.TypePrefix + objects.NameRemovedDelete)
			return e
		}, 0, "", false},
		{"a small image is not enlarged", func(t *testing.T) event.Event {
			return s.upload(t, "uploads/small.jpg", small)
		}, 0, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.event(t)
			before := s.puts.Load()
			reply, err := f.Handle(context.Background(), e)
			var res *cehttp.Result
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("Handle: %v", err)
			case tt.wantCode != 0 && (!errors.As(err, &res) || res.StatusCode != tt.wantCode || !strings.Contains(err.Error(), tt.wantText)):
				t.Fatalf("Handle = %v, want %d naming %q", err, tt.wantCode, tt.wantText)
			}
			if (reply != nil) != tt.reply {
				t.Fatalf("reply %v, want one: %v", reply, tt.reply)
			}
			if !tt.reply && s.puts.Load() != before {
				t.Fatalf("%d thumbnails written for a refused or ignored event", s.puts.Load()-before)
			}
			if tt.reply {
				var c Created
				_ = json.Unmarshal(reply.Data(), &c)
				if len(c.Thumbnails) != 2 || c.Thumbnails[1].Width != 64 || c.Thumbnails[1].Height != 48 {
					t.Fatalf("thumbnails %+v, want the original 64×48 for the larger size", c.Thumbnails)
				}
			}
		})
	}
}

func TestConfigCheck(t *testing.T) {
	valid := Config{Sizes: "128,512", SourcePrefix: "uploads/", TargetPrefix: "thumbnails/", MaxBytes: 1, MaxPixels: 1, Quality: 85}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"size not a number", func(c *Config) { c.Sizes = "128,big" }, "THUMBNAIL_SIZES"},
		{"size too large", func(c *Config) { c.Sizes = "5000" }, "THUMBNAIL_SIZES"},
		{"target inside source", func(c *Config) { c.TargetPrefix = "uploads/thumbs/" }, "THUMBNAIL_TARGET_PREFIX"},
		{"source inside target", func(c *Config) { c.SourcePrefix = "" }, "THUMBNAIL_TARGET_PREFIX"},
		{"no byte bound", func(c *Config) { c.MaxBytes = 0 }, "THUMBNAIL_MAX_BYTES"},
		{"no pixel bound", func(c *Config) { c.MaxPixels = 0 }, "THUMBNAIL_MAX_PIXELS"},
		{"quality 0", func(c *Config) { c.Quality = 0 }, "THUMBNAIL_JPEG_QUALITY"},
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

// TestReadyWhileStarting probes readiness and sends an event while Start runs, as func-go
// serves them; under -race it fails if they read what Start writes unsynchronized.
func TestReadyWhileStarting(t *testing.T) {
	s := startStore(t)
	f := New()
	f.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	if ready, _ := f.Ready(ctx); ready {
		t.Fatal("ready before Start")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			// Handle first, readiness after: readiness only goes from false to true, so an
			// event handled while the function still reads not ready was handled before Start.
			// (The other order races with Start finishing between the two calls.)
			_, err := f.Handle(ctx, event.New())
			ready, _ := f.Ready(ctx)
			if !ready && err == nil {
				t.Error("an event was handled before Start")
			}
			if ready {
				return
			}
		}
	}()
	cfg := Config{Sizes: "128", SourcePrefix: "uploads/", TargetPrefix: "thumbnails/", MaxBytes: 1 << 20, MaxPixels: 1 << 20, Quality: 85}
	if err := f.start(cfg, s.client); err != nil {
		t.Fatal(err)
	}
	<-done
}
