package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// zerologLevel is the zerolog level that lets through what l lets through.
func zerologLevel(l slog.Level) zerolog.Level {
	switch {
	case l <= slog.LevelDebug:
		return zerolog.DebugLevel
	case l <= slog.LevelInfo:
		return zerolog.InfoLevel
	case l <= slog.LevelWarn:
		return zerolog.WarnLevel
	default:
		return zerolog.ErrorLevel
	}
}

// slogLevel is the slog level of a zerolog line.
func slogLevel(l zerolog.Level) slog.Level {
	switch l {
	case zerolog.TraceLevel, zerolog.DebugLevel:
		return slog.LevelDebug
	case zerolog.WarnLevel:
		return slog.LevelWarn
	case zerolog.ErrorLevel, zerolog.FatalLevel, zerolog.PanicLevel:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// zerologBridge is a zerolog writer that re-emits each JSON line zerolog writes as a slog
// record: its message, its level, its other fields as attributes (sorted by key), and the
// time it is written (RFC 3339 like every other line, not zerolog's epoch seconds).
type zerologBridge struct {
	h slog.Handler
}

// Write implements io.Writer for a line without a level.
func (b zerologBridge) Write(p []byte) (int, error) {
	return b.WriteLevel(zerolog.NoLevel, p)
}

// funcGoShapePrefix starts the info lines func-go's HTTP runtime writes at every start, one for
// each of Start, Stop, Ready and Alive the function implements: they describe the function's
// shape, not anything that happened, so they are re-emitted at debug.
var funcGoShapePrefix = []byte(`"message":"Function implements `)

// WriteLevel implements zerolog.LevelWriter.
func (b zerologBridge) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	level := slogLevel(l)
	if level == slog.LevelInfo && bytes.Contains(p, funcGoShapePrefix) {
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if !b.h.Enabled(ctx, level) {
		return len(p), nil
	}
	var fields map[string]any
	d := json.NewDecoder(bytes.NewReader(p))
	d.UseNumber()
	var r slog.Record
	if err := d.Decode(&fields); err != nil {
		r = slog.NewRecord(time.Now(), level, string(bytes.TrimSpace(p)), 0)
	} else {
		msg, _ := fields[zerolog.MessageFieldName].(string)
		delete(fields, zerolog.MessageFieldName)
		delete(fields, zerolog.LevelFieldName)
		delete(fields, zerolog.TimestampFieldName)
		r = slog.NewRecord(time.Now(), level, msg, 0)
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			r.AddAttrs(slog.Any(k, fields[k]))
		}
	}
	if err := b.h.Handle(ctx, r); err != nil {
		return 0, err
	}
	return len(p), nil
}

// redisLogger re-emits go-redis's own lines (a pool that cannot dial, a bad reply) through
// slog at warn level: go-redis logs only what went wrong.
type redisLogger struct {
	h slog.Handler
}

// Printf implements go-redis's internal.Logging.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if ctx == nil {
		ctx = context.Background()
	}
	if !l.h.Enabled(ctx, slog.LevelWarn) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelWarn, strings.TrimSpace(fmt.Sprintf(format, v...)), 0)
	r.AddAttrs(slog.String("component", "go-redis"))
	_ = l.h.Handle(ctx, r)
}
