package main

import (
	"log"

	"knative.dev/func-go/http"

	"github.com/knfaas/knfaas/internal/function/logging"
)

// A non-zero exit when Start fails lets Knative (and knfaas up) report the revision as failed
// instead of serving 503s; func-go returns the error of the function's Start.
func main() {
	logging.Setup("mail")
	l, err := NewListener()
	if err != nil {
		log.Fatal(err)
	}
	if err := http.Start(l); err != nil {
		log.Fatal(err)
	}
}
