package deadletter

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
)

func newEvent(t testing.TB, id, typ, source string, ext map[string]any) event.Event {
	t.Helper()
	e := event.New()
	e.SetID(id)
	e.SetType(typ)
	e.SetSource(source)
	e.SetSubject("order-" + id)
	if err := e.SetData("application/json", map[string]string{"order": id}); err != nil {
		t.Fatal(err)
	}
	for k, v := range ext {
		e.SetExtension(k, v)
	}
	return e
}

func TestFromEvent(t *testing.T) {
	tests := []struct {
		name    string
		ext     map[string]any
		want    Letter
		wantExt []string // extensions the stored original event keeps
	}{{
		name: "broker dead letter with all extensions",
		ext: map[string]any{
			ExtErrorDest: "http://orders.knfaas.svc/", ExtErrorCode: "503",
			ExtErrorData: base64.StdEncoding.EncodeToString([]byte("database down")),
			ExtTrigger:   "knfaas/orders-created", "traceparent": "00-abc",
		},
		want: Letter{ErrorExtensions: true, Dest: "http://orders.knfaas.svc/", Code: 503,
			ErrorData: "database down", Trigger: "knfaas/orders-created"},
		wantExt: []string{"traceparent"},
	}, {
		name: "posted without error extensions",
		ext:  nil,
		want: Letter{ErrorExtensions: false},
	}, {
		name: "error data that is not base64 is kept as sent",
		ext:  map[string]any{ExtErrorData: "not base64 !"},
		want: Letter{ErrorExtensions: true, ErrorData: "not base64 !"},
	}, {
		name: "error data truncated mid-quantum decodes up to the cut",
		ext:  map[string]any{ExtErrorData: base64.StdEncoding.EncodeToString([]byte("database down"))[:14]},
		want: Letter{ErrorExtensions: true, ErrorData: "database "},
	}, {
		name: "non-numeric code is recorded as zero, still a dead letter",
		ext:  map[string]any{ExtErrorCode: "teapot"},
		want: Letter{ErrorExtensions: true},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEvent(t, "42", "dev.knfaas.example.orders.created", "/orders", tc.ext)

			got, err := FromEvent(e)

			if err != nil {
				t.Fatal(err)
			}
			if got.EventID != "42" || got.EventType != e.Type() || got.Source != "/orders" || got.Subject != "order-42" {
				t.Errorf("attributes = %+v", got)
			}
			if got.ErrorExtensions != tc.want.ErrorExtensions || got.Dest != tc.want.Dest ||
				got.Code != tc.want.Code || got.ErrorData != tc.want.ErrorData || got.Trigger != tc.want.Trigger {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			orig, err := got.OriginalEvent()
			if err != nil {
				t.Fatal(err)
			}
			if len(orig.Extensions()) != len(tc.wantExt) {
				t.Errorf("original extensions = %v, want only %v", orig.Extensions(), tc.wantExt)
			}
			for _, k := range tc.wantExt {
				if _, ok := orig.Extensions()[k]; !ok {
					t.Errorf("original lost extension %s", k)
				}
			}
			var data map[string]string
			if err := json.Unmarshal(orig.Data(), &data); err != nil || data["order"] != "42" {
				t.Errorf("original data = %s (%v)", orig.Data(), err)
			}
		})
	}
}

// dataCases are bodies the SDK's own JSON encoding does not keep byte for byte.
var dataCases = []struct {
	name, contentType string
	data              []byte
}{
	{"JSON with whitespace and HTML characters", "application/json", []byte("{ \"a\" :  \"<b>&</b>\",\n \"n\": 1.50 }")},
	{"JSON with surrounding whitespace", "application/json", []byte("  \t{\"a\":1}\n")},
	{"invalid JSON labelled JSON", "application/json; charset=utf-8", []byte("{not json")},
	{"JSON without a content type", "", []byte(`{"a": [1, 2,  3]}`)},
	{"text with controls and HTML characters", "text/plain", []byte("a <b> & \"c\" \\ \x00\x1f\r\n\u2028 é")},
	{"text that is not UTF-8", "text/plain", []byte("caf\xe9 \xff")},
	{"binary", "application/octet-stream", []byte{0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, '"', '\\'}},
	{"a +json type is read as a string", "application/vnd.example+json", []byte(" [1, 2] ")},
}

func TestDataIsKeptByteForByte(t *testing.T) {
	check := func(t *testing.T, contentType string, data []byte) {
		t.Helper()
		e := newEvent(t, "1", "t", "/s", map[string]any{ExtErrorCode: "500"})
		e.SetDataContentType(contentType)
		e.DataEncoded = data
		l, err := FromEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(l.Event) {
			t.Fatalf("stored event is not valid JSON: %s", l.Event)
		}
		got, err := l.OriginalEvent()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.DataEncoded, data) || got.DataContentType() != contentType {
			t.Fatalf("data %q (%s), want %q (%s)", got.DataEncoded, got.DataContentType(), data, contentType)
		}
	}
	for _, tc := range dataCases {
		t.Run(tc.name, func(t *testing.T) { check(t, tc.contentType, tc.data) })
	}
	t.Run("random bodies", func(t *testing.T) {
		rnd := rand.New(rand.NewPCG(1, 2))
		alphabet := []byte("{}[]\",:\\ \t\n<>&aé\x00\xff0")
		for i := range 2000 {
			data := make([]byte, rnd.IntN(64))
			for j := range data {
				data[j] = alphabet[rnd.IntN(len(alphabet))]
			}
			ct := []string{"application/json", "text/plain", "application/octet-stream", ""}[i%4]
			check(t, ct, data)
		}
	})
}
