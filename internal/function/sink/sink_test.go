package sink

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

func TestSend(t *testing.T) {
	tests := map[string]struct {
		status     int
		wantErr    bool
		wantStatus int
	}{
		"accepted":    {status: http.StatusAccepted},
		"ok":          {status: http.StatusOK},
		"bad request": {status: http.StatusBadRequest, wantErr: true, wantStatus: 400},
		"unavailable": {status: http.StatusServiceUnavailable, wantErr: true, wantStatus: 503},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var gotID, gotType, gotBody string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotID, gotType = r.Header.Get("Ce-Id"), r.Header.Get("Ce-Type")
				b, _ := io.ReadAll(r.Body)
				gotBody = string(b)
				w.WriteHeader(tc.status)
			}))
			defer srv.Close()
			s, err := New(srv.URL, 0)
			if err != nil {
				t.Fatal(err)
			}
			e := cloudevents.NewEvent()
			e.SetID("abc")
			e.SetType("dev.knfaas.test")
			e.SetSource("/test")
			_ = e.SetData("application/json", []byte(`{"a":1}`))

			err = s.Send(context.Background(), e)

			if (err != nil) != tc.wantErr {
				t.Fatalf("Send error = %v, wantErr %v", err, tc.wantErr)
			}
			if got := StatusCode(err); got != tc.wantStatus {
				t.Errorf("StatusCode = %d, want %d", got, tc.wantStatus)
			}
			if gotID != "abc" || gotType != "dev.knfaas.test" || gotBody != `{"a":1}` {
				t.Errorf("receiver saw id=%q type=%q body=%q; want binary-mode event", gotID, gotType, gotBody)
			}
		})
	}
}

func TestSendConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	s, _ := New(url, 0)
	e := cloudevents.NewEvent()
	e.SetID("1")
	e.SetType("t")
	e.SetSource("/s")
	err := s.Send(context.Background(), e)
	if err == nil || StatusCode(err) != 0 {
		t.Fatalf("Send to a closed server: err=%v status=%d; want error without status", err, StatusCode(err))
	}
}

func TestNewWithoutTarget(t *testing.T) {
	if _, err := New("", 0); !errors.Is(err, ErrNoSink) {
		t.Fatalf("New(\"\") error = %v, want ErrNoSink", err)
	}
}

func TestSendRequest(t *testing.T) {
	tests := []struct {
		name    string
		event   func() cloudevents.Event
		answer  func(w http.ResponseWriter)
		wantErr string // "" means no error
		check   func(t *testing.T, r *http.Request, body []byte)
	}{
		{
			name: "missing id and time are filled",
			event: func() cloudevents.Event {
				e := cloudevents.NewEvent()
				e.SetType("t")
				e.SetSource("/s")
				return e
			},
			answer: func(w http.ResponseWriter) { w.WriteHeader(http.StatusAccepted) },
			check: func(t *testing.T, r *http.Request, _ []byte) {
				if len(r.Header.Get("Ce-Id")) != 36 {
					t.Errorf("Ce-Id = %q, want a UUID", r.Header.Get("Ce-Id"))
				}
				if _, err := time.Parse(time.RFC3339Nano, r.Header.Get("Ce-Time")); err != nil {
					t.Errorf("Ce-Time = %q: %v", r.Header.Get("Ce-Time"), err)
				}
			},
		},
		{
			name: "body sent with its length, not chunked",
			event: func() cloudevents.Event {
				e := cloudevents.NewEvent()
				e.SetID("1")
				e.SetType("t")
				e.SetSource("/s")
				_ = e.SetData("application/json", []byte(`{"big":"`+strings.Repeat("x", 10000)+`"}`))
				return e
			},
			answer: func(w http.ResponseWriter) { w.WriteHeader(http.StatusOK) },
			check: func(t *testing.T, r *http.Request, body []byte) {
				if r.ContentLength != int64(len(body)) || len(r.TransferEncoding) != 0 {
					t.Errorf("Content-Length %d, transfer encoding %v, body %d bytes", r.ContentLength, r.TransferEncoding, len(body))
				}
				if r.Header.Get("Content-Type") != "application/json" {
					t.Errorf("Content-Type = %q", r.Header.Get("Content-Type"))
				}
			},
		},
		{
			name: "invalid event refused before any request",
			event: func() cloudevents.Event {
				e := cloudevents.NewEvent()
				e.SetID("1")
				e.SetSource("/s") // no type
				return e
			},
			wantErr: "invalid event",
		},
		{
			name: "refusal names status and the start of the body",
			event: func() cloudevents.Event {
				e := cloudevents.NewEvent()
				e.SetID("1")
				e.SetType("t")
				e.SetSource("/s")
				return e
			},
			answer: func(w http.ResponseWriter) {
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, "attribute type: too long"+strings.Repeat("!", 10000))
			},
			wantErr: "answered 400 Bad Request: attribute type: too long",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			requests := 0
			var got *http.Request
			var gotBody []byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests++
				got = r
				gotBody, _ = io.ReadAll(r.Body)
				tc.answer(w)
			}))
			defer srv.Close()
			s, err := New(srv.URL, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Send(context.Background(), tc.event())
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Send: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Send error = %v, want one saying %q", err, tc.wantErr)
			case err != nil && len(err.Error()) > 1000:
				t.Errorf("error of %d bytes: a refusal's body must be bounded", len(err.Error()))
			}
			if tc.check != nil {
				if requests != 1 {
					t.Fatalf("%d requests, want 1", requests)
				}
				tc.check(t, got, gotBody)
			}
			if tc.answer == nil && requests != 0 {
				t.Errorf("%d requests for an event refused locally", requests)
			}
		})
	}
}

