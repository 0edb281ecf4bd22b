// Package localhost dials <name>.localhost hosts on the loopback interface, as curl and
// browsers do, so Go clients can use the runtime's <service>.<namespace>.localhost URLs.
package localhost

import (
	"context"
	"net"
	"net/http"
	"strings"
	"time"
)

// DialContext dials addr, sending any host ending in .localhost to 127.0.0.1.
func DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && (host == "localhost" || strings.HasSuffix(host, ".localhost")) {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, network, addr)
}

// Transport returns an HTTP transport that resolves *.localhost to loopback.
func Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = DialContext
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	return t
}

// Client returns an HTTP client that resolves *.localhost to loopback.
func Client(timeout time.Duration) *http.Client {
	return &http.Client{Transport: Transport(), Timeout: timeout}
}
