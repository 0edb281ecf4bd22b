//go:build e2e

// Package pos holds the end-to-end tests of the point-of-sale example.
package pos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/eventlog"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/cli"
)

const (
	typeSaleRecorded  = "dev.knfaas.example.pos.sale.recorded"
	typeSaleReturned  = "dev.knfaas.example.pos.sale.returned"
	typeStockReceived = "dev.knfaas.example.pos.stock.received"
)

// paths loads the platform parts the example needs and the example itself, with pos-stock's
// containerConcurrency lowered to 1 so that parallel deliveries scale it to several instances.
func paths(t *testing.T) []string {
	t.Helper()
	root := runtimetest.ModuleRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "examples/pos/config/700-pos-stock.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tuned := strings.Replace(string(b), "containerConcurrency: 50", "containerConcurrency: 1", 1)
	if tuned == string(b) {
		t.Fatal("700-pos-stock.yaml no longer sets containerConcurrency: 50")
	}
	stock := filepath.Join(t.TempDir(), "700-pos-stock.yaml")
	if err := os.WriteFile(stock, []byte(tuned), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{
		"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/330-query-auth-secret.yaml",
		"config/400-query-config.yaml", "config/400-deadletter-config.yaml", "config/500-redis-service.yaml",
		"config/510-redis-statefulset.yaml", "config/600-broker.yaml", "config/700-deadletter.yaml",
		"config/700-eventstore.yaml", "config/700-query.yaml", "triggers/eventstore-all.yaml",
		"examples/pos/config/400-pos-thresholds.yaml", stock, "examples/pos/config/700-pos-purchasing.yaml",
		"examples/pos/triggers",
	}
}

func posEvent(id, typ, sku, store string, qty int) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/e2e/till")
	e.SetType(typ)
	e.SetSubject(sku)
	_ = e.SetData(cloudevents.ApplicationJSON, map[string]any{"store": store, "quantity": qty})
	return e
}

func entry(rdb *redis.Client, model, key string) projection.Entry {
	e, _ := projection.Get(context.Background(), rdb, model, key)
	return e
}

func ordersFor(t *testing.T, rdb *redis.Client, sku string) int {
	t.Helper()
	p, err := projection.List(context.Background(), rdb, "purchase-orders", "", 500)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range p.Entries {
		if e.Fields["sku"] == sku {
			n++
		}
	}
	return n
}

func snapshot(t *testing.T, rdb *redis.Client, model string) string {
	t.Helper()
	p, err := projection.List(context.Background(), rdb, model, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p)
	return string(b)
}

