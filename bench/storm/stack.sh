# shellcheck shell=bash
# The storm benchmark's real stack: PostgreSQL, PgBouncer and a Django 3.2 +
# django-allauth site (bench/site) served by gunicorn, all on 127.0.0.1.
#
# A library, not a program: `source bench/storm/stack.sh`, set STORM_WORK to a
# fresh directory, then call
#
#   ensure_packages      apt-get install what is missing (update only if needed)
#   ensure_postgres      start the local PostgreSQL cluster if it is not answering
#   db_create / db_drop  (re)create / drop database $STORM_DB_NAME owned by role
#                        $STORM_DB_USER, migrated and seeded (manage.py seed_storm)
#   pgbouncer_start / pgbouncer_stop
#   gunicorn_start / gunicorn_stop
#   clear_sessions       empty django_session and allauth's login-attempt cache
#   pgbouncer_show_pools SHOW POOLS rows of $STORM_DB_NAME, tab-separated
#   pgbouncer_pools_columns  the names of those columns, tab-separated
#   stack_stop_all       stop whatever of the above is running (for trap EXIT)
#
# Every function is idempotent, bounded in time, returns non-zero on failure
# (it never exits the caller's shell) and logs to files under $STORM_WORK:
#   stack.log            what the functions did, with timestamps
#   packages.log, db.log apt-get; psql, migrate and seed_storm output
#   pgbouncer.log        PgBouncer's log ("pooler error: query_wait_timeout")
#   pgbouncer.ini        the rendered configuration, pgbouncer.pid
#   django-error.log     every 500 with its exception text and traceback
#   gunicorn-error.log, gunicorn-access.log, gunicorn.out, gunicorn.pid
#
# Knobs are STORM_* variables; bench/storm/defaults.env sets the defaults (a
# variable already set in the environment wins) and says why they are what
# they are.

STORM_STACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STORM_ROOT=$(cd "$STORM_STACK_DIR/../.." && pwd)
STORM_SITE=$STORM_ROOT/bench/site
# shellcheck source=defaults.env
source "$STORM_STACK_DIR/defaults.env"

STORM_PYTHON=/usr/bin/python3 # Debian's: the one that sees Debian's Django
STORM_GUNICORN=/usr/bin/gunicorn
STORM_PGBOUNCER=/usr/sbin/pgbouncer
# Debian's psql is a Perl wrapper that picks a version: call the binary behind
# it, as pgbouncer_show_pools runs every second on a machine short of CPU.
_storm_psql_bin() {
	local bin
	bin=$(ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n1 || true)
	echo "${bin:-psql}"
}
STORM_PACKAGES=(postgresql pgbouncer python3-django python3-django-allauth gunicorn
	python3-psycopg2 python3-locust python3-matplotlib haproxy curl)

# ------------------------------------------------------------------ helpers

_storm_work() {
	if [[ -z ${STORM_WORK:-} ]]; then
		echo "stack: STORM_WORK is not set" >&2
		return 1
	fi
	mkdir -p "$STORM_WORK" || return 1
	STORM_WORK=$(cd "$STORM_WORK" && pwd)
}

_storm_log() {
	printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$STORM_WORK/stack.log"
}

# Report an error (stderr and stack.log). Returns 0, so that under the
# caller's `set -e` the failing function still cleans up and returns 1 itself.
_storm_error() {
	if [[ -n ${STORM_WORK:-} && -d ${STORM_WORK:-} ]]; then _storm_log "ERROR: $*"; fi
	echo "stack: $*" >&2
}

