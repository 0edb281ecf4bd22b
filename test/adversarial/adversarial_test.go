//go:build e2e

package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/broker"
)

const (
	ns = "knfaas"
	// subType is delivered to the public recorder "sub"; innerType to the cluster-local "inner".
	subType   = "dev.knfaas.test.adv"
	innerType = "dev.knfaas.test.adv.inner"
	// poisonType goes through the "poison" Broker, whose subscriber and dead-letter sink are
	// both recorders told to fail.
	poisonType = "dev.knfaas.test.adv.poison"
)

// recorder is a Knative Service running the test recorder on the platform's Redis; labels and
// spec are YAML lines added to its metadata and to its template's spec.
func recorder(name, labels, spec string) string {
	return fmt.Sprintf(`apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: %s
  namespace: knfaas
%sspec:
  template:
    spec:
%s      containers:
      - image: ko://github.com/knfaas/knfaas/test/functions/recorder
        readinessProbe: {httpGet: {path: /health/readiness}}
        env:
        - name: REDIS_URL
          valueFrom: {secretKeyRef: {name: redis, key: url}}
---
`, name, labels, spec)
}

const clusterLocal = "  labels:\n    networking.knative.dev/visibility: cluster-local\n"

// subscription is the Trigger ns/name on broker that delivers what filter (a YAML line, or
// "") lets through to the Service service.
func subscription(name, broker, filter, service string) string {
	if filter != "" {
		filter = "  " + filter + "\n"
	}
	return manifesttest.Trigger(ns, name, broker) + filter +
		"  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: " + service + "}}\n"
}

// manifests add, beside the platform's own objects and the food-delivery example: a public
// recorder and a cluster-local one behind Triggers on the platform Broker, a Broker whose
// dead-letter sink fails as well as its subscriber, and a function with a short timeout for
// slow clients.
var manifests = recorder("sub", "", "") + recorder("inner", clusterLocal, "") +
	recorder("slowfn", "", "      containerConcurrency: 1\n      timeoutSeconds: 2\n") +
	recorder("baddls", clusterLocal, "") + manifesttest.Docs(
	subscription("sub-adv", "default", "filter: {attributes: {type: dev.knfaas.test.adv}}", "sub"),
	subscription("inner-adv", "default", "filter: {attributes: {type: dev.knfaas.test.adv.inner}}", "inner"),
	`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: poison
  namespace: knfaas
spec:
  delivery:
    retry: 1
    backoffPolicy: linear
    backoffDelay: PT0.05S
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: baddls}
`,
	subscription("sub-poison", "poison", "", "sub"))

// row is one line of the report.
type row struct {
	attack, answer, effect string
	lost, duplicated       int
	failed                 bool
}

type suite struct {
	t    *testing.T
	srv  *redistest.Server
	rdb  *redis.Client
	rt   *runtimetest.Runtime
	http *http.Client

	mu       sync.Mutex
	rows     []row
	accepted map[string]string // event id → the recorder that must see it
}

func (s *suite) add(r row) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows = append(s.rows, r)
	if r.failed {
		s.t.Errorf("%s: answer %s, effect %s", r.attack, r.answer, r.effect)
	}
}

func (s *suite) accept(id, recorder string) {
	s.mu.Lock()
	s.accepted[id] = recorder
	s.mu.Unlock()
}

// TestAttacks runs every attack against one `knfaas up` on a real redis-server with the
// append-only file on, prints the table (attack, answer, effect, lost, duplicated), and fails
// on any loss or unauthorised effect.
func TestAttacks(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "adversarial.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.Start(t, runtimetest.Options{
		Paths:    []string{"config", "triggers", "examples/food-delivery", dir},
		RedisURL: srv.URL(), RedeliverAfter: 2 * time.Second,
	})
	s := &suite{t: t, srv: srv, rdb: srv.Client(), rt: rt, http: rt.Client(), accepted: map[string]string{}}

	// Attacks that only need the listeners run side by side: slow clients hold a connection
	// for seconds while the others go on.
	var wg sync.WaitGroup
	for _, attack := range []func(){s.slowBodyBroker, s.slowloris, s.slowBodyFunction, s.slowBodyWebhook} {
		wg.Add(1)
		go func() { defer wg.Done(); attack() }()
	}
	s.oversizedAttributes()
	s.oversizedEvent()
	s.byteExact()
	s.clusterLocal()
	s.internalListeners()
	s.forgedDeadLetter()
	s.templateSecrets()
	s.forgedDecision()
	s.poisonEvent()
	wg.Wait()
	s.redisStopped()
	s.redisRestart()
	s.account()
	s.report()
}