func TestNewRefusesABadTarget(t *testing.T) {
	for _, target := range []string{"not a url", "ftp://x/", "/relative/path", "http://"} {
		if _, err := New(target, 0); err == nil || !strings.Contains(err.Error(), EnvSink) {
			t.Errorf("New(%q) error = %v, want one naming %s", target, err, EnvSink)
		}
	}
}

// TestOneEventSentConcurrently: several goroutines send the same event value, without id or
// time, as the e2e harness and duplicate-delivery tests do. Send fills the defaults and the
// tracing extension on its own copy: the caller's event is left as it was (and -race sees no
// shared write).
func TestOneEventSentConcurrently(t *testing.T) {
	var mu sync.Mutex
	ids := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ids[r.Header.Get("Ce-Id")]++
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	s, err := New(srv.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	e := cloudevents.NewEvent()
	e.SetType("t")
	e.SetSource("/s")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Send(context.Background(), e); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if e.ID() != "" || !e.Time().IsZero() {
		t.Errorf("the caller's event was changed: id %q, time %v", e.ID(), e.Time())
	}
	if len(ids) != 8 {
		t.Errorf("8 sends carried %d distinct ids: %v", len(ids), ids)
	}
	if err := s.Send(context.Background(), cloudevents.Event{}); err == nil || !strings.Contains(err.Error(), "no context") {
		t.Errorf("an event without a context: %v, want an error saying so", err)
	}
}

// TestSendTimeout: a send to a receiver that never answers ends at the sender's timeout or at
// the context's deadline, whichever comes first, as a deadline error without a status.
func TestSendTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	tests := []struct {
		name        string
		timeout     time.Duration
		ctxDeadline time.Duration // 0: the context has none
	}{
		{"context without deadline", 100 * time.Millisecond, 0},
		{"context deadline later than the timeout", 100 * time.Millisecond, time.Hour},
		{"context deadline before the timeout", time.Hour, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(srv.URL, tc.timeout)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.ctxDeadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxDeadline)
				defer cancel()
			}
			e := cloudevents.NewEvent()
			e.SetID("1")
			e.SetType("t")
			e.SetSource("/s")
			done := make(chan error, 1)
			go func() { done <- s.Send(ctx, e) }()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Send still waiting on a receiver that never answers")
			}
			if !errors.Is(err, context.DeadlineExceeded) || StatusCode(err) != 0 {
				t.Fatalf("Send = %v (status %d), want a deadline error without status", err, StatusCode(err))
			}
		})
	}
}
