package mail

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/notify"
)

// TestMetrics: the server's circuit, the send counters and the waiting mails, as every instance
// reads them from Redis.
func TestMetrics(t *testing.T) {
	okID := MessageID(MessageKey(Request{}, "/test", "ok"))
	f := start(t, notify.Schedule{time.Hour}, breaker.Settings{ConsecutiveFailures: 2, FailureRatio: 1, MinRequests: 100, Window: time.Minute, OpenFor: time.Hour},
		func(id string, _ int) error {
			if id == okID {
				return nil
			}
			return errDown
		})
	ctx := context.Background()
	metrics := func() string {
		var b strings.Builder
		if err := f.store.WriteMetrics(ctx, &b, testServer); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	ok, _ := f.enqueue(t, "ok", false)
	eventually(t, "the first mail was sent", func() bool { return f.state(t, ok.ID) == StateDelivered })
	server := `server="` + testServer.Name() + `"`
	steps := []struct {
		name    string
		enqueue []string
		until   func() bool
		want    []string
	}{
		{name: "closed after a success", want: []string{
			`knfaas_mail_server_circuit{` + server + `,state="closed"} 1`,
			`knfaas_mail_server_circuit{` + server + `,state="open"} 0`,
			`knfaas_mail_sends_total{` + server + `,outcome="delivered"} 1`,
			`knfaas_mail_scheduled 0`,
		}},
		{name: "open after two failures; a third mail waits", enqueue: []string{"a", "b", "c"},
			until: func() bool { return strings.Contains(metrics(), `outcome="deferred"`) },
			want: []string{
				`knfaas_mail_server_circuit{` + server + `,state="open"} 1`,
				`knfaas_mail_server_consecutive_failures{` + server + `} 0`, // gobreaker counts anew in each state
				`knfaas_mail_sends_total{` + server + `,outcome="retry"} 2`,
				`knfaas_mail_scheduled 3`,
			}},
	}
	for _, s := range steps {
		for i, id := range s.enqueue {
			f.enqueue(t, id, false)
			if i == 1 {
				// The third is enqueued once the circuit is open.
				eventually(t, "the circuit opens", func() bool { return strings.Contains(metrics(), `state="open"} 1`) })
			}
		}
		if s.until != nil {
			eventually(t, s.name, s.until)
		}
		got := metrics()
		for _, w := range s.want {
			if !strings.Contains(got, w+"\n") {
				t.Errorf("%s: metrics lack %q:\n%s", s.name, w, got)
			}
		}
	}
}
