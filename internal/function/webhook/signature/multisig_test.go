package signature

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMultiSignatureHeaders checks the headers that may carry several signatures: an entry
// that cannot be used is skipped and any matching entry is enough, as in the Standard Webhooks
// and Stripe reference verifiers, while the number of entries and the header size stay bounded.
func TestMultiSignatureHeaders(t *testing.T) {
	standard := &StandardWebhooks{Secrets: [][]byte{mustStandardSecret(t, standardDocSecret)}}
	stripe := &Stripe{Secrets: [][]byte{[]byte(stripeGenSecret)}}
	// Well-formed signatures that match nothing: a stale key, a wrong-length value.
	wrongStd := "v1," + base64.StdEncoding.EncodeToString(make([]byte, 32))
	shortStd := "v1," + base64.StdEncoding.EncodeToString(make([]byte, 31))
	wrongStripe := "v1=" + hex.EncodeToString(make([]byte, 32))
	stdHeader := func(lines ...string) http.Header {
		h := http.Header{}
		h.Set(HeaderStandardID, standardDocID)
		h.Set(HeaderStandardTimestamp, standardDocTimestamp)
		for _, l := range lines {
			h.Add(HeaderStandardSignature, l)
		}
		return h
	}
	stripeHeader := func(lines ...string) http.Header {
		h := http.Header{}
		for _, l := range lines {
			h.Add(HeaderStripeSignature, l)
		}
		return h
	}
	repeat := func(entry, sep string, n int) string {
		return strings.TrimSuffix(strings.Repeat(entry+sep, n), sep)
	}
	tsStripe := "t=" + stripeGenTimestamp
	goodStripe := "v1=" + stripeGenV1

	tests := []struct {
		name     string
		verifier Verifier
		header   http.Header
		body     string
		now      time.Time
		want     error    // nil means accepted
		wantText []string // fragments the error must hold: the header and the reason
	}{
		{name: "standard: malformed v1 first, then valid", verifier: standard,
			header: stdHeader("v1,!!!not-base64!!! " + standardDocSignature)},
		{name: "standard: valid first, then malformed v1", verifier: standard,
			header: stdHeader(standardDocSignature + " v1,abc")},
		{name: "standard: empty v1 value, then valid", verifier: standard,
			header: stdHeader("v1, " + standardDocSignature)},
		{name: "standard: entry without comma, then valid", verifier: standard,
			header: stdHeader("v1 " + standardDocSignature)},
		{name: "standard: v1 of 31 bytes, then valid", verifier: standard,
			header: stdHeader(shortStd + " " + standardDocSignature)},
		{name: "standard: unknown versions around valid", verifier: standard,
			header: stdHeader("v2,abc v1a,c29tZQ== " + standardDocSignature + " v0,xyz")},
		{name: "standard: stale key and malformed beside valid", verifier: standard,
			header: stdHeader(wrongStd + " v1,=== " + standardDocSignature)},
		{name: "standard: entries over two header lines, valid in the second", verifier: standard,
			header: stdHeader("v1,abc", standardDocSignature)},
		{name: "standard: svix headers, malformed first", verifier: standard,
			header: header("svix-id", standardDocID, "svix-timestamp", standardDocTimestamp, "svix-signature", "v1,abc "+standardDocSignature)},
		{name: "standard: 16 entries, valid last", verifier: standard,
			header: stdHeader(repeat("v1,x", " ", 15) + " " + standardDocSignature)},
		{name: "standard: only malformed entries", verifier: standard,
			header: stdHeader("v1,!!! v1, v2,abc noversion"), want: ErrMalformed,
			wantText: []string{HeaderStandardSignature, "no usable v1 signature among 4 entries",
				"entry 1 has a v1 value of 3 characters", `entry 3 has version "v2"`, "entry 4 is not <version>,<signature>"}},
		{name: "standard: only v1a", verifier: standard,
			header: stdHeader("v1a,c29tZQ=="), want: ErrMalformed,
			wantText: []string{HeaderStandardSignature, `entry 1 has version "v1a"`}},
		{name: "standard: malformed beside a stale key", verifier: standard,
			header: stdHeader("v1,!!! " + wrongStd), want: ErrMismatch,
			wantText: []string{HeaderStandardSignature, "1 v1 signatures tried (skipped entry 1 has a v1 value of 3 characters"}},
		{name: "standard: 17 entries, valid last", verifier: standard,
			header: stdHeader(repeat("v1,x", " ", 16) + " " + standardDocSignature), want: ErrMalformed,
			wantText: []string{HeaderStandardSignature, "more than 16 entries"}},
		{name: "standard: 10,000 entries", verifier: standard,
			header: stdHeader(repeat(standardDocSignature, " ", 10000)), want: ErrMalformed,
			wantText: []string{HeaderStandardSignature, "more than 4096"}},
		{name: "standard: 10,000 header lines", verifier: standard,
			header: stdHeader(strings.Split(repeat("v1,x", "\n", 10000), "\n")...), want: ErrMalformed,
			wantText: []string{HeaderStandardSignature, "more than 4096"}},
		{name: "standard: blank", verifier: standard,
			header: stdHeader("   "), want: ErrMissing,
			wantText: []string{HeaderStandardSignature}},

		{name: "stripe: malformed v1 first, then valid", verifier: stripe,
			header: stripeHeader(tsStripe + ",v1=zz," + goodStripe)},
		{name: "stripe: valid first, then malformed v1", verifier: stripe,
			header: stripeHeader(tsStripe + "," + goodStripe + ",v1=xyz")},
		{name: "stripe: empty v1, then valid", verifier: stripe,
			header: stripeHeader(tsStripe + ",v1=," + goodStripe)},
		{name: "stripe: v1 of the right length but not hex, then valid", verifier: stripe,
			header: stripeHeader(tsStripe + ",v1=" + strings.Repeat("z", 64) + "," + goodStripe)},
		{name: "stripe: entry without '=', then valid", verifier: stripe,
			header: stripeHeader(tsStripe + ",garbage," + goodStripe)},
		{name: "stripe: unknown schemes around valid", verifier: stripe,
			header: stripeHeader(tsStripe + ",v0=abc,v2=def," + goodStripe + ",v9=")},
		{name: "stripe: empty entries", verifier: stripe,
			header: stripeHeader(tsStripe + ",," + goodStripe + ",")},
		{name: "stripe: stale key beside valid", verifier: stripe,
			header: stripeHeader(tsStripe + "," + wrongStripe + "," + goodStripe)},
		{name: "stripe: entries over two header lines, valid in the second", verifier: stripe,
			header: stripeHeader(tsStripe+",v1=zz", goodStripe)},
		{name: "stripe: only malformed v1", verifier: stripe,
			header: stripeHeader(tsStripe + ",v1=zz,v1=,v0=abc"), want: ErrMalformed,
			wantText: []string{HeaderStripeSignature, "no usable v1 signature among 4 entries",
				"entry 2 has a v1 value of 2 characters", `entry 4 has scheme "v0"`}},
		{name: "stripe: malformed beside a stale key", verifier: stripe,
			header: stripeHeader(tsStripe + ",v1=zz," + wrongStripe), want: ErrMismatch,
			wantText: []string{HeaderStripeSignature, "1 v1 signatures tried (skipped entry 2"}},
		{name: "stripe: two timestamps are still refused", verifier: stripe,
			header: stripeHeader("t=1,t=" + stripeGenTimestamp + "," + goodStripe), want: ErrMalformed,
			wantText: []string{HeaderStripeSignature, "two t="}},
		{name: "stripe: no timestamp", verifier: stripe,
			header: stripeHeader("v1=zz," + goodStripe), want: ErrMalformed,
			wantText: []string{HeaderStripeSignature, "no t="}},
		{name: "stripe: 17 entries, valid last", verifier: stripe,
			header: stripeHeader(tsStripe + "," + repeat("v1=x", ",", 15) + "," + goodStripe), want: ErrMalformed,
			wantText: []string{HeaderStripeSignature, "more than 16 entries"}},
		{name: "stripe: 16 entries, valid last", verifier: stripe,
			header: stripeHeader(tsStripe + "," + repeat("v1=x", ",", 14) + "," + goodStripe)},
		{name: "stripe: 10,000 entries", verifier: stripe,
			header: stripeHeader(tsStripe + "," + repeat(goodStripe, ",", 10000)), want: ErrMalformed,
			wantText: []string{HeaderStripeSignature, "more than 4096"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body, now := standardDocBody, unix(standardDocTimestamp)
			if tc.verifier == Verifier(stripe) {
				body, now = stripeGenBody, unix(stripeGenTimestamp)
			}
			err := tc.verifier.Verify(tc.header, []byte(body), now)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify() = %v, want accepted", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify() = %v, want %v", err, tc.want)
			}
			for _, frag := range tc.wantText {
				if !strings.Contains(err.Error(), frag) {
					t.Errorf("Verify() = %q, want it to say %q", err, frag)
				}
			}
		})
	}
}

// BenchmarkVerifyHugeHeader measures what a crafted header costs: 10,000 entries of at most
// 16 are looked at, and a header over 4096 bytes is refused before any is.
func BenchmarkVerifyHugeHeader(b *testing.B) {
	standard := &StandardWebhooks{Secrets: [][]byte{mustStandardSecret(b, standardDocSecret)}}
	for name, sig := range map[string]string{
		"one genuine entry":        standardDocSignature,
		"16 entries, genuine last": strings.Repeat("v1,!!! ", 15) + standardDocSignature,
		"10000 entries":            strings.Repeat("v1,!!! ", 10000),
	} {
		h := header(HeaderStandardID, standardDocID, HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, sig)
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				_ = standard.Verify(h, []byte(standardDocBody), unix(standardDocTimestamp))
			}
		})
	}
}
