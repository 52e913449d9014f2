#!/usr/bin/python3
"""Load and report of the storm stack's fault test (bench/storm/chaos).

Debian's /usr/bin/python3, standard library only.

  chaos.py load   --url URL --duration S [--users N] [--login-users M] --out requests.csv
      A bounded, closed-loop load of logins and core page views, one thread
      per simulated user, writing one CSV row per request as it completes.
  chaos.py report DIR
      Reads DIR (requests.csv, events.tsv, lanegate-config.txt, status.jsonl,
      status-end.json, lanegate.log, stack/django-error.log,
      stack/pgbouncer.log), prints the pass/fail table, writes summary.txt,
      summary.json and phases.csv, and exits 1 when a check failed.

The users
---------
Every user is a script client of the kind lanegate answers with 503,
Retry-After and a ticket (Accept: */*, no Sec-Fetch-Mode), so every request
is either answered by the app or refused with a status that says so; there
are no waiting pages or 307 holds to interpret.

  browsing (N - M)  logs in once (GET the form, POST the credentials), then
                    views core pages every 0.5-1.5 s: the HTML pages and
                    (with Accept: application/json, X-Requested-With) the
                    JSON endpoints. Logs in again, with the next account,
                    when its session is gone or its login failed.
  login (M)         logs in, views two pages, drops its cookies (a new
                    visitor), again: a steady trickle of logins.

Each login takes the next account in turn (storm0001, storm0002, ...), so
no account sees allauth's attempt limit (5 failures in 300 s) even when
logins die in an outage. A 503/429 with Retry-After is honoured (at most
--retry-cap seconds); a login POST refused so is sent again with its
ticket (Lanegate-Ticket header and cookie), as the storm's script users do.
Any other failure: the user pauses its think time and carries on.

requests.csv columns
--------------------
  t_start,t_end   epoch seconds (the same clock as events.tsv)
  user,role       user number, browsing or login
  kind            login_get, login_post, page (HTML) or api (JSON)
  path            the path, project ids as [id]
  status          HTTP status, 0 when there was no answer (refused,
                  reset, client timeout)
  ms              milliseconds from sending to the end of the body
  outcome         ok; shed (503/429 with Retry-After); error (5xx, a
                  503/429 without Retry-After, no answer); fail (anything
                  else that is not what was asked: a page redirected to the
                  login form, the login form again after a POST)
  by              app (the answer carries gunicorn's Server header: Django
                  answered), lanegate (lanegate answered itself), or empty
  retry_after     the Retry-After header, as sent
  detail          why, for anything not ok (short)
"""

import argparse
import csv
import datetime as dt
import http.client
import json
import math
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  the storm's report, for its percentile
import threading
import time
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

LOGIN_PATH = "/accounts/login/"
PASSWORD = "storm-password"
CSRF_INPUT = re.compile(
    r"""<input[^>]*name=["']csrfmiddlewaretoken["'][^>]*value=["']([^"']+)["']"""
    r"""|<input[^>]*value=["']([^"']+)["'][^>]*name=["']csrfmiddlewaretoken["']"""
)
TICKET_HEADER = "Lanegate-Ticket"
TICKET_COOKIE = "lanegate_ticket"
SHED_STATUSES = (429, 503)

# Core requests: (kind, path template, weight). HTML pages as a browser
# would ask (but not as a navigation), JSON as a single-page front end.
PAGES = [
    ("page", "/dashboard/", 3),
    ("page", "/detail_project/{}/harga-items/", 2),
    ("page", "/detail_project/{}/rekap-rab/", 2),
    ("page", "/detail_project/{}/list-pekerjaan/", 2),
    ("page", "/detail_project/{}/jadwal-pekerjaan/", 1),
    ("api", "/detail_project/api/project/{}/list-pekerjaan/tree/", 2),
    ("api", "/api/project/{}/pricing/", 2),
]
HTML_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
JSON_HEADERS = {"Accept": "application/json", "X-Requested-With": "XMLHttpRequest"}

# ------------------------------------------------------------------ load


class Recorder:
    """requests.csv, written by every user thread under one lock."""

    COLUMNS = ["t_start", "t_end", "user", "role", "kind", "path", "status", "ms", "outcome", "by",
               "retry_after", "detail"]

    def __init__(self, path):
        self.f = open(path, "w", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(self.COLUMNS)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "ok": 0, "shed": 0, "error": 0, "fail": 0, "logins": 0}

    def row(self, t0, t1, user, role, kind, path, status, outcome, by, ra, detail):
        with self.lock:
            self.w.writerow([f"{t0:.3f}", f"{t1:.3f}", user, role, kind, path, status,
                             f"{(t1 - t0) * 1000:.1f}", outcome, by, ra, detail[:120]])
            self.counts["requests"] += 1
            self.counts[outcome] += 1
            if kind == "login_post" and outcome == "ok":
                self.counts["logins"] += 1

    def close(self):
        with self.lock:
            self.f.close()


class Answer:
    __slots__ = ("status", "headers", "body", "set_cookies", "error")

    def __init__(self, status=0, headers=None, body=b"", set_cookies=(), error=""):
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.set_cookies = set_cookies
        self.error = error

    def header(self, name):
        return self.headers.get(name.lower())

    def retry_after(self):
        v = self.header("Retry-After")
        if v is None:
            return None
        try:
            return max(0.0, float(v.strip()))
        except ValueError:
            return None

    def by(self):
        if self.status == 0:
            return ""
        return "app" if (self.header("Server") or "").startswith("gunicorn") else "lanegate"


