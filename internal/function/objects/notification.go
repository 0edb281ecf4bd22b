package objects

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Errors of Parse; each means the notification can never be used, however often it is sent.
var (
	ErrNotJSON      = errors.New("notification is not JSON")
	ErrUnknownShape = errors.New("notification has neither S3 Records nor an EventBridge detail")
	ErrBadEvent     = errors.New("notification holds an unusable event")
	ErrTooMany      = fmt.Errorf("notification has more than %d records", MaxRecords)
)

// notification is the union of the two shapes a store may send: S3 event records (MinIO,
// Ceph RGW, AWS via SNS/SQS/Lambda) and an EventBridge event (AWS via an API destination).
type notification struct {
	Records []record `json:"Records"`

	ID         string       `json:"id"`
	DetailType *string      `json:"detail-type"`
	Source     string       `json:"source"`
	Time       string       `json:"time"`
	Detail     *bridgeEvent `json:"detail"`
}

type record struct {
	EventSource string `json:"eventSource"`
	EventTime   string `json:"eventTime"`
	EventName   string `json:"eventName"`
	S3          struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key         string `json:"key"`
			Size        int64  `json:"size"`
			ETag        string `json:"eTag"`
			VersionID   string `json:"versionId"`
			Sequencer   string `json:"sequencer"`
			ContentType string `json:"contentType"`
		} `json:"object"`
	} `json:"s3"`
}

type bridgeEvent struct {
	Bucket struct {
		Name string `json:"name"`
	} `json:"bucket"`
	Object struct {
		Key       string `json:"key"`
		Size      int64  `json:"size"`
		ETag      string `json:"etag"`
		VersionID string `json:"version-id"`
		Sequencer string `json:"sequencer"`
	} `json:"object"`
	Reason       string `json:"reason"`
	DeletionType string `json:"deletion-type"`
}

// Parse reads the object events of a notification body, in the order the store sent them.
// Every event is checked; one unusable event makes the whole notification unusable, so a
// notification is published whole or not at all.
//
// Object keys of S3 records are URL-encoded by MinIO and AWS (form encoding: a space is '+')
// and decoded here; Ceph RGW's ("eventSource": "ceph:s3") and EventBridge's are taken as sent.
func Parse(body []byte) ([]Event, error) {
	var n notification
	if err := json.Unmarshal(body, &n); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotJSON, err)
	}
	switch {
	case len(n.Records) > MaxRecords:
		return nil, ErrTooMany
	case len(n.Records) > 0:
		out := make([]Event, 0, len(n.Records))
		for i, r := range n.Records {
			e, err := fromRecord(r)
			if err != nil {
				return nil, fmt.Errorf("record %d: %w", i, err)
			}
			out = append(out, e)
		}
		return out, nil
	case n.DetailType != nil && n.Detail != nil:
		e, err := fromBridge(n)
		if err != nil {
			return nil, fmt.Errorf("EventBridge event: %w", err)
		}
		return []Event{e}, nil
	}
	return nil, ErrUnknownShape
}

// storeName reads the store from an eventSource such as "minio:s3".
var storeName = regexp.MustCompile(`^([a-z]{1,20}):s3$`)

func fromRecord(r record) (Event, error) {
	store := "s3"
	if m := storeName.FindStringSubmatch(r.EventSource); m != nil {
		store = m[1]
	}
	key := r.S3.Object.Key
	if store != "ceph" {
		decoded, err := url.QueryUnescape(key)
		if err != nil {
			return Event{}, fmt.Errorf("object key is not URL-encoded: %w", ErrBadEvent)
		}
		key = decoded
	}
	t, err := parseTime(r.EventTime)
	if err != nil {
		return Event{}, fmt.Errorf("eventTime: %w", err)
	}
	e := Event{
		Bucket:      r.S3.Bucket.Name,
		Key:         key,
		Size:        r.S3.Object.Size,
		ETag:        strings.Trim(r.S3.Object.ETag, `"`),
		VersionID:   r.S3.Object.VersionID,
		Sequencer:   r.S3.Object.Sequencer,
		ContentType: r.S3.Object.ContentType,
		Name:        strings.TrimPrefix(r.EventName, "s3:"),
		Time:        t,
		Store:       store,
	}
	return e, e.check()
}

// bridgeNames maps EventBridge detail types of S3 to S3 event names; "Object Created" and
// "Object Deleted" depend on the detail and are mapped in bridgeName.
var bridgeNames = map[string]string{
	"Object Restore Initiated":     "ObjectRestore:Post",
	"Object Restore Completed":     "ObjectRestore:Completed",
	"Object Restore Expired":       "ObjectRestore:Delete",
	"Object Tags Added":            "ObjectTagging:Put",
	"Object Tags Deleted":          "ObjectTagging:Delete",
	"Object ACL Updated":           "ObjectAcl:Put",
	"Object Storage Class Changed": "LifecycleTransition",
	"Object Access Tier Changed":   "IntelligentTiering",
}

// createdReasons maps the reason of an "Object Created" event to the S3 event name.
var createdReasons = map[string]string{
	"PutObject":               NameCreatedPut,
	"POST Object":             NameCreatedPost,
	"CopyObject":              NameCreatedCopy,
	"CompleteMultipartUpload": NameCreatedCompleteMultipartUpload,
}

func bridgeName(detailType string, d *bridgeEvent) (string, error) {
	switch detailType {
	case "Object Created":
		if name, ok := createdReasons[d.Reason]; ok {
			return name, nil
		}
		return "", fmt.Errorf("Object Created with reason %.40q: %w", d.Reason, ErrBadEvent)
	case "Object Deleted":
		prefix := "ObjectRemoved:"
		if d.Reason == "Lifecycle Expiration" {
			prefix = "LifecycleExpiration:"
		}
		if d.DeletionType == "Delete Marker Created" {
			return prefix + "DeleteMarkerCreated", nil
		}
		return prefix + "Delete", nil
	}
	if name, ok := bridgeNames[detailType]; ok {
		return name, nil
	}
	return "", fmt.Errorf("detail-type %.40q is not an S3 object event: %w", detailType, ErrBadEvent)
}

func fromBridge(n notification) (Event, error) {
	if n.Source != "aws.s3" {
		return Event{}, fmt.Errorf("source %.40q is not aws.s3: %w", n.Source, ErrBadEvent)
	}
	name, err := bridgeName(*n.DetailType, n.Detail)
	if err != nil {
		return Event{}, err
	}
	t, err := parseTime(n.Time)
	if err != nil {
		return Event{}, fmt.Errorf("time: %w", err)
	}
	d := n.Detail
	e := Event{
		Bucket:    d.Bucket.Name,
		Key:       d.Object.Key,
		Size:      d.Object.Size,
		ETag:      strings.Trim(d.Object.ETag, `"`),
		VersionID: d.Object.VersionID,
		Sequencer: d.Object.Sequencer,
		Name:      name,
		Time:      t,
		Store:     "eventbridge",
	}
	return e, e.check()
}

func parseTime(v string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%.40q is not an RFC 3339 time: %w", v, ErrBadEvent)
	}
	return t.UTC(), nil
}
