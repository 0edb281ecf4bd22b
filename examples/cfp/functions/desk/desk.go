// Package main is the Call for Papers example's desk: it turns a form service's signed
// submissions into the events that start a submission process, and the process's mail commands
// into requests to the example's mail instance.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Event types of the Call for Papers. The form service's deliveries arrive as TypeFormSubmitted
// (the type of the cfp-webhook source "forms"); the cfp-submission process
// (config/400-cfp-process-definitions.yaml) starts on TypeSubmissionReceived and emits the
// commands; the desk answers them.
const (
	TypeFormSubmitted      = "dev.knfaas.example.cfp.form.submitted"
	TypeSubmissionReceived = "dev.knfaas.example.cfp.submission.received"
	TypeAckSend            = "dev.knfaas.example.cfp.ack.send"
	TypeAckSent            = "dev.knfaas.example.cfp.ack.sent"
	// TypeAcceptanceSend is the accept step's command (after the committee's decision task was
	// completed); TypeAcceptanceSent its reply.
	TypeAcceptanceSend = "dev.knfaas.example.cfp.acceptance.send"
	TypeAcceptanceSent = "dev.knfaas.example.cfp.acceptance.sent"
	// TypeRejectionSend is the compensation of the review-2 step: it runs when the committee
	// rejects the submission (or does not decide in time) after both reviews.
	TypeRejectionSend = "dev.knfaas.example.cfp.rejection.send"
	// TypeTalkAccepted tells the scheduling system (a notify endpoint) about an accepted talk.
	TypeTalkAccepted = "dev.knfaas.example.cfp.talk.accepted"
	// TypeMailRequested is the request type of the example's mail instance (cfp-mail,
	// MAIL_REQUEST_TYPE), whose templates are config/400-cfp-mail-templates.yaml.
	TypeMailRequested = "dev.knfaas.example.cfp.mail.requested"
)

// ProcessName is the process (config/400-cfp-process-definitions.yaml) whose commands the desk
// answers.
const ProcessName = "cfp-submission"

// Source is the source of every event the desk emits: with the submission id as event id, a
// submission posted again (a new delivery of the same form) starts no second process.
const Source = "/examples/cfp/desk"

// Templates of the cfp-mail instance (config/400-cfp-mail-templates.yaml).
const (
	TemplateReceived = "cfp-submission-received"
	TemplateAccepted = "cfp-accepted"
	TemplateRejected = "cfp-rejected"
	TemplateReminder = "cfp-review-reminder"
)

// Platform events the desk reads: the human tasks the process creates (their id is the task id)
// and the timer's fired deadlines (knfaasowner DESK_OWNER) that it scheduled for reminders.
const (
	TypeTaskCreated = process.TypeTaskCreated
	TypeTimerFired  = deadline.TypeFired
	extStep         = "knfaasstep"
)

// Bounds of a submission.
const (
	maxTitle    = 300
	maxAbstract = 10000
	maxName     = 200
)

// submissionID is what a process instance id (and a task id built from it) may hold.
var submissionID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Speaker is who submitted the talk.
type Speaker struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

// Submission is a talk proposal as the form service posts it, and the data of every event of
// its process.
type Submission struct {
	SubmissionID string  `json:"submissionId"`
	Title        string  `json:"title"`
	Abstract     string  `json:"abstract,omitempty"`
	Speaker      Speaker `json:"speaker"`
}

// Check lists every problem of a submission.
func (s Submission) Check() error {
	var errs []error
	if !submissionID.MatchString(s.SubmissionID) {
		errs = append(errs, fmt.Errorf("submissionId %q: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", s.SubmissionID))
	}
	if t := strings.TrimSpace(s.Title); t == "" || len(s.Title) > maxTitle || strings.ContainsAny(s.Title, "\r\n") {
		errs = append(errs, fmt.Errorf("title: required, one line, at most %d bytes", maxTitle))
	}
	if len(s.Abstract) > maxAbstract {
		errs = append(errs, fmt.Errorf("abstract: at most %d bytes", maxAbstract))
	}
	if strings.TrimSpace(s.Speaker.Name) == "" || len(s.Speaker.Name) > maxName || strings.ContainsAny(s.Speaker.Name, "\r\n") {
		errs = append(errs, fmt.Errorf("speaker.name: required, one line, at most %d bytes", maxName))
	}
	if a, err := mail.ParseAddress(s.Speaker.Email); err != nil || a.Name != "" || a.Address != s.Speaker.Email {
		errs = append(errs, fmt.Errorf("speaker.email %q: want a bare address like ada@example.com", s.Speaker.Email))
	}
	return errors.Join(errs...)
}

