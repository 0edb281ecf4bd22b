package notify

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
)

// BreakerSettings decide when an endpoint's circuit opens and for how long.
type BreakerSettings struct {
	// ConsecutiveFailures opens the circuit after that many failed attempts in a row.
	ConsecutiveFailures uint32
	// FailureRatio opens it when at least that share of the attempts in Window failed, once
	// there were at least MinRequests of them.
	FailureRatio float64
	MinRequests  uint32
	Window       time.Duration
	// OpenFor is how long an open circuit refuses attempts before one half-open probe is let
	// through: a success closes it, a failure opens it again.
	OpenFor time.Duration
}

// DefaultBreaker are the settings of an endpoint's breaker unless the function is told others.
var DefaultBreaker = BreakerSettings{ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 20, Window: time.Minute, OpenFor: 30 * time.Second}

// keyBreaker prefixes the keys of the breakers' shared state (gobreaker names them
// "gobreaker:state:<endpoint>" and "gobreaker:mutex:<endpoint>") and of the half-open probes.
const (
	keyBreaker = Prefix + "breaker:"
	keyProbe   = Prefix + "probe:"
)

// errLocked is what the shared store answers while another holder has a breaker's mutex;
// gobreaker waits and tries again.
var errLocked = errors.New("breaker state is locked")

// breakerStore keeps the breakers' state in Redis (gobreaker.SharedDataStore), so every
// instance and every cold start sees the same circuit.
type breakerStore struct {
	rdb   redis.UniversalClient
	token string
}

func newBreakerStore(rdb redis.UniversalClient) *breakerStore {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return &breakerStore{rdb: rdb, token: hex.EncodeToString(b)}
}

func (s *breakerStore) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

func (s *breakerStore) Lock(name string) error {
	ctx, cancel := s.ctx()
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
	ctx, cancel := s.ctx()
	defer cancel()
	return unlockScript.Run(ctx, s.rdb, []string{keyBreaker + name}, s.token).Err()
}

func (s *breakerStore) GetData(name string) ([]byte, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	b, err := s.rdb.Get(ctx, keyBreaker+name).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

func (s *breakerStore) SetData(name string, data []byte) error {
	ctx, cancel := s.ctx()
	defer cancel()
	return s.rdb.Set(ctx, keyBreaker+name, data, 0).Err()
}

// errAttemptFailed is what a failed attempt reports to its breaker.
var errAttemptFailed = errors.New("attempt failed")

// breaker is one endpoint's distributed circuit breaker.
type breaker struct {
	name    string
	rdb     redis.UniversalClient
	dcb     *gobreaker.DistributedCircuitBreaker[struct{}]
	probeTT time.Duration
	// mu serializes this instance's updates, so that they do not wait on each other's lock.
	mu sync.Mutex
}

func newBreaker(store *breakerStore, name string, s BreakerSettings, probeTTL time.Duration) (*breaker, error) {
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
			slog.Warn("notify: endpoint circuit "+to.String(), "endpoint", name, "from", from.String())
		},
	})
	if err != nil {
		return nil, fmt.Errorf("breaker of endpoint %s: %w", name, err)
	}
	return &breaker{name: name, rdb: store.rdb, dcb: dcb, probeTT: probeTTL}, nil
}

// BreakerState is an endpoint's circuit as stored in Redis.
type BreakerState struct {
	State string `json:"state"`
	// Until is when an open circuit lets a probe through.
	Until               time.Time `json:"until,omitzero"`
	ConsecutiveFailures uint32    `json:"consecutiveFailures"`
	Requests            uint32    `json:"requests"`
	Failures            uint32    `json:"failures"`
}

// ReadBreaker reads an endpoint's circuit; closed when none was stored yet.
func ReadBreaker(ctx context.Context, rdb redis.UniversalClient, endpoint string) (BreakerState, error) {
	raw, err := rdb.Get(ctx, keyBreaker+"gobreaker:state:"+endpoint).Bytes()
	if errors.Is(err, redis.Nil) {
		return BreakerState{State: gobreaker.StateClosed.String()}, nil
	}
	if err != nil {
		return BreakerState{}, fmt.Errorf("reading the circuit of %s: %w", endpoint, err)
	}
	var s gobreaker.SharedState
	if err := json.Unmarshal(raw, &s); err != nil {
		return BreakerState{}, fmt.Errorf("decoding the circuit of %s: %w", endpoint, err)
	}
	out := BreakerState{State: s.State.String(), ConsecutiveFailures: s.Counts.ConsecutiveFailures,
		Requests: s.Counts.Requests, Failures: s.Counts.TotalFailures}
	if s.State == gobreaker.StateOpen {
		out.Until = s.Expiry
	}
	return out, nil
}

// admission is what a breaker lets through in one claim step.
type admission struct {
	state string
	// until: nothing is let through before then (an open circuit).
	until time.Time
	// probe: one attempt may go as the half-open probe; the others wait.
	probe bool
}

// admit reads the shared circuit and decides for the jobs of one step: closed lets all
// through; open refuses until its expiry; past the expiry (or half-open) one probe goes, taken
// with a Redis lock so that only one instance probes.
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
		slog.Warn("notify: updating the circuit failed", "endpoint", b.name, "err", err)
	}
	if probe {
		if err := b.rdb.Del(ctx, keyProbe+b.name).Err(); err != nil {
			slog.Warn("notify: freeing the probe failed; it expires", "endpoint", b.name, "err", err)
		}
	}
}

// countsAsFailure is what the breaker counts: no answer, a timeout, 408, 429 or 5xx. Other
// answers show the endpoint is up, even when it refuses the message.
func countsAsFailure(a Attempt) bool {
	return a.Status == 0 || a.Status == 408 || a.Status == 429 || a.Status >= 500
}
