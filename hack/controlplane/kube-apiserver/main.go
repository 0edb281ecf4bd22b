// Command kube-apiserver is a thin main over the upstream kube-apiserver so
// hack/verify-apiserver.sh can build a real API server from the Go module
// proxy without a Kubernetes checkout or a container runtime.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
