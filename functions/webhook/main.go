package main

import (
	"log"

	fhttp "knative.dev/func-go/http"
)

// A non-zero exit on a bad sources file lets Knative (and knfaas up) report the revision as
// failed instead of serving 503s.
func main() {
	if err := fhttp.Start(New()); err != nil {
		log.Fatal(err)
	}
}
