package delivery

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/objects"
)

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func TestDescribe(t *testing.T) {
	githubPush := `{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"}}`
	slashCommand := "team_id=T1&channel_id=C9&command=%2Fdeploy&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
	interactivity := "payload=" + url.QueryEscape(`{"type":"block_actions","trigger_id":"tr-1","channel":{"id":"C7"}}`)
	tests := []struct {
		name     string
		describe func() (Delivery, error)
		want     Delivery
		wantErr  error
	}{
		{"github json", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "push", "X-GitHub-Delivery", "d-1", "Content-Type", "application/json"), []byte(githubPush))
		}, Delivery{ID: "d-1", Type: "com.github.push", Subject: "octo/hello"}, nil},
		{"github form payload", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "push", "X-GitHub-Delivery", "d-2", "Content-Type", "application/x-www-form-urlencoded"), []byte("payload="+url.QueryEscape(githubPush)))
		}, Delivery{ID: "d-2", Type: "com.github.push", Subject: "octo/hello"}, nil},
		{"github org hook without repository", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "ping", "X-GitHub-Delivery", "d-3"), []byte(`{"zen":"x"}`))
		}, Delivery{ID: "d-3", Type: "com.github.ping"}, nil},
		{"github not json", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "push", "X-GitHub-Delivery", "d-1"), []byte("Hello, World!"))
		}, Delivery{}, ErrNotJSON},
		{"github no delivery id", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "push"), []byte(githubPush))
		}, Delivery{}, ErrNoID},
		{"github no event", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Delivery", "d-1"), []byte(githubPush))
		}, Delivery{}, ErrBadType},
		{"github event with spaces", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "push now", "X-GitHub-Delivery", "d-1"), []byte(githubPush))
		}, Delivery{}, ErrBadType},
		{"github id too long", func() (Delivery, error) {
			return GitHub(hdr("X-GitHub-Event", "push", "X-GitHub-Delivery", strings.Repeat("x", MaxIDLength+1)), []byte(githubPush))
		}, Delivery{}, ErrIDTooLarge},

		{"stripe", func() (Delivery, error) {
			return Stripe([]byte(`{"id":"evt_1","type":"charge.succeeded","data":{"object":{"id":"ch_1"}}}`))
		}, Delivery{ID: "evt_1", Type: "com.stripe.charge.succeeded", Subject: "ch_1"}, nil},
		{"stripe no id", func() (Delivery, error) { return Stripe([]byte(`{"type":"charge.succeeded"}`)) }, Delivery{}, ErrNoID},
		{"stripe no type", func() (Delivery, error) { return Stripe([]byte(`{"id":"evt_1"}`)) }, Delivery{}, ErrBadType},
		{"stripe form body", func() (Delivery, error) { return Stripe([]byte(`id=evt_1`)) }, Delivery{}, ErrNotJSON},

		{"slack url_verification", func() (Delivery, error) {
			return Slack(hdr("Content-Type", "application/json"), []byte(`{"token":"x","challenge":"3eZbrw1a","type":"url_verification"}`))
		}, Delivery{Challenge: "3eZbrw1a"}, nil},
		{"slack event_callback", func() (Delivery, error) {
			return Slack(hdr("Content-Type", "application/json"), []byte(`{"type":"event_callback","event_id":"Ev1","event":{"type":"message","channel":"C1"}}`))
		}, Delivery{ID: "Ev1", Type: "com.slack.message", Subject: "C1"}, nil},
		{"slack channel object", func() (Delivery, error) {
			return Slack(hdr("Content-Type", "application/json"), []byte(`{"type":"event_callback","event_id":"Ev2","event":{"type":"channel_created","channel":{"id":"C2"}}}`))
		}, Delivery{ID: "Ev2", Type: "com.slack.channel_created"}, nil},
		{"slack slash command", func() (Delivery, error) {
			return Slack(hdr("Content-Type", "application/x-www-form-urlencoded"), []byte(slashCommand))
		}, Delivery{ID: "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c", Type: TypeSlackSlashCommand, Subject: "C9"}, nil},
		{"slack interactivity", func() (Delivery, error) {
			return Slack(hdr("Content-Type", "application/x-www-form-urlencoded"), []byte(interactivity))
		}, Delivery{ID: "tr-1", Type: "com.slack.block_actions", Subject: "C7"}, nil},
		{"slack json expected", func() (Delivery, error) { return Slack(hdr(), []byte("team_id=T1")) }, Delivery{}, ErrNotJSON},
		{"slack form without command", func() (Delivery, error) {
			return Slack(hdr("Content-Type", "application/x-www-form-urlencoded"), []byte("a=b"))
		}, Delivery{}, ErrBadType},

		{"standard webhooks", func() (Delivery, error) {
			return StandardWebhooks(hdr("webhook-id", "msg_1"), []byte(`{"type":"x"}`), "com.example.x")
		}, Delivery{ID: "msg_1", Type: "com.example.x"}, nil},
		{"standard webhooks not json", func() (Delivery, error) {
			return StandardWebhooks(hdr("webhook-id", "msg_1"), []byte(`<xml/>`), "com.example.x")
		}, Delivery{}, ErrNotJSON},

		{"hmac id header", func() (Delivery, error) { return HMAC(hdr("X-Id", "42"), []byte("raw"), "X-Id", "com.example.raw") }, Delivery{ID: "42", Type: "com.example.raw"}, nil},
		{"hmac id header missing", func() (Delivery, error) { return HMAC(hdr(), []byte("raw"), "X-Id", "com.example.raw") }, Delivery{}, ErrNoID},
		{"hmac content hash", func() (Delivery, error) { return HMAC(hdr(), []byte("raw"), "", "com.example.raw") }, Delivery{ID: ContentHash([]byte("raw")), Type: "com.example.raw"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.describe()
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("error = %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestS3(t *testing.T) {
	minio := []byte(`{"EventName":"s3:ObjectCreated:Put","Key":"photos/in/a b.jpg","Records":[` +
		`{"eventSource":"minio:s3","eventTime":"2026-11-29T13:40:01Z","eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"photos"},"object":{"key":"in%2Fa+b.jpg","size":7,"eTag":"e1","sequencer":"0A"}}},` +
		`{"eventSource":"minio:s3","eventTime":"2026-11-29T13:40:02Z","eventName":"s3:ObjectRemoved:Delete","s3":{"bucket":{"name":"photos"},"object":{"key":"in%2Fold.jpg","sequencer":"0B"}}}]}`)
	first := objects.Event{Bucket: "photos", Key: "in/a b.jpg", Size: 7, ETag: "e1", Sequencer: "0A", Name: objects.NameCreatedPut,
		Time: time.Date(2026, 11, 29, 13, 40, 1, 0, time.UTC), Store: "minio"}
	second := objects.Event{Bucket: "photos", Key: "in/old.jpg", Sequencer: "0B", Name: objects.NameRemovedDelete,
		Time: time.Date(2026, 11, 29, 13, 40, 2, 0, time.UTC), Store: "minio"}
	part := func(e objects.Event) Part {
		data, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return Part{ID: e.ID(), Type: e.Type(), Subject: e.Key, Time: e.Time, Data: data}
	}
	tests := []struct {
		name    string
		body    []byte
		want    Delivery
		wantErr error
	}{
		{"two records fan out to two parts, the delivery id is the body hash", minio, Delivery{
			ID: ContentHash(minio), Type: "com.amazonaws.s3.ObjectCreated:Put", Subject: "in/a b.jpg",
			Parts: []Part{part(first), part(second)},
		}, nil},
		{"not JSON", []byte(`<x/>`), Delivery{}, objects.ErrNotJSON},
		{"a test event without records", []byte(`{"Event":"s3:TestEvent"}`), Delivery{}, objects.ErrUnknownShape},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := S3(tc.body)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
