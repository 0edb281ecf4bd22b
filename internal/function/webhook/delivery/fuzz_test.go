package delivery

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/function/objects"
)

// FuzzDescribe feeds arbitrary bodies, content types and header values to every describer.
// Invariants: no panic; an accepted delivery has an id of at most MaxIDLength bytes and a type
// with its provider's prefix, or (Slack only) a challenge.
func FuzzDescribe(f *testing.F) {
	f.Add("application/json", "push", "d-1", []byte(`{"repository":{"full_name":"a/b"}}`))
	f.Add("application/x-www-form-urlencoded", "push", "d-2", []byte(`payload=%7B%7D`))
	f.Add("application/json", "", "", []byte(`{"id":"evt_1","type":"charge.succeeded","data":{"object":{"id":"ch_1"}}}`))
	f.Add("application/json", "", "", []byte(`{"type":"event_callback","event_id":"Ev1","event":{"type":"message","channel":{"id":1}}}`))
	f.Add("application/x-www-form-urlencoded", "", "", []byte(`command=%2Fx&trigger_id=t`))
	f.Add("application/json", "", "", []byte(`{"type":"url_verification","challenge":"c"}`))
	f.Add("application/json", "", "", []byte(`{"Records":[{"eventSource":"minio:s3","eventTime":"2026-11-29T13:40:01Z","eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"a%2Fb+c.jpg","size":1}}}]}`))
	f.Fuzz(func(t *testing.T, contentType, event, id string, body []byte) {
		h := http.Header{}
		h.Set("Content-Type", contentType)
		h.Set("X-GitHub-Event", event)
		h.Set("X-GitHub-Delivery", id)
		h.Set("webhook-id", id)
		h.Set("X-Id", id)
		check := func(name, prefix string, d Delivery, err error) {
			if err != nil {
				return
			}
			if d.Challenge != "" {
				if name != "slack" {
					t.Fatalf("%s returned a challenge", name)
				}
				return
			}
			if d.ID == "" || len(d.ID) > MaxIDLength {
				t.Fatalf("%s accepted id of %d bytes", name, len(d.ID))
			}
			configured := strings.HasPrefix(prefix, "com.example.")
			if configured && d.Type != prefix || !configured && (!strings.HasPrefix(d.Type, prefix) || len(d.Type) == len(prefix)) {
				t.Fatalf("%s accepted type %q", name, d.Type)
			}
		}
		d, err := GitHub(h, body)
		check("github", TypePrefixGitHub, d, err)
		d, err = Stripe(body)
		check("stripe", TypePrefixStripe, d, err)
		d, err = Slack(h, body)
		check("slack", TypePrefixSlack, d, err)
		d, err = StandardWebhooks(h, body, "com.example.x")
		check("standardwebhooks", "com.example.x", d, err)
		d, err = HMAC(h, body, "X-Id", "com.example.y")
		check("hmac", "com.example.y", d, err)
		d, err = S3(body)
		check("s3", objects.TypePrefix, d, err)
		if err == nil {
			if len(d.Parts) == 0 || d.Type != d.Parts[0].Type {
				t.Fatalf("s3 accepted %d parts, type %q", len(d.Parts), d.Type)
			}
			for _, p := range d.Parts {
				var e objects.Event
				if p.ID == "" || p.Subject == "" || !strings.HasPrefix(p.Type, objects.TypePrefix) ||
					json.Unmarshal(p.Data, &e) != nil || e.Key != p.Subject || e.Type() != p.Type || e.ID() != p.ID {
					t.Fatalf("s3 accepted part %+v", p)
				}
			}
		}
	})
}
