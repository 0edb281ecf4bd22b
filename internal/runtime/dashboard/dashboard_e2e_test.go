//go:build e2e

package dashboard_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// dashboardManifests: a Trigger whose subscriber always answers 503, retried once and then
// dead-lettered to the platform's deadletter function.
const dashboardManifests = `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: dash-echo
  namespace: knfaas
spec:
  template:
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/test/functions/echo
        readinessProbe:
          httpGet: {path: /health/readiness}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: dash-failing, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: e2e.dashboard}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dash-echo, namespace: knfaas}
    uri: /?status=503
  delivery:
    retry: 1
    backoffDelay: PT0.05S
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: deadletter, namespace: knfaas}
`

// chromium finds a Chromium that runs headless: $CHROMIUM, or Debian's chromium or
// chromium-headless-shell, or another common name. Without one the test skips, unless
// KNFAAS_REQUIRE_CHROMIUM is set (hack/test.sh sets it after installing chromium).
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("KNFAAS_REQUIRE_CHROMIUM") != "" {
		t.Fatal("no Chromium found, and KNFAAS_REQUIRE_CHROMIUM is set (hack/test.sh installs Debian's chromium)")
	}
	t.Skip("no Chromium found (set CHROMIUM, or install Debian's chromium: hack/test.sh does when it is missing)")
	return ""
}

// TestDashboardInChromium: under knfaas up, an event delivered to a recorder and to a Trigger
// that fails and dead-letters; a headless Chromium loads the dashboard and sees the event's
// journey (its delivery, retry and dead-letter spans) and its dead letter.
func TestDashboardInChromium(t *testing.T) {
	browser := chromium(t)
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yaml"), []byte(dashboardManifests), 0o600); err != nil {
		t.Fatal(err)
	}
	paths := append(runtimetest.ModulePaths(t, "config", "100-namespace.yaml", "300-redis-secret.yaml", "400-deadletter-config.yaml",
		"500-redis-service.yaml", "510-redis-statefulset.yaml", "600-broker.yaml", "700-deadletter.yaml"), dir)
	rt := runtimetest.StartRecorded(t, runtimetest.Options{Paths: paths, RedisURL: srv.URL()},
		runtimetest.Recorder{Name: "dash-recorder", Type: "e2e.dashboard"})

	const eventID = "dash-event-1"
	rt.Send("knfaas", "default", runtimetest.NewEvent(eventID, "e2e.dashboard"))

	// The test waits with plain HTTP until the run has it all, then loads the pages in
	// Chromium: each launch takes seconds.
	get := func(url string) string {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	profile := t.TempDir()
	// dumpDOM loads url in headless Chromium and returns the DOM after the page loaded.
	dumpDOM := func(url string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
			"--disable-extensions", "--disable-dev-shm-usage", "--user-data-dir="+profile, "--dump-dom", url)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium --dump-dom %s: %v", url, err)
		}
		return string(out)
	}
	base := "http://" + rt.Addr() + "/ui/"
	_, port, _ := strings.Cut(rt.Addr(), ":")
	byName := "http://localhost:" + port + "/ui/"

	wantSpans := []string{"deliver knfaas/dash-recorder", "deliver knfaas/dash-failing", "attempt=2", "dead-letter knfaas/dash-failing"}
	hasAll := func(page string, want []string) bool {
		for _, s := range want {
			if !strings.Contains(page, s) {
				return false
			}
		}
		return true
	}
	runtimetest.Eventually(t, 90*time.Second, "the event's journey and its dead letter", func() bool {
		return hasAll(get(base+"events/"+eventID), wantSpans) && strings.Contains(get(base+"deadletters"), eventID)
	})

	journey := dumpDOM(base + "events/" + eventID)
	if !hasAll(journey, wantSpans) || !strings.Contains(journey, "<svg") || !strings.Contains(journey, `class="span failed"`) {
		t.Errorf("Chromium's journey of %s lacks the spans %q, its waterfall bars or its failed span:\n%s", eventID, wantSpans, journey)
	}
	letters := dumpDOM(byName + "deadletters")
	if !strings.Contains(letters, eventID) || !strings.Contains(letters, "knfaas/dash-failing") {
		t.Fatalf("Chromium's dead letters (by localhost) lack %s of knfaas/dash-failing:\n%s", eventID, letters)
	}
	// The letter's own page, reached by its link, offers a redrive form with a CSRF token.
	i := strings.Index(letters, `href="/ui/deadletters/`)
	if i < 0 {
		t.Fatalf("no link to a letter:\n%s", letters)
	}
	link := letters[i+len(`href="`):]
	link = link[:strings.Index(link, `"`)]
	if letter := get("http://" + rt.Addr() + link); !hasAll(letter, []string{eventID, "e2e.dashboard", `name="csrf"`, `action="` + link + `/redrive"`}) {
		t.Errorf("the letter page lacks its event or redrive form:\n%s", letter)
	}
	if dom := dumpDOM(base); !strings.Contains(dom, "knfaas/dash-echo") {
		t.Errorf("Chromium's services page lacks knfaas/dash-echo:\n%s", dom)
	}
	pages := []struct{ name, path, want string }{
		{"triggers", "triggers", "knfaas/dash-failing"},
		{"recent events", "events", eventID},
		{"processes", "processes", "Open tasks"},
	}
	for _, p := range pages {
		if page := get(base + p.path); !strings.Contains(page, p.want) {
			t.Errorf("%s page lacks %q:\n%s", p.name, p.want, page)
		}
	}
}
