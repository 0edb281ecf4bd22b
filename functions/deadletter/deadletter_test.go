package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	fhttp "knative.dev/func-go/http"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// post sends a binary-mode CloudEvent through func-go's real handler, as the broker would.
func post(t *testing.T, h http.Handler, headers map[string]string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Ce-Specversion", "1.0")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func ceHeaders(id string, extra map[string]string) map[string]string {
	m := map[string]string{"Ce-Id": id, "Ce-Source": "/shop", "Ce-Type": "com.example.order.created"}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

var failed = map[string]string{
	"Ce-Knativeerrordest": "http://orders.knfaas.svc.cluster.local",
	"Ce-Knativeerrorcode": "503",
	"Ce-Knativeerrordata": base64.StdEncoding.EncodeToString([]byte("db down")),
	"Ce-Knfaastrigger":    "knfaas/orders-created",
}

// start runs the function on a fresh redis-server with env set and returns its HTTP handler.
func start(t *testing.T, env map[string]string) (http.Handler, *redistest.Server) {
	h, srv, _ := startFunction(t, env)
	return h, srv
}

func startFunction(t *testing.T, env map[string]string) (http.Handler, *redistest.Server, *Function) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	for k, v := range env {
		t.Setenv(k, v)
	}
	f := New()
	ctx := context.Background()
	if ready, _ := f.Ready(ctx); ready {
		t.Fatal("ready before Start")
	}
	if err := f.Start(ctx, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Stop(ctx) })
	if ready, _ := f.Ready(ctx); !ready {
		t.Fatal("not ready with Redis up")
	}
	return fhttp.New(f).Handler, srv, f
}

func TestHandleStoresDeadLetters(t *testing.T) {
	h, srv := start(t, nil)
	ctx := context.Background()
	data := []byte("{ \"order\" : \"<o-1>&\" }\n")
	tests := []struct {
		name    string
		headers map[string]string
		want    int // 2xx accepted
	}{
		{"dead letter from the broker", ceHeaders("e1", failed), http.StatusAccepted},
		{"the same dead letter again", ceHeaders("e1", failed), http.StatusAccepted},
		{"posted without error extensions", ceHeaders("e2", nil), http.StatusAccepted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(t, h, tc.headers, data).Code; got/100 != tc.want/100 {
				t.Errorf("answered %d, want %d", got, tc.want)
			}
		})
	}

	letters, err := deadletter.NewStore(srv.Client(), deadletter.Options{}).List(ctx, deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 2 {
		t.Fatalf("stored %d letters, want 2 (the duplicate is not stored twice)", len(letters))
	}
	l := letters[0]
	if !l.ErrorExtensions || l.Code != 503 || l.ErrorData != "db down" || l.Trigger != "knfaas/orders-created" ||
		l.Dest != "http://orders.knfaas.svc.cluster.local" || l.Reason != "" {
		t.Errorf("letter = %+v", l)
	}
	orig, err := l.OriginalEvent()
	if err != nil || orig.ID() != "e1" || !bytes.Equal(orig.Data(), data) || len(orig.Extensions()) != 0 {
		t.Errorf("original event = %v (%v), want e1 with its data byte for byte and no error extensions", orig, err)
	}
	if letters[1].ErrorExtensions {
		t.Error("event posted without extensions is not marked as such")
	}

	// Redis down: the letter is not acknowledged, so the broker retries it.
	srv.Kill()
	if code := post(t, h, ceHeaders("e3", failed), data).Code; code/100 != 5 {
		t.Errorf("with Redis down answered %d, want 5xx", code)
	}
}

