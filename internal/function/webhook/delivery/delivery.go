// Package delivery reads what a verified webhook delivery is — its stable id, its CloudEvent
// type and subject — from the provider's headers and body, without changing the body.
package delivery

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

// CloudEvent type prefixes of the providers' events: the provider's own event name follows.
const (
	TypePrefixGitHub = "com.github."
	TypePrefixStripe = "com.stripe."
	TypePrefixSlack  = "com.slack."
)

// TypeSlackSlashCommand is the type of a Slack slash command, which names no type itself.
const TypeSlackSlashCommand = TypePrefixSlack + "slash_command"

// MaxIDLength bounds a delivery id, which becomes part of a Redis key.
const MaxIDLength = 256

// Errors that make a delivery unusable however often it is retried: answered with 400.
var (
	ErrNotJSON    = errors.New("body is not JSON")
	ErrNoID       = errors.New("delivery has no id")
	ErrBadType    = errors.New("delivery has no usable event type")
	ErrNotForm    = errors.New("body is not form-encoded")
	ErrIDTooLarge = fmt.Errorf("delivery id longer than %d bytes", MaxIDLength)
)

// Delivery is what the webhook function needs to publish a verified request.
type Delivery struct {
	// ID is the provider's delivery id, stable across the sender's retries.
	ID string
	// Type is the CloudEvent type.
	Type string
	// Subject names the entity the event is about, when the provider names one.
	Subject string
	// Challenge is set for Slack's url_verification handshake, which is answered directly
	// and never published.
	Challenge string
	// Parts, when set, are published instead of the body: one event each, all under the one
	// delivery id's deduplication (an S3 notification with several records).
	Parts []Part
}

// Part is one event of a delivery that carries several. Its id is its own and stable, so
// that publishing the parts again after a partial failure duplicates nothing a consumer
// keyed on (source, id) would not absorb.
type Part struct {
	ID      string
	Type    string
	Subject string
	Time    time.Time
	// Data is JSON (application/json).
	Data []byte
}

// maxEventName bounds a provider's own event name.
const maxEventName = 128

