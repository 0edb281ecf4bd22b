package sink

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestOIDCTokenIsPresentedWhenMounted(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("Authorization"))
	}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "token")
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rt := withOIDCToken(http.DefaultTransport, path).(*oidcTransport)
	rt.now = func() time.Time { return clock }
	send := func() {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	steps := []struct {
		name  string
		token string // "" = no file
		after time.Duration
		want  string
	}{
		{"no token file: no header", "", 0, ""},
		{"token mounted, read on the next re-read", "tok-1\n", oidcReread, "Bearer tok-1"},
		{"renewed token, still the cached one", "tok-2", time.Second, "Bearer tok-1"},
		{"renewed token after the re-read interval", "tok-2", oidcReread, "Bearer tok-2"},
	}
	for _, s := range steps {
		if s.token != "" {
			if err := os.WriteFile(path, []byte(s.token), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		clock = clock.Add(s.after)
		send()
		if last := got[len(got)-1]; last != s.want {
			t.Errorf("%s: Authorization %q, want %q", s.name, last, s.want)
		}
	}
}
