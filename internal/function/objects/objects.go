// Package objects describes object-storage events — their CloudEvent types and data — and reads
// them from the notifications S3-compatible stores send (S3 records, EventBridge events).
package objects

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// TypePrefix starts the CloudEvent type of every object event: the S3 event name follows, as in
// the CloudEvents adapter for AWS S3 ("com.amazonaws.s3." + eventName).
const TypePrefix = "com.amazonaws.s3."

// TypeCreatedPrefix starts the type of every event of a new object or object version (Put,
// Post, Copy, CompleteMultipartUpload): a Trigger filters on it with a prefix filter.
const TypeCreatedPrefix = TypePrefix + "ObjectCreated:"

// Event names of the S3 notification schema that this package produces itself.
const (
	NameCreatedPut                     = "ObjectCreated:Put"
	NameCreatedPost                    = "ObjectCreated:Post"
	NameCreatedCopy                    = "ObjectCreated:Copy"
	NameCreatedCompleteMultipartUpload = "ObjectCreated:CompleteMultipartUpload"
	NameRemovedDelete                  = "ObjectRemoved:Delete"
	NameRemovedDeleteMarkerCreated     = "ObjectRemoved:DeleteMarkerCreated"
	// NameCreatedListed is knfaas's own: a new object version found by listing (the pull
	// source), where the store does not say how it was written.
	NameCreatedListed = "ObjectCreated:Listed"
)

// StoreListing is the Store of events the pull source found by listing.
const StoreListing = "listing"

// Bounds of what a notification may carry. A notification over any of them is refused whole.
const (
	// MaxRecords bounds the records of one notification. MinIO, Ceph and AWS send one record
	// per notification; a few more are accepted, a flood is not.
	MaxRecords = 100
	// MaxKeyBytes is S3's own limit on an object key (UTF-8 bytes).
	MaxKeyBytes = 1024
	// MaxBucketBytes bounds a bucket name: S3 allows 63, other stores somewhat more.
	MaxBucketBytes = 255
	// maxFieldBytes bounds every other string carried into the event data.
	maxFieldBytes = 1024
)

// Event is the data of an object event: what a consumer needs to fetch the object and to
// recognise the version it is about. Its JSON is the CloudEvent data (application/json).
type Event struct {
	// Bucket and Key name the object; Key is decoded (never URL-encoded).
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	// Size in bytes; 0 for removals.
	Size int64 `json:"size"`
	// ETag without quotes, as the store reports it; empty for removals.
	ETag string `json:"etag,omitempty"`
	// VersionID is the object version, on a versioned bucket.
	VersionID string `json:"versionId,omitempty"`
	// Sequencer orders the events of one key (a hex string; compare equal-length values).
	Sequencer string `json:"sequencer,omitempty"`
	// ContentType of the object, when the store reports it (MinIO does).
	ContentType string `json:"contentType,omitempty"`
	// Name is the S3 event name without the "s3:" prefix: "ObjectCreated:Put".
	Name string `json:"eventName"`
	// Time is when the store says the event happened.
	Time time.Time `json:"eventTime"`
	// Store says which notification shape it came from: "minio", "ceph", "aws" (S3 records
	// sent by AWS), "eventbridge" or "listing" (the pull source).
	Store string `json:"store"`
}

// Type is the CloudEvent type of the event: TypePrefix + Name.
func (e Event) Type() string { return TypePrefix + e.Name }

// Created reports whether the event is about a new object or object version.
func (e Event) Created() bool { return strings.HasPrefix(e.Name, "ObjectCreated:") }

// ID is the CloudEvent id of the event: stable for the same occurrence (a store resending the
// same record gives the same id), different for another version or another event of the key.
func (e Event) ID() string {
	h := sha256.New()
	for _, part := range []string{e.Name, e.Bucket, e.Key, e.VersionID, e.ETag, e.Sequencer, e.Time.UTC().Format(time.RFC3339Nano)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// eventName is what an S3 event name may look like: words separated by colons.
var eventName = regexp.MustCompile(`^[A-Za-z]{1,40}(:[A-Za-z*]{1,40}){0,3}$`)

// check validates the fields of an event parsed from a notification.
func (e Event) check() error {
	switch {
	case !eventName.MatchString(e.Name):
		return fmt.Errorf("event name %.60q: %w", e.Name, ErrBadEvent)
	case e.Bucket == "" || len(e.Bucket) > MaxBucketBytes || !printable(e.Bucket):
		return fmt.Errorf("bucket name %.60q: %w", e.Bucket, ErrBadEvent)
	case e.Key == "" || len(e.Key) > MaxKeyBytes || !utf8.ValidString(e.Key):
		return fmt.Errorf("object key of %d bytes (1 to %d of UTF-8): %w", len(e.Key), MaxKeyBytes, ErrBadEvent)
	case e.Size < 0:
		return fmt.Errorf("object size %d: %w", e.Size, ErrBadEvent)
	}
	for field, v := range map[string]string{"etag": e.ETag, "versionId": e.VersionID, "sequencer": e.Sequencer, "contentType": e.ContentType} {
		if len(v) > maxFieldBytes || !printable(v) {
			return fmt.Errorf("%s %.60q: %w", field, v, ErrBadEvent)
		}
	}
	return nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
