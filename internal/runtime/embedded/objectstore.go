package embedded

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// EnvS3Endpoint names the S3-compatible store a function uses. Under knfaas up, every
// function whose manifest sets it gets the run's store instead: the store S3_ENDPOINT names in
// knfaas up's own environment, or else an embedded one started by the run.
const EnvS3Endpoint = "S3_ENDPOINT"

// objectStoreEnv are the variables of knfaas up's environment that a real store brings along.
var objectStoreEnv = []string{"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "S3_PATH_STYLE"}

// embeddedS3Region and the keys are what functions get for the embedded store, which checks no
// signature: any key pair works.
const (
	embeddedS3Region    = "us-east-1"
	embeddedS3AccessKey = "knfaas"
	embeddedS3SecretKey = "knfaas-embedded-store"
)

// objectStore is the run's S3-compatible store.
type objectStore struct {
	// env replaces or adds these variables in every function that sets S3_ENDPOINT.
	env    map[string]string
	server *http.Server
}

// usesObjectStore reports whether a function of the plan sets S3_ENDPOINT.
func usesObjectStore(p *Plan) bool {
	for _, s := range p.Services {
		for _, kv := range s.Spec.Env {
			if strings.HasPrefix(kv, EnvS3Endpoint+"=") {
				return true
			}
		}
	}
	return false
}

// objectStoreNotes says in the plan which store the functions that set S3_ENDPOINT will use.
func objectStoreNotes(p *Plan) []string {
	switch {
	case !usesObjectStore(p):
		return nil
	case os.Getenv(EnvS3Endpoint) != "":
		return []string{"s3: " + os.Getenv(EnvS3Endpoint) + " (S3_ENDPOINT) stands in for the S3_ENDPOINT of every function"}
	}
	return []string{"s3: embedded (gofakes3, in memory), started by the run, stands in for the S3_ENDPOINT of every function; set S3_ENDPOINT (and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) to use a real store; embedded objects are lost on exit"}
}

// openObjectStore starts the embedded store, or takes the one S3_ENDPOINT names, when a function
// needs one, and says where it is.
func (r *Runtime) openObjectStore() error {
	if !usesObjectStore(r.plan) {
		return nil
	}
	if endpoint := os.Getenv(EnvS3Endpoint); endpoint != "" {
		env := map[string]string{EnvS3Endpoint: endpoint}
		for _, k := range objectStoreEnv {
			if v, ok := os.LookupEnv(k); ok {
				env[k] = v
			}
		}
		r.objects = &objectStore{env: env}
		fmt.Fprintf(r.opts.Out, "s3: %s (S3_ENDPOINT)\n", endpoint)
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("starting the embedded S3 store: %w", err)
	}
	// Buckets are created on first use, as a developer expects of a scratch store.
	fake := gofakes3.New(s3mem.New(), gofakes3.WithAutoBucket(true))
	srv := &http.Server{Handler: fake.Server(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("embedded S3 store stopped", "error", err)
		}
	}()
	endpoint := "http://" + l.Addr().String()
	r.objects = &objectStore{server: srv, env: map[string]string{
		EnvS3Endpoint: endpoint, "S3_PATH_STYLE": "true", "AWS_REGION": embeddedS3Region,
		"AWS_ACCESS_KEY_ID": embeddedS3AccessKey, "AWS_SECRET_ACCESS_KEY": embeddedS3SecretKey,
	}}
	fmt.Fprintf(r.opts.Out, "s3: embedded (gofakes3) on %s — any access key works, buckets are created on first use; set S3_ENDPOINT to use a real store; embedded objects are lost on exit\n", endpoint)
	return nil
}

// withObjectStore gives a function that sets S3_ENDPOINT the run's store: its variables replace
// the manifest's values (a Secret's template keys included) or are added.
func (r *Runtime) withObjectStore(env []string) []string {
	if r.objects == nil || !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, EnvS3Endpoint+"=") }) {
		return env
	}
	set := map[string]bool{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if v, ok := r.objects.env[k]; ok {
			env[i] = k + "=" + v
			set[k] = true
		}
	}
	for _, k := range append([]string{EnvS3Endpoint}, objectStoreEnv...) {
		if v, ok := r.objects.env[k]; ok && !set[k] {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// closeObjectStore stops the embedded store, if any.
func (r *Runtime) closeObjectStore() {
	if r.objects != nil && r.objects.server != nil {
		_ = r.objects.server.Close()
	}
}
