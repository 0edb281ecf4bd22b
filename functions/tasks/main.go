package main

import (
	"log"

	"knative.dev/func-go/http"
)

func main() {
	if err := http.Start(New()); err != nil {
		log.Fatal(err)
	}
}
