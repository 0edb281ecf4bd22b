// Package mail sends templated email through SMTP: the email-request event, the templates file,
// the SMTP server URL, a durable retry schedule and idempotency claim in Redis, and the send loop.
package mail

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// TypeRequested is the event that asks the mail function for one email. Its data is a Request
// as JSON (content type application/json).
const TypeRequested = "dev.knfaas.mail.requested"

// Bounds of a request.
const (
	// MaxRequestBytes caps the event's data.
	MaxRequestBytes = 64 << 10
	// MaxRecipients caps Request.To.
	MaxRecipients = 50
	// MaxAddressBytes caps one recipient as written.
	MaxAddressBytes = 320
	// MaxKeyBytes caps Request.IdempotencyKey.
	MaxKeyBytes = 200
)

// Request is the data of a TypeRequested event.
type Request struct {
	// To are the recipients, RFC 5322 addresses ("ada@example.com" or "Ada <ada@example.com>").
	To []string `json:"to"`
	// Template names a template of the templates file.
	Template string `json:"template"`
	// Data is what the template renders: a JSON object, its fields as {{.field}}.
	Data map[string]any `json:"data,omitempty"`
	// IdempotencyKey identifies the email: requests with the same key send one email, whatever
	// event carried them. Unset, the event's (source, id) is the key, so a redelivered event is
	// never sent twice.
	IdempotencyKey string `json:"idempotencyKey,omitempty"`
}

// ParseRequest reads a request strictly: unknown fields, a missing template or recipient, an
// address that does not parse or holds a line break, and anything over the bounds are refused.
func ParseRequest(data []byte) (Request, error) {
	var r Request
	if len(data) > MaxRequestBytes {
		return r, fmt.Errorf("request is %d bytes, at most %d", len(data), MaxRequestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("request is not a JSON object of to, template, data, idempotencyKey: %w", err)
	}
	if dec.More() {
		return r, errors.New("request holds more than one JSON value")
	}
	var errs []error
	if r.Template == "" {
		errs = append(errs, errors.New("template: required"))
	}
	if len(r.To) == 0 || len(r.To) > MaxRecipients {
		errs = append(errs, fmt.Errorf("to: %d recipients, want 1 to %d", len(r.To), MaxRecipients))
	}
	for i, to := range r.To {
		if err := checkAddress(to); err != nil {
			errs = append(errs, fmt.Errorf("to[%d]: %w", i, err))
		}
	}
	if len(r.IdempotencyKey) > MaxKeyBytes || !utf8.ValidString(r.IdempotencyKey) {
		errs = append(errs, fmt.Errorf("idempotencyKey: at most %d bytes of UTF-8", MaxKeyBytes))
	}
	return r, errors.Join(errs...)
}

// checkAddress accepts one RFC 5322 address without line breaks or NULs.
func checkAddress(s string) error {
	if len(s) > MaxAddressBytes {
		return fmt.Errorf("%d bytes, at most %d", len(s), MaxAddressBytes)
	}
	if strings.ContainsAny(s, "\r\n\x00") {
		return fmt.Errorf("%q holds a line break or NUL", s)
	}
	if _, err := mail.ParseAddress(s); err != nil {
		return fmt.Errorf("%q is not an email address: %w", s, err)
	}
	return nil
}

// MessageKey is the idempotency key of a request carried by the event (source, id): its own
// key when it has one, else the event's identity.
func MessageKey(r Request, source, id string) string {
	if r.IdempotencyKey != "" {
		return "key\x00" + r.IdempotencyKey
	}
	return "event\x00" + source + "\x00" + id
}

// MessageID names an email by its key: the Redis claim and the Message-ID header derive from
// it, so every attempt and every redelivery of one email carries the same Message-ID.
func MessageID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "mail_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
}
