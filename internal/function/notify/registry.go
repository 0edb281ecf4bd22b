package notify

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

// Bounds of the endpoint API.
const (
	// MaxRequestBytes bounds the body of an API request.
	MaxRequestBytes = 64 << 10
	// DefaultRotationOverlap is how long the previous secret keeps signing after a rotation
	// that names no overlap.
	DefaultRotationOverlap = 24 * time.Hour
	// MaxRotationOverlap caps a rotation's overlap.
	MaxRotationOverlap = 7 * 24 * time.Hour
	// MaxAPIEndpoints caps how many endpoints the API holds.
	MaxAPIEndpoints = 1000
	// PausedRecheck is how long a message for a paused endpoint waits before it is looked at
	// again; enabling the endpoint makes its messages due at once.
	PausedRecheck = time.Hour
)

// keyAPIEndpoints is the hash name → StoredEndpoint (JSON) of the endpoints made through the API.
const keyAPIEndpoints = Prefix + "api:endpoints"

// Errors of the registry; the API maps them to status codes.
var (
	ErrExists     = errors.New("already exists")
	ErrConfigured = errors.New("declared in the notify-endpoints ConfigMap: change it there")
)

// StoredEndpoint is an endpoint made through the API, as Redis keeps it. Its secrets are kept
// in Redis in clear (the store of the platform's messages and dead letters); GET never shows
// them, only create and rotate answer the new one.
type StoredEndpoint struct {
	Name        string            `json:"name"`
	URL         string            `json:"url"`
	Types       []string          `json:"types"`
	Headers     map[string]string `json:"headers,omitempty"`
	Timeout     string            `json:"timeout,omitempty"`
	Concurrency int               `json:"concurrency,omitempty"`
	RateLimit   int               `json:"rateLimit,omitempty"`
	// Paused: nothing is sent; messages for the endpoint are kept and wait for it to be enabled.
	Paused bool `json:"paused,omitempty"`
	// Secret is the current whsec_ secret; Previous, until PreviousUntil, signs beside it.
	Secret        string    `json:"secret"`
	Previous      string    `json:"previous,omitempty"`
	PreviousUntil time.Time `json:"previousUntil,omitzero"`
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
}

// EndpointRequest is the body of a create or update: the fields of a ConfigMap entry, with the
// secret itself (whsec_…) instead of secretEnv. On create an absent secret is generated; on
// update the secret cannot be given (rotate it).
type EndpointRequest struct {
	Name        string            `json:"name"`
	URL         string            `json:"url"`
	Types       []string          `json:"types"`
	Headers     map[string]string `json:"headers,omitempty"`
	Timeout     string            `json:"timeout,omitempty"`
	Concurrency int               `json:"concurrency,omitempty"`
	RateLimit   int               `json:"rateLimit,omitempty"`
	Secret      string            `json:"secret,omitempty"`
}

// RotateRequest is the body of a rotation: the new secret (generated when empty) and how long
// the previous one keeps signing beside it (a Go duration; DefaultRotationOverlap when empty,
// "0s" to stop it at once).
type RotateRequest struct {
	Secret  string `json:"secret,omitempty"`
	Overlap string `json:"overlap,omitempty"`
}

