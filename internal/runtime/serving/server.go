package serving

import (
	"net/http"
	"time"
)

// Bounds of the runtime's HTTP servers (see NewServer).
const (
	// ReadHeaderTimeout bounds reading a request's headers: a client that trickles them
	// (slowloris) is cut off. Knative's queue-proxy allows a minute, func-go two seconds; headers
	// of a local client arrive in one packet.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, body included, for handlers that set no
	// deadline of their own (broker ingress, metrics). A Service's activator replaces it with the
	// Service's timeoutSeconds for each request it routes.
	ReadTimeout = 30 * time.Second
	// IdleTimeout is how long a keep-alive connection may wait for its next request. It is longer
	// than the 90 s Go's and Knative's clients keep idle connections, so a client closes an idle
	// connection before the server does and never sends a request on one being closed.
	IdleTimeout = 2 * time.Minute
	// MaxHeaderBytes bounds a request's headers, as Envoy (the ingress of a Knative cluster)
	// does by default (60 KiB); well above the attributes an event may carry in binary mode.
	MaxHeaderBytes = 64 << 10
)

// NewServer returns an HTTP server for h with the bounds above. It sets no WriteTimeout: a
// response may take as long as its Service's timeoutSeconds, which the activator enforces.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}
