package process

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonicalEncoding(t *testing.T) {
	d := TaskDecision{Task: "o:approve:1", Decision: DecisionCompleted, Actor: "alice", At: 1767268800000}
	want := "23:knfaas/task-decision/v1,11:o:approve:1,9:completed,5:alice,13:1767268800000,"
	if got := string(d.Canonical()); got != want {
		t.Errorf("Canonical() = %q, want %q", got, want)
	}
	// Field boundaries move without changing the concatenated bytes: the encodings must differ.
	pairs := map[string][2]TaskDecision{
		"task/actor boundary": {
			{Task: "o:approve:1", Decision: "completed", Actor: "alice", At: 1},
			{Task: "o:approve:", Decision: "completed", Actor: "1alice", At: 1},
		},
		"actor/time boundary": {
			{Task: "t", Decision: "completed", Actor: "alice1", At: 23},
			{Task: "t", Decision: "completed", Actor: "alice", At: 123},
		},
		"separator inside a field": {
			{Task: "t,5:bob", Decision: "completed", Actor: "x", At: 1},
			{Task: "t", Decision: "completed", Actor: "bob,1:x", At: 1},
		},
	}
	for name, p := range pairs {
		t.Run(name, func(t *testing.T) {
			if string(p[0].Canonical()) == string(p[1].Canonical()) {
				t.Fatalf("%+v and %+v encode alike: %q", p[0], p[1], p[0].Canonical())
			}
			if testKeys.Sign(p[0]) == testKeys.Sign(p[1]) {
				t.Fatal("different decisions have the same signature")
			}
		})
	}
}

func TestVerify(t *testing.T) {
	old := mustKeys("old-signing-key-0123456789abcdef0", "")
	rotated := mustKeys("new-signing-key-0123456789abcdef0", "old-signing-key-0123456789abcdef0")
	other := mustKeys("another-key-0123456789abcdef01234", "")
	d := TaskDecision{Task: "o:approve:1", Decision: DecisionCompleted, Actor: "alice", At: 1767268800000}
	with := func(f func(*TaskDecision)) TaskDecision { c := d; f(&c); return c }
	tests := []struct {
		name     string
		keys     *SigningKeys
		decision TaskDecision
		sig      string
		want     string // "" = valid, else a substring of the error
	}{
		{"signed with the current key", rotated, d, rotated.Sign(d), ""},
		{"signed with the previous key during a rotation", rotated, d, old.Sign(d), ""},
		{"signed with a key rotated out", mustKeys("newest-key-0123456789abcdef012345", "new-signing-key-0123456789abcdef0"), d, old.Sign(d), "does not match"},
		{"signed with another key", rotated, d, other.Sign(d), "does not match"},
		{"no signature", rotated, d, "", "knfaassignature is missing"},
		{"no version", rotated, d, strings.TrimPrefix(rotated.Sign(d), "v1="), "must be v1="},
		{"unknown version", rotated, d, "v2=" + strings.TrimPrefix(rotated.Sign(d), "v1="), "must be v1="},
		{"not hex", rotated, d, "v1=" + strings.Repeat("zz", 32), "64 hex digits"},
		{"truncated", rotated, d, rotated.Sign(d)[:40], "64 hex digits"},
		{"tampered task", rotated, with(func(c *TaskDecision) { c.Task = "p:approve:1" }), rotated.Sign(d), "does not match"},
		{"tampered decision", rotated, with(func(c *TaskDecision) { c.Decision = DecisionRejected }), rotated.Sign(d), "does not match"},
		{"tampered actor", rotated, with(func(c *TaskDecision) { c.Actor = "mallory" }), rotated.Sign(d), "does not match"},
		{"tampered time", rotated, with(func(c *TaskDecision) { c.At++ }), rotated.Sign(d), "does not match"},
		{"no keys configured", nil, d, rotated.Sign(d), "no signing key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.keys.Verify(tc.decision, tc.sig)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Verify: %v, want valid", err)
			case tc.want != "" && (!errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Verify: %v, want ErrForbidden containing %q", err, tc.want)
			}
		})
	}
}

func TestNewSigningKeysRefusesShortKeys(t *testing.T) {
	tests := map[string][2]string{
		"short current":  {"short", ""},
		"empty current":  {"", ""},
		"short previous": {"test-signing-key-0123456789abcdef", "short"},
	}
	for name, k := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := NewSigningKeys(k[0], k[1]); err == nil || !strings.Contains(err.Error(), "at least 32") {
				t.Fatalf("NewSigningKeys: %v, want an error asking for 32 bytes", err)
			}
		})
	}
}
