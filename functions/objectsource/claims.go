package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// keys are the Redis keys of one bucket prefix. All share the hash tag {<bucket>/<prefix>}, so
// the scripts that touch two of them work on Redis Cluster too.
type keys struct {
	// seen maps each object key to the event id of its last emitted version.
	seen string
	// after is where the next pass starts listing when the last one stopped at the bound.
	after string
	// claimPrefix + hash of the object key holds the token of the pass publishing it.
	claimPrefix string
}

func keysFor(bucket, prefix string) keys {
	tag := "knfaas:objectsource:{" + bucket + "/" + prefix + "}:"
	return keys{seen: tag + "seen", after: tag + "after", claimPrefix: tag + "claim:"}
}

func (k keys) claim(objectKey string) string {
	sum := sha256.Sum256([]byte(objectKey))
	return k.claimPrefix + hex.EncodeToString(sum[:16])
}

// Outcomes of a claim.
const (
	claimSeen     = 0 // this version was emitted already
	claimTaken    = 1 // this pass emits it
	claimInFlight = 2 // another pass (another replica) is emitting this key right now
)

// claimScript claims one object version in one step: already seen → 0; otherwise the key's
// claim is taken with a lease → 1, unless another pass holds it → 2.
// KEYS: seen, claim. ARGV: object key, version id, token, lease in ms.
var claimScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return 1 end
return 2`)

// completeScript records the emitted version and frees the claim, unless another pass took the
// claim after ours expired (then that pass records it). KEYS: seen, claim. ARGV: object key,
// version id, token.
var completeScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if holder then redis.call('DEL', KEYS[2]) end
return 1`)

// releaseScript frees our claim after a failed publish, so the next pass tries again.
// KEYS: claim. ARGV: token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// version is one listed object version and what became of its claim.
type version struct {
	objectKey string
	id        string
	outcome   int64
	published bool
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// claimAll claims every version in one pipeline (one round trip, the script by its hash) and
// sets each outcome. A Redis that lacks the script (new, restarted or flushed) gets it sent
// whole in a second round trip.
func claimAll(ctx context.Context, rdb redis.Cmdable, k keys, vs []version, token string, lease time.Duration) error {
	if len(vs) == 0 {
		return nil
	}
	cmds, err := claimPipeline(ctx, rdb, k, vs, token, lease, claimScript.EvalSha)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmds, err = claimPipeline(ctx, rdb, k, vs, token, lease, claimScript.Eval)
	}
	if err != nil {
		return fmt.Errorf("claiming object versions: %w", err)
	}
	for i, c := range cmds {
		n, err := c.Int64()
		if err != nil {
			return fmt.Errorf("claiming %q: %w", vs[i].objectKey, err)
		}
		vs[i].outcome = n
	}
	return nil
}

type evalFunc func(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd

func claimPipeline(ctx context.Context, rdb redis.Cmdable, k keys, vs []version, token string, lease time.Duration, eval evalFunc) ([]*redis.Cmd, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(vs))
	for i, v := range vs {
		cmds[i] = eval(ctx, pipe, []string{k.seen, k.claim(v.objectKey)}, v.objectKey, v.id, token, lease.Milliseconds())
	}
	_, err := pipe.Exec(ctx)
	return cmds, err
}

// settleAll records the published versions and releases the claims of the others, in one
// pipeline; the scripts are sent whole (they are short), so a flushed script cache cannot
// make the round trip fail.
func settleAll(ctx context.Context, rdb redis.Cmdable, k keys, vs []version, token string) error {
	pipe := rdb.Pipeline()
	n := 0
	for _, v := range vs {
		if v.outcome != claimTaken {
			continue
		}
		n++
		if v.published {
			completeScript.Eval(ctx, pipe, []string{k.seen, k.claim(v.objectKey)}, v.objectKey, v.id, token)
		} else {
			releaseScript.Eval(ctx, pipe, []string{k.claim(v.objectKey)}, token)
		}
	}
	if n == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("recording emitted versions: %w", err)
	}
	return nil
}
