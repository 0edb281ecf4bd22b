// Package logging gives a process one structured log format chosen by LOG_FORMAT and LOG_LEVEL,
// and makes func-go's zerolog output, go-redis's and the standard log package follow it.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	zlog "github.com/rs/zerolog/log"
)

// The environment a process's log format and level come from. `knfaas up` sets both for the
// functions it starts, to what it logs with itself (--log-format, --log-level).
const (
	EnvFormat = "LOG_FORMAT"
	EnvLevel  = "LOG_LEVEL"
)

// The formats LOG_FORMAT names: one JSON object a line, or slog's key=value text. Both carry
// RFC 3339 times.
const (
	FormatJSON = "json"
	FormatText = "text"
)

// Defaults when the environment says nothing: JSON (what a cluster's log collector reads) at
// info (func-go's debug lines hidden).
const (
	DefaultFormat = FormatJSON
	DefaultLevel  = slog.LevelInfo
)

// Attribute keys of the lines this package's loggers write beside slog's time, level and msg.
const (
	KeyFunction  = "function"
	KeyEventID   = "event_id"
	KeyEventType = "event_type"
	KeyTraceID   = "trace_id"
	KeySpanID    = "span_id"
)

// Config is a format and a level.
type Config struct {
	Format string
	Level  slog.Level
}

// ParseFormat checks a LOG_FORMAT value ("json" or "text", any case); empty is DefaultFormat.
func ParseFormat(s string) (string, error) {
	switch f := strings.ToLower(strings.TrimSpace(s)); f {
	case "":
		return DefaultFormat, nil
	case FormatJSON, FormatText:
		return f, nil
	default:
		return "", fmt.Errorf("log format %q: want %s or %s", s, FormatJSON, FormatText)
	}
}

// ParseLevel reads a LOG_LEVEL value: debug, info, warn or error (any case, slog's offsets
// such as debug-4 too); empty is DefaultLevel.
func ParseLevel(s string) (slog.Level, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return DefaultLevel, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// ConfigFromEnv reads LOG_FORMAT and LOG_LEVEL through getenv. A bad value is an error naming
// its variable; the returned Config then holds the defaults for it.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{Format: DefaultFormat, Level: DefaultLevel}
	var errs []string
	if f, err := ParseFormat(getenv(EnvFormat)); err != nil {
		errs = append(errs, EnvFormat+": "+err.Error())
	} else {
		c.Format = f
	}
	if l, err := ParseLevel(getenv(EnvLevel)); err != nil {
		errs = append(errs, EnvLevel+": "+err.Error())
	} else {
		c.Level = l
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return c, nil
}

// NewHandler is the slog handler for c writing to w. Records logged with a context carry the
// trace and event ids found there (see WithEvent).
func NewHandler(w io.Writer, c Config) slog.Handler {
	opts := &slog.HandlerOptions{Level: c.Level}
	var h slog.Handler
	if c.Format == FormatText {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	return contextHandler{Handler: h}
}

// setupMu guards the process-wide state Setup changes.
var setupMu sync.Mutex

// Setup makes the process log as the environment says (ConfigFromEnv) on stderr, every line
// naming function, and returns the logger it installed. It is the first line of a function's
// main; a bad LOG_FORMAT or LOG_LEVEL is logged and the default used.
func Setup(function string) *slog.Logger {
	c, err := ConfigFromEnv(os.Getenv)
	l := Install(os.Stderr, function, c)
	if err != nil {
		l.Warn("logging: using the default for a bad value", "err", err)
	}
	return l
}

// Install makes w the process's log output in format c: slog's default logger (and so the
// standard log package, whose lines come out at error level), func-go's zerolog logger,
// whose lines are re-emitted through the same handler at their own level, so that zerolog's
// debug lines are hidden unless c.Level is debug, and go-redis's logger (at warn level). A non-empty function is an attribute of
// every line.
func Install(w io.Writer, function string, c Config) *slog.Logger {
	setupMu.Lock()
	defer setupMu.Unlock()
	h := NewHandler(w, c)
	if function != "" {
		h = h.WithAttrs([]slog.Attr{slog.String(KeyFunction, function)})
	}
	l := slog.New(h)
	slog.SetDefault(l)
	slog.SetLogLoggerLevel(slog.LevelError)
	zerolog.SetGlobalLevel(zerologLevel(c.Level))
	zlog.Logger = zerolog.New(zerologBridge{h: h})
	redis.SetLogger(redisLogger{h: h})
	return l
}
