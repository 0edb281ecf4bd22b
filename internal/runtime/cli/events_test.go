package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/eventlog"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// projectorServer is a stock projector reachable over HTTP, like the example's: sales take
// stock away, receipts add it, once per (source, id).
func projectorServer(t *testing.T, kit *projection.Projector) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var received atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		received.Add(1)
		var d struct {
			Store    string `json:"store"`
			Quantity int64  `json:"quantity"`
		}
		if err := json.Unmarshal(e.Data(), &d); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		n := d.Quantity
		if e.Type() == "sale.recorded" {
			n = -n
		}
		ch := projection.Change{Key: e.Subject(), Ops: []projection.Op{projection.Incr(d.Store, n)},
			Watches: []projection.Watch{{Field: d.Store, Threshold: 3}}}
		if _, err := kit.Apply(r.Context(), projection.EventRef{Source: e.Source(), ID: e.ID()}, ch); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	return srv, &received
}

func snapshot(t *testing.T, rdb redis.Cmdable, model string) string {
	t.Helper()
	p, err := projection.List(context.Background(), rdb, model, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p)
	return string(b)
}

func runEventsCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand("knfaas")
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestRebuildByDropAndReplayEqualsLive follows the documented rebuild: the live model was fed
// duplicated, shuffled deliveries; dropping it and replaying the log gives the same model,
// versions included.
func TestRebuildByDropAndReplayEqualsLive(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	t.Setenv("REDIS_URL", srv.URL())
	ctx := context.Background()
	kit, err := projection.New(rdb, "stock-projector", "stock", projection.Options{})
	if err != nil {
		t.Fatal(err)
	}
	proj, received := projectorServer(t, kit)
	log := eventlog.New(rdb, eventlog.Options{})

	r := rand.New(rand.NewPCG(3, 4))
	types := []string{"sale.recorded", "sale.returned", "stock.received"}
	var deliveries []event.Event
	for i := range 120 {
		e := event.New()
		e.SetID(fmt.Sprint(i))
		e.SetSource("pos/till-" + fmt.Sprint(i%3))
		e.SetType(types[r.IntN(3)])
		e.SetSubject(fmt.Sprint("SKU-", r.IntN(4)))
		_ = e.SetData("application/json", map[string]any{"store": fmt.Sprint("s", r.IntN(2)), "quantity": 1 + r.IntN(5)})
		deliveries = append(deliveries, e)
		if r.IntN(3) == 0 {
			deliveries = append(deliveries, e) // a redelivery
		}
	}
	// An unrelated event the replay filter must leave out.
	other := event.New()
	other.SetID("x")
	other.SetSource("elsewhere")
	other.SetType("com.github.push")
	deliveries = append(deliveries, other)
	for _, e := range deliveries {
		if _, err := log.Append(ctx, e); err != nil { // the eventstore's Trigger
			t.Fatal(err)
		}
	}
	r.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
	for _, e := range deliveries { // the projector's Triggers, in another order
		if e.Type() == "com.github.push" {
			continue
		}
		if _, err := kit.Apply(ctx, projection.EventRef{Source: e.Source(), ID: e.ID()}, changeOf(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	live := snapshot(t, rdb, "stock")

	if out, err := runEventsCLI(t, "events", "drop", "--model", "stock", "--projector", "stock-projector"); err != nil {
		t.Fatalf("drop: %v\n%s", err, out)
	}
	if got := snapshot(t, rdb, "stock"); got == live || strings.Contains(got, "SKU-") {
		t.Fatalf("model still there after drop: %s", got)
	}
	out, err := runEventsCLI(t, "events", "replay", "--type", strings.Join(types, ","), "--to", proj.URL, "--rate", "0")
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	if !strings.Contains(out, "replayed 120 events") || received.Load() != 120 {
		t.Fatalf("replay output %q, projector received %d; want the 120 unique events", out, received.Load())
	}
	if rebuilt := snapshot(t, rdb, "stock"); rebuilt != live {
		t.Fatalf("rebuilt model differs from live:\nlive    %s\nrebuilt %s", live, rebuilt)
	}
	// Replaying again changes nothing: the projector's inbox remembers every event.
	if _, err := runEventsCLI(t, "events", "replay", "--type", strings.Join(types, ","), "--to", proj.URL, "--rate", "0"); err != nil {
		t.Fatal(err)
	}
	if again := snapshot(t, rdb, "stock"); again != live {
		t.Fatal("a second replay changed the model")
	}
}

func changeOf(t *testing.T, e event.Event) projection.Change {
	t.Helper()
	var d struct {
		Store    string `json:"store"`
		Quantity int64  `json:"quantity"`
	}
	if err := json.Unmarshal(e.Data(), &d); err != nil {
		t.Fatal(err)
	}
	n := d.Quantity
	if e.Type() == "sale.recorded" {
		n = -n
	}
	return projection.Change{Key: e.Subject(), Ops: []projection.Op{projection.Incr(d.Store, n)},
		Watches: []projection.Watch{{Field: d.Store, Threshold: 3}}}
}

func TestReplayDryRunAndFilters(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	log := eventlog.New(srv.Client(), eventlog.Options{})
	for i := range 10 {
		e := event.New()
		e.SetID(fmt.Sprint(i))
		e.SetSource("s")
		e.SetType([]string{"a", "b"}[i%2])
		e.SetSubject(fmt.Sprint("K", i%5))
		if _, err := log.Append(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]struct {
		args []string
		want string
	}{
		"all":              {args: nil, want: "would replay 10 events"},
		"one type":         {args: []string{"--type", "a"}, want: "would replay 5 events"},
		"subject":          {args: []string{"--subject", "K1"}, want: "would replay 2 events"},
		"subject and type": {args: []string{"--subject", "K1", "--type", "b"}, want: "would replay 1 events"},
		"two types":        {args: []string{"--type", "a,b"}, want: "would replay 10 events"},
		"future window":    {args: []string{"--since", "2999-01-01T00:00:00Z"}, want: "would replay 0 events"},
		"until long ago":   {args: []string{"--until", "8760h"}, want: "would replay 0 events"},
		"since an hour":    {args: []string{"--since", "1h"}, want: "would replay 10 events"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := runEventsCLI(t, append([]string{"events", "replay", "--dry-run"}, tc.args...)...)
			if err != nil || !strings.Contains(out, tc.want) {
				t.Fatalf("out %q, err %v; want %q", out, err, tc.want)
			}
		})
	}
	for name, args := range map[string][]string{
		"no target":      {"events", "replay"},
		"negative rate":  {"events", "replay", "--dry-run", "--rate", "-1"},
		"bad since":      {"events", "replay", "--dry-run", "--since", "yesterday"},
		"until < since":  {"events", "replay", "--dry-run", "--since", "1h", "--until", "2h"},
		"drop no model":  {"events", "drop", "--projector", "p"},
		"drop bad model": {"events", "drop", "--projector", "p", "--model", "Bad Name"},
	} {
		t.Run(name, func(t *testing.T) {
			if out, err := runEventsCLI(t, args...); err == nil {
				t.Fatalf("accepted: %s", out)
			}
		})
	}
}

// TestReplayRefusesEventsBeyondTheInboxHorizon: consumers have forgotten events older than
// their inbox horizon and would apply them again, so replay refuses them unless told that the
// target has nothing to forget.
func TestReplayRefusesEventsBeyondTheInboxHorizon(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	t.Setenv("REDIS_URL", srv.URL())
	ctx := context.Background()
	old := event.New()
	old.SetID("old-1")
	old.SetSource("s")
	old.SetType("t")
	body, _ := json.Marshal(old)
	tenDaysAgo := time.Now().Add(-240 * time.Hour).UnixMilli()
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: eventlog.GlobalStream, ID: fmt.Sprintf("%d-0", tenDaysAgo), Values: []any{"ce", string(body)}}).Err(); err != nil {
		t.Fatal(err)
	}
	var received atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer target.Close()

	out, err := runEventsCLI(t, "events", "replay", "--to", target.URL, "--rate", "0")
	if err == nil || !strings.Contains(err.Error(), "inbox-horizon") || received.Load() != 0 {
		t.Fatalf("replay of a 10-day-old event: %v (%s), %d sent; want a refusal naming --inbox-horizon", err, out, received.Load())
	}
	if _, err := runEventsCLI(t, "events", "replay", "--to", target.URL, "--rate", "0", "--inbox-horizon", "720h"); err != nil || received.Load() != 1 {
		t.Fatalf("within a 30-day horizon: %v, %d sent", err, received.Load())
	}
	if _, err := runEventsCLI(t, "events", "replay", "--to", target.URL, "--rate", "0", "--allow-beyond-horizon"); err != nil || received.Load() != 2 {
		t.Fatalf("with --allow-beyond-horizon: %v, %d sent", err, received.Load())
	}
	if out, err := runEventsCLI(t, "events", "replay", "--dry-run"); err != nil || !strings.Contains(out, "old-1") {
		t.Fatalf("a dry run lists old events: %v %s", err, out)
	}
}

func TestReplaySkipsRefusalsAndStopsOnOutages(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	log := eventlog.New(srv.Client(), eventlog.Options{})
	for _, id := range []string{"good-1", "bad-1", "good-2", "down-1", "good-3"} {
		e := event.New()
		e.SetID(id)
		e.SetSource("s")
		e.SetType("t")
		if _, err := log.Append(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("Ce-Id")
		got = append(got, id)
		switch {
		case strings.HasPrefix(id, "bad"):
			http.Error(w, "data.quantity must be positive", http.StatusBadRequest)
		case strings.HasPrefix(id, "down"):
			http.Error(w, "redis unavailable", http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusAccepted)
		}
	}))
	defer target.Close()
	out, err := runEventsCLI(t, "events", "replay", "--to", target.URL, "--rate", "0")
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("a 503 must stop the replay: %v", err)
	}
	if !strings.Contains(out, "refused\t") || !strings.Contains(out, "bad-1") {
		t.Fatalf("the refusal is not reported: %q", out)
	}
	if strings.Join(got, ",") != "good-1,bad-1,good-2,down-1" {
		t.Fatalf("sent %v; want the refusal skipped and the outage to stop the replay", got)
	}
}
