package config

import (
	"net/url"
	"reflect"
)

// RestartOnly names, in declaration order, the variables whose values
// differ between a and b but which a reload does not apply: every variable
// not tagged reload:"live" (see Config). A reload calls it with the
// configuration the process started with and the one just read, so that
// the operator is told which changes stay without effect until a restart
// instead of having them ignored in silence. It returns nil when there are
// none.
//
// Values are compared as configured, not as derived: an unset variable
// differs from one set to the value it would have been derived to. URLs
// compare by their text, pointers by what they point to and lists element
// by element, with an empty list equal to none.
func RestartOnly(a, b Config) []string {
	av, bv := reflect.ValueOf(a), reflect.ValueOf(b)
	var changed []string
	for _, f := range fields() {
		if f.live() {
			continue
		}
		if !sameValue(av.FieldByIndex(f.index), bv.FieldByIndex(f.index)) {
			changed = append(changed, f.name)
		}
	}
	return changed
}

// sameValue reports whether two values of one Config field are the same
// setting.
func sameValue(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		if u, ok := a.Interface().(*url.URL); ok {
			return u.String() == b.Interface().(*url.URL).String()
		}
		return sameValue(a.Elem(), b.Elem())
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}
