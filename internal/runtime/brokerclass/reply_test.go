package brokerclass

import (
	"context"
	"net/url"
	"testing"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// TestReplyCredential: replicas share one reply key through Redis, and a credential admits
// replies to its own Broker only.
func TestReplyCredential(t *testing.T) {
	rdb := redistest.Start(t, redistest.Options{}).Client()
	ctx := context.Background()
	first, err := (&replyKeys{rdb: rdb}).get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := (&replyKeys{rdb: rdb}).get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != string(second) {
		t.Fatal("two replicas read different reply keys")
	}
	withCred, err := withReplyCredential("http://ingress.knfaas.svc.cluster.local/ns/b", first, "ns", "b")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(withCred)
	if err != nil {
		t.Fatal(err)
	}
	password, _ := u.User.Password()
	for _, tc := range []struct {
		name           string
		key            []byte
		user, password string
		namespace, bkr string
		want           bool
	}{
		{name: "its own broker", key: second, user: u.User.Username(), password: password, namespace: "ns", bkr: "b", want: true},
		{name: "another broker", key: second, user: u.User.Username(), password: password, namespace: "ns", bkr: "c"},
		{name: "another namespace", key: second, user: u.User.Username(), password: password, namespace: "other", bkr: "b"},
		{name: "another key", key: []byte("0123456789abcdef"), user: u.User.Username(), password: password, namespace: "ns", bkr: "b"},
		{name: "another user", key: second, user: "someone", password: password, namespace: "ns", bkr: "b"},
		{name: "no password", key: second, user: u.User.Username(), namespace: "ns", bkr: "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isReply(tc.key, tc.user, tc.password, tc.namespace, tc.bkr); got != tc.want {
				t.Errorf("isReply = %v, want %v", got, tc.want)
			}
		})
	}
}
