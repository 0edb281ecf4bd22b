package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkGet compares authenticated read-model GETs (200 with a body, and 304 on a matching
// If-None-Match) with a bare net/http "hello" handler, over loopback TCP in the same run. The
// ratio metric is query req/s divided by hello req/s.
//
//	go test -run '^$' -bench Get ./functions/query
func BenchmarkGet(b *testing.B) {
	fx := newFixture(b)
	fx.apply(b, "1", "SKU-1", 10)
	hello := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	defer hello.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	run := func(b *testing.B, url, token, inm string, want int) float64 {
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				if inm != "" {
					req.Header.Set("If-None-Match", inm)
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					b.Errorf("status %d, want %d", resp.StatusCode, want)
					return
				}
			}
		})
		rate := float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "req/s")
		return rate
	}
	var helloRate float64
	b.Run("hello", func(b *testing.B) { helloRate = run(b, hello.URL, "", "", 200) })
	b.Run("query-200", func(b *testing.B) {
		r := run(b, fx.srv.URL+"/stock/SKU-1", readerToken, "", 200)
		b.ReportMetric(r/helloRate, "query/hello")
	})
	b.Run("query-304", func(b *testing.B) {
		r := run(b, fx.srv.URL+"/stock/SKU-1", readerToken, `"1"`, 304)
		b.ReportMetric(r/helloRate, "query/hello")
	})
}
