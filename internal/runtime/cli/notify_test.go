package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestNotifyCommands(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	rdb := srv.Client()
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) }))
	defer gone.Close()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer ok.Close()
	eps, err := notify.Parse([]byte("endpoints:\n- {name: gone, url: '"+gone.URL+"', types: ['*'], secretEnv: [S]}\n- {name: ok, url: '"+ok.URL+"', types: ['*'], secretEnv: [S]}\n"),
		func(string) (string, bool) { return "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true })
	if err != nil {
		t.Fatal(err)
	}
	store := notify.NewStore(rdb, time.Hour)
	d := notify.NewDispatcher(store, deadletter.NewStore(rdb, deadletter.Options{}), eps, notify.Options{Schedule: notify.Schedule{time.Hour}, Poll: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	e := cloudevents.NewEvent()
	e.SetID("o-1")
	e.SetSource("/shop")
	e.SetType("order")
	_ = e.SetData("application/json", []byte(`{}`))
	msg, _, err := store.Enqueue(ctx, e, []string{"gone", "ok"}, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d.Wake()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := store.States(ctx, msg)
		if st["gone"] == notify.StateDead && st["ok"] == notify.StateDelivered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("states %v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done

	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"endpoints", []string{"notify", "endpoints"}, []string{"ENDPOINT", "gone", "410 Gone from " + gone.URL, "ok", "closed"}, ""},
		{"endpoints json", []string{"notify", "endpoints", "-o", "json"}, []string{`"name": "gone"`, `"disabled": "410 Gone`}, ""},
		{"endpoints yaml", []string{"notify", "endpoints", "-o", "yaml"}, []string{"- circuit:", "name: gone", "disabled: 410 Gone"}, ""},
		{"attempts yaml", []string{"notify", "attempts", msg, "-o", "yaml"}, []string{"message: " + msg, "endpoint: gone", "state: dead"}, ""},
		{"attempts by id", []string{"notify", "attempts", msg}, []string{"Message: " + msg, "gone: dead", "410", "gone", "ok: delivered", "200", "closed"}, ""},
		{"attempts by event", []string{"notify", "attempts", "--source", "/shop", "--id", "o-1", "ok"}, []string{"ok: delivered"}, ""},
		{"attempts of an unknown endpoint", []string{"notify", "attempts", msg, "nope"}, nil, `never for endpoint "nope"`},
		{"attempts unknown message", []string{"notify", "attempts", "msg_nothing"}, nil, "no message msg_nothing"},
		{"attempts unnamed", []string{"notify", "attempts"}, nil, "name the message"},
		{"retry delivered", []string{"notify", "retry", msg, "ok"}, []string{"already delivered to ok"}, ""},
		{"enable", []string{"notify", "enable", "gone"}, []string{"endpoint gone enabled"}, ""},
		{"enabled", []string{"notify", "endpoints"}, []string{"ok"}, ""},
		{"retry dead", []string{"notify", "retry", "--source", "/shop", "--id", "o-1", "gone"}, []string{"scheduled at gone now"}, ""},
		{"retry unknown pair", []string{"notify", "retry", msg, "nope"}, nil, "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := NewRootCommand("knfaas")
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(tc.args)
			err := root.Execute()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
	bg := context.Background()
	if st, _ := store.States(bg, msg); st["gone"] != notify.StatePending {
		t.Errorf("after retry the pair is %q, want pending", st["gone"])
	}
	if disabled, _ := store.Disabled(bg); disabled["gone"] != "" {
		t.Errorf("still disabled after enable: %v", disabled)
	}
}
