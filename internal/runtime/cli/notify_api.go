package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// EnvNotifyToken names the endpoint API's bearer token for the commands that change endpoints,
// as --token does.
const EnvNotifyToken = "KNFAAS_NOTIFY_TOKEN"

// notifyAPISecret is the Secret (namespace knfaas) whose key token is the API's bearer token.
const notifyAPISecret = "notify-api"

// apiFlags find the notify function's endpoint API and its token.
type apiFlags struct {
	run   runFlags
	api   string
	token string
}

func (f *apiFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.api, "api", "", "base URL of the notify function (e.g. http://localhost:8080 through a port-forward); default: the notify Service of the running knfaas up")
	cmd.Flags().StringVar(&f.token, "token", "", "bearer token of the endpoint API (default: $"+EnvNotifyToken+", else the development token of the running knfaas up)")
	addRunFlags(cmd, &f.run)
}

// base is the URL of the API's endpoints collection.
func (f *apiFlags) base() (string, error) {
	if f.api != "" {
		return strings.TrimSuffix(f.api, "/") + notify.APIPrefix, nil
	}
	return f.run.serviceURL("knfaas/notify", notify.APIPrefix)
}

// bearer is --token, else KNFAAS_NOTIFY_TOKEN, else the development secret knfaas up generated
// for the notify-api Secret's placeholder.
func (f *apiFlags) bearer() (string, error) {
	if f.token != "" {
		return f.token, nil
	}
	if v := os.Getenv(EnvNotifyToken); v != "" {
		return v, nil
	}
	dir := f.run.stateDir
	if dir == "" {
		d, err := embedded.DefaultStateDir()
		if err != nil {
			return "", err
		}
		dir = d
	}
	path := filepath.Join(dir, embedded.DevSecretsFile)
	secrets, err := embedded.ReadDevSecrets(path)
	if err != nil {
		return "", err
	}
	for _, s := range secrets.Secrets {
		if s.Namespace == "knfaas" && s.Secret == notifyAPISecret && s.Key == "token" {
			return s.Value, nil
		}
	}
	return "", fmt.Errorf("no token: pass --token or set %s (the token key of Secret knfaas/%s), or start knfaas up once (it generates a development token in %s)",
		EnvNotifyToken, notifyAPISecret, path)
}

// call sends one API request (body marshalled as JSON when not nil) and decodes the answer
// into out. An error answer becomes an error naming the status and each bad field.
func (f *apiFlags) call(cmd *cobra.Command, method, path string, body, out any) error {
	base, err := f.base()
	if err != nil {
		return err
	}
	token, err := f.bearer()
	if err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(cmd.Context(), method, base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("notify endpoint API: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("notify endpoint API: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error  string              `json:"error"`
			Fields []notify.FieldError `json:"fields"`
		}
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			return fmt.Errorf("notify endpoint API answered %s: %s", resp.Status, strings.TrimSpace(string(raw)))
		}
		if len(e.Fields) == 0 {
			return fmt.Errorf("notify endpoint API answered %s: %s", resp.Status, e.Error)
		}
		var lines []string
		for _, fe := range e.Fields {
			lines = append(lines, "  "+fe.Field+": "+fe.Message)
		}
		return fmt.Errorf("notify endpoint API answered %s:\n%s", resp.Status, strings.Join(lines, "\n"))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("notify endpoint API: decoding the answer: %w", err)
	}
	return nil
}

// endpointFlags are the settings of an endpoint on the command line.
type endpointFlags struct {
	url         string
	types       []string
	headers     []string
	timeout     string
	concurrency int
	rateLimit   int
	secret      string
}

func (e *endpointFlags) add(cmd *cobra.Command, create bool) {
	fl := cmd.Flags()
	fl.StringVar(&e.url, "url", "", "where deliveries are POSTed (http or https)")
	fl.StringSliceVar(&e.types, "type", nil, "event type it wants: exact, a prefix ending in *, or *; repeat or comma-separate")
	fl.StringArrayVar(&e.headers, "header", nil, "header added to every delivery, Name=value; repeat (update: replaces them all)")
	fl.StringVar(&e.timeout, "timeout", "", "bound of one attempt, a Go duration up to 2m (default 15s)")
	fl.IntVar(&e.concurrency, "concurrency", 0, "attempts in flight at once, 1 to 256 (default 8)")
	fl.IntVar(&e.rateLimit, "rate-limit", 0, "attempts per second across all instances (0: no cap)")
	if create {
		fl.StringVar(&e.secret, "secret", "", "its Standard Webhooks secret, whsec_… (default: a new one, printed once)")
	}
}

