package mail

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"os"
	"regexp"
	"strings"
	texttemplate "text/template"

	"sigs.k8s.io/yaml"
)

// Bounds of the templates file and of what a template renders.
const (
	// MaxTemplates caps the templates of one file.
	MaxTemplates = 200
	// MaxTemplateBytes caps each of a template's subject, text and html sources.
	MaxTemplateBytes = 64 << 10
	// MaxSubjectBytes caps a rendered subject (RFC 5322's line limit).
	MaxSubjectBytes = 998
	// MaxBodyBytes caps each rendered body, text and HTML.
	MaxBodyBytes = 256 << 10
)

// File is the templates file (the mail-templates ConfigMap).
type File struct {
	Templates []TemplateConfig `json:"templates"`
}

// TemplateConfig is one entry of the templates file, as written.
type TemplateConfig struct {
	// Name is what a request's template field names: a lower-case DNS label.
	Name string `json:"name"`
	// Subject is a text/template rendering the subject line (one line).
	Subject string `json:"subject"`
	// Text is a text/template rendering the plain-text body.
	Text string `json:"text,omitempty"`
	// HTML is an html/template rendering the HTML body (sent as the alternative to Text).
	HTML string `json:"html,omitempty"`
	// From replaces the function's MAIL_FROM for this template.
	From string `json:"from,omitempty"`
	// ReplyTo sets the Reply-To header.
	ReplyTo string `json:"replyTo,omitempty"`
}

// Template is one validated template, ready to render.
type Template struct {
	Name    string
	From    string
	ReplyTo string
	subject *texttemplate.Template
	text    *texttemplate.Template
	html    *htmltemplate.Template
}

// Rendered is a template's output for one request.
type Rendered struct {
	Subject string
	Text    string
	HTML    string
}

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Load reads and validates the templates file at path.
func Load(path string) (map[string]*Template, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading templates file: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("templates file %s: %w", path, err)
	}
	return t, nil
}

// Parse validates a templates document. Every problem is reported, each naming its template and
// field, so one start-up shows all that is wrong. An empty list is valid: every request is then
// dead-lettered for naming an unknown template.
func Parse(data []byte) (map[string]*Template, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if len(f.Templates) > MaxTemplates {
		return nil, fmt.Errorf("templates: %d, at most %d", len(f.Templates), MaxTemplates)
	}
	out := make(map[string]*Template, len(f.Templates))
	seen := map[string]bool{}
	var errs []error
	for i, c := range f.Templates {
		where := fmt.Sprintf("templates[%d]", i)
		if c.Name != "" {
			where = fmt.Sprintf("template %q (templates[%d])", c.Name, i)
		}
		t, problems := build(c)
		if seen[c.Name] && c.Name != "" {
			problems = append(problems, errors.New("name: used by an earlier template"))
		}
		seen[c.Name] = true
		for _, p := range problems {
			errs = append(errs, fmt.Errorf("%s: %w", where, p))
		}
		if len(problems) == 0 {
			out[c.Name] = t
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// build compiles one template and returns every problem of it, each naming its field.
func build(c TemplateConfig) (*Template, []error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if !namePattern.MatchString(c.Name) {
		bad("name", "%q must be a lower-case DNS label (a-z, 0-9, '-')", c.Name)
	}
	t := &Template{Name: c.Name, From: c.From, ReplyTo: c.ReplyTo}
	for _, f := range []struct{ field, src string }{{"subject", c.Subject}, {"text", c.Text}, {"html", c.HTML}} {
		if len(f.src) > MaxTemplateBytes {
			bad(f.field, "%d bytes, at most %d", len(f.src), MaxTemplateBytes)
		}
	}
	if strings.TrimSpace(c.Subject) == "" {
		bad("subject", "required")
	} else if strings.ContainsAny(c.Subject, "\r\n") {
		bad("subject", "must be one line")
	} else if s, err := texttemplate.New(c.Name + "/subject").Option("missingkey=error").Parse(c.Subject); err != nil {
		bad("subject", "%v", err)
	} else {
		t.subject = s
	}
	if strings.TrimSpace(c.Text) == "" && strings.TrimSpace(c.HTML) == "" {
		bad("text", "text or html is required")
	}
	if c.Text != "" {
		if s, err := texttemplate.New(c.Name + "/text").Option("missingkey=error").Parse(c.Text); err != nil {
			bad("text", "%v", err)
		} else {
			t.text = s
		}
	}
	if c.HTML != "" {
		if s, err := htmltemplate.New(c.Name + "/html").Option("missingkey=error").Parse(c.HTML); err != nil {
			bad("html", "%v", err)
		} else {
			t.html = s
		}
	}
	for _, f := range []struct{ field, addr string }{{"from", c.From}, {"replyTo", c.ReplyTo}} {
		if f.addr != "" {
			if err := checkAddress(f.addr); err != nil {
				bad(f.field, "%v", err)
			}
		}
	}
	return t, errs
}

// errTooLarge is what boundedWriter answers once its bound is passed.
var errTooLarge = errors.New("larger than allowed")

// boundedWriter keeps at most max bytes and fails past them, so a template looping over large
// data stops early.
type boundedWriter struct {
	buf bytes.Buffer
	max int
}

func (w *boundedWriter) Write(p []byte) (int, error) {
	if w.buf.Len()+len(p) > w.max {
		return 0, errTooLarge
	}
	return w.buf.Write(p)
}

type executor interface {
	Execute(io.Writer, any) error
}

func render(field string, t executor, data any, max int) (string, error) {
	w := &boundedWriter{max: max}
	if err := t.Execute(w, data); err != nil {
		if errors.Is(err, errTooLarge) {
			return "", fmt.Errorf("%s: rendered more than %d bytes", field, max)
		}
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return w.buf.String(), nil
}

// Render executes the template with data. A field the template uses that data lacks is an
// error (missingkey=error), as is a subject that renders empty or with a line break, and any
// output over the bounds; such a request can never succeed.
func (t *Template) Render(data map[string]any) (Rendered, error) {
	var out Rendered
	if data == nil {
		data = map[string]any{}
	}
	var errs []error
	var err error
	if out.Subject, err = render("subject", t.subject, data, MaxSubjectBytes); err != nil {
		errs = append(errs, err)
	} else if out.Subject = strings.TrimSpace(out.Subject); out.Subject == "" || strings.ContainsAny(out.Subject, "\r\n\x00") {
		errs = append(errs, fmt.Errorf("subject: rendered %q: empty, or holds a line break", out.Subject))
	}
	if t.text != nil {
		if out.Text, err = render("text", t.text, data, MaxBodyBytes); err != nil {
			errs = append(errs, err)
		}
	}
	if t.html != nil {
		if out.HTML, err = render("html", t.html, data, MaxBodyBytes); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Rendered{}, fmt.Errorf("template %q: %w", t.Name, err)
	}
	return out, nil
}
