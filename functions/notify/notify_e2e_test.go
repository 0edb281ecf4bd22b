//go:build e2e

package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// Secrets of the test endpoints: whsec_ + base64 of random-looking bytes.
const (
	secretCurrent  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	secretPrevious = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
	typeOrder      = "com.example.order.created"
)

// verify checks a delivery as a receiver would, written from the Standard Webhooks
// specification and sharing no code with the function: the signed content is
// "<webhook-id>.<webhook-timestamp>.<body>", the key is the base64 after "whsec_", the MAC is
// HMAC-SHA256, and webhook-signature is a space-separated list of "v1,<base64 MAC>" of which one
// must match; the timestamp must be within five minutes of now.
func verify(secret string, h http.Header, body []byte, now time.Time) error {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return err
	}
	id, ts := h.Get("webhook-id"), h.Get("webhook-timestamp")
	if id == "" || ts == "" {
		return errors.New("webhook-id or webhook-timestamp missing")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q: %w", ts, err)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("webhook-timestamp %s is %s away", ts, d)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		version, value, _ := strings.Cut(sig, ",")
		if version == "v1" && hmac.Equal([]byte(value), []byte(want)) {
			return nil
		}
	}
	return fmt.Errorf("no v1 signature in %q matches", h.Get("webhook-signature"))
}

// endpointServer is a real receiver: it verifies every request and answers what answer says
// for the nth request carrying a webhook-id.
type endpointServer struct {
	t       *testing.T
	secrets []string
	answer  func(id string, n int) int
	srv     *httptest.Server

	mu       sync.Mutex
	attempts map[string]int    // webhook-id → requests
	ceIDs    map[string]string // webhook-id → ce-id
	bodies   map[string]string // webhook-id → body
	bad      []string          // verification failures
}

func newEndpoint(t *testing.T, answer func(id string, n int) int, secrets ...string) *endpointServer {
	e := &endpointServer{t: t, secrets: secrets, answer: answer, attempts: map[string]int{}, ceIDs: map[string]string{}, bodies: map[string]string{}}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpointServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get("webhook-id")
	e.mu.Lock()
	for _, s := range e.secrets {
		if err := verify(s, r.Header, body, time.Now()); err != nil {
			e.bad = append(e.bad, fmt.Sprintf("%s with %s: %v", id, s[:10], err))
		}
	}
	if prev, ok := e.ceIDs[id]; ok && prev != r.Header.Get("ce-id") {
		e.bad = append(e.bad, fmt.Sprintf("webhook-id %s carried ce-id %s and %s", id, prev, r.Header.Get("ce-id")))
	}
	e.attempts[id]++
	n := e.attempts[id]
	e.ceIDs[id] = r.Header.Get("ce-id")
	e.bodies[id] = string(body)
	e.mu.Unlock()
	w.WriteHeader(e.answer(id, n))
}

// byEvent returns, per ce-id, the webhook-ids received and the requests made.
func (e *endpointServer) byEvent() (ids map[string][]string, requests map[string]int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids, requests = map[string][]string{}, map[string]int{}
	for wid, ce := range e.ceIDs {
		ids[ce] = append(ids[ce], wid)
		requests[ce] += e.attempts[wid]
	}
	return ids, requests
}

func (e *endpointServer) failures() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.bad...)
}

func always(code int) func(string, int) int { return func(string, int) int { return code } }

