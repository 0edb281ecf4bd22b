//go:build e2e

package e2e

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

const slowFixtures = "test/e2e/testdata/slow"

// slowSecret is the GitHub secret of the webhook in testdata/slow.
const slowSecret = "slow-e2e-github-secret"

// slack is added to every bound a stalled client is given: generous, so that a loaded machine
// (and the race detector) does not fail the test, and still finite where today's main waits
// forever.
const slack = 60 * time.Second

// stallEnd is how a stalled client's exchange ended.
type stallEnd struct {
	// status is the answer's status code; 0 when the server closed the connection without one.
	status int
	body   string
	// closed reports that the server closed the connection (after the answer, if any); only
	// checked when the caller asked for it.
	closed bool
}

// stall runs one stalled client against the runtime and returns how the server ended it, or an
// error when the server has not ended it within bound: closed the connection, or answered (and
// then closed the connection, when wantClose).
//
// A slow body sends complete headers announcing 100 bytes and then only the first few. A
// slowloris sends the request line and then one header byte every half second, never ending
// the headers.
func stall(addr, host, path string, slowloris, wantClose bool, bound time.Duration) (stallEnd, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return stallEnd{}, err
	}
	defer c.Close()
	done := make(chan struct{})
	defer close(done)
	if slowloris {
		if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nX-Slow: ", path, host); err != nil {
			return stallEnd{}, err
		}
		go func() {
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
				}
				if _, err := c.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
	} else {
		head := "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nCe-Id: stalled\r\nCe-Source: /e2e\r\n" +
			"Ce-Type: dev.knfaas.e2e.slow\r\nCe-Specversion: 1.0\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: stalled\r\nContent-Length: 100\r\n\r\n{\"partial\":"
		if _, err := fmt.Fprintf(c, head, path, host); err != nil {
			return stallEnd{}, err
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(bound))
	br := bufio.NewReader(c)
	var end stallEnd
	resp, err := http.ReadResponse(br, nil)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		end.status, end.body = resp.StatusCode, strings.TrimSpace(string(b))
		if !wantClose {
			return end, nil
		}
		_, err = br.ReadByte()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		if end.status != 0 {
			return end, fmt.Errorf("the server answered %d %q but kept the connection of the stalled client open for %s", end.status, end.body, bound)
		}
		return end, fmt.Errorf("the server neither answered nor closed the stalled client's connection within %s", bound)
	}
	end.closed = true // EOF or reset
	return end, nil
}

// TestSlowClientsAreCutOff stalls a slow-body and a slowloris client against the broker ingress,
// a function behind the activator (echo) and the webhook intake, whose fixtures have one slot
// and a 2 s timeoutSeconds. Each stalled client is answered or cut off within a bound, and
// normal requests sent to the same target while it stalls are served: the stalled request
// holds no slot.
func TestSlowClientsAreCutOff(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{slowFixtures}, RedisURL: srv.URL()})
	client := rt.Client()
	_, port, _ := net.SplitHostPort(rt.Addr())
	const timeout = 2 * time.Second // timeoutSeconds of the fixtures

	type target struct {
		host, path string
		// normal sends a normal request and returns an error unless it was served.
		normal func(id string) error
		// slowBody checks the answer to a stalled body.
		slowBody func(end stallEnd) error
		// bodyBound is how long a stalled body may take to be ended.
		bodyBound time.Duration
		// bodyClose: the connection of a stalled body must be closed after the answer. The
		// broker ingress answers 400 once the server's ReadTimeout cut the body off, but wraps
		// the body (http.MaxBytesReader), which keeps net/http from closing the connection.
		bodyClose bool
	}
	serviceTimedOut := func(end stallEnd) error {
		if end.status != http.StatusGatewayTimeout || !end.closed {
			return fmt.Errorf("answer %d %q (closed %t), want 504 and the connection closed", end.status, end.body, end.closed)
		}
		return nil
	}
	targets := map[string]target{
		"broker ingress": {
			host: rt.Addr(), path: "/slow/default",
			normal: func(id string) error {
				return rt.TrySend("slow", "default", runtimetest.NewEvent(id, "dev.knfaas.e2e.slow"))
			},
			slowBody: func(end stallEnd) error {
				if end.status != 0 && end.status < 400 {
					return fmt.Errorf("answer %d %q, want a 4xx/5xx or the connection closed", end.status, end.body)
				}
				return nil
			},
			bodyClose: false,
			bodyBound: serving.ReadTimeout + slack,
		},
		"function": {
			host: "echo.slow.localhost:" + port, path: "/",
			normal: func(id string) error {
				resp, err := client.Post(rt.ServiceURL("slow", "echo")+"/", "text/plain", strings.NewReader(id))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusOK || string(b) != id {
					return fmt.Errorf("answer %d %q, want 200 %q", resp.StatusCode, b, id)
				}
				return nil
			},
			slowBody:  serviceTimedOut,
			bodyBound: timeout + slack,
			bodyClose: true,
		},
		"webhook intake": {
			host: "webhook.slow.localhost:" + port, path: "/github",
			normal: func(id string) error {
				body := fmt.Sprintf(`{"ref":"refs/heads/main","delivery":%q}`, id)
				mac := hmac.New(sha256.New, []byte(slowSecret))
				mac.Write([]byte(body))
				req, _ := http.NewRequest(http.MethodPost, rt.ServiceURL("slow", "webhook")+"/github", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-GitHub-Event", "push")
				req.Header.Set("X-GitHub-Delivery", id)
				req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode < 200 || resp.StatusCode > 299 {
					return fmt.Errorf("signed delivery answered %d %q, want 2xx", resp.StatusCode, b)
				}
				return nil
			},
			slowBody:  serviceTimedOut,
			bodyBound: timeout + slack,
			bodyClose: true,
		},
	}
	clients := map[string]bool{"slow body": false, "slowloris": true}

	for targetName, tg := range targets {
		for clientName, slowloris := range clients {
			t.Run(targetName+"/"+clientName, func(t *testing.T) {
				t.Parallel()
				bound := tg.bodyBound
				if slowloris {
					bound = serving.ReadHeaderTimeout + slack
				}
				type result struct {
					end stallEnd
					err error
				}
				ended := make(chan result, 1)
				go func() {
					end, err := stall(rt.Addr(), tg.host, tg.path, slowloris, slowloris || tg.bodyClose, bound)
					ended <- result{end, err}
				}()

				// Normal requests while the client stalls, over more than the timeout: a slot
				// held by the stalled request would make the later ones time out.
				for i := range 4 {
					id := fmt.Sprintf("normal-%s-%s-%d", strings.ReplaceAll(targetName, " ", "-"), strings.ReplaceAll(clientName, " ", "-"), i)
					if err := tg.normal(id); err != nil {
						t.Errorf("normal request %d beside the stalled client: %v", i, err)
					}
					time.Sleep(timeout / 2)
				}
				res := <-ended
				if res.err != nil {
					t.Fatalf("%s client: %v", clientName, res.err)
				}
				end := res.end
				if slowloris {
					if end.status >= 200 && end.status < 300 {
						t.Errorf("slowloris answered %d %q, want the connection closed or a 4xx", end.status, end.body)
					}
					return
				}
				if err := tg.slowBody(end); err != nil {
					t.Errorf("stalled body: %v", err)
				}
			})
		}
	}
}
