package config

import (
	"reflect"
	"runtime"
	"strconv"
	"strings"

	"github.com/lanegate/lanegate/admission"
)

// Names of the variables the derivation and validation code refers to.
const (
	varListen           = prefix + "LISTEN"
	varUpstream         = prefix + "UPSTREAM"
	varAdminListen      = prefix + "ADMIN_LISTEN"
	varAdminToken       = prefix + "ADMIN_TOKEN"
	varTLSCert          = prefix + "TLS_CERT_FILE"
	varTLSKey           = prefix + "TLS_KEY_FILE"
	varPoolSize         = prefix + "DB_POOL_SIZE"
	varHeadroom         = prefix + "POOL_HEADROOM"
	varBudget           = prefix + "BUDGET"
	varCPUs             = prefix + "UPSTREAM_CPUS"
	varLoginRate        = prefix + "LOGIN_RATE"
	varLoginBurst       = prefix + "LOGIN_BURST"
	varClientRate       = prefix + "LOGIN_PER_CLIENT_RATE"
	varClientBurst      = prefix + "LOGIN_PER_CLIENT_BURST"
	varClientsMax       = prefix + "LOGIN_CLIENTS_MAX"
	varQueryWait        = prefix + "PGBOUNCER_QUERY_WAIT_TIMEOUT"
	varLoginPaths       = prefix + "LOGIN_PATHS"
	varExportPaths      = prefix + "EXPORT_PATHS"
	varBypassPaths      = prefix + "BYPASS_PATHS"
	varReadHeader       = prefix + "READ_HEADER_TIMEOUT"
	varIdle             = prefix + "IDLE_TIMEOUT"
	varMaxHeaderBytes   = prefix + "MAX_HEADER_BYTES"
	varMaxConns         = prefix + "MAX_CONNS"
	varMaxBodyBytes     = prefix + "MAX_BODY_BYTES"
	varBufferBodyBytes  = prefix + "BUFFER_BODY_BYTES"
	varClientSend       = prefix + "CLIENT_SEND_TIMEOUT"
	varRespBuffer       = prefix + "RESPONSE_BUFFER_BYTES"
	varRespBufferTotal  = prefix + "RESPONSE_BUFFER_TOTAL_BYTES"
	varBufferBodyTotal  = prefix + "BUFFER_BODY_TOTAL_BYTES"
	varDial             = prefix + "UPSTREAM_DIAL_TIMEOUT"
	varResponseHeader   = prefix + "UPSTREAM_RESPONSE_HEADER_TIMEOUT"
	varUpstreamIdle     = prefix + "UPSTREAM_IDLE_TIMEOUT"
	varUpstreamStall    = prefix + "UPSTREAM_STALL_TIMEOUT"
	varTimeoutHold      = prefix + "UPSTREAM_TIMEOUT_HOLD"
	varShutdown         = prefix + "SHUTDOWN_TIMEOUT"
	varAnonMax          = prefix + "ANON_MAX"
	varBodyRead         = prefix + "BODY_READ_TIMEOUT"
	varTicketSecret     = prefix + "TICKET_SECRET"
	varSessionStore     = prefix + "SESSION_STORE"
	varSessionCookie    = prefix + "SESSION_COOKIE"
	varSessionTTL       = prefix + "SESSION_TTL"
	varSessionMax       = prefix + "SESSION_MAX_ENTRIES"
	varCoalesceWait     = prefix + "SESSION_COALESCE_WAIT"
	varIdentitySecret   = prefix + "IDENTITY_SECRET"
	varRedisURL         = prefix + "REDIS_URL"
	varRedisTimeout     = prefix + "REDIS_TIMEOUT"
	varRedisPool        = prefix + "REDIS_POOL_SIZE"
	varLoginRequired    = prefix + "LOGIN_REQUIRED_PATHS"
	varLoginURL         = prefix + "LOGIN_URL"
	varLogFormat        = prefix + "LOG_FORMAT"
	varLogLevel         = prefix + "LOG_LEVEL"
	varMode             = prefix + "ADMISSION"
	laneVarReserved     = "RESERVED"
	laneVarMax          = "MAX"
	laneVarQueue        = "QUEUE"
	laneVarQueueTimeout = "QUEUE_TIMEOUT"
)

// laneVar names one of a lane's variables, e.g. LANEGATE_LOGIN_MAX. The
// login lane's queue timeout is its hold, LANEGATE_LOGIN_MAX_HOLD.
func laneVar(l admission.Lane, what string) string {
	if l == admission.Login && what == laneVarQueueTimeout {
		what = "MAX_HOLD"
	}
	return prefix + strings.ToUpper(l.String()) + "_" + what
}

