package serving

import (
	"context"
	"net"
	"sync"
)

// PipeListener is a net.Listener whose connections are in-memory pipes dialed from the same
// process: the runtime's own deliveries to a Service skip the loopback network stack, whose
// system calls are most of an event's cost on a small machine.
type PipeListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// NewPipeListener returns a listener that reports addr as its address.
func NewPipeListener(addr net.Addr) *PipeListener {
	return &PipeListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept waits for the next in-process dial.
func (l *PipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; dials fail afterwards.
func (l *PipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr is the address the listener stands in for.
func (l *PipeListener) Addr() net.Addr { return l.addr }

// Dial connects to the listener.
func (l *PipeListener) Dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
