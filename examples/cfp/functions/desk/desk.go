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
	"github.com/kelseyhightower/envconfig"

	"github.com/knfaas/knfaas/internal/function/sink"
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
	// TypeMailRequested is the request type of the example's mail instance (cfp-mail,
	// MAIL_REQUEST_TYPE), whose templates are config/400-cfp-mail-templates.yaml.
	TypeMailRequested = "dev.knfaas.example.cfp.mail.requested"
)

// Source is the source of every event the desk emits: with the submission id as event id, a
// submission posted again (a new delivery of the same form) starts no second process.
const Source = "/examples/cfp/desk"

// TemplateReceived is the acknowledgement's template in the cfp-mail templates.
const TemplateReceived = "cfp-submission-received"

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
}

// Function is the desk.
type Function struct {
	publish Publisher
	started atomic.Bool
}

// New returns an unstarted desk.
func New() *Function { return &Function{} }

// Start reads the configuration and opens the Broker client.
func (f *Function) Start(context.Context, map[string]string) error {
	var cfg Config
	if err := envconfig.Process("", &cfg); err != nil {
		return fmt.Errorf("desk: reading configuration: %w", err)
	}
	if cfg.SendTimeout <= 0 {
		return fmt.Errorf("desk: DESK_SEND_TIMEOUT (%s) must be positive", cfg.SendTimeout)
	}
	s, err := sink.New(cfg.Sink, cfg.SendTimeout)
	if err != nil {
		return fmt.Errorf("desk: K_SINK: %w", err)
	}
	f.publish = s
	f.started.Store(true)
	return nil
}

// Ready is true once Start has finished (the desk keeps no state).
func (f *Function) Ready(context.Context) (bool, error) { return f.started.Load(), nil }

// Handle answers a form delivery with the submission's start event, and a mail command with a
// mail request (published) and the command's reply. Data that can never be used is a 400 (the
// Broker dead-letters it with the reason); a Broker that refuses the mail request is an error,
// so the command is redelivered, and its idempotency key keeps the mail single.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.started.Load() {
		return nil, errors.New("desk is starting")
	}
	var s Submission
	if err := json.Unmarshal(e.Data(), &s); err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "data of %s %s is not a submission: %v", e.Type(), e.ID(), err)
	}
	if err := s.Check(); err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "submission in %s %s: %v", e.Type(), e.ID(), err)
	}
	switch e.Type() {
	case TypeFormSubmitted:
		return received(s), nil
	case TypeAckSend:
		if e.Subject() != s.SubmissionID {
			return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "command %s: subject %q is not submission %q", e.ID(), e.Subject(), s.SubmissionID)
		}
		req := MailRequest{To: []string{s.recipient()}, Template: TemplateReceived,
			Data:           map[string]string{"name": s.Speaker.Name, "title": s.Title, "submissionId": s.SubmissionID},
			IdempotencyKey: "cfp:" + s.SubmissionID + ":received"}
		if err := f.publish.Send(ctx, mailEvent(e, req)); err != nil {
			return nil, fmt.Errorf("requesting the acknowledgement of %s: %w", s.SubmissionID, err)
		}
		return reply(e, TypeAckSent), nil
	}
	return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "unexpected event type %s", e.Type())
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
