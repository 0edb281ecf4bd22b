package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/extensions"
	"github.com/redis/go-redis/v9"
	zlog "github.com/rs/zerolog/log"
	"go.opentelemetry.io/otel/trace"
	_ "knative.dev/func-go/cloudevents" // its init sets zerolog to debug, as in every function

	"github.com/knfaas/knfaas/internal/function/logging"
)

func TestConfigFromEnv(t *testing.T) {
	tests := map[string]struct {
		format, level string
		want          logging.Config
		err           string // "" when the values are good
	}{
		"defaults":           {want: logging.Config{Format: "json", Level: slog.LevelInfo}},
		"text at debug":      {format: "text", level: "debug", want: logging.Config{Format: "text", Level: slog.LevelDebug}},
		"any case":           {format: "JSON", level: "WARN", want: logging.Config{Format: "json", Level: slog.LevelWarn}},
		"error":              {level: "error", want: logging.Config{Format: "json", Level: slog.LevelError}},
		"bad format":         {format: "logfmt", level: "debug", want: logging.Config{Format: "json", Level: slog.LevelDebug}, err: "LOG_FORMAT: log format \"logfmt\""},
		"bad level":          {format: "text", level: "loud", want: logging.Config{Format: "text", Level: slog.LevelInfo}, err: "LOG_LEVEL: log level \"loud\""},
		"both bad, both say": {format: "x", level: "y", want: logging.Config{Format: "json", Level: slog.LevelInfo}, err: "LOG_FORMAT: log format \"x\": want json or text; LOG_LEVEL"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{logging.EnvFormat: tc.format, logging.EnvLevel: tc.level}
			got, err := logging.ConfigFromEnv(func(k string) string { return env[k] })
			if got != tc.want {
				t.Errorf("config = %+v, want %+v", got, tc.want)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error = %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// TestInstall logs through every route a function's lines take (slog, the log package,
// func-go's zerolog) and checks the format, the level filter and the times of what comes out.
func TestInstall(t *testing.T) {
	tests := map[string]struct {
		config logging.Config
		// want are the messages that come out, in order; each line names the function.
		want []string
	}{
		"json at info hides func-go's debug": {
			config: logging.Config{Format: "json", Level: slog.LevelInfo},
			want:   []string{"slog info", "log package", "func-go info", "func-go error"},
		},
		"json at debug shows func-go's debug": {
			config: logging.Config{Format: "json", Level: slog.LevelDebug},
			want:   []string{"slog debug", "slog info", "log package", "func-go debug", "func-go info", "Function implements Start", "func-go error"},
		},
		"text at warn": {
			config: logging.Config{Format: "text", Level: slog.LevelWarn},
			want:   []string{"log package", "func-go error"},
		},
		"text at debug": {
			config: logging.Config{Format: "text", Level: slog.LevelDebug},
			want:   []string{"slog debug", "slog info", "log package", "func-go debug", "func-go info", "Function implements Start", "func-go error"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			restore := slog.Default()
			defer slog.SetDefault(restore)
			logging.Install(&out, "demo", tc.config)
			slog.Debug("slog debug")
			slog.Info("slog info")
			log.Print("log package")
			zlog.Debug().Str("address", "[::]:8080").Msg("func-go debug")
			zlog.Info().Msg("func-go info")
			zlog.Info().Msg("Function implements Start")
			zlog.Error().Err(context.Canceled).Msg("func-go error")

			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			var got []string
			for _, line := range lines {
				if line == "" {
					continue
				}
				rec := parseLine(t, tc.config.Format, line)
				got = append(got, rec["msg"])
				if rec["function"] != "demo" {
					t.Errorf("line without function=demo: %s", line)
				}
				if _, err := time.Parse(time.RFC3339Nano, rec["time"]); err != nil {
					t.Errorf("time %q is not RFC 3339: %s", rec["time"], line)
				}
				if rec["msg"] == "Function implements Start" && rec["level"] != "DEBUG" {
					t.Errorf("func-go's shape line is not at debug: %s", line)
				}
				if strings.HasPrefix(rec["msg"], "func-go") && rec["level"] == "" {
					t.Errorf("func-go line without level: %s", line)
				}
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("messages = %q, want %q\n%s", got, tc.want, out.String())
			}
		})
	}
}

// TestZerologFieldsAndLevels checks what a func-go line becomes: its level and its fields.
func TestZerologFieldsAndLevels(t *testing.T) {
	var out bytes.Buffer
	restore := slog.Default()
	defer slog.SetDefault(restore)
	logging.Install(&out, "", logging.Config{Format: "json", Level: slog.LevelDebug})
	zlog.Debug().Str("address", "[::]:8080").Msg("function starting")
	zlog.Error().Err(context.Canceled).Msg("function error")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", lines)
	}
	first, second := parseLine(t, "json", lines[0]), parseLine(t, "json", lines[1])
	if first["level"] != "DEBUG" || first["address"] != "[::]:8080" || first["msg"] != "function starting" {
		t.Errorf("first line: %s", lines[0])
	}
	if second["level"] != "ERROR" || second["error"] != "context canceled" {
		t.Errorf("second line: %s", lines[1])
	}
}

func TestEventLines(t *testing.T) {
	const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	e := event.New()
	e.SetID("ev-1")
	e.SetType("dev.knfaas.test")
	e.SetSource("test")
	traced := e.Clone()
	extensions.DistributedTracingExtension{TraceParent: traceParent}.AddTracingAttributes(&traced)
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	spanCtx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))

	tests := map[string]struct {
		log       func()
		wantTrace string // "" when the line has no trace id
		wantSpan  string
	}{
		"ForEvent with the handler's span": {
			log:       func() { logging.ForEvent(spanCtx, traced).Info("handled") },
			wantTrace: tid.String(), wantSpan: sid.String(),
		},
		"ForEvent without a span takes the event's traceparent": {
			log:       func() { logging.ForEvent(context.Background(), traced).Info("handled") },
			wantTrace: "4bf92f3577b34da6a3ce929d0e0e4736", wantSpan: "00f067aa0ba902b7",
		},
		"ForEvent on an untraced event": {
			log: func() { logging.ForEvent(context.Background(), e).Info("handled") },
		},
		"InfoContext with WithEvent": {
			log:       func() { slog.InfoContext(logging.WithEvent(spanCtx, e), "handled") },
			wantTrace: tid.String(), wantSpan: sid.String(),
		},
		"ForEvent and a context call name the ids once": {
			log: func() {
				ctx := logging.WithEvent(spanCtx, e)
				logging.ForEvent(ctx, e).InfoContext(ctx, "handled")
			},
			wantTrace: tid.String(), wantSpan: sid.String(),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			restore := slog.Default()
			defer slog.SetDefault(restore)
			logging.Install(&out, "demo", logging.Config{Format: "json", Level: slog.LevelInfo})
			tc.log()
			line := strings.TrimSpace(out.String())
			for _, key := range []string{`"event_id"`, `"trace_id"`} {
				if strings.Count(line, key) > 1 {
					t.Errorf("%s more than once: %s", key, line)
				}
			}
			rec := parseLine(t, "json", line)
			want := map[string]string{"event_id": "ev-1", "event_type": "dev.knfaas.test", "function": "demo", "trace_id": tc.wantTrace, "span_id": tc.wantSpan}
			for k, v := range want {
				if rec[k] != v {
					t.Errorf("%s = %q, want %q: %s", k, rec[k], v, line)
				}
			}
		})
	}
}

