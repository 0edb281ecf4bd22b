package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/webhook/dedup"
	"github.com/knfaas/knfaas/internal/function/webhook/source"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// minioTwoRecords is a MinIO-shaped notification carrying two records (a bulk delete is one
// request with one record per object; any store may batch).
const minioTwoRecords = `{"EventName":"s3:ObjectCreated:Put","Key":"photos/in/a b.jpg","Records":[` +
	`{"eventVersion":"2.0","eventSource":"minio:s3","eventTime":"2026-11-29T13:40:01.5Z","eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"photos"},"object":{"key":"in%2Fa+b.jpg","size":48213,"eTag":"0f343b0931126a20f133d67c2b018a3b","contentType":"image/jpeg","sequencer":"187C5A1F3E6F0D2A"}}},` +
	`{"eventVersion":"2.0","eventSource":"minio:s3","eventTime":"2026-11-29T13:40:02Z","eventName":"s3:ObjectRemoved:Delete","s3":{"bucket":{"name":"photos"},"object":{"key":"in%2Fold.jpg","sequencer":"187C5A1F3E6F0D2B"}}}]}`

const bridgeCreated = `{"version":"0","id":"17793124-05d4-b198-2fde-7ededc63b103","detail-type":"Object Created","source":"aws.s3","account":"111122223333","time":"2026-11-29T13:40:05Z","region":"eu-west-1","resources":["arn:aws:s3:::photos"],"detail":{"version":"0","bucket":{"name":"photos"},"object":{"key":"in/dog.jpg","size":5,"etag":"b1946ac92492d2347c6235b4d2611184","version-id":"v1","sequencer":"617f08299329d189"},"reason":"PutObject"}}`

func TestS3Notifications(t *testing.T) {
	bearer := hdr("Content-Type", "application/json", "Authorization", "Bearer "+minioToken)
	apiKey := hdr("Content-Type", "application/json", "X-Api-Key", minioToken)
	tests := []struct {
		name       string
		path       string
		header     http.Header
		body       string
		wantStatus int
		// wantEvents are the published events' type, subject and data key, in order.
		wantEvents [][3]string
	}{
		{"minio: two records, two events in order", "minio", bearer, minioTwoRecords, 202, [][3]string{
			{"com.amazonaws.s3.ObjectCreated:Put", "in/a b.jpg", "in/a b.jpg"},
			{"com.amazonaws.s3.ObjectRemoved:Delete", "in/old.jpg", "in/old.jpg"},
		}},
		{"eventbridge API destination with an API-key header", "aws", apiKey, bridgeCreated, 202, [][3]string{
			{"com.amazonaws.s3.ObjectCreated:Put", "in/dog.jpg", "in/dog.jpg"},
		}},
		{"wrong token", "minio", hdr("Authorization", "Bearer "+minioToken+"x"), minioTwoRecords, 401, nil},
		{"no token", "minio", hdr("Content-Type", "application/json"), minioTwoRecords, 401, nil},
		{"bearer sent where an API-key header is configured", "aws", bearer, bridgeCreated, 401, nil},
		{"a test event without records", "minio", bearer, `{"Service":"Amazon S3","Event":"s3:TestEvent"}`, 400, nil},
		{"one unusable record refuses the whole notification", "minio", bearer,
			strings.Replace(minioTwoRecords, `"key":"in%2Fold.jpg"`, `"key":""`, 1), 400, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{})
			status, _, answer := h.post(t, tc.path, tc.header, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d", status, answer, tc.wantStatus)
			}
			got := h.broker.events()
			if len(got) != len(tc.wantEvents) {
				t.Fatalf("%d events published, want %d", len(got), len(tc.wantEvents))
			}
			for i, want := range tc.wantEvents {
				var data objects.Event
				if err := json.Unmarshal(got[i].body, &data); err != nil {
					t.Fatalf("event %d data %s: %v", i, got[i].body, err)
				}
				hd := got[i].header
				if hd.Get("Ce-Type") != want[0] || hd.Get("Ce-Subject") != want[1] || data.Key != want[2] ||
					hd.Get("Ce-Id") != data.ID() || hd.Get("Ce-Source") != "/webhooks/"+tc.path ||
					hd.Get("Content-Type") != "application/json" || data.Bucket != "photos" {
					t.Errorf("event %d: headers %v data %+v, want type %q subject %q", i, hd, data, want[0], want[1])
				}
				if at, err := time.Parse(time.RFC3339Nano, hd.Get("Ce-Time")); err != nil || !at.Equal(data.Time) {
					t.Errorf("event %d: Ce-Time %q, want the store's event time %s", i, hd.Get("Ce-Time"), data.Time)
				}
			}
			if tc.wantStatus == 202 {
				// The store resends the same notification: nothing is published again.
				if status, _, _ := h.post(t, tc.path, tc.header, tc.body); status != 200 || len(h.broker.events()) != len(got) {
					t.Fatalf("resend: status %d, %d events, want 200 and still %d", status, len(h.broker.events()), len(got))
				}
			}
		})
	}
}

// flakyPublisher fails the failAt-th Send (1-based) once and records every accepted event.
type flakyPublisher struct {
	mu     sync.Mutex
	sends  int
	failAt int
	ids    []string
}

func (p *flakyPublisher) Send(_ context.Context, e event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sends++
	if p.sends == p.failAt {
		return errors.New("broker refused")
	}
	p.ids = append(p.ids, e.ID())
	return nil
}

// A notification whose second event fails to publish is answered 503 and its claim released;
// the store's retry publishes both events again under the same ids, so the one published twice
// is a duplicate a consumer keyed on (source, id) absorbs, and nothing is lost.
func TestS3PartialPublishRetriesUnderTheSameIDs(t *testing.T) {
	rds := redistest.Start(t, redistest.Options{})
	srcs, err := source.Load("testdata/sources.yaml", fuzzSecrets)
	if err != nil {
		t.Fatal(err)
	}
	claims := dedup.New(rds.Client())
	t.Cleanup(claims.Close)
	pub := &flakyPublisher{failAt: 2}
	fn := &Function{log: discardLogger(), now: time.Now}
	fn.install(Config{PublishTimeout: time.Second, RetryAfter: 3 * time.Second}, srcs, claims, pub, nil)
	post := func() int {
		req := httptest.NewRequest(http.MethodPost, "/minio", strings.NewReader(minioTwoRecords))
		req.Header.Set("Authorization", "Bearer "+minioToken)
		rec := httptest.NewRecorder()
		fn.Handle(rec, req)
		return rec.Code
	}
	for i, want := range []int{503, 202, 200} {
		if got := post(); got != want {
			t.Fatalf("send %d: status %d, want %d", i+1, got, want)
		}
	}
	if len(pub.ids) != 3 || pub.ids[0] != pub.ids[1] || pub.ids[1] == pub.ids[2] {
		t.Fatalf("published ids %v, want the first record's twice (before and after the retry), then the second's", pub.ids)
	}
}
