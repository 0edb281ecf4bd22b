// Package deadletter stores dead-lettered CloudEvents in Redis, indexes them for listing, bounds
// them by count and age, and redrives them to a broker exactly as they were first sent.
package deadletter

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

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
	// Event is the original event in JSON structured format, without the error extensions.
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
// event as its producer sent it.
func FromEvent(e event.Event) (Letter, error) {
	original := e.Clone()
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
	for _, name := range []string{ExtErrorDest, ExtErrorCode, ExtErrorData, ExtTrigger} {
		original.SetExtension(name, nil) // nil deletes
	}
	raw, err := json.Marshal(original)
	if err != nil {
		return Letter{}, fmt.Errorf("encoding event %s as JSON: %w", e.ID(), err)
	}
	l.Event = raw
	return l, nil
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
