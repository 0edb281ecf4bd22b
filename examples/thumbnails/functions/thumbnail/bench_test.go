package main

import (
	"bytes"
	"context"
	"image/jpeg"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/objects"
)

// benchImage is a 1 MP JPEG (1155 × 866) shared by both benchmarks.
func benchImage(b *testing.B) []byte {
	return testJPEG(b, 1155, 866)
}

// BenchmarkBaseline is the work itself, in process: decode the JPEG, scale it to each size with
// the same scaler, encode each thumbnail. No store, no event.
func BenchmarkBaseline(b *testing.B) {
	data := benchImage(b)
	sizes := []int{128, 512}
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		img, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range sizes {
			var buf bytes.Buffer
			if err := jpeg.Encode(&buf, Scale(img, s), &jpeg.Options{Quality: 85}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*len(sizes))/time.Since(start).Seconds(), "thumbnails/s")
	reportPeakRSS(b)
}

// BenchmarkFunction is the function's path for the same image: GET it from an S3 server over
// HTTP (gofakes3 in this process), check its header, decode, scale and encode each size and PUT
// each thumbnail with its metadata. The event carries no ETag, so the "already made" check never
// short-cuts the work.
func BenchmarkFunction(b *testing.B) {
	s := startStore(b)
	f := newFunction(b, s)
	s.upload(b, "uploads/bench.jpg", benchImage(b))
	o := objects.Event{Bucket: bucket, Key: "uploads/bench.jpg", Name: objects.NameCreatedPut}
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if _, err := f.Make(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(f.sizes))/time.Since(start).Seconds(), "thumbnails/s")
	reportPeakRSS(b)
}

// reportPeakRSS reports the process' peak resident set (VmHWM, Linux): an upper bound for the
// benchmark that ran, since the process also holds the test binary and, for BenchmarkFunction,
// the in-memory S3 server.
func reportPeakRSS(b *testing.B) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return
			}
			b.ReportMetric(kb/1024, "peakRSS-MiB")
		}
	}
}