// platform writes the manifests of a test: the platform's Broker, dead letters, timer and the
// notify Service with schedule instead of the shipped one, the endpoints, their secrets and a
// Trigger subscribing notify to typeOrder.
func platform(t *testing.T, schedule string, endpoints map[string]string, env ...string) []string {
	t.Helper()
	root := runtimetest.ModuleRoot(t)
	dir := t.TempDir()
	ksvc, err := os.ReadFile(filepath.Join(root, "config/700-notify.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	extra := ""
	for i := 0; i+1 < len(env); i += 2 {
		extra += "\n        - name: " + env[i] + "\n          value: " + strconv.Quote(env[i+1])
	}
	tuned := strings.Replace(string(ksvc), `value: "5s,5m,30m,2h,5h,10h,10h"`, "value: "+strconv.Quote(schedule)+extra, 1)
	if tuned == string(ksvc) {
		t.Fatal("700-notify.yaml no longer sets NOTIFY_SCHEDULE to the default")
	}
	var eps strings.Builder
	eps.WriteString("endpoints:\n")
	for name, spec := range endpoints {
		fmt.Fprintf(&eps, "    - {name: %s, %s}\n", name, spec)
	}
	files := map[string]string{
		"700-notify.yaml": tuned,
		"notify-test.yaml": `apiVersion: v1
kind: ConfigMap
metadata: {name: notify-endpoints, namespace: knfaas}
data:
  endpoints.yaml: |
    ` + strings.TrimSpace(eps.String()) + `
---
apiVersion: v1
kind: Secret
metadata: {name: notify-secrets, namespace: knfaas}
stringData:
  CURRENT: ` + secretCurrent + `
  PREVIOUS: ` + secretPrevious + `
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: notify-orders, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: ` + typeOrder + `}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: notify, namespace: knfaas}
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var paths []string
	for _, f := range []string{"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/400-deadletter-config.yaml",
		"config/500-redis-service.yaml", "config/510-redis-statefulset.yaml", "config/600-broker.yaml", "config/700-deadletter.yaml",
		"config/700-timer.yaml", "config/710-timer-sinkbinding.yaml", "config/800-timer-ping.yaml", "triggers/notify-timer-fired.yaml",
		"config/710-notify-sinkbinding.yaml", "config/335-notify-api-secret.yaml"} {
		paths = append(paths, filepath.Join(root, f))
	}
	return append(paths, dir)
}

func orderEvent(id string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/e2e/shop")
	e.SetType(typeOrder)
	_ = e.SetData(cloudevents.ApplicationJSON, []byte(`{"order": "`+id+`",  "total":  12.50}`))
	return e
}

// TestNotifyDeliversRetriesDisablesAndDeadLetters runs notify under knfaas up with four real
// endpoints: a healthy one verified with both rotation secrets, a flaky one failing twice per
// message, one answering 410 and one always 500. A dead letter of the last is then redriven.
func TestNotifyDeliversRetriesDisablesAndDeadLetters(t *testing.T) {
	var (
		healthy = newEndpoint(t, always(http.StatusOK), secretCurrent, secretPrevious)
		flaky   = newEndpoint(t, func(_ string, n int) int {
			if n <= 2 {
				return http.StatusInternalServerError
			}
			return http.StatusNoContent
		}, secretCurrent)
		gone   = newEndpoint(t, always(http.StatusGone), secretCurrent)
		healed sync.Map
		dead   = newEndpoint(t, func(id string, _ int) int {
			if _, ok := healed.Load("all"); ok {
				return http.StatusOK
			}
			return http.StatusBadGateway
		}, secretCurrent)
	)
	srv := redistest.Start(t, redistest.Options{AOF: true})
	spec := func(url, secrets string) string {
		return fmt.Sprintf("url: '%s', types: [com.example.order.*], secretEnv: [%s]", url, secrets)
	}
	// The runtime's own Redis as an endpoint: the SSRF guard refuses every connection to it.
	rt := runtimetest.Start(t, runtimetest.Options{RedisURL: srv.URL(), Paths: platform(t, "1s,1s,2s", map[string]string{
		"healthy": spec(healthy.srv.URL, "CURRENT, PREVIOUS"),
		"flaky":   spec(flaky.srv.URL, "CURRENT"),
		"gone":    spec(gone.srv.URL, "CURRENT") + ", concurrency: 1",
		"dead":    spec(dead.srv.URL, "CURRENT"),
		"redis":   spec("http://"+srv.Addr()+"/", "CURRENT"),
	}, "NOTIFY_BREAKER_OPEN", "1s")})

	const n = 5
	for i := range n {
		rt.Send("knfaas", "default", orderEvent(fmt.Sprintf("order-%d", i)))
	}
	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	ctx := context.Background()
	var letters []deadletter.Letter
	// 4 attempts each at the dead endpoint (schedule 1s,1s,2s), 1 for gone + 4 pending there.
	runtimetest.Eventually(t, 2*time.Minute, "every message reaches its final state", func() bool {
		letters, _ = store.List(ctx, deadletter.Filter{})
		ids, _ := flaky.byEvent()
		hids, _ := healthy.byEvent()
		return len(letters) == 3*n && len(ids) == n && len(hids) == n
	})
	for name, ep := range map[string]*endpointServer{"healthy": healthy, "flaky": flaky, "gone": gone, "dead": dead} {
		if bad := ep.failures(); len(bad) > 0 {
			t.Errorf("%s: %d deliveries failed verification, first: %s", name, len(bad), bad[0])
		}
	}
	wantRequests := map[string]struct {
		ep       *endpointServer
		events   int
		perEvent int
	}{"healthy": {healthy, n, 1}, "flaky": {flaky, n, 3}, "dead": {dead, n, 4}, "gone": {gone, 1, 1}}
	for name, w := range wantRequests {
		ids, requests := w.ep.byEvent()
		if len(ids) != w.events {
			t.Errorf("%s received %d events, want %d", name, len(ids), w.events)
		}
		for ce, wids := range ids {
			if len(wids) != 1 || requests[ce] != w.perEvent {
				t.Errorf("%s: event %s came with webhook-ids %v in %d requests, want one id in %d", name, ce, wids, requests[ce], w.perEvent)
			}
		}
	}
	healthy.mu.Lock()
	for _, body := range healthy.bodies {
		if !strings.Contains(body, `",  "total":  12.50}`) {
			t.Errorf("body %q is not the event's data byte for byte", body)
		}
	}
	healthy.mu.Unlock()
	byDest := map[string]int{}
	for _, l := range letters {
		byDest[l.Dest]++
		if l.Dest == dead.srv.URL && (l.Code != 502 || !strings.Contains(l.Detail, "4 attempts")) {
			t.Errorf("dead letter %+v", l)
		}
		if l.Dest == "http://"+srv.Addr()+"/" && !strings.Contains(l.ErrorData, "refused address") {
			t.Errorf("dead letter of the Redis endpoint says %q, want the guard's refusal", l.ErrorData)
		}
	}
	if byDest[dead.srv.URL] != n || byDest[gone.srv.URL] != n || byDest["http://"+srv.Addr()+"/"] != n {
		t.Errorf("dead letters by endpoint %v, want %d for dead, gone and redis each", byDest, n)
	}
	// The dead endpoint's circuit opened after 5 failures in a row: later attempts went as
	// half-open probes, one at a time.
	nstore := notify.NewStore(srv.Client(), time.Hour)
	probes := 0
	for i := range n {
		attempts, err := nstore.Attempts(ctx, notify.MessageID("/e2e/shop", fmt.Sprintf("order-%d", i)), "dead")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range attempts {
			if a.Breaker == "half-open probe" {
				probes++
			}
		}
	}
	if probes == 0 {
		t.Error("no attempt at the dead endpoint went as a half-open probe: its circuit never opened")
	}

	// Redrive the dead endpoint's letters once it is healthy: it gets each message once more, with
	// the same webhook-id; no other endpoint gets anything.
	healed.Store("all", true)
	cmd := exec.Command(runtimetest.Binary(t), "dlq", "redrive", "--dest", dead.srv.URL, "--broker", rt.BrokerURL("knfaas", "default"))
	cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL())
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), fmt.Sprintf("accepted %d", n)) {
		t.Fatalf("knfaas dlq redrive: %v\n%s", err, out)
	}
	runtimetest.Eventually(t, time.Minute, "the redriven messages reach the healed endpoint", func() bool {
		_, requests := dead.byEvent()
		for _, r := range requests {
			if r != 5 {
				return false
			}
		}
		return len(requests) == n
	})
	time.Sleep(2 * time.Second)
	for name, w := range wantRequests {
		if name == "dead" {
			continue
		}
		_, requests := w.ep.byEvent()
		for ce, r := range requests {
			if r != w.perEvent {
				t.Errorf("after the redrive %s got %d requests for %s, want %d", name, r, ce, w.perEvent)
			}
		}
	}
	ids, _ := dead.byEvent()
	for ce, wids := range ids {
		if len(wids) != 1 {
			t.Errorf("redrive of %s used webhook-ids %v", ce, wids)
		}
	}
}

