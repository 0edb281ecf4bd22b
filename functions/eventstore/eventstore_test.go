package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/eventlog"
	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func startFunction(t *testing.T) (*httptest.Server, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	f := New()
	f.start(context.Background(), Config{Retention: time.Hour, MaxLen: 1000, StreamMaxLen: 100, DedupTTL: time.Hour, MaxEventBytes: 4096}, rdb)
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	hs := httptest.NewServer(http.HandlerFunc(f.Handle))
	t.Cleanup(hs.Close)
	return hs, rdb
}

func post(t *testing.T, target string, e event.Event) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, target, nil)
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func sale(id, sku string) event.Event {
	e := event.New()
	e.SetID(id)
	e.SetSource("pos/till-1")
	e.SetType("dev.knfaas.example.pos.sale.recorded")
	e.SetSubject(sku)
	_ = e.SetData("application/json", map[string]any{"store": "berlin-1", "quantity": 1})
	return e
}

func getPage(t *testing.T, target string) (int, eventlog.Page) {
	t.Helper()
	resp, err := http.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p eventlog.Page
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, p
}

func TestAppendAndRead(t *testing.T) {
	hs, rdb := startFunction(t)
	for _, id := range []string{"1", "2", "2", "3", "1"} { // redeliveries of 1 and 2
		if resp := post(t, hs.URL+"/", sale(id, "SKU/1 é")); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("append %s: %d", id, resp.StatusCode)
		}
	}
	if n := rdb.XLen(context.Background(), eventlog.GlobalStream).Val(); n != 3 {
		t.Fatalf("global stream holds %d events, want 3 unique", n)
	}
	code, p := getPage(t, hs.URL+"/subjects/"+url.PathEscape("SKU/1 é")+"/events?limit=2")
	if code != http.StatusOK || len(p.Records) != 2 || p.Next == "" {
		t.Fatalf("first page: %d %+v", code, p)
	}
	_, p2 := getPage(t, hs.URL+"/subjects/"+url.PathEscape("SKU/1 é")+"/events?limit=2&after="+p.Next)
	if len(p2.Records) != 1 || p2.Records[0].Event.ID() != "3" {
		t.Fatalf("second page: %+v", p2)
	}
	since := url.QueryEscape(time.Now().Add(-time.Minute).Format(time.RFC3339))
	if _, p := getPage(t, hs.URL+"/types/dev.knfaas.example.pos.sale.recorded/events?since="+since); len(p.Records) != 3 {
		t.Fatalf("by type: %+v", p)
	}
	if _, p := getPage(t, hs.URL+"/events"); len(p.Records) != 3 || p.Records[0].Event.ID() != "1" {
		t.Fatalf("global, oldest first: %+v", p)
	}
}

func TestBadRequests(t *testing.T) {
	hs, _ := startFunction(t)
	cases := map[string]struct {
		method, path, body string
		header             map[string]string
		want               int
	}{
		"not a cloudevent": {method: "POST", path: "/", body: "{}", header: map[string]string{"Content-Type": "application/json"}, want: 400},
		"missing source":   {method: "POST", path: "/", header: map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "1", "Ce-Type": "t"}, want: 400},
		"too large":        {method: "POST", path: "/", body: strings.Repeat("x", 5000), header: map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "1", "Ce-Type": "t", "Ce-Source": "s"}, want: 413},
		"bad since":        {method: "GET", path: "/events?since=yesterday", want: 400},
		"bad cursor":       {method: "GET", path: "/events?after=x", want: 400},
		"limit over max":   {method: "GET", path: "/events?limit=100000", want: 400},
		"unknown route":    {method: "GET", path: "/nope", want: 404},
		"append by get":    {method: "GET", path: "/", want: 405},
		"read by post":     {method: "POST", path: "/events", want: 405},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, hs.URL+tc.path, strings.NewReader(tc.body))
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestStartRefusesDedupShorterThanRetention(t *testing.T) {
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1/0")
	t.Setenv("EVENTSTORE_RETENTION", "720h")
	t.Setenv("EVENTSTORE_DEDUP_TTL", "168h")
	err := New().Start(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "EVENTSTORE_DEDUP_TTL") {
		t.Fatalf("Start = %v, want a refusal naming EVENTSTORE_DEDUP_TTL", err)
	}
}

func TestMaxEventBytesDefaultsToWhatABrokerAccepts(t *testing.T) {
	tests := []struct {
		name, value string
		want        int64 // 0: Start refuses, naming the variable
	}{
		{"unset", "", eventsize.DefaultMaxEventBytes},
		{"raised", "8388608", 8 << 20},
		{"negative", "-1", 0},
		// Zero used to mean the default, as the README said it did not; only unset does now.
		{"zero", "0", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			t.Setenv("REDIS_URL", srv.URL())
			t.Setenv("EVENTSTORE_MAX_EVENT_BYTES", tc.value)
			if tc.value == "" {
				os.Unsetenv("EVENTSTORE_MAX_EVENT_BYTES") // t.Setenv restores it after the test
			}
			f := New()
			err := f.Start(context.Background(), nil)
			if tc.want == 0 {
				if err == nil || !strings.Contains(err.Error(), "EVENTSTORE_MAX_EVENT_BYTES") {
					t.Fatalf("Start = %v, want a refusal naming EVENTSTORE_MAX_EVENT_BYTES", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = f.Stop(context.Background()) })
			if f.cfg.MaxEventBytes != tc.want {
				t.Errorf("MaxEventBytes = %d, want %d", f.cfg.MaxEventBytes, tc.want)
			}
		})
	}
}

func TestAcceptsTheLargestEventABrokerAccepts(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	f := New()
	if err := f.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	hs := httptest.NewServer(http.HandlerFunc(f.Handle))
	t.Cleanup(hs.Close)
	e := event.New()
	e.SetID("big")
	e.SetSource("/s")
	e.SetType("t")
	e.SetDataContentType("application/octet-stream")
	e.DataEncoded = make([]byte, eventsize.DefaultMaxEventBytes-1024) // room for the attributes
	resp := post(t, hs.URL, e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d for an event a Broker accepts, want 202", resp.StatusCode)
	}
}
