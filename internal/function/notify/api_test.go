package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
)

const apiToken = "test-token-0123456789abcdef"

// verifyStandard checks a delivery as a receiver would, from the Standard Webhooks
// specification and sharing no code with Signer: HMAC-SHA256 keyed with the base64 after
// whsec_, over "<id>.<timestamp>.<body>", matched against any "v1,<base64>" in the header.
func verifyStandard(secret string, h http.Header, body string) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("webhook-id") + "." + h.Get("webhook-timestamp") + "." + body))
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		if v, val, _ := strings.Cut(sig, ","); v == "v1" && hmac.Equal([]byte(val), []byte(want)) {
			return true
		}
	}
	return false
}

// apiFixture is a running dispatcher with its API; configured are ConfigMap endpoints.
func apiFixture(t *testing.T, configured ...*Endpoint) (*fixture, *API) {
	t.Helper()
	f := start(t, Schedule{20 * time.Millisecond}, configured...)
	return f, f.api()
}

func (f *fixture) api() *API {
	return &API{Store: f.store, Dispatcher: f.d, Guard: &Guard{Loopback: true}, Token: apiToken,
		Resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
			switch host {
			case "internal.example":
				return []netip.Addr{netip.MustParseAddr("10.1.2.3")}, nil
			case "public.example":
				return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
			case "mixed.example":
				return []netip.Addr{netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("169.254.169.254")}, nil
			}
			return nil, errors.New("no such host")
		}}
}

// call makes one API request and decodes the JSON answer into out (when not nil).
func call(t *testing.T, a *API, method, path, token string, body any, out any) int {
	t.Helper()
	var rd *bytes.Reader
	switch b := body.(type) {
	case nil:
		rd = bytes.NewReader(nil)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s answered %d %q: %v", method, path, rec.Code, rec.Body, err)
		}
	}
	return rec.Code
}