// recipient is the speaker as an RFC 5322 address.
func (s Submission) recipient() string {
	return (&mail.Address{Name: s.Speaker.Name, Address: s.Speaker.Email}).String()
}

// MailRequest is the data of a TypeMailRequested event (functions/mail/README.md).
type MailRequest struct {
	To             []string          `json:"to"`
	Template       string            `json:"template"`
	Data           map[string]string `json:"data"`
	IdempotencyKey string            `json:"idempotencyKey"`
}

// Publisher sends an event to the Broker.
type Publisher interface {
	Send(ctx context.Context, e event.Event) error
}

// Config is read once at start.
type Config struct {
	// Sink is the Broker (K_SINK, from the SinkBinding): mail requests go there.
	Sink string `envconfig:"K_SINK"`
	// SendTimeout bounds each publish.
	SendTimeout time.Duration `envconfig:"DESK_SEND_TIMEOUT" default:"10s"`
	// ReviewReminder is how long a review task may stay open before the reviewers are reminded.
	ReviewReminder time.Duration `envconfig:"DESK_REVIEW_REMINDER" default:"72h"`
	// Reviewers is the address review reminders go to.
	Reviewers string `envconfig:"DESK_REVIEWERS" default:"Reviewers <reviewers@example.org>"`
	// Owner is the knfaasowner of the reminder deadlines: the Trigger of their fired events
	// filters on it.
	Owner string `envconfig:"DESK_OWNER" default:"cfp-desk"`
	// ReviewSteps are the process steps whose tasks get a reminder.
	ReviewSteps []string `envconfig:"DESK_REVIEW_STEPS" default:"review-1,review-2"`
}

// Function is the desk.
type Function struct {
	cfg     Config
	publish Publisher
	rdb     redis.Cmdable
	close   func() error
	started atomic.Bool
}

// New returns an unstarted desk.
func New() *Function { return &Function{} }

