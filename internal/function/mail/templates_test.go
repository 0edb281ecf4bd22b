package mail

import (
	"strings"
	"testing"
)

const validTemplates = `templates:
- name: welcome
  subject: "Welcome, {{.name}}"
  text: "Hello {{.name}}"
  html: "<p>Hello {{.name}}</p>"
- name: html-only
  subject: Plain subject
  html: "<b>{{.x}}</b>"
  from: "Team <team@example.com>"
  replyTo: support@example.com
`

func TestParseTemplates(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		// want are parts of the error, each naming a template and a field; none: valid.
		want []string
		n    int
	}{
		{name: "valid", doc: validTemplates, n: 2},
		{name: "empty list", doc: "templates: []\n", n: 0},
		{name: "unknown field", doc: "templates:\n- {name: a, subject: s, text: t, body: x}\n", want: []string{`unknown field "body"`}},
		{name: "bad name", doc: "templates:\n- {name: Bad_Name, subject: s, text: t}\n", want: []string{`template "Bad_Name" (templates[0]): name:`}},
		{name: "missing name", doc: "templates:\n- {subject: s, text: t}\n", want: []string{"templates[0]: name:"}},
		{name: "duplicate", doc: "templates:\n- {name: a, subject: s, text: t}\n- {name: a, subject: s, text: t}\n", want: []string{`template "a" (templates[1]): name: used by an earlier template`}},
		{name: "no subject", doc: "templates:\n- {name: a, text: t}\n", want: []string{`template "a" (templates[0]): subject: required`}},
		{name: "two-line subject", doc: "templates:\n- {name: a, subject: \"x\\ny\", text: t}\n", want: []string{`template "a" (templates[0]): subject: must be one line`}},
		{name: "no body", doc: "templates:\n- {name: a, subject: s}\n", want: []string{`template "a" (templates[0]): text: text or html is required`}},
		{name: "text does not parse", doc: "templates:\n- {name: a, subject: s, text: '{{.x'}\n", want: []string{`template "a" (templates[0]): text:`}},
		{name: "html does not parse", doc: "templates:\n- {name: a, subject: s, html: '{{if .x}}'}\n", want: []string{`template "a" (templates[0]): html:`}},
		{name: "subject does not parse", doc: "templates:\n- {name: a, subject: '{{end}}', text: t}\n", want: []string{`template "a" (templates[0]): subject:`}},
		{name: "bad from and replyTo", doc: "templates:\n- {name: a, subject: s, text: t, from: 'not an address', replyTo: 'x@'}\n",
			want: []string{`template "a" (templates[0]): from:`, `template "a" (templates[0]): replyTo:`}},
		{name: "every problem listed", doc: "templates:\n- {name: a, text: t}\n- {name: b, subject: s}\n",
			want: []string{`template "a" (templates[0]): subject`, `template "b" (templates[1]): text`}},
		{name: "too large", doc: "templates:\n- {name: a, subject: s, text: '" + strings.Repeat("x", MaxTemplateBytes+1) + "'}\n",
			want: []string{`template "a" (templates[0]): text: 65537 bytes`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.doc))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if len(got) != tt.n {
					t.Fatalf("%d templates, want %d", len(got), tt.n)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestRender(t *testing.T) {
	ts, err := Parse([]byte(validTemplates + `- name: looping
  subject: s
  text: "{{range .items}}{{.}}{{end}}"
- name: multiline-subject
  subject: "{{.s}}"
  text: t
`))
	if err != nil {
		t.Fatal(err)
	}
	many := make([]any, 0, 2000)
	for range 2000 {
		many = append(many, strings.Repeat("y", 200))
	}
	tests := []struct {
		name     string
		template string
		data     map[string]any
		want     Rendered
		wantErr  string
	}{
		{name: "text and escaped html", template: "welcome", data: map[string]any{"name": "<Ada>"},
			want: Rendered{Subject: "Welcome, <Ada>", Text: "Hello <Ada>", HTML: "<p>Hello &lt;Ada&gt;</p>"}},
		{name: "a field the data lacks", template: "welcome", data: map[string]any{}, wantErr: `template "welcome": subject:`},
		{name: "nil data", template: "welcome", wantErr: `map has no entry for key "name"`},
		{name: "html only", template: "html-only", data: map[string]any{"x": 1}, want: Rendered{Subject: "Plain subject", HTML: "<b>1</b>"}},
		{name: "a subject rendering a line break", template: "multiline-subject", data: map[string]any{"s": "a\r\nBcc: x@example.com"},
			wantErr: "holds a line break"},
		{name: "output over the bound", template: "looping", data: map[string]any{"items": many}, wantErr: "text: rendered more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ts[tt.template].Render(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("rendered %+v, want %+v", got, tt.want)
			}
		})
	}
}
