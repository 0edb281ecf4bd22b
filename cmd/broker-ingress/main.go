// Command broker-ingress is the RedisStreamBroker class's ingress: it answers 202 to an event
// only once it is stored in its Broker's Redis stream (see internal/runtime/brokerclass).
package main

import (
	"os"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

func main() { os.Exit(brokerclass.Main(brokerclass.ModeIngress)) }
