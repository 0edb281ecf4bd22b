package embedded

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"

	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// devSecretBytes is the size of a generated development secret before hex encoding: 64 hex
// characters, long enough for every token check and, being a multiple of 4 characters from the
// base64 alphabet, still valid after a whsec_ prefix.
const devSecretBytes = 32

// DevSecret is one generated development secret: the value that replaces Placeholder in Key of
// Secret Namespace/Secret under `knfaas up`.
type DevSecret struct {
	Namespace   string `json:"namespace"`
	Secret      string `json:"secret"`
	Key         string `json:"key"`
	Placeholder string `json:"placeholder"`
	Value       string `json:"value"`
}

// DevSecrets is the content of the development secrets file.
type DevSecrets struct {
	Note    string      `json:"note"`
	Secrets []DevSecret `json:"secrets"`
}

const devSecretsNote = "Development secrets of knfaas up: each value replaces the CHANGE-ME placeholder of a template Secret key. Generated on first use, kept across runs; delete this file to get new ones. Never use them outside this machine."

// Lookup returns the value generated for placeholder in namespace/secret key.
func (d *DevSecrets) Lookup(namespace, secret, key, ph string) (string, bool) {
	for _, s := range d.Secrets {
		if s.Namespace == namespace && s.Secret == secret && s.Key == key && s.Placeholder == ph {
			return s.Value, true
		}
	}
	return "", false
}

// ReadDevSecrets reads a development secrets file; a missing file is an empty set.
func ReadDevSecrets(path string) (*DevSecrets, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &DevSecrets{Note: devSecretsNote}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading development secrets: %w", err)
	}
	var d DevSecrets
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("development secrets %s: %w (delete the file to generate new ones)", path, err)
	}
	d.Note = devSecretsNote
	return &d, nil
}

// devSecretsApplied says what applyDevSecrets did.
type devSecretsApplied struct {
	Path      string
	Replaced  int // placeholders replaced in the loaded Secrets
	Generated int // of which got a new value now
}

// applyDevSecrets replaces every template placeholder in the values of the loaded Secrets
// (data and stringData) with a development secret kept in the file at path, generating and
// saving the ones the file lacks. The Secrets in set are changed in place, so every way a
// value reaches a function (env, envFrom, volumes) sees the replacement.
func applyDevSecrets(set *manifest.Set, path string) (devSecretsApplied, error) {
	res := devSecretsApplied{Path: path}
	found := false
	for _, o := range set.Objects {
		if s, ok := o.Obj.(*corev1.Secret); ok && hasPlaceholder(s) {
			found = true
		}
	}
	if !found {
		return res, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, fmt.Errorf("creating the state directory: %w", err)
	}
	// Two starts at once must agree on one value per placeholder.
	unlock, err := lockDir(dir)
	if err != nil {
		return res, err
	}
	defer unlock()
	d, err := ReadDevSecrets(path)
	if err != nil {
		return res, err
	}
	generate := func(s *corev1.Secret, key, ph string) string {
		res.Replaced++
		if val, ok := d.Lookup(s.Namespace, s.Name, key, ph); ok {
			return val
		}
		val := randomHex(devSecretBytes)
		d.Secrets = append(d.Secrets, DevSecret{Namespace: s.Namespace, Secret: s.Name, Key: key, Placeholder: ph, Value: val})
		res.Generated++
		return val
	}
	replace := func(s *corev1.Secret, key, v string) string {
		if payload, ok := encodedPlaceholder(v); ok {
			return standardSecretPrefix + generate(s, key, payload)
		}
		return placeholder.Pattern.ReplaceAllStringFunc(v, func(ph string) string { return generate(s, key, ph) })
	}
	for _, s := range set.Objects {
		s, ok := s.Obj.(*corev1.Secret)
		if !ok {
			continue
		}
		for _, k := range sortedKeys(s.StringData) {
			if isPlaceholder(s.StringData[k]) {
				s.StringData[k] = replace(s, k, s.StringData[k])
			}
		}
		for _, k := range sortedKeys(s.Data) {
			if isPlaceholder(string(s.Data[k])) {
				s.Data[k] = []byte(replace(s, k, string(s.Data[k])))
			}
		}
	}
	if res.Generated > 0 {
		if err := writeDevSecrets(path, d); err != nil {
			return res, err
		}
	} else if err := os.Chmod(path, 0o600); err != nil {
		return res, fmt.Errorf("development secrets: %w", err)
	}
	return res, nil
}

// print writes the start-up lines about the development secrets.
func (a devSecretsApplied) print(w io.Writer) {
	if a.Replaced == 0 {
		return
	}
	fmt.Fprintf(w, "development secrets: %s (%d CHANGE-ME placeholders replaced, %d generated now; kept across runs)\n", a.Path, a.Replaced, a.Generated)
	fmt.Fprintf(w, "  read one: jq -r '.secrets[] | select(.placeholder==\"CHANGE-ME-…\") | .value' %s; sign a test webhook: functions/webhook/README.md, \"Trying it under knfaas up\"\n", a.Path)
}

func hasPlaceholder(s *corev1.Secret) bool {
	for _, v := range s.StringData {
		if isPlaceholder(v) {
			return true
		}
	}
	for _, v := range s.Data {
		if isPlaceholder(string(v)) {
			return true
		}
	}
	return false
}

// standardSecretPrefix starts a Standard Webhooks secret: whsec_ and base64.
const standardSecretPrefix = "whsec_"

// isPlaceholder reports whether a Secret value holds a template placeholder, in clear or as
// the base64 payload of a Standard Webhooks secret (which must be base64 even in a template).
func isPlaceholder(v string) bool {
	_, encoded := encodedPlaceholder(v)
	return encoded || placeholder.Contains(v)
}

// encodedPlaceholder returns the base64 payload of a whsec_ value that decodes to a placeholder.
func encodedPlaceholder(v string) (string, bool) {
	payload, ok := strings.CutPrefix(v, standardSecretPrefix)
	if !ok {
		return "", false
	}
	b, err := base64.StdEncoding.DecodeString(payload)
	if err != nil || !placeholder.Contains(string(b)) {
		return "", false
	}
	return payload, true
}

// writeDevSecrets replaces the file at path (0600) in one rename.
func writeDevSecrets(path string, d *DevSecrets) error {
	sort.Slice(d.Secrets, func(i, j int) bool {
		a, b := d.Secrets[i], d.Secrets[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Secret != b.Secret {
			return a.Secret < b.Secret
		}
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		return a.Placeholder < b.Placeholder
	})
	raw, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".dev-secrets-*")
	if err != nil {
		return fmt.Errorf("writing development secrets: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(raw, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing development secrets: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing development secrets: %w", err)
	}
	// CreateTemp makes the file 0600.
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing development secrets: %w", err)
	}
	return nil
}

// lockDir holds an exclusive flock on dir until the returned function is called.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("locking the state directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking the state directory: %w", err)
	}
	return func() { f.Close() }, nil
}
