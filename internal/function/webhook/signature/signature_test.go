package signature

import (
	"crypto/sha1" //nolint:gosec // vectors for the sha1 algorithm option.
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"testing"
	"time"
)

// Published examples, copied from the providers' documentation.
const (
	// docs.github.com "Validating webhook deliveries", testing the webhook payload validation.
	githubDocSecret    = "It's a Secret to Everybody"
	githubDocBody      = "Hello, World!"
	githubDocSignature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

	// Slack "Verifying requests from Slack", the worked example (a slash command).
	slackDocSecret    = "8f742231b10e8888abcd99yyyzzz85a5"
	slackDocTimestamp = "1531420618"
	slackDocBody      = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
	slackDocSignature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

	// Standard Webhooks specification and reference libraries (the Svix docs example).
	standardDocSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	standardDocID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	standardDocTimestamp = "1614265330"
	standardDocBody      = `{"test": 2432232314}`
	standardDocSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

	// Generated with `openssl dgst -sha256 -hmac whsec_test_secret` over "<t>.<body>": Stripe
	// publishes no secret with its example header, so this vector comes from an independent tool.
	stripeGenSecret    = "whsec_test_secret"
	stripeGenTimestamp = "1700000000"
	stripeGenBody      = `{"id":"evt_1","type":"charge.succeeded","data":{"object":{"id":"ch_1"}}}`
	stripeGenV1        = "7e04f5d6d06a97e32a6f31941ae5cf43d4bdcd725dfc19919aff1189630b06c5"

	// Generated with openssl: HMAC-SHA1 of "1700000000.{"id":"evt_1"}" and base64 HMAC-SHA512 of
	// "payload-bytes", both keyed "generic".
	hmacGenSHA1   = "78566a775e72b5136fa55bd19673dab4f9819418"
	hmacGenSHA512 = "JirO/XdCpS7WTqfA3aBe76Fs/LXSeCkN0LXuyxXTQ90iIcR3EVO5VSnI5dOp6MLDxryx1lbIpIjHIF8kZlWdcw=="
)

