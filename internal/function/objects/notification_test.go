package objects

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func readNotification(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "notifications", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseNotifications(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		file string
		want []Event
	}{
		{"minio put: key form-decoded, s3: prefix dropped, content type kept", "minio-put.json", []Event{{
			Bucket: "photos", Key: "uploads/cat on a mat.jpg", Size: 48213, ETag: "0f343b0931126a20f133d67c2b018a3b",
			Sequencer: "187C5A1F3E6F0D2A", ContentType: "image/jpeg", Name: NameCreatedPut,
			Time: at("2026-11-29T13:40:01.123Z"), Store: "minio",
		}}},
		{"aws records: two events in order, %2B stays a plus, etag unquoted", "aws-records-two.json", []Event{{
			Bucket: "photos", Key: "uploads/big+small.png", Size: 7340032, ETag: "d41d8cd98f00b204e9800998ecf8427e-2",
			VersionID: "096fKKXTRTtl3on89fVO.nfljtsv6qko", Sequencer: "0055AED6DCD90281E5",
			Name: NameCreatedCompleteMultipartUpload, Time: at("2026-11-29T13:40:02Z"), Store: "aws",
		}, {
			Bucket: "photos", Key: "uploads/old.png", VersionID: "8wZ2rWvL6WZKzoY3kDbd.9wkEXAMPLE",
			Sequencer: "0055AED6DCD90281E6", Name: NameRemovedDeleteMarkerCreated,
			Time: at("2026-11-29T13:40:03Z"), Store: "aws",
		}}},
		{"ceph put: key taken as sent", "ceph-put.json", []Event{{
			Bucket: "photos", Key: "uploads/100% cotton+wool.jpg", Size: 1024, ETag: "37b51d194a7513e45b56f6524f2d51f2",
			Sequencer: "F4D9C65F6B1D0B3C", Name: NameCreatedPut, Time: at("2026-11-29T13:40:04.512345Z"), Store: "ceph",
		}}},
		{"eventbridge object created: reason PutObject", "eventbridge-created.json", []Event{{
			Bucket: "photos", Key: "uploads/dog.jpg", Size: 5, ETag: "b1946ac92492d2347c6235b4d2611184",
			VersionID: "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", Sequencer: "617f08299329d189",
			Name: NameCreatedPut, Time: at("2026-11-29T13:40:05Z"), Store: "eventbridge",
		}}},
		{"eventbridge object deleted: delete marker", "eventbridge-deleted.json", []Event{{
			Bucket: "photos", Key: "uploads/dog.jpg", ETag: "d41d8cd98f00b204e9800998ecf8427e",
			VersionID: "1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF", Sequencer: "617f0837b476e463",
			Name: NameRemovedDeleteMarkerCreated, Time: at("2026-11-29T13:40:06Z"), Store: "eventbridge",
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(readNotification(t, tt.file))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	minio := string(readNotification(t, "minio-put.json"))
	bridge := string(readNotification(t, "eventbridge-created.json"))
	many := `{"Records":[` + strings.TrimSuffix(strings.Repeat(`{},`, MaxRecords+1), ",") + `]}`
	tests := []struct {
		name string
		body string
		want error
	}{
		{"not JSON", `<xml/>`, ErrNotJSON},
		{"no records, no detail (a test event)", `{"Service":"Amazon S3","Event":"s3:TestEvent"}`, ErrUnknownShape},
		{"empty records", `{"Records":[]}`, ErrUnknownShape},
		{"too many records", many, ErrTooMany},
		{"record without bucket", strings.Replace(minio, `"name":"photos"`, `"name":""`, 1), ErrBadEvent},
		{"record without key", strings.Replace(minio, `"key":"uploads%2Fcat+on+a+mat.jpg"`, `"key":""`, 1), ErrBadEvent},
		{"key not URL-encoded", strings.Replace(minio, `uploads%2Fcat`, `uploads%zzcat`, 1), ErrBadEvent},
		{"key too long", strings.Replace(minio, `uploads%2Fcat`, strings.Repeat("a", MaxKeyBytes), 1), ErrBadEvent},
		{"negative size", strings.Replace(minio, `"size":48213`, `"size":-1`, 1), ErrBadEvent},
		{"size as a string", strings.Replace(minio, `"size":48213`, `"size":"48213"`, 1), ErrNotJSON},
		{"event name with a dot (type injection)", strings.Replace(minio, `"eventName":"s3:ObjectCreated:Put"`, `"eventName":"s3:ObjectCreated.Put"`, 1), ErrBadEvent},
		{"no event time", strings.Replace(minio, `"eventTime":"2026-11-29T13:40:01.123Z"`, `"eventTime":""`, 1), ErrBadEvent},
		{"control character in etag", strings.Replace(minio, `"eTag":"0f34`, `"eTag":"\n0f34`, 1), ErrBadEvent},
		{"eventbridge from another service", strings.Replace(bridge, `"source":"aws.s3"`, `"source":"aws.ec2"`, 1), ErrBadEvent},
		{"eventbridge unknown detail-type", strings.Replace(bridge, `"Object Created"`, `"Async Copy Completion"`, 1), ErrBadEvent},
		{"eventbridge unknown created reason", strings.Replace(bridge, `"reason":"PutObject"`, `"reason":"Teleport"`, 1), ErrBadEvent},
		{"eventbridge without detail", `{"detail-type":"Object Created","source":"aws.s3"}`, ErrUnknownShape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.body))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %+v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestEventIDAndType(t *testing.T) {
	base := Event{Bucket: "photos", Key: "a.jpg", Size: 3, ETag: "e1", Sequencer: "01", Name: NameCreatedPut,
		Time: time.Date(2026, 11, 29, 13, 0, 0, 0, time.UTC), Store: "minio"}
	if got, want := base.Type(), "com.amazonaws.s3.ObjectCreated:Put"; got != want {
		t.Fatalf("Type = %q, want %q", got, want)
	}
	if !strings.HasPrefix(base.Type(), TypeCreatedPrefix) || !base.Created() {
		t.Fatalf("a Put is not a creation: %q", base.Type())
	}
	same := base
	same.Store = "aws" // the same occurrence reported through another shape
	if base.ID() != same.ID() {
		t.Fatal("the same occurrence got two ids")
	}
	tests := []struct {
		name   string
		change func(*Event)
	}{
		{"another key", func(e *Event) { e.Key = "b.jpg" }},
		{"another version", func(e *Event) { e.VersionID = "v2" }},
		{"another etag", func(e *Event) { e.ETag = "e2" }},
		{"another sequencer", func(e *Event) { e.Sequencer = "02" }},
		{"another event", func(e *Event) { e.Name = NameRemovedDelete }},
		{"key and bucket not confused", func(e *Event) { e.Bucket, e.Key = "photosa.jpg", "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := base
			tt.change(&other)
			if other.ID() == base.ID() {
				t.Fatalf("%+v and %+v share id %s", base, other, base.ID())
			}
		})
	}
}
