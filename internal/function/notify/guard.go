package notify

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrRefusedAddress is what a connection to a refused address fails with.
var ErrRefusedAddress = errors.New("refused address")

// specialNets are never delivered to unless allowlisted: private, shared (CGNAT, where cloud
// metadata services also live), link-local (169.254.169.254, the usual metadata address),
// multicast, documentation, benchmark and reserved ranges, and NAT64 (which can embed any of
// them).
var specialNets = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
		"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
		"198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
		"fc00::/7", "fe80::/10", "ff00::/8"} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Guard decides, on every connection (after DNS resolution, so a name that resolves anew to
// another address is checked again), whether a delivery may connect to an address.
type Guard struct {
	// Allow lists networks that may be reached although they are special (a private network
	// holding legitimate receivers).
	Allow []netip.Prefix
	// Loopback allows loopback addresses (development under knfaas up), except the ports
	// Forbidden names.
	Loopback bool
	// Forbidden reports loopback ports that are never reached, allowlisted or not: the
	// runtime's own listeners (ingress, Broker, Redis) and its functions'.
	Forbidden func(port uint16) bool
}

// Check returns nil when a connection to addr ("ip:port") is allowed.
func (g *Guard) Check(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address and port", ErrRefusedAddress, addr)
	}
	ip := ap.Addr().Unmap().WithZone("")
	if ip.IsLoopback() && g.Forbidden != nil && g.Forbidden(ap.Port()) {
		return fmt.Errorf("%w: %s is the runtime's own", ErrRefusedAddress, addr)
	}
	for _, p := range g.Allow {
		if p.Contains(ip) {
			return nil
		}
	}
	if ip.IsLoopback() && g.Loopback {
		return nil
	}
	for _, p := range specialNets {
		if p.Contains(ip) {
			return fmt.Errorf("%w: %s is in %s (loopback, private, link-local, metadata or reserved); allowlist it with NOTIFY_ALLOW_NETS if it is meant", ErrRefusedAddress, addr, p)
		}
	}
	if ip.IsMulticast() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.IsPrivate() {
		return fmt.Errorf("%w: %s is not a public unicast address", ErrRefusedAddress, addr)
	}
	return nil
}

// Control is a net.Dialer Control hook running Check on the address being connected to.
func (g *Guard) Control(_, address string, _ syscall.RawConn) error { return g.Check(address) }

// ParseNets reads a comma-separated list of CIDR prefixes or single addresses.
func ParseNets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(part)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR prefix nor an IP address", part)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// ListeningPorts returns the TCP ports that process pid listens on (Linux, from /proc): the
// inodes of its socket descriptors matched against the kernel's listening sockets.
func ListeningPorts(pid int) (map[uint16]bool, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	ports := map[uint16]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ... inode (field 9); st 0A is LISTEN.
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil {
				ports[uint16(p)] = true
			}
		}
		f.Close()
	}
	return ports, nil
}

// ChildrenOf returns the ids of the processes whose parent is pid (Linux, from /proc).
func ChildrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses: split after the last ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// RuntimePorts returns a Guard.Forbidden for a function run by knfaas up: the loopback ports
// its parent (the runtime: ingress, Broker, embedded Redis) and its siblings (the other
// functions) listen on, plus extra (a Redis server given by REDIS_URL), read again at most
// once a second. When /proc cannot be read, every loopback port is forbidden.
func RuntimePorts(extra ...uint16) func(uint16) bool {
	var (
		mu      sync.Mutex
		ports   map[uint16]bool
		readAt  time.Time
		readErr error
	)
	parent := os.Getppid()
	return func(port uint16) bool {
		for _, p := range extra {
			if p == port {
				return true
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if time.Since(readAt) > time.Second {
			readAt = time.Now()
			ports, readErr = ListeningPorts(parent)
			if readErr == nil {
				// The siblings include this function itself.
				for _, sibling := range ChildrenOf(parent) {
					if p, err := ListeningPorts(sibling); err == nil {
						for k := range p {
							ports[k] = true
						}
					}
				}
			}
		}
		return readErr != nil || ports[port]
	}
}

// HostPort returns the port of a URL's or address's "host:port", 0 when there is none.
func HostPort(hostport string) uint16 {
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(p, 10, 16)
	return uint16(n)
}