// Start reads the configuration (and sets up tracing) and opens the Broker client.
func (f *Function) Start(context.Context, map[string]string) error {
	var cfg Config
	if err := funcstart.ReadConfig("desk", &cfg); err != nil {
		return err
	}
	var errs []error
	if cfg.SendTimeout <= 0 {
		errs = append(errs, fmt.Errorf("DESK_SEND_TIMEOUT (%s) must be positive", cfg.SendTimeout))
	}
	if cfg.ReviewReminder <= 0 {
		errs = append(errs, fmt.Errorf("DESK_REVIEW_REMINDER (%s) must be positive", cfg.ReviewReminder))
	}
	if _, err := mail.ParseAddress(cfg.Reviewers); err != nil {
		errs = append(errs, fmt.Errorf("DESK_REVIEWERS (%q): %w", cfg.Reviewers, err))
	}
	if cfg.Owner == "" {
		errs = append(errs, errors.New("DESK_OWNER: required"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("desk: %w", err)
	}
	s, err := sink.New(cfg.Sink, cfg.SendTimeout)
	if err != nil {
		return fmt.Errorf("desk: K_SINK: %w", err)
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return fmt.Errorf("desk: %w", err)
	}
	f.cfg, f.publish, f.rdb, f.close = cfg, s, rdb, rdb.Close
	f.started.Store(true)
	return nil
}

// Stop sends the spans still buffered and closes the Redis client.
func (f *Function) Stop(ctx context.Context) error {
	err := tracing.Flush(ctx)
	if f.close == nil {
		return err
	}
	return errors.Join(err, f.close())
}

// Ready is true once Start has finished (the desk keeps no state).
func (f *Function) Ready(context.Context) (bool, error) { return f.started.Load(), nil }

// Handle answers a form delivery with the submission's start event, a mail command with a mail
// request (published) and the command's reply, a review task created with a reminder deadline,
// and that deadline fired with a reminder when the task is still open. Data that can never be
// used is a 400 (the Broker dead-letters it with the reason); a Broker or Redis failure is an
// error, so the event is redelivered, and each mail's idempotency key keeps it single.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

// handle is Handle without its span.
func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.started.Load() {
		return nil, errors.New("desk is starting")
	}
	switch e.Type() {
	case TypeTaskCreated:
		return nil, f.scheduleReminder(ctx, e)
	case TypeTimerFired:
		return nil, f.remind(ctx, e)
	}
	data := e.Data()
	if e.Type() != TypeFormSubmitted {
		d, err := f.emitted(ctx, e)
		if err != nil {
			return nil, err
		}
		data = d
	}
	var s Submission
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "data of %s %s is not a submission: %v", e.Type(), e.ID(), err)
	}
	if err := s.Check(); err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "submission in %s %s: %v", e.Type(), e.ID(), err)
	}
	if e.Type() == TypeFormSubmitted {
		return received(s), nil
	}
	if e.Subject() != s.SubmissionID {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "command %s: subject %q is not submission %q", e.ID(), e.Subject(), s.SubmissionID)
	}
	letter := func(template, purpose string) error {
		req := MailRequest{To: []string{s.recipient()}, Template: template,
			Data:           map[string]string{"name": s.Speaker.Name, "title": s.Title, "submissionId": s.SubmissionID},
			IdempotencyKey: "cfp:" + s.SubmissionID + ":" + purpose}
		if err := f.publish.Send(ctx, mailEvent(e, req)); err != nil {
			return fmt.Errorf("requesting the %s mail of %s: %w", purpose, s.SubmissionID, err)
		}
		return nil
	}
	switch e.Type() {
	case TypeAckSend:
		if err := letter(TemplateReceived, "received"); err != nil {
			return nil, err
		}
		return reply(e, TypeAckSent), nil
	case TypeAcceptanceSend:
		if err := f.publish.Send(ctx, derived(e, "talk", TypeTalkAccepted, s)); err != nil {
			return nil, fmt.Errorf("telling the scheduling system about %s: %w", s.SubmissionID, err)
		}
		if err := letter(TemplateAccepted, "accepted"); err != nil {
			return nil, err
		}
		return reply(e, TypeAcceptanceSent), nil
	case TypeRejectionSend:
		return nil, letter(TemplateRejected, "rejected")
	}
	return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "unexpected event type %s", e.Type())
}

// commandTypes are the commands of the cfp-submission process the desk answers.
var commandTypes = map[string]bool{TypeAckSend: true, TypeAcceptanceSend: true, TypeRejectionSend: true}

// emitted checks that cmd is a command the cfp-submission process emitted (its timeline holds
// the command's id and type going out) and returns the instance's start data: a command posted
// to the Broker by anyone else, or carrying other data, sends nothing.
func (f *Function) emitted(ctx context.Context, cmd event.Event) ([]byte, error) {
	if !commandTypes[cmd.Type()] {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "unexpected event type %s", cmd.Type())
	}
	in, err := process.ReadInstance(ctx, f.rdb, cmd.Subject())
	if errors.Is(err, process.ErrNotFound) {
		return nil, cloudevents.NewHTTPResult(http.StatusForbidden, "command %s: no process instance %q", cmd.ID(), cmd.Subject())
	}
	if err != nil {
		return nil, err
	}
	found := false
	for _, t := range in.Timeline {
		if t.Kind == "out" && t.ID == cmd.ID() && t.Type == cmd.Type() {
			found = true
		}
	}
	if in.Process != ProcessName || !found {
		return nil, cloudevents.NewHTTPResult(http.StatusForbidden, "command %s (%s): not emitted by process instance %q", cmd.ID(), cmd.Type(), cmd.Subject())
	}
	data, err := f.rdb.HGet(ctx, process.KeyInstancePrefix+cmd.Subject(), "data").Bytes()
	if err != nil {
		return nil, fmt.Errorf("reading the start data of %s: %w", cmd.Subject(), err)
	}
	return data, nil
}

// reviewStep reports whether step's tasks get a reminder.
func (f *Function) reviewStep(step string) bool {
	for _, s := range f.cfg.ReviewSteps {
		if s == step {
			return true
		}
	}
	return false
}

