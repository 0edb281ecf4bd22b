package main

import "knative.dev/func-go/http"

func main() { http.Start(New()) }