// apply sets the flags given on cmd onto q (all of them on a create).
func (e *endpointFlags) apply(cmd *cobra.Command, q *notify.EndpointRequest) error {
	changed := cmd.Flags().Changed
	if changed("url") {
		q.URL = e.url
	}
	if changed("type") {
		q.Types = e.types
	}
	if changed("header") {
		q.Headers = map[string]string{}
		for _, h := range e.headers {
			k, v, ok := strings.Cut(h, "=")
			if !ok || k == "" {
				return fmt.Errorf("--header %q: want Name=value", h)
			}
			q.Headers[k] = v
		}
	}
	if changed("timeout") {
		q.Timeout = e.timeout
	}
	if changed("concurrency") {
		q.Concurrency = e.concurrency
	}
	if changed("rate-limit") {
		q.RateLimit = e.rateLimit
	}
	if changed("secret") {
		q.Secret = e.secret
	}
	return nil
}

// printEndpointView writes an endpoint the API answered; its secret, when it carries one, is
// printed once with a reminder to store it.
func printEndpointView(w io.Writer, output, verb string, v notify.EndpointView) error {
	if structured(output) {
		return writeDocument(w, output, v)
	}
	fmt.Fprintf(w, "endpoint %s %s: %s, types %s", v.Name, verb, v.URL, strings.Join(v.Types, ", "))
	if v.Paused {
		fmt.Fprint(w, " (disabled: its messages wait)")
	}
	fmt.Fprintln(w)
	if v.Secrets == 2 {
		fmt.Fprintf(w, "the previous secret signs beside the new one until %s\n", v.PreviousUntil.UTC().Format(time.RFC3339))
	}
	if v.Secret != "" {
		fmt.Fprintf(w, "secret: %s\n(shown once: give it to the receiver, which verifies the webhook-signature with it)\n", v.Secret)
	}
	return nil
}

