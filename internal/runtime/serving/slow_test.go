package serving

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// answerBound is how long a test waits for an answer that the Service's timeout should bring
// long before: generous, so a loaded machine does not fail the test.
const answerBound = 30 * time.Second

// rawRequest opens a connection to srv and writes head (request line and headers, without the
// blank line) and then body, leaving the connection open.
func rawRequest(t *testing.T, srv *httptest.Server, head, body string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, head+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	return c
}

// readAnswer reads one response from c within answerBound, then whether the server closed the
// connection after it.
func readAnswer(t *testing.T, c net.Conn) (*http.Response, string, bool) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(answerBound))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", answerBound, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_, err = br.ReadByte()
	return resp, string(body), err == io.EOF
}

// TestSlowBodyHoldsNoSlot sends a request whose body stops arriving to a Service with a single
// slot: it is answered 504 when the Service's timeout passes and its connection is closed, and
// a normal request sent meanwhile is served, because the stalled one never took the slot.
func TestSlowBodyHoldsNoSlot(t *testing.T) {
	tests := []struct {
		name       string
		head, body string
	}{
		{name: "body never starts", head: "POST /?slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100"},
		{name: "body stops halfway", head: "POST /?slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100", body: strings.Repeat("a", 50)},
		{name: "chunked body stops", head: "POST /?slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", body: "5\r\nhello\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			svc, _ := newPool(t, Spec{ContainerConcurrency: 1, MaxScale: 1, Timeout: 2 * time.Second})
			srv := runPool(t, svc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if _, ok := r.URL.Query()["slow"]; ok {
					arrived <- struct{}{}
				}
				svc.ServeHTTP(w, r)
			}))
			if err := svc.Warm(1); err != nil {
				t.Fatal(err)
			}

			slow := rawRequest(t, srv, tc.head, tc.body)
			<-arrived
			resp, err := http.Post(srv.URL+"/", "text/plain", strings.NewReader("normal"))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answer, msg, closed := readAnswer(t, slow)

			if resp.StatusCode != http.StatusOK || string(got) != "normal" {
				t.Errorf("normal request beside the stalled one: %d %q, want 200 \"normal\" (the stalled request must not hold the only slot)", resp.StatusCode, got)
			}
			if answer.StatusCode != http.StatusGatewayTimeout || !strings.Contains(msg, "did not arrive") {
				t.Errorf("stalled request answered %d %q, want 504 saying the body did not arrive", answer.StatusCode, msg)
			}
			if !closed {
				t.Error("the connection of the stalled request stayed open after the answer")
			}
		})
	}
}

