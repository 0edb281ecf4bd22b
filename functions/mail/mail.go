// Package main is the mail function: it sends the email-request events its Triggers subscribe
// it to as templated mails through SMTP, once per idempotency key, retrying over hours from Redis.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
	mailer "github.com/knfaas/knfaas/internal/function/mail"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TypePing is the type of PingSource events; like the timer's fired deadlines (deadline.TypeFired
// with knfaasowner mail), they wake the function for due retries.
const TypePing = "dev.knative.sources.ping"

// MaxTimeout caps MAIL_TIMEOUT: a claimed mail's lease must outlast an attempt.
const MaxTimeout = 2 * time.Minute

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// SMTPURL is the server: smtp://[user:password@]host[:port][?tls=…] or smtps://… (a Secret).
	SMTPURL string `envconfig:"SMTP_URL"`
	// From is the sender of templates that name none.
	From string `envconfig:"MAIL_FROM" default:"knfaas <noreply@knfaas.localhost>"`
	// RequestType is the event type this instance sends; a second instance with its own
	// templates (an example's) serves its own type, so the platform's instance never sees it.
	RequestType string `envconfig:"MAIL_REQUEST_TYPE" default:"dev.knfaas.mail.requested"`
	// TemplatesFile is the templates YAML (the mail-templates ConfigMap, mounted).
	TemplatesFile string `envconfig:"MAIL_TEMPLATES_FILE" default:"/etc/knfaas/mail/templates.yaml"`
	// Schedule is the wait before each retry, comma-separated Go durations.
	Schedule string `envconfig:"MAIL_SCHEDULE" default:"30s,5m,30m,2h,5h,10h,10h"`
	// Retention is how long a mail's record (claim, mail, attempts) is kept.
	Retention time.Duration `envconfig:"MAIL_RETENTION" default:"336h"`
	// Timeout bounds one attempt: connect, TLS, MAIL, RCPT, DATA.
	Timeout time.Duration `envconfig:"MAIL_TIMEOUT" default:"30s"`
	// Concurrency is the bulkhead: attempts in flight at once in one instance.
	Concurrency int `envconfig:"MAIL_CONCURRENCY" default:"4"`
	// Poll is how often a running instance looks for due retries when nothing wakes it.
	Poll time.Duration `envconfig:"MAIL_POLL" default:"1s"`
	// Batch is how many due mails one Redis step claims.
	Batch int `envconfig:"MAIL_BATCH" default:"64"`
	// DrainTimeout bounds how long a wake-up waits for the due mails it woke.
	DrainTimeout time.Duration `envconfig:"MAIL_DRAIN_TIMEOUT" default:"50s"`
	// BreakerFailures opens the server's circuit after that many failed attempts in a row.
	BreakerFailures uint32 `envconfig:"MAIL_BREAKER_FAILURES" default:"5"`
	// BreakerOpen is how long an open circuit refuses attempts before a probe.
	BreakerOpen time.Duration `envconfig:"MAIL_BREAKER_OPEN" default:"30s"`

	server   mailer.Server
	schedule notify.Schedule
}

// Check refuses values out of range, naming each variable.
func (c *Config) Check() error {
	var errs []error
	s, err := mailer.ParseServerURL(c.SMTPURL)
	if err != nil {
		errs = append(errs, fmt.Errorf("SMTP_URL: %w", err))
	}
	c.server = s
	if c.RequestType == "" || c.RequestType == TypePing || c.RequestType == deadline.TypeFired {
		errs = append(errs, fmt.Errorf("MAIL_REQUEST_TYPE (%q) must name the request event type, not empty nor a wake-up type", c.RequestType))
	}
	if _, err := mail.ParseAddress(c.From); err != nil {
		errs = append(errs, fmt.Errorf("MAIL_FROM (%q): %w", c.From, err))
	}
	sched, err := notify.ParseSchedule(c.Schedule)
	if err != nil {
		errs = append(errs, fmt.Errorf("MAIL_SCHEDULE (%q): %w", c.Schedule, err))
	}
	c.schedule = sched
	if c.Retention < sched.Horizon()+24*time.Hour {
		errs = append(errs, fmt.Errorf("MAIL_RETENTION (%s) must be at least the schedule's horizon (%s) plus 24h: a redelivery must still find the claim", c.Retention, sched.Horizon()))
	}
	if c.Timeout <= 0 || c.Timeout > MaxTimeout {
		errs = append(errs, fmt.Errorf("MAIL_TIMEOUT (%s) must be positive and at most %s", c.Timeout, MaxTimeout))
	}
	if c.Concurrency < 1 || c.Concurrency > 64 {
		errs = append(errs, fmt.Errorf("MAIL_CONCURRENCY (%d) must be from 1 to 64", c.Concurrency))
	}
	if c.Poll <= 0 || c.Poll > time.Minute {
		errs = append(errs, fmt.Errorf("MAIL_POLL (%s) must be positive and at most 1m", c.Poll))
	}
	if c.Batch < 1 || c.Batch > 1000 {
		errs = append(errs, fmt.Errorf("MAIL_BATCH (%d) must be from 1 to 1000", c.Batch))
	}
	if c.DrainTimeout <= 0 {
		errs = append(errs, fmt.Errorf("MAIL_DRAIN_TIMEOUT (%s) must be positive", c.DrainTimeout))
	}
	if c.BreakerFailures < 1 || c.BreakerOpen <= 0 {
		errs = append(errs, fmt.Errorf("MAIL_BREAKER_FAILURES (%d) must be at least 1 and MAIL_BREAKER_OPEN (%s) positive", c.BreakerFailures, c.BreakerOpen))
	}
	return errors.Join(errs...)
}

