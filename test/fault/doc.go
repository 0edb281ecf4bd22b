// Package fault pushes events through `knfaas up` while injecting faults (subscriber 5xx bursts,
// timeouts and kill -9, runtime kill -9 and restart, Redis restart) and proves that every
// accepted event is delivered or dead-lettered, and that redriven dead letters are delivered.
// It is the soak of all faults in one run; test/e2e's recovery tests each inject one crash.
// TestScenariosOnBothTargets runs one table of fault scenarios against `knfaas up` and against
// the RedisStreamBroker cluster data plane (ingress and two dispatcher replicas as processes).
// Its tests run with the e2e build tag.
package fault