class User(threading.Thread):
    def __init__(self, n, role, args, rec, accounts, deadline, stop):
        super().__init__(daemon=True, name=f"user{n}")
        self.n, self.role, self.args, self.rec = n, role, args, rec
        self.accounts, self.deadline, self.stop = accounts, deadline, stop
        u = urlsplit(args.url)
        self.host, self.port = u.hostname, u.port or 80
        self.hosthdr = u.netloc
        self.conn = None
        self.cookies = {}
        self.ticket = None
        self.logged_in = False
        self.rng = random.Random(n * 7919 + int(time.time()))

    # -- plumbing --------------------------------------------------------

    def left(self):
        return self.deadline - time.time()

    def sleep(self, s):
        s = min(s, max(0.0, self.left()))
        if s > 0:
            self.stop.wait(s)

    def think(self):
        self.sleep(self.rng.uniform(self.args.think_min, self.args.think_max))

    def _send(self, method, path, body, headers):
        """One exchange on the user's keep-alive connection. A connection the
        server closed while it sat idle fails at once without an answer; like
        a browser, retry that once on a new connection."""
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.args.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                cookies = r.msg.get_all("Set-Cookie") or []
                if r.will_close:
                    self.conn.close()
                    self.conn = None
                return Answer(r.status, hdrs, data, cookies)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.conn.close()
                self.conn = None
                if reused and attempt == 0:
                    continue
                return Answer(error=type(e).__name__)
            except (OSError, http.client.HTTPException) as e:
                # Timeouts, refusals and protocol errors: no answer.
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                return Answer(error=type(e).__name__ + (": " + str(e) if str(e) else ""))
        return Answer(error="unreachable")

    def take_cookies(self, a):
        for raw in a.set_cookies:
            c = SimpleCookie()
            try:
                c.load(raw)
            except Exception:  # noqa: BLE001 - a cookie we cannot parse is not ours to keep
                continue
            for name, m in c.items():
                gone = m["max-age"] in ("0",) or (m["expires"] and "1970" in m["expires"]) or m.value == ""
                if gone:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = m.value

    def request(self, kind, method, path, name, body=None, headers=None):
        h = {"Host": self.hosthdr, "User-Agent": "storm-chaos/1"}
        if headers:
            h.update(headers)
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            body = urlencode(body).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
        t0 = time.time()
        a = self._send(method, path, body, h)
        t1 = time.time()
        self.take_cookies(a)
        return t0, t1, a

    def log(self, t0, t1, kind, name, a, outcome, detail=""):
        ra = a.header("Retry-After") or ""
        if outcome != "ok" and not detail:
            detail = a.error or describe(a)
        self.rec.row(t0, t1, self.n, self.role, kind, name, a.status, outcome, a.by(), ra, detail)

    @staticmethod
    def is_shed(a):
        return a.status in SHED_STATUSES and a.retry_after() is not None

    def classify_error(self, a):
        if self.is_shed(a):
            return "shed"
        if a.status == 0 or a.status >= 500 or a.status in SHED_STATUSES:
            return "error"
        return "fail"

    def honour(self, a):
        """Wait as a shed answer asked, at most --retry-cap."""
        self.sleep(max(0.2, min(a.retry_after() or 0, self.args.retry_cap)))

    # -- what users do ---------------------------------------------------

    def login(self):
        """One login with the next account: GET the form, POST it (again
        with the ticket while lanegate sheds it). True when logged in."""
        account = self.accounts()
        self.cookies = {k: v for k, v in self.cookies.items() if k == TICKET_COOKIE}
        self.logged_in = False
        t0, t1, a = self.request("login_get", "GET", LOGIN_PATH, LOGIN_PATH, headers={"Accept": "*/*"})
        token = None
        if a.status == 200:
            m = CSRF_INPUT.search(a.body.decode("utf-8", "replace"))
            token = (m.group(1) or m.group(2)) if m else None
        if token:
            self.log(t0, t1, "login_get", LOGIN_PATH, a, "ok")
        else:
            out = self.classify_error(a)
            self.log(t0, t1, "login_get", LOGIN_PATH, a, out,
                     "" if out != "fail" or a.status != 200 else "no CSRF token")
            if out == "shed":
                self.honour(a)
            else:
                self.think()
            return False
        form = {"login": account, "password": PASSWORD, "csrfmiddlewaretoken": token}
        while self.left() > 0 and not self.stop.is_set():
            hdrs = {"Accept": "*/*", "Referer": self.args.url.rstrip("/") + LOGIN_PATH}
            if self.ticket:
                hdrs[TICKET_HEADER] = self.ticket
            t0, t1, a = self.request("login_post", "POST", LOGIN_PATH, LOGIN_PATH, body=form, headers=hdrs)
            tok = a.header(TICKET_HEADER)
            if tok:
                self.ticket = tok
            loc = a.header("Location") or ""
            if a.status in (301, 302, 303) and "sessionid" in self.cookies and LOGIN_PATH not in loc:
                self.log(t0, t1, "login_post", LOGIN_PATH, a, "ok")
                self.logged_in = True
                self.ticket = None
                return True
            out = self.classify_error(a)
            if out == "shed":
                self.log(t0, t1, "login_post", LOGIN_PATH, a, "shed")
                self.honour(a)
                continue  # the same form again, with the ticket
            detail = ""
            if a.status == 200:
                body = a.body.decode("utf-8", "replace")
                detail = ("locked out by the attempt limit" if "Too many failed login attempts" in body
                          else "the form again (bad credentials or invalid form)")
            elif a.status in (301, 302, 303):
                detail = f"{a.status} to {loc or '?'} without a session"
            self.log(t0, t1, "login_post", LOGIN_PATH, a, out, detail)
            self.ticket = None
            self.think()
            return False
        return False

    def view(self):
        """One core request. False when the session is gone."""
        kind, tmpl, _ = self.rng.choices(PAGES, weights=[w for _, _, w in PAGES])[0]
        pid = self.rng.randint(1, self.args.projects)
        path = tmpl.format(pid)
        name = tmpl.format("[id]") if "{}" in tmpl else tmpl
        headers = dict(JSON_HEADERS) if kind == "api" else {"Accept": HTML_ACCEPT}
        t0, t1, a = self.request(kind, "GET", path, name, headers=headers)
        ctype = a.header("Content-Type") or ""
        if a.status == 200 and (kind != "api" or "json" in ctype):
            self.log(t0, t1, kind, name, a, "ok")
            self.think()
            return True
        out = self.classify_error(a)
        detail = ""
        if a.status in (301, 302, 303):
            detail = f"{a.status} to {a.header('Location') or '?'} (session lost)"
        elif a.status == 200:
            detail = "not JSON: " + ctype
        self.log(t0, t1, kind, name, a, out, detail)
        if out == "shed":
            self.honour(a)
        else:
            self.think()
        return a.status not in (301, 302, 303)

    def run(self):
        # Stagger the start so the first logins do not all arrive at once.
        self.sleep(self.n * self.args.stagger)
        views = 0
        while self.left() > 0 and not self.stop.is_set():
            if not self.logged_in:
                if not self.login():
                    continue
                views = 0
            if not self.view():
                self.logged_in = False
                continue
            views += 1
            if self.role == "login" and views >= 2:
                # A new visitor: drop the session (and any ticket) and log in again.
                self.cookies = {}
                self.logged_in = False
                self.think()
        if self.conn is not None:
            self.conn.close()


