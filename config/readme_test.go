package config

import (
	"os"
	"strings"
	"testing"
)

// The README's configuration table lives between these markers and must
// be exactly MarkdownTable's output, so the documentation cannot drift.
const (
	readmeStart = "<!-- config-table:start -->"
	readmeEnd   = "<!-- config-table:end -->"
)

func TestREADMEConfigTable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatalf("reading README: %v", err)
	}
	_, rest, ok := strings.Cut(string(b), readmeStart)
	if !ok {
		t.Fatalf("README.md: got no %s marker, want one", readmeStart)
	}
	table, _, ok := strings.Cut(rest, readmeEnd)
	if !ok {
		t.Fatalf("README.md: got no %s marker after %s, want one", readmeEnd, readmeStart)
	}
	want := strings.TrimSpace(MarkdownTable())
	if got := strings.TrimSpace(table); got != want {
		t.Errorf("README.md configuration table is out of date with config.Config's tags.\n"+
			"Replace the text between %s and %s with this (or run `lanegate config --markdown`):\n\n%s\n",
			readmeStart, readmeEnd, want)
	}
}
