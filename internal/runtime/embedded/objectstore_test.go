package embedded

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/knfaas/knfaas/internal/function/objectstore"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

func planWithEnv(env ...string) *Plan {
	return &Plan{Services: []ServicePlan{{Spec: serving.Spec{Env: env}}}}
}

func TestObjectStoreEnv(t *testing.T) {
	store := map[string]string{"S3_ENDPOINT": "http://127.0.0.1:9999", "S3_PATH_STYLE": "true", "AWS_REGION": "us-east-1",
		"AWS_ACCESS_KEY_ID": "knfaas", "AWS_SECRET_ACCESS_KEY": "knfaas-embedded-store"}
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"a function without S3_ENDPOINT is left alone", []string{"A=1", "AWS_REGION=eu-west-1"}, []string{"A=1", "AWS_REGION=eu-west-1"}},
		{"the manifest's store and template keys are replaced, the rest added",
			[]string{"S3_ENDPOINT=http://minio:9000", "AWS_SECRET_ACCESS_KEY=generated-dev-secret", "B=2"},
			[]string{"S3_ENDPOINT=http://127.0.0.1:9999", "AWS_SECRET_ACCESS_KEY=knfaas-embedded-store", "B=2",
				"AWS_REGION=us-east-1", "AWS_ACCESS_KEY_ID=knfaas", "S3_PATH_STYLE=true"}},
	}
	r := &Runtime{objects: &objectStore{env: store}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.withObjectStore(append([]string(nil), tt.env...)); strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("env\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestObjectStoreNotes(t *testing.T) {
	tests := []struct {
		name     string
		plan     *Plan
		endpoint string
		want     string
	}{
		{"no function needs a store", planWithEnv("A=1"), "", ""},
		{"embedded", planWithEnv("S3_ENDPOINT=http://minio:9000"), "", "s3: embedded (gofakes3"},
		{"a real store named by S3_ENDPOINT", planWithEnv("S3_ENDPOINT=http://minio:9000"), "https://s3.example.com", "s3: https://s3.example.com (S3_ENDPOINT)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("S3_ENDPOINT", tt.endpoint)
			got := strings.Join(objectStoreNotes(tt.plan), "\n")
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Fatalf("notes %q, want %q", got, tt.want)
			}
		})
	}
}

// The embedded store serves the S3 API: a bucket is made on first use, and an object put is
// listed and read back.
func TestEmbeddedObjectStoreServesS3(t *testing.T) {
	t.Setenv("S3_ENDPOINT", "")
	var out bytes.Buffer
	r := &Runtime{opts: Options{Out: &out}, plan: planWithEnv("S3_ENDPOINT=http://minio:9000")}
	if err := r.openObjectStore(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.closeObjectStore)
	if !strings.Contains(out.String(), "s3: embedded (gofakes3) on http://127.0.0.1:") {
		t.Fatalf("start-up says %q", out.String())
	}
	env := r.objects.env
	c, err := objectstore.New(objectstore.Config{Endpoint: env["S3_ENDPOINT"], Region: env["AWS_REGION"], AccessKeyID: env["AWS_ACCESS_KEY_ID"], SecretAccessKey: env["AWS_SECRET_ACCESS_KEY"], PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.PutObject(ctx, "photos", "uploads/a.txt", strings.NewReader("hello"), 5, minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put into a bucket never made: %v", err)
	}
	var keys []string
	for o := range c.ListObjects(ctx, "photos", minio.ListObjectsOptions{Recursive: true}) {
		keys = append(keys, o.Key)
	}
	if strings.Join(keys, ",") != "uploads/a.txt" {
		t.Fatalf("listed %v", keys)
	}
}
