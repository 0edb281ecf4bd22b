package proc

import (
	"os"
	"testing"
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
