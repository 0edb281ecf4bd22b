//go:build e2e

package thumbnails

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"

	"github.com/knfaas/knfaas/internal/function/objectstore"
)

// The e2e tests run against a real S3-compatible store when KNFAAS_TEST_S3_ENDPOINT names one
// (hack/s3-seaweedfs.sh sets these for SeaweedFS's S3 gateway); without it they use a store in
// memory. The store is a scratch store: the tests empty their bucket before they start.
const (
	envTestS3Endpoint  = "KNFAAS_TEST_S3_ENDPOINT"
	envTestS3AccessKey = "KNFAAS_TEST_S3_ACCESS_KEY_ID"
	envTestS3SecretKey = "KNFAAS_TEST_S3_SECRET_ACCESS_KEY"
	envTestS3Region    = "KNFAAS_TEST_S3_REGION"
)

// testBucket is the bucket of examples/thumbnails/config/400-object-store.yaml.
const testBucket = "photos"

// usingExternalStore reports whether KNFAAS_TEST_S3_ENDPOINT names a store for the tests.
func usingExternalStore() bool { return os.Getenv(envTestS3Endpoint) != "" }

// externalStore is the store KNFAAS_TEST_S3_ENDPOINT names, path-style, with the credentials of
// KNFAAS_TEST_S3_ACCESS_KEY_ID and KNFAAS_TEST_S3_SECRET_ACCESS_KEY; ok is false when it is unset.
func externalStore(t *testing.T) (cfg objectstore.Config, ok bool) {
	t.Helper()
	endpoint := os.Getenv(envTestS3Endpoint)
	if endpoint == "" {
		return objectstore.Config{}, false
	}
	cfg = objectstore.Config{Endpoint: endpoint, Region: os.Getenv(envTestS3Region), PathStyle: true,
		AccessKeyID: os.Getenv(envTestS3AccessKey), SecretAccessKey: os.Getenv(envTestS3SecretKey)}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if err := cfg.Check(); err != nil {
		t.Fatalf("%s: %v", envTestS3Endpoint, err)
	}
	t.Logf("S3 store: %s (%s)", endpoint, envTestS3Endpoint)
	return cfg, true
}

// storeOfTest is the store a test runs against and hands to knfaas up through S3_ENDPOINT and
// the AWS_* variables, so that the run uses it rather than embedding one: the external store,
// or one in memory, served by the test process (so it outlives restarts of the runtime, as a
// real store does). Its bucket exists and is empty.
func storeOfTest(t *testing.T) *minio.Client {
	t.Helper()
	cfg, ok := externalStore(t)
	if !ok {
		fake := httptest.NewServer(gofakes3.New(s3mem.New(), gofakes3.WithAutoBucket(true)).Server())
		t.Cleanup(fake.Close)
		cfg = objectstore.Config{Endpoint: fake.URL, Region: "us-east-1", AccessKeyID: "e2e", SecretAccessKey: "e2e-secret-key", PathStyle: true}
	}
	for k, v := range map[string]string{
		"S3_ENDPOINT": cfg.Endpoint, "S3_PATH_STYLE": "true", "AWS_REGION": cfg.Region,
		"AWS_ACCESS_KEY_ID": cfg.AccessKeyID, "AWS_SECRET_ACCESS_KEY": cfg.SecretAccessKey,
	} {
		t.Setenv(k, v)
	}
	return openBucket(t, cfg)
}

// openBucket opens the store of cfg and makes testBucket exist and be empty.
func openBucket(t *testing.T, cfg objectstore.Config) *minio.Client {
	t.Helper()
	store, err := objectstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	exists, err := store.BucketExists(ctx, testBucket)
	if err != nil {
		t.Fatalf("bucket %s: %v", testBucket, err)
	}
	if !exists {
		if err := store.MakeBucket(ctx, testBucket, minio.MakeBucketOptions{}); err != nil {
			t.Fatalf("making bucket %s: %v", testBucket, err)
		}
		return store
	}
	objects := store.ListObjects(ctx, testBucket, minio.ListObjectsOptions{Recursive: true})
	var errs []error
	for r := range store.RemoveObjects(ctx, testBucket, objects, minio.RemoveObjectsOptions{}) {
		errs = append(errs, r.Err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("emptying bucket %s: %v", testBucket, err)
	}
	return store
}