// parseLine reads one JSON or text line into its string fields.
func parseLine(t *testing.T, format, line string) map[string]string {
	t.Helper()
	rec := map[string]string{}
	if format == "json" {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %s", line)
		}
		for k, v := range m {
			if s, ok := v.(string); ok {
				rec[k] = s
			} else {
				b, _ := json.Marshal(v)
				rec[k] = string(b)
			}
		}
		return rec
	}
	// slog's text format: key=value or key="quoted value".
	for rest := line; rest != ""; {
		k, after, ok := strings.Cut(rest, "=")
		if !ok {
			t.Fatalf("not a text line: %s", line)
		}
		var v string
		if strings.HasPrefix(after, `"`) {
			end := 1
			for end < len(after) && (after[end] != '"' || after[end-1] == '\\') {
				end++
			}
			v = strings.ReplaceAll(after[1:end], `\"`, `"`)
			after = strings.TrimPrefix(after[end+1:], " ")
		} else {
			v, after, _ = strings.Cut(after, " ")
		}
		rec[k] = v
		rest = after
	}
	return rec
}

func TestWith(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	spanCtx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	tests := map[string]struct {
		ctx       context.Context
		wantTrace string
	}{
		"with a span":    {ctx: spanCtx, wantTrace: tid.String()},
		"without a span": {ctx: context.Background()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			l := slog.New(logging.NewHandler(&out, logging.Config{Format: "json", Level: slog.LevelInfo}))
			logging.With(tc.ctx, l, "delivery-1", "com.github.push").InfoContext(tc.ctx, "delivery published")
			line := out.String()
			if strings.Count(line, `"trace_id"`) > 1 {
				t.Errorf("trace_id more than once: %s", line)
			}
			rec := parseLine(t, "json", strings.TrimSpace(line))
			if rec["event_id"] != "delivery-1" || rec["event_type"] != "com.github.push" || rec["trace_id"] != tc.wantTrace {
				t.Errorf("line %s: want event_id delivery-1, trace_id %q", line, tc.wantTrace)
			}
		})
	}
}

// TestGoRedisLines: go-redis's own line about a pool that cannot dial comes out as a warn line
// in the process's format.
func TestGoRedisLines(t *testing.T) {
	var out syncBuffer
	restore := slog.Default()
	defer slog.SetDefault(restore)
	logging.Install(&out, "demo", logging.Config{Format: "json", Level: slog.LevelInfo})
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err == nil {
		t.Fatal("a Redis answered on port 1")
	}
	var found map[string]string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if rec := parseLine(t, "json", l); strings.Contains(rec["msg"], "failed to dial") {
			found = rec
		}
	}
	if found == nil || found["level"] != "WARN" || found["component"] != "go-redis" || found["function"] != "demo" {
		t.Errorf("no go-redis warn line in:\n%s", out.String())
	}
}

// syncBuffer is a bytes.Buffer that go-redis's goroutines may write to while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
