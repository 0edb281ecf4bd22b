package cli

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
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

// notifyAPIServer runs a notify dispatcher and its endpoint API on a real Redis, behind an
// HTTP server, as the notify function does.
func notifyAPIServer(t *testing.T, token string) (*httptest.Server, *notify.Store) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	rdb := srv.Client()
	store := notify.NewStore(rdb, time.Hour)
	d := notify.NewDispatcher(store, deadletter.NewStore(rdb, deadletter.Options{}), nil, notify.Options{Schedule: notify.Schedule{time.Hour}, Poll: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	api := &notify.API{Store: store, Dispatcher: d, Guard: &notify.Guard{Loopback: true}, Token: token}
	hs := httptest.NewServer(api)
	t.Cleanup(hs.Close)
	return hs, store
}

func TestNotifyEndpointAPICommands(t *testing.T) {
	const token = "cli-test-token-0123456789"
	hs, store := notifyAPIServer(t, token)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer rcv.Close()
	// A state dir holding the development secret knfaas up generated for the notify-api Secret.
	state := t.TempDir()
	secrets := `{"secrets":[{"namespace":"knfaas","secret":"notify-api","key":"token","placeholder":"CHANGE-ME-notify-api-token-000000","value":"` + token + `"}]}`
	if err := os.WriteFile(filepath.Join(state, embedded.DevSecretsFile), []byte(secrets), 0o600); err != nil {
		t.Fatal(err)
	}
	api := []string{"--api", hs.URL, "--state-dir", state}
	with := func(args ...string) []string { return append(args, api...) }
	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"create", with("notify", "endpoints", "create", "shop", "--url", rcv.URL, "--type", "com.example.order.*", "--header", "X-Tenant=acme"),
			[]string{"endpoint shop created: " + rcv.URL, "secret: whsec_", "shown once"}, ""},
		{"create names the bad fields", with("notify", "endpoints", "create", "Bad", "--url", "ftp://x", "--type", "t"), nil, "400 Bad Request:\n  name: \"Bad\" must be a lower-case DNS label"},
		{"create with a private URL", with("notify", "endpoints", "create", "internal", "--url", "http://10.0.0.1/", "--type", "t"), nil, "url: \"http://10.0.0.1/\" resolves to a refused address"},
		{"wrong token", with("notify", "endpoints", "create", "x", "--url", rcv.URL, "--type", "t", "--token", "not-the-token-0000"), nil, "401 Unauthorized"},
		{"update keeps what is not given", with("notify", "endpoints", "update", "shop", "--timeout", "3s", "-o", "json"), []string{`"timeout": "3s"`, `"types": [`, `"com.example.order.*"`, `"X-Tenant": "acme"`}, ""},
		{"update of an unknown endpoint", with("notify", "endpoints", "update", "nope", "--timeout", "3s"), nil, "404 Not Found"},
		{"rotate", with("notify", "endpoints", "rotate", "shop", "--overlap", "1h"), []string{"endpoint shop rotated", "previous secret signs beside the new one until", "secret: whsec_"}, ""},
		{"rotate with a bad overlap", with("notify", "endpoints", "rotate", "shop", "--overlap", "1y"), nil, "overlap:"},
		{"disable", with("notify", "endpoints", "disable", "shop"), []string{"endpoint shop disabled", "messages wait"}, ""},
		{"listed disabled with counters", []string{"notify", "endpoints"}, []string{"SOURCE", "DELIVERED", "shop", "api", "closed", "disabled through the API"}, ""},
		{"enable", with("notify", "endpoints", "enable", "shop", "-o", "yaml"), []string{"name: shop", "paused: false"}, ""},
		{"replay", with("notify", "replay", "--endpoint", "shop", "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z"), []string{"sent again", "matched"}, ""},
		{"replay again", with("notify", "replay", "--endpoint", "shop", "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z"), []string{"issued at", "already: nothing sent now"}, ""},
		{"replay without since", with("notify", "replay", "--endpoint", "shop"), nil, "--endpoint and --since are required"},
		{"replay with a bad time", with("notify", "replay", "--endpoint", "shop", "--since", "yesterday"), nil, `--since "yesterday"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q\n%s", err, tc.wantErr, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	ep, err := store.APIEndpoint(context.Background(), "shop")
	if err != nil || ep.Timeout != "3s" || ep.Paused || ep.Previous == "" {
		t.Errorf("stored endpoint %+v, %v", ep, err)
	}
}

func TestNotifyTokenNeedsASource(t *testing.T) {
	t.Setenv(EnvNotifyToken, "")
	_, err := runCLI(t, "notify", "endpoints", "disable", "x", "--api", "http://127.0.0.1:1", "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no token: pass --token or set "+EnvNotifyToken) {
		t.Fatalf("error %v", err)
	}
}

// TestNotifyOutputGolden: the endpoints list and a replay's result in each format.
func TestNotifyOutputGolden(t *testing.T) {
	eps := []notify.EndpointStatus{
		{Name: "billing", Source: notify.SourceConfigMap, Circuit: notify.BreakerState{State: "open", Until: goldenTime.Add(30 * time.Second), ConsecutiveFailures: 5},
			Counters: map[string]int64{"delivered": 120, "retry": 7, "deferred": 3}},
		{Name: "crm", Source: notify.SourceAPI, URL: "https://crm.example.com/hooks", Paused: true, Circuit: notify.BreakerState{State: "closed"}},
		{Name: "old", Source: notify.SourceConfigMap, Circuit: notify.BreakerState{State: "closed"}, Disabled: "410 Gone from https://old.example.com (since 2026-03-04T05:06:07Z)",
			Counters: map[string]int64{"gone": 1, "dead": 4}},
	}
	replay := notify.Replay{ID: "rpl_crm_1772600767000_1772604367000", Endpoint: "crm", Since: goldenTime.Truncate(time.Second), Until: goldenTime.Truncate(time.Second).Add(time.Hour),
		Issued: goldenTime, Matched: 12, Scheduled: 11, Pending: 1, Truncated: true, Next: goldenTime.Add(50 * time.Minute)}
	tests := []struct {
		name  string
		print func(w io.Writer, o string) error
	}{
		{"notify-endpoints", func(w io.Writer, o string) error { return printNotifyEndpoints(w, o, eps) }},
		{"notify-endpoints-empty", func(w io.Writer, o string) error { return printNotifyEndpoints(w, o, nil) }},
		{"notify-replay", func(w io.Writer, o string) error { return printReplay(w, o, replay) }},
	}
	for _, tc := range tests {
		for _, output := range []string{outputTable, outputJSON, outputYAML} {
			t.Run(tc.name+"/"+output, func(t *testing.T) {
				var buf bytes.Buffer
				if err := tc.print(&buf, output); err != nil {
					t.Fatal(err)
				}
				checkGolden(t, tc.name+"."+output, buf.Bytes())
				if output == outputJSON {
					checkKeys(t, buf.Bytes())
				}
			})
		}
	}
}
