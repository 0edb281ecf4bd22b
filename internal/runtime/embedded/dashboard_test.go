package embedded

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

func TestPublicListenerServesTheDashboardAtUI(t *testing.T) {
	r := internalRuntime()
	r.metrics = metrics.New()
	r.addr = "127.0.0.1:8080"
	r.services = nil // the test's pools are not running
	router := r.router()
	cases := []struct {
		name, path, host string
		wantStatus       int
		wantBody         string
	}{
		{"the services page", "/ui/", "127.0.0.1:8080", http.StatusOK, "No Knative Services in this run."},
		{"by localhost", "/ui/triggers", "localhost:8080", http.StatusOK, "Triggers"},
		{"without the last slash", "/ui", "127.0.0.1:8080", http.StatusFound, ""},
		{"another Host is refused", "/ui/", "rebound.example:8080", http.StatusForbidden, "Host header"},
		{"a broker path still reaches the ingress", "/ns/missing", "127.0.0.1:8080", http.StatusNotFound, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, c.path, nil)
			req.Host = c.host
			router.ServeHTTP(w, req)
			if w.Code != c.wantStatus || !strings.Contains(w.Body.String(), c.wantBody) {
				t.Errorf("GET %s (Host %s): %d %q, want %d with %q", c.path, c.host, w.Code, w.Body.String(), c.wantStatus, c.wantBody)
			}
		})
	}
}
