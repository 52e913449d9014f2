package admission

import "fmt"

// Mode says what is done with the controller's decisions. It lives here,
// beside Acquire, Shadow and Pass, which are its three meanings, so that the
// data plane and the admin server switch it without knowing how lanegate is
// configured.
type Mode string

// The admission modes.
const (
	// Enforce queues and sheds requests as the limits say (Acquire).
	Enforce Mode = "enforce"
	// Shadow admits everything but records what Enforce would have queued
	// or shed (Shadow), to size limits against real traffic before relying
	// on them.
	Shadow Mode = "shadow"
	// Off passes every request straight through (Pass), as if lanegate were
	// a plain reverse proxy: the switch to flip when the limits themselves
	// are suspected.
	Off Mode = "off"
)

// ParseMode returns the mode named s ("enforce", "shadow" or "off").
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Enforce, Shadow, Off:
		return m, nil
	}
	return "", fmt.Errorf("unknown admission mode %q: want enforce, shadow or off", s)
}
