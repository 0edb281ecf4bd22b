package cli

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"unsafe"
)

func ioctl(fd uintptr, req uintptr, arg *int32) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(arg))); errno != 0 {
		return errno
	}
	return nil
}

// TestBuildProgressIsLiveOnATerminal opens a pseudo-terminal: its end is a terminal, so up
// draws live progress there.
func TestBuildProgressIsLiveOnATerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer ptmx.Close()
	var unlock, n int32
	if err := ioctl(ptmx.Fd(), syscall.TIOCSPTLCK, &unlock); err != nil {
		t.Fatal(err)
	}
	if err := ioctl(ptmx.Fd(), syscall.TIOCGPTN, &n); err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	t.Setenv("TERM", "xterm")
	if !isTerminal(pts) {
		t.Error("isTerminal(a pseudo-terminal) = false")
	}
	t.Setenv("TERM", "dumb")
	if isTerminal(pts) {
		t.Error("isTerminal with TERM=dumb = true")
	}
}
