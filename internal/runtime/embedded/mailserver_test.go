package embedded

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMailServerEnv(t *testing.T) {
	tests := []struct {
		name string
		mail *mailServer
		env  []string
		want []string
	}{
		{"no run server", nil, []string{"SMTP_URL=smtp://x:y@smtp.example.com:587", "A=1"}, []string{"SMTP_URL=smtp://x:y@smtp.example.com:587", "A=1"}},
		{"a function without SMTP_URL is left alone", &mailServer{url: "smtp://127.0.0.1:1?tls=none"}, []string{"A=1"}, []string{"A=1"}},
		{"the manifest's server is replaced", &mailServer{url: "smtp://127.0.0.1:1?tls=none"},
			[]string{"A=1", "SMTP_URL=smtp://generated:generated@smtp.example.com:587"}, []string{"A=1", "SMTP_URL=smtp://127.0.0.1:1?tls=none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Runtime{mail: tt.mail}
			if got := r.withMailServer(append([]string(nil), tt.env...)); strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("env\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestMailServerNotes(t *testing.T) {
	tests := []struct {
		name string
		plan *Plan
		url  string
		want string
	}{
		{"no function sends mail", planWithEnv("A=1"), "", ""},
		{"Mailpit", planWithEnv("SMTP_URL=smtp://x:y@smtp.example.com:587"), "", "smtp: Mailpit, built from hack/mailpit"},
		{"a server named by SMTP_URL", planWithEnv("SMTP_URL=smtp://x:y@smtp.example.com:587"), "smtp://u:secret@mail.example.com", "smtp: the server SMTP_URL names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvSMTPURL, tt.url)
			got := strings.Join(mailServerNotes(tt.plan), "\n")
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) || strings.Contains(got, "secret") {
				t.Fatalf("notes %q, want %q", got, tt.want)
			}
		})
	}
}

// openMailServer takes the server SMTP_URL names without building or starting anything, and
// says so without printing its credentials.
func TestOpenMailServerUsesSMTPURL(t *testing.T) {
	t.Setenv(EnvSMTPURL, "smtp://u:secret@mail.example.com:587")
	var out bytes.Buffer
	r := &Runtime{opts: Options{Out: &out, ModuleDir: t.TempDir()}, plan: planWithEnv("SMTP_URL=smtp://x:y@smtp.example.com:587")}
	if err := r.openMailServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.mail == nil || r.mail.url != "smtp://u:secret@mail.example.com:587" || r.mail.mailpit != nil {
		t.Fatalf("mail server %+v", r.mail)
	}
	if strings.Contains(out.String(), "secret") || !strings.Contains(out.String(), "SMTP_URL") {
		t.Fatalf("start-up says %q", out.String())
	}
}

// BuildMailpit reuses the binary cached for the module's go.mod and go.sum, and a change of
// either means another binary; a missing module is an error naming it.
func TestBuildMailpitCache(t *testing.T) {
	module, cache := t.TempDir(), t.TempDir()
	dir := filepath.Join(module, MailpitModule)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/mailpit\n")
	write("go.sum", "")
	bin, err := mailpitBinary(module, cache)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("cached"), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := BuildMailpit(context.Background(), module, cache)
	if err != nil || got != bin {
		t.Fatalf("BuildMailpit = %q, %v; want the cached %q", got, err, bin)
	}
	write("go.sum", "example.com/x v1.0.0 h1:x\n")
	if other, _ := mailpitBinary(module, cache); other == bin {
		t.Fatal("a changed go.sum maps to the same cached binary")
	}
	if _, err := BuildMailpit(context.Background(), t.TempDir(), cache); err == nil || !strings.Contains(err.Error(), "reading the Mailpit module") {
		t.Fatalf("BuildMailpit without the module = %v", err)
	}
}
