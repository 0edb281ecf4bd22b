package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// TimelineEntry is one line of an instance's history: an event in, a command out, a timer, or a
// state change. Seq is the instance version the transition produced.
type TimelineEntry struct {
	Seq    int64  `json:"seq"`
	At     int64  `json:"at"`
	Kind   string `json:"kind"`
	ID     string `json:"id,omitempty"`
	Type   string `json:"type,omitempty"`
	Source string `json:"source,omitempty"`
	Step   string `json:"step,omitempty"`
	Actor  string `json:"actor,omitempty"`
	Note   string `json:"note,omitempty"`
	Due    int64  `json:"due,omitempty"`
	Data   string `json:"data,omitempty"`
}

// Instance is a process instance as stored, with its timeline.
type Instance struct {
	ID       string
	Process  string
	Status   string
	Step     string
	Version  int64
	Created  time.Time
	Updated  time.Time
	Deadline string
	Timeline []TimelineEntry
}

// ErrNotFound is returned for an instance or task that does not exist.
var ErrNotFound = errors.New("not found")

// ReadInstance loads one instance and its timeline (one pipeline).
func ReadInstance(ctx context.Context, rdb redis.Cmdable, id string) (*Instance, error) {
	var h *redis.MapStringStringCmd
	var tl *redis.StringSliceCmd
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		h = p.HGetAll(ctx, KeyInstancePrefix+id)
		tl = p.LRange(ctx, KeyTimelinePrefix+id, 0, -1)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading process instance %s: %w", id, err)
	}
	f := h.Val()
	if len(f) == 0 {
		return nil, fmt.Errorf("process instance %s: %w", id, ErrNotFound)
	}
	in := &Instance{ID: id, Process: f["process"], Status: f["status"], Deadline: f["deadline"]}
	in.Version, _ = strconv.ParseInt(f["seq"], 10, 64)
	in.Created = msTime(f["created"])
	in.Updated = msTime(f["updated"])
	var def compiledDef
	if json.Unmarshal([]byte(f["def"]), &def) == nil {
		idx, _ := strconv.Atoi(f["idx"])
		if in.Status == "running" && idx >= 1 && idx <= len(def.Steps) {
			in.Step = def.Steps[idx-1].Name
		}
		var done []int
		cidx, _ := strconv.Atoi(f["cidx"])
		if json.Unmarshal([]byte(f["done"]), &done) == nil && in.Status == "compensating" && cidx >= 1 && cidx <= len(done) {
			in.Step = def.Steps[done[cidx-1]-1].Name + " (compensating)"
		}
	}
	for _, raw := range tl.Val() {
		var e TimelineEntry
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			return nil, fmt.Errorf("decoding timeline of %s: %w", id, err)
		}
		in.Timeline = append(in.Timeline, e)
	}
	return in, nil
}

// ListInstances returns up to limit instances, most recently updated first (without timelines).
func ListInstances(ctx context.Context, rdb redis.Cmdable, limit int64) ([]Instance, error) {
	ids, err := rdb.ZRevRange(ctx, KeyInstances, 0, limit-1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing process instances: %w", err)
	}
	cmds := make([]*redis.SliceCmd, len(ids))
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, KeyInstancePrefix+id, "process", "status", "seq", "updated")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading process instances: %w", err)
	}
	out := make([]Instance, 0, len(ids))
	for i, id := range ids {
		v := cmds[i].Val()
		if v[0] == nil {
			continue // expired since the index was read
		}
		in := Instance{ID: id, Process: str(v[0]), Status: str(v[1]), Updated: msTime(str(v[3]))}
		in.Version, _ = strconv.ParseInt(str(v[2]), 10, 64)
		out = append(out, in)
	}
	return out, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func msTime(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
