package embedded

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestEmbeddedRedisExpiresKeys checks that keys with a TTL expire in embedded mode: miniredis
// moves its clock only when told, so the runtime must tell it.
func TestEmbeddedRedisExpiresKeys(t *testing.T) {
	r := &Runtime{opts: Options{Out: io.Discard}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.openRedis(ctx, 0); err != nil {
		t.Fatal(err)
	}
	defer r.mini.Close()
	go r.advanceEmbeddedClock(ctx)

	if err := r.rdb.Set(ctx, "short-lived", "x", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.rdb.Set(ctx, "long-lived", "x", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := r.rdb.Get(ctx, "short-lived").Err()
		if errors.Is(err, redis.Nil) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a key with a 300ms TTL still exists after 10s in embedded mode")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := r.rdb.Get(ctx, "long-lived").Err(); err != nil {
		t.Fatalf("a key with a one-hour TTL expired early: %v", err)
	}
}
