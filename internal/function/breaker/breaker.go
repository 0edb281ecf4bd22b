// Package breaker is a circuit breaker per named target (a webhook endpoint, an SMTP server)
// whose state lives in Redis, so that every instance and every cold start sees the same circuit.
package breaker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// Settings decide when a target's circuit opens and for how long.
type Settings struct {
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

// Default are the settings of a breaker unless a function is told others.
var Default = Settings{ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 20, Window: time.Minute, OpenFor: 30 * time.Second}

// States of a circuit as State.State and the attempts logs name them; ProbeState is the state
// logged for the one attempt let through a half-open circuit.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half-open"
	ProbeState    = "half-open probe"
)

// Labels name a function's breakers in Redis and in its log lines.
type Labels struct {
	// Prefix starts the Redis keys: gobreaker's shared state is at
	// Prefix+"breaker:gobreaker:state:<name>" (its mutex at "…breaker:gobreaker:mutex:<name>")
	// and the half-open probe's lock at Prefix+"probe:<name>".
	Prefix string
	// Log starts each log line ("notify").
	Log string
	// Target is what a breaker guards, as log lines say it ("endpoint", "SMTP server").
	Target string
	// Attr is the log attribute that names the target ("endpoint", "server").
	Attr string
}

func (l Labels) stateKey(name string) string { return l.Prefix + "breaker:gobreaker:state:" + name }
func (l Labels) probeKey(name string) string { return l.Prefix + "probe:" + name }

// errLocked is what the shared store answers while another holder has a breaker's mutex;
// gobreaker waits and tries again.
var errLocked = errors.New("breaker state is locked")

// Store keeps the breakers' state in Redis (gobreaker.SharedDataStore) under one Labels.Prefix.
type Store struct {
	rdb    redis.UniversalClient
	labels Labels
	token  string
}

// NewStore returns the store of a function's breakers.
func NewStore(rdb redis.UniversalClient, labels Labels) *Store {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return &Store{rdb: rdb, labels: labels, token: hex.EncodeToString(b)}
}

// storeTimeout bounds each call gobreaker makes to the store: it passes no context.
const storeTimeout = 2 * time.Second

func (s *Store) key(name string) string { return s.labels.Prefix + "breaker:" + name }

// Lock takes gobreaker's mutex of name (implements gobreaker.SharedDataStore).
func (s *Store) Lock(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	ok, err := s.rdb.SetNX(ctx, s.key(name), s.token, 5*time.Second).Result()
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

// Unlock frees gobreaker's mutex of name if this store holds it.
func (s *Store) Unlock(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return unlockScript.Run(ctx, s.rdb, []string{s.key(name)}, s.token).Err()
}

// GetData reads gobreaker's shared state of name; nil when none was stored.
func (s *Store) GetData(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.key(name)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// SetData writes gobreaker's shared state of name.
func (s *Store) SetData(name string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return s.rdb.Set(ctx, s.key(name), data, 0).Err()
}

// State is a target's circuit as stored in Redis.
type State struct {
	State string `json:"state"`
	// Until is when an open circuit lets a probe through.
	Until               time.Time `json:"until,omitzero"`
	ConsecutiveFailures uint32    `json:"consecutiveFailures"`
	Requests            uint32    `json:"requests"`
	Failures            uint32    `json:"failures"`
}

// Read reads a target's circuit; closed when none was stored yet.
func Read(ctx context.Context, rdb redis.UniversalClient, labels Labels, name string) (State, error) {
	raw, err := rdb.Get(ctx, labels.stateKey(name)).Bytes()
	if errors.Is(err, redis.Nil) {
		return State{State: StateClosed}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("reading the circuit of %s: %w", name, err)
	}
	var s gobreaker.SharedState
	if err := json.Unmarshal(raw, &s); err != nil {
		return State{}, fmt.Errorf("decoding the circuit of %s: %w", name, err)
	}
	out := State{State: s.State.String(), ConsecutiveFailures: s.Counts.ConsecutiveFailures,
		Requests: s.Counts.Requests, Failures: s.Counts.TotalFailures}
	if s.State == gobreaker.StateOpen {
		out.Until = s.Expiry
	}
	return out, nil
}

// Names lists the targets that have a circuit stored.
func Names(ctx context.Context, rdb redis.UniversalClient, labels Labels) ([]string, error) {
	prefix := labels.stateKey("")
	var out []string
	iter := rdb.Scan(ctx, 0, prefix+"*", 500).Iterator()
	for iter.Next(ctx) {
		out = append(out, strings.TrimPrefix(iter.Val(), prefix))
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("listing circuits: %w", err)
	}
	return out, nil
}

// errAttemptFailed is what a failed attempt reports to its breaker.
var errAttemptFailed = errors.New("attempt failed")

// Breaker is one target's distributed circuit breaker.
type Breaker struct {
	name     string
	store    *Store
	dcb      *gobreaker.DistributedCircuitBreaker[struct{}]
	probeTTL time.Duration
	// mu serializes this instance's updates, so that they do not wait on each other's lock.
	mu sync.Mutex
}

// New returns the breaker of the target name. probeTTL bounds how long a half-open probe's
// lock is held when its holder dies before Record: longer than one attempt.
func (s *Store) New(name string, settings Settings, probeTTL time.Duration) (*Breaker, error) {
	labels := s.labels
	dcb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](s, gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Interval:    settings.Window,
		Timeout:     settings.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= settings.ConsecutiveFailures ||
				(c.Requests >= settings.MinRequests && float64(c.TotalFailures) >= settings.FailureRatio*float64(c.Requests))
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			slog.Warn(labels.Log+": "+labels.Target+" circuit "+to.String(), labels.Attr, name, "from", from.String())
		},
	})
	if err != nil {
		return nil, fmt.Errorf("breaker of %s %s: %w", labels.Target, name, err)
	}
	return &Breaker{name: name, store: s, dcb: dcb, probeTTL: probeTTL}, nil
}

