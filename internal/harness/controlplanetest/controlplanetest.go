// Package controlplanetest starts a real etcd and kube-apiserver (built by
// hack/verify-apiserver.sh --build-only) for tests, and installs the pinned Knative CRDs.
package controlplanetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// Resources of the Knative CRDs that InstallKnativeCRDs waits for.
var (
	KsvcGVR   = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "services"}
	BrokerGVR = schema.GroupVersionResource{Group: "eventing.knative.dev", Version: "v1", Resource: "brokers"}
)

// ControlPlane is a running etcd and kube-apiserver on loopback, stopped when the test ends.
type ControlPlane struct {
	// Config reaches the API server as a member of system:masters.
	Config *rest.Config
	// Token is Config's bearer token (for kubeconfig files written by tests).
	Token string
	// ServingCert is the kube-apiserver's self-signed serving certificate (with its CA).
	ServingCert string
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startBackground runs bin until the test ends, logging to log (its tail is printed if the test
// failed).
func startBackground(t testing.TB, name, log, bin string, args ...string) {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			lines := strings.Split(string(b), "\n")
			t.Logf("%s log tail:\n%s", name, strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	})
}

// Start builds (or finds cached) etcd and kube-apiserver with hack/verify-apiserver.sh
// --build-only, starts them and waits until the API server is ready.
func Start(t testing.TB) *ControlPlane {
	t.Helper()
	root := runtimetest.ModuleRoot(t)
	build := exec.Command("hack/verify-apiserver.sh", "--build-only")
	build.Dir = root
	build.Stderr = os.Stderr
	out, err := build.Output()
	if err != nil {
		t.Fatalf("building etcd and kube-apiserver: %v", err)
	}
	bins := strings.Fields(string(out))
	if len(bins) != 2 {
		t.Fatalf("hack/verify-apiserver.sh --build-only printed %q, want two paths", out)
	}
	etcd, apiserver := bins[0], bins[1]
	dir := t.TempDir()
	etcdPort, peerPort, apiPort := FreePort(t), FreePort(t), FreePort(t)
	startBackground(t, "etcd", filepath.Join(dir, "etcd.log"), etcd, "--name", "e2e", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort), "--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort), "--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("e2e=http://127.0.0.1:%d", peerPort), "--unsafe-no-fsync", "--log-level", "warn")

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	writePEM := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	saKey := writePEM("sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	saPub := writePEM("sa.pub", "PUBLIC KEY", pub)
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	token := hex.EncodeToString(tok)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+",e2e,e2e,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startBackground(t, "kube-apiserver", filepath.Join(dir, "apiserver.log"), apiserver,
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", fmt.Sprint(apiPort),
		"--cert-dir", filepath.Join(dir, "certs"), "--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saPub, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.96.0.0/16", "--enable-priority-and-fairness=false")
	cfg := &rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", apiPort), BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 200, Burst: 400}
	kube := kubernetes.NewForConfigOrDie(cfg)
	runtimetest.Eventually(t, 3*time.Minute, "kube-apiserver ready", func() bool {
		_, err := kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		return err == nil
	})
	return &ControlPlane{Config: cfg, Token: token, ServingCert: filepath.Join(dir, "certs", "apiserver.crt")}
}

// InstallKnativeCRDs creates the CRDs shipped in the pinned knative.dev/eventing and
// knative.dev/serving modules, as hack/verify-apiserver.sh does, and waits until Brokers and
// Knative Services can be listed.
func InstallKnativeCRDs(t testing.TB, cfg *rest.Config) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(cfg)
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var files []string
	for mod, glob := range map[string]string{"knative.dev/eventing": "config/core/resources/*.yaml", "knative.dev/serving": "config/core/300-resources/*.yaml"} {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod).Output()
		if err != nil {
			t.Fatalf("locating %s: %v", mod, err)
		}
		m, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), glob))
		files = append(files, m...)
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---") {
			if !strings.Contains(doc, "kind: CustomResourceDefinition") {
				continue
			}
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(j); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if _, err := dyn.Resource(crdGVR).Create(context.Background(), u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("creating CRD from %s: %v", f, err)
			}
			n++
		}
	}
	if n < 10 {
		t.Fatalf("installed %d CRDs; the Knative modules ship more", n)
	}
	runtimetest.Eventually(t, time.Minute, "the Knative CRDs established", func() bool {
		_, err1 := dyn.Resource(BrokerGVR).Namespace("default").List(context.Background(), metav1.ListOptions{})
		_, err2 := dyn.Resource(KsvcGVR).Namespace("default").List(context.Background(), metav1.ListOptions{})
		return err1 == nil && err2 == nil
	})
}