// reminderID is the timer deadline of task's reminder.
func (f *Function) reminderID(task string) string { return f.cfg.Owner + ":remind:" + task }

// scheduleReminder arms the reminder deadline of a review task (its id is the task id). A task
// of another step is ignored. Scheduling again (a redelivery) only moves the same deadline.
func (f *Function) scheduleReminder(ctx context.Context, e event.Event) error {
	step, _ := e.Extensions()[extStep].(string)
	if !f.reviewStep(step) {
		return nil
	}
	due := time.Now().Add(f.cfg.ReviewReminder)
	if t := e.Time(); !t.IsZero() {
		due = t.Add(f.cfg.ReviewReminder)
	}
	p := deadline.Payload{Subject: e.Subject(), Command: e.ID(), Owner: f.cfg.Owner, Due: due.UnixMilli()}
	if err := deadline.Schedule(ctx, f.rdb, f.reminderID(e.ID()), p); err != nil {
		return fmt.Errorf("review task %s: %w", e.ID(), err)
	}
	return nil
}

// remind sends the reviewers a reminder when the review task of a fired deadline is still open;
// a task decided (or expired) in the meantime gets none.
func (f *Function) remind(ctx context.Context, e event.Event) error {
	taskID, _ := e.Extensions()[process.ExtCommand].(string)
	if taskID == "" || e.ID() != f.reminderID(taskID) {
		return cloudevents.NewHTTPResult(http.StatusBadRequest, "fired deadline %s is not a review reminder of %s", e.ID(), f.cfg.Owner)
	}
	t, err := process.GetTask(ctx, f.rdb, taskID)
	if errors.Is(err, process.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading review task %s: %w", taskID, err)
	}
	if t.State != "open" {
		return nil
	}
	req := MailRequest{To: []string{f.cfg.Reviewers}, Template: TemplateReminder,
		Data:           map[string]string{"submissionId": t.Instance, "task": t.ID, "title": t.Title},
		IdempotencyKey: "cfp:" + t.ID + ":reminder"}
	if err := f.publish.Send(ctx, mailEvent(e, req)); err != nil {
		return fmt.Errorf("requesting the reminder of %s: %w", t.ID, err)
	}
	return nil
}

// received is the start event of submission s: its id is the submission id, so every delivery of
// the same submission is one event to the process.
func received(s Submission) *event.Event {
	r := cloudevents.NewEvent()
	r.SetID("submission:" + s.SubmissionID)
	r.SetType(TypeSubmissionReceived)
	r.SetSource(Source)
	r.SetSubject(s.SubmissionID)
	r.SetTime(time.Now())
	_ = r.SetData(cloudevents.ApplicationJSON, s)
	return &r
}

// mailEvent is the mail request of command cmd: its id derives from the command's, so a
// redelivered command publishes the same event.
func mailEvent(cmd event.Event, req MailRequest) event.Event {
	m := cloudevents.NewEvent()
	m.SetID(cmd.ID() + ":mail")
	m.SetType(TypeMailRequested)
	m.SetSource(Source)
	m.SetSubject(cmd.Subject())
	m.SetTime(time.Now())
	_ = m.SetData(cloudevents.ApplicationJSON, req)
	return m
}

// derived is an event the desk publishes for command cmd: its id derives from the command's.
func derived(cmd event.Event, suffix, typ string, data any) event.Event {
	d := cloudevents.NewEvent()
	d.SetID(cmd.ID() + ":" + suffix)
	d.SetType(typ)
	d.SetSource(Source)
	d.SetSubject(cmd.Subject())
	d.SetTime(time.Now())
	_ = d.SetData(cloudevents.ApplicationJSON, data)
	return d
}

// reply answers command cmd; knfaascommand names the command answered.
func reply(cmd event.Event, typ string) *event.Event {
	r := cloudevents.NewEvent()
	r.SetID(cmd.ID() + ":" + typ[len("dev.knfaas.example.cfp."):])
	r.SetType(typ)
	r.SetSource(Source)
	r.SetSubject(cmd.Subject())
	r.SetTime(time.Now())
	r.SetExtension("knfaascommand", cmd.ID())
	_ = r.SetData(cloudevents.ApplicationJSON, cmd.Data())
	return &r
}
