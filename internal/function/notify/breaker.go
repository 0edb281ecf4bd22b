package notify

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
)

// breakerLabels put each endpoint's circuit at "knfaas:notify:breaker:gobreaker:state:<endpoint>"
// and its half-open probe's lock at "knfaas:notify:probe:<endpoint>".
var breakerLabels = breaker.Labels{Prefix: Prefix, Log: "notify", Target: "endpoint", Attr: "endpoint"}

// BreakerState is an endpoint's circuit as stored in Redis.
type BreakerState = breaker.State

// ReadBreaker reads an endpoint's circuit; closed when none was stored yet.
func ReadBreaker(ctx context.Context, rdb redis.UniversalClient, endpoint string) (BreakerState, error) {
	return breaker.Read(ctx, rdb, breakerLabels, endpoint)
}

// countsAsFailure is what the breaker counts: no answer, a timeout, 408, 429 or 5xx. Other
// answers show the endpoint is up, even when it refuses the message.
func countsAsFailure(a Attempt) bool {
	return a.Status == 0 || a.Status == 408 || a.Status == 429 || a.Status >= 500
}
