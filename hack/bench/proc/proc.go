// Package proc reads the memory, CPU time and run-queue wait of a process from /proc, for the
// benchmarks under hack/.
package proc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// RSSKiB is the resident set size of process pid in KiB, or -1 if it cannot be read.
func RSSKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			n, err := strconv.Atoi(strings.Fields(line)[1])
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// CPUSeconds is the user and system CPU time process pid used so far, or 0 if it cannot be read.
func CPUSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// RunQueueWait is how long the threads of process pid have, in all, been ready to run but
// waiting for a CPU (the scheduler's run delay, the second field of each thread's schedstat),
// and false if it cannot be read.
func RunQueueWait(pid int) (time.Duration, bool) {
	return runQueueWait("/proc", pid)
}

// runQueueWait is RunQueueWait with the proc filesystem mounted at root.
func runQueueWait(root string, pid int) (time.Duration, bool) {
	dir := root + "/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, false
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread has exited since the listing
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, false
		}
		total += time.Duration(ns)
	}
	return total, true
}
