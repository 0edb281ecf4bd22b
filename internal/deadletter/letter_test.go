package deadletter

import (
	"encoding/base64"
	"encoding/json"
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
