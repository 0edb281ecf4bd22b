// Package starttest holds a function's Start to refusing a bad configuration with an error that names what is wrong.
package starttest

import (
	"context"
	"strings"
	"testing"
)

// Refuses sets the variables of envs, a later map over an earlier one, for the rest of the test
// (t.Setenv restores them), calls start as func-go would, and fails t unless it returns an error
// that contains want.
func Refuses(t *testing.T, start func(context.Context, map[string]string) error, want string, envs ...map[string]string) {
	t.Helper()
	for _, env := range envs {
		for k, v := range env {
			t.Setenv(k, v)
		}
	}
	err := start(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Start: %v, want an error containing %q", err, want)
	}
}
