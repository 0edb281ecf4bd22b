package dashboard

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
)

// The dashboard's defences, for a developer's browser on the same machine:
//
//   - DNS rebinding: a hostile page whose name is made to resolve to 127.0.0.1 reaches the
//     listener with its own name in the Host header; every request whose Host is not the
//     listener's loopback address or localhost (with the port) is refused, reads included.
//   - CSRF: a state-changing request is a POST carrying a token, the HMAC (under a secret drawn
//     per run) of the session cookie, compared in constant time. The cookie is SameSite=Strict
//     and HttpOnly, so another site can neither send it with its forms nor read it, and the
//     token is only in the dashboard's own pages. A POST whose Origin is another site is
//     refused too. GETs change nothing.

// sessionKey is the context key of the request's session cookie value.
type sessionKey struct{}

func sessionOf(r *http.Request) string {
	s, _ := r.Context().Value(sessionKey{}).(string)
	return s
}

// csrfKeys holds the per-run secret that tokens are HMACs under.
type csrfKeys struct{ secret []byte }

func newCSRFKeys() (*csrfKeys, error) {
	k := &csrfKeys{secret: make([]byte, 32)}
	if _, err := rand.Read(k.secret); err != nil {
		return nil, fmt.Errorf("drawing the dashboard's CSRF secret: %w", err)
	}
	return k, nil
}

// token is the CSRF token of a session: HMAC-SHA256(secret, session), base64url.
func (k *csrfKeys) token(session string) string {
	if session == "" {
		return ""
	}
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte("knfaas-ui-csrf\x00" + session))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// valid reports whether token is session's, in constant time.
func (k *csrfKeys) valid(session, token string) bool {
	want := k.token(session)
	return want != "" && hmac.Equal([]byte(want), []byte(token))
}

// sessionBytes is the size of a session cookie's random value.
const sessionBytes = 32

// session returns the request's session cookie value, setting a new one when it has none (or
// one that is not a session value).
func (h *Handler) session(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(h.cookie); err == nil {
		if b, err := base64.RawURLEncoding.DecodeString(c.Value); err == nil && len(b) == sessionBytes {
			return c.Value
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return "" // a POST without a session is refused; it gets none
	}
	b := make([]byte, sessionBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	v := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: h.cookie, Value: v, Path: Prefix, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return v
}

// checkCSRF refuses a state-changing request from another site or without the session's token.
func (h *Handler) checkCSRF(r *http.Request, session string) error {
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
		return fmt.Errorf("the Origin header %q is not this dashboard (http://%s)", truncate(o, 100), r.Host)
	}
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return errors.New("Sec-Fetch-Site: cross-site")
	}
	if session == "" {
		return errors.New("no dashboard session cookie: load the page again and resubmit")
	}
	token := r.PostFormValue("csrf")
	if token == "" {
		return errors.New("no CSRF token in the form: load the page again and resubmit")
	}
	if !h.csrf.valid(session, token) {
		return errors.New("wrong CSRF token: load the page again and resubmit")
	}
	return nil
}

// allowedHosts are the Host headers that name a listener on host:port: its address and, for a
// loopback address, localhost (without the port too when it is 80).
func allowedHosts(host, port string) map[string]bool {
	out := map[string]bool{}
	add := func(h string) {
		out[strings.ToLower(net.JoinHostPort(h, port))] = true
		if port == "80" {
			if strings.Contains(h, ":") {
				h = "[" + h + "]"
			}
			out[strings.ToLower(h)] = true
		}
	}
	add(host)
	add("localhost")
	return out
}

func (h *Handler) hostList() string {
	var l []string
	for k := range h.hosts {
		l = append(l, k)
	}
	sort.Strings(l)
	return strings.Join(l, ", ")
}
