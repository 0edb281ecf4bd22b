package dashboard

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

const testAddr = "127.0.0.1:8123"

// recordingPublisher accepts every event and keeps it.
type recordingPublisher struct {
	mu   sync.Mutex
	sent []event.Event
}

func (p *recordingPublisher) Send(_ context.Context, e event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = append(p.sent, e)
	return nil
}

func (p *recordingPublisher) ids() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range p.sent {
		out = append(out, e.ID())
	}
	return out
}

type fixture struct {
	h       *Handler
	rdb     *redis.Client
	letters *deadletter.Store
	pub     *recordingPublisher
	metrics *metrics.Runtime
	traces  *tracestore.Store
}

func newFixture(t *testing.T, addr string) *fixture {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	f := &fixture{rdb: rdb, letters: deadletter.NewStore(rdb, deadletter.Options{}), pub: &recordingPublisher{}, metrics: metrics.New(), traces: tracestore.New(tracestore.Options{})}
	h, err := New(Options{
		Addr: addr, Metrics: f.metrics, Traces: f.traces, Redis: rdb, DeadLetters: f.letters,
		Services: []Service{{Key: "knfaas/echo", Instances: func() int { return 2 }}},
		Triggers: []Trigger{{Key: "knfaas/failing", Broker: "knfaas/default", Subscriber: "Service echo"}},
		Brokers:  []string{"knfaas/default"},
		Publisher: func(string) (deadletter.Publisher, error) {
			return f.pub, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	return f
}

// addLetter stores a dead letter of an event with id and type, and returns the letter id.
func (f *fixture) addLetter(t *testing.T, id, typ string) string {
	t.Helper()
	e := event.New()
	e.SetID(id)
	e.SetType(typ)
	e.SetSource("/test")
	_ = e.SetData("application/json", map[string]string{"note": "<b>bold</b>"})
	e.SetExtension(deadletter.ExtTrigger, "knfaas/failing")
	e.SetExtension(deadletter.ExtErrorCode, "503")
	l, err := deadletter.FromEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	letter, _, err := f.letters.Add(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	return letter
}

type request struct {
	method, path, host string
	form               url.Values
	header             map[string]string
	cookie             string
}

// do serves one request and returns its status, body and response.
func (f *fixture) do(t *testing.T, r request) (int, string, *http.Response) {
	t.Helper()
	var body io.Reader
	if r.form != nil {
		body = strings.NewReader(r.form.Encode())
	}
	req := httptest.NewRequest(r.method, "http://"+testAddr+r.path, body)
	if r.host != "" {
		req.Host = r.host
	}
	if r.form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	if r.cookie != "" {
		req.AddCookie(&http.Cookie{Name: f.h.cookie, Value: r.cookie})
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req)
	res := w.Result()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res
}

// session gets a session cookie from a GET, as a browser does, and its CSRF token.
func (f *fixture) session(t *testing.T) (cookie, token string) {
	t.Helper()
	_, _, res := f.do(t, request{method: http.MethodGet, path: "/ui/"})
	for _, c := range res.Cookies() {
		if c.Name == f.h.cookie {
			if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
				t.Errorf("session cookie %+v: want HttpOnly and SameSite=Strict", c)
			}
			return c.Value, f.h.csrf.token(c.Value)
		}
	}
	t.Fatal("GET /ui/ set no session cookie")
	return "", ""
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, testAddr)
	letter := f.addLetter(t, "ev-refused", "test.refused")
	cookie, token := f.session(t)
	otherCookie, _ := f.session(t)
	redrive := "/ui/deadletters/" + letter + "/redrive"
	cases := []struct {
		name       string
		req        request
		wantStatus int
		wantBody   string
	}{
		{"rebound DNS name in Host", request{method: http.MethodGet, path: "/ui/", host: "attacker.example:8123"}, http.StatusForbidden, "Host header"},
		{"loopback Host with another port", request{method: http.MethodGet, path: "/ui/", host: "127.0.0.1:9999"}, http.StatusForbidden, "Host header"},
		{"subdomain of localhost in Host", request{method: http.MethodGet, path: "/ui/", host: "evil.localhost:8123"}, http.StatusForbidden, "Host header"},
		{"rebound name in Host on a POST with a valid token", request{method: http.MethodPost, path: redrive, host: "attacker.example:8123", cookie: cookie,
			form: url.Values{"csrf": {token}, "broker": {"knfaas/default"}}}, http.StatusForbidden, "Host header"},
		{"GET redrive", request{method: http.MethodGet, path: redrive, cookie: cookie}, http.StatusMethodNotAllowed, ""},
		{"POST without a session cookie", request{method: http.MethodPost, path: redrive, form: url.Values{"csrf": {token}, "broker": {"knfaas/default"}}}, http.StatusForbidden, "session cookie"},
		{"POST without a token", request{method: http.MethodPost, path: redrive, cookie: cookie, form: url.Values{"broker": {"knfaas/default"}}}, http.StatusForbidden, "no CSRF token"},
		{"POST with a wrong token", request{method: http.MethodPost, path: redrive, cookie: cookie, form: url.Values{"csrf": {"AAAA" + token[4:]}, "broker": {"knfaas/default"}}}, http.StatusForbidden, "wrong CSRF token"},
		{"POST with another session's token", request{method: http.MethodPost, path: redrive, cookie: otherCookie, form: url.Values{"csrf": {token}, "broker": {"knfaas/default"}}}, http.StatusForbidden, "wrong CSRF token"},
		{"POST from another site's Origin", request{method: http.MethodPost, path: redrive, cookie: cookie, header: map[string]string{"Origin": "http://attacker.example"},
			form: url.Values{"csrf": {token}, "broker": {"knfaas/default"}}}, http.StatusForbidden, "Origin header"},
		{"POST marked cross-site by the browser", request{method: http.MethodPost, path: redrive, cookie: cookie, header: map[string]string{"Sec-Fetch-Site": "cross-site"},
			form: url.Values{"csrf": {token}, "broker": {"knfaas/default"}}}, http.StatusForbidden, "cross-site"},
		{"redrive to a broker not in the run", request{method: http.MethodPost, path: redrive, cookie: cookie, form: url.Values{"csrf": {token}, "broker": {"other/broker"}}}, http.StatusBadRequest, "not a broker of this run"},
		{"limit above the bound", request{method: http.MethodGet, path: "/ui/deadletters?limit=100000"}, http.StatusBadRequest, "want 1 to 200"},
		{"limit not a number", request{method: http.MethodGet, path: "/ui/events?limit=all"}, http.StatusBadRequest, "want 1 to 200"},
		{"letter id not a stream id", request{method: http.MethodGet, path: "/ui/deadletters/..%2Fx"}, http.StatusBadRequest, "stream entry id"},
		{"event id over the bound", request{method: http.MethodGet, path: "/ui/events/" + strings.Repeat("x", maxIDLength+1)}, http.StatusBadRequest, "want 1 to 256 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body, _ := f.do(t, c.req)
			if status != c.wantStatus || !strings.Contains(body, c.wantBody) {
				t.Errorf("status %d, body %q; want %d with %q", status, truncate(body, 300), c.wantStatus, c.wantBody)
			}
		})
	}
	if sent := f.pub.ids(); len(sent) != 0 {
		t.Errorf("refused requests published %v", sent)
	}
	if _, err := f.letters.Get(context.Background(), letter); err != nil {
		t.Errorf("the letter is gone after refused requests: %v", err)
	}
}

func TestNotServedOnANonLoopbackListener(t *testing.T) {
	cases := []struct {
		name, addr string
		want       int
	}{
		{"loopback IPv4", "127.0.0.1:8123", http.StatusOK},
		{"every interface", "0.0.0.0:8123", http.StatusForbidden},
		{"a LAN address", "192.168.1.10:8123", http.StatusForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := New(Options{Addr: c.addr})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "http://"+c.addr+"/ui/", nil)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != c.want {
				t.Errorf("GET /ui/ on %s: %d %s, want %d", c.addr, w.Code, w.Body, c.want)
			}
		})
	}
}