func TestAPIAuthentication(t *testing.T) {
	f, api := apiFixture(t)
	off := &API{Store: f.store, Dispatcher: f.d, Guard: &Guard{}}
	tests := map[string]struct {
		api    *API
		header string
		want   int
	}{
		"no header":           {api: api, want: http.StatusUnauthorized},
		"wrong token":         {api: api, header: "Bearer not-the-token-at-all", want: http.StatusUnauthorized},
		"token as prefix":     {api: api, header: "Bearer " + apiToken[:10], want: http.StatusUnauthorized},
		"basic scheme":        {api: api, header: "Basic " + apiToken, want: http.StatusUnauthorized},
		"right token":         {api: api, header: "Bearer " + apiToken, want: http.StatusOK},
		"API off without one": {api: off, header: "Bearer " + apiToken, want: http.StatusNotFound},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, APIPrefix, nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			rec := httptest.NewRecorder()
			tc.api.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("answered %d %s, want %d", rec.Code, rec.Body, tc.want)
			}
			if tc.want == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

func TestAPIValidation(t *testing.T) {
	rcv := newReceiver(t, nil)
	_, api := apiFixture(t, endpoint("billing", rcv.URL, 1))
	good := func(change func(m map[string]any)) map[string]any {
		m := map[string]any{"name": "new", "url": rcv.URL, "types": []string{"com.example.*"}}
		if change != nil {
			change(m)
		}
		return m
	}
	tests := map[string]struct {
		body   any
		code   int
		fields []string // the fields the 400 names
	}{
		"bad url scheme":         {body: good(func(m map[string]any) { m["url"] = "ftp://x.example/" }), code: 400, fields: []string{"url"}},
		"bad name and type":      {body: good(func(m map[string]any) { m["name"] = "Bad_Name"; m["types"] = []string{"a b"} }), code: 400, fields: []string{"name", "types"}},
		"no types":               {body: good(func(m map[string]any) { delete(m, "types") }), code: 400, fields: []string{"types"}},
		"reserved header":        {body: good(func(m map[string]any) { m["headers"] = map[string]string{"webhook-id": "x"} }), code: 400, fields: []string{"headers"}},
		"timeout too long":       {body: good(func(m map[string]any) { m["timeout"] = "1h" }), code: 400, fields: []string{"timeout"}},
		"secret not whsec":       {body: good(func(m map[string]any) { m["secret"] = "s3cret" }), code: 400, fields: []string{"secret"}},
		"secret too short":       {body: good(func(m map[string]any) { m["secret"] = "whsec_c2hvcnQ=" }), code: 400, fields: []string{"secret"}},
		"unknown field":          {body: good(func(m map[string]any) { m["secretEnv"] = []string{"X"} }), code: 400, fields: []string{"secretEnv"}},
		"wrong JSON type":        {body: good(func(m map[string]any) { m["concurrency"] = "eight" }), code: 400, fields: []string{"concurrency"}},
		"not JSON":               {body: "name=new", code: 400, fields: []string{"body"}},
		"two JSON values":        {body: `{"name":"a"} {}`, code: 400, fields: []string{"body"}},
		"body too large":         {body: `{"name":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, code: 400, fields: []string{"body"}},
		"private IP literal":     {body: good(func(m map[string]any) { m["url"] = "http://10.0.0.7/hook" }), code: 400, fields: []string{"url"}},
		"metadata address":       {body: good(func(m map[string]any) { m["url"] = "http://169.254.169.254/latest" }), code: 400, fields: []string{"url"}},
		"name resolving private": {body: good(func(m map[string]any) { m["url"] = "https://internal.example/hook" }), code: 400, fields: []string{"url"}},
		"one address of many":    {body: good(func(m map[string]any) { m["url"] = "https://mixed.example/hook" }), code: 400, fields: []string{"url"}},
		"unresolvable name":      {body: good(func(m map[string]any) { m["url"] = "https://nowhere.example/hook" }), code: 400, fields: []string{"url"}},
		"ConfigMap name":         {body: good(func(m map[string]any) { m["name"] = "billing" }), code: 409},
		"public name accepted":   {body: good(func(m map[string]any) { m["name"] = "public"; m["url"] = "https://public.example/hook" }), code: 201},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out apiError
			code := call(t, api, http.MethodPost, APIPrefix, apiToken, tc.body, &out)
			if code != tc.code {
				t.Fatalf("answered %d %+v, want %d", code, out, tc.code)
			}
			var fields []string
			for _, f := range out.Fields {
				fields = append(fields, f.Field)
			}
			for _, want := range tc.fields {
				if !slices.Contains(fields, want) {
					t.Errorf("fields %v (%s), want %q among them", fields, out.Error, want)
				}
			}
		})
	}
}

func TestAPIRefusesToChangeConfigMapEndpoints(t *testing.T) {
	rcv := newReceiver(t, nil)
	_, api := apiFixture(t, endpoint("billing", rcv.URL, 1))
	tests := map[string]struct {
		method, path string
		body         any
	}{
		"update":  {http.MethodPut, APIPrefix + "/billing", map[string]any{"url": rcv.URL, "types": []string{"*"}}},
		"disable": {http.MethodPost, APIPrefix + "/billing/disable", nil},
		"rotate":  {http.MethodPost, APIPrefix + "/billing/rotate", map[string]any{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out apiError
			if code := call(t, api, tc.method, tc.path, apiToken, tc.body, &out); code != http.StatusConflict || !strings.Contains(out.Error, "ConfigMap") {
				t.Fatalf("answered %d %+v, want 409 naming the ConfigMap", code, out)
			}
		})
	}
	var list struct{ Endpoints []EndpointView }
	if code := call(t, api, http.MethodGet, APIPrefix, apiToken, nil, &list); code != 200 || len(list.Endpoints) != 1 || list.Endpoints[0].Source != SourceConfigMap {
		t.Fatalf("list = %d %+v", code, list)
	}
}

// TestAPIEndpointIsSharedThroughRedis creates an endpoint on one instance; a second instance
// (its own dispatcher on the same Redis, as after a cold start or a restart) delivers to it,
// signed with the secret the create answered.
func TestAPIEndpointIsSharedThroughRedis(t *testing.T) {
	rcv := newReceiver(t, nil)
	a, api := apiFixture(t)
	var created EndpointView
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "shop", "url": rcv.URL, "types": []string{"com.example.order.*"},
		"headers": map[string]string{"X-Tenant": "acme"}}, &created); code != http.StatusCreated || !strings.HasPrefix(created.Secret, "whsec_") {
		t.Fatalf("create = %d %+v", code, created)
	}
	var again apiError
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "shop", "url": rcv.URL, "types": []string{"*"}}, &again); code != http.StatusConflict {
		t.Fatalf("second create = %d %+v, want 409", code, again)
	}
	var got EndpointView
	if code := call(t, api, http.MethodGet, APIPrefix+"/shop", apiToken, nil, &got); code != 200 || got.Secret != "" || got.Source != SourceAPI || got.Secrets != 1 {
		t.Fatalf("get = %d %+v (no secret shown, one live)", code, got)
	}

	second := NewDispatcher(a.store, deadletter.NewStore(a.rdb, deadletter.Options{}), nil, Options{Schedule: Schedule{time.Second}, Poll: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); second.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := second.Refresh(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if m := second.Match("com.example.order.created"); !slices.Equal(m, []string{"shop"}) {
		t.Fatalf("second instance matches %v", m)
	}
	e := newEvent("shared")
	if _, _, err := a.store.Enqueue(context.Background(), e, second.Match(e.Type()), "", time.Now()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivered", func() bool { return rcv.count() == 1 })
	reqs, bodies := rcv.requests()
	if !verifyStandard(created.Secret, reqs[0].Header, bodies[0]) || reqs[0].Header.Get("X-Tenant") != "acme" {
		t.Errorf("delivery %v does not verify with the created secret", reqs[0].Header)
	}
}

func TestAPIUpdateChangesWhereDeliveriesGo(t *testing.T) {
	before, after := newReceiver(t, nil), newReceiver(t, nil)
	f, api := apiFixture(t)
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "moving", "url": before.URL, "types": []string{"*"}}, nil); code != 201 {
		t.Fatalf("create = %d", code)
	}
	tests := map[string]struct {
		body  any
		code  int
		field string
	}{
		"rename refused":       {body: map[string]any{"name": "other", "url": after.URL, "types": []string{"*"}}, code: 400, field: "name"},
		"secret refused":       {body: map[string]any{"url": after.URL, "types": []string{"*"}, "secret": NewSecret()}, code: 400, field: "secret"},
		"private URL refused":  {body: map[string]any{"url": "http://192.168.1.1/", "types": []string{"*"}}, code: 400, field: "url"},
		"new URL and timeouts": {body: map[string]any{"url": after.URL, "types": []string{"*"}, "timeout": "3s"}, code: 200},
	}
	for _, name := range []string{"rename refused", "secret refused", "private URL refused", "new URL and timeouts"} {
		tc := tests[name]
		t.Run(name, func(t *testing.T) {
			var out apiError
			code := call(t, api, http.MethodPut, APIPrefix+"/moving", apiToken, tc.body, &out)
			if code != tc.code || (tc.field != "" && (len(out.Fields) == 0 || out.Fields[0].Field != tc.field)) {
				t.Fatalf("update = %d %+v, want %d naming %q", code, out, tc.code, tc.field)
			}
		})
	}
	if code := call(t, api, http.MethodPut, APIPrefix+"/absent", apiToken, map[string]any{"url": after.URL, "types": []string{"*"}}, nil); code != 404 {
		t.Errorf("update of an absent endpoint = %d, want 404", code)
	}
	e := newEvent("moved")
	f.enqueue(t, e, "", f.d.Match(e.Type())...)
	eventually(t, "delivered to the new URL", func() bool { return after.count() == 1 })
	if before.count() != 0 {
		t.Errorf("the old URL got %d deliveries", before.count())
	}
}

// TestAPIRotationSignsWithBothThenOnlyTheNew: during the overlap every delivery verifies with
// the old and the new secret; after it, only with the new one.
func TestAPIRotationSignsWithBothThenOnlyTheNew(t *testing.T) {
	rcv := newReceiver(t, nil)
	f, api := apiFixture(t)
	var created, rotated EndpointView
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "rot", "url": rcv.URL, "types": []string{"*"}}, &created); code != 201 {
		t.Fatalf("create = %d", code)
	}
	var bad apiError
	if code := call(t, api, http.MethodPost, APIPrefix+"/rot/rotate", apiToken, map[string]any{"overlap": "30d"}, &bad); code != 400 || bad.Fields[0].Field != "overlap" {
		t.Fatalf("rotate with a bad overlap = %d %+v", code, bad)
	}
	if code := call(t, api, http.MethodPost, APIPrefix+"/rot/rotate", apiToken, map[string]any{"overlap": "1500ms"}, &rotated); code != 200 || rotated.Secret == "" || rotated.Secret == created.Secret || rotated.Secrets != 2 {
		t.Fatalf("rotate = %d %+v", code, rotated)
	}
	deadline := time.Now().Add(1500 * time.Millisecond)
	e1 := newEvent("during")
	f.enqueue(t, e1, "", "rot")
	eventually(t, "delivered during the overlap", func() bool { return rcv.count() == 1 })
	if time.Now().After(deadline) {
		t.Skip("the delivery took longer than the overlap; nothing to conclude")
	}
	time.Sleep(time.Until(deadline) + 50*time.Millisecond)
	e2 := newEvent("after")
	f.enqueue(t, e2, "", "rot")
	eventually(t, "delivered after the overlap", func() bool { return rcv.count() == 2 })
	reqs, bodies := rcv.requests()
	tests := map[string]struct {
		i             int
		old, new      bool
		signatureList int
	}{
		"during the overlap": {i: 0, old: true, new: true, signatureList: 2},
		"after the overlap":  {i: 1, old: false, new: true, signatureList: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := reqs[tc.i].Header
			if verifyStandard(created.Secret, h, bodies[tc.i]) != tc.old || verifyStandard(rotated.Secret, h, bodies[tc.i]) != tc.new {
				t.Errorf("old verifies %v (want %v), new verifies %v (want %v)", verifyStandard(created.Secret, h, bodies[tc.i]), tc.old,
					verifyStandard(rotated.Secret, h, bodies[tc.i]), tc.new)
			}
			if n := len(strings.Fields(h.Get("webhook-signature"))); n != tc.signatureList {
				t.Errorf("%d signatures, want %d", n, tc.signatureList)
			}
		})
	}
}

// TestAPIDisableKeepsMessagesWaiting: a disabled endpoint gets nothing, its messages wait
// (neither attempted nor dead-lettered) and go out once it is enabled.
func TestAPIDisableKeepsMessagesWaiting(t *testing.T) {
	rcv := newReceiver(t, nil)
	f, api := apiFixture(t)
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "paused", "url": rcv.URL, "types": []string{"*"}}, nil); code != 201 {
		t.Fatalf("create = %d", code)
	}
	if code := call(t, api, http.MethodPost, APIPrefix+"/paused/disable", apiToken, nil, nil); code != 200 {
		t.Fatalf("disable = %d", code)
	}
	e := newEvent("waits")
	f.enqueue(t, e, "", f.d.Match(e.Type())...)
	eventually(t, "the message is put back", func() bool {
		n, _ := f.store.Due(context.Background(), time.Now())
		total, _ := f.store.Scheduled(context.Background())
		return n == 0 && total == 1
	})
	time.Sleep(200 * time.Millisecond)
	letters, _ := f.dead.List(context.Background(), deadletter.Filter{})
	if rcv.count() != 0 || len(letters) != 0 || f.state(t, e, "paused") != StatePending {
		t.Fatalf("while disabled: %d deliveries, %d dead letters, state %q", rcv.count(), len(letters), f.state(t, e, "paused"))
	}
	var enabled struct{ Resumed int }
	if code := call(t, api, http.MethodPost, APIPrefix+"/paused/enable", apiToken, nil, &enabled); code != 200 || enabled.Resumed != 1 {
		t.Fatalf("enable = %d %+v", code, enabled)
	}
	eventually(t, "delivered once enabled", func() bool { return f.state(t, e, "paused") == StateDelivered })
}

func TestReplay(t *testing.T) {
	rcv := newReceiver(t, nil)
	f, api := apiFixture(t)
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "orders", "url": rcv.URL, "types": []string{"com.example.order.*"}}, nil); code != 201 {
		t.Fatalf("create = %d", code)
	}
	ctx := context.Background()
	start := time.Now().Add(-time.Second)
	ids := map[string]bool{}
	for i := range 3 {
		e := newEvent(strconv.Itoa(i))
		ids[MessageID(e.Source(), e.ID())] = true
		f.enqueue(t, e, "", "orders")
	}
	other := newEvent("other")
	other.SetType("com.example.invoice.paid")
	if _, _, err := f.store.Enqueue(ctx, other, []string{"someone-else"}, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "first deliveries", func() bool { return rcv.count() == 3 })
	until := time.Now().Add(time.Second)

	tests := []struct {
		name          string
		body          any
		code          int
		scheduled     int
		repeated      bool
		totalRequests int
	}{
		{name: "bad range", body: map[string]any{"since": until.Format(time.RFC3339Nano), "until": start.Format(time.RFC3339Nano)}, code: 400, totalRequests: 3},
		{name: "not a time", body: map[string]any{"since": "yesterday"}, code: 400, totalRequests: 3},
		{name: "range replayed", body: map[string]any{"since": start.Format(time.RFC3339Nano), "until": until.Format(time.RFC3339Nano)}, code: 200, scheduled: 3, totalRequests: 6},
		{name: "same replay again sends nothing", body: map[string]any{"since": start.Format(time.RFC3339Nano), "until": until.Format(time.RFC3339Nano)}, code: 200, scheduled: 3, repeated: true, totalRequests: 6},
		{name: "empty range", body: map[string]any{"since": start.Add(-time.Hour).Format(time.RFC3339Nano), "until": start.Format(time.RFC3339Nano)}, code: 200, totalRequests: 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var res Replay
			code := call(t, api, http.MethodPost, APIPrefix+"/orders/replay", apiToken, tc.body, &res)
			if code != tc.code || res.Scheduled != tc.scheduled || res.Repeated != tc.repeated {
				t.Fatalf("replay = %d %+v, want %d with %d scheduled, repeated %v", code, res, tc.code, tc.scheduled, tc.repeated)
			}
			eventually(t, fmt.Sprintf("%d requests", tc.totalRequests), func() bool { return rcv.count() == tc.totalRequests })
			time.Sleep(100 * time.Millisecond)
			if rcv.count() != tc.totalRequests {
				t.Fatalf("%d requests, want %d", rcv.count(), tc.totalRequests)
			}
		})
	}
	reqs, _ := rcv.requests()
	perID := map[string]int{}
	for _, r := range reqs {
		perID[r.Header.Get(HeaderID)]++
	}
	for id, n := range perID {
		if !ids[id] || n != 2 {
			t.Errorf("webhook-id %s came %d times, want one of the original ids twice", id, n)
		}
	}
}

func TestMetricsShowCircuitsAndCounters(t *testing.T) {
	ok, down := newReceiver(t, nil), newReceiver(t, status(http.StatusServiceUnavailable))
	f, api := apiFixture(t, endpoint("up", ok.URL, 2))
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "down", "url": down.URL, "types": []string{"*"}}, nil); code != 201 {
		t.Fatalf("create = %d", code)
	}
	f.d.opts.Breaker = breaker.Settings{ConsecutiveFailures: 1, FailureRatio: 1, MinRequests: 100, Window: time.Minute, OpenFor: time.Hour}
	e := newEvent("m")
	f.enqueue(t, e, "", "up", "down")
	eventually(t, "the down endpoint's circuit opens", func() bool {
		st, _ := ReadBreaker(context.Background(), f.rdb, "down")
		return st.State == "open" && f.state(t, e, "up") == StateDelivered
	})
	var b strings.Builder
	if err := api.WriteMetrics(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`knfaas_notify_endpoint_circuit{endpoint="down",source="api",state="open"} 1`,
		`knfaas_notify_endpoint_circuit{endpoint="down",source="api",state="closed"} 0`,
		`knfaas_notify_endpoint_circuit{endpoint="up",source="configmap",state="closed"} 1`,
		`knfaas_notify_deliveries_total{endpoint="up",outcome="delivered"} 1`,
		`knfaas_notify_deliveries_total{endpoint="down",outcome="retry"} 1`,
		`knfaas_notify_endpoint_consecutive_failures{endpoint="up"} 0`,
		"# TYPE knfaas_notify_deliveries_total counter",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, b.String())
		}
	}
}

// TestNewAPIEndpointIsDeliveredAtOnce: a message for an endpoint made through the API (here
// straight into Redis, as another instance would) since this instance last read them is
// delivered on its first attempt, not failed as "not configured".
func TestNewAPIEndpointIsDeliveredAtOnce(t *testing.T) {
	rcv := newReceiver(t, nil)
	f, _ := apiFixture(t)
	eventually(t, "the dispatcher read the endpoints once", func() bool {
		f.d.mu.RLock()
		defer f.d.mu.RUnlock()
		return !f.d.refreshed.IsZero()
	})
	ctx := context.Background()
	if err := f.store.CreateAPIEndpoint(ctx, StoredEndpoint{Name: "late", URL: rcv.URL, Types: []string{"*"}, Secret: NewSecret()}); err != nil {
		t.Fatal(err)
	}
	e := newEvent("late")
	f.enqueue(t, e, "", "late")
	eventually(t, "delivered", func() bool { return f.state(t, e, "late") == StateDelivered })
	attempts, err := f.store.Attempts(ctx, MessageID(e.Source(), e.ID()), "late")
	if err != nil || len(attempts) != 1 || attempts[0].Outcome != OutcomeDelivered {
		t.Fatalf("attempts %+v, %v; want one, delivered", attempts, err)
	}
}

func TestAPIAttemptsAndRetry(t *testing.T) {
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	f, api := apiFixture(t)
	if code := call(t, api, http.MethodPost, APIPrefix, apiToken, map[string]any{"name": "flaky", "url": rcv.URL, "types": []string{"*"}}, nil); code != 201 {
		t.Fatalf("create = %d", code)
	}
	f.d.opts.Schedule = Schedule{}
	e := newEvent("once")
	msg := MessageID(e.Source(), e.ID())
	f.enqueue(t, e, "", "flaky")
	eventually(t, "dead after its only attempt", func() bool { return f.state(t, e, "flaky") == StateDead })
	tests := []struct {
		name, method, path string
		code               int
		check              func(t *testing.T, body map[string]any)
	}{
		{name: "attempts of a dead message", method: http.MethodGet, path: "/flaky/attempts/" + msg, code: 200, check: func(t *testing.T, b map[string]any) {
			if b["state"] != StateDead || len(b["attempts"].([]any)) != 1 {
				t.Errorf("answer %v", b)
			}
		}},
		{name: "attempts at another endpoint", method: http.MethodGet, path: "/other/attempts/" + msg, code: 404},
		{name: "retry", method: http.MethodPost, path: "/flaky/retry/" + msg, code: 200, check: func(t *testing.T, b map[string]any) {
			if b["scheduled"] != true {
				t.Errorf("answer %v", b)
			}
			eventually(t, "delivered by the retry", func() bool { return f.state(t, e, "flaky") == StateDelivered })
		}},
		{name: "retry of a delivered message sends nothing", method: http.MethodPost, path: "/flaky/retry/" + msg, code: 200, check: func(t *testing.T, b map[string]any) {
			if b["scheduled"] != false || rcv.count() != 2 {
				t.Errorf("answer %v, %d requests", b, rcv.count())
			}
		}},
		{name: "retry of an unknown message", method: http.MethodPost, path: "/flaky/retry/msg_none", code: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body map[string]any
			if code := call(t, api, tc.method, APIPrefix+tc.path, apiToken, nil, &body); code != tc.code {
				t.Fatalf("answered %d %v, want %d", code, body, tc.code)
			}
			if tc.check != nil {
				tc.check(t, body)
			}
		})
	}
}
