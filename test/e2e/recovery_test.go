//go:build e2e

package e2e

// The recovery tests each crash one part of a running knfaas up (a function instance, the
// runtime, Redis) once while events flow, and check that every accepted event is then
// delivered or dead-lettered. test/fault is the soak: all those faults and subscriber failures
// in one run of 10,000 events, through dead letters and redrive.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// sendMany posts n order.placed events that make the orders recorder sleep, from 16 senders.
func sendMany(t *testing.T, rt *runtimetest.Runtime, prefix string, n int, sleepMS int) []string {
	t.Helper()
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				id := fmt.Sprintf("%s-%05d", prefix, i)
				e := runtimetest.NewEvent(id, "dev.knfaas.e2e.order.placed")
				e.SetExtension("target", "orders")
				e.SetExtension("sleepms", strconv.Itoa(sleepMS))
				if err := rt.TrySend("e2e", "default", e); err != nil {
					errs <- err
					continue
				}
				ids[i] = id
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("the broker refused an event: %v", err)
	}
	return ids
}

type tally struct{ accepted, delivered, deadLettered, duplicates, lost int }

func count(t *testing.T, rdb *redis.Client, ids []string) tally {
	t.Helper()
	seen := recorderSeen(t, rdb, "orders")
	dead := recorderSeen(t, rdb, "dlq")
	var c tally
	for _, id := range ids {
		c.accepted++
		switch {
		case seen[id] > 0:
			c.delivered++
			c.duplicates += seen[id] - 1
		case dead[id] > 0:
			c.deadLettered++
		default:
			c.lost++
		}
	}
	return c
}

func awaitSettled(t *testing.T, rdb *redis.Client, ids []string, timeout time.Duration) tally {
	t.Helper()
	var c tally
	runtimetest.Eventually(t, timeout, "every accepted event delivered or dead-lettered", func() bool {
		c = count(t, rdb, ids)
		return c.lost == 0
	})
	t.Logf("accepted %d, delivered %d, dead-lettered %d, duplicates seen by the subscriber %d, lost %d",
		c.accepted, c.delivered, c.deadLettered, c.duplicates, c.lost)
	if c.accepted != c.delivered+c.deadLettered {
		t.Fatalf("accepted %d != delivered %d + dead-lettered %d", c.accepted, c.delivered, c.deadLettered)
	}
	return c
}

func livePIDs(t *testing.T, rdb *redis.Client, recorder string) []int {
	t.Helper()
	members, err := rdb.SMembers(context.Background(), "knfaas:test:recorder:"+recorder+":pids").Result()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, m := range members {
		pid, _ := strconv.Atoi(m)
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestRecoveryFromFunctionKill(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}, RedisURL: srv.URL()})

	ids := sendMany(t, rt, "fn", 400, 100)
	runtimetest.Eventually(t, 30*time.Second, "deliveries under way", func() bool {
		return len(recorderSeen(t, rdb, "orders")) >= 20 && len(livePIDs(t, rdb, "orders")) > 0
	})
	killed := 0
	for _, pid := range livePIDs(t, rdb, "orders") {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	if killed == 0 {
		t.Fatal("no orders instance to kill")
	}
	t.Logf("killed %d orders instances with SIGKILL mid-delivery", killed)
	awaitSettled(t, rdb, ids, 2*time.Minute)
	// Once every trigger acknowledged everything, the runtime trims the broker's stream.
	runtimetest.Eventually(t, time.Minute, "the broker stream trimmed", func() bool {
		return rdb.XLen(context.Background(), "knfaas:broker:stream:e2e/default").Val() <= 1
	})
}

func TestRecoveryFromRuntimeKill(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}, RedisURL: srv.URL()})

	ids := sendMany(t, rt, "rt", 2000, 300)
	runtimetest.Eventually(t, 30*time.Second, "deliveries under way", func() bool {
		return len(recorderSeen(t, rdb, "orders")) >= 50
	})
	before := len(recorderSeen(t, rdb, "orders"))
	rt.Kill()
	if before >= len(ids) {
		t.Fatalf("all %d events were delivered before the kill; the test needs work left over", len(ids))
	}
	t.Logf("killed the runtime with SIGKILL after %d of %d deliveries", before, len(ids))
	rt.Restart()
	awaitSettled(t, rdb, ids, 3*time.Minute)
}

func TestRecoveryFromRedisRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}, RedisURL: srv.URL()})

	ids := sendMany(t, rt, "rd", 500, 20)
	srv.Restart()
	// Events sent while Redis is back up are accepted again; those refused during the outage
	// were answered 503 and are not counted as accepted.
	more := sendMany(t, rt, "rd2", 200, 0)
	awaitSettled(t, rdb, append(ids, more...), 3*time.Minute)
}
