package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// broker records what the desk publishes, or refuses it.
type broker struct {
	sent []event.Event
	err  error
}

func (b *broker) Send(_ context.Context, e event.Event) error {
	if b.err != nil {
		return b.err
	}
	b.sent = append(b.sent, e)
	return nil
}

const mallory = `{"submissionId":"sub-42","title":"Analytical engines","speaker":{"name":"Mallory","email":"mallory@example.com"}}`

const ada = `{"submissionId":"sub-42","title":"Analytical engines","abstract":"…","speaker":{"name":"Ada Lovelace","email":"ada@example.com"},"formVersion":3}`

// instance stores a cfp-submission instance as the process manager does (the fields the desk
// reads): its start data and the commands (id, type) its timeline shows going out.
func instance(t *testing.T, rdb *redis.Client, id, data string, out ...[2]string) {
	t.Helper()
	ctx := context.Background()
	if err := rdb.HSet(ctx, process.KeyInstancePrefix+id, "process", ProcessName, "status", "running", "data", data).Err(); err != nil {
		t.Fatal(err)
	}
	for _, o := range out {
		b, _ := json.Marshal(process.TimelineEntry{Kind: "out", ID: o[0], Type: o[1]})
		rdb.RPush(ctx, process.KeyTimelinePrefix+id, b)
	}
}

// newDesk is a started desk on a fresh redis-server with sub-42's instance, whose timeline shows
// the commands the tests answer.
func newDesk(t *testing.T, b *broker) *Function {
	t.Helper()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	instance(t, rdb, "sub-42", ada, [2]string{"sub-42:acknowledge:1", TypeAckSend},
		[2]string{"sub-42:accept:1", TypeAcceptanceSend}, [2]string{"sub-42:accept:1", TypeRejectionSend})
	f := &Function{publish: b, rdb: rdb}
	f.started.Store(true)
	return f
}

func incoming(id, typ, subject, data string) event.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType(typ)
	e.SetSource("/test")
	if subject != "" {
		e.SetSubject(subject)
	}
	_ = e.SetData(cloudevents.ApplicationJSON, []byte(data))
	return e
}

