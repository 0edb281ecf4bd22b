package notify

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const (
	testSecret     = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	testSecretPrev = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
)

func env(vars map[string]string) LookupEnv {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

var secrets = env(map[string]string{
	"ORDERS":          testSecret,
	"ORDERS_PREVIOUS": testSecretPrev,
	"EMPTY":           "",
	"TEMPLATE":        "whsec_CHANGE-ME",
	"TEMPLATE_B64":    "whsec_Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ=",
	"NOT_WHSEC":       "s3cret",
	"SHORT":           "whsec_c2hvcnQ=",
})

func TestParse(t *testing.T) {
	tests := map[string]struct {
		doc  string
		errs []string // each must appear in the error; none means Parse must succeed
		want func(t *testing.T, eps []*Endpoint)
	}{
		"empty list": {doc: "endpoints: []\n", want: func(t *testing.T, eps []*Endpoint) {
			if len(eps) != 0 {
				t.Errorf("%d endpoints", len(eps))
			}
		}},
		"defaults": {
			doc: "endpoints:\n- name: orders\n  url: https://hooks.example.com/in\n  types: [com.example.order.*]\n  secretEnv: [ORDERS, ORDERS_PREVIOUS]\n",
			want: func(t *testing.T, eps []*Endpoint) {
				ep := eps[0]
				if ep.Timeout != DefaultTimeout || ep.Concurrency != DefaultConcurrency || len(ep.Signer.keys) != 2 {
					t.Errorf("endpoint = %+v", ep)
				}
				if !ep.Wants("com.example.order.created") || ep.Wants("com.example.invoice") {
					t.Errorf("prefix match wrong")
				}
			},
		},
		"set values and previous secret unset": {
			doc: "endpoints:\n- name: a\n  url: http://a.example:8080/x?y=1\n  types: [t.one, \"*\"]\n  secretEnv: [ORDERS, EMPTY]\n  timeout: 3s\n  concurrency: 2\n  headers: {X-Api-Key: k}\n  disabled: true\n",
			want: func(t *testing.T, eps []*Endpoint) {
				ep := eps[0]
				if ep.Timeout != 3*time.Second || ep.Concurrency != 2 || ep.Headers["X-Api-Key"] != "k" || !ep.Disabled || len(ep.Signer.keys) != 1 || !ep.Wants("anything") {
					t.Errorf("endpoint = %+v", ep)
				}
			},
		},
		"every problem named": {
			doc: "endpoints:\n- name: Bad_Name\n  url: ftp://x\n  types: []\n  secretEnv: []\n  timeout: forever\n  concurrency: 1000\n  headers: {webhook-id: x, 'bad header': y}\n",
			errs: []string{`endpoint "Bad_Name" (endpoints[0]): name:`, "url: \"ftp://x\": the scheme must be http or https",
				"types: required", "secretEnv: required", `timeout: "forever"`, "concurrency: 1000", `headers: "webhook-id" is set by the delivery`, `headers: "bad header" is not a header name`},
		},
		"second endpoint named by index": {
			doc:  "endpoints:\n- name: ok\n  url: https://a.example\n  types: [t]\n  secretEnv: [ORDERS]\n- url: https://b.example\n  types: [t]\n  secretEnv: [ORDERS]\n",
			errs: []string{`endpoints[1]: name: "" must be`},
		},
		"duplicate name":         {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [ORDERS]}\n- {name: a, url: 'https://b.example', types: [t], secretEnv: [ORDERS]}\n", errs: []string{`endpoint "a" (endpoints[1]): name: used by an earlier endpoint`}},
		"unknown field":          {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [ORDERS], secret: whsec_x}\n", errs: []string{"parsing:", "secret"}},
		"no secret set":          {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [EMPTY, UNSET]}\n", errs: []string{"secretEnv: none of [EMPTY UNSET] is set"}},
		"template secret":        {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [TEMPLATE]}\n", errs: []string{"CHANGE-ME"}},
		"template inside base64": {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [TEMPLATE_B64]}\n", errs: []string{"TEMPLATE_B64 (decoded)"}},
		"not whsec":              {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [NOT_WHSEC]}\n", errs: []string{`NOT_WHSEC: secret does not start with "whsec_"`}},
		"short key":              {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [SHORT]}\n", errs: []string{"SHORT: the key is 5 bytes"}},
		"three secrets":          {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [ORDERS, ORDERS, ORDERS]}\n", errs: []string{"secretEnv: 3 names, at most 2"}},
		"bad type":               {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: ['a*b', ''], secretEnv: [ORDERS]}\n", errs: []string{`types: "a*b"`, `types: ""`}},
		"ce header":              {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [ORDERS], headers: {Ce-Type: x}}\n", errs: []string{`"Ce-Type" is set by the delivery`}},
		"rate limit":             {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [ORDERS], rateLimit: -1}\n", errs: []string{"rateLimit: -1 is not between 0"}},
		"header injection":       {doc: "endpoints:\n- {name: a, url: 'https://a.example', types: [t], secretEnv: [ORDERS], headers: {X-A: \"v\\r\\nX-B: w\"}}\n", errs: []string{`value of "X-A" holds a line break`}},
		"not yaml":               {doc: "endpoints: [", errs: []string{"parsing:"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			eps, err := Parse([]byte(tc.doc), secrets)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("Parse = %v", err)
				}
				tc.want(t, eps)
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", eps)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q:\n%v", want, err)
				}
			}
		})
	}
}

func TestValidateURL(t *testing.T) {
	tests := map[string]string{ // url → what the error says ("" accepted)
		"https://hooks.example.com/x":    "",
		"http://127.0.0.1:8080/hook?a=1": "",
		"http://[::1]:9/":                "",
		"":                               "required",
		"hooks.example.com/x":            "scheme must be http or https",
		"file:///etc/passwd":             "scheme must be http or https",
		"https:opaque":                   "no host",
		"https://user:pw@example.com/":   "user info",
		"https://example.com/#frag":      "fragment",
		"https://example.com:0/":         "not a TCP port",
		"https://example.com:99999/":     "not a TCP port",
		"https://exa mple.com/":          "not a URL",
		"https://example.com/" + strings.Repeat("a", MaxURLBytes): "bytes, at most",
	}
	for raw, want := range tests {
		t.Run(fmt.Sprintf("%.40q", raw), func(t *testing.T) {
			err := ValidateURL(raw)
			switch {
			case want == "" && err != nil:
				t.Fatalf("ValidateURL = %v", err)
			case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
				t.Fatalf("ValidateURL = %v, want an error saying %q", err, want)
			}
		})
	}
}
