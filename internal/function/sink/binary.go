package sink

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"unicode"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
)

// writeBinary puts e on req in binary mode exactly as cehttp.WriteRequest does for a v1.0 event
// (the same headers, body, ContentLength and GetBody) without going through sdk-go's binding
// layer, which boxes every attribute in an interface and allocates each header's value on its
// own. Events of other spec versions go through cehttp.WriteRequest.
func writeBinary(ctx context.Context, req *http.Request, e *event.Event) error {
	c, ok := e.Context.(*event.EventContextV1)
	if !ok {
		return cehttp.WriteRequest(ctx, binding.ToMessage(e), req)
	}
	var timeValue string
	if t := c.GetTime(); !t.IsZero() {
		timeValue = types.FormatTime(t)
	}
	// The attributes in the order of the v1.0 spec's list, as sdk-go writes them; blank ones
	// are left out, as sdk-go treats them as missing.
	attrs := [...][2]string{
		{"Ce-Id", c.GetID()},
		{"Ce-Source", c.GetSource()},
		{"Ce-Specversion", c.GetSpecVersion()},
		{"Ce-Type", c.GetType()},
		{cehttp.ContentType, c.GetDataContentType()},
		{"Ce-Dataschema", c.GetDataSchema()},
		{"Ce-Subject", c.GetSubject()},
		{"Ce-Time", timeValue},
	}
	// One backing array for all the header values.
	values := make([]string, 0, len(attrs)+len(c.Extensions))
	for _, a := range attrs {
		if a[1] == "" {
			continue
		}
		values = append(values, a[1])
		req.Header[a[0]] = values[len(values)-1 : len(values) : len(values)]
	}
	for name, v := range c.Extensions {
		key := extensionHeader(name)
		if v == nil {
			delete(req.Header, key)
			continue
		}
		s, err := types.Format(v)
		if err != nil {
			return err
		}
		values = append(values, s)
		req.Header[key] = values[len(values)-1 : len(values) : len(values)]
	}
	if data := e.Data(); len(data) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(data))
		req.ContentLength = int64(len(data))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	}
	return nil
}

// extensionHeader is the header of a binary-mode extension, as sdk-go names it: "Ce-" and the
// name with its first letter upper-cased.
func extensionHeader(name string) string {
	var b strings.Builder
	b.Grow(len(name) + len("Ce-"))
	b.WriteString("Ce-")
	b.WriteRune(unicode.ToUpper(rune(name[0])))
	b.WriteString(name[1:])
	return b.String()
}
