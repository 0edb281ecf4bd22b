package mail

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/knfaas/knfaas/internal/function/placeholder"
)

// Server is the SMTP server the function sends through, from SMTP_URL.
type Server struct {
	Host string
	Port int
	// ImplicitTLS is smtps:// (TLS from the first byte, usually port 465).
	ImplicitTLS bool
	// TLS is the STARTTLS policy of smtp://: mandatory unless the URL says ?tls=opportunistic
	// or ?tls=none (a development server such as Mailpit).
	TLS      gomail.TLSPolicy
	User     string
	Password string
}

// ParseServerURL reads SMTP_URL: smtp://[user:password@]host[:port][?tls=mandatory|opportunistic|none]
// (port 587 by default, STARTTLS mandatory by default) or smtps://[user:password@]host[:port]
// (port 465). A template placeholder is refused.
func ParseServerURL(raw string) (Server, error) {
	if raw == "" {
		return Server{}, errors.New("required")
	}
	if err := placeholder.Check("SMTP_URL", raw); err != nil {
		return Server{}, err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Server{}, errors.New("not a URL") // the error would repeat the password
	}
	s := Server{Host: u.Hostname(), TLS: gomail.TLSMandatory}
	switch u.Scheme {
	case "smtp":
		s.Port = 587
	case "smtps":
		s.Port, s.ImplicitTLS = 465, true
	default:
		return Server{}, fmt.Errorf("scheme %q: want smtp or smtps", u.Scheme)
	}
	if s.Host == "" || u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return Server{}, errors.New("want smtp://[user:password@]host[:port], nothing after the port but ?tls=")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Server{}, fmt.Errorf("port %q is not a TCP port", p)
		}
		s.Port = n
	}
	if u.User != nil {
		s.User = u.User.Username()
		s.Password, _ = u.User.Password()
	}
	q := u.Query()
	for k := range q {
		if k != "tls" {
			return Server{}, fmt.Errorf("query parameter %q: only tls is known", k)
		}
	}
	switch q.Get("tls") {
	case "", "mandatory":
	case "opportunistic":
		s.TLS = gomail.TLSOpportunistic
	case "none":
		s.TLS = gomail.NoTLS
	default:
		return Server{}, fmt.Errorf("tls=%q: want mandatory, opportunistic or none", q.Get("tls"))
	}
	if s.ImplicitTLS && q.Has("tls") {
		return Server{}, errors.New("smtps:// is always TLS: tls= does not apply")
	}
	return s, nil
}

// Name is host:port: the server's circuit breaker and its dead letters' destination.
func (s Server) Name() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Dest is the server as a dead letter names it: its URL without credentials.
func (s Server) Dest() string {
	scheme := "smtp"
	if s.ImplicitTLS {
		scheme = "smtps"
	}
	return scheme + "://" + s.Name()
}

// Mail is one rendered email as the store keeps it: everything an attempt needs, so a retry
// sends exactly what the first attempt sent.
type Mail struct {
	// ID is MessageID of the request's key; the Message-ID header is <ID@domain of From>.
	ID       string    `json:"id"`
	Template string    `json:"template"`
	From     string    `json:"from"`
	ReplyTo  string    `json:"replyTo,omitempty"`
	To       []string  `json:"to"`
	Subject  string    `json:"subject"`
	Text     string    `json:"text,omitempty"`
	HTML     string    `json:"html,omitempty"`
	Date     time.Time `json:"date"`
}

// MessageIDHeader is the Message-ID of the mail, without angle brackets: stable across every
// attempt, so that a receiver can recognise a mail sent twice (after a crash between the
// server's acceptance and its record) as one.
func (m *Mail) MessageIDHeader() string {
	domain := "knfaas.invalid"
	if a, err := mail.ParseAddress(m.From); err == nil {
		if _, d, ok := strings.Cut(a.Address, "@"); ok && d != "" {
			domain = d
		}
	}
	return m.ID + "@" + domain
}

// Sender sends one mail.
type Sender interface {
	Send(ctx context.Context, m *Mail) error
}

