// Package eventsize holds the size bounds an event meets on every hop, so that intake, broker,
// dead-letter store and event store agree on what fits.
package eventsize

// DefaultMaxEventBytes is the largest event (attributes and data, as stored) a Broker accepts
// unless the Broker sets its own bound. Every store an event can reach downstream (dead-letter
// store, event store) accepts at least this much plus DeadLetterOverheadBytes.
const DefaultMaxEventBytes = 4 << 20

// MaxAttributeValueBytes bounds one context attribute or extension value. Attributes travel as
// HTTP headers in binary mode; a value no subscriber's server would accept is refused at intake.
const MaxAttributeValueBytes = 4 << 10

// MaxAttributesBytes bounds all attribute names and values of one event together, well below the
// header limits of common HTTP servers and proxies (Go 1 MiB, Envoy 60 KiB), with room for the
// extensions the platform adds on the way (TTL, dead-letter error extensions, trace context).
const MaxAttributesBytes = 16 << 10

// DeadLetterOverheadBytes is what a dead letter may add to an event: Knative's error extensions
// (knativeerrordata is at most 1024 characters) and the platform's own.
const DeadLetterOverheadBytes = 8 << 10