func TestAllowedHosts(t *testing.T) {
	cases := []struct {
		name, host, port string
		want             []string
	}{
		{"IPv4 loopback", "127.0.0.1", "8080", []string{"127.0.0.1:8080", "localhost:8080"}},
		{"IPv6 loopback", "::1", "8080", []string{"[::1]:8080", "localhost:8080"}},
		{"port 80 without the port too", "127.0.0.1", "80", []string{"127.0.0.1:80", "127.0.0.1", "localhost:80", "localhost"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := allowedHosts(c.host, c.port)
			if len(got) != len(c.want) {
				t.Errorf("allowed %v, want %v", got, c.want)
			}
			for _, w := range c.want {
				if !got[w] {
					t.Errorf("%s not allowed (have %v)", w, got)
				}
			}
		})
	}
}

func TestRedriveWithTheSessionsTokenPublishesAndRemovesTheLetter(t *testing.T) {
	f := newFixture(t, testAddr)
	letter := f.addLetter(t, "ev-redrive", "test.redrive")
	cookie, token := f.session(t)
	status, body, _ := f.do(t, request{method: http.MethodPost, path: "/ui/deadletters/" + letter + "/redrive", host: "localhost:8123", cookie: cookie,
		header: map[string]string{"Origin": "http://localhost:8123"}, form: url.Values{"csrf": {token}, "broker": {"knfaas/default"}}})
	if status != http.StatusOK || !strings.Contains(body, "accepted") {
		t.Fatalf("redrive: %d %s", status, body)
	}
	if got := f.pub.ids(); len(got) != 1 || got[0] != "ev-redrive" {
		t.Errorf("published %v, want [ev-redrive]", got)
	}
	if _, err := f.letters.Get(context.Background(), letter); err == nil {
		t.Error("the letter is still stored after an accepted redrive")
	}
}

