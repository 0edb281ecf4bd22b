package main

import (
	"log"

	"knative.dev/func-go/cloudevents"
)

func main() {
	if err := cloudevents.Start(New()); err != nil {
		log.Fatal(err)
	}
}