// send posts a binary-mode event and returns the status and body.
func (s *suite) send(broker, id, typ string, header map[string]string, contentType string, data []byte) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, s.rt.BrokerURL(ns, broker), bytes.NewReader(data))
	req.Header.Set("Ce-Specversion", "1.0")
	req.Header.Set("Ce-Id", id)
	req.Header.Set("Ce-Type", typ)
	req.Header.Set("Ce-Source", "/adversarial")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return s.do(req)
}

func (s *suite) do(req *http.Request) (int, string) {
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func (s *suite) seen(recorder, id string) int {
	n, _ := s.rdb.HGet(context.Background(), "knfaas:test:recorder:"+recorder+":seen", id).Int()
	return n
}

func short(s string) string {
	if len(s) > 70 {
		return s[:70] + "…"
	}
	return s
}

func (s *suite) oversizedAttributes() {
	// Structured mode lets a 1.2 MB extension past every header limit: once stored, no
	// subscriber or dead-letter sink could receive it in binary mode.
	big := strings.Repeat("x", 1200<<10)
	body := fmt.Sprintf(`{"specversion":"1.0","id":"adv-bigattr","type":%q,"source":"/adversarial","poisonattr":%q,"data":{}}`, subType, big)
	req, _ := http.NewRequest(http.MethodPost, s.rt.BrokerURL(ns, "default"), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	code, msg := s.do(req)
	s.add(row{attack: "1.2 MB extension attribute (structured mode)", answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "not stored",
		failed: code < 400 || code >= 500 || !strings.Contains(msg, "poisonattr")})

	code, msg = s.send("default", "adv-hdrattr", subType, map[string]string{"Ce-Poisonattr": strings.Repeat("y", 8<<10)}, "text/plain", []byte("x"))
	s.add(row{attack: "8 KiB extension attribute (binary mode)", answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "not stored",
		failed: code < 400 || code >= 500 || !strings.Contains(msg, "poisonattr")})

	hdr := map[string]string{}
	for i := range 200 {
		hdr[fmt.Sprintf("Ce-Ext%d", i)] = strings.Repeat("z", 200)
	}
	code, msg = s.send("default", "adv-manyattr", subType, hdr, "text/plain", []byte("x"))
	s.add(row{attack: "200 extensions of 200 B (40 KB of attributes)", answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "not stored",
		failed: code < 400 || code >= 500})
}

func (s *suite) oversizedEvent() {
	data := bytes.Repeat([]byte("a"), 5<<20)
	code, msg := s.send("default", "adv-huge", subType, nil, "text/plain", data)
	s.add(row{attack: "5 MiB event (Broker default limit 4 MiB)", answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "not stored",
		failed: code != http.StatusRequestEntityTooLarge})
}

// byteExact sends data that a JSON re-encoder would change, in both modes, and compares what the
// subscriber received byte for byte.
func (s *suite) byteExact() {
	random := make([]byte, 4096)
	_, _ = rand.Read(random)
	jsonData := []byte("{\n  \"html\": \"<b>&amp;</b> & <i>\",\n  \"n\": 1.50,   \"u\": \"\\u00e9\"\n}")
	cases := []struct {
		name, id, ctype string
		data            []byte
		structured      bool
	}{
		{"JSON with whitespace and <>& (binary)", "adv-bytes-json-bin", "application/json", jsonData, false},
		{"JSON with whitespace and <>& (structured)", "adv-bytes-json-str", "application/json", jsonData, true},
		{"text (binary)", "adv-bytes-text", "text/plain; charset=utf-8", []byte("  line one\r\nline <two> & \n"), false},
		{"4 KiB random bytes (binary)", "adv-bytes-octets", "application/octet-stream", random, false},
		{"4 KiB random bytes (structured, data_base64)", "adv-bytes-b64", "application/octet-stream", random, true},
	}
	for _, c := range cases {
		var code int
		var msg string
		if !c.structured {
			code, msg = s.send("default", c.id, subType, nil, c.ctype, c.data)
		} else {
			env := fmt.Sprintf(`{"specversion":"1.0","id":%q,"type":%q,"source":"/adversarial","datacontenttype":%q,`, c.id, subType, c.ctype)
			if strings.HasPrefix(c.ctype, "application/json") {
				env += `"data":` + string(c.data) + `}`
			} else {
				env += `"data_base64":"` + base64.StdEncoding.EncodeToString(c.data) + `"}`
			}
			req, _ := http.NewRequest(http.MethodPost, s.rt.BrokerURL(ns, "default"), strings.NewReader(env))
			req.Header.Set("Content-Type", "application/cloudevents+json")
			code, msg = s.do(req)
		}
		if code != http.StatusAccepted {
			s.add(row{attack: "byte-exact data: " + c.name, answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "refused", failed: true})
			continue
		}
		s.accept(c.id, "sub")
		var got []byte
		ok := waitFor(time.Minute, func() bool {
			b, err := s.rdb.HGet(context.Background(), "knfaas:test:recorder:sub:data", c.id).Bytes()
			got = b
			return err == nil
		})
		effect := "delivered byte for byte"
		failed := false
		switch {
		case !ok:
			effect, failed = "not delivered within 1m", true
		case !bytes.Equal(got, c.data):
			effect, failed = fmt.Sprintf("delivered CHANGED: %q", short(string(got))), true
		}
		s.add(row{attack: "byte-exact data: " + c.name, answer: "202", effect: effect, failed: failed})
	}
}

func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clusterLocal asks the public listener for every cluster-local Service.
func (s *suite) clusterLocal() {
	for _, svc := range []string{"deadletter", "eventstore", "process", "timer", "inner"} {
		req, _ := http.NewRequest(http.MethodGet, s.rt.ServiceURL(ns, svc)+"/", nil)
		code, msg := s.do(req)
		s.add(row{attack: "public request to cluster-local Service " + svc, answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "not served",
			failed: code != http.StatusNotFound})
	}
	// Routing to a cluster-local Service still works from inside: a Trigger delivers to it.
	code, msg := s.send("default", "adv-inner-1", innerType, nil, "application/json", []byte(`{}`))
	delivered := code == http.StatusAccepted && waitFor(time.Minute, func() bool { return s.seen("inner", "adv-inner-1") > 0 })
	if code == http.StatusAccepted {
		s.accept("adv-inner-1", "inner")
	}
	s.add(row{attack: "Trigger to a cluster-local Service (control)", answer: fmt.Sprintf("%d %s", code, short(msg)), effect: map[bool]string{true: "delivered in-process", false: "NOT delivered"}[delivered],
		failed: !delivered})
}

// internalListeners finds every TCP port the runtime process itself listens on besides the
// public one and sends it what a local attacker would: a dead letter and an event.
func (s *suite) internalListeners() {
	_, public, _ := net.SplitHostPort(s.rt.Addr())
	tried := 0
	for _, port := range s.rt.ListeningPorts() {
		p := fmt.Sprint(port)
		if p == public {
			continue
		}
		tried++
		base := "http://127.0.0.1:" + p
		for _, path := range []string{"/", "/knfaas/default"} {
			req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(`{}`))
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", "adv-internal-"+p)
			req.Header.Set("Ce-Type", subType)
			req.Header.Set("Ce-Source", "/adversarial")
			req.Header.Set("Content-Type", "application/json")
			code, msg := s.do(req)
			s.add(row{attack: "plain loopback POST to internal listener :" + p + path, answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "refused",
				failed: code < 400})
		}
	}
	if tried == 0 {
		s.add(row{attack: "plain loopback client on internal listeners", answer: "-", effect: "the runtime listens on no port besides the public one"})
	}
}

// forgedDeadLetter tries to plant a letter through the public listener.
func (s *suite) forgedDeadLetter() {
	store := deadletter.NewStore(s.rdb, deadletter.Options{})
	before, _ := store.List(context.Background(), deadletter.Filter{})
	req, _ := http.NewRequest(http.MethodPost, s.rt.ServiceURL(ns, "deadletter")+"/", strings.NewReader(`{"planted":true}`))
	req.Header.Set("Ce-Specversion", "1.0")
	req.Header.Set("Ce-Id", "adv-planted")
	req.Header.Set("Ce-Type", "dev.knfaas.test.planted")
	req.Header.Set("Ce-Source", "/adversarial")
	req.Header.Set("Ce-Knativeerrordest", "http://victim")
	req.Header.Set("Content-Type", "application/json")
	code, msg := s.do(req)
	time.Sleep(500 * time.Millisecond)
	after, _ := store.List(context.Background(), deadletter.Filter{})
	planted := false
	for _, l := range after {
		if l.EventID == "adv-planted" {
			planted = true
		}
	}
	s.add(row{attack: "forged dead letter via the public listener", answer: fmt.Sprintf("%d %s", code, short(msg)),
		effect: fmt.Sprintf("letters %d → %d, planted=%v", len(before), len(after), planted), failed: planted || code < 400})
}

// templateSecrets signs a GitHub delivery with the template's placeholder secret: it must not
// be a key anyone can sign with.
func (s *suite) templateSecrets() {
	body := `{"ref":"refs/heads/main","repository":{"full_name":"octo/adv"}}`
	post := func(id, secret string) (int, string) {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(body))
		req, _ := http.NewRequest(http.MethodPost, s.rt.ServiceURL(ns, "webhook")+"/github", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-GitHub-Delivery", id)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		return s.do(req)
	}
	code, msg := post("adv-template-secret", "CHANGE-ME-github-webhook-secret")
	s.add(row{attack: "webhook signed with the template secret CHANGE-ME-…", answer: fmt.Sprintf("%d %s", code, short(msg)), effect: "not published",
		failed: code != http.StatusUnauthorized})
	dev := s.rt.DevSecret(ns, "webhook-secrets", "github", "CHANGE-ME-github-webhook-secret")
	if dev == "" || strings.Contains(dev, "CHANGE-ME") {
		s.add(row{attack: "development secret generated for the template", answer: "-", effect: "missing or a placeholder: " + dev, failed: true})
		return
	}
	var code2 int
	for range 20 {
		code2, msg = post("adv-dev-secret", dev)
		if code2 != http.StatusServiceUnavailable && code2 != http.StatusConflict {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	s.add(row{attack: "webhook signed with the generated development secret (control)", answer: fmt.Sprintf("%d %s", code2, short(msg)), effect: "published",
		failed: code2 != http.StatusAccepted})
}

// forgedDecision completes a human task by posting the decision event to the Broker directly,
// with every field right but the signature only the tasks function can make.
func (s *suite) forgedDecision() {
	ctx := context.Background()
	order := "adv-approve"
	e := fmt.Sprintf(`{"orderId":%q,"amount":250}`, order)
	code, msg := s.send("default", order+"-placed", "dev.knfaas.example.food.order.placed", map[string]string{"Ce-Subject": order}, "application/json", []byte(e))
	if code != http.StatusAccepted {
		s.add(row{attack: "forged task decision", answer: fmt.Sprintf("%d %s", code, msg), effect: "setup failed: order not accepted", failed: true})
		return
	}
	var task process.Task
	if !waitFor(2*time.Minute, func() bool {
		tasks, err := process.ListOpenTasks(ctx, s.rdb, process.TaskFilter{}, 100)
		for _, t := range tasks {
			if t.Instance == order && err == nil {
				task = t
				return true
			}
		}
		return false
	}) {
		s.add(row{attack: "forged task decision", answer: "-", effect: "setup failed: no approval task opened", failed: true})
		return
	}
	forge := func(id, actor string, ext map[string]string) (int, string) {
		h := map[string]string{
			"Ce-Subject": order, "Ce-Knfaasowner": task.Owner, "Ce-Knfaascommand": task.ID,
			"Ce-Knfaasactor": actor, "Ce-Knfaasprocess": task.Process, "Ce-Knfaasstep": task.Step,
		}
		for k, v := range ext {
			h[k] = v
		}
		return s.send("default", id, process.TypeTaskCompleted, h, "application/json", []byte(`{"approved":true}`))
	}
	code, msg = forge("adv-forged-1", "mallory", nil)
	code2, _ := forge("adv-forged-2", "mallory", map[string]string{"Ce-Knfaassignature": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)), "Ce-Knfaastime": fmt.Sprint(time.Now().Unix())})
	time.Sleep(4 * time.Second)
	inst, _ := process.ReadInstance(ctx, s.rdb, order)
	t2, _ := process.GetTask(ctx, s.rdb, task.ID)
	state := "?"
	if t2 != nil {
		state = t2.State
	}
	status := ""
	if inst != nil {
		status = inst.Status
	}
	s.add(row{attack: "forged task decision via the Broker (no / bad signature)", answer: fmt.Sprintf("%d, %d", code, code2),
		effect: fmt.Sprintf("task %s, process %s", state, status), failed: state != "open" || status == "completed"})

	// The real decision through the tasks API is applied once; a second one is refused.
	token := managerToken(s.rt)
	decide := func() int {
		req, _ := http.NewRequest(http.MethodPost, s.rt.ServiceURL(ns, "tasks")+"/tasks/"+task.ID+"/complete", strings.NewReader(`{"by":"adversarial"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		c, _ := s.do(req)
		return c
	}
	first, second := decide(), decide()
	done := waitFor(2*time.Minute, func() bool {
		in, err := process.ReadInstance(ctx, s.rdb, order)
		return err == nil && in.Status == "completed"
	})
	s.add(row{attack: "real decision, then a second one (control)", answer: fmt.Sprintf("%d, %d", first, second),
		effect: map[bool]string{true: "process completed once", false: "process NOT completed"}[done], failed: !done || first >= 300 || second < 400})
}

// managerToken is the manager's token: the development secret `knfaas up` generated for the
// placeholder of config/320-tasks-auth-secret.yaml.
func managerToken(rt *runtimetest.Runtime) string {
	return rt.DevSecret(ns, "tasks-auth", "tokens", "CHANGE-ME-manager-token-000000")
}

// poisonEvent sends an event that neither the subscriber nor the dead-letter sink will ever take:
// it must be parked where operators see it, and must not hold the stream.
func (s *suite) poisonEvent() {
	ctx := context.Background()
	code, msg := s.send("poison", "adv-poison-1", poisonType, map[string]string{"Ce-Failtimes": "1000000"}, "application/json", []byte(`{"poison":true}`))
	if code != http.StatusAccepted {
		s.add(row{attack: "poison event (subscriber and dead-letter sink always fail)", answer: fmt.Sprintf("%d %s", code, msg), effect: "refused", failed: true})
		return
	}
	store := deadletter.NewStore(s.rdb, deadletter.Options{})
	var parked *deadletter.Letter
	waitFor(2*time.Minute, func() bool {
		ls, _ := store.List(ctx, deadletter.Filter{})
		for _, l := range ls {
			if l.EventID == "adv-poison-1" && l.Reason == deadletter.ReasonParked {
				parked = &l
				return true
			}
		}
		return false
	})
	code2, _ := s.send("poison", "adv-poison-after", poisonType, nil, "application/json", []byte(`{}`))
	if code2 == http.StatusAccepted {
		s.accept("adv-poison-after", "sub")
	}
	flows := waitFor(time.Minute, func() bool { return s.seen("sub", "adv-poison-after") > 0 })
	stream := broker.StreamKey(ns, "poison")
	trimmed := waitFor(30*time.Second, func() bool {
		n, _ := s.rdb.XLen(ctx, stream).Result()
		return n <= 1
	})
	pending, _ := s.rdb.XPending(ctx, stream, "trigger:knfaas/sub-poison").Result()
	var np int64
	if pending != nil {
		np = pending.Count
	}
	effect := fmt.Sprintf("parked=%v, next event delivered=%v, stream trimmed=%v, pending=%d", parked != nil, flows, trimmed, np)
	lost := 0
	if parked == nil {
		lost = 1
	}
	s.add(row{attack: "poison event (subscriber and dead-letter sink always fail)", answer: "202", effect: effect, lost: lost,
		failed: parked == nil || !flows || !trimmed || np != 0})
}

// slowBodyBroker declares a body and never sends it.
func (s *suite) slowBodyBroker() {
	_, port, _ := net.SplitHostPort(s.rt.Addr())
	s.slowBody("slow body to the Broker ingress", "127.0.0.1:"+port, "localhost", "/knfaas/default", " 408 ", func() bool {
		code, _ := s.send("default", "adv-during-slow", subType, nil, "application/json", []byte(`{}`))
		if code == http.StatusAccepted {
			s.accept("adv-during-slow", "sub")
		}
		return code == http.StatusAccepted
	})
}

func (s *suite) slowBodyFunction() {
	_, port, _ := net.SplitHostPort(s.rt.Addr())
	s.slowBody("slow body to a function (timeoutSeconds 2, concurrency 1)", "127.0.0.1:"+port, "slowfn.knfaas.localhost", "/", " 504 ", func() bool {
		req, _ := http.NewRequest(http.MethodPost, s.rt.ServiceURL(ns, "slowfn")+"/", strings.NewReader(`{}`))
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "adv-slowfn-ok")
		req.Header.Set("Ce-Type", subType)
		req.Header.Set("Ce-Source", "/adversarial")
		req.Header.Set("Content-Type", "application/json")
		code, _ := s.do(req)
		return code < 300
	})
}

func (s *suite) slowBodyWebhook() {
	_, port, _ := net.SplitHostPort(s.rt.Addr())
	s.slowBody("slow body to the webhook intake", "127.0.0.1:"+port, "webhook.knfaas.localhost", "/github", " 504 ", func() bool {
		req, _ := http.NewRequest(http.MethodPost, s.rt.ServiceURL(ns, "webhook")+"/github", strings.NewReader(`{}`))
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-GitHub-Delivery", "adv-unsigned")
		code, _ := s.do(req)
		return code == http.StatusUnauthorized // answered: the intake was not held up
	})
}

// slowBody opens a request with Content-Length 1000, sends 10 bytes and stalls; meanwhile a
// normal request must be served, and the stalled one must be cut off within a bound with the
// status want (408 from the Broker ingress, 504 from a Service, as Knative's queue-proxy).
func (s *suite) slowBody(attack, addr, host, path, want string, normal func() bool) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		s.add(row{attack: attack, answer: err.Error(), failed: true})
		return
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nCe-Specversion: 1.0\r\nCe-Id: adv-slow\r\nCe-Type: %s\r\nCe-Source: /adversarial\r\nContent-Length: 1000\r\n\r\n{\"slow\": 1", path, host, subType)
	time.Sleep(300 * time.Millisecond)
	served := normal()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	status, _ := bufio.NewReader(conn).ReadString('\n')
	took := time.Since(start).Round(100 * time.Millisecond)
	answer := strings.TrimSpace(status)
	if answer == "" {
		answer = "connection closed"
	}
	s.add(row{attack: attack, answer: fmt.Sprintf("%s after %s", answer, took),
		effect: fmt.Sprintf("normal request served meanwhile=%v", served), failed: !served || took > 90*time.Second || !strings.Contains(answer, want)})
}

// slowloris trickles header bytes.
func (s *suite) slowloris() {
	conn, err := net.Dial("tcp", s.rt.Addr())
	if err != nil {
		s.add(row{attack: "slowloris headers", answer: err.Error(), failed: true})
		return
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /knfaas/default HTTP/1.1\r\nHost: localhost\r\n")
	closed := false
	for range 120 {
		if _, err := conn.Write([]byte("X")); err != nil {
			closed = true
			break
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 128)
		if n, err := conn.Read(buf); n > 0 || (err != nil && !isTimeout(err)) {
			closed = true
			break
		}
	}
	took := time.Since(start).Round(100 * time.Millisecond)
	s.add(row{attack: "slowloris headers (1 byte/s) on the public listener", answer: fmt.Sprintf("cut off=%v after %s", closed, took), effect: "connection dropped",
		failed: !closed})
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// redisStopped freezes Redis (SIGSTOP): the ingress must answer 503 (or 504: neither the
// append nor its lookup answered) within its bound, and an event so answered must never be
// stored later.
func (s *suite) redisStopped() {
	const n = 10
	s.srv.Stop()
	type res struct {
		code int
		took time.Duration
	}
	results := make([]res, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			code, _ := s.send("default", fmt.Sprintf("adv-frozen-%d", i), subType, nil, "application/json", []byte(`{}`))
			results[i] = res{code, time.Since(start)}
		}()
	}
	wg.Wait()
	s.srv.Cont()
	var slowest time.Duration
	codes := map[int]int{}
	for i, r := range results {
		codes[r.code]++
		slowest = max(slowest, r.took)
		if r.code == http.StatusAccepted {
			s.accept(fmt.Sprintf("adv-frozen-%d", i), "sub")
		}
	}
	// Give anything that was queued time to land, then look for the refused ones.
	time.Sleep(6 * time.Second)
	landed := 0
	for i, r := range results {
		if r.code != http.StatusAccepted && s.seen("sub", fmt.Sprintf("adv-frozen-%d", i)) > 0 {
			landed++
		}
	}
	s.add(row{attack: "Redis frozen (SIGSTOP) while 10 events arrive", answer: fmt.Sprintf("%v, slowest %s", codes, slowest.Round(100*time.Millisecond)),
		effect: fmt.Sprintf("refused events stored later: %d", landed), duplicated: landed, failed: landed > 0 || codes[http.StatusServiceUnavailable]+codes[http.StatusGatewayTimeout]+codes[http.StatusAccepted] != n || slowest > 15*time.Second})
}

// redisRestart kills Redis mid-burst and starts it again on its append-only file.
func (s *suite) redisRestart() {
	const n = 300
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := range n {
		if i == n/2 {
			s.srv.Restart()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("adv-restart-%d", i)
			code, _ := s.send("default", id, subType, nil, "application/json", []byte(`{}`))
			mu.Lock()
			codes[code]++
			mu.Unlock()
			if code == http.StatusAccepted {
				s.accept(id, "sub")
			}
		}()
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	s.add(row{attack: "Redis kill -9 and restart mid-burst (300 events)", answer: fmt.Sprint(codes), effect: "accepted ones accounted below"})
}

// account checks every accepted event reached its recorder (or the dead-letter store) and
// counts duplicates.
func (s *suite) account() {
	ctx := context.Background()
	store := deadletter.NewStore(s.rdb, deadletter.Options{})
	waitFor(2*time.Minute, func() bool {
		for id, rec := range s.accepted {
			if s.seen(rec, id) == 0 {
				return false
			}
		}
		return true
	})
	letters, _ := store.List(ctx, deadletter.Filter{})
	inStore := map[string]bool{}
	for _, l := range letters {
		inStore[l.EventID] = true
	}
	lost, dup, delivered := 0, 0, 0
	for id, rec := range s.accepted {
		n := s.seen(rec, id)
		switch {
		case n > 0:
			delivered++
			dup += n - 1
		case inStore[id]:
		default:
			lost++
			s.t.Errorf("accepted event %s never reached %s nor the dead-letter store", id, rec)
		}
	}
	s.add(row{attack: "all accepted events", answer: fmt.Sprintf("%d accepted", len(s.accepted)),
		effect: fmt.Sprintf("%d delivered, %d in the dead-letter store", delivered, len(s.accepted)-delivered-lost), lost: lost, duplicated: dup, failed: lost > 0})
}

func (s *suite) report() {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "attack\tanswer\teffect\tlost\tduplicated\tok")
	for _, r := range s.rows {
		ok := "yes"
		if r.failed {
			ok = "NO"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", r.attack, r.answer, r.effect, r.lost, r.duplicated, ok)
	}
	_ = w.Flush()
	s.t.Logf("adversarial suite:\n%s", b.String())
	fmt.Print("adversarial suite:\n" + b.String())
	if s.t.Failed() {
		s.t.Logf("knfaas up output (tail):\n%s", tail(s.rt.Output(), 80))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
