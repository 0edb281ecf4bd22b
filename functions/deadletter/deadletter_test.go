package main

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	funcce "knative.dev/func-go/cloudevents"

	"github.com/knfaas/knfaas/internal/deadletter"
	"github.com/knfaas/knfaas/internal/redistest"
)

// post sends a binary-mode CloudEvent through func-go's real handler, as the broker would.
func post(t *testing.T, h http.Handler, headers map[string]string) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"order":"o-1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Ce-Specversion", "1.0")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

func TestHandleStoresDeadLetters(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
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
	h := funcce.New(f).Handler
	event := func(id string, extra map[string]string) map[string]string {
		m := map[string]string{"Ce-Id": id, "Ce-Source": "/shop", "Ce-Type": "com.example.order.created"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	failed := map[string]string{
		"Ce-Knativeerrordest": "http://orders.knfaas.svc.cluster.local",
		"Ce-Knativeerrorcode": "503",
		"Ce-Knativeerrordata": base64.StdEncoding.EncodeToString([]byte("db down")),
		"Ce-Knfaastrigger":    "knfaas/orders-created",
	}
	tests := []struct {
		name    string
		headers map[string]string
		want    int // 2xx accepted
	}{
		{"dead letter from the broker", event("e1", failed), http.StatusOK},
		{"the same dead letter again", event("e1", failed), http.StatusOK},
		{"posted without error extensions", event("e2", nil), http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(t, h, tc.headers); got/100 != tc.want/100 {
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
		l.Dest != "http://orders.knfaas.svc.cluster.local" {
		t.Errorf("letter = %+v", l)
	}
	orig, err := l.OriginalEvent()
	if err != nil || orig.ID() != "e1" || string(orig.Data()) != `{"order":"o-1"}` || len(orig.Extensions()) != 0 {
		t.Errorf("original event = %v (%v), want e1 with its data and no error extensions", orig, err)
	}
	if letters[1].ErrorExtensions {
		t.Error("event posted without extensions is not marked as such")
	}

	// Redis down: the letter is not acknowledged, so the broker retries it.
	srv.Kill()
	if code := post(t, h, event("e3", failed)); code/100 != 5 {
		t.Errorf("with Redis down answered %d, want 5xx", code)
	}
	if ready, _ := f.Ready(ctx); ready {
		t.Error("ready with Redis down")
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name, env, value string
	}{
		{"unparsable age", "DEADLETTER_MAX_AGE", "a week"},
		{"unbounded count", "DEADLETTER_MAX_LETTERS", "0"},
		{"unbounded age", "DEADLETTER_MAX_AGE", "0s"},
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
