package projection

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Entry is one read-model entry as readers see it: the projector's fields, without the Projector's
// bookkeeping fields (those starting with _).
type Entry struct {
	Key     string            `json:"key"`
	Version int64             `json:"version"`
	Fields  map[string]string `json:"fields"`
}

// ErrNotFound is returned by Get for a key the model does not hold.
var ErrNotFound = errors.New("read model entry not found")

// Get reads one entry of model in one round trip.
func Get(ctx context.Context, rdb redis.Cmdable, model, key string) (Entry, error) {
	h, err := rdb.HGetAll(ctx, EntryKey(model, key)).Result()
	if err != nil {
		return Entry{}, fmt.Errorf("reading %s/%s: %w", model, key, err)
	}
	if len(h) == 0 {
		return Entry{}, ErrNotFound
	}
	return entryFrom(key, h), nil
}

func entryFrom(key string, h map[string]string) Entry {
	e := Entry{Key: key, Fields: make(map[string]string, len(h))}
	for f, v := range h {
		if f == "_version" {
			e.Version, _ = strconv.ParseInt(v, 10, 64)
			continue
		}
		if strings.HasPrefix(f, "_") {
			continue
		}
		e.Fields[f] = v
	}
	return e
}

// Page is a slice of a model's entries in key order.
type Page struct {
	Entries []Entry `json:"entries"`
	// Next is the cursor for the following page; empty on the last page.
	Next string `json:"next,omitempty"`
}

// List returns up to limit entries whose keys sort after the cursor (empty: from the start),
// in two round trips: the index range, then one pipelined read of the entries.
func List(ctx context.Context, rdb redis.Cmdable, model, after string, limit int) (Page, error) {
	if limit <= 0 {
		return Page{}, errors.New("projection: list limit must be positive")
	}
	start := "-"
	if after != "" {
		start = "(" + after
	}
	keys, err := rdb.ZRangeByLex(ctx, IndexKey(model), &redis.ZRangeBy{Min: start, Max: "+", Count: int64(limit) + 1}).Result()
	if err != nil {
		return Page{}, fmt.Errorf("listing %s: %w", model, err)
	}
	var page Page
	if len(keys) > limit {
		keys = keys[:limit]
		page.Next = keys[limit-1]
	}
	if len(keys) == 0 {
		return page, nil
	}
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.HGetAll(ctx, EntryKey(model, k))
		}
		return nil
	})
	if err != nil {
		return Page{}, fmt.Errorf("reading %s entries: %w", model, err)
	}
	for i, k := range keys {
		if h := cmds[i].Val(); len(h) > 0 {
			page.Entries = append(page.Entries, entryFrom(k, h))
		}
	}
	return page, nil
}

// ModelVersion returns how many events the model has applied (0 for an empty model).
func ModelVersion(ctx context.Context, rdb redis.Cmdable, model string) (int64, error) {
	v, err := rdb.Get(ctx, VersionKey(model)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading %s version: %w", model, err)
	}
	return v, nil
}
