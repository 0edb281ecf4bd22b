package proc

import (
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestReadsOfThisProcess(t *testing.T) {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for i := 0; CPUSeconds(os.Getpid()) == 0 && i < 1e9; i++ {
		buf[i%len(buf)]++
	}
	tests := []struct {
		name string
		pid  int
		rss  func(int) bool
		cpu  func(float64) bool
	}{
		{"this process holds the buffer it touched and used CPU", os.Getpid(), func(k int) bool { return k >= 64<<10 }, func(s float64) bool { return s > 0 }},
		{"a process that does not exist", 1 << 30, func(k int) bool { return k == -1 }, func(s float64) bool { return s == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if k := RSSKiB(tt.pid); !tt.rss(k) {
				t.Errorf("RSSKiB = %d", k)
			}
			if s := CPUSeconds(tt.pid); !tt.cpu(s) {
				t.Errorf("CPUSeconds = %v", s)
			}
		})
	}
	_ = buf[0]
}

// TestRunQueueWait: threads that outnumber the CPUs and all want to run wait for one, and the
// wait shows; a process that does not exist cannot be read.
func TestRunQueueWait(t *testing.T) {
	before, ok := RunQueueWait(os.Getpid())
	if !ok {
		t.Fatal("RunQueueWait of this process: not readable")
	}
	// Twice as many busy threads as CPUs for 300 ms: each waits about half the time.
	prev := runtime.GOMAXPROCS(2 * runtime.NumCPU())
	defer runtime.GOMAXPROCS(prev)
	var wg sync.WaitGroup
	stop := time.Now().Add(300 * time.Millisecond)
	for range 2 * runtime.NumCPU() {
		wg.Go(func() {
			for time.Now().Before(stop) {
			}
		})
	}
	wg.Wait()
	after, ok := RunQueueWait(os.Getpid())
	if !ok {
		t.Fatal("RunQueueWait of this process: not readable")
	}
	if waited := after - before; waited < 50*time.Millisecond {
		t.Errorf("busy threads twice the CPUs for 300 ms waited %s in all, want at least 50ms", waited)
	}
	if _, ok := RunQueueWait(1 << 30); ok {
		t.Error("RunQueueWait of a process that does not exist: readable")
	}
}

// TestRunQueueWaitSumsTheRunDelayOfEveryThread reads a proc tree laid out as Linux lays it out:
// the wait is the sum of the second field (the run delay) of each thread's schedstat, never the
// first (the time on a CPU), and a malformed file makes the whole reading unusable.
func TestRunQueueWaitSumsTheRunDelayOfEveryThread(t *testing.T) {
	tests := []struct {
		name    string
		threads map[string]string // thread id → its schedstat
		want    time.Duration
		ok      bool
	}{
		{name: "one thread", threads: map[string]string{"7": "900000 1500 12\n"}, want: 1500, ok: true},
		{name: "three threads", threads: map[string]string{"7": "900000 1500 12\n", "8": "5 2000000 3\n", "9": "0 0 0\n"}, want: 2001500, ok: true},
		{name: "a field missing", threads: map[string]string{"7": "900000\n"}},
		{name: "not a number", threads: map[string]string{"7": "900000 many 12\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for tid, stat := range tc.threads {
				dir := filepath.Join(root, "42", "task", tid)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "schedstat"), []byte(stat), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, ok := runQueueWait(root, 42)
			if ok != tc.ok || got != tc.want {
				t.Errorf("runQueueWait = %s, %t; want %s, %t", got, ok, tc.want, tc.ok)
			}
		})
	}
}
