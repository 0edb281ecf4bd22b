// Package main is the thumbnail function of the thumbnails example: on a new image under a
// prefix it reads the image through the S3 API, writes thumbnails in the configured sizes under
// another prefix and replies dev.knfaas.example.thumbnails.thumbnail.created.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	_ "image/png" // decodes PNG uploads
	"io"
	"log/slog"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync/atomic"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/minio/minio-go/v7"
	"golang.org/x/image/draw"

	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/objectstore"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TypeCreated is the type of the reply: the thumbnails of one image version exist.
const TypeCreated = "dev.knfaas.example.thumbnails.thumbnail.created"

// Source is the CloudEvent source of the replies.
const Source = "/knfaas/example/thumbnails"

// Metadata the thumbnails carry (x-amz-meta-…): which image version they were made from.
const (
	MetaSourceKey  = "Source-Key"
	MetaSourceETag = "Source-Etag"
)

// MaxSize bounds a thumbnail's longest edge.
const MaxSize = 4096

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// Sizes are the longest edges of the thumbnails, in pixels, comma-separated.
	Sizes string `envconfig:"THUMBNAIL_SIZES" default:"128,512"`
	// SourcePrefix: only keys under it are images to thumbnail.
	SourcePrefix string `envconfig:"THUMBNAIL_SOURCE_PREFIX" default:"uploads/"`
	// TargetPrefix: where thumbnails go; it must not overlap SourcePrefix.
	TargetPrefix string `envconfig:"THUMBNAIL_TARGET_PREFIX" default:"thumbnails/"`
	// MaxBytes bounds the image read from the store.
	MaxBytes int64 `envconfig:"THUMBNAIL_MAX_BYTES" default:"20971520"`
	// MaxPixels bounds width × height of an image before it is decoded (decompression bombs).
	MaxPixels int64 `envconfig:"THUMBNAIL_MAX_PIXELS" default:"16000000"`
	// Quality is the JPEG quality of the thumbnails, 1 to 100.
	Quality int `envconfig:"THUMBNAIL_JPEG_QUALITY" default:"85"`
	objectstore.Config
}

// sizes parses Sizes.
func (c Config) sizes() ([]int, error) {
	var out []int
	for _, f := range strings.Split(c.Sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > MaxSize {
			return nil, fmt.Errorf("THUMBNAIL_SIZES (%q): %q is not a size from 1 to %d", c.Sizes, f, MaxSize)
		}
		out = append(out, n)
	}
	return out, nil
}

