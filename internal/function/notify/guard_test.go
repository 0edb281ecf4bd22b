package notify

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func TestGuardCheck(t *testing.T) {
	allow, err := ParseNets("10.1.0.0/16, 192.168.7.7")
	if err != nil {
		t.Fatal(err)
	}
	const forbiddenPort = 6379
	strict := &Guard{Allow: allow}
	dev := &Guard{Allow: allow, Loopback: true, Forbidden: func(p uint16) bool { return p == forbiddenPort }}
	tests := map[string]struct {
		guard *Guard
		addr  string
		ok    bool
	}{
		"public v4":                   {strict, "93.184.216.34:443", true},
		"public v6":                   {strict, "[2606:2800:220:1:248:1893:25c8:1946]:443", true},
		"private 10/8":                {strict, "10.0.0.1:80", false},
		"private 172.16/12":           {strict, "172.20.1.1:80", false},
		"private 192.168/16":          {strict, "192.168.1.1:80", false},
		"metadata 169.254.169.254":    {strict, "169.254.169.254:80", false},
		"metadata in CGNAT":           {strict, "100.100.100.200:80", false},
		"metadata v6 (fd00:ec2::254)": {strict, "[fd00:ec2::254]:80", false},
		"v4-mapped private":           {strict, "[::ffff:10.0.0.1]:80", false},
		"NAT64 of a private address":  {strict, "[64:ff9b::a00:1]:80", false},
		"link-local v6":               {strict, "[fe80::1]:80", false},
		"unspecified":                 {strict, "0.0.0.0:80", false},
		"loopback refused":            {strict, "127.0.0.1:8080", false},
		"loopback v6 refused":         {strict, "[::1]:8080", false},
		"allowlisted network":         {strict, "10.1.2.3:443", true},
		"allowlisted address":         {strict, "192.168.7.7:443", true},
		"next to the allowlisted":     {strict, "192.168.7.8:443", false},
		"dev: loopback allowed":       {dev, "127.0.0.1:8080", true},
		"dev: runtime's port refused": {dev, "127.0.0.1:6379", false},
		"dev: runtime's port over v6": {dev, "[::1]:6379", false},
		"dev: private still refused":  {dev, "10.0.0.1:80", false},
		"not an address":              {strict, "example.com:80", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.guard.Check(tc.addr)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrRefusedAddress)) {
				t.Fatalf("Check(%s) = %v, want allowed=%v", tc.addr, err, tc.ok)
			}
		})
	}
	if _, err := ParseNets("10.0.0.0/33"); err == nil {
		t.Error("ParseNets accepted 10.0.0.0/33")
	}
}

// fakeDNS answers every A query with addr, as a rebinding or malicious zone would.
func fakeDNS(t *testing.T, addr netip.Addr) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			if q.Type == dnsmessage.TypeA {
				_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}, dnsmessage.AResource{A: addr.As4()})
			}
			msg, _ := b.Finish()
			_, _ = pc.WriteTo(msg, from)
		}
	}()
	return pc.LocalAddr().String()
}

func guardedClient(g *Guard, dnsServer string) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second, Control: g.Control}
	if dnsServer != "" {
		d.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "udp", dnsServer)
		}}
	}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// TestGuardChecksResolvedNamesAtConnectTime connects through the guard to DNS names: one
// resolving to loopback (localhost) and one a hostile zone resolves to a private address; both
// are refused when the connection is made, whatever the name looked like.
func TestGuardChecksResolvedNamesAtConnectTime(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	port := srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]
	tests := map[string]struct {
		client *http.Client
		url    string
		ok     bool
	}{
		"name resolving to loopback":            {guardedClient(&Guard{}, ""), "http://localhost:" + port, false},
		"name resolving to a private address":   {guardedClient(&Guard{}, fakeDNS(t, netip.MustParseAddr("10.0.0.7"))), "http://hooks.attacker.test:" + port, false},
		"name resolving to the metadata server": {guardedClient(&Guard{}, fakeDNS(t, netip.MustParseAddr("169.254.169.254"))), "http://meta.attacker.test/", false},
		"loopback allowed in development":       {guardedClient(&Guard{Loopback: true}, ""), "http://localhost:" + port, true},
		"the runtime's own port":                {guardedClient(&Guard{Loopback: true, Forbidden: func(p uint16) bool { return port == strconvU(p) }}, ""), srv.URL, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp, err := tc.client.Get(tc.url)
			if err == nil {
				resp.Body.Close()
			}
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrRefusedAddress)) {
				t.Fatalf("GET %s: %v, want allowed=%v", tc.url, err, tc.ok)
			}
		})
	}
}

func strconvU(p uint16) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[len("0.0.0.0:"):]
}

func TestListeningPortsFindsOwnListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ports, err := ListeningPorts(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	own := uint16(l.Addr().(*net.TCPAddr).Port)
	if !ports[own] {
		t.Errorf("ListeningPorts(self) = %v, want it to hold %d", ports, own)
	}
	forbidden := RuntimePorts(6380)
	if !forbidden(6380) {
		t.Error("an extra port is not forbidden")
	}
}