// TestNotifyLosesNothingAcrossAKill kills knfaas up (and the notify function with it) while
// the messages wait at an endpoint that is down (some for a retry, most at its open circuit),
// brings the endpoint up and restarts the runtime with a short idle window: notify scales to
// zero, the timer's wake-up deadline brings it back, its probe closes the circuit, and every
// message is delivered, each under one webhook-id.
func TestNotifyLosesNothingAcrossAKill(t *testing.T) {
	var (
		up        sync.Map
		delivered sync.Map // webhook-id → true once answered 200
	)
	flaky := newEndpoint(t, func(id string, _ int) int {
		if _, ok := up.Load("up"); ok {
			delivered.Store(id, true)
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	}, secretCurrent)
	srv := redistest.Start(t, redistest.Options{AOF: true})
	// A short idle window scales notify to zero between its attempts: only the timer wakes it.
	rt := runtimetest.Start(t, runtimetest.Options{RedisURL: srv.URL(), Idle: 3 * time.Second, Paths: platform(t, "1s,20s,20s,20s,20s,20s", map[string]string{
		"flaky": fmt.Sprintf("url: '%s', types: ['*'], secretEnv: [CURRENT]", flaky.srv.URL),
	}, "NOTIFY_BREAKER_OPEN", "5s")})
	const n = 20
	for i := range n {
		rt.Send("knfaas", "default", orderEvent(fmt.Sprintf("kill-%d", i)))
	}
	ctx := context.Background()
	runtimetest.Eventually(t, time.Minute, "the endpoint's circuit opens", func() bool {
		st, err := notify.ReadBreaker(ctx, srv.Client(), "flaky")
		return err == nil && st.State == "open"
	})
	rt.Kill()
	up.Store("up", true)
	rt.Restart()

	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	var letters []deadletter.Letter
	count := func() int {
		c := 0
		delivered.Range(func(any, any) bool { c++; return true })
		return c
	}
	// The waiting messages are due within seconds; the timer's next minute tick wakes notify.
	runtimetest.Eventually(t, 150*time.Second, "every message is delivered or dead-lettered", func() bool {
		letters, _ = store.List(ctx, deadletter.Filter{})
		return count()+len(letters) >= n
	})
	ids, requests := flaky.byEvent()
	lost := 0
	for i := range n {
		ce := fmt.Sprintf("kill-%d", i)
		if len(ids[ce]) != 1 {
			t.Errorf("%s came with webhook-ids %v", ce, ids[ce])
			continue
		}
		if _, ok := delivered.Load(ids[ce][0]); !ok {
			lost++
		}
	}
	if lost != 0 || len(letters) != 0 {
		t.Errorf("lost = %d, dead letters = %d; want every message delivered after the restart", lost, len(letters))
	}
	if bad := flaky.failures(); len(bad) > 0 {
		t.Errorf("%d deliveries failed verification, first: %s", len(bad), bad[0])
	}
	// The deliveries after the restart came through the wake-up path: notify scaled to zero,
	// the timer fired its deadline and a new instance ran the retries.
	out := rt.Output()
	scaledDown := strings.Index(out, `msg="scaling down idle instance" service=knfaas/notify`)
	fired := strings.LastIndex(out, `msg="fired deadlines"`)
	if scaledDown < 0 || fired < scaledDown {
		t.Errorf("no timer wake-up after notify scaled to zero (scaled down at %d, fired at %d)", scaledDown, fired)
	}
	t.Logf("%d messages delivered after the kill, %d requests in all, lost %d", n, sumOf(requests), lost)
}

func sumOf(m map[string]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}

// capture is a real receiver that keeps every request's headers and body.
type capture struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []captured
}