func TestPagesShowTheRunEscaped(t *testing.T) {
	f := newFixture(t, testAddr)
	letter := f.addLetter(t, "ev-<script>", "test.<script>alert(1)</script>")
	f.metrics.EventsDelivered.WithLabelValues("knfaas/default", "knfaas/failing").Add(7)
	f.metrics.EventsRetried.WithLabelValues("knfaas/default", "knfaas/failing").Add(3)
	f.metrics.EventsDeadLettered.WithLabelValues("knfaas/default", "knfaas/failing").Add(5)
	f.metrics.ColdStart("knfaas", "echo", 40*time.Millisecond)
	f.metrics.ColdStart("knfaas", "echo", 60*time.Millisecond)
	start := time.Now()
	f.traces.Add([]tracestore.Span{
		{TraceID: "t1", SpanID: "a", Name: "publish test.journey", Service: "knfaas-up", Start: start, End: start.Add(time.Millisecond),
			Attributes: map[string]string{tracing.AttrEventID: "ev-journey"}},
		{TraceID: "t1", SpanID: "b", ParentSpanID: "a", Name: "deliver knfaas/failing", Service: "knfaas-up", Start: start.Add(time.Millisecond), End: start.Add(9 * time.Millisecond),
			Status: "error", StatusMessage: "503 <from> echo", Attributes: map[string]string{tracing.AttrEventID: "ev-journey", tracing.AttrAttempt: "2"}},
		{TraceID: "t2", SpanID: "c", Name: "handle urn", Start: start, End: start.Add(time.Millisecond), Attributes: map[string]string{tracing.AttrEventID: "urn:a/b?c"}},
	})
	cases := []struct {
		name, path string
		want       []string
		never      []string
	}{
		{"services with instances and cold starts", "/ui/", []string{"knfaas/echo", `<td class="n">2</td><td class="n">2</td><td class="n">50ms</td>`}, nil},
		{"triggers with their counts", "/ui/triggers", []string{"knfaas/failing", `<td class="n">7</td><td class="n">3</td><td class="n">5</td>`}, nil},
		{"recent events", "/ui/events", []string{`href="/ui/events/ev-journey"`, "deliver knfaas/failing"}, nil},
		{"a journey as a waterfall", "/ui/events/ev-journey", []string{"publish test.journey", `<td class="d1"><span class="name">deliver knfaas/failing</span>`, "attempt=2", "503 &lt;from&gt; echo", `<rect x="111"`}, []string{"<from>"}},
		{"an event without spans", "/ui/events/ev-none", []string{"No trace holds event"}, nil},
		{"an event id with a slash and a question mark", "/ui/events", []string{`href="/ui/events/urn:a%2Fb%3Fc"`}, nil},
		{"its journey by the escaped id", "/ui/events/urn:a%2Fb%3Fc", []string{"handle urn"}, nil},
		{"dead letters, escaped", "/ui/deadletters", []string{"/ui/deadletters/" + letter, "test.&lt;script&gt;alert(1)&lt;/script&gt;"}, []string{"<script>"}},
		{"one dead letter with its redrive form", "/ui/deadletters/" + letter, []string{`name="csrf"`, `<option value="knfaas/default" selected>`, "&#34;type&#34;: &#34;test.&lt;script&gt;alert(1)&lt;/script&gt;&#34;"}, []string{"<script>", "<b>bold"}},
		{"a letter that is not stored", "/ui/deadletters/1-1", []string{"no dead letter 1-1"}, nil},
		{"processes and open tasks", "/ui/processes", []string{"No process instances.", "No open tasks."}, nil},
		{"the style sheet", "/ui/static/style.css", []string{"table.waterfall"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, body, _ := f.do(t, request{method: http.MethodGet, path: c.path})
			for _, w := range c.want {
				if !strings.Contains(body, w) {
					t.Errorf("%s lacks %q:\n%s", c.path, w, body)
				}
			}
			for _, n := range c.never {
				if strings.Contains(body, n) {
					t.Errorf("%s holds %q unescaped", c.path, n)
				}
			}
		})
	}
}