func newNotifyEndpointCreateCommand() *cobra.Command {
	var (
		output string
		api    apiFlags
		ep     endpointFlags
	)
	cmd := &cobra.Command{
		Use:   "create <name> --url URL --type T [--type T…]",
		Short: "Create an endpoint through the notify API (stored in Redis beside the ConfigMap's)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			q := notify.EndpointRequest{Name: args[0]}
			if err := ep.apply(cmd, &q); err != nil {
				return err
			}
			var v notify.EndpointView
			if err := api.call(cmd, http.MethodPost, "", q, &v); err != nil {
				return err
			}
			return printEndpointView(cmd.OutOrStdout(), output, "created", v)
		},
	}
	ep.add(cmd, true)
	api.add(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

func newNotifyEndpointUpdateCommand() *cobra.Command {
	var (
		output string
		api    apiFlags
		ep     endpointFlags
	)
	cmd := &cobra.Command{
		Use:   "update <name> [--url URL] [--type T…] [--header N=v…] [--timeout D] [--concurrency N] [--rate-limit N]",
		Short: "Change an API endpoint's settings (the flags given; the others stay); its secret changes by rotate",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var cur notify.EndpointView
			if err := api.call(cmd, http.MethodGet, "/"+args[0], nil, &cur); err != nil {
				return err
			}
			q := notify.EndpointRequest{URL: cur.URL, Types: cur.Types, Headers: cur.Headers, Timeout: cur.Timeout,
				Concurrency: cur.Concurrency, RateLimit: cur.RateLimit}
			if err := ep.apply(cmd, &q); err != nil {
				return err
			}
			var v notify.EndpointView
			if err := api.call(cmd, http.MethodPut, "/"+args[0], q, &v); err != nil {
				return err
			}
			return printEndpointView(cmd.OutOrStdout(), output, "updated", v)
		},
	}
	ep.add(cmd, false)
	api.add(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

// newNotifyEndpointPauseCommand is disable (pause=true) or enable.
func newNotifyEndpointPauseCommand(pause bool) *cobra.Command {
	var (
		output string
		api    apiFlags
	)
	use, short, action := "enable <name>", "Resume an endpoint disabled through the API: its waiting messages are sent now (also clears a 410 mark)", "enable"
	if pause {
		use, short, action = "disable <name>", "Disable an API endpoint: nothing is sent to it, its messages wait until it is enabled", "disable"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var res struct {
				Name    string `json:"name"`
				Paused  bool   `json:"paused"`
				Resumed int    `json:"resumed"`
			}
			if err := api.call(cmd, http.MethodPost, "/"+args[0]+"/"+action, nil, &res); err != nil {
				return err
			}
			if structured(output) {
				return writeDocument(cmd.OutOrStdout(), output, res)
			}
			if pause {
				fmt.Fprintf(cmd.OutOrStdout(), "endpoint %s disabled: nothing is sent to it; its messages wait (knfaas notify endpoints enable %s)\n", res.Name, res.Name)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "endpoint %s enabled: %d waiting messages due now\n", res.Name, res.Resumed)
			return nil
		},
	}
	api.add(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

func newNotifyEndpointRotateCommand() *cobra.Command {
	var (
		output string
		api    apiFlags
		q      notify.RotateRequest
	)
	cmd := &cobra.Command{
		Use:   "rotate <name> [--secret whsec_…] [--overlap 24h]",
		Short: "Rotate an API endpoint's secret: the new one signs now, the previous one beside it for the overlap, then stops",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var v notify.EndpointView
			if err := api.call(cmd, http.MethodPost, "/"+args[0]+"/rotate", q, &v); err != nil {
				return err
			}
			return printEndpointView(cmd.OutOrStdout(), output, "rotated", v)
		},
	}
	cmd.Flags().StringVar(&q.Secret, "secret", "", "the new secret, whsec_… (default: a new one, printed once)")
	cmd.Flags().StringVar(&q.Overlap, "overlap", "", "how long the previous secret keeps signing, a Go duration up to 168h; 0s stops it now (default 24h)")
	api.add(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

// parseSince reads a replay bound: an RFC 3339 time, or a Go duration meaning that long ago.
func parseSince(flag, v string, now time.Time) (string, error) {
	if v == "" {
		return "", nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d).UTC().Format(time.RFC3339Nano), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return "", fmt.Errorf("%s %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration ago (90m)", flag, v)
	}
	return t.UTC().Format(time.RFC3339Nano), nil
}

func newNotifyReplayCommand() *cobra.Command {
	var (
		output              string
		api                 apiFlags
		endpoint            string
		sinceFlag, untilFlg string
	)
	cmd := &cobra.Command{
		Use:   "replay --endpoint NAME --since T [--until T]",
		Short: "Send the messages of a time range again to one endpoint, with their original webhook-ids",
		Long: `Send every message first enqueued in [since, until) whose type the endpoint wants again to that
endpoint, with its original webhook-id, oldest first, at most 10000 (the answer says where to
continue when the range holds more). A message still pending there is left as it is. Issuing
the same replay (endpoint, since, until) again sends nothing and prints the first one's result
marked repeated. T is an RFC 3339 time or a duration ago (90m); until defaults to now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if endpoint == "" || sinceFlag == "" {
				return errors.New("--endpoint and --since are required")
			}
			now := time.Now()
			since, err := parseSince("--since", sinceFlag, now)
			if err != nil {
				return err
			}
			until, err := parseSince("--until", untilFlg, now)
			if err != nil {
				return err
			}
			var res notify.Replay
			if err := api.call(cmd, http.MethodPost, "/"+endpoint+"/replay", notify.ReplayRequest{Since: since, Until: until}, &res); err != nil {
				return err
			}
			return printReplay(cmd.OutOrStdout(), output, res)
		},
	}
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "the endpoint to send to")
	cmd.Flags().StringVar(&sinceFlag, "since", "", "start of the range (inclusive): RFC 3339 or a duration ago")
	cmd.Flags().StringVar(&untilFlg, "until", "", "end of the range (exclusive): RFC 3339 or a duration ago (default now)")
	api.add(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

func printReplay(w io.Writer, output string, r notify.Replay) error {
	if structured(output) {
		return writeDocument(w, output, r)
	}
	if r.Repeated {
		fmt.Fprintf(w, "replay %s was issued at %s already: nothing sent now; its result:\n", r.ID, r.Issued.UTC().Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "endpoint\t%s\n", r.Endpoint)
	fmt.Fprintf(tw, "range\t%s – %s\n", r.Since.Format(time.RFC3339Nano), r.Until.Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "matched\t%d\n", r.Matched)
	fmt.Fprintf(tw, "sent again\t%d\n", r.Scheduled)
	fmt.Fprintf(tw, "already pending\t%d\n", r.Pending)
	fmt.Fprintf(tw, "expired\t%d\n", r.Expired)
	if r.Truncated {
		fmt.Fprintf(tw, "truncated\tmore than %d messages: continue with --since %s\n", notify.MaxReplay, r.Next.Format(time.RFC3339Nano))
	}
	return tw.Flush()
}
