package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/httpauth"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/sinktest"
	"github.com/knfaas/knfaas/internal/harness/starttest"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

const (
	aliceToken = "alice-secret-0123456789"
	bobToken   = "bob-secret-0123456789ab"
	opsToken   = "ops-secret-0123456789abc"
	// testSigningKey is the tasks-signing key the function and the engine share in the tests.
	testSigningKey = "test-signing-key-0123456789abcdef"
)

type fixture struct {
	t      *testing.T
	f      *Function
	sink   *sinktest.Recorder
	engine *process.Engine
	now    time.Time
}

func setup(t *testing.T) *fixture {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	b, err := os.ReadFile("testdata/order.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d, err := process.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	set, _ := process.NewSet(d)
	fx := &fixture{t: t, sink: &sinktest.Recorder{}, now: t0}
	keys, err := process.NewSigningKeys(testSigningKey, "")
	if err != nil {
		t.Fatal(err)
	}
	fx.engine = process.NewEngine(rdb, set, process.Options{Keys: keys, Now: func() time.Time { return fx.now }})
	auth, err := httpauth.New(context.Background(), httpauth.Config{Tokens: []httpauth.Token{
		{Name: "alice", Secret: aliceToken, Groups: []string{"managers"}},
		{Name: "bob", Secret: bobToken, Groups: []string{"cooks"}},
		{Name: "ops", Secret: opsToken, Groups: []string{"ops"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	fx.f = New()
	fx.f.now = func() time.Time { return fx.now }
	fx.f.start(Config{AdminGroups: []string{"ops"}}, rdb, auth, keys, fx.sink.Send)
	return fx
}

// openTask starts an order above the approval amount and pays it: its approval task opens.
func (fx *fixture) openTask(inst string) string {
	fx.t.Helper()
	for _, ev := range []process.Event{
		{ID: inst + "-start", Source: "/t", Type: "test.order.placed", Subject: inst, Data: []byte(`{"amount":500}`)},
		{ID: inst + "-paid", Source: "/t", Type: "test.paid", Subject: inst},
	} {
		if _, err := fx.engine.Apply(context.Background(), ev); err != nil {
			fx.t.Fatal(err)
		}
	}
	return inst + ":approve:1"
}

func (fx *fixture) do(method, path, token, body string) (int, string) {
	fx.t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	fx.f.Handle(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

func TestTasksAPI(t *testing.T) {
	fx := setup(t)
	id := fx.openTask("big")
	steps := []struct {
		name, method, path, token, body string
		status                          int
		contains                        string
	}{
		{"no credentials", "GET", "/tasks", "", "", 401, ""},
		{"wrong token", "GET", "/tasks", "not-a-valid-token-at-all", "", 401, ""},
		{"group member lists it", "GET", "/tasks", aliceToken, "", 200, `"id":"big:approve:1"`},
		{"filter by process", "GET", "/tasks?process=order", aliceToken, "", 200, `"id":"big:approve:1"`},
		{"filter by other process", "GET", "/tasks?process=other", aliceToken, "", 200, `{"tasks":[]}`},
		{"outsider sees none", "GET", "/tasks", bobToken, "", 200, `{"tasks":[]}`},
		{"bad limit", "GET", "/tasks?limit=x", aliceToken, "", 400, "limit"},
		{"get unknown", "GET", "/tasks/nope", aliceToken, "", 404, "nope"},
		{"get by outsider", "GET", "/tasks/" + id, bobToken, "", 403, "bob"},
		{"get by member", "GET", "/tasks/" + id, aliceToken, "", 200, `"state":"open"`},
		{"malformed JSON", "POST", "/tasks/" + id + "/complete", aliceToken, `{"ok":`, 400, "JSON"},
		{"JSON that is not an object", "POST", "/tasks/" + id + "/complete", aliceToken, `[1]`, 400, "JSON object"},
		{"complete unknown", "POST", "/tasks/nope/complete", aliceToken, `{}`, 404, "nope"},
		{"complete by outsider", "POST", "/tasks/" + id + "/complete", bobToken, `{}`, 403, ""},
		{"unknown action", "POST", "/tasks/" + id + "/approve", aliceToken, `{}`, 404, ""},
		{"complete by member", "POST", "/tasks/" + id + "/complete", aliceToken, `{"note":"fine"}`, 200, `"actor":"alice"`},
		{"complete twice", "POST", "/tasks/" + id + "/complete", aliceToken, `{}`, 409, `completed by "alice"`},
		{"reject after completion, by admin", "POST", "/tasks/" + id + "/reject", opsToken, `{}`, 409, `completed by "alice"`},
		{"no longer listed", "GET", "/tasks", aliceToken, "", 200, `{"tasks":[]}`},
	}
	for _, s := range steps {
		code, body := fx.do(s.method, s.path, s.token, s.body)
		if code != s.status || !strings.Contains(body, s.contains) {
			t.Errorf("%s: %d %q, want %d containing %q", s.name, code, body, s.status, s.contains)
		}
	}
	got := fx.sink.Take()
	if len(got) != 1 {
		t.Fatalf("published %d replies, want 1", len(got))
	}
	e := got[0]
	if e.Type() != process.TypeTaskCompleted || e.ID() != id+":completed" || e.Subject() != "big" || e.Extensions()["knfaasactor"] != "alice" || e.Extensions()["knfaasowner"] != "process" || e.Extensions()["knfaascommand"] != id {
		t.Errorf("reply event = %v", e)
	}
	var data struct {
		Actor   struct{ Subject, Method string }
		Payload map[string]string
	}
	if err := json.Unmarshal(e.Data(), &data); err != nil || data.Actor.Subject != "alice" || data.Actor.Method != "token" || data.Payload["note"] != "fine" {
		t.Errorf("reply data %s (%v)", e.Data(), err)
	}
	// the reply moves the process, which records who approved
	if e.Extensions()[process.ExtDecided] != strconv.FormatInt(t0.UnixMilli(), 10) || !strings.HasPrefix(e.Extensions()[process.ExtSignature].(string), "v1=") {
		t.Errorf("reply event is not signed with its decision time: %v", e)
	}
	res, err := fx.engine.Apply(context.Background(), process.EventFrom(e))
	if err != nil || len(res.Outbox) == 0 || res.Outbox[len(res.Outbox)-1].Type != "test.cook" {
		t.Fatalf("process after approval: %+v %v", res, err)
	}
}

func TestExpiredTaskIsRefused(t *testing.T) {
	fx := setup(t)
	id := fx.openTask("late")
	fx.now = t0.Add(11 * time.Minute) // the approval step's timeout is 10m
	code, body := fx.do("POST", "/tasks/"+id+"/complete", aliceToken, `{}`)
	if code != 409 || !strings.Contains(body, "expired") {
		t.Errorf("completing an expired task: %d %q, want 409 expired", code, body)
	}
	if n := len(fx.sink.Take()); n != 0 {
		t.Errorf("expired task published %d replies", n)
	}
}

func TestFailedPublishIsRepeatedBySameCaller(t *testing.T) {
	fx := setup(t)
	id := fx.openTask("o")
	fx.sink.SetFailing(true)
	if code, _ := fx.do("POST", "/tasks/"+id+"/reject", aliceToken, `{"why":"too big"}`); code != 503 {
		t.Fatalf("publish failure answered %d, want 503", code)
	}
	fx.sink.SetFailing(false)
	if code, body := fx.do("POST", "/tasks/"+id+"/complete", opsToken, `{}`); code != 409 {
		t.Errorf("another decision after the recorded rejection: %d %q, want 409", code, body)
	}
	if code, body := fx.do("POST", "/tasks/"+id+"/reject", aliceToken, `{"why":"too big"}`); code != 200 {
		t.Fatalf("repeating the rejection: %d %q, want 200", code, body)
	}
	got := fx.sink.Take()
	if len(got) != 1 || got[0].ID() != id+":rejected" || !strings.Contains(string(got[0].Data()), "too big") {
		t.Errorf("published %v, want the one recorded rejection", got)
	}
	if code, _ := fx.do("POST", "/tasks/"+id+"/reject", aliceToken, `{}`); code != 409 {
		t.Errorf("rejecting again after delivery: %d, want 409", code)
	}
}

func TestDecisionBodyMustBeAnObject(t *testing.T) {
	tests := []struct {
		name, body string
		status     int
		contains   string
	}{
		{"null", `null`, 400, "not null"},
		{"null with spaces", " null\n", 400, "not null"},
		{"array", `[1]`, 400, "not an array"},
		{"string", `"yes"`, 400, "not a string"},
		{"number", `1`, 400, "not a number"},
		{"boolean", `true`, 400, "not a boolean"},
		{"malformed", `{"ok":`, 400, "JSON object"},
		{"two values", `{} {}`, 400, "JSON object"},
		{"empty body", ``, 200, `"state":"completed"`},
		{"whitespace only", " \n", 200, `"state":"completed"`},
		{"object", `{"note":"fine"}`, 200, `"state":"completed"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := setup(t)
			id := fx.openTask("o")
			code, body := fx.do("POST", "/tasks/"+id+"/complete", aliceToken, tc.body)
			if code != tc.status || !strings.Contains(body, tc.contains) {
				t.Fatalf("%d %q, want %d containing %q", code, body, tc.status, tc.contains)
			}
			if published := len(fx.sink.Take()); (tc.status == 200) != (published == 1) {
				t.Errorf("published %d replies", published)
			}
		})
	}
}

func TestConcurrentDecisionsOneWins(t *testing.T) {
	fx := setup(t)
	id := fx.openTask("big")
	// alice completes and ops rejects, five times each, all at once.
	type answer struct {
		action string
		code   int
	}
	const n = 10
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			action := []string{"complete", "reject"}[i%2]
			token := map[string]string{"complete": aliceToken, "reject": opsToken}[action]
			code, _ := fx.do("POST", "/tasks/"+id+"/"+action, token, `{}`)
			answers <- answer{action, code}
		}()
	}
	wg.Wait()
	close(answers)
	won := map[string]int{}
	for a := range answers {
		switch a.code {
		case 200:
			won[a.action]++
		case 409:
		default:
			t.Errorf("%s answered %d", a.action, a.code)
		}
	}
	// Only one decision wins; the winner's own repeats may be answered 200 with the same reply.
	if len(won) != 1 {
		t.Fatalf("decisions answered 200: %v, want one decision", won)
	}
	got := fx.sink.Take()
	if len(got) == 0 {
		t.Fatal("nothing published")
	}
	applied := 0
	for _, e := range got {
		if e.ID() != got[0].ID() {
			t.Errorf("published %s and %s: two decisions", got[0].ID(), e.ID())
		}
		res, err := fx.engine.Apply(context.Background(), process.EventFrom(e))
		if err != nil {
			t.Fatal(err)
		}
		if res.Status == process.StatusApplied {
			applied++
		}
	}
	if applied != 1 {
		t.Errorf("the process applied %d decisions, want 1", applied)
	}
}

func TestStartRefusesBadConfiguration(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"placeholder signing key", map[string]string{"TASKS_SIGNING_KEY": "CHANGE-ME-tasks-signing-key-0000000000"},
			`TASKS_SIGNING_KEY (Secret tasks-signing, key current) holds the template placeholder "CHANGE-ME-tasks-signing-key-0000000000"`},
		{"placeholder previous signing key", map[string]string{"TASKS_SIGNING_KEY_PREVIOUS": "CHANGE-ME-previous"},
			"TASKS_SIGNING_KEY_PREVIOUS (Secret tasks-signing, key previous) holds the template placeholder"},
		{"placeholder manager token", map[string]string{"AUTH_TOKENS": "manager:managers:CHANGE-ME-manager-token-000000"},
			`AUTH_TOKENS: line 1: the secret of token "manager" holds the template placeholder "CHANGE-ME-manager-token-000000"`},
		{"placeholder operator token after a real one", map[string]string{"AUTH_TOKENS": "alice:managers:" + aliceToken + ";operator:ops:CHANGE-ME-operator-token-00000"},
			`AUTH_TOKENS: line 2: the secret of token "operator" holds the template placeholder`},
		{"no signing key", map[string]string{"TASKS_SIGNING_KEY": ""}, "TASKS_SIGNING_KEY"},
		{"short signing key", map[string]string{"TASKS_SIGNING_KEY": "short"}, "at least 32"},
		// Zero used to become the sink's own 10s, and a negative value an unbounded publish.
		{"zero send timeout", map[string]string{"TASKS_SEND_TIMEOUT": "0s"}, "TASKS_SEND_TIMEOUT (0s) must be positive"},
		{"negative send timeout", map[string]string{"TASKS_SEND_TIMEOUT": "-1s"}, "TASKS_SEND_TIMEOUT (-1s) must be positive"},
		{"send timeout not a duration", map[string]string{"TASKS_SEND_TIMEOUT": "10"}, "TASKS_SEND_TIMEOUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New()
			base := map[string]string{"K_SINK": "http://127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1",
				"AUTH_TOKENS": "alice:managers:" + aliceToken, "TASKS_SIGNING_KEY": testSigningKey}
			starttest.Refuses(t, f.Start, tc.want, base, tc.env)
			if f.Running() {
				t.Error("running after a refused start")
			}
		})
	}
}

// TestSendTimeoutDefault: TASKS_SEND_TIMEOUT unset is its tag's 10s.
func TestSendTimeoutDefault(t *testing.T) {
	t.Setenv("K_SINK", "http://127.0.0.1:1")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
	t.Setenv("AUTH_TOKENS", "alice:managers:"+aliceToken)
	t.Setenv("TASKS_SIGNING_KEY", testSigningKey)
	f := New()
	if err := f.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())
	if f.cfg.SendTimeout != 10*time.Second {
		t.Errorf("send timeout %s, want 10s", f.cfg.SendTimeout)
	}
}
