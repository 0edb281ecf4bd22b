package sink

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

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