def describe(a):
    if a.status == 0:
        return a.error or "no answer"
    if a.status in SHED_STATUSES and a.retry_after() is None:
        return f"HTTP {a.status} without Retry-After"
    text = a.body[:200].decode("utf-8", "replace")
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return f"HTTP {a.status}: {text[:80]}" if text else f"HTTP {a.status}"


def cmd_load(args):
    rec = Recorder(args.out)
    stop = threading.Event()
    start = time.time()
    deadline = start + args.duration
    lock = threading.Lock()
    counter = [args.first_account - 1]

    def next_account():
        with lock:
            counter[0] = counter[0] % args.accounts + 1
            return f"storm{counter[0]:04d}"

    n_login = min(args.login_users, args.users)
    users = [User(i + 1, "login" if i < n_login else "browsing", args, rec, next_account, deadline, stop)
             for i in range(args.users)]
    print(f"chaos: load: {args.users} users ({n_login} logging in over and over) for {args.duration}s "
          f"against {args.url}", file=sys.stderr, flush=True)
    for u in users:
        u.start()
    last = 0
    try:
        while any(u.is_alive() for u in users):
            time.sleep(0.5)
            el = time.time() - start
            if args.progress and el - last >= args.progress:
                last = el
                c = dict(rec.counts)
                print(f"chaos: load {el:5.0f}/{args.duration}s  requests {c['requests']:6d}  ok {c['ok']:6d}  "
                      f"shed {c['shed']:5d}  error {c['error']:5d}  fail {c['fail']:4d}  logins {c['logins']:4d}",
                      file=sys.stderr, flush=True)
            if el > args.duration + args.timeout + 10:
                break  # every request is bounded by --timeout; this is the belt to those braces
    except KeyboardInterrupt:
        pass
    stop.set()
    for u in users:
        u.join(timeout=args.timeout + 5)
    rec.close()
    alive = sum(u.is_alive() for u in users)
    if alive:
        print(f"chaos: load: {alive} users still in a request at the end", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ report


def go_duration(s):
    """Seconds in a Go duration string (1m30s, 500ms, 10s, 2h0m0s)."""
    s = s.strip().strip("'")
    if s in ("", "0"):
        return 0.0
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total, pos = 0.0, 0
    for m in re.finditer(r"([0-9.]+)(ms|us|µs|ns|h|m|s)", s):
        if m.start() != pos:
            raise ValueError(f"bad duration {s!r}")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"bad duration {s!r}")
    return total


def read_config(path):
    conf = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^(LANEGATE_[A-Z0-9_]+)=(\S*)", line)
            if m:
                conf[m.group(1)] = m.group(2).strip("'")
    return conf


def read_events(path):
    ev = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                ev.setdefault(parts[1], float(parts[0]))
    return ev


def pct(values, p):
    """Nearest-rank percentile, the storm report's, so both agree."""
    return report.percentile(values, p)