// source says where a variable's effective value came from.
type source uint8

const (
	fromDefault source = iota
	fromSet
	fromDerived
)

// effective is a variable's value as lanegate uses it.
type effective struct {
	// value is formatted as it would be written in an env file.
	value  string
	source source
	// inputs are the variables a derived value was computed from.
	inputs []string
	// deps are all the variables the value depends on, transitively,
	// itself included when set. Validation uses them to avoid blaming a
	// derived value for a problem in one of its inputs.
	deps []string
	// note overrides the usual provenance comment in Print.
	note string
}

// resolution is a Config with every derived value filled in.
type resolution struct {
	limits admission.Limits
	vars   map[string]effective
}

// Limits returns the admission policy the configuration describes, with
// every lane size the operator left unset derived from the budget.
//
// The derivation, for budget B and upstream CPUs C:
//
//   - B = max(1, pool - ceil(pool*headroom/100)): each admitted request may
//     hold a pooled connection, and the headroom stays free for the pool's
//     other clients.
//   - Login: max = min(max(C,1), max(1,B/2)) because password hashing is
//     CPU-bound, so logins beyond the app's cores only wait inside it while
//     holding connections, and half the budget keeps a login storm from
//     starving pages. Reserved = min(max, max(1,B/8)) when B >= 2, else 0,
//     so sign-in works while pages fill the budget. Queue = 8B, timeout
//     a 30s hold (LANEGATE_LOGIN_MAX_HOLD): a user who typed a password waits,
//     and waiting in lanegate holds no connection.
//   - Export: max = max(1,B/4) so reports never hold most of the pool;
//     nothing reserved (exports borrow idle slots); queue = max(1,B/2),
//     timeout 30s.
//   - Core: max = B; reserved = min(B/2, B - login reserved - export
//     reserved) so half the budget is always there for pages; queue = 8B (at most 20,000),
//     timeout 5s.
//
// A derived reservation is clamped to its lane's max when the operator set
// a smaller max; values the operator set are used as they are (Load has
// validated them). With everything derived the result always passes
// admission.Limits.Validate: derived queues are capped at derivedQueueCap.
func (c Config) Limits() admission.Limits {
	return c.resolve().limits
}

// maxPoolSize bounds the pool so that derived numbers cannot overflow and
// the derived budget stays within what the controller can count.
const maxPoolSize = admission.MaxBudget

// resolve computes every variable's effective value and where it came
// from, and the admission limits they make.
// derivedQueueCap keeps derived queues within what the controller counts
// (three lanes together under 65,535) for any budget.
const derivedQueueCap = 20_000