func TestPagesThatReadRedisSayWhenTheRunHasNone(t *testing.T) {
	h, err := New(Options{Addr: testAddr})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		want       int
	}{
		{"services", "/ui/", http.StatusOK},
		{"events", "/ui/events", http.StatusOK},
		{"dead letters", "/ui/deadletters", http.StatusServiceUnavailable},
		{"one dead letter", "/ui/deadletters/1-0", http.StatusServiceUnavailable},
		{"processes", "/ui/processes", http.StatusServiceUnavailable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://"+testAddr+c.path, nil))
			if w.Code != c.want || (c.want != http.StatusOK && !strings.Contains(w.Body.String(), "no Redis in this run")) {
				t.Errorf("GET %s: %d %s, want %d", c.path, w.Code, truncate(w.Body.String(), 200), c.want)
			}
		})
	}
}

func TestProcessPagesShowInstancesTimelinesAndOpenTasks(t *testing.T) {
	f := newFixture(t, testAddr)
	ctx := context.Background()
	now := time.Now().UnixMilli()
	ms := func(d time.Duration) string { return strconv.FormatInt(now+d.Milliseconds(), 10) }
	f.rdb.HSet(ctx, process.KeyInstancePrefix+"order-1", "process", "checkout<&>", "status", "running", "seq", "2", "created", ms(-time.Minute), "updated", ms(0))
	f.rdb.RPush(ctx, process.KeyTimelinePrefix+"order-1",
		`{"seq":1,"at":`+ms(-time.Minute)+`,"kind":"event-in","id":"ev-start","type":"shop.order.placed"}`,
		`{"seq":2,"at":`+ms(0)+`,"kind":"command-out","id":"cmd-1","type":"shop.payment.charge","step":"pay"}`)
	f.rdb.ZAdd(ctx, process.KeyInstances, redis.Z{Score: float64(now), Member: "order-1"})
	f.rdb.HSet(ctx, process.KeyTaskPrefix+"task-1", "id", "task-1", "process", "checkout<&>", "instance", "order-1", "step", "approve",
		"title", "Approve <order>", "state", "open", "created", ms(0), "expires", ms(time.Hour))
	f.rdb.ZAdd(ctx, process.KeyOpenTasks, redis.Z{Score: float64(now), Member: "task-1"})
	cases := []struct {
		name, path string
		wantStatus int
		want       []string
	}{
		{"instances and open tasks", "/ui/processes", http.StatusOK, []string{`href="/ui/processes/order-1"`, "checkout&lt;&amp;&gt;", "Approve &lt;order&gt;", "task-1"}},
		{"an instance's timeline", "/ui/processes/order-1", http.StatusOK, []string{"running", "event-in", `href="/ui/events/ev-start"`, "shop.payment.charge", "pay"}},
		{"an instance that is not stored", "/ui/processes/order-2", http.StatusNotFound, []string{"no process instance order-2"}},
		{"a limit out of bounds", "/ui/processes?limit=0", http.StatusBadRequest, []string{"want 1 to 200"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body, _ := f.do(t, request{method: http.MethodGet, path: c.path})
			if status != c.wantStatus {
				t.Errorf("GET %s: %d, want %d", c.path, status, c.wantStatus)
			}
			for _, w := range c.want {
				if !strings.Contains(body, w) {
					t.Errorf("GET %s lacks %q:\n%s", c.path, w, body)
				}
			}
		})
	}
}