// SMTPSender sends each mail over its own connection to the server, within ctx's deadline.
type SMTPSender struct {
	Server  Server
	Timeout time.Duration
}

// Message builds the MIME message of m: text and, when there is one, the HTML alternative.
func Message(m *Mail) (*gomail.Msg, error) {
	msg := gomail.NewMsg()
	if err := msg.From(m.From); err != nil {
		return nil, fmt.Errorf("from %q: %w", m.From, err)
	}
	if err := msg.To(m.To...); err != nil {
		return nil, fmt.Errorf("to: %w", err)
	}
	if m.ReplyTo != "" {
		if err := msg.ReplyTo(m.ReplyTo); err != nil {
			return nil, fmt.Errorf("replyTo %q: %w", m.ReplyTo, err)
		}
	}
	msg.Subject(m.Subject)
	msg.SetMessageIDWithValue(m.MessageIDHeader())
	msg.SetDateWithValue(m.Date)
	msg.SetGenHeader("X-Knfaas-Template", m.Template)
	switch {
	case m.Text != "" && m.HTML != "":
		msg.SetBodyString(gomail.TypeTextPlain, m.Text)
		msg.AddAlternativeString(gomail.TypeTextHTML, m.HTML)
	case m.HTML != "":
		msg.SetBodyString(gomail.TypeTextHTML, m.HTML)
	default:
		msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	}
	return msg, nil
}

// Send dials the server, sends m and quits.
func (s *SMTPSender) Send(ctx context.Context, m *Mail) error {
	msg, err := Message(m)
	if err != nil {
		return &PermanentError{Err: err}
	}
	opts := []gomail.Option{gomail.WithPort(s.Server.Port), gomail.WithTimeout(s.Timeout), gomail.WithTLSPolicy(s.Server.TLS)}
	if s.Server.ImplicitTLS {
		opts = []gomail.Option{gomail.WithPort(s.Server.Port), gomail.WithTimeout(s.Timeout), gomail.WithSSL()}
	}
	if s.Server.User != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover), gomail.WithUsername(s.Server.User), gomail.WithPassword(s.Server.Password))
	}
	c, err := gomail.NewClient(s.Server.Host, opts...)
	if err != nil {
		return fmt.Errorf("smtp client for %s: %w", s.Server.Name(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	if err := c.DialAndSendWithContext(ctx, msg); err != nil {
		return classify(err)
	}
	return nil
}

// PermanentError is a failure that no retry can mend: the server refused the sender, the
// recipients or the content with a 5xx reply, or the mail cannot be built.
type PermanentError struct {
	Code int
	Err  error
}

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// ReplyError is a failure with the server's SMTP reply code (a 4xx: try again later).
type ReplyError struct {
	Code int
	Err  error
}

func (e *ReplyError) Error() string { return e.Err.Error() }
func (e *ReplyError) Unwrap() error { return e.Err }

// classify sorts a send error: a 5xx reply to MAIL FROM, RCPT TO or DATA is permanent; a 4xx
// reply, a connection failure or a timeout is worth a retry.
func classify(err error) error {
	var se *gomail.SendError
	if errors.As(err, &se) {
		return classifyReply(se.Reason, se.ErrorCode(), err)
	}
	return err
}

func classifyReply(reason gomail.SendErrReason, code int, err error) error {
	switch {
	case code >= 500 && code < 600 && (reason == gomail.ErrSMTPMailFrom || reason == gomail.ErrSMTPRcptTo ||
		reason == gomail.ErrSMTPData || reason == gomail.ErrSMTPDataClose):
		return &PermanentError{Code: code, Err: err}
	case code != 0:
		return &ReplyError{Code: code, Err: err}
	}
	return err
}

// CodeOf is the SMTP reply code of a send error, 0 when the server gave none.
func CodeOf(err error) int {
	var pe *PermanentError
	if errors.As(err, &pe) {
		return pe.Code
	}
	var re *ReplyError
	if errors.As(err, &re) {
		return re.Code
	}
	return 0
}
