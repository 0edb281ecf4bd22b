package breaker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

var testLabels = Labels{Prefix: "knfaas:test:", Log: "test", Target: "endpoint", Attr: "endpoint"}

// trip is a breaker that opens after two failures in a row and stays open for openFor.
func trip(openFor time.Duration) Settings {
	return Settings{ConsecutiveFailures: 2, FailureRatio: 1, MinRequests: 1000, Window: time.Minute, OpenFor: openFor}
}

func TestAdmitFollowsTheRecordedAttempts(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	tests := []struct {
		name     string
		failures []bool // results recorded before Admit, true for a failure
		openFor  time.Duration
		wait     time.Duration // before Admit
		want     string
		waits    bool // Admit answers a time before which nothing goes
		probe    bool
	}{
		{name: "nothing recorded: closed", want: StateClosed},
		{name: "successes keep it closed", failures: []bool{false, false, false}, want: StateClosed},
		{name: "one failure is under the threshold", failures: []bool{true}, want: StateClosed},
		{name: "a success resets the run of failures", failures: []bool{true, false, true}, want: StateClosed},
		{name: "two failures in a row open it", failures: []bool{true, true}, want: StateOpen, waits: true},
		{name: "past OpenFor one probe may go", failures: []bool{true, true}, openFor: 100 * time.Millisecond, wait: 200 * time.Millisecond, want: StateHalfOpen, probe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			openFor := tt.openFor
			if openFor == 0 {
				openFor = time.Hour
			}
			b, err := NewStore(rdb, testLabels).New(t.Name(), trip(openFor), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for _, failed := range tt.failures {
				b.Record(ctx, failed, false)
			}
			time.Sleep(tt.wait)
			adm, err := b.Admit(ctx, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if adm.State != tt.want || !adm.Until.IsZero() != tt.waits || adm.Probe != tt.probe {
				t.Errorf("Admit = %+v, want state %s, waits %v, probe %v", adm, tt.want, tt.waits, tt.probe)
			}
		})
	}
}

func TestHalfOpenProbe(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	tests := []struct {
		name        string
		probeFailed bool
		want        string
	}{
		{name: "a successful probe closes the circuit", want: StateClosed},
		{name: "a failed probe opens it again", probeFailed: true, want: StateOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Two instances: each its own store (its own lock token) and breaker, one Redis.
			first, err := NewStore(rdb, testLabels).New(t.Name(), trip(100*time.Millisecond), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			second, err := NewStore(rdb, testLabels).New(t.Name(), trip(100*time.Millisecond), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			first.Record(ctx, true, false)
			first.Record(ctx, true, false)
			if adm, _ := second.Admit(ctx, time.Now()); adm.State != StateOpen || adm.Until.IsZero() {
				t.Fatalf("the second instance sees %+v, want the first's open circuit", adm)
			}
			time.Sleep(200 * time.Millisecond)
			probe, err := first.Admit(ctx, time.Now())
			if err != nil || !probe.Probe || probe.Logged() != ProbeState {
				t.Fatalf("first Admit past OpenFor = %+v, %v; want the probe", probe, err)
			}
			other, err := second.Admit(ctx, time.Now())
			if err != nil || other.Probe || other.Until.IsZero() {
				t.Fatalf("second Admit while the probe is out = %+v, %v; want to wait", other, err)
			}
			if after := probe.AfterProbe(time.Now()); after.Probe || after.Until.IsZero() {
				t.Errorf("AfterProbe = %+v: the step's other attempts must wait", after)
			}
			first.Record(ctx, tt.probeFailed, true)
			if n, _ := rdb.Exists(ctx, "knfaas:test:probe:"+t.Name()).Result(); n != 0 {
				t.Error("the probe's lock is still held after Record")
			}
			st, err := Read(ctx, rdb, testLabels, t.Name())
			if err != nil || st.State != tt.want {
				t.Errorf("after the probe: %+v, %v; want %s", st, err, tt.want)
			}
		})
	}
}

// TestKeys pins the Redis keys: circuits stored before the breaker was shared by notify and mail
// must still be read, and the two functions' circuits must not mix.
func TestKeys(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	notifyLabels := Labels{Prefix: "knfaas:notify:", Log: "notify", Target: "endpoint", Attr: "endpoint"}
	mailLabels := Labels{Prefix: "knfaas:mail:", Log: "mail", Target: "SMTP server", Attr: "server"}
	open := `{"state":2,"generation":1,"counts":{"requests":0,"totalSuccesses":0,"totalFailures":0,"consecutiveSuccesses":0,"consecutiveFailures":0},"expiry":"2030-01-02T03:04:05Z"}`
	if err := rdb.Set(ctx, "knfaas:notify:breaker:gobreaker:state:billing", open, 0).Err(); err != nil {
		t.Fatal(err)
	}
	b, err := NewStore(rdb, mailLabels).New("smtp:25", trip(time.Hour), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	b.Record(ctx, true, false)
	b.Record(ctx, true, false)
	tests := []struct {
		name   string
		labels Labels
		target string
		want   string
		until  time.Time
	}{
		{name: "notify reads a circuit stored under its old key", labels: notifyLabels, target: "billing", want: StateOpen, until: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)},
		{name: "mail's circuit is under mail's prefix", labels: mailLabels, target: "smtp:25", want: StateOpen},
		{name: "notify does not see mail's circuit", labels: notifyLabels, target: "smtp:25", want: StateClosed},
		{name: "mail does not see notify's circuit", labels: mailLabels, target: "billing", want: StateClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := Read(ctx, rdb, tt.labels, tt.target)
			if err != nil || st.State != tt.want || (!tt.until.IsZero() && !st.Until.Equal(tt.until)) {
				t.Errorf("Read = %+v, %v; want %s until %s", st, err, tt.want, tt.until)
			}
		})
	}
	if n, _ := rdb.Exists(ctx, "knfaas:mail:breaker:gobreaker:state:smtp:25").Result(); n != 1 {
		t.Error("mail's circuit is not at knfaas:mail:breaker:gobreaker:state:<server>")
	}
	names, err := Names(ctx, rdb, notifyLabels)
	if err != nil || !slices.Equal(names, []string{"billing"}) {
		t.Errorf("Names(notify) = %v, %v; want [billing]", names, err)
	}
}

func TestReadRefusesAGarbledCircuit(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	rdb.Set(ctx, "knfaas:test:breaker:gobreaker:state:ep", "not json", 0)
	if _, err := Read(ctx, rdb, testLabels, "ep"); err == nil {
		t.Error("a garbled circuit was read without an error")
	}
	stopped := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer stopped.Close()
	if _, err := Read(ctx, stopped, testLabels, "ep"); err == nil {
		t.Error("no error when Redis cannot be reached")
	}
}
