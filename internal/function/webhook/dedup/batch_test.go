package dedup

import (
	"errors"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
)

// replyError is an error reply as a Redis-compatible server sends it (go-redis marks those
// with the RedisError method).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestIsNoScript(t *testing.T) {
	tests := map[string]struct {
		err  error
		want bool
	}{
		"no error":                     {nil, false},
		"NOSCRIPT reply":               {redis.ErrNoScript, true},
		"NOSCRIPT reply, wrapped":      {fmt.Errorf("completing claim k: %w", redis.ErrNoScript), true},
		"NOSCRIPT with ERR (KVRocks)":  {replyError("ERR NOSCRIPT No matching script"), true},
		"other reply":                  {replyError("BUSY Redis is busy running a script"), false},
		"not a reply, same first word": {errors.New("NOSCRIPT lookalike from a proxy"), false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := isNoScript(tc.err); got != tc.want {
				t.Fatalf("isNoScript(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
