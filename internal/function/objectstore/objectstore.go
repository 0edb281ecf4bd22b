// Package objectstore opens an S3 API client (minio-go) for a function from the environment:
// S3_ENDPOINT names any S3-compatible store, AWS_* variables carry the credentials.
package objectstore

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/knfaas/knfaas/internal/function/placeholder"
)

// DefaultEndpoint is AWS S3's, used when S3_ENDPOINT is unset.
const DefaultEndpoint = "https://s3.amazonaws.com"

// Config is the store's part of a function's configuration (envconfig tags).
type Config struct {
	// Endpoint is the store's URL: http://host:port or https://host. Unset: AWS S3.
	Endpoint string `envconfig:"S3_ENDPOINT"`
	// Region is the bucket's region; unset, the client asks the store.
	Region string `envconfig:"AWS_REGION"`
	// AccessKeyID and SecretAccessKey are static credentials (from a Secret); unset, the
	// client uses the IAM credentials of the workload (EC2/ECS roles, EKS web identity).
	AccessKeyID     string `envconfig:"AWS_ACCESS_KEY_ID"`
	SecretAccessKey string `envconfig:"AWS_SECRET_ACCESS_KEY"`
	SessionToken    string `envconfig:"AWS_SESSION_TOKEN"`
	// PathStyle forces path-style requests (http://host/bucket/key), which most
	// S3-compatible stores other than AWS need; unset, minio-go decides by the endpoint.
	PathStyle bool `envconfig:"S3_PATH_STYLE" default:"false"`
}

// Check refuses an endpoint that is not an http(s) URL, half a key pair and template
// placeholders, naming each variable.
func (c Config) Check() error {
	var errs []error
	if c.Endpoint != "" {
		if _, _, err := parseEndpoint(c.Endpoint); err != nil {
			errs = append(errs, fmt.Errorf("S3_ENDPOINT: %w", err))
		}
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		errs = append(errs, errors.New("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither"))
	}
	for name, v := range map[string]string{"AWS_ACCESS_KEY_ID": c.AccessKeyID, "AWS_SECRET_ACCESS_KEY": c.SecretAccessKey} {
		if err := placeholder.Check(name, v); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func parseEndpoint(endpoint string) (host string, secure bool, err error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", false, fmt.Errorf("%q is not a URL: %w", endpoint, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
		return "", false, fmt.Errorf("%q is not http(s)://host[:port] (no path, query or credentials)", endpoint)
	}
	return u.Host, u.Scheme == "https", nil
}

// New returns a client for the store cfg names. It does not dial.
func New(cfg Config) (*minio.Client, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	host, secure, err := parseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	creds := credentials.NewIAM("")
	if cfg.AccessKeyID != "" {
		creds = credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.New(host, &minio.Options{Creds: creds, Secure: secure, Region: cfg.Region, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("S3 client for %s: %w", endpoint, err)
	}
	return c, nil
}
