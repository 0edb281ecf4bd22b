package mail

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/knfaas/knfaas/internal/function/notify"
)

// The SMTP server's circuit breaker is gobreaker's distributed breaker, as the notify function's
// per endpoint: its state lives in Redis, so every instance and every cold start sees the same
// circuit, and while it is open mails wait (no attempt counted) until one half-open probe may go.
// Its settings are notify.BreakerSettings; its keys are the mail function's own
// ("knfaas:mail:breaker:gobreaker:state:<host:port>").
const (
	keyBreaker = Prefix + "breaker:"
	keyProbe   = Prefix + "probe:"
)

var errLocked = errors.New("breaker state is locked")

// breakerStore is gobreaker.SharedDataStore on Redis.
type breakerStore struct {
	rdb   redis.UniversalClient
	token string
}

func newBreakerStore(rdb redis.UniversalClient) *breakerStore {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return &breakerStore{rdb: rdb, token: hex.EncodeToString(b)}
}

func storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

func (s *breakerStore) Lock(name string) error {
	ctx, cancel := storeCtx()
	defer cancel()
	ok, err := s.rdb.SetNX(ctx, keyBreaker+name, s.token, 5*time.Second).Result()
	if err != nil {
		return err
	}
	if !ok {
		return errLocked
	}
	return nil
}

var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

func (s *breakerStore) Unlock(name string) error {
	ctx, cancel := storeCtx()
	defer cancel()
	return unlockScript.Run(ctx, s.rdb, []string{keyBreaker + name}, s.token).Err()
}

func (s *breakerStore) GetData(name string) ([]byte, error) {
	ctx, cancel := storeCtx()
	defer cancel()
	b, err := s.rdb.Get(ctx, keyBreaker+name).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

func (s *breakerStore) SetData(name string, data []byte) error {
	ctx, cancel := storeCtx()
	defer cancel()
	return s.rdb.Set(ctx, keyBreaker+name, data, 0).Err()
}

var errAttemptFailed = errors.New("attempt failed")

// breaker is the SMTP server's distributed circuit breaker.
type breaker struct {
	name    string
	rdb     redis.UniversalClient
	dcb     *gobreaker.DistributedCircuitBreaker[struct{}]
	probeTT time.Duration
	mu      sync.Mutex
}

func newBreaker(store *breakerStore, name string, s notify.BreakerSettings, probeTTL time.Duration) (*breaker, error) {
	dcb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](store, gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Interval:    s.Window,
		Timeout:     s.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= s.ConsecutiveFailures ||
				(c.Requests >= s.MinRequests && float64(c.TotalFailures) >= s.FailureRatio*float64(c.Requests))
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			slog.Warn("mail: SMTP server circuit "+to.String(), "server", name, "from", from.String())
		},
	})
	if err != nil {
		return nil, fmt.Errorf("breaker of SMTP server %s: %w", name, err)
	}
	return &breaker{name: name, rdb: store.rdb, dcb: dcb, probeTT: probeTTL}, nil
}

// ReadBreaker reads an SMTP server's circuit (name is host:port); closed when none was stored.
func ReadBreaker(ctx context.Context, rdb redis.UniversalClient, name string) (notify.BreakerState, error) {
	raw, err := rdb.Get(ctx, keyBreaker+"gobreaker:state:"+name).Bytes()
	if errors.Is(err, redis.Nil) {
		return notify.BreakerState{State: gobreaker.StateClosed.String()}, nil
	}
	if err != nil {
		return notify.BreakerState{}, fmt.Errorf("reading the circuit of %s: %w", name, err)
	}
	var s gobreaker.SharedState
	if err := json.Unmarshal(raw, &s); err != nil {
		return notify.BreakerState{}, fmt.Errorf("decoding the circuit of %s: %w", name, err)
	}
	out := notify.BreakerState{State: s.State.String(), ConsecutiveFailures: s.Counts.ConsecutiveFailures,
		Requests: s.Counts.Requests, Failures: s.Counts.TotalFailures}
	if s.State == gobreaker.StateOpen {
		out.Until = s.Expiry
	}
	return out, nil
}

// admission is what the breaker lets through in one claim step.
type admission struct {
	state string
	until time.Time
	probe bool
}

// admit reads the shared circuit: closed lets all through; open refuses until its expiry; past
// it (or half-open) one probe goes, taken with a Redis lock so that only one instance probes.
func (b *breaker) admit(ctx context.Context, now time.Time) (admission, error) {
	st, err := ReadBreaker(ctx, b.rdb, b.name)
	if err != nil {
		return admission{}, err
	}
	switch {
	case st.State == gobreaker.StateClosed.String():
		return admission{state: st.State}, nil
	case st.State == gobreaker.StateOpen.String() && now.Before(st.Until):
		return admission{state: st.State, until: st.Until}, nil
	}
	ok, err := b.rdb.SetNX(ctx, keyProbe+b.name, "1", b.probeTT).Result()
	if err != nil {
		return admission{}, fmt.Errorf("taking the probe of %s: %w", b.name, err)
	}
	if !ok {
		return admission{state: gobreaker.StateHalfOpen.String(), until: now.Add(time.Second)}, nil
	}
	return admission{state: gobreaker.StateHalfOpen.String(), probe: true}, nil
}

// record reports an attempt's result to the shared circuit, then frees the probe if it was one.
func (b *breaker) record(ctx context.Context, failed, probe bool) {
	b.mu.Lock()
	_, err := b.dcb.Execute(func() (struct{}, error) {
		if failed {
			return struct{}{}, errAttemptFailed
		}
		return struct{}{}, nil
	})
	b.mu.Unlock()
	if err != nil && !errors.Is(err, errAttemptFailed) && !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) {
		slog.Warn("mail: updating the circuit failed", "server", b.name, "err", err)
	}
	if probe {
		if err := b.rdb.Del(ctx, keyProbe+b.name).Err(); err != nil {
			slog.Warn("mail: freeing the probe failed; it expires", "server", b.name, "err", err)
		}
	}
}
