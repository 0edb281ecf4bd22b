package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand("knfaas")
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestDLQRejectsMalformedFlags(t *testing.T) {
	t.Setenv("REDIS_URL", "") // validation must fail before any Redis access
	tests := []struct {
		name     string
		args     []string
		wantFlag string
	}{
		{"code not a number", []string{"dlq", "list", "--code", "abc"}, "--code"},
		{"code out of range", []string{"dlq", "list", "--code", "42"}, "--code"},
		{"since garbage", []string{"dlq", "list", "--since", "yesterday"}, "--since"},
		{"since negative age", []string{"dlq", "redrive", "--since", "-2h"}, "--since"},
		{"until garbage", []string{"dlq", "purge", "--until", "2026-13-01"}, "--until"},
		{"until before since", []string{"dlq", "list", "--since", "1h", "--until", "2h"}, "--until"},
		{"negative limit", []string{"dlq", "list", "--limit", "-1"}, "--limit"},
		{"unknown output", []string{"dlq", "list", "-o", "xml"}, "--output"},
		{"rate not a number", []string{"dlq", "redrive", "--rate", "fast"}, "--rate"},
		{"negative rate", []string{"dlq", "redrive", "--rate", "-1"}, "--rate"},
		{"zero timeout", []string{"dlq", "redrive", "--timeout", "0s"}, "--timeout"},
		{"broker not a URL", []string{"dlq", "redrive", "--broker", "://broker"}, "--broker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCLI(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantFlag) {
				t.Errorf("err = %v, want an error naming %s", err, tc.wantFlag)
			}
		})
	}
}

func TestDLQNeedsRedisURL(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	_, err := runCLI(t, "dlq", "list")
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
		t.Errorf("err = %v, want one naming REDIS_URL", err)
	}
}

