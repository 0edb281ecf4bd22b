package source

import (
	"testing"
	"time"
)

// FuzzParse feeds arbitrary documents to the sources parser. Invariants: no panic; every
// accepted source can verify (has a verifier with at least one secret), has a dedup TTL of at
// least a minute and a body limit within bounds.
func FuzzParse(f *testing.F) {
	f.Add([]byte("sources:\n- name: github\n  provider: github\n  secretEnv: [GH]\n"))
	f.Add([]byte("sources:\n- name: s\n  provider: standardwebhooks\n  type: t\n  secretEnv: [STD]\n  tolerance: 1m\n  dedupTTL: 2h\n  maxBodyBytes: 10\n"))
	f.Add([]byte("sources:\n- name: h\n  provider: hmac\n  type: t\n  header: X\n  algorithm: sha1\n  encoding: base64\n  secretEnv: [GENERIC]\n"))
	f.Add([]byte("sources:\n- name: m\n  provider: s3\n  header: X-Api-Key\n  secretEnv: [TOKEN]\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		srcs, err := Parse(doc, secrets)
		if err != nil {
			return
		}
		for name, s := range srcs {
			if s.Verifier == nil || s.describe == nil {
				t.Fatalf("source %q accepted without a verifier", name)
			}
			if s.DedupTTL < time.Minute {
				t.Fatalf("source %q accepted with dedupTTL %s", name, s.DedupTTL)
			}
			if s.MaxBodyBytes < 1 || s.MaxBodyBytes > maxMaxBodyBytes {
				t.Fatalf("source %q accepted with maxBodyBytes %d", name, s.MaxBodyBytes)
			}
		}
	})
}