func (c Config) resolve() resolution {
	r := resolution{vars: make(map[string]effective)}
	cv := reflect.ValueOf(c)
	for _, f := range fields() {
		v := cv.FieldByIndex(f.index)
		e := effective{value: formatValue(v), deps: []string{f.name}}
		_, set := c.origin[f.name]
		if _, derivable := f.tag.Lookup("derived"); derivable {
			// Whatever its origin, a value that is there was not derived.
			set = !v.IsNil()
		}
		if set {
			e.source = fromSet
		}
		r.vars[f.name] = e
	}

	for name, note := range c.fromPool {
		e := r.vars[name]
		e.source, e.note = fromDerived, note
		r.vars[name] = e
	}

	a := c.Admission
	// Out-of-range inputs are reported by validation; clamping here only
	// keeps the arithmetic from overflowing meanwhile.
	pool := min(max(a.DBPoolSize, 0), maxPoolSize)
	headroom := min(max(a.PoolHeadroom, 0), 99)
	if _, set := c.origin[varHeadroom]; !set && c.Watched() && c.PgBouncer.Follow {
		// The watcher leaves the pool's other clients what they hold,
		// measured; a headroom guessed for them would only idle.
		headroom = 0
		r.vars[varHeadroom] = effective{value: "0", source: fromDerived, deps: []string{varHeadroom},
			note: "derived: LANEGATE_PGBOUNCER_URL is set, and the budget gives way to what the pool's other clients hold"}
	}
	budget := r.intVar(varBudget, a.Budget, func() int {
		return max(1, pool-(pool*headroom+99)/100)
	}, varPoolSize, varHeadroom)
	cpus := r.intVar(varCPUs, a.UpstreamCPUs, runtime.NumCPU)
	if a.UpstreamCPUs == nil {
		r.note(varCPUs, "default: CPUs of this machine")
	}
	// Validation reports a set budget out of range; keep arithmetic sane.
	b := min(max(budget, 0), maxPoolSize)

	login, core, export := admission.Login, admission.Core, admission.Export
	lv := laneVar

	lim := &r.limits.Lane
	// Login.
	lim[login].Max = r.intVar(lv(login, laneVarMax), a.Login.Max, func() int {
		return min(max(cpus, 1), max(1, b/2))
	}, varBudget, varCPUs)
	lim[login].Reserved = r.intVar(lv(login, laneVarReserved), a.Login.Reserved, func() int {
		if b < 2 {
			return 0
		}
		return max(0, min(lim[login].Max, max(1, b/8)))
	}, varBudget, lv(login, laneVarMax))
	lim[login].Queue = r.intVar(lv(login, laneVarQueue), a.Login.Queue, func() int { return min(8*b, derivedQueueCap) }, varBudget)
	lim[login].QueueTimeout = a.Login.QueueTimeout

	// Export, before core: core's reservation is what the others leave.
	lim[export].Max = r.intVar(lv(export, laneVarMax), a.Export.Max, func() int { return max(1, b/4) }, varBudget)
	lim[export].Reserved = r.intVar(lv(export, laneVarReserved), a.Export.Reserved, func() int { return 0 })
	lim[export].Queue = r.intVar(lv(export, laneVarQueue), a.Export.Queue, func() int { return min(max(1, b/2), derivedQueueCap) }, varBudget)
	lim[export].QueueTimeout = a.Export.QueueTimeout

	// Core.
	lim[core].Max = r.intVar(lv(core, laneVarMax), a.Core.Max, func() int { return b }, varBudget)
	lim[core].Reserved = r.intVar(lv(core, laneVarReserved), a.Core.Reserved, func() int {
		left := b - lim[login].Reserved - lim[export].Reserved
		return max(0, min(b/2, left, lim[core].Max))
	}, varBudget, lv(login, laneVarReserved), lv(export, laneVarReserved), lv(core, laneVarMax))
	lim[core].Queue = r.intVar(lv(core, laneVarQueue), a.Core.Queue, func() int { return min(8*b, derivedQueueCap) }, varBudget)
	lim[core].QueueTimeout = a.Core.QueueTimeout

	r.limits.AnonMax = r.intVar(varAnonMax, a.AnonMax, func() int {
		if c.Session.Store == StoreOff || c.Session.Store == "" {
			return 0
		}
		return max(1, lim[core].Max/2)
	}, lv(core, laneVarMax), varSessionStore)

	r.limits.Budget = budget
	r.limits.LoginRate = admission.RateLimit{Rate: a.LoginRate, Burst: a.LoginBurst}
	r.limits.LoginPerClient = admission.RateLimit{Rate: a.LoginPerClientRate, Burst: a.LoginPerClientBurst}
	r.limits.MaxClients = a.LoginClientsMax
	return r
}

// intVar returns *set when the operator set the variable, else derive(),
// recording which inputs the derived value came from. With no inputs the
// value is a constant default.
func (r *resolution) intVar(name string, set *int, derive func() int, inputs ...string) int {
	if set != nil {
		return *set
	}
	v := derive()
	e := effective{value: strconv.Itoa(v), source: fromDefault, deps: []string{name}}
	if len(inputs) > 0 {
		e.source = fromDerived
		e.inputs = inputs
		e.deps = nil
		for _, in := range inputs {
			e.deps = append(e.deps, r.vars[in].deps...)
		}
	}
	r.vars[name] = e
	return v
}

// note sets the provenance comment Print shows for name.
func (r *resolution) note(name, note string) {
	e := r.vars[name]
	e.note = note
	r.vars[name] = e
}

// describe returns "NAME=value" and, unless the operator set it, where the
// value came from: "(default)" or "(derived from A=1, B=2)". brief leaves
// out a derived value's inputs, for messages that list several values.
func (r resolution) describe(name string, brief bool) string {
	e := r.vars[name]
	s := name + "=" + e.value
	switch {
	case e.source == fromSet:
		return s
	case e.source == fromDerived && e.note != "" && !brief:
		return s + " (" + e.note + ")"
	case e.source == fromDerived && !brief:
		return s + " (" + r.derivation(name) + ")"
	case e.source == fromDerived:
		return s + " (derived)"
	}
	return s + " (default)"
}

// derivation says what a derived value was computed from.
func (r resolution) derivation(name string) string {
	var parts []string
	for _, in := range r.vars[name].inputs {
		parts = append(parts, in+"="+r.vars[in].value)
	}
	return "derived from " + strings.Join(parts, ", ")
}