// eventName reports whether name is what a provider's own event name may look like once
// prefixed into a type: 1 to maxEventName of A-Z, a-z, 0-9, '_', '.' and '-'.
func eventName(name string) bool {
	if len(name) == 0 || len(name) > maxEventName {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

func checked(d Delivery) (Delivery, error) {
	if d.Challenge != "" {
		return d, nil
	}
	switch {
	case d.ID == "":
		return Delivery{}, ErrNoID
	case len(d.ID) > MaxIDLength:
		return Delivery{}, ErrIDTooLarge
	}
	return d, nil
}

func prefixed(prefix, name string) (string, error) {
	if !eventName(name) {
		return "", fmt.Errorf("%w: %.40q", ErrBadType, name)
	}
	return prefix + name, nil
}

// ContentHash is the id given to deliveries whose sender names none: a retry of the same
// delivery carries the same bytes, so it deduplicates to the same id.
func ContentHash(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

func mediaType(h http.Header) string {
	v := h.Get("Content-Type")
	switch v {
	case "application/json", "application/x-www-form-urlencoded":
		return v // what mime.ParseMediaType answers, without its parameter map
	}
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		return ""
	}
	return mt
}

// GitHub describes a GitHub delivery: id X-GitHub-Delivery, type com.github.<X-GitHub-Event>,
// subject repository.full_name. The body is JSON, or form-encoded with the JSON in "payload".
func GitHub(h http.Header, body []byte) (Delivery, error) {
	typ, err := prefixed(TypePrefixGitHub, h.Get(signature.HeaderGitHubEvent))
	if err != nil {
		return Delivery{}, fmt.Errorf("%s: %w", signature.HeaderGitHubEvent, err)
	}
	payload := body
	if mediaType(h) == "application/x-www-form-urlencoded" {
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return Delivery{}, fmt.Errorf("%w: %w", ErrNotForm, err)
		}
		payload = []byte(form.Get("payload"))
	}
	var doc struct {
		Repository *struct {
			FullName string `json:"full_name"`
		} `json:"repository"`
	}
	if err := json.Unmarshal(payload, &doc); err != nil {
		return Delivery{}, fmt.Errorf("%w: %w", ErrNotJSON, err)
	}
	d := Delivery{ID: h.Get(signature.HeaderGitHubDelivery), Type: typ}
	if doc.Repository != nil {
		d.Subject = doc.Repository.FullName
	}
	return checked(d)
}

// Stripe describes a Stripe event: id and type from the body's "id" and "type", subject the
// id of data.object.
func Stripe(body []byte) (Delivery, error) {
	var doc struct {
		ID   string `json:"id"`
		Type string `json:"type"`
		Data struct {
			Object struct {
				ID string `json:"id"`
			} `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Delivery{}, fmt.Errorf("%w: %w", ErrNotJSON, err)
	}
	typ, err := prefixed(TypePrefixStripe, doc.Type)
	if err != nil {
		return Delivery{}, fmt.Errorf("type: %w", err)
	}
	return checked(Delivery{ID: doc.ID, Type: typ, Subject: doc.Data.Object.ID})
}

// Slack describes a Slack request. Events API (JSON): url_verification yields a Challenge;
// event_callback has id event_id, type com.slack.<event.type>, subject event.channel; other
// JSON envelopes are typed com.slack.<type>. Form-encoded interactivity payloads are typed
// com.slack.<payload.type>, slash commands com.slack.slash_command; both use trigger_id.
// Without an id the content hash is used.
func Slack(h http.Header, body []byte) (Delivery, error) {
	if mediaType(h) == "application/x-www-form-urlencoded" {
		return slackForm(body)
	}
	var doc struct {
		Type      string `json:"type"`
		Challenge string `json:"challenge"`
		EventID   string `json:"event_id"`
		Event     *struct {
			Type    string          `json:"type"`
			Channel json.RawMessage `json:"channel"`
		} `json:"event"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Delivery{}, fmt.Errorf("%w: %w", ErrNotJSON, err)
	}
	if doc.Type == "url_verification" {
		if doc.Challenge == "" {
			return Delivery{}, fmt.Errorf("url_verification without challenge: %w", ErrBadType)
		}
		return Delivery{Challenge: doc.Challenge}, nil
	}
	name := doc.Type
	var subject string
	if doc.Type == "event_callback" && doc.Event != nil {
		name = doc.Event.Type
		// channel is a string id in message events but an object in channel_* events.
		_ = json.Unmarshal(doc.Event.Channel, &subject)
	}
	typ, err := prefixed(TypePrefixSlack, name)
	if err != nil {
		return Delivery{}, fmt.Errorf("type: %w", err)
	}
	id := doc.EventID
	if id == "" {
		id = ContentHash(body)
	}
	return checked(Delivery{ID: id, Type: typ, Subject: subject})
}

func slackForm(body []byte) (Delivery, error) {
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return Delivery{}, fmt.Errorf("%w: %w", ErrNotForm, err)
	}
	d := Delivery{ID: form.Get("trigger_id")}
	if p := form.Get("payload"); p != "" {
		var doc struct {
			Type      string `json:"type"`
			TriggerID string `json:"trigger_id"`
			Channel   *struct {
				ID string `json:"id"`
			} `json:"channel"`
		}
		if err := json.Unmarshal([]byte(p), &doc); err != nil {
			return Delivery{}, fmt.Errorf("payload: %w: %w", ErrNotJSON, err)
		}
		if d.Type, err = prefixed(TypePrefixSlack, doc.Type); err != nil {
			return Delivery{}, fmt.Errorf("payload type: %w", err)
		}
		d.ID = doc.TriggerID
		if doc.Channel != nil {
			d.Subject = doc.Channel.ID
		}
	} else if form.Get("command") != "" {
		d.Type = TypeSlackSlashCommand
		d.Subject = form.Get("channel_id")
	} else {
		return Delivery{}, fmt.Errorf("form has neither payload nor command: %w", ErrBadType)
	}
	if d.ID == "" {
		d.ID = ContentHash(body)
	}
	return checked(d)
}

// StandardWebhooks describes a Standard Webhooks delivery: id webhook-id (signed), type as
// configured. The specification requires a JSON body.
func StandardWebhooks(h http.Header, body []byte, typ string) (Delivery, error) {
	if !json.Valid(body) {
		return Delivery{}, ErrNotJSON
	}
	id, _, _ := signature.StandardHeaders(h)
	return checked(Delivery{ID: id, Type: typ})
}

// HMAC describes a generic HMAC delivery: id from idHeader when configured (and then
// required), the content hash otherwise; type as configured.
func HMAC(h http.Header, body []byte, idHeader, typ string) (Delivery, error) {
	id := ContentHash(body)
	if idHeader != "" {
		if id = h.Get(idHeader); id == "" {
			return Delivery{}, fmt.Errorf("%s: %w", idHeader, ErrNoID)
		}
	}
	return checked(Delivery{ID: id, Type: typ})
}

// S3 describes an S3 bucket notification (MinIO, Ceph RGW, AWS S3 records, or an EventBridge
// S3 event): the delivery id is the body's SHA-256 (a store resends the same bytes), and each
// object event becomes one Part: id objects.Event.ID, type objects.TypePrefix + the S3 event
// name, subject the object key, data the objects.Event as JSON.
func S3(body []byte) (Delivery, error) {
	events, err := objects.Parse(body)
	if err != nil {
		return Delivery{}, err
	}
	d := Delivery{ID: ContentHash(body), Type: events[0].Type(), Subject: events[0].Key, Parts: make([]Part, 0, len(events))}
	for _, e := range events {
		data, err := json.Marshal(e)
		if err != nil {
			return Delivery{}, fmt.Errorf("encoding object event: %w", err)
		}
		d.Parts = append(d.Parts, Part{ID: e.ID(), Type: e.Type(), Subject: e.Key, Time: e.Time, Data: data})
	}
	return checked(d)
}
