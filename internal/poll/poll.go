// Package poll waits for a condition with a deadline, checking it at a
// fixed interval: how tests and tools wait for a distributed system to
// reach a state, instead of sleeping for a guessed time.
package poll

import "time"

// Interval is how often Until checks its condition.
const Interval = 20 * time.Millisecond

// Until calls cond every Interval until it returns true (Until returns
// true) or d has passed (false). cond runs at least once.
func Until(d time.Duration, cond func() bool) bool {
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}
