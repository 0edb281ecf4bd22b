package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
)

// asStored turns XADD fields into what XRANGE/XREADGROUP give back: a map of strings.
func asStored(fields []any) map[string]any {
	out := map[string]any{}
	for i := 0; i+1 < len(fields); i += 2 {
		switch v := fields[i+1].(type) {
		case []byte:
			out[fields[i].(string)] = string(v)
		default:
			out[fields[i].(string)] = v
		}
	}
	return out
}

func TestEntryRoundTrip(t *testing.T) {
	tests := map[string]struct {
		contentType string
		data        []byte
		extensions  map[string]any
	}{
		"json with whitespace and html characters": {contentType: "application/json", data: []byte("{\n  \"a\" : \"<b>&amp;</b>\",\t\"u\": \"\\u003c\" }\n")},
		"text":                                {contentType: "text/plain; charset=utf-8", data: []byte("héllo <world> & \"quotes\"\n")},
		"binary, not utf-8":                   {contentType: "application/octet-stream", data: []byte{0, 0xff, 0xfe, '<', 0x80, '\n'}},
		"json media type, invalid json bytes": {contentType: "application/json", data: []byte{'{', 0xff}},
		"no data":                             {contentType: ""},
		"extensions of several types":         {contentType: "text/plain", data: []byte("x"), extensions: map[string]any{"knfaasttl": int32(7), "flag": true, "s": "<&>"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := cloudevents.NewEvent()
			e.SetID("id-1")
			e.SetType("t")
			e.SetSource("/s")
			if tc.contentType != "" {
				e.SetDataContentType(tc.contentType)
			}
			e.DataEncoded = tc.data
			for k, v := range tc.extensions {
				e.SetExtension(k, v)
			}
			entry, err := EncodeEntry(&e)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(entry.Attributes, []byte(`"data":`)) || bytes.Contains(entry.Attributes, []byte(`"data_base64"`)) {
				t.Fatalf("attributes field holds data: %s", entry.Attributes)
			}
			got, err := DecodeEntry(asStored(entry.Fields()))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Data(), tc.data) {
				t.Fatalf("data = %q, want %q", got.Data(), tc.data)
			}
			if got.ID() != "id-1" || got.DataContentType() != e.DataContentType() {
				t.Fatalf("attributes changed: %v", got)
			}
			for k, v := range tc.extensions {
				if got.Extensions()[k] != v {
					t.Errorf("extension %s = %#v, want %#v", k, got.Extensions()[k], v)
				}
			}
			// A structured encoding of the decoded event by the SDK's event format writer (a
			// Trigger asking for JSON format, a dead-letter store) keeps the bytes too.
			// encoding/json would not: it compacts and HTML-escapes what MarshalJSON writes.
			var js bytes.Buffer
			if err := event.WriteJson(got, &js); err != nil {
				t.Fatal(err)
			}
			var back cloudevents.Event
			if err := back.UnmarshalJSON(js.Bytes()); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back.Data(), tc.data) {
				t.Fatalf("structured re-encoding changed data: %q, want %q", back.Data(), tc.data)
			}
		})
	}
}

func TestDecodeEntryVersions(t *testing.T) {
	v1 := cloudevents.NewEvent()
	v1.SetID("old")
	v1.SetType("t")
	v1.SetSource("/s")
	_ = v1.SetData("application/json", map[string]string{"a": "<b>"})
	v1JSON, _ := json.Marshal(v1)
	tests := map[string]struct {
		values      map[string]any
		wantID      string
		undecodable bool
	}{
		"version 1 entry":               {values: map[string]any{"e": string(v1JSON)}, wantID: "old"},
		"version 2 without attributes":  {values: map[string]any{"v": "2", "d": "x"}, undecodable: true},
		"version 2 with bad attributes": {values: map[string]any{"v": "2", "a": "{"}, undecodable: true},
		"version 2 with data in a":      {values: map[string]any{"v": "2", "a": `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1}`}, undecodable: true},
		"unknown version":               {values: map[string]any{"v": "3", "a": "{}"}, undecodable: true},
		"no known field":                {values: map[string]any{"x": "y"}, undecodable: true},
		"version 1, not an event":       {values: map[string]any{"e": "not json"}, undecodable: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := DecodeEntry(tc.values)
			if tc.undecodable {
				if !errors.Is(err, ErrUndecodableEntry) {
					t.Fatalf("err = %v, want ErrUndecodableEntry", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.ID() != tc.wantID {
				t.Fatalf("id = %q, want %q", e.ID(), tc.wantID)
			}
		})
	}
}
