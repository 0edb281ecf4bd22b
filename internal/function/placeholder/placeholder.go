// Package placeholder recognises the CHANGE-ME values of the Secret templates in config/, so
// that a template secret is never accepted as a real one.
package placeholder

import (
	"fmt"
	"regexp"
	"strings"
)

// Marker starts every placeholder in the Secret templates.
const Marker = "CHANGE-ME"

// Pattern matches one placeholder inside a value: the marker and the name that follows it
// (CHANGE-ME, CHANGE-ME-github-webhook-secret, whsec_CHANGE-ME-stripe… matches from the marker).
var Pattern = regexp.MustCompile(`CHANGE-ME[A-Za-z0-9_-]*`)

// Contains reports whether value holds a placeholder.
func Contains(value string) bool { return strings.Contains(value, Marker) }

// Check returns an error naming what (an environment variable, a file, a Secret key) when value
// still holds a template placeholder.
func Check(what, value string) error {
	if Contains(value) {
		return fmt.Errorf("%s holds the template placeholder %q: set a real secret before starting (see config/3xx-* and the README's Secrets step)", what, Pattern.FindString(value))
	}
	return nil
}
