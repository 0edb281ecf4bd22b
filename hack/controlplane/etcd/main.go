// Command etcd is a thin main over the upstream etcd server so
// hack/verify-apiserver.sh can run the API server's storage from the Go
// module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
