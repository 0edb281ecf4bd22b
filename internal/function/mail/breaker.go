package mail

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
)

// breakerLabels put the SMTP server's circuit at "knfaas:mail:breaker:gobreaker:state:<host:port>"
// and its half-open probe's lock at "knfaas:mail:probe:<host:port>": the mail function's own
// keys, next to the notify function's per endpoint.
var breakerLabels = breaker.Labels{Prefix: Prefix, Log: "mail", Target: "SMTP server", Attr: "server"}

// ReadBreaker reads an SMTP server's circuit (name is host:port); closed when none was stored.
func ReadBreaker(ctx context.Context, rdb redis.UniversalClient, name string) (breaker.State, error) {
	return breaker.Read(ctx, rdb, breakerLabels, name)
}
