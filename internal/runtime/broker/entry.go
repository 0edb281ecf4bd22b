package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
)

// The stream entry format is the contract between a Broker's ingress, which appends one entry per
// accepted event to the Broker's stream, and its dispatcher, which delivers entries to Triggers.
// Both `knfaas up` and the cluster Broker class read and write it with EncodeEntry and
// DecodeEntry.
//
// Version 2 (written since data is carried byte for byte) has three fields:
//
//	v  "2"
//	a  the event's context attributes and extensions, without data, as one CloudEvents JSON
//	   object (JSON event format; "data" and "data_base64" are never present)
//	d  the data, the exact bytes the sender sent: a binary-mode body as received, a
//	   structured-mode "data" JSON value as written in the envelope (without the insignificant
//	   whitespace around it), a structured-mode string decoded, or "data_base64" decoded.
//	   The field is absent when the event has no data.
//
// Nothing re-encodes d on the way: delivery sends it as the body of a binary-mode request.
//
// Version 1 (written by earlier releases, still read so that entries pending across an upgrade
// are delivered) has one field:
//
//	e  the whole event in the CloudEvents JSON format, as encoding/json wrote it (JSON data
//	   compacted and with <, >, & escaped: this is why version 2 exists)
//
// An entry that is neither is undecodable; the dispatcher parks it, it never drops it.
const (
	// EntryVersion is the version EncodeEntry writes.
	EntryVersion = "2"

	entryVersionField    = "v"
	entryAttributesField = "a"
	entryDataField       = "d"
	// eventField is the single field of a version 1 entry.
	eventField = "e"
)

// ErrUndecodableEntry marks a stream entry DecodeEntry cannot turn into an event.
var ErrUndecodableEntry = errors.New("undecodable stream entry")

// Entry is an event encoded as a stream entry.
type Entry struct {
	// Attributes is field a: the context attributes and extensions as CloudEvents JSON.
	Attributes []byte
	// Data is field d, nil when the event has none.
	Data []byte
}

// Size is what the entry stores: attributes and data. A Broker's maximum event size bounds it.
func (e Entry) Size() int { return len(e.Attributes) + len(e.Data) }

// Fields is the flat field/value list to XADD.
func (e Entry) Fields() []any {
	fields := []any{entryVersionField, EntryVersion, entryAttributesField, e.Attributes}
	if len(e.Data) > 0 {
		fields = append(fields, entryDataField, e.Data)
	}
	return fields
}

// EncodeEntry encodes e in the current entry format. Its data is taken as it is, never
// re-marshalled.
func EncodeEntry(e *cloudevents.Event) (Entry, error) {
	if e.Context == nil {
		return Entry{}, errors.New("encoding event: no context attributes")
	}
	var attrs bytes.Buffer
	// Without DataEncoded, WriteJson writes the attributes only. The event format writer is
	// called directly: encoding/json would compact and HTML-escape its output.
	if err := event.WriteJson(&cloudevents.Event{Context: e.Context}, &attrs); err != nil {
		return Entry{}, fmt.Errorf("encoding attributes of event %s: %w", e.ID(), err)
	}
	return Entry{Attributes: attrs.Bytes(), Data: e.Data()}, nil
}

// DecodeEntry decodes a stream entry of any supported version. Its error wraps
// ErrUndecodableEntry when the entry holds no event this code can read.
func DecodeEntry(values map[string]any) (*cloudevents.Event, error) {
	version, _ := values[entryVersionField].(string)
	switch {
	case version == EntryVersion:
		attrs, ok := values[entryAttributesField].(string)
		if !ok {
			return nil, fmt.Errorf("%w: version %s without field %q", ErrUndecodableEntry, version, entryAttributesField)
		}
		e := cloudevents.NewEvent()
		if err := e.UnmarshalJSON([]byte(attrs)); err != nil {
			return nil, fmt.Errorf("%w: field %q: %w", ErrUndecodableEntry, entryAttributesField, err)
		}
		if e.DataEncoded != nil {
			return nil, fmt.Errorf("%w: field %q holds data; data belongs in %q", ErrUndecodableEntry, entryAttributesField, entryDataField)
		}
		if d, ok := values[entryDataField].(string); ok && d != "" {
			e.DataEncoded = []byte(d)
			e.DataBase64 = needsBase64(&e)
		}
		return &e, nil
	case version == "" && values[eventField] != nil:
		raw, ok := values[eventField].(string)
		if !ok {
			return nil, fmt.Errorf("%w: version 1 field %q is not a string", ErrUndecodableEntry, eventField)
		}
		e := cloudevents.NewEvent()
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			return nil, fmt.Errorf("%w: version 1 field %q: %w", ErrUndecodableEntry, eventField, err)
		}
		return &e, nil
	case version == "":
		return nil, fmt.Errorf("%w: no version field %q and no version 1 field %q", ErrUndecodableEntry, entryVersionField, eventField)
	default:
		return nil, fmt.Errorf("%w: unknown entry version %q (this runtime reads 1 and %s)", ErrUndecodableEntry, version, EntryVersion)
	}
}

// needsBase64 reports data that the structured JSON format can carry losslessly only as
// data_base64. Deliveries use binary mode, where the flag plays no part; it keeps a structured
// encoding of the event (a Trigger asking for JSON format, a dead-letter store) byte-exact too.
func needsBase64(e *cloudevents.Event) bool {
	d := e.DataEncoded
	if !utf8.Valid(d) {
		return true
	}
	if isJSONMediaType(e.DataMediaType()) {
		// Written as a JSON value, whitespace around it would be lost.
		return !json.Valid(d) || len(bytes.Trim(d, jsonSpace)) != len(d)
	}
	return false
}

// jsonSpace is the insignificant whitespace of JSON.
const jsonSpace = " \t\r\n"

// isJSONMediaType follows the CloudEvents SDK's JSON format: these media types are written as a
// JSON value, every other one as a JSON string.
func isJSONMediaType(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(contentType))
	}
	switch mt {
	case "", event.ApplicationJSON, event.TextJSON, event.ApplicationCloudEventsJSON, event.ApplicationCloudEventsBatchJSON:
		return true
	}
	return false
}
