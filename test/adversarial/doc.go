// Package adversarial attacks a running `knfaas up` on a real redis-server, as a hostile client
// and a careful operator would, and checks that the platform's promises hold: nothing accepted
// is lost or doubled, data arrives byte for byte, and no one gets in where they don't belong.
package adversarial
