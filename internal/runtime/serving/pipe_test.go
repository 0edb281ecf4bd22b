package serving

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestPipeListenerServesHTTP(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	pl := NewPipeListener(addr)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, _ = w.Write(append([]byte("got "), body...))
	})}
	go func() { _ = srv.Serve(pl) }()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return pl.Dial(ctx) }}}

	for i := 0; i < 3; i++ { // keep-alive reuses the pipe
		resp, err := client.Post("http://"+addr.String()+"/", "text/plain", strings.NewReader("event"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "got event" {
			t.Fatalf("answer %q over the pipe, want %q", b, "got event")
		}
	}
	_ = srv.Close()
	if _, err := pl.Dial(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("dial after close: %v, want net.ErrClosed", err)
	}
}