func TestHandle(t *testing.T) {
	tests := []struct {
		name string
		in   event.Event
		// reply is "<type> <id> <subject>" of the reply, "" for none; status the HTTP status of
		// a refusal (0: none); mail the idempotency key of the published request ("" for none).
		reply  string
		status int
		mail   string
	}{
		{name: "a form delivery starts its submission", in: incoming("wh-1", TypeFormSubmitted, "", ada),
			reply: TypeSubmissionReceived + " submission:sub-42 sub-42"},
		{name: "another delivery of the same submission is the same start event", in: incoming("wh-2", TypeFormSubmitted, "", ada),
			reply: TypeSubmissionReceived + " submission:sub-42 sub-42"},
		{name: "the acknowledgement command", in: incoming("sub-42:acknowledge:1", TypeAckSend, "sub-42", ada),
			reply: TypeAckSent + " sub-42:acknowledge:1:ack.sent sub-42", mail: "cfp:sub-42:received"},
		{name: "not JSON", in: incoming("wh-3", TypeFormSubmitted, "", `nope`), status: http.StatusBadRequest},
		{name: "a submission id that cannot name a process", in: incoming("wh-4", TypeFormSubmitted, "",
			`{"submissionId":"a b","title":"T","speaker":{"name":"N","email":"n@example.com"}}`), status: http.StatusBadRequest},
		{name: "no title and a bad email", in: incoming("wh-5", TypeFormSubmitted, "",
			`{"submissionId":"s1","speaker":{"name":"N","email":"N <n@example.com>"}}`), status: http.StatusBadRequest},
		{name: "a command carrying other data: the instance's is used", in: incoming("sub-42:acknowledge:1", TypeAckSend, "sub-42", mallory),
			reply: TypeAckSent + " sub-42:acknowledge:1:ack.sent sub-42", mail: "cfp:sub-42:received"},
		{name: "a command for no instance", in: incoming("x:acknowledge:1", TypeAckSend, "x", ada), status: http.StatusForbidden},
		{name: "a command the process did not emit", in: incoming("sub-42:acknowledge:2", TypeAckSend, "sub-42", ada), status: http.StatusForbidden},
		{name: "an emitted id with another type", in: incoming("sub-42:acknowledge:1", TypeAcceptanceSend, "sub-42", ada), status: http.StatusForbidden},
		{name: "an unknown type", in: incoming("e1", "dev.knfaas.example.cfp.nope", "sub-42", ada), status: http.StatusBadRequest},
	}
	b := &broker{}
	f := newDesk(t, b)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.sent = nil
			r, err := f.Handle(context.Background(), tt.in)
			var res *cehttp.Result
			switch {
			case tt.status != 0 && (!errors.As(err, &res) || res.StatusCode != tt.status):
				t.Fatalf("Handle = %v, want status %d", err, tt.status)
			case tt.status == 0 && err != nil:
				t.Fatalf("Handle = %v", err)
			}
			got := ""
			if r != nil {
				got = r.Type() + " " + r.ID() + " " + r.Subject()
				if r.Source() != Source {
					t.Errorf("reply source %q", r.Source())
				}
			}
			if got != tt.reply {
				t.Fatalf("reply %q, want %q", got, tt.reply)
			}
			if tt.mail == "" {
				if len(b.sent) != 0 {
					t.Fatalf("published %v", b.sent)
				}
				return
			}
			if len(b.sent) != 1 || b.sent[0].Type() != TypeMailRequested {
				t.Fatalf("published %v, want one mail request", b.sent)
			}
			if r.Extensions()["knfaascommand"] != tt.in.ID() {
				t.Errorf("reply knfaascommand %v, want %s", r.Extensions()["knfaascommand"], tt.in.ID())
			}
			var req MailRequest
			if err := json.Unmarshal(b.sent[0].Data(), &req); err != nil {
				t.Fatal(err)
			}
			if req.IdempotencyKey != tt.mail || req.Template != TemplateReceived || strings.Join(req.To, ",") != `"Ada Lovelace" <ada@example.com>` ||
				req.Data["title"] != "Analytical engines" || req.Data["name"] != "Ada Lovelace" {
				t.Fatalf("mail request %+v", req)
			}
		})
	}
}

// A Broker that refuses the mail request fails the command (the Broker redelivers it) with no
// reply, so the process does not move on before the mail is requested.
func TestHandleRetriesWhenTheBrokerRefuses(t *testing.T) {
	f := newDesk(t, &broker{err: errors.New("503")})
	r, err := f.Handle(context.Background(), incoming("sub-42:acknowledge:1", TypeAckSend, "sub-42", ada))
	if err == nil || r != nil {
		t.Fatalf("Handle = %v, %v; want an error and no reply", r, err)
	}
	var res *cehttp.Result
	if errors.As(err, &res) && res.StatusCode < 500 {
		t.Fatalf("Handle = %v: a refusal the Broker would not retry", err)
	}
}

// The accept step's command tells the scheduling system and the speaker, then replies; the
// rejection (the review-2 step's compensation) writes to the speaker and needs no reply.
func TestHandleDecisionLetters(t *testing.T) {
	tests := []struct {
		name, typ string
		reply     string   // reply type, "" for none
		published []string // "<type> <idempotency key or id>"
	}{
		{name: "accepted", typ: TypeAcceptanceSend, reply: TypeAcceptanceSent,
			published: []string{TypeTalkAccepted + " sub-42:accept:1:talk", TypeMailRequested + " cfp:sub-42:accepted"}},
		{name: "rejected", typ: TypeRejectionSend,
			published: []string{TypeMailRequested + " cfp:sub-42:rejected"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &broker{}
			f := newDesk(t, b)
			r, err := f.Handle(context.Background(), incoming("sub-42:accept:1", tt.typ, "sub-42", ada))
			if err != nil {
				t.Fatalf("Handle = %v", err)
			}
			reply := ""
			if r != nil {
				reply = r.Type()
			}
			if reply != tt.reply {
				t.Fatalf("reply %q, want %q", reply, tt.reply)
			}
			var got []string
			for _, e := range b.sent {
				var req MailRequest
				if e.Type() == TypeMailRequested && json.Unmarshal(e.Data(), &req) == nil {
					got = append(got, e.Type()+" "+req.IdempotencyKey)
					continue
				}
				got = append(got, e.Type()+" "+e.ID())
			}
			if strings.Join(got, ", ") != strings.Join(tt.published, ", ") {
				t.Fatalf("published %v, want %v", got, tt.published)
			}
		})
	}
}

