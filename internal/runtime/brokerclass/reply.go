package brokerclass

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Replies re-enter a Broker through its ingress. With OIDC authentication on, the dispatcher
// proves that a reply is its own with a credential in the reply URL's user information (sent as
// HTTP basic authentication): an HMAC of the Broker's key under a key kept in Redis, which the
// first replica to need it creates. Whoever reads that key can write the Broker's stream
// directly anyway, so the credential grants no sender anything it did not have.
const (
	// ReplyKeyRedisKey holds the reply key, hex (one key, no growth).
	ReplyKeyRedisKey = "knfaas:broker:reply-key"
	// replyUser is the user name of the reply credential.
	replyUser = "knfaas-reply"
)

// replyKeys loads the reply key from Redis once and keeps it.
type replyKeys struct {
	rdb redis.UniversalClient

	mu  sync.Mutex
	key []byte
}

// get returns the key, creating it in Redis if no replica did.
func (k *replyKeys) get(ctx context.Context) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.key != nil {
		return k.key, nil
	}
	if k.rdb == nil {
		return nil, errors.New("no Redis for the reply key")
	}
	fresh := make([]byte, 32)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("generating the reply key: %w", err)
	}
	if err := k.rdb.SetNX(ctx, ReplyKeyRedisKey, hex.EncodeToString(fresh), 0).Err(); err != nil {
		return nil, fmt.Errorf("storing the reply key: %w", err)
	}
	v, err := k.rdb.Get(ctx, ReplyKeyRedisKey).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the reply key: %w", err)
	}
	key, err := hex.DecodeString(v)
	if err != nil || len(key) < 16 {
		return nil, fmt.Errorf("the reply key in %s is not 16 or more hex bytes", ReplyKeyRedisKey)
	}
	k.key = key
	return key, nil
}

// replyMAC is the credential of replies to the Broker namespace/name.
func replyMAC(key []byte, namespace, name string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("reply to broker " + namespace + "/" + name))
	return hex.EncodeToString(m.Sum(nil))
}

// withReplyCredential adds the credential of replies to the Broker namespace/name to replyURL.
func withReplyCredential(replyURL string, key []byte, namespace, name string) (string, error) {
	u, err := url.Parse(replyURL)
	if err != nil {
		return "", fmt.Errorf("reply URL %q: %w", replyURL, err)
	}
	u.User = url.UserPassword(replyUser, replyMAC(key, namespace, name))
	return u.String(), nil
}

// isReply reports whether user and password are the reply credential for namespace/name.
func isReply(key []byte, user, password, namespace, name string) bool {
	return user == replyUser && hmac.Equal([]byte(password), []byte(replyMAC(key, namespace, name)))
}
