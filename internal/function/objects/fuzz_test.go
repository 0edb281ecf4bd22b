package objects

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that any body either is refused or yields events that are each valid,
// carry a type a Trigger can match, a decoded key within bounds, and data that round-trips.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "notifications", "*.json"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"Records":[{}]}`))
	f.Add([]byte(`{"detail-type":"Object Deleted","source":"aws.s3","time":"2026-01-01T00:00:00Z","detail":{"bucket":{"name":"b"},"object":{"key":"k"},"reason":"Lifecycle Expiration"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := Parse(body)
		if err != nil {
			if events != nil {
				t.Fatalf("events %v with error %v", events, err)
			}
			return
		}
		if len(events) == 0 || len(events) > MaxRecords {
			t.Fatalf("%d events without error", len(events))
		}
		for _, e := range events {
			if err := e.check(); err != nil {
				t.Fatalf("Parse returned an invalid event %+v: %v", e, err)
			}
			if !strings.HasPrefix(e.Type(), TypePrefix) || strings.ContainsAny(e.Type(), " \n\"") {
				t.Fatalf("type %q", e.Type())
			}
			if len(e.ID()) != 32 {
				t.Fatalf("id %q", e.ID())
			}
			raw, err := json.Marshal(e)
			if err != nil {
				t.Fatalf("marshal %+v: %v", e, err)
			}
			var back Event
			if err := json.Unmarshal(raw, &back); err != nil || back.ID() != e.ID() || back.Key != e.Key {
				t.Fatalf("data does not round-trip: %s → %+v (%v)", raw, back, err)
			}
		}
	})
}
