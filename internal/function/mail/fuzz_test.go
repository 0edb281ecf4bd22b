package mail

import (
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary documents to the templates parser (seeds in testdata/fuzz). Invariants:
// no panic; every accepted template has a DNS-label name, a one-line subject, a body, sources
// within the bounds; rendering it with any simple data never panics, and what it renders is
// within the bounds with a one-line subject.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validTemplates), "Ada")
	f.Add([]byte("templates: []\n"), "")
	f.Add([]byte("templates:\n- {name: a, subject: '{{.name}}', text: '{{range .name}}x{{end}}'}\n"), "\r\n")
	f.Fuzz(func(t *testing.T, doc []byte, value string) {
		ts, err := Parse(doc)
		if err != nil {
			return
		}
		for name, tpl := range ts {
			if name != tpl.Name || !namePattern.MatchString(name) {
				t.Fatalf("accepted template name %q", name)
			}
			if tpl.subject == nil || (tpl.text == nil && tpl.html == nil) {
				t.Fatalf("template %q accepted without a subject or a body", name)
			}
			r, err := tpl.Render(map[string]any{"name": value, "x": value, "items": []any{value}})
			if err != nil {
				continue
			}
			if r.Subject == "" || strings.ContainsAny(r.Subject, "\r\n") || len(r.Subject) > MaxSubjectBytes ||
				len(r.Text) > MaxBodyBytes || len(r.HTML) > MaxBodyBytes {
				t.Fatalf("template %q rendered out of bounds: subject %q, text %d, html %d bytes", name, r.Subject, len(r.Text), len(r.HTML))
			}
		}
	})
}

// FuzzParseRequest checks that an accepted request has a template, 1 to MaxRecipients
// recipients without line breaks, and a bounded key.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"to":["Ada <ada@example.com>"],"template":"welcome","data":{"name":"Ada"},"idempotencyKey":"k1"}`))
	f.Add([]byte(`{"to":["a@b\r\nBcc: c@d"],"template":"t"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRequest(data)
		if err != nil {
			return
		}
		if r.Template == "" || len(r.To) == 0 || len(r.To) > MaxRecipients || len(r.IdempotencyKey) > MaxKeyBytes {
			t.Fatalf("accepted %+v", r)
		}
		for _, to := range r.To {
			if strings.ContainsAny(to, "\r\n\x00") {
				t.Fatalf("accepted recipient %q", to)
			}
		}
	})
}
