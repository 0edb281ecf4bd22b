package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks headers every delivery carries.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Signer signs deliveries with an endpoint's keys: one v1 signature per key, space-separated,
// so a receiver holding either the current or the previous secret verifies during a rotation.
type Signer struct {
	keys [][]byte
}

// NewSigner returns a Signer for decoded keys (the bytes after "whsec_", base64-decoded).
func NewSigner(keys ...[]byte) *Signer { return &Signer{keys: keys} }

// Sign returns the webhook-signature value for id, timestamp and body: for each key
// "v1,<base64 of HMAC-SHA256(key, id.timestamp.body)>".
func (s *Signer) Sign(id string, ts time.Time, body []byte) string {
	unix := strconv.FormatInt(ts.Unix(), 10)
	var b strings.Builder
	for i, k := range s.keys {
		mac := hmac.New(sha256.New, k)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(unix))
		mac.Write([]byte{'.'})
		mac.Write(body)
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("v1,")
		b.WriteString(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return b.String()
}

// SetHeaders sets the three Standard Webhooks headers on h.
func (s *Signer) SetHeaders(h http.Header, id string, ts time.Time, body []byte) {
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, s.Sign(id, ts, body))
}
