//go:build e2e

// Package thumbnails holds the end-to-end test of the thumbnails example.
package thumbnails

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/minio/minio-go/v7"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/objectstore"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

const typeThumbnailCreated = "dev.knfaas.example.thumbnails.thumbnail.created"

// createdRecorder records the thumbnail.created replies.
var createdRecorder = runtimetest.Recorder{Name: "thumbnails-e2e", Type: typeThumbnailCreated}

var embeddedStore = regexp.MustCompile(`s3: embedded \(gofakes3\) on (http://[0-9.:]+)`)

func photo(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pngBomb is a valid PNG header claiming w×h pixels and nothing else.
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

// record is one S3 event record as MinIO sends it.
func record(key string, info minio.UploadInfo) string {
	return fmt.Sprintf(`{"eventVersion":"2.0","eventSource":"minio:s3","eventTime":%q,"eventName":"s3:ObjectCreated:Put",`+
		`"s3":{"bucket":{"name":"photos"},"object":{"key":%q,"size":%d,"eTag":%q,"contentType":"image/jpeg","sequencer":"17E2A3B4C5D6E7F8"}}}`,
		time.Now().UTC().Format(time.RFC3339Nano), strings.ReplaceAll(key, "/", "%2F"), info.Size, strings.Trim(info.ETag, `"`))
}

// TestUploadMakesThumbnails runs the example under knfaas up with the S3 store it embeds (or the
// real one KNFAAS_TEST_S3_ENDPOINT names): an
// image, a text file, a decompression bomb and a corrupt image are uploaded, the store's
// notification (MinIO-shaped, four records) is pushed to the webhook's s3 source; the image gets
// its thumbnails and thumbnail.created is delivered, the three others are dead-lettered with
// their reasons and nothing else is written, and redelivering the image's event changes nothing.
func TestUploadMakesThumbnails(t *testing.T) {
	// The store knfaas up embeds, or a real one the test names (KNFAAS_TEST_S3_ENDPOINT).
	var store *minio.Client
	external := usingExternalStore()
	if external {
		store = storeOfTest(t)
	}
	srv := redistest.Start(t, redistest.Options{})
	root := runtimetest.ModuleRoot(t)
	paths := runtimetest.ModulePaths(t, "config", "100-namespace.yaml", "300-redis-secret.yaml", "340-webhook-secrets.yaml",
		"400-webhook-sources.yaml", "400-deadletter-config.yaml", "500-redis-service.yaml", "510-redis-statefulset.yaml",
		"600-broker.yaml", "700-deadletter.yaml", "700-webhook.yaml", "710-webhook-sinkbinding.yaml")
	paths = append(paths, runtimetest.ModulePaths(t, "examples/thumbnails", "config/350-object-store-secret.yaml",
		"config/400-object-store.yaml", "config/700-thumbnail.yaml", "triggers")...)
	rt := runtimetest.StartRecorded(t, runtimetest.Options{Paths: paths, RedisURL: srv.URL()}, createdRecorder)

	if !external {
		m := embeddedStore.FindStringSubmatch(rt.Output())
		if m == nil {
			t.Fatalf("knfaas up does not say where its S3 store is:\n%s", rt.Output())
		}
		store = openBucket(t, objectstore.Config{Endpoint: m[1], Region: "us-east-1", AccessKeyID: "any", SecretAccessKey: "any-key", PathStyle: true})
	}
	ctx := context.Background()
	upload := func(key string, data []byte) minio.UploadInfo {
		info, err := store.PutObject(ctx, testBucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	cat := upload("uploads/cat.jpg", photo(t, 1200, 800))
	notes := upload("uploads/notes.jpg", []byte("not a picture at all"))
	bomb := upload("uploads/bomb.png", pngBomb(100_000, 100_000))
	corrupt := photo(t, 300, 200)
	broken := upload("uploads/broken.jpg", corrupt[:len(corrupt)/2])
	notification := `{"EventName":"s3:ObjectCreated:Put","Key":"photos/uploads/cat.jpg","Records":[` +
		record("uploads/cat.jpg", cat) + "," + record("uploads/notes.jpg", notes) + "," +
		record("uploads/bomb.png", bomb) + "," + record("uploads/broken.jpg", broken) + `]}`

	token := rt.DevSecret("knfaas", "webhook-secrets", "objects", "CHANGE-ME-objects-webhook-token")
	post := func() int {
		req, _ := http.NewRequest(http.MethodPost, rt.ServiceURL("knfaas", "webhook")+"/objects", strings.NewReader(notification))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := rt.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if got := post(); got != http.StatusAccepted {
		t.Fatalf("notification: %d, want 202", got)
	}

	// The thumbnails appear, with the right sizes.
	want := map[string][2]int{"thumbnails/cat-128.jpg": {128, 85}, "thumbnails/cat-512.jpg": {512, 341}}
	modified := map[string]time.Time{}
	runtimetest.Eventually(t, 2*time.Minute, "the thumbnails exist", func() bool {
		for key := range want {
			info, err := store.StatObject(ctx, testBucket, key, minio.StatObjectOptions{})
			if err != nil {
				return false
			}
			modified[key] = info.LastModified
		}
		return true
	})
	for key, size := range want {
		obj, err := store.GetObject(ctx, testBucket, key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, format, err := image.DecodeConfig(obj)
		obj.Close()
		if err != nil || format != "jpeg" || cfg.Width != size[0] || cfg.Height != size[1] {
			t.Errorf("%s: %s %d×%d (%v), want a %d×%d JPEG", key, format, cfg.Width, cfg.Height, err, size[0], size[1])
		}
	}

	// thumbnail.created is delivered.
	rdb := srv.Client()
	var created event.Event
	runtimetest.Eventually(t, time.Minute, "thumbnail.created is delivered", func() bool {
		raw, err := rdb.LIndex(ctx, "knfaas:test:recorder:"+createdRecorder.Name+":events", 0).Result()
		return err == nil && json.Unmarshal([]byte(raw), &created) == nil
	})
	if created.Type() != typeThumbnailCreated || created.Subject() != "uploads/cat.jpg" {
		t.Errorf("delivered %s", created)
	}

	// The text file, the decompression bomb and the corrupt image are dead-lettered with their
	// reasons, after no retry (4xx); nothing is written for them.
	letters := deadletter.NewStore(rdb, deadletter.Options{})
	var got []deadletter.Letter
	runtimetest.Eventually(t, time.Minute, "the refused objects are dead-lettered", func() bool {
		got, _ = letters.List(ctx, deadletter.Filter{})
		return len(got) == 3
	})
	wantLetters := map[string]struct {
		code   int
		reason string
	}{
		"uploads/notes.jpg":  {http.StatusUnsupportedMediaType, "not an image"},
		"uploads/bomb.png":   {http.StatusUnprocessableEntity, "exceeds THUMBNAIL_MAX_PIXELS"},
		"uploads/broken.jpg": {http.StatusUnprocessableEntity, "corrupt jpeg"},
	}
	for _, l := range got {
		w, ok := wantLetters[l.Subject]
		if !ok || l.Code != w.code || !strings.Contains(l.ErrorData, w.reason) {
			t.Errorf("letter for %s: code %d, error data %q", l.Subject, l.Code, l.ErrorData)
		}
	}
	for o := range store.ListObjects(ctx, testBucket, minio.ListObjectsOptions{Prefix: "thumbnails/", Recursive: true}) {
		if _, ok := want[o.Key]; !ok {
			t.Errorf("unexpected thumbnail %s", o.Key)
		}
	}

	// Each instance that served the four objects (the 1 MP image, the refused ones) stayed far
	// within the Service's memory limit: its peak resident set, VmHWM of the live process.
	instances := rt.InstancePIDs("thumbnail")
	if len(instances) == 0 {
		t.Fatal("no running instance of the thumbnail function")
	}
	limit := memoryLimit(t, filepath.Join(root, "examples/thumbnails/config/700-thumbnail.yaml"))
	for _, pid := range instances {
		peak, err := peakRSS(pid)
		if err != nil {
			t.Fatalf("instance %d: %v", pid, err)
		}
		t.Logf("thumbnail instance %d: peak RSS %.1f MiB (limit %.0f MiB)", pid, float64(peak)/(1<<20), float64(limit)/(1<<20))
		if !serving.Race() && peak >= limit {
			t.Errorf("thumbnail instance %d: peak RSS %d bytes, over the Service's memory limit %d", pid, peak, limit)
		}
	}

	// Redelivery: the store resends the notification (deduplicated by the webhook), and the
	// Broker delivers the image's event again (the function finds its thumbnails).
	if got := post(); got != http.StatusOK {
		t.Fatalf("resent notification: %d, want 200", got)
	}
	all, err := objects.Parse([]byte(notification))
	if err != nil {
		t.Fatal(err)
	}
	catEvent := all[0]
	e := runtimetest.NewEvent(catEvent.ID(), catEvent.Type())
	e.SetSource("/webhooks/objects")
	e.SetSubject(catEvent.Key)
	if err := e.SetData("application/json", catEvent); err != nil {
		t.Fatal(err)
	}
	rt.Send("knfaas", "default", e)
	runtimetest.Eventually(t, time.Minute, "the redelivered event is answered", func() bool {
		return rdb.LLen(ctx, "knfaas:test:recorder:"+createdRecorder.Name+":events").Val() == 2
	})
	if n := rdb.HGet(ctx, "knfaas:test:recorder:"+createdRecorder.Name+":seen", created.ID()).Val(); n != "2" {
		t.Errorf("thumbnail.created %s recorded %s times; the redelivery's reply should carry the same id", created.ID(), n)
	}
	for key, before := range modified {
		info, err := store.StatObject(ctx, testBucket, key, minio.StatObjectOptions{})
		if err != nil || !info.LastModified.Equal(before) {
			t.Errorf("%s rewritten by the redelivery (%v → %v, %v)", key, before, info.LastModified, err)
		}
	}
	if got, _ := letters.List(ctx, deadletter.Filter{}); len(got) != 3 {
		t.Errorf("%d dead letters after the redelivery, want still 3", len(got))
	}
}

// peakRSS is the peak resident set of a live process in bytes (VmHWM of /proc/<pid>/status).
func peakRSS(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading its status: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// memoryLimit is the memory limit of the only container of the only Service in file, in bytes.
func memoryLimit(t *testing.T, file string) int64 {
	t.Helper()
	set, err := manifest.Load(file)
	if err != nil || len(set.Services()) != 1 {
		t.Fatalf("%s: %v", file, err)
	}
	limit, ok := set.Services()[0].Spec.Template.Spec.Containers[0].Resources.Limits.Memory().AsInt64()
	if !ok || limit == 0 {
		t.Fatalf("%s: no memory limit", file)
	}
	return limit
}
