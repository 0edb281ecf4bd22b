package mail

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	gomail "github.com/wneessen/go-mail"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		wantErr string
	}{
		{"valid", `{"to":["Ada <ada@example.com>"],"template":"welcome","data":{"name":"Ada"},"idempotencyKey":"k"}`, ""},
		{"no template", `{"to":["ada@example.com"]}`, "template: required"},
		{"no recipient", `{"template":"t"}`, "to: 0 recipients"},
		{"too many recipients", `{"template":"t","to":[` + strings.Repeat(`"a@example.com",`, MaxRecipients) + `"a@example.com"]}`, "to: 51 recipients"},
		{"header injection", `{"template":"t","to":["a@example.com\r\nBcc: b@example.com"]}`, "to[0]: "},
		{"not an address", `{"template":"t","to":["nobody"]}`, "to[0]: \"nobody\" is not an email address"},
		{"unknown field", `{"template":"t","to":["a@example.com"],"cc":["b@example.com"]}`, `unknown field "cc"`},
		{"not an object", `["a"]`, "not a JSON object"},
		{"key too long", `{"template":"t","to":["a@example.com"],"idempotencyKey":"` + strings.Repeat("k", MaxKeyBytes+1) + `"}`, "idempotencyKey: at most"},
		{"too large", `{"template":"t","to":["a@example.com"],"data":{"x":"` + strings.Repeat("x", MaxRequestBytes) + `"}}`, "at most 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tt.data))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestMessageKey(t *testing.T) {
	withKey := Request{IdempotencyKey: "order-1-receipt"}
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"the same event redelivered", MessageKey(Request{}, "/shop", "e1"), MessageKey(Request{}, "/shop", "e1"), true},
		{"another event", MessageKey(Request{}, "/shop", "e1"), MessageKey(Request{}, "/shop", "e2"), false},
		{"the same id from another source", MessageKey(Request{}, "/a", "e1"), MessageKey(Request{}, "/b", "e1"), false},
		{"two events with one idempotency key", MessageKey(withKey, "/shop", "e1"), MessageKey(withKey, "/other", "e9"), true},
		{"a key that spells an event identity", MessageKey(Request{IdempotencyKey: "event\x00/shop\x00e1"}, "/x", "y"), MessageKey(Request{}, "/shop", "e1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (MessageID(tt.a) == MessageID(tt.b)) != tt.same {
				t.Fatalf("MessageID(%q) vs MessageID(%q): same = %v, want %v", tt.a, tt.b, !tt.same, tt.same)
			}
		})
	}
}

func TestParseServerURL(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    Server
		wantErr string
	}{
		{"submission with STARTTLS", "smtp://u:p%40ss@mail.example.com", Server{Host: "mail.example.com", Port: 587, TLS: gomail.TLSMandatory, User: "u", Password: "p@ss"}, ""},
		{"development server", "smtp://127.0.0.1:1025?tls=none", Server{Host: "127.0.0.1", Port: 1025, TLS: gomail.NoTLS}, ""},
		{"opportunistic", "smtp://mx.example.com:25?tls=opportunistic", Server{Host: "mx.example.com", Port: 25, TLS: gomail.TLSOpportunistic}, ""},
		{"implicit TLS", "smtps://u:p@mail.example.com", Server{Host: "mail.example.com", Port: 465, ImplicitTLS: true, TLS: gomail.TLSMandatory, User: "u", Password: "p"}, ""},
		{"empty", "", Server{}, "required"},
		{"template placeholder", "smtp://CHANGE-ME:CHANGE-ME@smtp.example.com:587", Server{}, "CHANGE-ME"},
		{"http", "http://mail.example.com", Server{}, `scheme "http"`},
		{"a path", "smtp://mail.example.com/x", Server{}, "nothing after the port"},
		{"bad port", "smtp://mail.example.com:70000", Server{}, "not a TCP port"},
		{"unknown parameter", "smtp://mail.example.com?auth=plain", Server{}, `query parameter "auth"`},
		{"bad tls", "smtp://mail.example.com?tls=maybe", Server{}, `tls="maybe"`},
		{"tls on smtps", "smtps://mail.example.com?tls=none", Server{}, "always TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseServerURL(tt.raw)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(fmt.Sprint(err), "p@ss") {
					t.Fatalf("error %v repeats the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestClassifyReply(t *testing.T) {
	tests := []struct {
		name      string
		reason    gomail.SendErrReason
		code      int
		permanent bool
	}{
		{"mailbox unknown", gomail.ErrSMTPRcptTo, 550, true},
		{"sender refused", gomail.ErrSMTPMailFrom, 553, true},
		{"content refused", gomail.ErrSMTPDataClose, 554, true},
		{"greylisted", gomail.ErrSMTPRcptTo, 451, false},
		{"a 5xx to RSET is no verdict on the mail", gomail.ErrSMTPReset, 502, false},
		{"no reply at all", gomail.ErrConnCheck, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := classifyReply(tt.reason, tt.code, errors.New("reply"))
			var pe *PermanentError
			if errors.As(err, &pe) != tt.permanent || CodeOf(err) != tt.code {
				t.Fatalf("%T code %d, want permanent %v code %d", err, CodeOf(err), tt.permanent, tt.code)
			}
		})
	}
	if err := classify(errors.New("dial failed: connection refused")); CodeOf(err) != 0 {
		t.Fatalf("a connection failure has code %d", CodeOf(err))
	}
}
