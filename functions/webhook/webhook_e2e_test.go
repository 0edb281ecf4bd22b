//go:build e2e

package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// e2eRecorder records the GitHub pushes the webhook publishes.
var e2eRecorder = runtimetest.Recorder{Name: "webhook-e2e", Type: "com.github.push", Source: "/webhooks/github"}

// TestGitHubDeliveryPublishedOnceThroughKnfaasUp runs the platform's webhook manifests (Secret
// template, sources ConfigMap, public ksvc, SinkBinding, Broker with its dead-letter sink) under knfaas up, posts one
// GitHub delivery three times in a row and another three times at once, and checks that the
// subscriber behind the Broker received each exactly once, with the body unchanged.
func TestGitHubDeliveryPublishedOnceThroughKnfaasUp(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	paths := runtimetest.ModulePaths(t, "config", "100-namespace.yaml", "300-redis-secret.yaml", "340-webhook-secrets.yaml",
		"400-webhook-sources.yaml", "400-deadletter-config.yaml", "500-redis-service.yaml", "510-redis-statefulset.yaml", "600-broker.yaml",
		"700-deadletter.yaml", "700-webhook.yaml", "710-webhook-sinkbinding.yaml")
	rt := runtimetest.StartRecorded(t, runtimetest.Options{Paths: paths, RedisURL: srv.URL()}, e2eRecorder)
	client := rt.Client()
	url := rt.ServiceURL("knfaas", "webhook") + "/github"
	// config/340-webhook-secrets.yaml is applied unchanged: its github key is a template
	// placeholder, which knfaas up replaces with a development secret.
	githubSecret := rt.DevSecret("knfaas", "webhook-secrets", "github", "CHANGE-ME-github-webhook-secret")

	post := func(id, body string) (int, string) {
		mac := hmac.New(sha256.New, []byte(githubSecret))
		mac.Write([]byte(body))
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-GitHub-Delivery", id)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v\n%s", url, err, rt.Output())
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	// deliver posts like a sender: until a 2xx, honouring 409/503 as "come back later".
	deliver := func(id, body string) int {
		for range 20 {
			s, b := post(id, body)
			if s < 300 {
				return s
			}
			if s != http.StatusConflict && s != http.StatusServiceUnavailable {
				t.Fatalf("delivery %s: %d %s", id, s, b)
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Fatalf("delivery %s never accepted\n%s", id, rt.Output())
		return 0
	}

	body := `{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"}}`
	var statuses []int
	for range 3 {
		statuses = append(statuses, deliver("gh-seq-1", body))
	}
	if statuses[0] != http.StatusAccepted || statuses[1] != http.StatusOK || statuses[2] != http.StatusOK {
		t.Fatalf("three sequential sends answered %v, want [202 200 200]", statuses)
	}

	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); deliver("gh-par-1", body) }()
	}
	wg.Wait()

	ctx := context.Background()
	rdb := srv.Client()
	seen := "knfaas:test:recorder:" + e2eRecorder.Name + ":seen"
	runtimetest.Eventually(t, 2*time.Minute, "both deliveries reach the subscriber", func() bool {
		return rdb.HGet(ctx, seen, "gh-seq-1").Val() != "" && rdb.HGet(ctx, seen, "gh-par-1").Val() != ""
	})
	// Give a duplicate publish time to show up before asserting it did not.
	time.Sleep(3 * time.Second)
	for _, id := range []string{"gh-seq-1", "gh-par-1"} {
		if n := rdb.HGet(ctx, seen, id).Val(); n != "1" {
			t.Errorf("delivery %s reached the subscriber %s times, want exactly 1", id, n)
		}
	}
	if n := rdb.LLen(ctx, "knfaas:test:recorder:"+e2eRecorder.Name+":events").Val(); n != 2 {
		t.Errorf("subscriber recorded %d events, want 2", n)
	}
	// Delivery order to the subscriber is not specified; find the sequential one.
	var got event.Event
	for _, e := range runtimetest.Recorded(t, rdb, e2eRecorder.Name) {
		if e.ID() == "gh-seq-1" {
			got = e
		}
	}
	if got.ID() != "gh-seq-1" || got.Type() != "com.github.push" || got.Source() != "/webhooks/github" ||
		got.Subject() != "octo/hello" || string(got.Data()) != body {
		t.Errorf("subscriber got id %s type %s source %s subject %s data %s", got.ID(), got.Type(), got.Source(), got.Subject(), got.Data())
	}
}
