// Package adversarial attacks a running `knfaas up` on a real redis-server, as a hostile client
// and a careful operator would, and checks that the platform's promises hold: nothing accepted
// is lost or doubled, data arrives byte for byte, and no one gets in where they don't belong.
//
// `go test -v -tags e2e -run TestAttacks ./test/adversarial/` prints the table of attacks
// (attack, answer, effect, lost, duplicated); ./hack/test.sh runs it under the race detector.
package adversarial
