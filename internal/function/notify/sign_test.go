package notify

import (
	"net/http"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

// TestSignMatchesTheSpecificationsVector signs the example of the Standard Webhooks
// specification's reference libraries and checks the published signature.
func TestSignMatchesTheSpecificationsVector(t *testing.T) {
	key, err := signature.DecodeStandardSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	old, err := signature.DecodeStandardSecret("whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=")
	if err != nil {
		t.Fatal(err)
	}
	const id, body, want = "msg_p5jXN8AQM9LWM0D4loKWxJek", `{"test": 2432232314}`, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	ts := time.Unix(1614265330, 0)
	tests := map[string]struct {
		keys [][]byte
		want string
	}{
		"one secret":              {keys: [][]byte{key}, want: want},
		"rotation: both sign":     {keys: [][]byte{key, old}, want: want + " v1,"},
		"rotation: order is kept": {keys: [][]byte{old, key}, want: "v1,"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := NewSigner(tc.keys...).Sign(id, ts, []byte(body))
			if len(got) < len(tc.want) || got[:len(tc.want)] != tc.want {
				t.Fatalf("Sign = %q, want it to start with %q", got, tc.want)
			}
			// The webhook function's verifier accepts it with either key.
			for i, k := range tc.keys {
				h := http.Header{}
				NewSigner(tc.keys...).SetHeaders(h, id, ts, []byte(body))
				v := &signature.StandardWebhooks{Secrets: [][]byte{k}, Tolerance: time.Minute}
				if err := v.Verify(h, []byte(body), ts); err != nil {
					t.Errorf("key %d: %v", i, err)
				}
			}
		})
	}
}
