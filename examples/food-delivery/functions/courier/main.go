package main

import "knative.dev/func-go/cloudevents"

func main() { cloudevents.Start(New()) }
