package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/httpauth"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

const (
	readerToken     = "stock-reader-token-0001"
	purchasingToken = "purchasing-token-000001"
	outsiderToken   = "outsider-token-00000001"
)

type fixture struct {
	srv       *httptest.Server
	rdb       *redis.Client
	projector *projection.Projector
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	rs := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), PoolSize: 64})
	t.Cleanup(func() { _ = rdb.Close() })
	auth, err := httpauth.New(context.Background(), httpauth.Config{Tokens: []httpauth.Token{
		{Name: "dashboard", Secret: readerToken, Groups: []string{"stock-readers"}},
		{Name: "purchasing", Secret: purchasingToken, Groups: []string{"purchasing"}},
		{Name: "outsider", Secret: outsiderToken, Groups: []string{"marketing"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	f := New()
	if err := f.start(Config{Models: "stock:stock-readers,purchasing;purchase-orders:purchasing", DefaultLimit: 2, MaxLimit: 10}, rdb, auth); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(f.Handle))
	t.Cleanup(srv.Close)
	projector, err := projection.New(rdb, "stock-projector", "stock", projection.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, rdb: rdb, projector: projector}
}

func (fx *fixture) apply(t testing.TB, id, sku string, n int64) {
	t.Helper()
	_, err := fx.projector.Apply(context.Background(), projection.EventRef{Source: "test", ID: id}, projection.Change{Key: sku, Ops: []projection.Op{projection.Incr("berlin-1", n)}})
	if err != nil {
		t.Fatal(err)
	}
}

func (fx *fixture) get(t testing.TB, path, token, ifNoneMatch string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fx.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ifNoneMatch != "" {
		req.Header.Set("If-None-Match", ifNoneMatch)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestStatusCodes(t *testing.T) {
	fx := newFixture(t)
	fx.apply(t, "1", "SKU-1", 10)
	cases := []struct {
		name, path, token string
		want              int
	}{
		{name: "entry", path: "/stock/SKU-1", token: readerToken, want: 200},
		{name: "second group", path: "/stock/SKU-1", token: purchasingToken, want: 200},
		{name: "no credentials", path: "/stock/SKU-1", want: 401},
		{name: "unknown token", path: "/stock/SKU-1", token: "not-a-token-we-know-of", want: 401},
		{name: "no access to model", path: "/stock/SKU-1", token: outsiderToken, want: 403},
		{name: "no access to other model", path: "/purchase-orders/PO-1", token: readerToken, want: 403},
		{name: "unknown model", path: "/prices/SKU-1", token: readerToken, want: 404},
		{name: "unknown model unauthenticated", path: "/prices/SKU-1", want: 401},
		{name: "unknown key", path: "/stock/SKU-2", token: readerToken, want: 404},
		{name: "malformed key", path: "/stock/SKU%2F1", token: readerToken, want: 400},
		{name: "malformed key with space", path: "/stock/SKU%201", token: readerToken, want: 400},
		{name: "list", path: "/stock", token: readerToken, want: 200},
		{name: "list bad limit", path: "/stock?limit=0", token: readerToken, want: 400},
		{name: "list limit over max", path: "/stock?limit=11", token: readerToken, want: 400},
		{name: "list bad cursor", path: "/stock?after=%2F", token: readerToken, want: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := fx.get(t, tc.path, tc.token, "")
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.want, body)
			}
			if tc.want == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without a WWW-Authenticate challenge")
			}
		})
	}
}

func TestETagRevalidation(t *testing.T) {
	fx := newFixture(t)
	fx.apply(t, "1", "SKU-1", 10)
	resp, body := fx.get(t, "/stock/SKU-1", readerToken, "")
	etag := resp.Header.Get("ETag")
	var e projection.Entry
	if err := json.Unmarshal(body, &e); err != nil || e.Fields["berlin-1"] != "10" || etag != `"1"` {
		t.Fatalf("entry %s, etag %s, %v", body, etag, err)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "private, no-cache" {
		t.Fatalf("Cache-Control = %q", cc)
	}
	resp, body = fx.get(t, "/stock/SKU-1", readerToken, etag)
	if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
		t.Fatalf("revalidation: %d %q, want 304 without a body", resp.StatusCode, body)
	}
	fx.apply(t, "2", "SKU-1", -3)
	resp, body = fx.get(t, "/stock/SKU-1", readerToken, etag)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") != `"2"` {
		t.Fatalf("after a change: %d etag %s %s", resp.StatusCode, resp.Header.Get("ETag"), body)
	}
	fx.apply(t, "2", "SKU-1", -3) // a duplicate does not change the version
	if resp, _ := fx.get(t, "/stock/SKU-1", readerToken, `"2"`); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("after a duplicate: %d, want 304", resp.StatusCode)
	}
}

func TestListPagination(t *testing.T) {
	fx := newFixture(t)
	for i := range 5 {
		fx.apply(t, strconv.Itoa(i), "SKU-"+strconv.Itoa(i), int64(i))
	}
	var keys []string
	path := "/stock"
	var firstETag string
	for range 10 {
		resp, body := fx.get(t, path, readerToken, "")
		if firstETag == "" {
			firstETag = resp.Header.Get("ETag")
		}
		var p projection.Page
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Entries {
			keys = append(keys, e.Key)
		}
		if p.Next == "" {
			break
		}
		path = "/stock?after=" + p.Next
	}
	if len(keys) != 5 || keys[0] != "SKU-0" || keys[4] != "SKU-4" {
		t.Fatalf("paged keys = %v", keys)
	}
	if resp, _ := fx.get(t, "/stock", readerToken, firstETag); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("list revalidation: %d", resp.StatusCode)
	}
	fx.apply(t, "9", "SKU-9", 1)
	if resp, _ := fx.get(t, "/stock", readerToken, firstETag); resp.StatusCode != http.StatusOK {
		t.Fatalf("list after change: %d", resp.StatusCode)
	}
}

func TestParseModels(t *testing.T) {
	cases := map[string]struct {
		in   string
		want int
		ok   bool
	}{
		"two models":      {in: "stock:a,b; purchase-orders:*", want: 2, ok: true},
		"empty":           {in: " ; ", ok: false},
		"no groups":       {in: "stock:", ok: false},
		"health reserved": {in: "health:*", ok: false},
		"uppercase":       {in: "Stock:*", ok: false},
		"duplicate":       {in: "stock:a;stock:b", ok: false},
		"no colon":        {in: "stock", ok: false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			m, err := ParseModels(tc.in)
			if (err == nil) != tc.ok || len(m) != tc.want {
				t.Fatalf("ParseModels(%q) = %v, %v", tc.in, m, err)
			}
		})
	}
}

func FuzzParseModels(f *testing.F) {
	f.Add("stock:stock-readers,purchasing;purchase-orders:purchasing")
	f.Add("health:*;;x:")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseModels(s)
		if err != nil {
			return
		}
		for name, groups := range m {
			if !projection.ValidName(name) || name == "health" || len(groups) == 0 {
				t.Fatalf("accepted model %q with groups %v", name, groups)
			}
		}
	})
}
