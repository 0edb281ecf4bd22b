package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// webhookSecrets is the template Secret of the webhook function; each provider's signing
// secret is its key of the same name (config/340-webhook-secrets.yaml).
const webhookSecrets = "webhook-secrets"

// webhookProviders are the senders `send --webhook` signs for, each posting to the source of
// the same name (config/400-webhook-sources.yaml).
var webhookProviders = []string{"github", "stripe", "slack", "svix"}

// webhookDelivery is one signed test delivery.
type webhookDelivery struct {
	provider string
	body     []byte
	header   http.Header
}

// signWebhook signs body as provider signs its deliveries (functions/webhook/README.md,
// "Signature schemes"); event is the provider's event name and id the delivery id, used where
// the scheme carries them in headers.
func signWebhook(provider, secret, event, id string, body []byte, now time.Time) (webhookDelivery, error) {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	ts := strconv.FormatInt(now.Unix(), 10)
	switch provider {
	case "github":
		h.Set("X-GitHub-Event", event)
		h.Set("X-GitHub-Delivery", id)
		h.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(signature.Sum(signature.SHA256, []byte(secret), body)))
	case "stripe":
		mac := signature.Sum(signature.SHA256, []byte(secret), []byte(ts), []byte("."), body)
		h.Set("Stripe-Signature", "t="+ts+",v1="+hex.EncodeToString(mac))
	case "slack":
		h.Set("X-Slack-Request-Timestamp", ts)
		h.Set("X-Slack-Signature", "v0="+hex.EncodeToString(signature.Sum(signature.SHA256, []byte(secret), []byte("v0:"+ts+":"), body)))
	case "svix":
		key, err := signature.DecodeStandardSecret(secret)
		if err != nil {
			return webhookDelivery{}, fmt.Errorf("the svix secret: %w", err)
		}
		mac := signature.Sum(signature.SHA256, key, []byte(id+"."+ts+"."), body)
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac))
	default:
		return webhookDelivery{}, &UsageError{Err: fmt.Errorf("--webhook %q: want one of %s", provider, strings.Join(webhookProviders, ", "))}
	}
	return webhookDelivery{provider: provider, body: body, header: h}, nil
}

// defaultWebhookBody is a minimal delivery each provider's intake accepts: JSON with the
// fields the webhook function reads its id, type and subject from.
func defaultWebhookBody(provider, event, id string) []byte {
	var v any
	switch provider {
	case "github":
		v = map[string]any{"zen": "sent by knfaas send", "repository": map[string]any{"full_name": "knfaas/try"}}
	case "stripe":
		v = map[string]any{"id": id, "object": "event", "type": event, "data": map[string]any{"object": map[string]any{"id": "obj_try"}}}
	case "slack":
		v = map[string]any{"type": "event_callback", "event_id": id, "event": map[string]any{"type": event, "channel": "C0TRY"}}
	default:
		v = map[string]any{"message": "sent by knfaas send"}
	}
	b, _ := json.Marshal(v)
	return b
}

// defaultWebhookEvent is the event name a delivery gets without --type.
func defaultWebhookEvent(provider string) string {
	switch provider {
	case "github":
		return "ping"
	case "stripe":
		return "charge.succeeded"
	case "slack":
		return "app_mention"
	}
	return ""
}

// devWebhookSecret is provider's signing secret under `knfaas up`: the template value of its
// key in the webhook-secrets Secret (read from config/ when it is there) with each CHANGE-ME
// placeholder replaced by the development secret up generated for it. A Standard Webhooks
// template holds its placeholder base64-encoded after whsec_; up replaces the whole payload.
func devWebhookSecret(stateDir, namespace, provider string) (string, error) {
	if stateDir == "" {
		d, err := embedded.DefaultStateDir()
		if err != nil {
			return "", err
		}
		stateDir = d
	}
	path := filepath.Join(stateDir, embedded.DevSecretsFile)
	secrets, err := embedded.ReadDevSecrets(path)
	if err != nil {
		return "", err
	}
	values := map[string]string{} // placeholder → value
	for _, s := range secrets.Secrets {
		if s.Namespace == namespace && s.Secret == webhookSecrets && s.Key == provider {
			values[s.Placeholder] = s.Value
		}
	}
	if len(values) == 0 {
		return "", fmt.Errorf("no development secret for key %s of Secret %s/%s in %s: start knfaas up once (it generates them), or pass --webhook-secret",
			provider, namespace, webhookSecrets, path)
	}
	template, ok := webhookSecretTemplate(namespace, provider)
	if !ok {
		// No manifests here: the shapes of the platform's own template.
		for ph, v := range values {
			if !strings.Contains(ph, "CHANGE-ME") || provider == "stripe" {
				return "whsec_" + v, nil
			}
			return v, nil
		}
	}
	if payload, ok := strings.CutPrefix(template, "whsec_"); ok {
		if v, ok := values[payload]; ok {
			return "whsec_" + v, nil
		}
	}
	for ph, v := range values {
		template = strings.ReplaceAll(template, ph, v)
	}
	return template, nil
}

// webhookSecretTemplate reads provider's key of the webhook-secrets Secret from config/.
func webhookSecretTemplate(namespace, provider string) (string, bool) {
	if _, err := os.Stat("config"); err != nil {
		return "", false
	}
	set, err := manifest.Load("config")
	if err != nil {
		return "", false
	}
	s := set.Secret(namespace, webhookSecrets)
	if s == nil {
		return "", false
	}
	if v, ok := s.StringData[provider]; ok {
		return v, true
	}
	if v, ok := s.Data[provider]; ok {
		return string(v), true
	}
	return "", false
}

// postWebhook posts a signed delivery and returns the intake's answer; a non-2xx answer is an
// error carrying its status and body.
func postWebhook(ctx context.Context, target httpTarget, d webhookDelivery, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.url, bytes.NewReader(d.body))
	if err != nil {
		return "", err
	}
	req.Header = d.header
	client := localhost.Client(timeout)
	if target.transport != nil {
		client = &http.Client{Transport: target.transport, Timeout: timeout}
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	answer := strings.TrimSpace(resp.Status + " " + strings.TrimSpace(string(body)))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", fmt.Errorf("the webhook intake answered %s", answer)
	}
	return answer, nil
}
