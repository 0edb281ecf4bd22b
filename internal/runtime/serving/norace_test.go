//go:build !race

package serving

// raceDetector: the race detector is off.
const raceDetector = false
