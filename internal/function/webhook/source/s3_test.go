package source

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

// TestS3SourceAuthenticatesWhatTheStoresSend checks the s3 provider against the requests the
// senders really make. MinIO's webhook target sends its auth_token in Authorization: a token of
// one word as "Bearer <token>", a value of two words ("<scheme> <token>") unchanged. Ceph RGW's
// HTTP push endpoint sends no credentials header at all (Content-Type, and the ce-* headers with
// cloudevents=true), so it is refused: it needs a proxy that adds the header. An EventBridge API
// destination sends its connection's API key under the key name it was given.
func TestS3SourceAuthenticatesWhatTheStoresSend(t *testing.T) {
	const token = "store-token-0123456789abcdef"
	srcs, err := Parse([]byte(`sources:
- name: minio
  provider: s3
  secretEnv: [TOKEN]
- name: eventbridge
  provider: s3
  secretEnv: [TOKEN]
  header: X-Api-Key
`), env(map[string]string{"TOKEN": token}))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		source  string
		headers map[string]string
		wantErr error
	}{
		{name: "MinIO, auth_token the bare token (or Bearer and the token, sent as written)", source: "minio",
			headers: map[string]string{"Authorization": "Bearer " + token}},
		{name: "MinIO, lower-case scheme", source: "minio",
			headers: map[string]string{"Authorization": "bearer " + token}},
		{name: "MinIO, auth_token set with another scheme: sent as written, refused", source: "minio",
			headers: map[string]string{"Authorization": "Token " + token}, wantErr: signature.ErrMalformed},
		{name: "MinIO, another token", source: "minio",
			headers: map[string]string{"Authorization": "Bearer store-token-fedcba9876543210"}, wantErr: signature.ErrMismatch},
		{name: "Ceph RGW HTTP push: no credentials header", source: "minio",
			headers: map[string]string{"Content-Type": "application/json", "Ce-Specversion": "1.0", "Ce-Type": "com.amazonaws.ObjectCreated:Put"}, wantErr: signature.ErrMissing},
		{name: "EventBridge API key connection, key X-Api-Key", source: "eventbridge",
			headers: map[string]string{"X-Api-Key": token}},
		{name: "EventBridge source given a bearer header instead", source: "eventbridge",
			headers: map[string]string{"Authorization": "Bearer " + token}, wantErr: signature.ErrMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.headers {
				h.Set(k, v)
			}
			err := srcs[tt.source].Verifier.Verify(h, []byte(`{"Records":[]}`), time.Now())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