// Admission is what a breaker lets through in one claim step.
type Admission struct {
	// State is the circuit's state (StateClosed, StateOpen, StateHalfOpen).
	State string
	// Until: nothing is let through before then (an open circuit, or another's probe).
	Until time.Time
	// Probe: one attempt may go as the half-open probe; the others wait.
	Probe bool
}

// Logged is the circuit's state as an attempts log keeps it: ProbeState for the probe.
func (a Admission) Logged() string {
	if a.Probe {
		return ProbeState
	}
	return a.State
}

// AfterProbe is the admission of the step's other attempts once one went as the probe: they
// wait a second.
func (a Admission) AfterProbe(now time.Time) Admission {
	return Admission{State: a.State, Until: now.Add(time.Second)}
}

// Admit reads the shared circuit and decides for the attempts of one step: closed lets all
// through; open refuses until its expiry; past the expiry (or half-open) one probe goes, taken
// with a Redis lock so that only one instance probes.
func (b *Breaker) Admit(ctx context.Context, now time.Time) (Admission, error) {
	st, err := Read(ctx, b.store.rdb, b.store.labels, b.name)
	if err != nil {
		return Admission{}, err
	}
	switch {
	case st.State == StateClosed:
		return Admission{State: st.State}, nil
	case st.State == StateOpen && now.Before(st.Until):
		return Admission{State: st.State, Until: st.Until}, nil
	}
	ok, err := b.store.rdb.SetNX(ctx, b.store.labels.probeKey(b.name), "1", b.probeTTL).Result()
	if err != nil {
		return Admission{}, fmt.Errorf("taking the probe of %s: %w", b.name, err)
	}
	if !ok {
		return Admission{State: StateHalfOpen, Until: now.Add(time.Second)}, nil
	}
	return Admission{State: StateHalfOpen, Probe: true}, nil
}

// Record reports an attempt's result to the shared circuit, then frees the probe if it was one.
func (b *Breaker) Record(ctx context.Context, failed, probe bool) {
	b.mu.Lock()
	_, err := b.dcb.Execute(func() (struct{}, error) {
		if failed {
			return struct{}{}, errAttemptFailed
		}
		return struct{}{}, nil
	})
	b.mu.Unlock()
	labels := b.store.labels
	if err != nil && !errors.Is(err, errAttemptFailed) && !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) {
		slog.Warn(labels.Log+": updating the circuit failed", labels.Attr, b.name, "err", err)
	}
	if probe {
		if err := b.store.rdb.Del(ctx, labels.probeKey(b.name)).Err(); err != nil {
			slog.Warn(labels.Log+": freeing the probe failed; it expires", labels.Attr, b.name, "err", err)
		}
	}
}
