package dedup

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestClaimLifecycle(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	c := New(rdb)
	ctx := context.Background()
	key := Key("github", "d-1")
	if err := c.Preload(ctx); err != nil {
		t.Fatal(err)
	}

	first, out, err := c.Claim(ctx, key, time.Minute)
	if err != nil || out != Claimed {
		t.Fatalf("first claim = %v, %v; want claimed", out, err)
	}
	if _, out, _ := c.Claim(ctx, key, time.Minute); out != InFlight {
		t.Fatalf("claim while the first is publishing = %v, want in-flight", out)
	}
	if pttl := rdb.PTTL(ctx, key).Val(); pttl <= 0 || pttl > time.Minute {
		t.Fatalf("pending claim TTL %s, want the lease (≤1m)", pttl)
	}

	// Publish failed: release, and the retry claims it.
	if ok, err := c.Release(ctx, first); err != nil || !ok {
		t.Fatalf("release = %v, %v", ok, err)
	}
	second, out, err := c.Claim(ctx, key, time.Minute)
	if err != nil || out != Claimed {
		t.Fatalf("claim after release = %v, %v; want claimed", out, err)
	}
	// The stale first claimant cannot release or complete the second one's claim.
	if ok, _ := c.Release(ctx, first); ok {
		t.Fatal("a stale claim released someone else's claim")
	}
	if ok, _ := c.Complete(ctx, first, time.Hour); ok {
		t.Fatal("a stale claim completed someone else's claim")
	}
	if _, out, _ := c.Claim(ctx, key, time.Minute); out != InFlight {
		t.Fatalf("second claim was disturbed by the stale one: %v", out)
	}

	// Broker accepted: done for the dedup TTL.
	if ok, err := c.Complete(ctx, second, 72*time.Hour); err != nil || !ok {
		t.Fatalf("complete = %v, %v", ok, err)
	}
	if _, out, _ := c.Claim(ctx, key, time.Minute); out != Done {
		t.Fatalf("claim after completion = %v, want done", out)
	}
	if pttl := rdb.PTTL(ctx, key).Val(); pttl < 71*time.Hour {
		t.Fatalf("done TTL %s, want the dedup TTL (72h)", pttl)
	}
	// Releasing a completed claim does nothing: a done delivery stays done.
	if ok, _ := c.Release(ctx, second); ok {
		t.Fatal("released a completed claim")
	}
	if _, out, _ := c.Claim(ctx, Key("stripe", "d-1"), time.Minute); out != Claimed {
		t.Fatalf("same id under another source = %v, want claimed", out)
	}
}

func TestExpiredLeaseFreesTheDelivery(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := New(srv.Client())
	ctx := context.Background()
	key := Key("stripe", "evt_1")
	crashed, out, err := c.Claim(ctx, key, 50*time.Millisecond)
	if err != nil || out != Claimed {
		t.Fatalf("claim = %v, %v", out, err)
	}
	// The claimant "crashed": Redis expires its lease and a retry can claim.
	var retry Claim
	for out = InFlight; out != Claimed; {
		time.Sleep(20 * time.Millisecond)
		if retry, out, err = c.Claim(ctx, key, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := c.Complete(ctx, crashed, time.Hour); ok {
		t.Fatal("expired claimant completed the retry's claim")
	}
	if ok, _ := c.Complete(ctx, retry, time.Hour); !ok {
		t.Fatal("retry could not complete its claim")
	}
}

func TestCompleteAfterExpiryStillMarksDone(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := New(srv.Client())
	ctx := context.Background()
	key := Key("slack", "Ev1")
	cl, _, err := c.Claim(ctx, key, 30*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for srv.Client().Exists(ctx, key).Val() == 1 {
		time.Sleep(10 * time.Millisecond)
	}
	// The publish succeeded but outlived the lease, and nobody claimed meanwhile: the event is
	// in the Broker, so the delivery must still be recorded as done.
	if ok, err := c.Complete(ctx, cl, time.Hour); err != nil || !ok {
		t.Fatalf("complete after expiry = %v, %v", ok, err)
	}
	if _, out, _ := c.Claim(ctx, key, time.Minute); out != Done {
		t.Fatalf("claim = %v, want done", out)
	}
}

func TestConcurrentClaimsHaveOneWinner(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := New(srv.Client())
	ctx := context.Background()
	const n = 50
	var wg sync.WaitGroup
	outcomes := make(chan Outcome, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, out, err := c.Claim(ctx, Key("github", "same"), time.Minute)
			if err != nil {
				t.Error(err)
			}
			outcomes <- out
		}()
	}
	wg.Wait()
	close(outcomes)
	won := 0
	for o := range outcomes {
		if o == Claimed {
			won++
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent claims won, want exactly 1", won, n)
	}
}

func TestRedisDownIsAnError(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := New(srv.Client())
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.Claim(ctx, Key("github", "x"), time.Minute); err == nil {
		t.Fatal("claim with Redis down succeeded")
	}
}

func TestCompleteSurvivesScriptFlush(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	c := New(rdb)
	defer c.Close()
	ctx := context.Background()
	cl, _, err := c.Claim(ctx, Key("github", "flush"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// A Redis restart or SCRIPT FLUSH empties the script cache: EVALSHA answers NOSCRIPT and
	// Complete must fall back to loading the script.
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Complete(ctx, cl, time.Hour); err != nil || !ok {
		t.Fatalf("complete after SCRIPT FLUSH = %v, %v", ok, err)
	}
	if _, out, _ := c.Claim(ctx, Key("github", "flush"), time.Minute); out != Done {
		t.Fatalf("claim = %v, want done", out)
	}
}

func TestBatchedClaimsUnderLoad(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := New(srv.Client())
	defer c.Close()
	ctx := context.Background()
	// 200 requests for 100 deliveries, all at once: the batcher shares pipelines between them,
	// and each delivery must still have exactly one winner.
	const deliveries = 100
	wins := make([]int32, deliveries)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 2 * deliveries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := i % deliveries
			cl, out, err := c.Claim(ctx, Key("stripe", fmt.Sprint(id)), time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if out == Claimed {
				mu.Lock()
				wins[id]++
				mu.Unlock()
				if ok, err := c.Complete(ctx, cl, time.Hour); err != nil || !ok {
					t.Errorf("complete %d = %v, %v", id, ok, err)
				}
			}
		}()
	}
	wg.Wait()
	for id, n := range wins {
		if n != 1 {
			t.Fatalf("delivery %d claimed %d times, want 1", id, n)
		}
	}
}
