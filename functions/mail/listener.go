package main

import (
	"context"
	"log/slog"
	"net/http"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	mailer "github.com/knfaas/knfaas/internal/function/mail"
)

// Listener serves the mail function's one listener:
//
//	GET /metrics   the SMTP server's circuit, send counters and waiting mails, Prometheus text format
//	anything else  a CloudEvent from the Broker (binary or structured mode): Function.Handle
//
// It is the Function with an HTTP handler, so that func-go's HTTP middleware runs it (Start,
// Stop, Ready and Alive are the Function's).
type Listener struct {
	*Function
	events http.Handler
}

// NewListener returns the listener of a new, unstarted Function.
func NewListener() (*Listener, error) {
	f := New()
	p, err := cloudevents.NewHTTP()
	if err != nil {
		return nil, err
	}
	events, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, f.Handle)
	if err != nil {
		return nil, err
	}
	return &Listener{Function: f, events: events}, nil
}

// Handle routes a request.
func (l *Listener) Handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != mailer.MetricsPath || r.Method != http.MethodGet {
		l.events.ServeHTTP(w, r)
		return
	}
	if l.RefuseWhileStarting(w, "mail") {
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := l.store.WriteMetrics(r.Context(), w, l.cfg.server); err != nil {
		slog.Error("mail: writing metrics failed", "err", err)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	}
}