type captured struct {
	header http.Header
	body   []byte
	at     time.Time
}

func newCapture(t *testing.T) *capture {
	c := &capture{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		c.reqs = append(c.reqs, captured{header: r.Header.Clone(), body: body, at: time.Now()})
		c.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

// forEvent returns the requests that carried ce-id id.
func (c *capture) forEvent(id string) []captured {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []captured
	for _, r := range c.reqs {
		if r.header.Get("ce-id") == id {
			out = append(out, r)
		}
	}
	return out
}

// TestNotifyEndpointAPIUnderKnfaasUp manages an endpoint through the API under knfaas up, with
// the CLI finding the function and its development token by itself: 401 without or with a
// wrong token; 400 naming the bad field; 409 for a ConfigMap endpoint's name; create → the
// delivery verifies with the secret the create printed; rotate → both secrets verify during the
// overlap, only the new one after it; disable → nothing is delivered, the message waits, and
// goes out on enable; replay → the range again with the original webhook-ids, once.
func TestNotifyEndpointAPIUnderKnfaasUp(t *testing.T) {
	shop, billing := newCapture(t), newCapture(t)
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rt := runtimetest.Start(t, runtimetest.Options{RedisURL: srv.URL(), Paths: platform(t, "1s,1s", map[string]string{
		"billing": fmt.Sprintf("url: '%s', types: [com.example.invoice.*], secretEnv: [CURRENT]", billing.srv.URL),
	})})
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(runtimetest.Binary(t), append(args, "--state-dir", rt.StateDir())...)
		cmd.Env = append(os.Environ(), "REDIS_URL=", "KNFAAS_ADDR=", "KNFAAS_NOTIFY_TOKEN=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustCLI := func(args ...string) string {
		t.Helper()
		out, err := cli(args...)
		if err != nil {
			t.Fatalf("knfaas %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	apiURL := rt.InternalBase() + "/services/knfaas/notify" + notify.APIPrefix
	token := rt.DevSecret("knfaas", "notify-api", "token", "CHANGE-ME-notify-api-token-000000")

	t.Run("authentication and validation", func(t *testing.T) {
		tests := []struct {
			name, token, body string
			code              int
			says              string
		}{
			{name: "no token", code: http.StatusUnauthorized, says: "bearer token"},
			{name: "wrong token", token: "wrong-" + token, code: http.StatusUnauthorized, says: "bearer token"},
			{name: "bad url", token: token, body: `{"name":"x","url":"gopher://x","types":["t"]}`, code: http.StatusBadRequest, says: `"field":"url"`},
			{name: "unknown field", token: token, body: `{"name":"x","url":"http://127.0.0.1:9/","types":["t"],"secretEnv":["A"]}`, code: http.StatusBadRequest, says: `"field":"secretEnv"`},
			{name: "metadata address", token: token, body: `{"name":"x","url":"http://169.254.169.254/","types":["t"]}`, code: http.StatusBadRequest, says: `refused address`},
			{name: "runtime's own Redis", token: token, body: `{"name":"x","url":"http://` + srv.Addr() + `/","types":["t"]}`, code: http.StatusBadRequest, says: `the runtime's own`},
			{name: "ConfigMap name", token: token, body: `{"name":"billing","url":"http://127.0.0.1:9/","types":["t"]}`, code: http.StatusConflict, says: "ConfigMap"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodPost, apiURL, strings.NewReader(tc.body))
				if tc.token != "" {
					req.Header.Set("Authorization", "Bearer "+tc.token)
				}
				resp, err := rt.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.says) {
					t.Fatalf("answered %d %s, want %d saying %q", resp.StatusCode, body, tc.code, tc.says)
				}
			})
		}
		if out, err := cli("notify", "endpoints", "create", "Shop", "--url", shop.srv.URL, "--type", "com.example.order.*"); err == nil || !strings.Contains(out, "name: \"Shop\" must be a lower-case DNS label") {
			t.Errorf("the CLI's refused create said %v:\n%s", err, out)
		}
	})

	// Create: the CLI finds the run and its token; the delivery verifies with the printed secret.
	var created notify.EndpointView
	if err := json.Unmarshal([]byte(mustCLI("notify", "endpoints", "create", "shop", "--url", shop.srv.URL, "--type", "com.example.order.*", "-o", "json")), &created); err != nil || !strings.HasPrefix(created.Secret, "whsec_") {
		t.Fatalf("create answered %+v, %v", created, err)
	}
	deliveredOnce := func(id string) captured {
		t.Helper()
		rt.Send("knfaas", "default", orderEvent(id))
		runtimetest.Eventually(t, time.Minute, id+" is delivered", func() bool { return len(shop.forEvent(id)) > 0 })
		return shop.forEvent(id)[0]
	}
	first := deliveredOnce("api-1")
	if err := verify(created.Secret, first.header, first.body, time.Now()); err != nil {
		t.Errorf("the first delivery does not verify with the created secret: %v", err)
	}

	// Rotate with an overlap: both verify during it, only the new one after.
	const overlap = 15 * time.Second
	var rotated notify.EndpointView
	if err := json.Unmarshal([]byte(mustCLI("notify", "endpoints", "rotate", "shop", "--overlap", overlap.String(), "-o", "json")), &rotated); err != nil || rotated.Secret == "" || rotated.Secret == created.Secret {
		t.Fatalf("rotate answered %+v, %v", rotated, err)
	}
	during := deliveredOnce("api-2")
	signedAt, _ := strconv.ParseInt(during.header.Get("webhook-timestamp"), 10, 64)
	if time.Unix(signedAt, 0).After(rotated.PreviousUntil.Add(-time.Second)) {
		t.Fatalf("the delivery during the overlap came only at %s (overlap until %s): the machine is too slow for this check", time.Unix(signedAt, 0), rotated.PreviousUntil)
	}
	wait := time.Until(rotated.PreviousUntil) + time.Second
	time.Sleep(wait)
	after := deliveredOnce("api-3")
	phases := map[string]struct {
		req           captured
		oldOK, newOK  bool
		numSignatures int
	}{
		"during the overlap": {req: during, oldOK: true, newOK: true, numSignatures: 2},
		"after the overlap":  {req: after, oldOK: false, newOK: true, numSignatures: 1},
	}
	for name, ph := range phases {
		t.Run("rotation/"+name, func(t *testing.T) {
			oldErr, newErr := verify(created.Secret, ph.req.header, ph.req.body, time.Now()), verify(rotated.Secret, ph.req.header, ph.req.body, time.Now())
			if (oldErr == nil) != ph.oldOK || (newErr == nil) != ph.newOK {
				t.Errorf("old secret: %v (want ok=%v); new secret: %v (want ok=%v)", oldErr, ph.oldOK, newErr, ph.newOK)
			}
			if n := len(strings.Fields(ph.req.header.Get("webhook-signature"))); n != ph.numSignatures {
				t.Errorf("%d signatures, want %d", n, ph.numSignatures)
			}
		})
	}

	// Disable: nothing is delivered, the message waits; enable sends it.
	mustCLI("notify", "endpoints", "disable", "shop")
	rt.Send("knfaas", "default", orderEvent("api-4"))
	nstore := notify.NewStore(srv.Client(), time.Hour)
	ctx := context.Background()
	msg4 := notify.MessageID("/e2e/shop", "api-4")
	runtimetest.Eventually(t, time.Minute, "the message for the disabled endpoint is stored", func() bool {
		st, _ := nstore.States(ctx, msg4)
		return st["shop"] == notify.StatePending
	})
	time.Sleep(3 * time.Second)
	if got := shop.forEvent("api-4"); len(got) != 0 {
		t.Fatalf("the disabled endpoint got %d deliveries", len(got))
	}
	if st, _ := nstore.States(ctx, msg4); st["shop"] != notify.StatePending {
		t.Fatalf("while disabled the message is %q, want pending", st["shop"])
	}
	if out := mustCLI("notify", "endpoints"); !strings.Contains(out, "disabled through the API") {
		t.Errorf("knfaas notify endpoints does not show the endpoint disabled:\n%s", out)
	}
	mustCLI("notify", "endpoints", "enable", "shop")
	runtimetest.Eventually(t, time.Minute, "the waiting message is delivered once enabled", func() bool { return len(shop.forEvent("api-4")) == 1 })

	// Replay the range of the four messages: each once more with its webhook-id; again: nothing.
	var replay notify.Replay
	since := first.at.Add(-30 * time.Second).UTC().Format(time.RFC3339Nano)
	until := time.Now().UTC().Format(time.RFC3339Nano)
	if err := json.Unmarshal([]byte(mustCLI("notify", "replay", "--endpoint", "shop", "--since", since, "--until", until, "-o", "json")), &replay); err != nil || replay.Scheduled != 4 {
		t.Fatalf("replay answered %+v, %v", replay, err)
	}
	runtimetest.Eventually(t, time.Minute, "the replayed messages arrive", func() bool {
		for i := 1; i <= 4; i++ {
			if len(shop.forEvent(fmt.Sprintf("api-%d", i))) != 2 {
				return false
			}
		}
		return true
	})
	if out := mustCLI("notify", "replay", "--endpoint", "shop", "--since", since, "--until", until); !strings.Contains(out, "nothing sent now") {
		t.Errorf("the repeated replay said:\n%s", out)
	}
	time.Sleep(2 * time.Second)
	for i := 1; i <= 4; i++ {
		got := shop.forEvent(fmt.Sprintf("api-%d", i))
		if len(got) != 2 || got[0].header.Get("webhook-id") != got[1].header.Get("webhook-id") {
			t.Errorf("api-%d: %d deliveries, want 2 with one webhook-id", i, len(got))
		}
	}
	if len(billing.forEvent("api-1")) != 0 {
		t.Error("the ConfigMap endpoint got an order it does not want")
	}

	// The counters and the circuit in the CLI and the metrics.
	if out := mustCLI("notify", "endpoints"); !regexp.MustCompile(`shop\s+api\s+closed\s+-\s+0\s+8\s`).MatchString(out) {
		t.Errorf("knfaas notify endpoints:\n%s", out)
	}
	resp, err := rt.Client().Get(rt.InternalBase() + "/services/knfaas/notify/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`knfaas_notify_endpoint_circuit{endpoint="shop",source="api",state="closed"} 1`, `knfaas_notify_deliveries_total{endpoint="shop",outcome="delivered"} 8`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
	}

	// The endpoint survives a restart of the runtime: the new instance reads it from Redis.
	rt.Kill()
	rt.Restart()
	restarted := deliveredOnce("api-5")
	if verify(rotated.Secret, restarted.header, restarted.body, time.Now()) != nil || verify(created.Secret, restarted.header, restarted.body, time.Now()) == nil {
		t.Errorf("after the restart the delivery is not signed by the new secret alone: %v", restarted.header)
	}
}
