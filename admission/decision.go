package admission

import "errors"

// Decision is the outcome of one request at the controller, as counted in
// Snapshot and exported as the decision label of lanegate_requests_total.
type Decision uint8

// Decisions. The Shadow ones are what enforce mode would have done; the
// request was forwarded anyway.
const (
	Admitted Decision = iota
	QueueFull
	QueueTimeout
	WaitTooLong
	RateLimited
	Closed
	Cancelled
	Passed
	ShadowAdmitted
	ShadowQueued
	ShadowQueueFull
	ShadowWaitTooLong
	ShadowRateLimited

	numDecisions
)

var decisionNames = [numDecisions]string{
	Admitted:          "admitted",
	QueueFull:         "queue_full",
	QueueTimeout:      "queue_timeout",
	WaitTooLong:       "wait_too_long",
	RateLimited:       "rate_limited",
	Closed:            "closed",
	Cancelled:         "cancelled",
	Passed:            "pass",
	ShadowAdmitted:    "shadow_admitted",
	ShadowQueued:      "shadow_queued",
	ShadowQueueFull:   "shadow_queue_full",
	ShadowWaitTooLong: "shadow_wait_too_long",
	ShadowRateLimited: "shadow_rate_limited",
}

// String returns the decision's metric label.
func (d Decision) String() string {
	if d < numDecisions {
		return decisionNames[d]
	}
	return "unknown"
}

// Decisions returns every decision, for iteration.
func Decisions() []Decision {
	ds := make([]Decision, numDecisions)
	for i := range ds {
		ds[i] = Decision(i)
	}
	return ds
}

// Shed reports whether the decision refused the request.
func (d Decision) Shed() bool {
	switch d {
	case QueueFull, QueueTimeout, WaitTooLong, RateLimited, Closed:
		return true
	}
	return false
}

// DecisionOf maps an error from Acquire to its decision: a shed reason, or
// Cancelled for anything else (the caller's context ended).
func DecisionOf(err error) Decision {
	switch {
	case errors.Is(err, ErrQueueFull):
		return QueueFull
	case errors.Is(err, ErrQueueTimeout):
		return QueueTimeout
	case errors.Is(err, ErrWaitTooLong):
		return WaitTooLong
	case errors.Is(err, ErrRateLimited):
		return RateLimited
	case errors.Is(err, ErrClosed):
		return Closed
	}
	return Cancelled
}