def fmt_s(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def iso_epoch(text):
    """Epoch seconds of 2026-01-11T12:51:06.134Z / 2026-01-11 12:51:06.134 UTC."""
    text = text.strip().replace(" UTC", "Z").replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return dt.datetime.fromisoformat(text).timestamp()


def cmd_report(args):
    d = args.dir
    conf = read_config(os.path.join(d, "lanegate-config.txt"))
    ev = read_events(os.path.join(d, "events.tsv"))
    with open(os.path.join(d, "requests.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["t_start"], r["t_end"], r["ms"] = float(r["t_start"]), float(r["t_end"]), float(r["ms"])
        r["status"] = int(r["status"])

    header_timeout = go_duration(conf["LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT"])
    core_wait = go_duration(conf["LANEGATE_CORE_QUEUE_TIMEOUT"])
    login_hold = go_duration(conf["LANEGATE_LOGIN_MAX_HOLD"])
    dial = go_duration(conf.get("LANEGATE_UPSTREAM_DIAL_TIMEOUT", "2s"))
    budget = int(conf["LANEGATE_BUDGET"])
    slack = args.slack
    # The longest any answer may take: the lane's wait in lanegate, then the
    # upstream's time to answer (bounded by the response-header timeout; the
    # dial comes first), then slack for a body and a busy machine.
    bound_core = core_wait + dial + header_timeout + slack
    bound_login = login_hold + dial + header_timeout + slack

    t_load0, t_load1 = ev["load_start"], ev["load_end"]
    phases = [
        ("warm-up", t_load0, t_load0 + args.warmup),
        ("baseline", t_load0 + args.warmup, ev["pgbouncer_stop"]),
        ("pgbouncer down", ev["pgbouncer_stop"], ev["pgbouncer_up"]),
        ("after pgbouncer", ev["pgbouncer_up"], ev["postgres_stop"]),
        ("postgres down", ev["postgres_stop"], ev["postgres_up"]),
    ]
    frozen = "postgres_freeze" in ev and "postgres_thaw" in ev
    if frozen:
        phases += [
            ("after postgres", ev["postgres_up"], ev["postgres_freeze"]),
            ("postgres frozen", ev["postgres_freeze"], ev["postgres_thaw"]),
            ("after freeze", ev["postgres_thaw"], t_load1 + 3600),
        ]
    else:
        phases.append(("after postgres", ev["postgres_up"], t_load1 + 3600))

    def phase_of(t):
        for name, a, b in phases:
            if a <= t < b:
                return name
        return "warm-up" if t < t_load0 + args.warmup else phases[-1][0]

    for r in rows:
        r["phase"] = phase_of(r["t_end"])

    # ---- per-phase table
    def bucket(r):
        s, by, o = r["status"], r["by"], r["outcome"]
        if o == "ok":
            return "ok"
        if o == "shed":
            return f"{s}+RA"
        if s == 0:
            return "no answer"
        if s >= 500:
            return f"{s} {by}"
        return "other"

    cols = ["ok", "503+RA", "429+RA", "500 app", "502 lanegate", "503 lanegate", "504 lanegate",
            "no answer", "other"]
    table = []
    for name, a, b in phases:
        pr = [r for r in rows if r["phase"] == name]
        c = {k: 0 for k in cols}
        for r in pr:
            k = bucket(r)
            c[k] = c.get(k, 0) + 1
        ms = [r["ms"] for r in pr]
        shed_ms = [r["ms"] for r in pr if r["outcome"] == "shed"]
        err_ms = [r["ms"] for r in pr if r["outcome"] == "error"]
        ras = [float(r["retry_after"]) for r in pr if r["retry_after"]]
        table.append({
            "phase": name, "from": a - t_load0, "to": min(b, t_load1) - t_load0, "requests": len(pr), **c,
            "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "max_ms": max(ms) if ms else None,
            "shed_p95_ms": pct(shed_ms, 95), "error_p95_ms": pct(err_ms, 95),
            "retry_after_max": max(ras) if ras else None,
            "logins_ok": sum(1 for r in pr if r["kind"] == "login_post" and r["outcome"] == "ok"),
            "logins_tried": sum(1 for r in pr if r["kind"] == "login_post" and r["outcome"] != "shed"),
        })

    # ---- the app's and PgBouncer's logs, per phase
    causes = {}
    dj = os.path.join(d, "stack", "django-error.log")
    if os.path.exists(dj):
        with open(dj, errors="replace") as f:
            for line in f:
                m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) ERROR django\.request .*?\[(\w+): (.*)\]\s*$",
                             line)
                if m:
                    cause = f"{m.group(2)}: {short_cause(m.group(3))}"
                    ph = phase_of(iso_epoch(m.group(1)))
                    causes.setdefault(ph, {}).setdefault("django " + cause, 0)
                    causes[ph]["django " + cause] += 1
    pgb = os.path.join(d, "stack", "pgbouncer.log")
    if os.path.exists(pgb):
        with open(pgb, errors="replace") as f:
            for line in f:
                m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ UTC) \[\d+\] (?:LOG|WARNING|ERROR) (.*)$", line)
                if not m:
                    continue
                text = m.group(2)
                key = None
                if "pooler error:" in text:
                    key = "pgbouncer pooler error: " + text.split("pooler error:", 1)[1].strip()[:60]
                elif "closing because:" in text and text.startswith("S-"):
                    key = "pgbouncer server closed: " + text.split("closing because:", 1)[1].split("(age")[0].strip()[:60]
                elif "connect failed" in text or "connect(" in text:
                    key = "pgbouncer server connect failed"
                if key:
                    ph = phase_of(iso_epoch(m.group(1)))
                    causes.setdefault(ph, {}).setdefault(key, 0)
                    causes[ph][key] += 1

    # ---- lanegate's own decisions per phase (access log)
    decisions = {}
    lg = os.path.join(d, "lanegate.log")
    if os.path.exists(lg):
        with open(lg, errors="replace") as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("msg") != "request" or "decision" not in j:
                    continue
                ph = phase_of(iso_epoch(j["ts"]) if isinstance(j["ts"], str) else float(j["ts"]))
                k = f"{j.get('lane')}/{j.get('decision')}/{j.get('status')}"
                decisions.setdefault(ph, {}).setdefault(k, 0)
                decisions[ph][k] += 1

    # ---- lanegate's /status, every second
    polls = []
    sp = os.path.join(d, "status.jsonl")
    if os.path.exists(sp):
        with open(sp) as f:
            for line in f:
                try:
                    polls.append(json.loads(line))
                except ValueError:
                    pass
    peak = {}
    for p in polls:
        st = p.get("status") or {}
        ph = phase_of(p["t"])
        pk = peak.setdefault(ph, {"in_flight": 0, "core_queued": 0, "login_queued": 0, "room_waiting": 0,
                                  "core_service_s": 0.0})
        pk["in_flight"] = max(pk["in_flight"], st.get("in_flight", 0))
        lanes = st.get("lanes", {})
        pk["core_queued"] = max(pk["core_queued"], lanes.get("core", {}).get("queued", 0))
        pk["login_queued"] = max(pk["login_queued"], lanes.get("login", {}).get("queued", 0))
        pk["room_waiting"] = max(pk["room_waiting"], st.get("waiting_room", {}).get("waiting", 0))
        try:
            pk["core_service_s"] = max(pk["core_service_s"], go_duration(lanes.get("core", {}).get("service_time", "0s")))
        except ValueError:
            pass

    # ---- PgBouncer's SHOW POOLS, every second (nothing while it is down)
    pools = {}
    pool_waiting = []  # (time, cl_waiting)
    pp = os.path.join(d, "pools.tsv")
    if os.path.exists(pp):
        with open(pp) as f:
            head = f.readline().rstrip("\n").split("\t")
            for line in f:
                v = dict(zip(head, line.rstrip("\n").split("\t")))
                try:
                    ph = phase_of(float(v["time"]))
                    pool_waiting.append((float(v["time"]), int(v.get("cl_waiting") or 0)))
                    pk = pools.setdefault(ph, {"cl_waiting": 0, "sv_active": 0, "maxwait": 0})
                    for k in pk:
                        pk[k] = max(pk[k], int(v.get(k) or 0))
                except (KeyError, ValueError):
                    continue

    # ---- checks
    checks = []

    def check(key, title, ok, detail):
        checks.append({"check": key, "title": title, "ok": bool(ok), "detail": detail})

    base = next(t for t in table if t["phase"] == "baseline")
    base_ok = base["ok"] / base["requests"] if base["requests"] else 0
    check("0", "baseline: the stack works before any fault",
          base["requests"] >= 20 and base_ok >= 0.95 and base["logins_ok"] >= 1,
          f"{base['requests']} requests, {100 * base_ok:.1f}% ok, {base['logins_ok']} logins ok")

    worst = max(rows, key=lambda r: r["ms"] - 1000 * (bound_login if r["kind"] == "login_post" else bound_core))
    over = [r for r in rows if r["ms"] / 1000 > (bound_login if r["kind"] == "login_post" else bound_core)]
    longest = max(rows, key=lambda r: r["ms"])
    check("a", "no request took longer than lanegate's bound",
          not over,
          f"bound {bound_core:.0f}s for pages (core wait {core_wait:g}s + dial {dial:g}s + response-header timeout "
          f"{header_timeout:g}s + {slack:g}s), {bound_login:.0f}s for login POSTs (hold {login_hold:g}s + ...); "
          f"longest {longest['ms'] / 1000:.1f}s ({longest['kind']} {longest['status']} in {longest['phase']}); "
          f"{len(over)} over" + (f", worst {worst['kind']} {worst['ms'] / 1000:.1f}s" if over else ""))

    sheds = [r for r in rows if r["status"] in SHED_STATUSES]
    bare = [r for r in sheds if not r["retry_after"]]
    check("b", "every 503/429 carries Retry-After", not bare,
          f"{len(sheds)} answers 503/429, {len(bare)} without Retry-After")

    # (c) honest: every failure says whose it is and comes in bounded time.
    def in_freeze(r):
        """In flight at some moment while PostgreSQL was frozen."""
        return frozen and r["t_start"] < ev["postgres_thaw"] and r["t_end"] > ev["postgres_freeze"]

    bad502 = [r for r in rows if r["status"] == 502]
    n504 = [r for r in rows if r["status"] == 504]
    bad504 = [r for r in n504 if not in_freeze(r)]
    none = [r for r in rows if r["status"] == 0]
    check("c1", "no 502, no request unanswered, 504 only for what hung in a frozen PostgreSQL",
          not bad502 and not bad504 and not none,
          f"502: {len(bad502)}, 504: {len(n504)} ({len(bad504)} of them for requests not in flight while PostgreSQL "
          f"was frozen), no answer: {len(none)} (gunicorn stays up throughout: a 502 would blame a live upstream; a "
          f"504 says the app took longer than the response-header timeout, which only a hang explains)")
    pgb_down = next(t for t in table if t["phase"] == "pgbouncer down")
    pgb_err = [r for r in rows if r["phase"] == "pgbouncer down" and r["status"] == 500]
    check("c2", "PgBouncer down: Django fails fast with 500, passed through",
          pgb_down["500 app"] >= 1 and (pct([r["ms"] for r in pgb_err], 95) or 0) <= args.fast_ms,
          f"{pgb_down['500 app']} x 500 from the app, p95 {fmt_s(pct([r['ms'] for r in pgb_err], 95), 0)} ms "
          f"(bound {args.fast_ms} ms); lanegate sheds {pgb_down['503+RA'] + pgb_down['429+RA']}")
    pg_down = [r for r in rows if r["phase"] == "postgres down"]
    pg_500 = [r for r in pg_down if r["status"] == 500]
    pg_500_p95 = pct([r["ms"] for r in pg_500], 95)
    pg_shed = [r for r in pg_down if r["outcome"] == "shed"]
    check("c3", "PostgreSQL stopped: PgBouncer refuses at once, Django's 500s pass through fast",
          len(pg_500) >= 1 and (pg_500_p95 or 0) <= args.fast_ms,
          f"{len(pg_500)} x 500 from the app, p95 {fmt_s(pg_500_p95, 0)} ms (bound {args.fast_ms:g} ms); "
          f"lanegate sheds {len(pg_shed)}")
    if frozen:
        fz = [r for r in rows if r["phase"] == "postgres frozen" or in_freeze(r)]
        fz_shed = [r for r in fz if r["outcome"] == "shed"]
        late = [r for r in fz_shed
                if r["ms"] / 1000 > (login_hold if r["kind"] == "login_post" else core_wait) + slack]
        fpk = peak.get("postgres frozen", {})
        check("c4", "PostgreSQL frozen: lanegate's slots fill, it queues briefly, then sheds 503 + Retry-After",
              fz_shed and not late,
              f"{len(fz_shed)} sheds with Retry-After, {len(late)} later than the lane's wait + {slack:g}s "
              f"(slowest page shed {fmt_s(max([r['ms'] for r in fz_shed if r['kind'] != 'login_post'] or [0]) / 1000)}s); "
              f"peak in flight {fpk.get('in_flight', '-')} of {budget}, core queued {fpk.get('core_queued', '-')}; "
              f"{sum(r['status'] == 500 for r in fz)} x 500 from the app, {len(n504)} x 504")
    over_budget = [p for p in polls if (p.get("status") or {}).get("in_flight", 0) > budget]
    check("c5", "in flight to the app never above the budget", not over_budget and polls,
          f"budget {budget}, peak in flight {max([(p.get('status') or {}).get('in_flight', 0) for p in polls] or [0])} "
          f"over {len(polls)} polls of /status")

    # (d) recovery after each restart, without restarting lanegate or gunicorn.
    recovery = []
    faults = [
        ("pgbouncer", ev["pgbouncer_up"], ev["postgres_stop"], args.pgb_first, args.pgb_steady),
        ("postgres", ev["postgres_up"], ev["postgres_freeze"] if frozen else t_load1, args.pg_first, args.pg_steady),
    ]
    if frozen:
        faults.append(("freeze", ev["postgres_thaw"], t_load1, args.freeze_first, args.freeze_steady))
    for fault, up, nxt, b_first, b_steady in faults:
        after = [r for r in rows if up <= r["t_start"] and r["t_end"] < nxt]
        first_login = min((r["t_end"] for r in after if r["kind"] == "login_post" and r["outcome"] == "ok"),
                          default=None)
        first_page = min((r["t_end"] for r in after if r["kind"] in ("page", "api") and r["outcome"] == "ok"),
                         default=None)
        steady = steady_from(rows, up, nxt, args.steady_ratio, args.steady_bin)
        rec = {
            "fault": fault,
            "first_login_s": None if first_login is None else first_login - up,
            "first_page_s": None if first_page is None else first_page - up,
            "steady_s": None if steady is None else steady - up,
            "window_s": nxt - up,
        }
        recovery.append(rec)
        ok = (rec["first_login_s"] is not None and rec["first_login_s"] <= b_first
              and rec["first_page_s"] is not None and rec["first_page_s"] <= b_first
              and rec["steady_s"] is not None and rec["steady_s"] <= b_steady)
        check("d-" + fault, {"pgbouncer": "PgBouncer restarted", "postgres": "PostgreSQL restarted",
                             "freeze": "PostgreSQL continued"}[fault] + ": logins and pages resume by themselves",
              ok,
              f"first login ok {fmt_s(rec['first_login_s'])}s, first page ok {fmt_s(rec['first_page_s'])}s "
              f"(bound {b_first:g}s); steady >= {100 * args.steady_ratio:.0f}% ok from {fmt_s(rec['steady_s'])}s "
              f"(bound {b_steady:g}s) after it was up")

    procs = {}
    pp = os.path.join(d, "procs.env")
    if os.path.exists(pp):
        with open(pp) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                procs[k] = v.strip("'").strip()
    same = (procs.get("LANEGATE_ALIVE_END") == "1" and procs.get("GUNICORN_ALIVE_END") == "1"
            and procs.get("GUNICORN_WORKERS_START") == procs.get("GUNICORN_WORKERS_END")
            and procs.get("GUNICORN_WORKERS_START"))
    check("d-procs", "lanegate and gunicorn were never restarted", same,
          f"lanegate pid {procs.get('LANEGATE_PID_START', '?')} alive at the end: {procs.get('LANEGATE_ALIVE_END', '?')}; "
          f"gunicorn pid {procs.get('GUNICORN_PID_START', '?')} alive: {procs.get('GUNICORN_ALIVE_END', '?')}, "
          f"workers {procs.get('GUNICORN_WORKERS_START', '?')}-> {procs.get('GUNICORN_WORKERS_END', '?')}")

    end = {}
    ep = os.path.join(d, "status-end.json")
    if os.path.exists(ep):
        with open(ep) as f:
            try:
                end = json.load(f)
            except ValueError:
                end = {}
    lanes = end.get("lanes", {})
    leftovers = {
        "in_flight": end.get("in_flight"),
        **{f"{l}.in_flight": v.get("in_flight") for l, v in lanes.items()},
        **{f"{l}.queued": v.get("queued") for l, v in lanes.items()},
        "anonymous.in_flight": end.get("anonymous", {}).get("in_flight"),
        "anonymous.queued": end.get("anonymous", {}).get("queued"),
        "waiting_room.waiting": end.get("waiting_room", {}).get("waiting"),
    }
    check("e", "at the end lanegate has nothing in flight or queued",
          bool(end) and all(v == 0 for v in leftovers.values()),
          ", ".join(f"{k} {v}" for k, v in leftovers.items() if v) or
          ("in_flight 0, every lane's in_flight and queued 0, waiting room empty" if end else "no /status at the end"))

    # ---- write
    lines = []
    say = lines.append
    say("# storm chaos: PgBouncer and PostgreSQL restarted" + (", PostgreSQL frozen" if frozen else "")
        + ", under load through lanegate")
    say("")
    say(f"load {t_load1 - t_load0:.0f}s from {dt.datetime.fromtimestamp(t_load0, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC; "
        f"events (s from load start): " + ", ".join(f"{k} {v - t_load0:.1f}" for k, v in sorted(ev.items(), key=lambda kv: kv[1])
                                                    if k not in ("load_start",)))
    say(f"lanegate: budget {budget}, core wait {core_wait:g}s, login hold {login_hold:g}s, "
        f"response-header timeout {header_timeout:g}s")
    say("")
    say("## Requests per phase (by the time the answer came)")
    say("")
    hdr = ["phase", "s", "requests"] + cols + ["p50 ms", "p95 ms", "max ms", "max RA", "logins ok/tried"]
    out_rows = []
    for t in table:
        out_rows.append([t["phase"], f"{t['from']:.0f}-{t['to']:.0f}", t["requests"]] + [t[c] for c in cols] +
                        [fmt_s(t["p50_ms"], 0), fmt_s(t["p95_ms"], 0), fmt_s(t["max_ms"], 0),
                         fmt_s(t["retry_after_max"], 0), f"{t['logins_ok']}/{t['logins_tried']}"])
    lines.extend(text_table(hdr, out_rows))
    say("")
    say("(503+RA / 429+RA: lanegate's sheds with Retry-After; '500 app': Django's own error, passed through;")
    say(" 'no answer': refused, reset or client timeout)")
    say("")
    say("## lanegate's /status, peaks per phase")
    say("")
    pk_rows = [[name] + [peak.get(name, {}).get(k, "-") for k in ("in_flight", "core_queued", "login_queued",
                                                                   "room_waiting", "core_service_s")]
               for name, _, _ in phases]
    lines.extend(text_table(["phase", "in flight", "core queued", "login queued", "room waiting",
                             "core service s"], pk_rows))
    say("")
    say("## PgBouncer's SHOW POOLS, peaks per phase (none while it is down)")
    say("")
    lines.extend(text_table(["phase", "cl_waiting", "sv_active", "maxwait s"],
                            [[name] + [pools.get(name, {}).get(k, "-") for k in ("cl_waiting", "sv_active", "maxwait")]
                             for name, _, _ in phases]))
    say("")
    say("## What the app, PgBouncer and lanegate logged, per phase")
    say("")
    for name, _, _ in phases:
        items = sorted((causes.get(name) or {}).items(), key=lambda kv: -kv[1])
        dec = sorted((decisions.get(name) or {}).items(), key=lambda kv: -kv[1])
        say(f"- {name}: " + ("; ".join(f"{k} x{v}" for k, v in items) or "no errors logged"))
        say(f"  lanegate lane/decision/status: " + ", ".join(f"{k} x{v}" for k, v in dec[:8]))
    say("")
    say("## Recovery (seconds after the restarted service was up)")
    say("")
    lines.extend(text_table(["fault", "first login ok", "first page ok", "steady from", "window"],
                            [[r["fault"], fmt_s(r["first_login_s"]), fmt_s(r["first_page_s"]), fmt_s(r["steady_s"]),
                              fmt_s(r["window_s"], 0)] for r in recovery]))
    say("")
    say("## Checks")
    say("")
    for c in checks:
        say(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']:<11}  {c['title']}")
        say(f"{'':17}  {c['detail']}")
    if frozen:
        # Not a check: what the freeze did to the pool behind lanegate.
        fz = [r for r in rows if in_freeze(r)]
        first504 = min((r["t_end"] for r in fz if r["status"] == 504), default=None)
        fz500 = [r for r in fz if r["status"] == 500]
        # Admitted after the first 504: with the slot freed at the 504,
        # these would be sent into a pool the abandoned requests still hold.
        after504 = [r for r in fz500 if first504 is not None and r["t_start"] > first504]
        qwt = (causes.get("postgres frozen") or {}).get("pgbouncer pooler error: query_wait_timeout", 0)
        say("")
        say("## Note on the freeze (not a check)")
        say("")
        wait_after = max((w for t, w in pool_waiting
                          if first504 is not None and first504 < t < ev["postgres_thaw"]), default=0)
        say(f"504s: {sum(r['status'] == 504 for r in fz)}; Django 500s among requests in flight while frozen: "
            f"{len(fz500)}, {len(after504)} of them sent after lanegate's first 504; PgBouncer query_wait_timeout "
            f"while frozen: {qwt}; PgBouncer peak cl_waiting while frozen: "
            f"{pools.get('postgres frozen', {}).get('cl_waiting', '-')}, after the first 504: {wait_after} "
            f"(budget {budget} = pool).")
        if after504:
            say("Requests sent after a 504 died in PgBouncer: lanegate admitted them into a pool the abandoned "
                "requests still held (is LANEGATE_UPSTREAM_TIMEOUT_HOLD 0?).")
        else:
            say("No request sent after a 504 died in PgBouncer: lanegate kept each timed-out request's slot "
                "until the app was done with it (LANEGATE_UPSTREAM_TIMEOUT_HOLD).")
    failed = [c for c in checks if not c["ok"]]
    say("")
    say(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(d, "summary.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({"phases": table, "recovery": recovery, "checks": checks, "causes": causes,
                   "decisions": decisions, "peaks": peak, "pools": pools, "events": {k: v - t_load0 for k, v in ev.items()},
                   "bounds": {"core_s": bound_core, "login_s": bound_login}}, f, indent=1)
    with open(os.path.join(d, "phases.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(hdr)
        w.writerows(out_rows)
    sys.stdout.write(text)
    return 1 if failed else 0


def short_cause(text):
    """The first words of an exception's text, without addresses and numbers
    that would split one cause into many."""
    text = re.sub(r'"[^"]*"', '"…"', text)
    text = re.sub(r"\b\d+(\.\d+)*\b", "N", text)
    return text[:70]


def steady_from(rows, up, nxt, ratio, width):
    """The earliest time t >= up from which every `width`-second bin of
    answers until nxt (bins with fewer than 3 answers skipped) is at least
    `ratio` ok, and that saw at least one ok answer. None if never."""
    span = [r for r in rows if up <= r["t_end"] < nxt]
    if not span:
        return None
    nb = int(math.ceil((nxt - up) / width))
    tot, ok = [0] * nb, [0] * nb
    for r in span:
        i = min(nb - 1, int((r["t_end"] - up) // width))
        tot[i] += 1
        ok[i] += r["outcome"] == "ok"
    good = [tot[i] < 3 or ok[i] / tot[i] >= ratio for i in range(nb)]
    start = None
    for i in range(nb - 1, -1, -1):
        if not good[i]:
            break
        start = i
    if start is None:
        return None
    # Refine to the first ok answer in the first good bin.
    first_ok = min((r["t_end"] for r in span if r["outcome"] == "ok" and r["t_end"] >= up + start * width),
                   default=None)
    return first_ok


def text_table(header, rows):
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[0])).rstrip(),
           "  ".join("-" * w for w in widths)]
    for r in cells[1:]:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return out


# ------------------------------------------------------------------ main


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load", help="run the load")
    lp.add_argument("--url", required=True)
    lp.add_argument("--duration", type=float, required=True)
    lp.add_argument("--users", type=int, default=20)
    lp.add_argument("--login-users", type=int, default=3)
    lp.add_argument("--out", required=True)
    lp.add_argument("--accounts", type=int, default=300, help="seeded accounts storm0001..")
    lp.add_argument("--first-account", type=int, default=1)
    lp.add_argument("--projects", type=int, default=int(os.environ.get("STORM_PROJECTS", "50")))
    lp.add_argument("--timeout", type=float, default=90, help="client timeout per request, seconds")
    lp.add_argument("--think-min", type=float, default=0.5)
    lp.add_argument("--think-max", type=float, default=1.5)
    lp.add_argument("--retry-cap", type=float, default=10, help="longest Retry-After honoured, seconds")
    lp.add_argument("--stagger", type=float, default=0.25, help="seconds between user starts")
    lp.add_argument("--progress", type=float, default=10, help="print progress every S seconds (0: never)")
    rp = sub.add_parser("report", help="check a run and print its summary")
    rp.add_argument("dir")
    rp.add_argument("--warmup", type=float, default=10, help="seconds of load before the baseline")
    rp.add_argument("--slack", type=float, default=3, help="seconds added to lanegate's latency bounds")
    rp.add_argument("--fast-ms", type=float, default=2000, help="p95 of Django's 500s while PgBouncer is down")
    # Recovery bounds, seconds after the service is up again. PgBouncer
    # reconnects at once; after PostgreSQL's restart PgBouncer may wait out
    # server_login_retry (15 s) before it tries again; after the freeze,
    # users honour Retry-After (at most --retry-cap, 10 s) first.
    rp.add_argument("--pgb-first", type=float, default=10)
    rp.add_argument("--pgb-steady", type=float, default=15)
    rp.add_argument("--pg-first", type=float, default=20)
    rp.add_argument("--pg-steady", type=float, default=25)
    rp.add_argument("--freeze-first", type=float, default=20)
    rp.add_argument("--freeze-steady", type=float, default=25)
    rp.add_argument("--steady-ratio", type=float, default=0.9)
    rp.add_argument("--steady-bin", type=float, default=5)
    args = p.parse_args()
    return cmd_load(args) if args.cmd == "load" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