// DecodeRequest reads a JSON API body into v strictly: at most MaxRequestBytes, one object,
// no unknown field. The error names what is wrong (a FieldError for a bad field).
func DecodeRequest(r io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, MaxRequestBytes+1))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if len(data) > MaxRequestBytes {
		return fieldError("body", "larger than %d bytes", MaxRequestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typeErr) && typeErr.Field != "":
			return fieldError(typeErr.Field, "must be a JSON %s", typeErr.Type)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return fieldError(strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`), "unknown field")
		}
		return fieldError("body", "not a JSON object: %v", err)
	}
	if dec.More() {
		return fieldError("body", "holds more than one JSON value")
	}
	return nil
}

// Validate checks a create (create=true) or update request as strictly as a ConfigMap entry,
// every problem a FieldError.
func (q EndpointRequest) Validate(create bool) error {
	_, errs := buildSpec(q.config())
	if q.Secret != "" {
		if !create {
			errs = append(errs, fieldError("secret", "cannot be changed by an update: rotate it"))
		} else if _, err := decodeSecret(q.Secret); err != nil {
			errs = append(errs, fieldError("secret", "%v", err))
		}
	}
	return errors.Join(errs...)
}

func (q EndpointRequest) config() EndpointConfig {
	return EndpointConfig{Name: q.Name, URL: q.URL, Types: q.Types, Headers: q.Headers, Timeout: q.Timeout,
		Concurrency: q.Concurrency, RateLimit: q.RateLimit}
}

// decodeSecret checks a whsec_ secret and returns its key.
func decodeSecret(s string) ([]byte, error) {
	if !strings.HasPrefix(s, "whsec_") {
		return nil, errors.New("must start with whsec_")
	}
	k, err := signature.DecodeStandardSecret(s)
	if err != nil {
		return nil, err
	}
	if len(k) < 16 {
		return nil, fmt.Errorf("the key is %d bytes, at least 16 (24 to 64 recommended)", len(k))
	}
	return k, nil
}

// NewSecret returns a fresh Standard Webhooks secret: whsec_ and 32 random bytes in base64.
func NewSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// ParseOverlap reads a rotation's overlap.
func ParseOverlap(s string) (time.Duration, error) {
	if s == "" {
		return DefaultRotationOverlap, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > MaxRotationOverlap {
		return 0, fieldError("overlap", "%q is not a Go duration from 0s to %s", s, MaxRotationOverlap)
	}
	return d, nil
}

// Endpoint builds the deliverable endpoint at now: the previous secret signs only before
// PreviousUntil. It also returns when the result changes by itself (the overlap's end), zero
// when it does not.
func (s StoredEndpoint) Endpoint(now time.Time) (*Endpoint, time.Time, error) {
	ep, errs := buildSpec(EndpointConfig{Name: s.Name, URL: s.URL, Types: s.Types, Headers: s.Headers,
		Timeout: s.Timeout, Concurrency: s.Concurrency, RateLimit: s.RateLimit})
	cur, err := decodeSecret(s.Secret)
	if err != nil {
		errs = append(errs, fieldError("secret", "%v", err))
	}
	if len(errs) > 0 {
		return nil, time.Time{}, fmt.Errorf("stored endpoint %s: %w", s.Name, errors.Join(errs...))
	}
	keys := [][]byte{cur}
	var changes time.Time
	if s.Previous != "" && now.Before(s.PreviousUntil) {
		if prev, err := decodeSecret(s.Previous); err == nil {
			keys = append(keys, prev)
			changes = s.PreviousUntil
		}
	}
	ep.Signer = NewSigner(keys...)
	if len(keys) > 1 {
		ep.overlapEnds, ep.afterOverlap = s.PreviousUntil, NewSigner(cur)
	}
	ep.Paused = s.Paused
	ep.FromAPI = true
	return ep, changes, nil
}

// View is the stored endpoint as the API shows it: without secrets.
func (s StoredEndpoint) View(now time.Time) EndpointView {
	v := EndpointView{Name: s.Name, Source: SourceAPI, URL: s.URL, Types: s.Types, Headers: s.Headers, Timeout: s.Timeout,
		Concurrency: s.Concurrency, RateLimit: s.RateLimit, Paused: s.Paused, Secrets: 1, Created: s.Created, Updated: s.Updated}
	if s.Previous != "" && now.Before(s.PreviousUntil) {
		v.Secrets, v.PreviousUntil = 2, s.PreviousUntil
	}
	return v
}

// Sources of an endpoint.
const (
	SourceAPI       = "api"
	SourceConfigMap = "configmap"
)

// EndpointView is an endpoint as the API and the CLI show it.
type EndpointView struct {
	Name          string            `json:"name"`
	Source        string            `json:"source"`
	URL           string            `json:"url"`
	Types         []string          `json:"types"`
	Headers       map[string]string `json:"headers,omitempty"`
	Timeout       string            `json:"timeout,omitempty"`
	Concurrency   int               `json:"concurrency,omitempty"`
	RateLimit     int               `json:"rateLimit,omitempty"`
	Paused        bool              `json:"paused,omitempty"`
	Secrets       int               `json:"liveSecrets"`
	PreviousUntil time.Time         `json:"previousUntil,omitzero"`
	Created       time.Time         `json:"created,omitzero"`
	Updated       time.Time         `json:"updated,omitzero"`
	// Set by the listing: the circuit, the disabled mark and the delivery counters.
	Circuit  *BreakerState    `json:"circuit,omitempty"`
	Disabled string           `json:"disabled,omitempty"`
	Counters map[string]int64 `json:"counters,omitempty"`
	// Secret is only set in the answer to a create or a rotation.
	Secret string `json:"secret,omitempty"`
}

// ConfigView is a ConfigMap endpoint as the API shows it.
func ConfigView(ep *Endpoint) EndpointView {
	v := EndpointView{Name: ep.Name, Source: SourceConfigMap, URL: ep.URL, Types: ep.Types, Headers: ep.Headers,
		Timeout: ep.Timeout.String(), Concurrency: ep.Concurrency, RateLimit: ep.RateLimit, Secrets: len(ep.Signer.keys)}
	if ep.Disabled {
		v.Disabled = "disabled in the ConfigMap"
	}
	return v
}

// APIEndpoints returns the endpoints made through the API, by name.
func (s *Store) APIEndpoints(ctx context.Context) (map[string]StoredEndpoint, error) {
	raw, err := s.rdb.HGetAll(ctx, keyAPIEndpoints).Result()
	if err != nil {
		return nil, fmt.Errorf("reading API endpoints: %w", err)
	}
	out := make(map[string]StoredEndpoint, len(raw))
	for name, r := range raw {
		var e StoredEndpoint
		if err := json.Unmarshal([]byte(r), &e); err != nil {
			return nil, fmt.Errorf("API endpoint %s: %w", name, err)
		}
		out[name] = e
	}
	return out, nil
}

// APIEndpoint returns one endpoint made through the API.
func (s *Store) APIEndpoint(ctx context.Context, name string) (StoredEndpoint, error) {
	raw, err := s.rdb.HGet(ctx, keyAPIEndpoints, name).Bytes()
	if errors.Is(err, redis.Nil) {
		return StoredEndpoint{}, fmt.Errorf("endpoint %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return StoredEndpoint{}, fmt.Errorf("reading endpoint %s: %w", name, err)
	}
	var e StoredEndpoint
	if err := json.Unmarshal(raw, &e); err != nil {
		return StoredEndpoint{}, fmt.Errorf("endpoint %s: %w", name, err)
	}
	return e, nil
}

var createScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

// CreateAPIEndpoint stores a new endpoint; ErrExists when the name is taken.
func (s *Store) CreateAPIEndpoint(ctx context.Context, e StoredEndpoint) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	n, err := createScript.Run(ctx, s.rdb, []string{keyAPIEndpoints}, e.Name, b, MaxAPIEndpoints).Int()
	switch {
	case err != nil:
		return fmt.Errorf("creating endpoint %s: %w", e.Name, err)
	case n == 0:
		return fmt.Errorf("endpoint %s: %w", e.Name, ErrExists)
	case n == -1:
		return fmt.Errorf("endpoint %s: the API holds %d endpoints already, the most it takes", e.Name, MaxAPIEndpoints)
	}
	return nil
}

var updateScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
`)

// UpdateAPIEndpoint applies change to a stored endpoint, retrying when another writer changed
// it in between, and returns the result.
func (s *Store) UpdateAPIEndpoint(ctx context.Context, name string, change func(*StoredEndpoint) error) (StoredEndpoint, error) {
	for range 20 {
		old, err := s.rdb.HGet(ctx, keyAPIEndpoints, name).Result()
		if errors.Is(err, redis.Nil) {
			return StoredEndpoint{}, fmt.Errorf("endpoint %s: %w", name, ErrNotFound)
		}
		if err != nil {
			return StoredEndpoint{}, fmt.Errorf("reading endpoint %s: %w", name, err)
		}
		var e StoredEndpoint
		if err := json.Unmarshal([]byte(old), &e); err != nil {
			return StoredEndpoint{}, fmt.Errorf("endpoint %s: %w", name, err)
		}
		if err := change(&e); err != nil {
			return StoredEndpoint{}, err
		}
		b, err := json.Marshal(e)
		if err != nil {
			return StoredEndpoint{}, err
		}
		n, err := updateScript.Run(ctx, s.rdb, []string{keyAPIEndpoints}, name, old, b).Int()
		if err != nil {
			return StoredEndpoint{}, fmt.Errorf("updating endpoint %s: %w", name, err)
		}
		if n == 1 {
			return e, nil
		}
	}
	return StoredEndpoint{}, fmt.Errorf("updating endpoint %s: changed by others 20 times in a row", name)
}

var resumeScript = redis.NewScript(`
local n = 0
for i = 1, #ARGV - 1 do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[#ARGV], ARGV[i]) == 1 then n = n + 1 end
end
return n
`)

// Resume makes every waiting message of endpoint due at now (after it was enabled) and
// returns how many.
func (s *Store) Resume(ctx context.Context, endpoint string, now time.Time) (int, error) {
	var members []string
	// A pair leased by an instance (due again at most MaxTimeout and a margin later) is left
	// alone: its attempt is under way.
	leased := now.Add(MaxTimeout + time.Minute).UnixMilli()
	iter := s.rdb.ZScan(ctx, keyDue, 0, "* "+escapeGlob(endpoint), 500).Iterator()
	for iter.Next(ctx) {
		member := iter.Val()
		if !iter.Next(ctx) {
			break
		}
		if score, err := strconv.ParseFloat(iter.Val(), 64); err == nil && int64(score) > leased {
			members = append(members, member)
		}
	}
	if err := iter.Err(); err != nil {
		return 0, fmt.Errorf("listing the messages of %s: %w", endpoint, err)
	}
	total := 0
	for chunk := range slices.Chunk(members, 500) {
		args := make([]any, 0, len(chunk)+1)
		for _, m := range chunk {
			args = append(args, m)
		}
		args = append(args, now.UnixMilli())
		n, err := resumeScript.Run(ctx, s.rdb, []string{keyDue}, args...).Int()
		if err != nil {
			return total, fmt.Errorf("resuming the messages of %s: %w", endpoint, err)
		}
		total += n
	}
	return total, nil
}

func escapeGlob(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`)
	return r.Replace(s)
}

// sortedNames returns m's keys in order.
func sortedNames[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// MaxReplay caps how many messages one replay re-delivers; a range holding more is replayed
// up to that many, oldest first, and the answer names where to continue.
const MaxReplay = 10000

// keyReplay prefixes the record of a replay (its answer), kept for Retention: the same replay
// issued again answers it and sends nothing.
const keyReplay = Prefix + "replay:"

// Replay is what a replay did.
type Replay struct {
	ID       string    `json:"id"`
	Endpoint string    `json:"endpoint"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
	Issued   time.Time `json:"issued"`
	// Matched: messages in the range of a type the endpoint wants (at most MaxReplay).
	Matched int `json:"matched"`
	// Scheduled: of those, sent again now; the others were still pending there or expired.
	Scheduled int `json:"scheduled"`
	Pending   int `json:"alreadyPending"`
	Expired   int `json:"expired"`
	// Truncated: the range held more than MaxReplay messages; Next is where to continue.
	Truncated bool      `json:"truncated,omitempty"`
	Next      time.Time `json:"next,omitzero"`
	// Repeated: this replay was issued before; this answer is the first one's, nothing was sent.
	Repeated bool `json:"repeated,omitempty"`
}

var replayScript = redis.NewScript(`
local out = {0, 0, 0}
local ep = ARGV[#ARGV - 1]
for i = 1, #ARGV - 4 do
  local m = ARGV[i]
  if redis.call('EXISTS', ARGV[#ARGV - 3] .. m) == 0 then
    out[3] = out[3] + 1
  else
    local sk = ARGV[#ARGV - 2] .. m
    if redis.call('HGET', sk, ep) == 'pending' then
      out[2] = out[2] + 1
    else
      local member = m .. ' ' .. ep
      redis.call('HSET', sk, ep, 'pending')
      redis.call('ZADD', KEYS[1], ARGV[#ARGV], member)
      redis.call('HDEL', KEYS[2], member)
      out[1] = out[1] + 1
    end
  end
end
return out
`)

// Replay sends the messages first enqueued in [since, until) again to ep, each with its
// original webhook-id, oldest first, at most MaxReplay. A message still pending at ep is left
// as it is (it will be delivered anyway); one whose record expired (NOTIFY_RETENTION) is
// skipped. The same replay (endpoint, since, until) issued again within the retention answers
// the first one's result with Repeated set and sends nothing.
func (s *Store) Replay(ctx context.Context, ep *Endpoint, since, until, now time.Time) (Replay, error) {
	since, until = since.UTC().Truncate(time.Millisecond), until.UTC().Truncate(time.Millisecond)
	id := fmt.Sprintf("rpl_%s_%d_%d", ep.Name, since.UnixMilli(), until.UnixMilli())
	res := Replay{ID: id, Endpoint: ep.Name, Since: since, Until: until, Issued: now.UTC()}
	ok, err := s.rdb.SetNX(ctx, keyReplay+id, "{}", s.retention).Result()
	if err != nil {
		return res, fmt.Errorf("replay %s: %w", id, err)
	}
	if !ok {
		raw, err := s.rdb.Get(ctx, keyReplay+id).Bytes()
		if err != nil {
			return res, fmt.Errorf("replay %s: %w", id, err)
		}
		var first Replay
		if err := json.Unmarshal(raw, &first); err != nil || first.ID == "" {
			return res, fmt.Errorf("replay %s is being issued by another request", id)
		}
		first.Repeated = true
		return first, nil
	}
	msgs, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: keyLog, ByScore: true,
		Start: strconv.FormatInt(since.UnixMilli(), 10), Stop: "(" + strconv.FormatInt(until.UnixMilli(), 10),
		Count: MaxReplay + 1}).Result()
	if err != nil {
		s.rdb.Del(ctx, keyReplay+id)
		return res, fmt.Errorf("listing messages to replay: %w", err)
	}
	if len(msgs) > MaxReplay {
		res.Truncated, res.Next = true, time.UnixMilli(int64(msgs[MaxReplay].Score)).UTC()
		msgs = msgs[:MaxReplay]
	}
	for chunk := range slices.Chunk(msgs, 500) {
		keys := make([]string, len(chunk))
		for i, m := range chunk {
			keys[i] = keyMessage + m.Member.(string)
		}
		raws, err := s.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			s.rdb.Del(ctx, keyReplay+id)
			return res, fmt.Errorf("reading messages to replay: %w", err)
		}
		var args []any
		for i, raw := range raws {
			str, _ := raw.(string)
			if str == "" {
				res.Expired++
				continue
			}
			var head struct {
				Type string `json:"type"`
			}
			if json.Unmarshal([]byte(str), &head) != nil || !ep.Wants(head.Type) {
				continue
			}
			args = append(args, chunk[i].Member.(string))
		}
		res.Matched += len(args)
		if len(args) == 0 {
			continue
		}
		args = append(args, keyMessage, keyState, ep.Name, now.UnixMilli())
		counts, err := replayScript.Run(ctx, s.rdb, []string{keyDue, keyTries}, args...).Int64Slice()
		if err != nil {
			s.rdb.Del(ctx, keyReplay+id)
			return res, fmt.Errorf("scheduling the replay: %w", err)
		}
		res.Scheduled += int(counts[0])
		res.Pending += int(counts[1])
		res.Expired += int(counts[2])
	}
	b, _ := json.Marshal(res)
	if err := s.rdb.Set(ctx, keyReplay+id, b, s.retention).Err(); err != nil {
		return res, fmt.Errorf("recording replay %s: %w", id, err)
	}
	return res, nil
}
