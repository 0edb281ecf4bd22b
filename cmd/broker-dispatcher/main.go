// Command broker-dispatcher is the RedisStreamBroker class's dispatcher: it delivers each
// Trigger's events from its consumer group, shared by all replicas (see internal/runtime/brokerclass).
package main

import (
	"os"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

func main() { os.Exit(brokerclass.Main(brokerclass.ModeDispatcher)) }
