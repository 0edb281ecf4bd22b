// Command echo is a test function: it answers with what the runtime gave it, and can be told to
// be slow, fail or crash, so the runtime's serving and delivery behaviour can be observed.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Function echoes requests.
type Function struct {
	inflight    atomic.Int64
	maxInflight atomic.Int64
	started     time.Time
}

// New returns the function.
func New() *Function { return &Function{started: time.Now()} }

// Handle serves:
//
//	GET  /env?name=X     the value of environment variable X
//	GET  /file?path=P    the content of file P
//	GET  /pid            the process id
//	GET  /maxinflight    the most requests seen in flight at once
//	*    /?sleep=D&status=N  waits D, then answers N (default 200) with the request body;
//	                     a CloudEvent request gets its own event back as a reply when reply=1
//	POST /crash          exits the process at once
//	POST /publish        sends the request (a binary-mode CloudEvent) to K_SINK and answers
//	                     with the status K_SINK answered
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		m := f.maxInflight.Load()
		if n <= m || f.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	q := r.URL.Query()
	switch r.URL.Path {
	case "/env":
		fmt.Fprint(w, os.Getenv(q.Get("name")))
		return
	case "/file":
		b, err := os.ReadFile(q.Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		_, _ = w.Write(b)
		return
	case "/pid":
		fmt.Fprint(w, os.Getpid())
		return
	case "/maxinflight":
		fmt.Fprint(w, f.maxInflight.Load())
		return
	case "/crash":
		os.Exit(3)
	case "/publish":
		f.publish(w, r)
		return
	}
	if d, err := time.ParseDuration(q.Get("sleep")); err == nil {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	status := http.StatusOK
	if s, err := strconv.Atoi(q.Get("status")); err == nil {
		status = s
	}
	body, _ := io.ReadAll(r.Body)
	if q.Get("reply") == "1" && r.Header.Get("Ce-Id") != "" {
		w.Header().Set("Ce-Id", "reply-"+r.Header.Get("Ce-Id"))
		w.Header().Set("Ce-Type", r.Header.Get("Ce-Type")+".reply")
		w.Header().Set("Ce-Source", "/echo")
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	if r.Header.Get("Ce-Id") != "" && q.Get("reply") != "1" {
		return
	}
	_, _ = w.Write(body)
}

// publish forwards r's CloudEvent headers and body to K_SINK, as a function publishing there.
func (f *Function) publish(w http.ResponseWriter, r *http.Request) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, os.Getenv("K_SINK"), r.Body)
	if err != nil {
		http.Error(w, "K_SINK: "+err.Error(), http.StatusInternalServerError)
		return
	}
	for k, v := range r.Header {
		if strings.HasPrefix(k, "Ce-") || k == "Content-Type" {
			req.Header[k] = v
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, "publishing to K_SINK: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

// Ready reports readiness once the delay in ECHO_READY_DELAY (a duration) has passed since start.
func (f *Function) Ready(ctx context.Context) (bool, error) {
	d, _ := time.ParseDuration(os.Getenv("ECHO_READY_DELAY"))
	return time.Since(f.started) >= d, nil
}

// Alive is always true.
func (f *Function) Alive(ctx context.Context) (bool, error) { return true, nil }
