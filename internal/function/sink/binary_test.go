package sink

import (
	"context"
	"io"
	"net/http"
	"reflect"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
)

// TestWriteBinaryAsSDK: writeBinary puts every kind of event on a request exactly as
// cehttp.WriteRequest does: headers, body, ContentLength and GetBody.
func TestWriteBinaryAsSDK(t *testing.T) {
	newEvent := func(edit func(e *event.Event)) event.Event {
		e := cloudevents.NewEvent()
		e.SetID("id-1")
		e.SetType("com.example.order.created")
		e.SetSource("/webhooks/github")
		edit(&e)
		return e
	}
	at := time.Date(2026, 11, 29, 13, 40, 1, 123456789, time.FixedZone("CET", 3600))
	tests := []struct {
		name  string
		event event.Event
	}{
		{"minimal", newEvent(func(*event.Event) {})},
		{"json data", newEvent(func(e *event.Event) { _ = e.SetData("application/json", []byte(`{"a":1}`)) })},
		{"bytes without content type", newEvent(func(e *event.Event) { e.DataEncoded = []byte("raw") })},
		{"empty data", newEvent(func(e *event.Event) { _ = e.SetData("text/plain", []byte{}) })},
		{"all attributes", newEvent(func(e *event.Event) {
			e.SetSubject("octo/hello")
			e.SetTime(at)
			e.SetDataSchema("https://example.com/schema.json")
			e.SetSource("https://example.com/a b?c=d#e")
			_ = e.SetData("application/json; charset=utf-8", []byte(`{}`))
		})},
		{"non-ASCII subject", newEvent(func(e *event.Event) { e.SetSubject("zoë/café") })},
		{"extensions", newEvent(func(e *event.Event) {
			e.SetExtension("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			e.SetExtension("tracestate", "k=v")
			e.SetExtension("partitionkey", 42)
			e.SetExtension("flag", true)
			e.SetExtension("when", at)
			e.SetExtension("ref", types.URIRef{})
			e.SetExtension("blob", []byte{0, 1, 2})
		})},
		{"spec 0.3 (through the SDK)", newEvent(func(e *event.Event) {
			e.SetSpecVersion(event.CloudEventsVersionV03)
			e.SetSubject("s")
			_ = e.SetData("application/json", []byte(`[1]`))
		})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			want, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://sink.local/", nil)
			e := tc.event.Clone()
			wantErr := cehttp.WriteRequest(ctx, binding.ToMessage(&e), want)
			got, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://sink.local/", nil)
			e = tc.event.Clone()
			gotErr := writeBinary(ctx, got, &e)
			if (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("error %v, the SDK's %v", gotErr, wantErr)
			}
			if !reflect.DeepEqual(got.Header, want.Header) {
				t.Errorf("headers\n got %v\nwant %v", got.Header, want.Header)
			}
			if got.ContentLength != want.ContentLength || (got.GetBody == nil) != (want.GetBody == nil) || (got.Body == nil) != (want.Body == nil) {
				t.Fatalf("ContentLength %d, GetBody %v, Body %v; the SDK's %d, %v, %v", got.ContentLength, got.GetBody != nil, got.Body != nil,
					want.ContentLength, want.GetBody != nil, want.Body != nil)
			}
			if got.Body == nil {
				return
			}
			read := func(rc io.ReadCloser) string { b, _ := io.ReadAll(rc); return string(b) }
			if g, w := read(got.Body), read(want.Body); g != w {
				t.Errorf("body %q, the SDK's %q", g, w)
			}
			if got.GetBody == nil {
				return
			}
			gb, _ := got.GetBody()
			wb, _ := want.GetBody()
			if g, w := read(gb), read(wb); g != w {
				t.Errorf("GetBody %q, the SDK's %q", g, w)
			}
		})
	}
}

// BenchmarkWriteBinary compares writeBinary with cehttp.WriteRequest on the webhook intake's
// kind of event (subject, time, JSON body) in one run.
func BenchmarkWriteBinary(b *testing.B) {
	e := cloudevents.NewEvent()
	e.SetID("d-1")
	e.SetType("com.github.push")
	e.SetSource("/webhooks/github")
	e.SetSubject("octo/hello")
	e.SetTime(time.Now())
	_ = e.SetData("application/json", []byte(`{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"}}`))
	ctx := context.Background()
	for _, w := range []struct {
		name  string
		write func(*http.Request, *event.Event) error
	}{
		{"sdk", func(r *http.Request, e *event.Event) error { return cehttp.WriteRequest(ctx, binding.ToMessage(e), r) }},
		{"writeBinary", func(r *http.Request, e *event.Event) error { return writeBinary(ctx, r, e) }},
	} {
		b.Run(w.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://sink.local/", nil)
				if err := w.write(req, &e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
