package proc

import (
	"os"
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
