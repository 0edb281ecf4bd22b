package signature

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestToken(t *testing.T) {
	const current, previous = "minio-token-0123456789abcdef", "old-token-0123456789abcdef"
	bearer := &Token{Secrets: [][]byte{[]byte(current), []byte(previous)}}
	apiKey := &Token{Secrets: [][]byte{[]byte(current)}, Header: "X-Api-Key"}
	tests := []struct {
		name   string
		v      *Token
		header http.Header
		want   error
	}{
		{"bearer current", bearer, header("Authorization", "Bearer "+current), nil},
		{"bearer previous (rotation)", bearer, header("Authorization", "Bearer "+previous), nil},
		{"scheme is case-insensitive", bearer, header("Authorization", "bearer "+current), nil},
		{"custom header carries the bare token", apiKey, header("X-Api-Key", current), nil},
		{"missing", bearer, header(), ErrMissing},
		{"empty", bearer, header("Authorization", ""), ErrMissing},
		{"no scheme", bearer, header("Authorization", current), ErrMalformed},
		{"basic scheme", bearer, header("Authorization", "Basic "+current), ErrMalformed},
		{"sent twice", bearer, http.Header{"Authorization": {"Bearer " + current, "Bearer " + current}}, ErrMalformed},
		{"too long", bearer, header("Authorization", "Bearer "+strings.Repeat("a", maxTokenHeaderBytes)), ErrMalformed},
		{"wrong token", bearer, header("Authorization", "Bearer "+current+"x"), ErrMismatch},
		{"prefix of the token", bearer, header("Authorization", "Bearer "+current[:10]), ErrMismatch},
		{"bearer sent to a custom-header source", apiKey, header("Authorization", "Bearer "+current), ErrMissing},
		{"custom header with a scheme", apiKey, header("X-Api-Key", "Bearer "+current), ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Verify(tt.header, []byte(`{}`), time.Now())
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}
