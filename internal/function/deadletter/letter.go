// Package deadletter stores dead-lettered CloudEvents in Redis, indexes them for listing, bounds
// them by count and age, and redrives them to a broker exactly as they were first sent.
package deadletter

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// CloudEvents extensions read from dead letters and written on redrive.
const (
	// ExtErrorDest is the URL of the subscriber that failed (set by Knative on dead letters).
	ExtErrorDest = "knativeerrordest"
	// ExtErrorCode is the last HTTP status the subscriber answered (set by Knative).
	ExtErrorCode = "knativeerrorcode"
	// ExtErrorData is the base64 of the subscriber's last response body (set by Knative).
	ExtErrorData = "knativeerrordata"
	// ExtTrigger is "<namespace>/<trigger>" of the failed subscription (set by knfaas up).
	ExtTrigger = "knfaastrigger"
	// ExtRedrive is the redrive attempt count, added when a letter is published again.
	ExtRedrive = "knfaasredrive"
)

// ReasonParked is Letter.Reason for an event the broker parked: subscriber and dead-letter sink
// both kept failing, so the broker stored the event here itself and acknowledged it, rather than
// let it block its Trigger.
const ReasonParked = "parked"

// Letter is one stored dead letter.
type Letter struct {
	// ID is the letter's Redis stream entry id; it orders letters by arrival.
	ID string `json:"letter"`
	// Received is when the dead-letter function stored the letter (Redis server time).
	Received time.Time `json:"received"`
	// EventType, Source, EventID and Subject repeat the original event's attributes.
	EventType string `json:"type"`
	Source    string `json:"source"`
	EventID   string `json:"id"`
	Subject   string `json:"subject,omitempty"`
	// ErrorExtensions is false when the event arrived without any knativeerror* extension
	// (posted straight to the function rather than by a broker).
	ErrorExtensions bool `json:"errorExtensions"`
	// Dest, Code and ErrorData are knativeerrordest, knativeerrorcode and the decoded
	// knativeerrordata; Code is 0 when the extension was absent or not a number.
	Dest      string `json:"dest,omitempty"`
	Code      int    `json:"code,omitempty"`
	ErrorData string `json:"errorData,omitempty"`
	// Trigger is "<namespace>/<trigger>" when the sender said which subscription failed.
	Trigger string `json:"trigger,omitempty"`
	// Reason is "" for a letter the dead-letter sink received, ReasonParked for an event the
	// broker parked after subscriber and dead-letter sink kept failing.
	Reason string `json:"reason,omitempty"`
	// Detail is free text on why the letter is here; for a parked event, the last answers of
	// the subscriber and of the dead-letter sink.
	Detail string `json:"detail,omitempty"`
	// Event is the original event in JSON structured format, without the error extensions.
	// Its data is kept byte for byte (see encodeEvent), so OriginalEvent and a redrive carry
	// exactly the bytes the producer sent.
	Event json.RawMessage `json:"event"`
	// Redrive is the bookkeeping of redrive attempts; nil when never redriven.
	Redrive *RedriveState `json:"redrive,omitempty"`
}

