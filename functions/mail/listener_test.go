package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/funcstart"
	mailer "github.com/knfaas/knfaas/internal/function/mail"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// TestListenerRoutes: the one listener takes CloudEvents from the Broker and serves the
// metrics; before Start both are refused.
func TestListenerRoutes(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	templates, err := mailer.Parse([]byte("templates:\n- {name: ack, subject: 'Hi', text: 'Thanks'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SMTP_URL", "smtp://127.0.0.1:1025?tls=none")
	var cfg Config
	if err := funcstart.ReadConfig("mail", &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Poll = 10 * time.Millisecond
	l, err := NewListener()
	if err != nil {
		t.Fatal(err)
	}
	fn := httptest.NewServer(http.HandlerFunc(l.Handle))
	defer fn.Close()
	do := func(method, path, body string, header map[string]string) (int, string) {
		req, _ := http.NewRequest(method, fn.URL+path, strings.NewReader(body))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := do(http.MethodGet, mailer.MetricsPath, "", nil); code != http.StatusServiceUnavailable {
		t.Errorf("metrics before Start = %d, want 503", code)
	}
	rec := &recorder{}
	l.start(cfg, srv.Client(), templates, rec)
	defer l.Stop(context.Background())
	ce := map[string]string{"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "/t", "ce-type": mailer.TypeRequested, "Content-Type": "application/json"}
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
		code                     int
		says                     string
	}{
		{name: "a request in binary mode", method: http.MethodPost, path: "/", body: `{"to":["ada@example.com"],"template":"ack"}`, header: ce, code: http.StatusOK},
		{name: "not a CloudEvent", method: http.MethodPost, path: "/", body: `{}`, code: http.StatusUnsupportedMediaType},
		{name: "metrics", method: http.MethodGet, path: mailer.MetricsPath, code: http.StatusOK, says: `knfaas_mail_server_circuit{server="127.0.0.1:1025",state="closed"} 1`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(tc.method, tc.path, tc.body, tc.header)
			if code != tc.code || !strings.Contains(body, tc.says) {
				t.Fatalf("%s %s = %d %q, want %d saying %q", tc.method, tc.path, code, body, tc.code, tc.says)
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.mails()) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the request was not sent")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
