package doctor

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Severity grades a finding.
type Severity uint8

const (
	// OK means checked and fine.
	OK Severity = iota
	// Warn means doubtful, or not checked; it does not fail the run,
	// because some warnings are reminders nothing here can verify (a
	// Django setting) and an unchecked part is not a wrong one.
	Warn
	// Fail means wrong: under load, requests would wait where lanegate
	// cannot shed them, or be refused by PgBouncer or the app.
	Fail
)

// String returns OK, WARN or FAIL.
func (s Severity) String() string {
	switch s {
	case OK:
		return "OK"
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("Severity(%d)", uint8(s))
}

// Finding is one result of one check.
type Finding struct {
	Severity Severity
	// Check names the check, e.g. "budget" or "max_client_conn".
	Check string
	// Found says what was found, with its numbers.
	Found string
	// Fix says what to change, naming the LANEGATE_* variable or the
	// PgBouncer, Django or gunicorn setting; empty when nothing is to be
	// done.
	Fix string
}

// Report is every finding of one run, in the order checked.
type Report struct {
	Findings []Finding
}

// Failed reports whether any finding is a Fail. lanegate doctor exits
// with status 1 then and 0 otherwise: warnings alone do not fail it.
func (r Report) Failed() bool {
	for _, f := range r.Findings {
		if f.Severity == Fail {
			return true
		}
	}
	return false
}

// count returns how many findings have severity s.
func (r Report) count(s Severity) int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == s {
			n++
		}
	}
	return n
}

// Write prints the findings for people: one line each, severities and
// check names aligned, the fix on the next line under the finding, and a
// last line that counts them and gives the exit status.
//
//	  OK    budget           8 requests in flight ≤ pool_size 8 of app/app
//	  FAIL  max_client_conn  max_client_conn 20 < budget 24 …
//	                         → raise max_client_conn in pgbouncer.ini to at least 24
//	1 FAIL, 0 WARN, 1 OK: exit status 1
func (r Report) Write(w io.Writer) error {
	width := 0
	for _, f := range r.Findings {
		width = max(width, utf8.RuneCountInString(f.Check))
	}
	indent := strings.Repeat(" ", 2+4+2+width+2)
	bw := bufio.NewWriter(w)
	for _, f := range r.Findings {
		fmt.Fprintf(bw, "  %-4s  %-*s  %s\n", f.Severity, width, f.Check, f.Found)
		if f.Fix != "" {
			fmt.Fprintf(bw, "%s→ %s\n", indent, f.Fix)
		}
	}
	status := 0
	if r.Failed() {
		status = 1
	}
	fmt.Fprintf(bw, "%d FAIL, %d WARN, %d OK: exit status %d\n", r.count(Fail), r.count(Warn), r.count(OK), status)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("doctor: writing the report: %w", err)
	}
	return nil
}