// seedLetters stores dead letters as the deadletter function would.
func seedLetters(t *testing.T, s *deadletter.Store, specs ...[3]string) []string {
	t.Helper()
	var ids []string
	for _, sp := range specs { // id, type, code
		e := event.New()
		e.SetID(sp[0])
		e.SetType(sp[1])
		e.SetSource("/shop")
		e.SetExtension(deadletter.ExtErrorDest, "http://orders")
		e.SetExtension(deadletter.ExtErrorCode, sp[2])
		l, err := deadletter.FromEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := s.Add(context.Background(), l)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

type recordingBroker struct {
	mu   sync.Mutex
	sent []string // "id/knfaasredrive"
}

func (b *recordingBroker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.sent = append(b.sent, fmt.Sprintf("%s/%v", e.ID(), e.Extensions()[deadletter.ExtRedrive]))
	b.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (b *recordingBroker) Sent() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.sent...)
}

func TestDLQCommands(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	ids := seedLetters(t, store,
		[3]string{"e1", "com.example.order", "503"},
		[3]string{"e2", "com.example.order", "500"},
		[3]string{"e3", "com.example.refund", "503"},
		[3]string{"e4", "com.example.refund", "404"},
	)
	broker := &recordingBroker{}
	bs := httptest.NewServer(broker)
	t.Cleanup(bs.Close)

	listIDs := func(t *testing.T, args ...string) []string {
		t.Helper()
		out, err := runCLI(t, append([]string{"dlq", "list", "-o", "json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var letters []deadletter.Letter
		if err := json.Unmarshal([]byte(out), &letters); err != nil {
			t.Fatalf("list -o json printed %q: %v", out, err)
		}
		var got []string
		for _, l := range letters {
			got = append(got, l.EventID)
		}
		return got
	}

	t.Run("list filters", func(t *testing.T) {
		for args, want := range map[string]string{
			"":                                    "[e1 e2 e3 e4]",
			"--type com.example.refund":           "[e3 e4]",
			"--code 503":                          "[e1 e3]",
			"--dest http://orders --limit 1":      "[e1]",
			"--since 1h":                          "[e1 e2 e3 e4]",
			"--until 2000-01-01T00:00:00Z":        "[]",
			"--source /elsewhere":                 "[]",
			ids[1] + " " + ids[3] + " --code 404": "[e4]",
		} {
			if got := listIDs(t, strings.Fields(args)...); fmt.Sprint(got) != want {
				t.Errorf("list %s = %v, want %s", args, got, want)
			}
		}
	})

	t.Run("list table and show", func(t *testing.T) {
		out, err := runCLI(t, "dlq", "list", "--code", "404")
		if err != nil || !strings.Contains(out, "LETTER") || !strings.Contains(out, "e4") || strings.Contains(out, "e1") {
			t.Errorf("list table = %q (%v)", out, err)
		}
		out, err = runCLI(t, "dlq", "show", ids[0])
		if err != nil || !strings.Contains(out, "com.example.order") || !strings.Contains(out, `"id": "e1"`) {
			t.Errorf("show = %q (%v)", out, err)
		}
		if _, err := runCLI(t, "dlq", "show", "1-1"); err == nil {
			t.Error("show of a missing letter succeeded")
		}
	})

	t.Run("redrive dry run sends nothing", func(t *testing.T) {
		out, err := runCLI(t, "dlq", "redrive", "--dry-run", "--code", "503", "--broker", bs.URL)
		if err != nil || !strings.Contains(out, "e1") || !strings.Contains(out, "e3") {
			t.Errorf("dry run = %q (%v)", out, err)
		}
		if sent := broker.Sent(); len(sent) != 0 {
			t.Errorf("dry run sent %v", sent)
		}
	})

	t.Run("redrive by filter", func(t *testing.T) {
		out, err := runCLI(t, "dlq", "redrive", "--code", "503", "--broker", bs.URL, "--rate", "100")
		if err != nil || !strings.Contains(out, "accepted 2") {
			t.Fatalf("redrive = %q (%v)", out, err)
		}
		if sent := broker.Sent(); fmt.Sprint(sent) != "[e1/1 e3/1]" {
			t.Errorf("broker got %v, want [e1/1 e3/1]", sent)
		}
		if got := listIDs(t); fmt.Sprint(got) != "[e2 e4]" {
			t.Errorf("left %v, want [e2 e4]", got)
		}
	})

	t.Run("redrive to a missing broker keeps the letter", func(t *testing.T) {
		gone := httptest.NewServer(http.NotFoundHandler())
		gone.Close()
		_, err := runCLI(t, "dlq", "redrive", ids[1], "--broker", gone.URL, "--timeout", "2s")
		if err == nil {
			t.Fatal("redrive to a closed broker succeeded")
		}
		if got := listIDs(t); fmt.Sprint(got) != "[e2 e4]" {
			t.Errorf("left %v, want [e2 e4]", got)
		}
	})

	t.Run("purge", func(t *testing.T) {
		if _, err := runCLI(t, "dlq", "purge"); err == nil {
			t.Error("purge without ids, filter or --all succeeded")
		}
		out, err := runCLI(t, "dlq", "purge", "--code", "404", "--dry-run")
		if err != nil || !strings.Contains(out, "e4") {
			t.Errorf("purge dry run = %q (%v)", out, err)
		}
		if got := listIDs(t); len(got) != 2 {
			t.Errorf("dry run purged: left %v", got)
		}
		out, err = runCLI(t, "dlq", "purge", "--all")
		if err != nil || !strings.Contains(out, "purged 2") {
			t.Errorf("purge --all = %q (%v)", out, err)
		}
		if got := listIDs(t); len(got) != 0 {
			t.Errorf("left %v after purge --all", got)
		}
	})
}

func TestParseTimeFlag(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"2026-11-20T10:00:00Z", time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC), false},
		{"2026-11-20T10:00:00.5+01:00", time.Date(2026, 11, 20, 9, 0, 0, 5e8, time.UTC), false},
		{"2h", now.Add(-2 * time.Hour), false},
		{"1h30m", now.Add(-90 * time.Minute), false},
		{"7d", now.Add(-7 * 24 * time.Hour), false},
		{"1d12h", now.Add(-36 * time.Hour), false},
		{"0s", time.Time{}, true},
		{"-2h", time.Time{}, true},
		{"d", time.Time{}, true},
		{"-1d", time.Time{}, true},
		{"1d-2h", time.Time{}, true},
		{"2", time.Time{}, true},
		{"yesterday", time.Time{}, true},
		{"99999999999d", time.Time{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseTimeFlag(tc.in, now)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !got.Equal(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzParseTimeFlag(f *testing.F) {
	for _, s := range []string{"2h", "7d", "1d12h", "2026-11-20T10:00:00Z", "-1d", "1d-2h", "9223372036854775807ns"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTimeFlag(s, now)
		if err != nil {
			if !strings.Contains(err.Error(), "RFC 3339") {
				t.Errorf("error %q does not say what is accepted", err)
			}
			return
		}
		if s == "" {
			if !got.IsZero() {
				t.Errorf("empty flag gave %v", got)
			}
			return
		}
		if _, rfcErr := time.Parse(time.RFC3339Nano, s); rfcErr != nil && !got.Before(now) {
			t.Errorf("age %q gave %v, not before now", s, got)
		}
	})
}

// TestDLQPurgeManyBatches purges more letters than several Drop batches and index pages hold.
func TestDLQPurgeManyBatches(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	const n = 2*purgeBatch + 37
	var specs [][3]string
	for i := range n {
		code := "500"
		if i%4 == 0 {
			code = "503"
		}
		specs = append(specs, [3]string{fmt.Sprint(i), "t", code})
	}
	seedLetters(t, store, specs...)

	out, err := runCLI(t, "dlq", "purge", "--code", "500")

	want := n - (n+3)/4
	if err != nil || !strings.Contains(out, fmt.Sprintf("purged %d letters", want)) {
		t.Fatalf("purge = %q (%v), want %d purged", out, err, want)
	}
	left, err := store.List(context.Background(), deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != (n+3)/4 {
		t.Errorf("%d letters left, want %d", len(left), (n+3)/4)
	}
	for _, l := range left {
		if l.Code != 503 {
			t.Errorf("letter %s with code %d survived", l.EventID, l.Code)
		}
	}
}

func TestDLQParkedLetters(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	seedLetters(t, store, [3]string{"received", "com.example.order", "503"})
	data := []byte("{ \"order\" : \"<o-2>&\" }")
	e := event.New()
	e.SetID("parked")
	e.SetType("com.example.order")
	e.SetSource("/shop")
	e.SetDataContentType("application/json")
	e.DataEncoded = data
	l, err := deadletter.FromEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	l.Reason, l.Detail, l.Dest = deadletter.ReasonParked, "subscriber: 431; dead-letter sink: 431", "http://orders"
	parkedID, _, err := store.Add(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("list shows the reason", func(t *testing.T) {
		out, err := runCLI(t, "dlq", "list")
		if err != nil || !strings.Contains(out, "REASON") {
			t.Fatalf("list = %q (%v)", out, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "received") && !strings.Contains(line, "dead-letter") ||
				strings.Contains(line, " parked ") && !strings.Contains(line, parkedID) {
				t.Errorf("line %q has the wrong reason", line)
			}
		}
	})
	t.Run("--parked selects parked letters", func(t *testing.T) {
		out, err := runCLI(t, "dlq", "list", "--parked", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var letters []deadletter.Letter
		if err := json.Unmarshal([]byte(out), &letters); err != nil {
			t.Fatal(err)
		}
		if len(letters) != 1 || letters[0].EventID != "parked" || letters[0].Reason != deadletter.ReasonParked ||
			letters[0].Detail != l.Detail {
			t.Errorf("list --parked = %s", out)
		}
	})
	t.Run("show prints reason and detail", func(t *testing.T) {
		out, err := runCLI(t, "dlq", "show", parkedID)
		if err != nil || !strings.Contains(out, "Reason:") || !strings.Contains(out, "parked") ||
			!strings.Contains(out, l.Detail) || !strings.Contains(out, "<o-2>&") {
			t.Errorf("show = %q (%v)", out, err)
		}
	})
	t.Run("redrive sends the parked event byte for byte", func(t *testing.T) {
		var got []byte
		bs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got, _ = io.ReadAll(r.Body)
			w.WriteHeader(http.StatusAccepted)
		}))
		t.Cleanup(bs.Close)
		out, err := runCLI(t, "dlq", "redrive", "--parked", "--broker", bs.URL)
		if err != nil || !strings.Contains(out, "accepted 1") {
			t.Fatalf("redrive = %q (%v)", out, err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("broker got %q, want %q", got, data)
		}
	})
}
