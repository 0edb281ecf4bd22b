// Package dedup claims webhook deliveries in Redis so that each (source, delivery id) is
// published at most once while the sender keeps retrying it.
package dedup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// KeyPrefix starts every claim key: knfaas:webhook:delivery:<source>:<delivery id>.
const KeyPrefix = "knfaas:webhook:delivery:"

// Values a claim key holds: pendingPrefix and the claimant's token while it publishes, then
// doneValue once the Broker accepted the event.
const (
	pendingPrefix = "pending:"
	doneValue     = "done"
)

// Outcome is what a claim attempt found.
type Outcome int

const (
	// Claimed means the caller owns the delivery and must publish it, then Complete or Release.
	Claimed Outcome = iota
	// Done means the delivery was published before: answer 2xx without publishing.
	Done
	// InFlight means another request is publishing the delivery right now.
	InFlight
)

func (o Outcome) String() string {
	switch o {
	case Claimed:
		return "claimed"
	case Done:
		return "done"
	case InFlight:
		return "in-flight"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Claim is a held claim on one delivery.
type Claim struct {
	Key   string
	token string
}

// Claims claims, completes and releases deliveries in one Redis. Claims and completions of
// concurrent requests share pipelines; Close stops that.
type Claims struct {
	rdb   redis.UniversalClient
	batch *batcher
}

// New returns Claims backed by rdb.
func New(rdb redis.UniversalClient) *Claims { return &Claims{rdb: rdb, batch: newBatcher(rdb)} }

// Close stops the pipeline goroutines; rdb stays open.
func (c *Claims) Close() { c.batch.close() }

// Key is the claim key of a delivery.
func Key(source, id string) string { return KeyPrefix + source + ":" + id }

// complete marks the claim done for the dedup TTL when it is still ours, or when it expired
// and nobody else took it (the event is in the Broker either way, so duplicates must stop).
var complete = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or v == false then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
if v == 'done' then return 1 end
return 0
`)

// release deletes the claim only while it is still ours, so a claim that expired and was taken
// by a retry is never deleted from under it.
var release = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Claim tries to own key for lease: one SET NX PX round trip when the delivery is new (the
// hot path). Only when the key exists does a second round trip read whether it is done.
// lease must outlast the publish, and bounds how long a crashed claimant blocks retries.
func (c *Claims) Claim(ctx context.Context, key string, lease time.Duration) (Claim, Outcome, error) {
	token := pendingPrefix + newToken()
	set := redis.NewBoolCmd(ctx, "set", key, token, "px", lease.Milliseconds(), "nx")
	err := c.batch.do(ctx, set)
	ok := set.Val()
	if errors.Is(err, redis.Nil) {
		err = nil // SET NX answers nil when the key exists
	}
	if err != nil {
		return Claim{}, 0, fmt.Errorf("claiming %s: %w", key, err)
	}
	if ok {
		return Claim{Key: key, token: token}, Claimed, nil
	}
	v, err := c.rdb.Get(ctx, key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		// Released or expired between the two calls: another request is dealing with it; the
		// sender's retry will find it free or done.
		return Claim{}, InFlight, nil
	case err != nil:
		return Claim{}, 0, fmt.Errorf("reading claim %s: %w", key, err)
	case v == doneValue:
		return Claim{}, Done, nil
	case strings.HasPrefix(v, pendingPrefix):
		return Claim{}, InFlight, nil
	}
	return Claim{}, 0, fmt.Errorf("claim %s holds unexpected value %.40q", key, v)
}

// Complete marks the claim done for ttl: duplicates arriving within ttl are answered 2xx
// without a publish. It reports false when another request holds the key by now.
func (c *Claims) Complete(ctx context.Context, cl Claim, ttl time.Duration) (bool, error) {
	cmd := redis.NewCmd(ctx, "evalsha", complete.Hash(), 1, cl.Key, cl.token, ttl.Milliseconds())
	err := c.batch.do(ctx, cmd)
	if isNoScript(err) {
		cmd = complete.Run(ctx, c.rdb, []string{cl.Key}, cl.token, ttl.Milliseconds())
		err = cmd.Err()
	}
	if err != nil {
		return false, fmt.Errorf("completing claim %s: %w", cl.Key, err)
	}
	n, err := cmd.Int()
	if err != nil {
		return false, fmt.Errorf("completing claim %s: %w", cl.Key, err)
	}
	return n == 1, nil
}

// Release gives the claim up after a failed publish, so the sender's retry can claim it. It
// reports false when the claim was no longer ours.
func (c *Claims) Release(ctx context.Context, cl Claim) (bool, error) {
	n, err := release.Run(ctx, c.rdb, []string{cl.Key}, cl.token).Int()
	if err != nil {
		return false, fmt.Errorf("releasing claim %s: %w", cl.Key, err)
	}
	return n == 1, nil
}

// Preload loads the scripts so the first Complete or Release is a single EVALSHA.
func (c *Claims) Preload(ctx context.Context) error {
	for _, s := range []*redis.Script{complete, release} {
		if err := s.Load(ctx, c.rdb).Err(); err != nil {
			return fmt.Errorf("loading claim script: %w", err)
		}
	}
	return nil
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24).
	return hex.EncodeToString(b[:])
}
