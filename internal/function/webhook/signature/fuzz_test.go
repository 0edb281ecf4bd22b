package signature

import (
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParseStripe checks that any Stripe-Signature value either parses into a timestamp and
// at most 16 32-byte v1 signatures or fails with ErrMalformed, without panicking.
func FuzzParseStripe(f *testing.F) {
	f.Add("t=1700000000,v1=" + stripeGenV1)
	f.Add("t=1700000000,v1=zz,v1=" + stripeGenV1)
	f.Fuzz(func(t *testing.T, v string) {
		ts, sigs, err := ParseStripe(v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if ts == "" || len(sigs) == 0 || len(sigs) > maxSignatureEntries {
			t.Fatalf("accepted %q with timestamp %q and %d signatures", v, ts, len(sigs))
		}
		for _, s := range sigs {
			if len(s) != sha256.Size {
				t.Fatalf("accepted a %d-byte signature", len(s))
			}
		}
	})
}

// FuzzParseStandard checks webhook-signature parsing the same way.
func FuzzParseStandard(f *testing.F) {
	f.Add(standardDocSignature)
	f.Add("v1,!!! " + standardDocSignature)
	f.Fuzz(func(t *testing.T, v string) {
		sigs, err := ParseStandard(v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(sigs) == 0 || len(sigs) > maxSignatureEntries {
			t.Fatalf("accepted %q with %d signatures", v, len(sigs))
		}
		for _, s := range sigs {
			if len(s) != sha256.Size {
				t.Fatalf("accepted a %d-byte signature", len(s))
			}
		}
	})
}

// FuzzParsePrefixedHex checks the GitHub/Slack header shape.
func FuzzParsePrefixedHex(f *testing.F) {
	f.Add(githubDocSignature)
	f.Fuzz(func(t *testing.T, v string) {
		sig, err := ParsePrefixedHex(v, "sha256=", sha256.Size)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(sig) != sha256.Size {
			t.Fatalf("accepted %q as a %d-byte signature", v, len(sig))
		}
	})
}

// FuzzVerify feeds arbitrary header values and bodies to every verifier. Invariant: no panic,
// and nothing is accepted unless the body is the published example the verifier's secret
// signed and the header holds that example's signature (beside whatever else a multi-signature
// header carries).
func FuzzVerify(f *testing.F) {
	f.Add(githubDocSignature, "", "", githubDocBody)
	f.Add("t="+stripeGenTimestamp+",v1="+stripeGenV1, stripeGenTimestamp, "", stripeGenBody)
	f.Add(slackDocSignature, slackDocTimestamp, "", slackDocBody)
	f.Add(standardDocSignature, standardDocTimestamp, standardDocID, standardDocBody)
	f.Add("v1,!!! "+standardDocSignature, standardDocTimestamp, standardDocID, standardDocBody)
	f.Add("t="+stripeGenTimestamp+",v1=zz,v1="+stripeGenV1, stripeGenTimestamp, "", stripeGenBody)
	stdKey, err := DecodeStandardSecret(standardDocSecret)
	if err != nil {
		f.Fatal(err)
	}
	type genuine struct{ signature, body string }
	verifiers := []struct {
		v       Verifier
		genuine genuine // the only signature (compared case-insensitively) and body it may accept
	}{
		{&GitHub{Secrets: [][]byte{[]byte(githubDocSecret)}}, genuine{githubDocSignature[len("sha256="):], githubDocBody}},
		{&Stripe{Secrets: [][]byte{[]byte(stripeGenSecret)}}, genuine{stripeGenV1, stripeGenBody}},
		{&Slack{Secrets: [][]byte{[]byte(slackDocSecret)}}, genuine{slackDocSignature[len("v0="):], slackDocBody}},
		{&StandardWebhooks{Secrets: [][]byte{stdKey}}, genuine{standardDocSignature[len("v1,"):], standardDocBody}},
		{&HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha256.New, Encoding: "base64", TimestampHeader: "X-Ts"}, genuine{}},
	}
	f.Fuzz(func(t *testing.T, sig, ts, id, body string) {
		h := http.Header{}
		for _, name := range []string{HeaderGitHubSignature, HeaderStripeSignature, HeaderSlackSignature, HeaderStandardSignature, "X-Sig"} {
			h.Set(name, sig)
		}
		h.Set(HeaderSlackTimestamp, ts)
		h.Set(HeaderStandardTimestamp, ts)
		h.Set("X-Ts", ts)
		h.Set(HeaderStandardID, id)
		now := time.Unix(0, 0)
		if t0, err := parseTimestamp(ts); err == nil {
			now = t0
		}
		for _, c := range verifiers {
			if err := c.v.Verify(h, []byte(body), now); err != nil {
				continue
			}
			g := c.genuine
			if g.signature == "" || body != g.body || !strings.Contains(strings.ToLower(sig), strings.ToLower(g.signature)) {
				t.Fatalf("%T accepted signature %q over body %q", c.v, sig, body)
			}
		}
	})
}