_storm_alive() { # pidfile
	local pid
	[[ -s $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

_storm_port_busy() { # port
	[[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
}

# Stop the process in a pidfile with a signal, wait up to $3 seconds for it
# (and the children it had) to go, then SIGKILL what is left.
_storm_stop_pidfile() { # pidfile signal seconds name
	local pidfile=$1 sig=$2 secs=$3 name=$4 pid kids i k left
	if ! _storm_alive "$pidfile"; then
		rm -f "$pidfile"
		return 0
	fi
	pid=$(<"$pidfile")
	kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
	_storm_log "$name: stopping pid $pid (SIG$sig)${kids:+, children $kids}"
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		_storm_log "$name: pid $pid still running after ${secs}s, SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		left=
		for k in $kids; do kill -0 "$k" 2>/dev/null && left+="$k "; done
		[[ -z $left ]] && break
		if ((i == 30)); then kill -KILL $left 2>/dev/null || true; fi
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		_storm_error "$name: pid $pid did not exit"
		return 1
	fi
	rm -f "$pidfile"
	_storm_log "$name: stopped"
}

# psql as the postgres superuser over the local socket (peer auth), on the
# given database; SQL on stdin or via -c.
_storm_psql_admin() { # db [psql args...]
	local db=$1
	shift
	runuser -u postgres -- timeout 60 psql -X -q -v ON_ERROR_STOP=1 -p "$STORM_PG_PORT" -d "$db" "$@"
}

# The environment Django runs with; the database port is an argument because
# migrations go straight to PostgreSQL (PgBouncer may not be up yet).
_storm_django_env() { # db_port
	printf '%s\n' \
		"DJANGO_SETTINGS_MODULE=stormsite.settings" \
		"STORM_DB_HOST=127.0.0.1" \
		"STORM_DB_PORT=$1" \
		"STORM_DB_NAME=$STORM_DB_NAME" \
		"STORM_DB_USER=$STORM_DB_USER" \
		"STORM_DB_PASSWORD=$STORM_DB_PASSWORD" \
		"STORM_PBKDF2_ITERATIONS=$STORM_PBKDF2_ITERATIONS" \
		"STORM_SECRET_KEY=$STORM_SECRET_KEY" \
		"STORM_CACHE_DIR=$STORM_WORK/django-cache" \
		"STORM_DJANGO_ERROR_LOG=$STORM_WORK/django-error.log"
}

_storm_manage() { # timeout_seconds manage.py args...
	local secs=$1 envs
	shift
	mapfile -t envs < <(_storm_django_env "$STORM_PG_PORT")
	(cd "$STORM_SITE" && env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP "${envs[@]}" \
		timeout "$secs" "$STORM_PYTHON" manage.py "$@")
}

# ------------------------------------------------------------------ packages

ensure_packages() {
	_storm_work || return 1
	local p missing=() log=$STORM_WORK/packages.log
	for p in "${STORM_PACKAGES[@]}"; do
		[[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		_storm_log "packages: all installed"
		return 0
	fi
	_storm_log "packages: installing ${missing[*]}"
	echo "stack: installing ${missing[*]} (apt-get, log in $log)" >&2
	if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -q >>"$log" 2>&1; then
		_storm_error "apt-get update failed, see $log"
		return 1
	fi
	if ! DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -q "${missing[@]}" >>"$log" 2>&1; then
		_storm_error "apt-get install ${missing[*]} failed, see $log"
		return 1
	fi
	# A fresh install may start Debian's own pgbouncer and haproxy services;
	# the benchmark runs its own, so stop those (only when just installed).
	for p in pgbouncer haproxy; do
		if [[ " ${missing[*]} " == *" $p "* ]]; then
			{ systemctl stop "$p" || service "$p" stop; } >>"$log" 2>&1 || true
			{ systemctl disable "$p" || update-rc.d "$p" disable; } >>"$log" 2>&1 || true
		fi
	done
	_storm_log "packages: installed ${missing[*]}"
}

# ------------------------------------------------------------------ postgres

ensure_postgres() {
	_storm_work || return 1
	local i ver
	if pg_isready -q -h 127.0.0.1 -p "$STORM_PG_PORT" -t 2; then
		_storm_log "postgres: accepting connections on 127.0.0.1:$STORM_PG_PORT"
		return 0
	fi
	ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
	if [[ -z $ver ]]; then
		_storm_error "no PostgreSQL cluster in /etc/postgresql"
		return 1
	fi
	_storm_log "postgres: starting cluster $ver/main"
	timeout 60 pg_ctlcluster --skip-systemctl-redirect "$ver" main start >>"$STORM_WORK/db.log" 2>&1 || true
	for ((i = 0; i < 60; i++)); do
		if pg_isready -q -h 127.0.0.1 -p "$STORM_PG_PORT" -t 1; then
			_storm_log "postgres: up"
			return 0
		fi
		sleep 0.5
	done
	_storm_error "PostgreSQL is not accepting connections on 127.0.0.1:$STORM_PG_PORT (see $STORM_WORK/db.log)"
	return 1
}

db_create() {
	_storm_work || return 1
	local log=$STORM_WORK/db.log
	_storm_log "db: (re)creating $STORM_DB_NAME owned by $STORM_DB_USER"
	# The role gets a password too, so that PgBouncer (and migrations) can log
	# in even where pg_hba.conf asks for one on 127.0.0.1.
	if ! _storm_psql_admin postgres -v role="$STORM_DB_USER" -v pw="$STORM_DB_PASSWORD" \
		-v db="$STORM_DB_NAME" >>"$log" 2>&1 <<'SQL'; then
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS missing \gset
\if :missing
CREATE ROLE :"role" LOGIN;
\endif
ALTER ROLE :"role" LOGIN PASSWORD :'pw';
ALTER ROLE :"role" SET timezone TO 'UTC';
DROP DATABASE IF EXISTS :"db" WITH (FORCE);
CREATE DATABASE :"db" OWNER :"role";
SQL
		_storm_error "creating database $STORM_DB_NAME failed, see $log"
		return 1
	fi
	if ! _storm_manage 300 migrate --noinput >>"$log" 2>&1; then
		_storm_error "migrate failed, see $log"
		return 1
	fi
	if ! _storm_manage 300 seed_storm --users "$STORM_USERS" --projects "$STORM_PROJECTS" >>"$log" 2>&1; then
		_storm_error "seed_storm failed, see $log"
		return 1
	fi
	_storm_log "db: $(tail -n1 "$log")"
}

db_drop() {
	_storm_work || return 1
	_storm_log "db: dropping $STORM_DB_NAME"
	if ! _storm_psql_admin postgres -v db="$STORM_DB_NAME" >>"$STORM_WORK/db.log" 2>&1 <<'SQL'; then
DROP DATABASE IF EXISTS :"db" WITH (FORCE);
SQL
		_storm_error "dropping database $STORM_DB_NAME failed, see $STORM_WORK/db.log"
		return 1
	fi
	# The role goes too, unless it still owns something elsewhere.
	_storm_psql_admin postgres -v role="$STORM_DB_USER" >>"$STORM_WORK/db.log" 2>&1 <<'SQL' || true
DROP ROLE IF EXISTS :"role";
SQL
	_storm_log "db: dropped"
}

clear_sessions() {
	_storm_work || return 1
	local out
	# Straight to PostgreSQL as the superuser: never queued behind the pool.
	if ! out=$(_storm_psql_admin "$STORM_DB_NAME" -At -c 'WITH d AS (DELETE FROM django_session RETURNING 1) SELECT count(*) FROM d' 2>&1); then
		_storm_error "clearing django_session failed: $out"
		return 1
	fi
	# allauth's login-attempt counters live in Django's file cache.
	rm -rf "${STORM_WORK:?}/django-cache"
	mkdir -p "$STORM_WORK/django-cache"
	_storm_log "sessions: deleted $out django_session rows, emptied the login-attempt cache"
}

# ------------------------------------------------------------------ pgbouncer

pgbouncer_start() {
	_storm_work || return 1
	local pidfile=$STORM_WORK/pgbouncer.pid run i
	if _storm_alive "$pidfile"; then
		_storm_log "pgbouncer: already running (pid $(<"$pidfile"))"
		return 0
	fi
	if [[ -n ${_STORM_PGBOUNCER_PIDFILE:-} ]] && _storm_alive "$_STORM_PGBOUNCER_PIDFILE"; then
		_storm_log "pgbouncer: already running (pid $(<"$_STORM_PGBOUNCER_PIDFILE"), logging to $(dirname "$_STORM_PGBOUNCER_PIDFILE"))"
		return 0
	fi
	if _storm_port_busy "$STORM_PGBOUNCER_PORT"; then
		_storm_error "port 127.0.0.1:$STORM_PGBOUNCER_PORT is taken by another process: $(ss -Hltnp "sport = :$STORM_PGBOUNCER_PORT" | head -n1)"
		return 1
	fi
	# PgBouncer refuses to run as root: it runs as postgres, which must be able
	# to read its configuration. Its log is its stderr, written by this shell,
	# so only the run directory needs to be reachable by postgres.
	run=$STORM_WORK/pgbouncer
	mkdir -p "$run" && chown postgres: "$run" && chmod 700 "$run" || return 1
	if ! runuser -u postgres -- test -w "$run"; then
		run=$(mktemp -d "${TMPDIR:-/tmp}/storm-pgbouncer.XXXXXX") && chown postgres: "$run" || return 1
		_storm_log "pgbouncer: $STORM_WORK is not reachable by postgres, configuration in $run"
	fi
	printf '%s\n' "$run" >"$STORM_WORK/pgbouncer.rundir"
	sed -e "s|@DB_NAME@|$STORM_DB_NAME|g" -e "s|@DB_USER@|$STORM_DB_USER|g" \
		-e "s|@PG_PORT@|$STORM_PG_PORT|g" -e "s|@PGBOUNCER_PORT@|$STORM_PGBOUNCER_PORT|g" \
		-e "s|@POOL@|$STORM_POOL|g" -e "s|@QUERY_WAIT@|$STORM_QUERY_WAIT|g" \
		-e "s|@RUN_DIR@|$run|g" "$STORM_STACK_DIR/pgbouncer.ini.tmpl" >"$run/pgbouncer.ini" || return 1
	if grep -v '^;' "$run/pgbouncer.ini" | grep -q '@[A-Z_]*@'; then
		_storm_error "pgbouncer.ini: unrendered placeholder $(grep -v '^;' "$run/pgbouncer.ini" | grep -o '@[A-Z_]*@' | head -n1)"
		pgbouncer_stop
		return 1
	fi
	printf '"%s" "%s"\n' "$STORM_DB_USER" "$STORM_DB_PASSWORD" >"$run/userlist.txt"
	chown postgres: "$run/pgbouncer.ini" "$run/userlist.txt" && chmod 600 "$run/userlist.txt" || return 1
	cp "$run/pgbouncer.ini" "$STORM_WORK/pgbouncer.ini"
	_storm_log "pgbouncer: starting on 127.0.0.1:$STORM_PGBOUNCER_PORT (pool $STORM_POOL, query_wait_timeout ${STORM_QUERY_WAIT}s)"
	setpriv --reuid=postgres --regid=postgres --init-groups \
		"$STORM_PGBOUNCER" "$run/pgbouncer.ini" </dev/null >>"$STORM_WORK/pgbouncer.log" 2>&1 &
	echo $! >"$pidfile"
	_STORM_PGBOUNCER_PIDFILE=$pidfile
	for ((i = 0; i < 100; i++)); do
		if ! _storm_alive "$pidfile"; then
			_storm_error "pgbouncer exited at start, see $STORM_WORK/pgbouncer.log: $(tail -n3 "$STORM_WORK/pgbouncer.log")"
			rm -f "$pidfile"
			return 1
		fi
		if pgbouncer_show_pools >/dev/null 2>&1; then
			# One query through the pool: PgBouncer learns the server's
			# parameters and SHOW POOLS has the app database's row from now on.
			if ! PGCONNECT_TIMEOUT=5 timeout 10 psql -X -q -h 127.0.0.1 -p "$STORM_PGBOUNCER_PORT" \
				-U "$STORM_DB_USER" -d "$STORM_DB_NAME" -c 'SELECT 1' >/dev/null 2>>"$STORM_WORK/stack.log"; then
				_storm_error "pgbouncer is up but cannot reach $STORM_DB_NAME (see $STORM_WORK/pgbouncer.log)"
				pgbouncer_stop
				return 1
			fi
			_storm_log "pgbouncer: up (pid $(<"$pidfile"))"
			return 0
		fi
		sleep 0.1
	done
	_storm_error "pgbouncer did not answer on 127.0.0.1:$STORM_PGBOUNCER_PORT within 10s"
	pgbouncer_stop
	return 1
}

pgbouncer_stop() {
	_storm_work || return 1
	local pidfile run
	# The one this shell started, even if STORM_WORK changed since, and the
	# one STORM_WORK records.
	for pidfile in ${_STORM_PGBOUNCER_PIDFILE:+"$_STORM_PGBOUNCER_PIDFILE"} "$STORM_WORK/pgbouncer.pid"; do
		# SIGTERM is PgBouncer's immediate shutdown (SIGINT waits for clients).
		_storm_stop_pidfile "$pidfile" TERM 10 pgbouncer || return 1
		run=${pidfile%.pid}.rundir
		if [[ -s $run ]]; then
			[[ $(<"$run") == "${TMPDIR:-/tmp}"/storm-pgbouncer.* ]] && rm -rf "$(<"$run")"
			rm -f "$run"
		fi
	done
	_STORM_PGBOUNCER_PIDFILE=
	return 0
}

# The app database's rows of PgBouncer's SHOW POOLS, tab-separated, no header
# (pgbouncer_pools_columns prints the column names).
pgbouncer_show_pools() {
	[[ -n ${_STORM_PSQL:-} ]] || _STORM_PSQL=$(_storm_psql_bin)
	PGCONNECT_TIMEOUT=2 timeout 5 "$_STORM_PSQL" -X -h 127.0.0.1 -p "$STORM_PGBOUNCER_PORT" -U "$STORM_DB_USER" \
		-d pgbouncer -At -F $'\t' -c 'SHOW POOLS' | awk -F '\t' -v db="$STORM_DB_NAME" '$1 == db'
}

pgbouncer_pools_columns() {
	[[ -n ${_STORM_PSQL:-} ]] || _STORM_PSQL=$(_storm_psql_bin)
	PGCONNECT_TIMEOUT=2 timeout 5 "$_STORM_PSQL" -X -h 127.0.0.1 -p "$STORM_PGBOUNCER_PORT" -U "$STORM_DB_USER" \
		-d pgbouncer -A -F $'\t' -P footer=off -c 'SHOW POOLS' | head -n1
}

# ------------------------------------------------------------------ gunicorn

gunicorn_start() {
	_storm_work || return 1
	local pidfile=$STORM_WORK/gunicorn.pid envs i
	if _storm_alive "$pidfile"; then
		_storm_log "gunicorn: already running (pid $(<"$pidfile"))"
		return 0
	fi
	if [[ -n ${_STORM_GUNICORN_PIDFILE:-} ]] && _storm_alive "$_STORM_GUNICORN_PIDFILE"; then
		_storm_log "gunicorn: already running (pid $(<"$_STORM_GUNICORN_PIDFILE"), logging to $(dirname "$_STORM_GUNICORN_PIDFILE"))"
		return 0
	fi
	if _storm_port_busy "$STORM_APP_PORT"; then
		_storm_error "port 127.0.0.1:$STORM_APP_PORT is taken by another process: $(ss -Hltnp "sport = :$STORM_APP_PORT" | head -n1)"
		return 1
	fi
	# A fresh start is a fresh login-attempt cache: no lockout carries over.
	rm -rf "${STORM_WORK:?}/django-cache"
	mkdir -p "$STORM_WORK/django-cache"
	mapfile -t envs < <(_storm_django_env "$STORM_PGBOUNCER_PORT")
	_storm_log "gunicorn: starting on 127.0.0.1:$STORM_APP_PORT ($STORM_WORKERS gthread workers x $STORM_THREADS threads, PBKDF2 $STORM_PBKDF2_ITERATIONS iterations)"
	env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP "${envs[@]}" \
		"$STORM_GUNICORN" stormsite.wsgi:application \
		--chdir "$STORM_SITE" \
		--bind "127.0.0.1:$STORM_APP_PORT" \
		--worker-class gthread --workers "$STORM_WORKERS" --threads "$STORM_THREADS" \
		--timeout "$STORM_GUNICORN_TIMEOUT" --graceful-timeout 10 \
		--backlog 2048 --keep-alive "$STORM_KEEPALIVE" \
		--error-logfile "$STORM_WORK/gunicorn-error.log" --log-level info \
		--access-logfile "$STORM_WORK/gunicorn-access.log" \
		--access-logformat '%(t)s "%(r)s" %(s)s %(B)s %(L)s' \
		</dev/null >>"$STORM_WORK/gunicorn.out" 2>&1 &
	echo $! >"$pidfile"
	_STORM_GUNICORN_PIDFILE=$pidfile
	for ((i = 0; i < 600; i++)); do
		if ! _storm_alive "$pidfile"; then
			_storm_error "gunicorn exited at start, see $STORM_WORK/gunicorn-error.log: $(tail -n3 "$STORM_WORK/gunicorn-error.log" 2>/dev/null)"
			rm -f "$pidfile"
			return 1
		fi
		if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$STORM_APP_PORT/healthz") == 200 ]]; then
			_storm_log "gunicorn: up (pid $(<"$pidfile"))"
			return 0
		fi
		sleep 0.1
	done
	_storm_error "gunicorn did not answer on 127.0.0.1:$STORM_APP_PORT within 60s"
	gunicorn_stop
	return 1
}

gunicorn_stop() {
	_storm_work || return 1
	local pidfile
	# The one this shell started, even if STORM_WORK changed since, and the
	# one STORM_WORK records. SIGTERM: graceful, workers finish what they
	# serve (--graceful-timeout 10).
	for pidfile in ${_STORM_GUNICORN_PIDFILE:+"$_STORM_GUNICORN_PIDFILE"} "$STORM_WORK/gunicorn.pid"; do
		_storm_stop_pidfile "$pidfile" TERM 15 gunicorn || return 1
	done
	_STORM_GUNICORN_PIDFILE=
}

# ------------------------------------------------------------------ all

stack_stop_all() {
	[[ -n ${STORM_WORK:-} && -d ${STORM_WORK:-} ]] || return 0
	local rc=0
	gunicorn_stop || rc=1
	pgbouncer_stop || rc=1
	return $rc
}
