package placeholder

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for name, tc := range map[string]struct {
		value   string
		wantErr string
	}{
		"real secret":          {value: "s3cr3t-from-a-vault"},
		"empty":                {value: ""},
		"bare marker":          {value: "CHANGE-ME", wantErr: `"CHANGE-ME"`},
		"named placeholder":    {value: "CHANGE-ME-github-webhook-secret", wantErr: `"CHANGE-ME-github-webhook-secret"`},
		"inside a token list":  {value: "manager:managers:CHANGE-ME-manager-token-000000", wantErr: `"CHANGE-ME-manager-token-000000"`},
		"after a prefix":       {value: "whsec_CHANGE-ME-stripe-signing-secret", wantErr: `"CHANGE-ME-stripe-signing-secret"`},
		"inside a URL":         {value: "redis://:CHANGE-ME@redis:6379/0", wantErr: `"CHANGE-ME"`},
		"lower case is a real": {value: "change-me"},
	} {
		t.Run(name, func(t *testing.T) {
			err := Check("WEBHOOK_SECRET", tc.value)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Check(%q) = %v, want nil", tc.value, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "WEBHOOK_SECRET") {
				t.Fatalf("Check(%q) = %v, want an error naming WEBHOOK_SECRET and %s", tc.value, err, tc.wantErr)
			}
		})
	}
}
