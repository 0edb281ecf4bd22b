package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
)

func newSendCommand() *cobra.Command {
	var (
		to, brokerRef, serviceRef, path   string
		id, typ, source, subject, dataArg string
		run                               runFlags
		contentType                       string
		extensions                        []string
		timeout                           time.Duration
		webhook, webhookSecret            string
		quiet                             bool
	)
	cmd := &cobra.Command{
		Use:   "send --type TYPE [--data @FILE|-|TEXT] [flags]",
		Short: "Post a CloudEvent (binary mode) to a broker or a service",
		Long: `Post a CloudEvent in binary mode to a Broker (--broker namespace/name, default
knfaas/default), a Knative Service (--service namespace/name, cluster-local ones included),
or any URL (--to).

The running knfaas up is found in its state directory; --addr or KNFAAS_ADDR name one
explicitly. A run so named that is not found there (another state directory or machine) is
reached through its public ingress, so --service then reaches its public Services only.

--webhook github|stripe|slack|svix posts a delivery signed as that provider signs it, with the
development secret knfaas up generated for the webhook-secrets template (or --webhook-secret),
to the webhook function's source of the same name (POST /<provider>): what the intake answers is
printed. --type is then the provider's event name (GitHub's X-GitHub-Event, the Stripe or Slack
event type), --id the delivery id, and --data the body (a minimal one by default).`,
		Example: `  knfaas send --type dev.knfaas.example.pos.sale.recorded --subject SKU-1 --data '{"store":"s1","quantity":2}'
  knfaas send --service knfaas/process --type t --data @event.json
  echo '{}' | knfaas send --to http://127.0.0.1:8080/knfaas/default --type t --data -
  knfaas send --webhook github --type push
  knfaas send --webhook stripe --data @charge.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if webhook != "" {
				return sendWebhook(cmd, run, webhook, webhookSecret, to, serviceRef, typ, id, dataArg, timeout, quiet)
			}
			target, err := sendTarget(run, to, brokerRef, serviceRef, path)
			if err != nil {
				return err
			}
			if typ == "" {
				return fmt.Errorf("--type is required")
			}
			e := cloudevents.NewEvent()
			if id == "" {
				id = uuid.NewString()
			}
			e.SetID(id)
			e.SetType(typ)
			e.SetSource(source)
			e.SetTime(time.Now())
			if subject != "" {
				e.SetSubject(subject)
			}
			for _, kv := range extensions {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--extension %q: want name=value", kv)
				}
				e.SetExtension(k, v)
			}
			if dataArg != "" {
				data, err := readData(dataArg, cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("--data: %w", err)
				}
				if err := e.SetData(contentType, data); err != nil {
					return fmt.Errorf("--data: %w", err)
				}
			}
			if err := e.Validate(); err != nil {
				return fmt.Errorf("invalid event: %w", err)
			}
			s, err := sink.NewWithTransport(target.url, timeout, target.transportOr(localhost.Transport()))
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := s.Send(ctx, e); err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(cmd.OutOrStdout(), e.ID())
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sent %s (type %s) to %s\n", e.ID(), e.Type(), target.url)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "target URL (overrides --broker and --service)")
	f.StringVar(&brokerRef, "broker", "knfaas/default", "target broker as namespace/name")
	f.StringVar(&serviceRef, "service", "", "target Knative Service as namespace/name (instead of a broker)")
	f.StringVar(&path, "path", "/", "with --service: the path to post to")
	f.StringVar(&id, "id", "", "event id (default: a new UUID)")
	f.StringVar(&typ, "type", "", "event type (required)")
	f.StringVar(&source, "source", "/knfaas/cli", "event source")
	f.StringVar(&subject, "subject", "", "event subject")
	f.StringVar(&dataArg, "data", "", "event data: text, @FILE, or - for standard input")
	f.StringVar(&contentType, "content-type", "application/json", "content type of the data")
	f.StringArrayVarP(&extensions, "extension", "e", nil, "extension attribute name=value (repeatable)")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the answer")
	f.StringVar(&webhook, "webhook", "", "post a signed webhook delivery instead: github, stripe, slack or svix")
	_ = cmd.RegisterFlagCompletionFunc("webhook", cobra.FixedCompletions(webhookProviders, cobra.ShellCompDirectiveNoFileComp))
	f.StringVar(&webhookSecret, "webhook-secret", "", "with --webhook: sign with this secret instead of the development one")
	addQuietFlag(cmd, &quiet)
	addRunFlags(cmd, &run)
	_ = cmd.RegisterFlagCompletionFunc("broker", completeBrokerRefs(&run))
	_ = cmd.RegisterFlagCompletionFunc("service", completeServiceRefs(&run))
	return cmd
}

// sendWebhook posts a signed delivery to the webhook function's source for provider.
func sendWebhook(cmd *cobra.Command, run runFlags, provider, secret, to, serviceRef, event, id, dataArg string, timeout time.Duration, quiet bool) error {
	if !slices.Contains(webhookProviders, provider) {
		return &UsageError{Err: fmt.Errorf("--webhook %q: want one of %s", provider, strings.Join(webhookProviders, ", "))}
	}
	if event == "" {
		event = defaultWebhookEvent(provider)
	}
	if id == "" {
		id = uuid.NewString()
	}
	body := defaultWebhookBody(provider, event, id)
	if dataArg != "" {
		data, err := readData(dataArg, cmd.InOrStdin())
		if err != nil {
			return fmt.Errorf("--data: %w", err)
		}
		body = data
	}
	if serviceRef == "" {
		serviceRef = "knfaas/webhook"
	}
	target := httpTarget{url: to}
	if to == "" {
		var err error
		if target, err = run.serviceTarget(serviceRef, "/"+provider); err != nil {
			return err
		}
	}
	if secret == "" {
		ns, _, err := splitRef("--service", serviceRef)
		if err != nil {
			return err
		}
		if run.cluster.onCluster() {
			secret, err = run.clusterWebhookSecret(ns, provider)
		} else {
			secret, err = devWebhookSecret(run.stateDir, ns, provider)
		}
		if err != nil {
			return err
		}
	}
	d, err := signWebhook(provider, secret, event, id, body, time.Now())
	if err != nil {
		return err
	}
	answer, err := postWebhook(cmd.Context(), target, d, timeout)
	if err != nil {
		return err
	}
	if quiet {
		fmt.Fprintln(cmd.OutOrStdout(), id)
		return nil
	}
	fmt.Fprintf(cmd.OutOrStdout(), "delivered %s webhook %s to %s: %s\n", provider, id, target.url, answer)
	return nil
}

// sendTarget is --to as given, else --service or --broker under the running `knfaas up` or,
// with -n/--kubeconfig/--context, on the cluster.
func sendTarget(run runFlags, to, brokerRef, serviceRef, path string) (httpTarget, error) {
	if to != "" {
		return httpTarget{url: to}, nil
	}
	if serviceRef != "" {
		return run.serviceTarget(serviceRef, path)
	}
	return run.brokerTarget(brokerRef)
}

func readData(arg string, stdin io.Reader) ([]byte, error) {
	switch {
	case arg == "-":
		return io.ReadAll(stdin)
	case strings.HasPrefix(arg, "@"):
		return os.ReadFile(arg[1:])
	}
	return []byte(arg), nil
}
