package embedded

import (
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knfaas/knfaas/internal/runtime/broker"
)

// The lines a run prints as it starts, one per object; Describe prints the same lines.

// serviceLine is "service ns/name <public URL>  (<import path>; scale…)"; hostPort is the
// public listener's, cached says the binary came from the build cache.
func serviceLine(p *ServicePlan, hostPort string, cached bool) string {
	public := fmt.Sprintf("http://%s.%s.localhost:%s", p.Spec.Name, p.Spec.Namespace, portOf(hostPort))
	if p.ClusterLocal {
		public = "cluster-local, not public"
	}
	suffix := ""
	if cached {
		suffix = ", cached build"
	}
	return fmt.Sprintf("service %-28s %s  (%s; scale %d..%d, concurrency %s, timeout %s%s)",
		p.Key(), public, p.ImportPath, p.Spec.MinScale, p.Spec.EffectiveMaxScale(), concurrencyText(p.Spec.ContainerConcurrency), p.Spec.Timeout, suffix)
}

func brokerLine(b *BrokerPlan, hostPort string) string {
	return fmt.Sprintf("broker  %-28s %s (events up to %d bytes)", b.Namespace+"/"+b.Name, "http://"+hostPort+broker.Path(b.Namespace, b.Name), b.MaxEventBytes)
}

func triggerLine(t *TriggerPlan) string {
	dl := "no dead-letter sink: failed events are dropped"
	if t.Consumer.DeadLetter != nil {
		dl = "dead letters → " + t.Consumer.DeadLetter.URL.String()
	}
	return fmt.Sprintf("trigger %-28s %s → %s (%s; retry %d)", t.Consumer.Key(), t.filterText(), t.Subscriber, dl, t.Consumer.Retry.RetryMax)
}

func pingLine(p *PingPlan) string {
	tz := p.Timezone
	if tz == "" {
		tz = "local time"
	}
	return fmt.Sprintf("ping    %-28s %q (%s) → %s", p.Namespace+"/"+p.Name, p.Schedule, tz, p.SinkName)
}

// filterText is "all events", "type=…,source=…" for the attributes filter, or "<n> filters".
func (t *TriggerPlan) filterText() string {
	if len(t.Filters) > 0 {
		return fmt.Sprintf("%d filters", len(t.Filters))
	}
	if t.Filter != nil && len(t.Filter.Attributes) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(t.Filter.Attributes)) {
			parts = append(parts, k+"="+t.Filter.Attributes[k])
		}
		return strings.Join(parts, ",")
	}
	return "all events"
}

func concurrencyText(cc int) string {
	if cc == 0 {
		return "unlimited"
	}
	return strconv.Itoa(cc)
}

// portOf is the port of host:port, or "<port>" when it is not known yet (port 0).
func portOf(hostPort string) string {
	_, p, _ := net.SplitHostPort(hostPort)
	if p == "" || p == "0" {
		return "<port>"
	}
	return p
}

// redactURL hides the credentials of a URL.
func redactURL(raw string) string {
	if i := strings.Index(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "***" + raw[i:]
		}
	}
	return raw
}

// Describe prints the plan as a run would start it on the public listener at hostPort: the
// start-up line of every object, what each gets besides, and the notes. The order is stable.
func (p *Plan) Describe(w io.Writer, hostPort string) {
	for i := range p.Services {
		s := &p.Services[i]
		fmt.Fprintln(w, serviceLine(s, hostPort, false))
		fmt.Fprintf(w, "  initial scale %d, idle after %s, ready when %s answers\n", s.Spec.InitialScale, s.Spec.IdleTimeout, readinessText(s.Spec.ReadinessPath))
		var names []string
		for _, kv := range s.Spec.Env {
			k, _, _ := strings.Cut(kv, "=")
			names = append(names, k)
		}
		fmt.Fprintf(w, "  env %s\n", strings.Join(names, ", "))
		for _, m := range s.Mounts {
			fmt.Fprintf(w, "  volume %s → projected into the run's directory\n", m)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	for i := range p.Brokers {
		fmt.Fprintln(w, brokerLine(&p.Brokers[i], hostPort))
	}
	for i := range p.Triggers {
		t := &p.Triggers[i]
		fmt.Fprintln(w, triggerLine(t))
		if d := t.Delivery; d != nil && t.Consumer.Retry.RetryMax > 0 {
			policy, delay := "exponential", "(Knative's default)"
			if d.BackoffPolicy != nil {
				policy = string(*d.BackoffPolicy)
			}
			if d.BackoffDelay != nil {
				delay = *d.BackoffDelay
			}
			fmt.Fprintf(w, "  backoff %s from %s\n", policy, delay)
		}
	}
	for i := range p.Pings {
		fmt.Fprintln(w, pingLine(&p.Pings[i]))
	}
	d := p.DeadLetters
	fmt.Fprintf(w, "parked events go to the dead-letter store: max-letters %s, max-bytes %s, max-age %s\n",
		orDefault(d.MaxLetters, strconv.Itoa), orDefault(d.MaxBytes, func(n int64) string { return strconv.FormatInt(n, 10) }), orDefault(d.MaxAge, time.Duration.String))
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func readinessText(path string) string {
	if path == "" {
		return "its port"
	}
	return "GET " + path
}

// orDefault formats v, or says "default" for the zero value.
func orDefault[T comparable](v T, format func(T) string) string {
	var zero T
	if v == zero {
		return "default"
	}
	return format(v)
}