func TestFullStoreAnswers503WithRetryAfter(t *testing.T) {
	tests := []struct {
		name, env, value string
		wantBody         string
	}{
		{"full by count", "DEADLETTER_MAX_LETTERS", "2", "2 letters of 2"},
		// 2 × (1 KiB + 8 KiB) is the least DEADLETTER_MAX_BYTES allowed with 1 KiB events; two
		// letters of 1000 bytes and their attributes fill it with the third.
		{"full by bytes", "DEADLETTER_MAX_BYTES", "18432", "bytes of 18432"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, srv := start(t, map[string]string{"DEADLETTER_MAX_EVENT_BYTES": "1024", tc.env: tc.value})
			body := bytes.Repeat([]byte("1"), 1000) // valid JSON
			var rec *httptest.ResponseRecorder
			for i := 0; i < 20; i++ {
				rec = post(t, h, ceHeaders(strings.Repeat("x", i+1), failed), body)
				if rec.Code != http.StatusAccepted {
					break
				}
			}
			if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "60" ||
				!strings.Contains(rec.Body.String(), "store full") || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Fatalf("answered %d Retry-After %q %q, want 503 with Retry-After 60 naming %q",
					rec.Code, rec.Header().Get("Retry-After"), rec.Body, tc.wantBody)
			}
			letters, err := deadletter.NewStore(srv.Client(), deadletter.Options{}).List(context.Background(), deadletter.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if len(letters) < 1 || letters[0].EventID != "x" {
				t.Errorf("stored %d letters, the first one evicted? (want x kept)", len(letters))
			}
		})
	}
}

func TestBodyIsBounded(t *testing.T) {
	h, _ := start(t, nil)
	limit := eventsize.DefaultMaxEventBytes + eventsize.DeadLetterOverheadBytes
	fits := append(append([]byte(`"`), bytes.Repeat([]byte("a"), limit-2)...), '"')
	tests := []struct {
		name    string
		body    []byte
		chunked bool // no Content-Length: the limit applies while reading
		want    int
	}{
		{"largest letter accepted", fits, false, http.StatusAccepted},
		{"one byte more", append([]byte(" "), fits...), false, http.StatusRequestEntityTooLarge},
		{"one byte more without Content-Length", append([]byte(" "), fits...), true, http.StatusRequestEntityTooLarge},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(tc.body))
			if tc.chunked {
				req.Body = io.NopCloser(bytes.NewReader(tc.body))
				req.ContentLength = -1
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Ce-Specversion", "1.0")
			for k, v := range ceHeaders(strings.Repeat("b", i+1), failed) {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("answered %d %q, want %d", rec.Code, rec.Body, tc.want)
			}
			if tc.want == http.StatusRequestEntityTooLarge && !strings.Contains(rec.Body.String(), "DEADLETTER_MAX_EVENT_BYTES") {
				t.Errorf("413 body %q does not name the limit", rec.Body)
			}
		})
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name, env, value string
	}{
		{"unparsable age", "DEADLETTER_MAX_AGE", "a week"},
		{"unbounded count", "DEADLETTER_MAX_LETTERS", "0"},
		{"unbounded age", "DEADLETTER_MAX_AGE", "0s"},
		{"unbounded bytes", "DEADLETTER_MAX_BYTES", "0"},
		{"bytes too small for the largest letter", "DEADLETTER_MAX_BYTES", "1048576"},
		{"negative event size", "DEADLETTER_MAX_EVENT_BYTES", "-1"},
		// Zero used to mean the default; only an unset variable does now.
		{"zero event size", "DEADLETTER_MAX_EVENT_BYTES", "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "redis://127.0.0.1:1/0")
			t.Setenv(tc.env, tc.value)
			err := New().Start(context.Background(), nil)
			if err == nil || !strings.Contains(err.Error(), tc.env) {
				t.Errorf("err = %v, want one naming %s", err, tc.env)
			}
		})
	}
}

func TestBodiesInFlightAreBounded(t *testing.T) {
	h, _, f := startFunction(t, nil)
	body := []byte(`{"order":"o-1"}`)
	tests := []struct {
		name     string
		inflight int64 // bytes other requests hold
		want     int
	}{
		{"room left", MaxInflightBytes - int64(len(body)), http.StatusAccepted},
		{"no room left", MaxInflightBytes, http.StatusServiceUnavailable},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.inflight.Store(tc.inflight)
			defer f.inflight.Store(0)
			rec := post(t, h, ceHeaders(strings.Repeat("i", i+1), failed), body)
			if rec.Code != tc.want {
				t.Fatalf("answered %d %q, want %d", rec.Code, rec.Body, tc.want)
			}
			if tc.want == http.StatusServiceUnavailable && rec.Header().Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			if got := f.inflight.Load(); got != tc.inflight {
				t.Errorf("in-flight bytes %d after the request, want %d (released)", got, tc.inflight)
			}
		})
	}
}
