package delivery

import (
	"encoding/json"
	"mime"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// pushPayload is shaped like a GitHub push delivery: nested objects, arrays, numbers, booleans,
// nulls, escapes and non-ASCII text around the repository's full_name.
const pushPayload = `{
  "ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
  "after": "76ae82a0a8a2d3ab8b0f0fc8c6f6d9a2b3c4d5e6", "created": false, "deleted": false,
  "forced": false, "base_ref": null, "compare": "https://github.com/octo/hello/compare/6113728f27ae...76ae82a0a8a2",
  "commits": [{"id": "76ae82a0", "message": "Fix the \"quoted\" typo\nand a tab\t; caf\u00e9 \u2713",
    "timestamp": "2026-11-29T13:40:01+01:00", "author": {"name": "Zoë", "email": "zoe@example.com"},
    "added": [], "removed": ["old.txt"], "modified": ["README.md", "a/b.go"], "distinct": true}],
  "repository": {"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": "hello",
    "full_name": "octo/hello", "private": false, "owner": {"login": "octo", "id": 1, "site_admin": false},
    "description": "This your first repo!", "fork": false, "size": 108, "stargazers_count": 80,
    "score": -1.5e-3, "topics": ["octo", "hello"], "license": null, "default_branch": "main"},
  "pusher": {"name": "octo", "email": "octo@github.com"},
  "sender": {"login": "octo", "id": 1, "type": "User"}
}`

func TestGitHubSubject(t *testing.T) {
	tests := []struct {
		name        string
		doc         string
		wantSubject string
		// wantFast is whether githubSubject decides the document itself.
		wantFast bool
	}{
		{"push", pushPayload, "octo/hello", true},
		{"minimal", `{"repository":{"full_name":"a/b"}}`, "a/b", true},
		{"no repository", `{"zen":"x","hook":{"repository":{"full_name":"not/top"}}}`, "", true},
		{"empty object", ` { } `, "", true},
		{"repository null", `{"repository":null}`, "", true},
		{"repository nulled later", `{"repository":{"full_name":"a/b"},"repository":null}`, "", true},
		{"later repository replaces", `{"repository":null,"repository":{"full_name":"c/d"}}`, "c/d", true},
		{"repository again keeps full_name", `{"repository":{"full_name":"a/b"},"repository":{"id":1}}`, "a/b", true},
		{"full_name null keeps it", `{"repository":{"full_name":"a/b","full_name":null}}`, "a/b", true},
		{"later full_name wins", `{"repository":{"full_name":"a/b","full_name":"e/f"}}`, "e/f", true},
		{"keys in other case", `{"Repository":{"FULL_NAME":"a/b"}}`, "a/b", true},
		{"repository without full_name", `{"repository":{"name":"x"}}`, "", true},
		{"non-ASCII full_name", `{"repository":{"full_name":"zoë/café"}}`, "zoë/café", true},
		{"escaped other keys deeper", `{"sender":{"lo\u0067in":"x"},"repository":{"owner":{"\u0041":1},"full_name":"a/b"}}`, "a/b", true},
		{"numbers", `{"a":[0,-0,1.25,-3e10,4E+2,5e-1],"repository":{"full_name":"a/b"}}`, "a/b", true},

		// Left to encoding/json, which decides (and words the error).
		{"escaped key", `{"repo\u0073itory":{"full_name":"a/b"}}`, "a/b", false},
		{"Kelvin sign folds onto k", "{\"repository\":{\"full_name\":\"a/b\"},\"\u212aey\":1}", "a/b", false},
		{"long s folds onto s", "{\"repo\u017fitory\":{\"full_name\":\"a/b\"}}", "a/b", false},
		{"escaped full_name", `{"repository":{"full_name":"a\/b"}}`, "a/b", false},
		{"invalid UTF-8 in full_name", "{\"repository\":{\"full_name\":\"a\xffb\"}}", "a\uFFFDb", false},
		{"top-level null", `null`, "", false},
		{"top-level array", `[]`, "", false},
		{"repository is a string", `{"repository":"a/b"}`, "", false},
		{"full_name is a number", `{"repository":{"full_name":1}}`, "", false},
		{"trailing comma", `{"repository":{"full_name":"a/b"},}`, "", false},
		{"trailing data", `{"repository":{"full_name":"a/b"}} x`, "", false},
		{"two documents", `{}{}`, "", false},
		{"leading zero", `{"n":01}`, "", false},
		{"bare minus", `{"n":-}`, "", false},
		{"dot without digits", `{"n":1.}`, "", false},
		{"exponent without digits", `{"n":1e+}`, "", false},
		{"control character in a string", "{\"s\":\"a\nb\"}", "", false},
		{"bad escape", `{"s":"\x"}`, "", false},
		{"short unicode escape", `{"s":"\u12"}`, "", false},
		{"unterminated string", `{"s":"abc`, "", false},
		{"literal misspelt", `{"b":tru}`, "", false},
		{"literal run on", `{"b":nullx}`, "", false},
		{"single quotes", `{'repository':1}`, "", false},
		{"empty", ``, "", false},
		{"deep nesting", `{"a":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, fast := githubSubject([]byte(tc.doc))
			if fast != tc.wantFast {
				t.Fatalf("decided itself: %v, want %v", fast, tc.wantFast)
			}
			decoded, err := githubSubjectDecoded([]byte(tc.doc))
			if fast {
				if err != nil || got != decoded {
					t.Fatalf("fast %q, encoding/json %q (%v)", got, decoded, err)
				}
			}
			if err == nil && decoded != tc.wantSubject {
				t.Errorf("subject %q, want %q", decoded, tc.wantSubject)
			}
			want := tc.wantSubject
			d, err := GitHub(hdr("X-GitHub-Event", "push", "X-GitHub-Delivery", "d-1"), []byte(tc.doc))
			if jsonErr := json.Unmarshal([]byte(tc.doc), new(struct {
				Repository *struct {
					FullName string `json:"full_name"`
				} `json:"repository"`
			})); jsonErr != nil {
				if err == nil || err.Error() != "body is not JSON: "+jsonErr.Error() {
					t.Errorf("GitHub error %v, want ErrNotJSON with encoding/json's %v", err, jsonErr)
				}
				return
			}
			if err != nil || d.Subject != want {
				t.Errorf("GitHub = %+v, %v; want subject %q", d, err, want)
			}
		})
	}
}

// FuzzGitHubSubject: whatever githubSubject decides itself, encoding/json decides the same
// (valid, same subject); what it leaves is encoding/json's anyway.
func FuzzGitHubSubject(f *testing.F) {
	for _, doc := range []string{
		pushPayload, `{"repository":{"full_name":"a/b"}}`, `{"repository":null,"repository":{"full_name":"c"}}`,
		`{"repository":{"full_name":"a","full_name":null},"repository":{}}`, `{"Repository":{"Full_Name":"x"}}`,
		`{"a":[1,-2.5e3,true,false,null,{"b":"\u00e9\n"}],"repository":{"full_name":"x"}}`,
		`{"n":01}`, `{"repository":"x"}`, "{\"\u212a\":1}", `{"repository":{"full_name":"a\/b"}}`,
	} {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		got, fast := githubSubject(doc)
		if !fast {
			return
		}
		decoded, err := githubSubjectDecoded(doc)
		if err != nil {
			t.Fatalf("decided %q itself for a document encoding/json refuses: %v", got, err)
		}
		if got != decoded {
			t.Fatalf("subject %q, encoding/json %q", got, decoded)
		}
	})
}

// BenchmarkGitHub compares reading the subject with encoding/json and with githubSubject, and
// times the whole describer.
func BenchmarkGitHub(b *testing.B) {
	h := http.Header{}
	h.Set("X-GitHub-Event", "push")
	h.Set("X-GitHub-Delivery", "d-1")
	h.Set("Content-Type", "application/json")
	for name, doc := range map[string]string{"push": pushPayload, "1KiB": `{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"},"padding":"` + strings.Repeat("x", 950) + `"}`} {
		b.Run(name+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := githubSubjectDecoded([]byte(doc)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/scan", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := githubSubject([]byte(doc)); !ok {
					b.Fatal("left to encoding/json")
				}
			}
		})
		b.Run(name+"/GitHub", func(b *testing.B) {
			body := []byte(doc)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := GitHub(h, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// eventNamePattern is what eventName checks, as the regular expression it replaced.
var eventNamePattern = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,128}$`)

func TestEventName(t *testing.T) {
	tests := []struct {
		name, event string
		want        bool
	}{
		{"push", "push", true},
		{"dotted", "charge.succeeded", true},
		{"all classes", "Az09_.-", true},
		{"128 bytes", strings.Repeat("a", 128), true},
		{"empty", "", false},
		{"129 bytes", strings.Repeat("a", 129), false},
		{"space", "push now", false},
		{"colon", "s3:put", false},
		{"trailing newline", "push\n", false},
		{"non-ASCII", "pusĥ", false},
		{"invalid UTF-8", "push\xff", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := eventName(tc.event); got != tc.want || got != eventNamePattern.MatchString(tc.event) {
				t.Errorf("eventName(%q) = %v, want %v (the pattern says %v)", tc.event, got, tc.want, eventNamePattern.MatchString(tc.event))
			}
		})
	}
}

// FuzzEventName: eventName answers as the regular expression it replaced.
func FuzzEventName(f *testing.F) {
	for _, s := range []string{"push", "a.b-c_D9", "", "x y", "é", "push\n", strings.Repeat("z", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := eventName(s), eventNamePattern.MatchString(s); got != want {
			t.Fatalf("eventName(%q) = %v, the pattern %v", s, got, want)
		}
	})
}

func TestMediaType(t *testing.T) {
	for _, v := range []string{"application/json", "application/x-www-form-urlencoded", "Application/JSON",
		"application/json; charset=utf-8", "application/x-www-form-urlencoded ", "", "text/plain;", "bad"} {
		t.Run(v, func(t *testing.T) {
			want, _, err := mime.ParseMediaType(v)
			if err != nil {
				want = ""
			}
			if got := mediaType(http.Header{"Content-Type": {v}}); got != want {
				t.Errorf("mediaType(%q) = %q, mime.ParseMediaType %q", v, got, want)
			}
		})
	}
}