// Function sends templated mails.
type Function struct {
	cfg       Config
	templates map[string]*mailer.Template
	store     *mailer.Store
	dead      *deadletter.Store
	d         *mailer.Dispatcher
	cancel    context.CancelFunc
	done      sync.WaitGroup
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration and the templates file, refusing any mistake, opens Redis and
// starts the send loop.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	rdb, err := funcstart.Open("mail", &cfg)
	if err != nil {
		return err
	}
	templates, err := mailer.Load(cfg.TemplatesFile)
	if err != nil {
		_ = rdb.Close()
		return fmt.Errorf("mail: %w", err)
	}
	f.start(cfg, rdb, templates, &mailer.SMTPSender{Server: cfg.server, Timeout: cfg.Timeout})
	return nil
}

func (f *Function) start(cfg Config, rdb *redis.Client, templates map[string]*mailer.Template, sender mailer.Sender) {
	f.cfg, f.templates = cfg, templates
	f.store = mailer.NewStore(rdb, cfg.Retention)
	f.dead = deadletter.NewStore(rdb, deadletter.Options{})
	circuit := breaker.Default
	circuit.ConsecutiveFailures, circuit.OpenFor = cfg.BreakerFailures, cfg.BreakerOpen
	f.d = mailer.NewDispatcher(f.store, f.dead, mailer.Options{
		Server: cfg.server, Sender: sender, Schedule: cfg.schedule, Timeout: cfg.Timeout,
		Concurrency: cfg.Concurrency, Poll: cfg.Poll, Batch: cfg.Batch, Breaker: circuit,
	})
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.done.Add(1)
	go func() {
		defer f.done.Done()
		f.d.Run(ctx)
	}()
	names := make([]string, 0, len(templates))
	for name := range templates {
		names = append(names, name)
	}
	slog.Info("mail: started", "server", cfg.server.Dest(), "templates", names, "schedule", cfg.Schedule)
	f.Started(rdb)
}

// Stop ends the send loop (attempts in flight finish) and closes Redis.
func (f *Function) Stop(context.Context) error {
	f.Stopping()
	if f.cancel != nil {
		f.cancel()
		f.done.Wait()
	}
	return f.Close()
}

// Handle accepts an email request: it renders the template, claims the idempotency key and
// schedules the mail in one Redis step, and answers only then (an error answers 5xx and the
// Broker retries). A request that can never be sent (malformed, an unknown template, data the
// template lacks) is dead-lettered with the reason at once. A request whose key was claimed
// before is acknowledged and not sent again; a redrive (knfaasredrive) of a dead mail sends it
// again. A fired timer deadline (or a PingSource tick) sends what is due and waits for it.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

// handle is Handle without its span.
func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("mail is starting")
	}
	ctx = logging.WithEvent(ctx, e)
	if e.Type() == TypePing || e.Type() == deadline.TypeFired {
		dctx, cancel := context.WithTimeout(ctx, f.cfg.DrainTimeout)
		defer cancel()
		if err := f.d.Drain(dctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("sending due mails: %w", err)
		}
		return nil, nil
	}
	stored, err := deadletter.FromEvent(e)
	if err != nil {
		return nil, fmt.Errorf("encoding event %s: %w", e.ID(), err)
	}
	m, err := f.compose(e)
	if err != nil {
		return nil, f.reject(ctx, e, stored.Event, err)
	}
	_, redrive := e.Extensions()[deadletter.ExtRedrive]
	st, err := f.store.Enqueue(ctx, m, stored.Event, redrive, time.Now())
	if err != nil {
		return nil, err
	}
	if st != mailer.StateQueued {
		slog.InfoContext(ctx, "mail: request already claimed; not sent again", "mail", m.ID, "state", st, "event", e.ID())
		return nil, nil
	}
	f.d.Wake()
	return nil, nil
}

// compose reads the request and renders its mail.
func (f *Function) compose(e event.Event) (*mailer.Mail, error) {
	if e.Type() != f.cfg.RequestType {
		return nil, fmt.Errorf("event type %q: this mail function sends %s events only (MAIL_REQUEST_TYPE)", e.Type(), f.cfg.RequestType)
	}
	req, err := mailer.ParseRequest(e.Data())
	if err != nil {
		return nil, err
	}
	t, ok := f.templates[req.Template]
	if !ok {
		return nil, fmt.Errorf("template %q is not defined in %s", req.Template, f.cfg.TemplatesFile)
	}
	r, err := t.Render(req.Data)
	if err != nil {
		return nil, err
	}
	from := f.cfg.From
	if t.From != "" {
		from = t.From
	}
	id := mailer.MessageID(mailer.MessageKey(req, e.Source(), e.ID()))
	return &mailer.Mail{ID: id, Template: t.Name, From: from, ReplyTo: t.ReplyTo, To: req.To,
		Subject: r.Subject, Text: r.Text, HTML: r.HTML, Date: time.Now().UTC().Truncate(time.Second)}, nil
}

// reject dead-letters a request that can never be sent, with why; nil once the letter is stored.
func (f *Function) reject(ctx context.Context, e event.Event, stored []byte, why error) error {
	l, err := mailer.Letter(stored, f.cfg.server, 0, "rejected: "+why.Error(),
		fmt.Sprintf("mail request %s from %s rejected before any attempt: %v", e.ID(), e.Source(), why))
	if err == nil {
		_, _, err = f.dead.Add(ctx, l)
	}
	if err != nil {
		return fmt.Errorf("dead-lettering rejected request %s: %w", e.ID(), err)
	}
	slog.WarnContext(ctx, "mail: request rejected and dead-lettered", "event", e.ID(), "reason", why)
	return nil
}
