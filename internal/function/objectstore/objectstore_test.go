package objectstore

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; empty means valid
	}{
		{"AWS with the workload's role", Config{}, ""},
		{"local store with keys", Config{Endpoint: "http://127.0.0.1:9000", AccessKeyID: "k", SecretAccessKey: "s"}, ""},
		{"https endpoint with a trailing slash", Config{Endpoint: "https://s3.example.com/"}, ""},
		{"endpoint without scheme", Config{Endpoint: "127.0.0.1:9000"}, "S3_ENDPOINT"},
		{"endpoint with a path", Config{Endpoint: "http://host/bucket"}, "S3_ENDPOINT"},
		{"endpoint with credentials", Config{Endpoint: "http://k:s@host"}, "S3_ENDPOINT"},
		{"half a key pair", Config{AccessKeyID: "k"}, "set both or neither"},
		{"template secret", Config{AccessKeyID: "k", SecretAccessKey: "CHANGE-ME-s3-secret-key"}, "AWS_SECRET_ACCESS_KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Check()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Check = %v, want an error naming %q", err, tt.wantErr)
			}
			if _, err := New(tt.cfg); (err == nil) != (tt.wantErr == "") {
				t.Fatalf("New error %v, want error: %v", err, tt.wantErr != "")
			}
		})
	}
}