// A review task gets a reminder deadline; when it fires, the reviewers are reminded only if the
// task is still open.
func TestReviewReminders(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	b := &broker{}
	f := &Function{publish: b, rdb: rdb, cfg: Config{ReviewReminder: time.Hour, Reviewers: "reviewers@example.org", Owner: "cfp-desk", ReviewSteps: []string{"review-1", "review-2"}}}
	f.started.Store(true)

	created := func(task, step string) event.Event {
		e := incoming(task, TypeTaskCreated, "sub-42", ada)
		e.SetExtension(extStep, step)
		e.SetTime(time.UnixMilli(1_000_000))
		return e
	}
	for _, e := range []event.Event{created("sub-42:review-1:1", "review-1"), created("sub-42:decide:1", "decide")} {
		if _, err := f.Handle(ctx, e); err != nil {
			t.Fatalf("Handle(%s) = %v", e.ID(), err)
		}
	}
	due, err := rdb.ZRangeWithScores(ctx, deadline.KeyDeadlines, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 1 || due[0].Member != "cfp-desk:remind:sub-42:review-1:1" || int64(due[0].Score) != 1_000_000+time.Hour.Milliseconds() {
		t.Fatalf("deadlines %v, want the review task's reminder only, an hour after its creation", due)
	}

	fired := func(task string) event.Event {
		e := incoming("cfp-desk:remind:"+task, TypeTimerFired, "sub-42", `{}`)
		e.SetExtension("knfaasowner", "cfp-desk")
		e.SetExtension(process.ExtCommand, task)
		return e
	}
	rdb.HSet(ctx, process.KeyTaskPrefix+"sub-42:review-1:1", "id", "sub-42:review-1:1", "instance", "sub-42", "title", "Review the proposal", "state", "open")
	rdb.HSet(ctx, process.KeyTaskPrefix+"sub-43:review-1:1", "id", "sub-43:review-1:1", "instance", "sub-43", "title", "Review the proposal", "state", "completed")
	tests := []struct {
		name   string
		in     event.Event
		sent   int // mail requests published so far
		status int // HTTP status of a refusal, 0 for none
	}{
		{name: "an open review task", in: fired("sub-42:review-1:1"), sent: 1},
		{name: "a decided review task", in: fired("sub-43:review-1:1"), sent: 1},
		{name: "a task that is gone", in: fired("sub-44:review-1:1"), sent: 1},
		{name: "a deadline that is no reminder", in: incoming("sub-42:review-1:1:deadline", TypeTimerFired, "sub-42", `{}`), sent: 1, status: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.Handle(ctx, tt.in)
			var res *cehttp.Result
			switch {
			case tt.status != 0 && (!errors.As(err, &res) || res.StatusCode != tt.status):
				t.Fatalf("Handle = %v, want status %d", err, tt.status)
			case tt.status == 0 && err != nil:
				t.Fatalf("Handle = %v", err)
			}
			if len(b.sent) != tt.sent {
				t.Fatalf("%d mail requests, want %d", len(b.sent), tt.sent)
			}
		})
	}
	var req MailRequest
	if err := json.Unmarshal(b.sent[0].Data(), &req); err != nil {
		t.Fatal(err)
	}
	if req.Template != TemplateReminder || req.IdempotencyKey != "cfp:sub-42:review-1:1:reminder" || strings.Join(req.To, ",") != "reviewers@example.org" {
		t.Fatalf("reminder %+v", req)
	}
}