// TestStalledStreamedBodyFreesTheSlot: a body too large to buffer is streamed to the instance and
// so takes the slot, but the timeout cuts it off and frees the slot for the next request.
func TestStalledStreamedBodyFreesTheSlot(t *testing.T) {
	svc, srv, _ := startPool(t, Spec{ContainerConcurrency: 1, MaxScale: 1, Timeout: 2 * time.Second})
	if err := svc.Warm(1); err != nil {
		t.Fatal(err)
	}
	slow := rawRequest(t, srv, fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d", 2*maxBufferedBody), "a")

	answer, msg, _ := readAnswer(t, slow)
	code, body := post(t, srv.URL+"/", "after")

	if answer.StatusCode < 500 {
		t.Errorf("stalled streamed request answered %d %q, want a 5xx once the timeout passed", answer.StatusCode, msg)
	}
	if code != http.StatusOK || body != "after" {
		t.Errorf("request after the stalled one: %d %q, want 200 \"after\"", code, body)
	}
}

// TestUnreadAnswerFreesTheSlot: a client that never reads a large answer holds the slot only
// until the Service's timeout.
func TestUnreadAnswerFreesTheSlot(t *testing.T) {
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	svc, srv, _ := startPool(t, Spec{ContainerConcurrency: 1, MaxScale: 1, Timeout: 2 * time.Second})
	if err := svc.Warm(1); err != nil {
		t.Fatal(err)
	}
	// The answer (64 MiB) is far larger than what the sockets buffer; the client reads nothing.
	_ = rawRequest(t, srv, "GET /file?path="+big+" HTTP/1.1\r\nHost: x", "")

	// Requests queued behind it time out (504) until the slot is free.
	deadline := time.Now().Add(answerBound)
	for {
		code, body := post(t, srv.URL+"/", "after")
		if code == http.StatusOK && body == "after" {
			return
		}
		if code != http.StatusGatewayTimeout || time.Now().After(deadline) {
			t.Fatalf("request beside a client that does not read its answer: %d %q, want 200 \"after\" once the timeout freed the slot", code, body)
		}
	}
}

// TestBodyIsForwardedIntact: bodies reach the instance byte for byte on both routes to a Pool,
// buffered or streamed, within the Service's buffer budget or beyond it, and give the budget
// back; a body that breaks off is refused rather than forwarded short.
func TestBodyIsForwardedIntact(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	tests := []struct {
		name    string
		body    []byte
		chunked bool
		budget  bool
	}{
		{name: "small", body: []byte(`{"a": "<b>&"}`)},
		{name: "buffered limit", body: random(maxBufferedBody)},
		{name: "streamed", body: random(maxBufferedBody + 1)},
		{name: "chunked small", body: random(1000), chunked: true},
		{name: "chunked over the buffer limit", body: random(3 * maxBufferedBody), chunked: true},
		{name: "over the buffer budget", body: random(1000), budget: true},
		{name: "chunked over the buffer budget", body: random(1000), chunked: true, budget: true},
	}
	for _, route := range poolRoutes {
		svc, _ := newPool(t, Spec{Timeout: 10 * time.Second})
		client, base := route.serve(t, svc)
		tight, _ := newPool(t, Spec{Timeout: 10 * time.Second})
		tight.bufferBudget = 10 // a Service that may buffer only 10 bytes
		tightClient, tightBase := route.serve(t, tight)
		for _, tc := range tests {
			t.Run(route.name+"/"+tc.name, func(t *testing.T) {
				c, url := client, base
				if tc.budget {
					c, url = tightClient, tightBase
				}
				var body io.Reader = bytes.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body) // unknown length: sent chunked
				}
				code, got := send(t, c, http.MethodPost, url+"/", body)
				if code != http.StatusOK || !bytes.Equal(got, tc.body) {
					t.Fatalf("answer %d with %d bytes, want 200 and the %d bytes sent", code, len(got), len(tc.body))
				}
				if n := svc.buffered.Load() + tight.buffered.Load(); n != 0 {
					t.Errorf("%d bytes of the buffer budget still reserved after the answer", n)
				}
			})
		}
	}

	_, srv, _ := startPool(t, Spec{Timeout: 10 * time.Second})
	t.Run("broken off", func(t *testing.T) {
		c := rawRequest(t, srv, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100", strings.Repeat("a", 10))
		_ = c.(*net.TCPConn).CloseWrite()
		answer, msg, _ := readAnswer(t, c)
		if answer.StatusCode != http.StatusBadRequest {
			t.Fatalf("body broken off after 10 of 100 bytes: %d %q, want 400 (never forwarded short)", answer.StatusCode, msg)
		}
	})
}

func TestNewServerBounds(t *testing.T) {
	srv := NewServer(http.NotFoundHandler())
	tests := []struct {
		name      string
		got, want time.Duration
	}{
		{name: "ReadHeaderTimeout", got: srv.ReadHeaderTimeout, want: ReadHeaderTimeout},
		{name: "ReadTimeout", got: srv.ReadTimeout, want: ReadTimeout},
		{name: "IdleTimeout", got: srv.IdleTimeout, want: IdleTimeout},
	}
	for _, tc := range tests {
		if tc.got <= 0 || tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
	if srv.MaxHeaderBytes != MaxHeaderBytes {
		t.Errorf("MaxHeaderBytes = %d, want %d", srv.MaxHeaderBytes, MaxHeaderBytes)
	}
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
