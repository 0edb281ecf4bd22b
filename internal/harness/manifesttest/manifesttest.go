// Package manifesttest writes the Knative manifests that tests of the manifest layer, verify and knfaas up load, so that each test states only what sets its case apart.
package manifesttest

import (
	"fmt"
	"strings"
)

// KService is a Knative Service with the metadata meta, a YAML flow mapping such as
// "{name: fn, namespace: ns}", whose only container runs image. YAML appended to it continues
// the container (env, volumeMounts: eight spaces in) and then the pod spec (volumes: six).
func KService(meta, image string) string {
	return "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: " + meta + "\n" +
		"spec:\n  template:\n    spec:\n      containers:\n      - image: " + image + "\n"
}

// Broker is the Broker ns/name.
func Broker(ns, name string) string {
	return "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: " + name + ", namespace: " + ns + "}\n"
}

// Docs joins YAML documents into one stream.
func Docs(docs ...string) string {
	return strings.Join(docs, "---\n")
}

// Trigger is the Trigger ns/name on broker; YAML appended to it continues its spec (two spaces
// in: subscriber, filters, delivery).
func Trigger(ns, name, broker string) string {
	return "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: " + name + ", namespace: " + ns + "}\n" +
		"spec:\n  broker: " + broker + "\n"
}

// PingSource is the PingSource ns/name firing on schedule; YAML appended to it continues its
// spec (sink, data, timezone).
func PingSource(ns, name, schedule string) string {
	return "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: " + name + ", namespace: " + ns + "}\n" +
		"spec:\n  schedule: \"" + schedule + "\"\n"
}

// SinkBinding is the SinkBinding ns/name that points the Knative Service subject at broker.
func SinkBinding(ns, name, subject, broker string) string {
	return "apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata: {name: " + name + ", namespace: " + ns + "}\n" +
		"spec:\n  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: " + subject + "}\n" +
		"  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: " + broker + "}}\n"
}

// RedisStatefulSet is a one-container Redis StatefulSet ns/redis, as a cluster would run it.
func RedisStatefulSet(ns string) string {
	return "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: redis, namespace: " + ns + "}\n" +
		"spec:\n  serviceName: redis\n  selector: {matchLabels: {app: redis}}\n  template:\n    metadata: {labels: {app: redis}}\n" +
		"    spec:\n      containers: [{name: redis, image: redis:7}]\n"
}

// RedisService is the Service ns/redis in front of RedisStatefulSet.
func RedisService(ns string) string {
	return "apiVersion: v1\nkind: Service\nmetadata: {name: redis, namespace: " + ns + "}\n" +
		"spec:\n  selector: {app: redis}\n  ports: [{port: 6379}]\n"
}

// Function is a function's Knative Service as the end-to-end tests deploy it: one container
// from a ko:// image, ready on func-go's readiness path. A zero MaxScale, ContainerConcurrency
// or TimeoutSeconds leaves the field out.
type Function struct {
	Namespace, Name, Image string
	MaxScale               int
	ContainerConcurrency   int
	TimeoutSeconds         int
	// Env is the container's env items, YAML eight spaces in.
	Env string
}

// YAML is the Service's manifest.
func (f Function) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\nspec:\n  template:\n", f.Name, f.Namespace)
	if f.MaxScale > 0 {
		fmt.Fprintf(&b, "    metadata: {annotations: {autoscaling.knative.dev/max-scale: \"%d\"}}\n", f.MaxScale)
	}
	b.WriteString("    spec:\n")
	if f.ContainerConcurrency > 0 {
		fmt.Fprintf(&b, "      containerConcurrency: %d\n", f.ContainerConcurrency)
	}
	if f.TimeoutSeconds > 0 {
		fmt.Fprintf(&b, "      timeoutSeconds: %d\n", f.TimeoutSeconds)
	}
	fmt.Fprintf(&b, "      containers:\n      - image: %s\n        readinessProbe: {httpGet: {path: /health/readiness}}\n        env:\n%s", f.Image, f.Env)
	return b.String()
}
