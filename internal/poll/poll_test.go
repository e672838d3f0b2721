package poll

import (
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	n := 0
	if !Until(time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Fatalf("condition true on the 3rd check: Until stopped after %d checks", n)
	}
	start := time.Now()
	if Until(50*time.Millisecond, func() bool { return false }) {
		t.Fatal("Until reported a condition that never held")
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("Until gave up before its deadline")
	}
}
