// Package manifesttest writes the Knative manifests that tests of the manifest layer, verify and knfaas up load, so that each test states only what sets its case apart.
package manifesttest

import "strings"

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