// RedriveState records the redrive attempts of a letter that is still stored.
type RedriveState struct {
	// Attempts counts claims: each claim precedes exactly one send.
	Attempts int `json:"attempts"`
	// LeaseUntil is when a running redrive's claim on the letter expires; zero when released.
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`
	// LastError is why the last attempt was not accepted.
	LastError string `json:"lastError,omitempty"`
}

// FromEvent turns a received dead letter into a Letter (without ID and Received, which the store
// assigns). The error extensions are moved out of the event so that a redrive republishes the
// event as its producer sent it. The event's data is not copied: Letter.Event is the only new
// copy, so a large letter is held about twice, not several times.
func FromEvent(e event.Event) (Letter, error) {
	l := Letter{
		EventType: e.Type(),
		Source:    e.Source(),
		EventID:   e.ID(),
		Subject:   e.Subject(),
	}
	ext := e.Extensions()
	if v, ok := ext[ExtErrorDest]; ok {
		l.ErrorExtensions = true
		l.Dest, _ = types.ToString(v)
	}
	if v, ok := ext[ExtErrorCode]; ok {
		l.ErrorExtensions = true
		l.Code = codeOf(v)
	}
	if v, ok := ext[ExtErrorData]; ok {
		l.ErrorExtensions = true
		s, _ := types.ToString(v)
		l.ErrorData = decodeErrorData(s)
	}
	if v, ok := ext[ExtTrigger]; ok {
		l.Trigger, _ = types.ToString(v)
	}
	// A copy of the attributes only; the data is shared with e and never modified.
	original := event.Event{Context: e.Context.Clone(), DataEncoded: e.DataEncoded, DataBase64: e.DataBase64}
	for _, name := range []string{ExtErrorDest, ExtErrorCode, ExtErrorData, ExtTrigger} {
		original.SetExtension(name, nil) // nil deletes
	}
	raw, err := encodeEvent(original)
	if err != nil {
		return Letter{}, fmt.Errorf("encoding event %s as JSON: %w", e.ID(), err)
	}
	l.Event = raw
	return l, nil
}

// encodeEvent writes e in JSON structured format so that decoding it gives back e's data byte for
// byte, whatever its content type. The SDK's own encoding does not: it writes any data with a
// JSON content type verbatim (invalid JSON makes invalid output; whitespace around the value is
// lost on decoding), and any other data as a JSON string, which loses invalid UTF-8 and inflates
// binary data up to six times with \u escapes. So data is written verbatim only when it is valid
// JSON with a JSON content type and no surrounding whitespace, as a string only when it is valid
// UTF-8 with another content type, and as data_base64 otherwise. The attributes are written by
// the SDK and the data spliced in, into one buffer of the final size.
func encodeEvent(e event.Event) ([]byte, error) {
	data := e.DataEncoded
	if e.SpecVersion() != event.CloudEventsVersionV1 {
		// 0.3 events mark base64 by an attribute; keep the SDK's encoding for them.
		return e.MarshalJSON()
	}
	attrs, err := event.Event{Context: e.Context}.MarshalJSON()
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return attrs, nil
	}
	if len(attrs) < 2 || attrs[len(attrs)-1] != '}' {
		return nil, fmt.Errorf("unexpected attribute encoding %.40q", attrs)
	}
	head := attrs[:len(attrs)-1]
	jsonType := isJSONMediaType(e.DataContentType())
	switch {
	case !e.DataBase64 && jsonType && json.Valid(data) && !isJSONSpace(data[0]) && !isJSONSpace(data[len(data)-1]):
		out := make([]byte, 0, len(head)+len(`,"data":}`)+len(data))
		out = append(append(append(append(out, head...), `,"data":`...), data...), '}')
		return out, nil
	case !e.DataBase64 && !jsonType && utf8.Valid(data):
		out := make([]byte, 0, len(head)+len(`,"data":""}`)+quotedLen(data))
		out = append(out, head...)
		out = appendJSONString(append(out, `,"data":`...), data)
		return append(out, '}'), nil
	default:
		out := make([]byte, 0, len(head)+len(`,"data_base64":""}`)+base64.StdEncoding.EncodedLen(len(data)))
		out = append(out, head...)
		out = append(out, `,"data_base64":"`...)
		n := len(out)
		out = out[:n+base64.StdEncoding.EncodedLen(len(data))]
		base64.StdEncoding.Encode(out[n:], data)
		return append(out, '"', '}'), nil
	}
}

// isJSONMediaType says whether the SDK reads data of this content type as a JSON value (rather
// than a string); it must agree with the SDK's decoding, which is what OriginalEvent uses.
func isJSONMediaType(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "", event.ApplicationJSON, event.TextJSON, event.ApplicationCloudEventsJSON, event.ApplicationCloudEventsBatchJSON:
		return true
	}
	return false
}

func isJSONSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

const hexDigits = "0123456789abcdef"

// quotedLen is the length of appendJSONString's output for s.
func quotedLen(s []byte) int {
	n := 2
	for _, b := range s {
		switch {
		case b == '"' || b == '\\':
			n += 2
		case b < 0x20:
			n += 6
		default:
			n++
		}
	}
	return n
}

// appendJSONString appends valid UTF-8 s as a JSON string, escaping only what JSON requires.
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	for _, b := range s {
		switch {
		case b == '"' || b == '\\':
			dst = append(dst, '\\', b)
		case b < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
		default:
			dst = append(dst, b)
		}
	}
	return append(dst, '"')
}

// OriginalEvent decodes the stored original event.
func (l Letter) OriginalEvent() (event.Event, error) {
	var e event.Event
	if err := json.Unmarshal(l.Event, &e); err != nil {
		return e, fmt.Errorf("decoding stored event of letter %s: %w", l.ID, err)
	}
	return e, nil
}

// codeOf reads knativeerrorcode, which arrives as a string over HTTP headers.
func codeOf(v any) int {
	i, err := types.ToInteger(v)
	if err != nil {
		return 0
	}
	return int(i)
}

// decodeErrorData decodes knativeerrordata. Knative truncates the base64 to a maximum length,
// which can cut a quantum in half, so a value that does not decode whole is decoded up to its
// last complete 4-character group. A value that is not base64 at all is kept as it came, since
// losing the subscriber's answer would be worse than showing it undecoded.
func decodeErrorData(s string) string {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return string(b)
	}
	if b, err := base64.StdEncoding.DecodeString(s[:len(s)/4*4]); err == nil {
		return string(b)
	}
	return s
}
