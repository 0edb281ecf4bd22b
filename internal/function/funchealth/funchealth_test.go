package funchealth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestLifecycle(t *testing.T) {
	tests := map[string]struct {
		act         func(t *testing.T, h *funchealth.Lifecycle, srv *redistest.Server)
		wantReady   bool
		wantRunning bool
	}{
		"before Started": {
			act:       func(*testing.T, *funchealth.Lifecycle, *redistest.Server) {},
			wantReady: false,
		},
		"after Started": {
			act:         func(t *testing.T, h *funchealth.Lifecycle, srv *redistest.Server) { h.Started(srv.Client()) },
			wantReady:   true,
			wantRunning: true,
		},
		"Redis killed": {
			act: func(t *testing.T, h *funchealth.Lifecycle, srv *redistest.Server) {
				h.Started(srv.Client())
				srv.Kill()
			},
			wantReady:   false,
			wantRunning: true,
		},
		"after Close": {
			act: func(t *testing.T, h *funchealth.Lifecycle, srv *redistest.Server) {
				h.Started(srv.Client())
				if err := h.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
			},
			wantReady: false,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			var h funchealth.Lifecycle

			tc.act(t, &h, srv)

			ready, err := h.Ready(context.Background())
			if err != nil || ready != tc.wantReady {
				t.Errorf("Ready = %v, %v; want %v, nil", ready, err, tc.wantReady)
			}
			if h.Running() != tc.wantRunning {
				t.Errorf("Running = %v; want %v", h.Running(), tc.wantRunning)
			}
			if alive, err := h.Alive(context.Background()); !alive || err != nil {
				t.Errorf("Alive = %v, %v; want true, nil", alive, err)
			}
		})
	}
}

func TestRefuseWhileStarting(t *testing.T) {
	tests := map[string]struct {
		started    bool
		wantRefuse bool
	}{
		"starting": {started: false, wantRefuse: true},
		"running":  {started: true, wantRefuse: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var l funchealth.Lifecycle
			if tc.started {
				l.Started(nil)
			}
			w := httptest.NewRecorder()
			if got := l.RefuseWhileStarting(w, "demo"); got != tc.wantRefuse {
				t.Fatalf("RefuseWhileStarting = %v, want %v", got, tc.wantRefuse)
			}
			if !tc.wantRefuse {
				if w.Body.Len() != 0 {
					t.Fatalf("wrote %q to a running function's response", w.Body.String())
				}
				return
			}
			if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "demo is starting") {
				t.Fatalf("answer = %d %q, want 503 \"demo is starting\"", w.Code, w.Body.String())
			}
		})
	}
}
