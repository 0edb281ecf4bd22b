//go:build race

package serving

// raceDetector: the race detector is on; sync.Pool then drops some of what it is given, on
// purpose, so tests of pooled buffers cannot count allocations.
const raceDetector = true