func unix(ts string) time.Time {
	t, err := parseTimestamp(ts)
	if err != nil {
		panic(err)
	}
	return t
}

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func mustStandardSecret(t testing.TB, s string) []byte {
	t.Helper()
	k, err := DecodeStandardSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestVerifiers(t *testing.T) {
	stdKey := mustStandardSecret(t, standardDocSecret)
	otherKey := []byte("another secret")
	github := &GitHub{Secrets: [][]byte{[]byte(githubDocSecret)}}
	stripe := &Stripe{Secrets: [][]byte{[]byte(stripeGenSecret)}}
	slack := &Slack{Secrets: [][]byte{[]byte(slackDocSecret)}}
	standard := &StandardWebhooks{Secrets: [][]byte{stdKey}}
	stripeHeader := "t=" + stripeGenTimestamp + ",v1=" + stripeGenV1

	tests := []struct {
		name     string
		verifier Verifier
		header   http.Header
		body     string
		now      time.Time
		want     error // nil means accepted
	}{
		{"github docs example", github, header(HeaderGitHubSignature, githubDocSignature), githubDocBody, time.Now(), nil},
		{"github upper-case hex", github, header(HeaderGitHubSignature, "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17"), githubDocBody, time.Now(), nil},
		{"github rotated: second secret matches", &GitHub{Secrets: [][]byte{otherKey, []byte(githubDocSecret)}}, header(HeaderGitHubSignature, githubDocSignature), githubDocBody, time.Now(), nil},
		{"github wrong secret", &GitHub{Secrets: [][]byte{otherKey}}, header(HeaderGitHubSignature, githubDocSignature), githubDocBody, time.Now(), ErrMismatch},
		{"github body changed by one byte", github, header(HeaderGitHubSignature, githubDocSignature), "Hello, World?", time.Now(), ErrMismatch},
		{"github re-serialised body", github, header(HeaderGitHubSignature, githubDocSignature), "Hello, World! ", time.Now(), ErrMismatch},
		{"github header missing", github, header(), githubDocBody, time.Now(), ErrMissing},
		{"github sha1 header only", github, header("X-Hub-Signature", "sha1=0000000000000000000000000000000000000000"), githubDocBody, time.Now(), ErrMissing},
		{"github no prefix", github, header(HeaderGitHubSignature, githubDocSignature[7:]), githubDocBody, time.Now(), ErrMalformed},
		{"github truncated", github, header(HeaderGitHubSignature, githubDocSignature[:40]), githubDocBody, time.Now(), ErrMalformed},

		{"stripe generated vector", stripe, header(HeaderStripeSignature, stripeHeader), stripeGenBody, unix(stripeGenTimestamp), nil},
		{"stripe v0 and a stale v1 beside the good one", stripe, header(HeaderStripeSignature, "t="+stripeGenTimestamp+",v1="+hex.EncodeToString(make([]byte, 32))+",v1="+stripeGenV1+",v0=abc"), stripeGenBody, unix(stripeGenTimestamp), nil},
		{"stripe at the edge of tolerance", stripe, header(HeaderStripeSignature, stripeHeader), stripeGenBody, unix(stripeGenTimestamp).Add(DefaultTolerance), nil},
		{"stripe too old", stripe, header(HeaderStripeSignature, stripeHeader), stripeGenBody, unix(stripeGenTimestamp).Add(DefaultTolerance + time.Second), ErrTimestamp},
		{"stripe from the future", stripe, header(HeaderStripeSignature, stripeHeader), stripeGenBody, unix(stripeGenTimestamp).Add(-DefaultTolerance - time.Second), ErrTimestamp},
		{"stripe custom tolerance", &Stripe{Secrets: stripe.Secrets, Tolerance: time.Hour}, header(HeaderStripeSignature, stripeHeader), stripeGenBody, unix(stripeGenTimestamp).Add(30 * time.Minute), nil},
		{"stripe timestamp swapped", stripe, header(HeaderStripeSignature, "t=1700000001,v1="+stripeGenV1), stripeGenBody, unix(stripeGenTimestamp), ErrMismatch},
		{"stripe only v0", stripe, header(HeaderStripeSignature, "t=1700000000,v0="+stripeGenV1), stripeGenBody, unix(stripeGenTimestamp), ErrMalformed},
		{"stripe missing", stripe, header(), stripeGenBody, unix(stripeGenTimestamp), ErrMissing},
		{"stripe key must not be base64-decoded", &Stripe{Secrets: [][]byte{[]byte("test_secret")}}, header(HeaderStripeSignature, stripeHeader), stripeGenBody, unix(stripeGenTimestamp), ErrMismatch},

		{"slack docs example", slack, header(HeaderSlackSignature, slackDocSignature, HeaderSlackTimestamp, slackDocTimestamp), slackDocBody, unix(slackDocTimestamp), nil},
		{"slack docs example replayed later", slack, header(HeaderSlackSignature, slackDocSignature, HeaderSlackTimestamp, slackDocTimestamp), slackDocBody, time.Now(), ErrTimestamp},
		{"slack timestamp changed", slack, header(HeaderSlackSignature, slackDocSignature, HeaderSlackTimestamp, "1531420619"), slackDocBody, unix(slackDocTimestamp), ErrMismatch},
		{"slack timestamp missing", slack, header(HeaderSlackSignature, slackDocSignature), slackDocBody, unix(slackDocTimestamp), ErrMissing},
		{"slack timestamp not a number", slack, header(HeaderSlackSignature, slackDocSignature, HeaderSlackTimestamp, "-1531420618"), slackDocBody, unix(slackDocTimestamp), ErrMalformed},
		{"slack wrong version", slack, header(HeaderSlackSignature, "v1="+slackDocSignature[3:], HeaderSlackTimestamp, slackDocTimestamp), slackDocBody, unix(slackDocTimestamp), ErrMalformed},

		{"standard webhooks docs example", standard, header(HeaderStandardID, standardDocID, HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, standardDocSignature), standardDocBody, unix(standardDocTimestamp), nil},
		{"standard webhooks svix headers", standard, header("svix-id", standardDocID, "svix-timestamp", standardDocTimestamp, "svix-signature", standardDocSignature), standardDocBody, unix(standardDocTimestamp), nil},
		{"standard webhooks several entries", standard, header(HeaderStandardID, standardDocID, HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, "v1a,c29tZQ== v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= "+standardDocSignature+" v2,abc"), standardDocBody, unix(standardDocTimestamp), nil},
		{"standard webhooks id changed", standard, header(HeaderStandardID, "msg_other", HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, standardDocSignature), standardDocBody, unix(standardDocTimestamp), ErrMismatch},
		{"standard webhooks body reformatted", standard, header(HeaderStandardID, standardDocID, HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, standardDocSignature), `{"test":2432232314}`, unix(standardDocTimestamp), ErrMismatch},
		{"standard webhooks stale", standard, header(HeaderStandardID, standardDocID, HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, standardDocSignature), standardDocBody, unix(standardDocTimestamp).Add(time.Hour), ErrTimestamp},
		{"standard webhooks id missing", standard, header(HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, standardDocSignature), standardDocBody, unix(standardDocTimestamp), ErrMissing},
		{"standard webhooks only v1a", standard, header(HeaderStandardID, standardDocID, HeaderStandardTimestamp, standardDocTimestamp, HeaderStandardSignature, "v1a,c29tZQ=="), standardDocBody, unix(standardDocTimestamp), ErrMalformed},

		{"hmac sha1 hex with timestamp", &HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha1.New, Encoding: "hex", TimestampHeader: "X-Ts"}, header("X-Sig", hmacGenSHA1, "X-Ts", "1700000000"), `{"id":"evt_1"}`, unix("1700000000"), nil},
		{"hmac sha1 stale timestamp", &HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha1.New, Encoding: "hex", TimestampHeader: "X-Ts"}, header("X-Sig", hmacGenSHA1, "X-Ts", "1700000000"), `{"id":"evt_1"}`, time.Now(), ErrTimestamp},
		{"hmac sha512 base64 with prefix", &HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha512.New, Encoding: "base64", Prefix: "sha512="}, header("X-Sig", "sha512="+hmacGenSHA512), "payload-bytes", time.Now(), nil},
		{"hmac prefix missing", &HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha512.New, Encoding: "base64", Prefix: "sha512="}, header("X-Sig", hmacGenSHA512), "payload-bytes", time.Now(), ErrMalformed},
		{"hmac wrong algorithm length", &HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha256.New, Encoding: "base64"}, header("X-Sig", hmacGenSHA512), "payload-bytes", time.Now(), ErrMalformed},
		{"hmac timestamp header missing", &HMAC{Secrets: [][]byte{[]byte("generic")}, Header: "X-Sig", Hash: sha1.New, Encoding: "hex", TimestampHeader: "X-Ts"}, header("X-Sig", hmacGenSHA1), `{"id":"evt_1"}`, unix("1700000000"), ErrMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.verifier.Verify(tc.header, []byte(tc.body), tc.now)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify() = %v, want accepted", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify() = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestGeneratedVectors signs random-looking inputs with Sum and checks that each verifier
// accepts exactly the matching secret, so the framing of each scheme is exercised beyond the
// single published example.
func TestGeneratedVectors(t *testing.T) {
	now := time.Unix(1750000000, 0)
	ts := "1750000000"
	bodies := []string{"", "{}", `{"a":"ü"}`, string(make([]byte, 4096))}
	for i, body := range bodies {
		secret := []byte{byte(i), 'k', 'e', 'y'}
		wrong := []byte{byte(i), 'k', 'e', 'Y'}
		hexSum := func(parts ...string) string {
			b := make([][]byte, len(parts))
			for i, p := range parts {
				b[i] = []byte(p)
			}
			return hex.EncodeToString(Sum(SHA256, secret, b...))
		}
		cases := map[string]struct {
			make   func(secret []byte) Verifier
			header http.Header
		}{
			"github": {func(s []byte) Verifier { return &GitHub{Secrets: [][]byte{s}} },
				header(HeaderGitHubSignature, "sha256="+hexSum(body))},
			"stripe": {func(s []byte) Verifier { return &Stripe{Secrets: [][]byte{s}} },
				header(HeaderStripeSignature, "t="+ts+",v1="+hexSum(ts, ".", body))},
			"slack": {func(s []byte) Verifier { return &Slack{Secrets: [][]byte{s}} },
				header(HeaderSlackTimestamp, ts, HeaderSlackSignature, "v0="+hexSum("v0:", ts, ":", body))},
			"standardwebhooks": {func(s []byte) Verifier { return &StandardWebhooks{Secrets: [][]byte{s}} },
				header(HeaderStandardID, "msg_1", HeaderStandardTimestamp, ts, HeaderStandardSignature,
					"v1,"+base64.StdEncoding.EncodeToString(Sum(SHA256, secret, []byte("msg_1."+ts+"."+body))))},
		}
		for name, c := range cases {
			t.Run(name, func(t *testing.T) {
				if err := c.make(secret).Verify(c.header, []byte(body), now); err != nil {
					t.Fatalf("body %d: right secret refused: %v", i, err)
				}
				if err := c.make(wrong).Verify(c.header, []byte(body), now); !errors.Is(err, ErrMismatch) {
					t.Fatalf("body %d: wrong secret: %v, want ErrMismatch", i, err)
				}
			})
		}
	}
}

func TestDecodeStandardSecret(t *testing.T) {
	tests := map[string]struct {
		in      string
		wantErr bool
	}{
		"docs example":     {standardDocSecret, false},
		"no prefix":        {"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true},
		"not base64":       {"whsec_!!!", true},
		"empty after pfx":  {"whsec_", true},
		"stripe-style raw": {"whsec_test_secret", true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeStandardSecret(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("DecodeStandardSecret(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			}
		})
	}
}
