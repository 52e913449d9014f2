package config

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Variable documents one environment variable lanegate reads.
type Variable struct {
	// Name is the full variable name, e.g. LANEGATE_BUDGET.
	Name string
	// Default is the value used when the variable is unset: a literal,
	// or when Derived is true the rule that computes it. Empty means the
	// variable is simply unset by default.
	Default string
	// Derived says Default is a rule over other variables (or the host)
	// rather than a fixed value.
	Derived bool
	// Description says what the variable does and why one would set it.
	Description string
	// Secret values are never printed.
	Secret bool
	// Live variables are applied by a reload (SIGHUP); a change to any
	// other needs a restart. See RestartOnly.
	Live bool
}

// field locates one variable in Config.
type field struct {
	name  string
	index []int
	tag   reflect.StructTag
}

// live reports whether a reload applies the variable; see Config.
func (f field) live() bool { return f.tag.Get("reload") == "live" }

// fields lists Config's variables in declaration order. It follows the
// env library's naming: a field's env tag, after the envPrefix tags of the
// structs that hold it, after LANEGATE_.
func fields() []field {
	var out []field
	var walk func(t reflect.Type, pre string, index []int)
	walk = func(t reflect.Type, pre string, index []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			if !sf.IsExported() {
				continue
			}
			idx := append(slices.Clone(index), i)
			if name, _, _ := strings.Cut(sf.Tag.Get("env"), ","); name != "" {
				out = append(out, field{name: pre + name, index: idx, tag: sf.Tag})
				continue
			}
			if sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, pre+sf.Tag.Get("envPrefix"), idx)
			}
		}
	}
	walk(reflect.TypeFor[Config](), prefix, nil)
	return out
}

// Variables describes every variable lanegate reads, in a stable order
// that groups related settings. It is generated from Config's struct tags.
func Variables() []Variable {
	fs := fields()
	out := make([]Variable, 0, len(fs))
	for _, f := range fs {
		v := Variable{
			Name:        f.name,
			Description: f.tag.Get("desc"),
			Secret:      f.tag.Get("secret") == "true",
			Live:        f.live(),
		}
		if d, ok := f.tag.Lookup("envDefault"); ok {
			v.Default = d
		} else if d, ok := f.tag.Lookup("derived"); ok {
			v.Default, v.Derived = d, true
		}
		out = append(out, v)
	}
	return out
}

// MarkdownTable renders Variables as the README's configuration table, so
// the documentation cannot drift from the code: a test compares the two.
// Its "On reload" column says live when a reload (SIGHUP) applies the
// variable and restart when a change needs a restart.
func MarkdownTable() string {
	var b strings.Builder
	b.WriteString("| Variable | Default | On reload | Meaning |\n")
	b.WriteString("| --- | --- | --- | --- |\n")
	for _, v := range Variables() {
		def := "(unset)"
		switch {
		case v.Derived:
			def = cell(v.Default)
		case v.Default != "":
			def = "`" + v.Default + "`"
		}
		desc := v.Description
		if v.Secret {
			desc += " Secret: never printed."
		}
		reload := "restart"
		if v.Live {
			reload = "live"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", v.Name, def, reload, cell(desc))
	}
	return b.String()
}

// cell escapes text for a Markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}

// Print writes every variable with the value in force, one per line in
// dotenv syntax, each with a comment saying whether it was set, defaulted
// or derived (and from what). Secrets show as <redacted> when set. The
// output, saved as an env file, loads back to the same configuration
// (secrets aside).
func (c Config) Print(w io.Writer) error {
	r := c.resolve()
	// Lay out in memory, where writes cannot fail, then write once.
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "# lanegate configuration in force: each value, and where it came from.")
	for _, v := range Variables() {
		value := r.vars[v.Name].value
		if v.Secret && value != "" {
			value = "<redacted>"
		}
		fmt.Fprintf(tw, "%s=%s\t# %s\n", v.Name, quote(value), c.provenance(r, v.Name))
	}
	tw.Flush()
	for _, warning := range c.warnings {
		fmt.Fprintf(&buf, "# warning: %s\n", warning)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("printing configuration: %w", err)
	}
	return nil
}

// provenance is Print's comment for one variable.
func (c Config) provenance(r resolution, name string) string {
	e := r.vars[name]
	switch {
	case e.note != "":
		return e.note
	case e.source == fromDerived:
		return r.derivation(name)
	case e.source == fromSet:
		if path := c.origin[name]; path != "" {
			return "set in " + path
		}
		return "set"
	case e.value == "":
		return "default (empty)"
	}
	return "default"
}

// quote returns v as a dotenv value: bare when that reads back unchanged,
// else single-quoted, which godotenv takes literally.
func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\r\n#'\"$\\`") {
		return v
	}
	if !strings.ContainsAny(v, "'\r\n") {
		return "'" + v + "'"
	}
	return strconv.Quote(v)
}

// formatValue renders a Config field the way it is written in the
// environment, so Print's output can be loaded back. A nil pointer is "".
func formatValue(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return ""
		}
		if u, ok := v.Interface().(*url.URL); ok {
			return u.String()
		}
		v = v.Elem()
	}
	switch x := v.Interface().(type) {
	case time.Duration:
		return x.String()
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case []string:
		return strings.Join(x, ",")
	case []netip.Prefix:
		s := make([]string, len(x))
		for i, p := range x {
			s[i] = p.String()
		}
		return strings.Join(s, ",")
	}
	return fmt.Sprint(v.Interface())
}