// waitSettled waits until the broker has finished with every stored event: each of the
// Broker's Trigger groups has read the whole stream and acknowledged everything it read, so
// every delivery, reply and dead letter is done. It reads the stream itself rather than adding
// up metrics, which an append whose answer was lost, or a redelivery, would make disagree.
// On a timeout it reports each group's state and the runtime's delivery metrics.
func waitSettled(t *testing.T, rt *runtimetest.Runtime, rdb *redis.Client, triggers int, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	stream := "knfaas:broker:stream:knfaas/default"
	var state string
	deadline := time.Now().Add(timeout)
	for {
		info, ierr := rdb.XInfoStream(ctx, stream).Result()
		groups, gerr := rdb.XInfoGroups(ctx, stream).Result()
		if ierr == nil && gerr == nil {
			done := len(groups) == triggers
			var b strings.Builder
			fmt.Fprintf(&b, "stream last id %s, length %d, %d groups (want %d)", info.LastGeneratedID, info.Length, len(groups), triggers)
			for _, g := range groups {
				fmt.Fprintf(&b, "\n  group %s: last delivered %s, pending %d, lag %d", g.Name, g.LastDeliveredID, g.Pending, g.Lag)
				if g.LastDeliveredID != info.LastGeneratedID || g.Pending != 0 {
					done = false
				}
			}
			state = b.String()
			if done {
				return
			}
		} else {
			state = fmt.Sprintf("XINFO: %v %v", ierr, gerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broker did not settle within %s:\n%s\nmetrics:\n%s", timeout, state, deliveryMetrics(rt))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deliveryMetrics returns the runtime's broker and trigger metric lines.
func deliveryMetrics(rt *runtimetest.Runtime) string {
	resp, err := http.Get("http://" + rt.Addr() + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var lines []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "knfaas_broker_") || strings.HasPrefix(line, "knfaas_trigger_") {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

func knfaas(t *testing.T, args ...string) string {
	t.Helper()
	root := cli.NewRootCommand("knfaas")
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("knfaas %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestPointOfSaleThroughKnfaasUp runs the example under knfaas up on a real redis-server.
func TestPointOfSaleThroughKnfaasUp(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	t.Setenv("REDIS_URL", srv.URL())
	rt := runtimetest.Start(t, runtimetest.Options{Paths: paths(t), RedisURL: srv.URL()})
	// logged counts the till events in a SKU's log (its stream also holds the reorder requests).
	logged := func(sku string) int64 {
		p, err := eventlog.New(rdb, eventlog.Options{}).Read(context.Background(), eventlog.Query{Subject: sku, Limit: eventlog.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, r := range p.Records {
			if r.Event.Type() != "dev.knfaas.example.pos.reorder.requested" {
				n++
			}
		}
		return n
	}

	t.Run("reorder exactly once per dip", func(t *testing.T) {
		// SKU-1001 reorders below 5 (examples/pos/config/400-pos-thresholds.yaml). Each event is
		// sent after the previous one was applied and logged, so dips happen where planned.
		steps := []struct {
			typ string
			qty int
		}{
			{typeStockReceived, 12},                                             // 12
			{typeSaleRecorded, 2}, {typeSaleRecorded, 2}, {typeSaleRecorded, 2}, // 6
			{typeSaleRecorded, 2},   // 4: first dip
			{typeSaleRecorded, 1},   // 3: same dip
			{typeStockReceived, 10}, // 13: recovered
			{typeSaleRecorded, 9},   // 4: second dip
		}
		for i, s := range steps {
			rt.Send("knfaas", "default", posEvent(fmt.Sprint("dip-", i), s.typ, "SKU-1001", "berlin-1", s.qty))
			runtimetest.Eventually(t, 2*time.Minute, fmt.Sprint("step ", i, " applied and logged"), func() bool {
				return entry(rdb, "stock", "SKU-1001").Version == int64(i+1) && logged("SKU-1001") == int64(i+1)
			})
		}
		// A redelivery of the sale that caused the first dip re-sends the same reorder request.
		rt.Send("knfaas", "default", posEvent("dip-4", typeSaleRecorded, "SKU-1001", "berlin-1", 2))
		runtimetest.Eventually(t, time.Minute, "two purchase orders", func() bool { return ordersFor(t, rdb, "SKU-1001") == 2 })
		waitSettled(t, rt, rdb, 5, time.Minute)
		e := entry(rdb, "stock", "SKU-1001")
		if n := ordersFor(t, rdb, "SKU-1001"); n != 2 || e.Fields["berlin-1"] != "4" || e.Version != int64(len(steps)) {
			t.Fatalf("orders %d (want 2, one per dip), entry %+v", n, e)
		}
	})

	t.Run("duplicated and reordered deliveries across concurrent instances", func(t *testing.T) {
		r := rand.New(rand.NewPCG(11, 12))
		skus, stores := []string{"SKU-C1", "SKU-C2", "SKU-C3"}, []string{"s1", "s2"}
		want := map[string]int{}
		unique := map[string]int64{}
		// A large opening stock, applied before the rest, keeps every store above its threshold
		// whatever the order of what follows: no reorders here.
		for _, sku := range skus {
			for _, st := range stores {
				rt.Send("knfaas", "default", posEvent("open-"+sku+st, typeStockReceived, sku, st, 10000))
				want[sku+"/"+st] += 10000
				unique[sku]++
			}
		}
		runtimetest.Eventually(t, time.Minute, "opening stock applied", func() bool {
			for _, sku := range skus {
				if entry(rdb, "stock", sku).Version != unique[sku] {
					return false
				}
			}
			return true
		})
		var deliveries []cloudevents.Event
		for i := range 300 {
			sku, st, q := skus[r.IntN(3)], stores[r.IntN(2)], 1+r.IntN(5)
			typ := []string{typeSaleRecorded, typeSaleReturned, typeStockReceived}[r.IntN(3)]
			if typ == typeSaleRecorded {
				want[sku+"/"+st] -= q
			} else {
				want[sku+"/"+st] += q
			}
			unique[sku]++
			e := posEvent(fmt.Sprint("c-", i), typ, sku, st, q)
			deliveries = append(deliveries, e)
			for range r.IntN(3) {
				deliveries = append(deliveries, e)
			}
		}
		r.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
		var maxInstances float64
		stop := make(chan struct{})
		var watch sync.WaitGroup
		watch.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				maxInstances = max(maxInstances, rt.Metric(`knfaas_service_instances{namespace="knfaas",service="pos-stock"}`))
			}
		})
		var send sync.WaitGroup
		for w := range 16 {
			send.Go(func() {
				for i := w; i < len(deliveries); i += 16 {
					rt.Send("knfaas", "default", deliveries[i])
				}
			})
		}
		send.Wait()
		runtimetest.Eventually(t, 3*time.Minute, "every unique event applied", func() bool {
			for _, sku := range skus {
				if entry(rdb, "stock", sku).Version != unique[sku] {
					return false
				}
			}
			return true
		})
		close(stop)
		watch.Wait()
		for _, sku := range skus {
			e := entry(rdb, "stock", sku)
			for _, st := range stores {
				if got := e.Fields[st]; got != fmt.Sprint(want[sku+"/"+st]) {
					t.Errorf("%s/%s = %s, want %d", sku, st, got, want[sku+"/"+st])
				}
			}
		}
		t.Logf("%d deliveries of %d unique events; up to %.0f pos-stock instances", len(deliveries), 306, maxInstances)
		for _, sku := range skus {
			if n := ordersFor(t, rdb, sku); n != 0 {
				t.Errorf("%s: %d purchase orders, want none (stock never went below the threshold)", sku, n)
			}
		}
		if maxInstances < 2 {
			t.Errorf("pos-stock never ran more than %.0f instance(s); the test did not exercise concurrency", maxInstances)
		}
	})

	t.Run("bad data is refused with 400 and dead-lettered", func(t *testing.T) {
		rt.Send("knfaas", "default", posEvent("bad-1", typeSaleRecorded, "SKU-1001", "berlin-1", -2))
		runtimetest.Eventually(t, time.Minute, "dead letter for bad-1", func() bool {
			out := knfaas(t, "dlq", "list")
			return strings.Contains(out, "bad-1") && strings.Contains(out, "400")
		})
	})

	t.Run("query serves the read model with ETags", func(t *testing.T) {
		get := func(token, inm string) *http.Response {
			req, _ := http.NewRequest(http.MethodGet, rt.ServiceURL("knfaas", "query")+"/stock/SKU-1001", nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			if inm != "" {
				req.Header.Set("If-None-Match", inm)
			}
			resp, err := rt.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		// The dashboard's bearer token: the development secret knfaas up generated for the
		// placeholder in config/330-query-auth-secret.yaml.
		dashboardToken := rt.DevSecret("knfaas", "query-auth", "tokens", "CHANGE-ME-dashboard-token-000")
		if resp := get(dashboardToken, ""); resp.StatusCode != 200 || resp.Header.Get("ETag") != `"8"` {
			t.Fatalf("GET: %d etag %s", resp.StatusCode, resp.Header.Get("ETag"))
		}
		if resp := get(dashboardToken, `"8"`); resp.StatusCode != 304 {
			t.Fatalf("revalidation: %d", resp.StatusCode)
		}
		if resp := get("", ""); resp.StatusCode != 401 {
			t.Fatalf("anonymous: %d", resp.StatusCode)
		}
	})

	types := strings.Join([]string{typeSaleRecorded, typeSaleReturned, typeStockReceived}, ",")
	t.Run("replaying to the broker changes nothing", func(t *testing.T) {
		live := snapshot(t, rdb, "stock")
		out := knfaas(t, "events", "replay", "--rate", "0", "--to", rt.BrokerURL("knfaas", "default"), "--type", types)
		t.Log(strings.TrimSpace(out))
		// Every consumer remembers these events: the projector repeats its recorded reorder
		// replies (same ids), purchasing and the eventstore ignore them.
		waitSettled(t, rt, rdb, 5, 2*time.Minute)
		if got := snapshot(t, rdb, "stock"); got != live {
			t.Fatalf("replay changed the model:\nbefore %s\nafter  %s", live, got)
		}
		if n := ordersFor(t, rdb, "SKU-1001"); n != 2 {
			t.Fatalf("%d purchase orders after the replay, want still 2", n)
		}
	})

	t.Run("rebuild by drop and replay equals the live model", func(t *testing.T) {
		live := snapshot(t, rdb, "stock")
		knfaas(t, "events", "drop", "--model", "stock", "--projector", "stock-projector")
		if snapshot(t, rdb, "stock") == live {
			t.Fatal("drop left the model in place")
		}
		// Straight to the projector, as the README says: in log order, replies dropped.
		out := knfaas(t, "events", "replay", "--rate", "0", "--allow-beyond-horizon",
			"--to", rt.InternalBase()+"/services/knfaas/pos-stock", "--type", types)
		t.Log(strings.TrimSpace(out))
		if !strings.Contains(out, "bad-1") || !strings.Contains(out, "1 events refused") {
			t.Errorf("the replay did not report the refused bad-1: %s", out)
		}
		if rebuilt := snapshot(t, rdb, "stock"); rebuilt != live {
			t.Fatalf("rebuilt model differs from live:\nlive    %s\nrebuilt %s", live, rebuilt)
		}
		if n := ordersFor(t, rdb, "SKU-1001"); n != 2 {
			t.Fatalf("%d purchase orders after the rebuild, want still 2", n)
		}
	})
}