// Check refuses values out of range, naming each variable.
func (c Config) Check() error {
	var errs []error
	if _, err := c.sizes(); err != nil {
		errs = append(errs, err)
	}
	if c.TargetPrefix == "" || strings.HasPrefix(c.TargetPrefix, c.SourcePrefix) || strings.HasPrefix(c.SourcePrefix, c.TargetPrefix) {
		errs = append(errs, fmt.Errorf("THUMBNAIL_TARGET_PREFIX (%q) must be set and must not overlap THUMBNAIL_SOURCE_PREFIX (%q): thumbnails would be thumbnailed", c.TargetPrefix, c.SourcePrefix))
	}
	if c.MaxBytes < 1 {
		errs = append(errs, fmt.Errorf("THUMBNAIL_MAX_BYTES (%d) must be positive", c.MaxBytes))
	}
	if c.MaxPixels < 1 {
		errs = append(errs, fmt.Errorf("THUMBNAIL_MAX_PIXELS (%d) must be positive", c.MaxPixels))
	}
	if c.Quality < 1 || c.Quality > 100 {
		errs = append(errs, fmt.Errorf("THUMBNAIL_JPEG_QUALITY (%d) must be from 1 to 100", c.Quality))
	}
	if err := c.Config.Check(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Function makes thumbnails.
type Function struct {
	cfg   Config
	sizes []int
	store *minio.Client
	log   *slog.Logger
	// started is set once Start has set the fields above: readiness probes and events are
	// served while Start runs, and read them only after.
	started atomic.Bool
}

// New returns an unstarted Function.
func New() *Function { return &Function{log: slog.Default()} }

// Start reads the configuration, refusing a bad value, and opens the store.
func (f *Function) Start(_ context.Context, _ map[string]string) error {
	var cfg Config
	if err := funcstart.ReadConfig("thumbnail", &cfg); err != nil {
		return err
	}
	store, err := objectstore.New(cfg.Config)
	if err != nil {
		return fmt.Errorf("thumbnail: %w", err)
	}
	return f.start(cfg, store)
}

func (f *Function) start(cfg Config, store *minio.Client) error {
	sizes, err := cfg.sizes()
	if err != nil {
		return fmt.Errorf("thumbnail: %w", err)
	}
	f.cfg, f.sizes, f.store = cfg, sizes, store
	f.started.Store(true)
	return nil
}

// Stop sends the spans still buffered (the store client holds no connection that needs closing).
func (f *Function) Stop(ctx context.Context) error { return tracing.Flush(ctx) }

// Ready reports whether Start has run.
func (f *Function) Ready(context.Context) (bool, error) { return f.started.Load(), nil }

// Alive is true while the process serves.
func (f *Function) Alive(context.Context) (bool, error) { return true, nil }

// Thumbnail is one written thumbnail, as the reply lists it.
type Thumbnail struct {
	Key    string `json:"key"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	Bytes  int    `json:"bytes"`
}

// Created is the data of the reply.
type Created struct {
	Bucket     string      `json:"bucket"`
	Key        string      `json:"key"`
	ETag       string      `json:"etag"`
	Thumbnails []Thumbnail `json:"thumbnails"`
}

// permanent answers a 4xx: the event can never succeed, so it goes to the dead letters with
// the reason.
func permanent(code int, format string, args ...any) error {
	return cloudevents.NewHTTPResult(code, format, args...)
}

// Handle makes the thumbnails of one object version. Objects outside the source prefix
// (thumbnails included) and events other than creations are acknowledged and ignored.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

// handle is Handle without its span.
func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.started.Load() {
		return nil, errors.New("thumbnail is starting")
	}
	if !strings.HasPrefix(e.Type(), objects.TypeCreatedPrefix) {
		return nil, nil
	}
	var o objects.Event
	if err := json.Unmarshal(e.Data(), &o); err != nil || o.Bucket == "" || o.Key == "" {
		return nil, permanent(http.StatusBadRequest, "data is not an object event: %v", err)
	}
	if !strings.HasPrefix(o.Key, f.cfg.SourcePrefix) {
		return nil, nil
	}
	log := f.log.With("bucket", o.Bucket, "key", o.Key, "etag", o.ETag)
	created, err := f.Make(ctx, o)
	if err != nil {
		log.Warn("no thumbnails", "error", err)
		return nil, err
	}
	reply := cloudevents.NewEvent()
	reply.SetID(replyID(o))
	reply.SetType(TypeCreated)
	reply.SetSource(Source)
	reply.SetSubject(o.Key)
	if err := reply.SetData(cloudevents.ApplicationJSON, created); err != nil {
		return nil, fmt.Errorf("encoding the reply: %w", err)
	}
	log.Info("thumbnails", "count", len(created.Thumbnails))
	return &reply, nil
}

// replyID is the same for every delivery of the same image version.
func replyID(o objects.Event) string {
	sum := sha256.Sum256([]byte(o.Bucket + "\x00" + o.Key + "\x00" + o.ETag + "\x00" + o.VersionID))
	return hex.EncodeToString(sum[:16])
}

// ThumbnailKey is where the thumbnail of size of key goes: the key with the source prefix
// replaced by the target prefix, its extension replaced by "-<size>.jpg".
func (c Config) ThumbnailKey(key string, size int) string {
	rel := strings.TrimPrefix(key, c.SourcePrefix)
	return c.TargetPrefix + strings.TrimSuffix(rel, path.Ext(rel)) + "-" + strconv.Itoa(size) + ".jpg"
}

// Make writes the thumbnails of one object version, unless they exist already for that version
// (a redelivery), and returns them.
func (f *Function) Make(ctx context.Context, o objects.Event) (Created, error) {
	created := Created{Bucket: o.Bucket, Key: o.Key, ETag: o.ETag}
	if done, ok := f.existing(ctx, o); ok {
		created.Thumbnails = done
		return created, nil
	}
	img, etag, err := f.read(ctx, o)
	if err != nil {
		return created, err
	}
	created.ETag = etag
	for _, size := range f.sizes {
		t, err := f.write(ctx, o.Bucket, o.Key, etag, img, size)
		if err != nil {
			return created, err
		}
		created.Thumbnails = append(created.Thumbnails, t)
	}
	return created, nil
}

// existing returns the thumbnails when every size exists already, made from this version.
func (f *Function) existing(ctx context.Context, o objects.Event) ([]Thumbnail, bool) {
	if o.ETag == "" {
		return nil, false
	}
	var out []Thumbnail
	for _, size := range f.sizes {
		key := f.cfg.ThumbnailKey(o.Key, size)
		info, err := f.store.StatObject(ctx, o.Bucket, key, minio.StatObjectOptions{})
		if err != nil || info.UserMetadata[MetaSourceETag] != o.ETag {
			return nil, false
		}
		w, _ := strconv.Atoi(info.UserMetadata["Width"])
		h, _ := strconv.Atoi(info.UserMetadata["Height"])
		out = append(out, Thumbnail{Key: key, Width: w, Height: h, Bytes: int(info.Size)})
	}
	return out, true
}

// read fetches the object (at most MaxBytes) and decodes it, refusing what is not an image or
// has more than MaxPixels before any pixel is decoded.
func (f *Function) read(ctx context.Context, o objects.Event) (image.Image, string, error) {
	obj, err := f.store.GetObject(ctx, o.Bucket, o.Key, minio.GetObjectOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("getting s3://%s/%s: %w", o.Bucket, o.Key, err)
	}
	defer obj.Close()
	info, err := obj.Stat()
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			// 410, not 404: Knative retries a 404, and a deleted object will not come back.
			return nil, "", permanent(http.StatusGone, "s3://%s/%s no longer exists", o.Bucket, o.Key)
		}
		return nil, "", fmt.Errorf("getting s3://%s/%s: %w", o.Bucket, o.Key, err)
	}
	if info.Size > f.cfg.MaxBytes {
		return nil, "", permanent(http.StatusRequestEntityTooLarge, "s3://%s/%s has %d bytes, more than THUMBNAIL_MAX_BYTES %d", o.Bucket, o.Key, info.Size, f.cfg.MaxBytes)
	}
	data, err := io.ReadAll(io.LimitReader(obj, f.cfg.MaxBytes+1))
	if err != nil {
		return nil, "", fmt.Errorf("reading s3://%s/%s: %w", o.Bucket, o.Key, err)
	}
	if int64(len(data)) > f.cfg.MaxBytes {
		return nil, "", permanent(http.StatusRequestEntityTooLarge, "s3://%s/%s is larger than THUMBNAIL_MAX_BYTES %d", o.Bucket, o.Key, f.cfg.MaxBytes)
	}
	img, err := decode(data, f.cfg.MaxPixels)
	if err != nil {
		return nil, "", err
	}
	return img, strings.Trim(info.ETag, `"`), nil
}

// decode refuses a non-image (415) and an image of more than maxPixels (422) from its header
// alone, then decodes it; a corrupt image is refused with 422.
func decode(data []byte, maxPixels int64) (image.Image, error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, permanent(http.StatusUnsupportedMediaType, "not an image this function reads (JPEG, PNG): %v", err)
	}
	if cfg.Width < 1 || cfg.Height < 1 || int64(cfg.Width)*int64(cfg.Height) > maxPixels {
		return nil, permanent(http.StatusUnprocessableEntity, "%s of %d×%d pixels exceeds THUMBNAIL_MAX_PIXELS %d (a decompression bomb or too large)", format, cfg.Width, cfg.Height, maxPixels)
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, permanent(http.StatusUnprocessableEntity, "corrupt %s image: %v", format, err)
	}
	return img, nil
}

// Scale fits img into size×size, keeping its aspect ratio; it never enlarges.
func Scale(img image.Image, size int) *image.RGBA {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w > size || h > size {
		if w >= h {
			w, h = size, max(1, h*size/b.Dx())
		} else {
			w, h = max(1, w*size/b.Dy()), size
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.CatmullRom.Scale(dst, dst.Bounds(), img, b, draw.Src, nil)
	return dst
}

func (f *Function) write(ctx context.Context, bucket, key, etag string, img image.Image, size int) (Thumbnail, error) {
	thumb := Scale(img, size)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, thumb, &jpeg.Options{Quality: f.cfg.Quality}); err != nil {
		return Thumbnail{}, fmt.Errorf("encoding the %d px thumbnail: %w", size, err)
	}
	t := Thumbnail{Key: f.cfg.ThumbnailKey(key, size), Width: thumb.Bounds().Dx(), Height: thumb.Bounds().Dy(), Bytes: buf.Len()}
	_, err := f.store.PutObject(ctx, bucket, t.Key, &buf, int64(buf.Len()), minio.PutObjectOptions{
		ContentType: "image/jpeg",
		UserMetadata: map[string]string{
			MetaSourceKey: key, MetaSourceETag: etag,
			"Width": strconv.Itoa(t.Width), "Height": strconv.Itoa(t.Height),
		},
	})
	if err != nil {
		return Thumbnail{}, fmt.Errorf("writing s3://%s/%s: %w", bucket, t.Key, err)
	}
	return t, nil
}
