package main

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestLogLinesNameTheDelivery pins what a request's lines carry, in order: the source, then
// (once the delivery is described) its event id and type and the trace and span ids of the
// intake span, which continues the sender's traceparent, then the line's own attributes.
func TestLogLinesNameTheDelivery(t *testing.T) {
	const body = `{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"}}`
	const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	tests := []struct {
		name     string
		header   http.Header
		level    slog.Level
		wantLine string
	}{
		{
			name:     "published",
			header:   githubDelivery(githubSecret, "d-log-1", "push", body),
			wantLine: `{"level":"INFO","msg":"delivery published","source":"github","event_id":"d-log-1","event_type":"com.github.push"}`,
		},
		{
			name: "published with the sender's trace",
			header: func() http.Header {
				h := githubDelivery(githubSecret, "d-log-2", "push", body)
				h.Set("traceparent", traceparent)
				return h
			}(),
			wantLine: `{"level":"INFO","msg":"delivery published","source":"github","event_id":"d-log-2","event_type":"com.github.push","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}`,
		},
		{
			name:     "refused",
			header:   githubDelivery("wrong secret", "d-log-3", "push", body),
			wantLine: `{"level":"WARN","msg":"delivery refused","source":"github","reason":"X-Hub-Signature-256: no signature matches any configured secret","remote":"REMOTE"}`,
		},
		{
			name:   "published, info lines off",
			header: githubDelivery(githubSecret, "d-log-4", "push", body),
			level:  slog.LevelWarn,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{})
			var logs lockedBuffer
			h.f.log = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{
				Level: tc.level,
				ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
					switch {
					case len(groups) == 0 && a.Key == slog.TimeKey:
						return slog.Attr{}
					case a.Key == "remote":
						return slog.String("remote", "REMOTE")
					}
					return a
				},
			}))
			h.post(t, "github", tc.header, body)
			if got := strings.TrimSpace(logs.String()); got != tc.wantLine {
				t.Errorf("log\n got %s\nwant %s", got, tc.wantLine)
			}
		})
	}
}
