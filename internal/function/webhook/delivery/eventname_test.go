package delivery

import (
	"mime"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// eventNamePattern is what eventName checks, as the regular expression it replaced.
var eventNamePattern = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,128}$`)

func TestEventName(t *testing.T) {
	tests := []struct {
		name, event string
		want        bool
	}{
		{"push", "push", true},
		{"dotted", "charge.succeeded", true},
		{"all classes", "Az09_.-", true},
		{"128 bytes", strings.Repeat("a", 128), true},
		{"empty", "", false},
		{"129 bytes", strings.Repeat("a", 129), false},
		{"space", "push now", false},
		{"colon", "s3:put", false},
		{"trailing newline", "push\n", false},
		{"non-ASCII", "pusĥ", false},
		{"invalid UTF-8", "push\xff", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := eventName(tc.event); got != tc.want || got != eventNamePattern.MatchString(tc.event) {
				t.Errorf("eventName(%q) = %v, want %v (the pattern says %v)", tc.event, got, tc.want, eventNamePattern.MatchString(tc.event))
			}
		})
	}
}

// FuzzEventName: eventName answers as the regular expression it replaced.
func FuzzEventName(f *testing.F) {
	for _, s := range []string{"push", "a.b-c_D9", "", "x y", "é", "push\n", strings.Repeat("z", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := eventName(s), eventNamePattern.MatchString(s); got != want {
			t.Fatalf("eventName(%q) = %v, the pattern %v", s, got, want)
		}
	})
}

func TestMediaType(t *testing.T) {
	for _, v := range []string{"application/json", "application/x-www-form-urlencoded", "Application/JSON",
		"application/json; charset=utf-8", "application/x-www-form-urlencoded ", "", "text/plain;", "bad"} {
		t.Run(v, func(t *testing.T) {
			want, _, err := mime.ParseMediaType(v)
			if err != nil {
				want = ""
			}
			if got := mediaType(http.Header{"Content-Type": {v}}); got != want {
				t.Errorf("mediaType(%q) = %q, mime.ParseMediaType %q", v, got, want)
			}
		})
	}
}
