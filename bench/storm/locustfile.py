"""Login-storm scenario for the storm benchmark (bench/storm/run).

Modelled on the load test whose failure lanegate exists to prevent: every
Locust user logs in on start (GET the form for its CSRF token, POST the
credentials), then loops over weighted core pages (BrowsingUser, tag `page`)
or JSON endpoints (APIUser, tag `api`). With users spawned at a few per
second, the logins pile up; what happens next depends on what stands between
Locust and the app.

Logging in through lanegate's waiting room. Each user is one of two kinds
of client (STORM_LOGIN_CLIENT, default `mixed`: BrowsingUser a browser,
APIUser a script; `browser` or `script` makes every user one kind):
  browser  the login GET and POST are navigations (Accept text/html...,
           Sec-Fetch-Mode: navigate). A waiting page (503, Retry-After,
           Lanegate-Waiting: 1) on the GET: wait Retry-After, GET again. A
           307 to the login URL on the POST (held a whole hold): POST the same
           form again at once, as a browser does. A 503 + Retry-After on the
           POST: wait Retry-After, then GET the form and POST. The ticket goes
           back in the `lanegate_ticket` cookie only (a form cannot add a
           header).
  script   Accept: */*, no Sec-Fetch-Mode. A 503 + Retry-After on the POST:
           wait Retry-After, POST again with the same CSRF token. The ticket
           goes back in the cookie and, when one was received, in the
           Lanegate-Ticket request header.
Retry-After is honoured as given, up to STORM_RETRY_AFTER_CAP (300 s) and
never past the end of the run. Cookies are kept across retries; after a
failure (not a waiting-room answer) every cookie but the ticket is dropped,
so the next try starts from a fresh form in its kept place.

Names in Locust's statistics:
  [AUTH] Login GET        the login form (for the CSRF token)
  [AUTH] Login POST       the credentials, answered for good: ok, or a
                          failure (a 5xx, a timeout, a 503/429 without
                          Retry-After, or the form again: bad credentials or
                          allauth's attempt limit)
  Waiting-room answers, success-type events (the proxy did its job), never
  errors:
  [AUTH] Login shed       a 503/429 *with* Retry-After to the login POST
  [AUTH] Login held       a 307 back to the login URL: the POST was held in
                          line for the whole hold and is sent again at once
  [AUTH] Login waiting    the waiting page on the login GET (503 with
                          Retry-After and Lanegate-Waiting: 1)
  [AUTH] Login GET (shed) a 503/429 + Retry-After to the login GET that is
                          not the waiting page (a core-lane shed): a failure,
                          honoured like the others
  <endpoint>              a core request, answered by the app
  <endpoint> (shed)       a core request refused with 503/429 + Retry-After:
                          a failure, but never confused with a 500

Files written (paths from the environment; each is optional):
  STORM_OUT         per-user logins CSV, written at test stop:
                    user,account,first_attempt,logged_in_at,seconds,attempts,sheds,status,last_error,
                    client,waiting_pages,holds,ticketed,waited,in_room,first_place,last_place
                    seconds: from the first GET of the login form to the
                    successful POST; attempts: login POSTs sent (waiting-room
                    answers included); sheds: 503/429 + Retry-After to a POST;
                    holds: 307s; ticketed: login requests sent with a ticket;
                    waited: seconds slept honouring Retry-After; in_room:
                    seconds spent in requests the waiting room answered
                    (waiting pages, sheds, held POSTs); first/last_place: the
                    place in line the waiting room announced
  STORM_REQUESTS    one row per request, as it completes:
                    t_start,t_end,name,method,status,ms,outcome,retry_after,ticket,place
                    outcome is ok, fail, shed (503/429 with Retry-After, or a
                    waiting-room 307) or error (503/429 without Retry-After,
                    5xx, timeout...); ticket is 1 when the request carried a
                    waiting-room ticket; place the place announced
  STORM_PROGRESS    one line rewritten every second, for the runner's progress

Knobs (environment): STORM_PROJECTS (50), STORM_ACCOUNTS (300: seeded
accounts, one per user), STORM_ACCOUNT_OFFSET (0), STORM_PASSWORD,
STORM_WAIT_MIN/STORM_WAIT_MAX (seconds between tasks, 1/3), STORM_TIMEOUT
(per request, 180 s; the client gives up on a request after it and treats
that as a failed try), STORM_RETRY_AFTER_CAP (300 s), STORM_LOGIN_BACKOFF_MAX
(60 s), STORM_LOGIN_CLIENT (mixed, browser or script).
"""

import csv
import itertools
import json as jsonlib
import os
import random
import re
import time

import gevent
from locust import HttpUser, between, events, tag, task

PROJECTS = int(os.environ.get("STORM_PROJECTS", "50"))
ACCOUNTS = int(os.environ.get("STORM_ACCOUNTS", "300"))
ACCOUNT_OFFSET = int(os.environ.get("STORM_ACCOUNT_OFFSET", "0"))
PASSWORD = os.environ.get("STORM_PASSWORD", "storm-password")
WAIT_MIN = float(os.environ.get("STORM_WAIT_MIN", "1"))
WAIT_MAX = float(os.environ.get("STORM_WAIT_MAX", "3"))
TIMEOUT = float(os.environ.get("STORM_TIMEOUT", "180"))
RETRY_AFTER_CAP = float(os.environ.get("STORM_RETRY_AFTER_CAP", "300"))
BACKOFF_MAX = float(os.environ.get("STORM_LOGIN_BACKOFF_MAX", "60"))
LOGIN_CLIENT = os.environ.get("STORM_LOGIN_CLIENT", "mixed").strip().lower()
if LOGIN_CLIENT not in ("mixed", "browser", "script"):
    raise SystemExit(f"STORM_LOGIN_CLIENT must be mixed, browser or script, not {LOGIN_CLIENT!r}")

LOGIN_PATH = "/accounts/login/"
LOGIN_GET = "[AUTH] Login GET"
LOGIN_POST = "[AUTH] Login POST"
LOGIN_SHED = "[AUTH] Login shed"
LOGIN_HELD = "[AUTH] Login held"
LOGIN_WAITING = "[AUTH] Login waiting"
ROOM_NAMES = (LOGIN_SHED, LOGIN_HELD, LOGIN_WAITING)  # waiting-room answers: never errors
SHED_SUFFIX = " (shed)"
SHED_STATUSES = (429, 503)
TICKET_HEADER = "Lanegate-Ticket"
TICKET_COOKIE = "lanegate_ticket"

# How each kind of client asks for the login page and posts the form.
LOGIN_HEADERS = {
    "browser": {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    # Not "application/json" exactly: allauth would answer JSON instead of the form.
    "script": {"Accept": "*/*"},
}

_accounts = itertools.count()
_logins = {}  # Locust user number -> LoginRecord
_progress = {"shed": 0, "room": 0, "errors5xx": 0}
_requests_file = None
_requests_writer = None
_t0 = None

CSRF_INPUT = re.compile(
    r"""<input[^>]*name=["']csrfmiddlewaretoken["'][^>]*value=["']([^"']+)["']"""
    r"""|<input[^>]*value=["']([^"']+)["'][^>]*name=["']csrfmiddlewaretoken["']"""
)
PLACE_HTML = re.compile(r"""id=["']lanegate-place["'][^>]*>\s*(\d+)""")
LOCKOUT_TEXT = "Too many failed login attempts"


class LoginRecord:
    __slots__ = ("user", "account", "client", "first_attempt", "logged_in_at", "attempts", "sheds", "status",
                 "last_error", "waiting_pages", "holds", "ticketed", "waited", "in_room", "first_place",
                 "last_place")

    def __init__(self, user, account, client):
        self.user = user
        self.account = account
        self.client = client  # browser or script
        self.first_attempt = None  # the first GET of the login form
        self.logged_in_at = None
        self.attempts = 0  # login POSTs sent (waiting-room answers included)
        self.sheds = 0  # 503/429 + Retry-After to a login POST
        self.status = "pending"  # pending, ok, locked (was refused by the attempt limit at least once)
        self.last_error = ""
        self.waiting_pages = 0  # waiting pages on the login GET
        self.holds = 0  # 307s: the POST was held a whole hold
        self.ticketed = 0  # login requests sent with a ticket
        self.waited = 0.0  # seconds slept honouring Retry-After
        self.in_room = 0.0  # seconds in requests the waiting room answered
        self.first_place = None
        self.last_place = None

    def place(self, p):
        if p is not None:
            if self.first_place is None:
                self.first_place = p
            self.last_place = p


def retry_after_seconds(response):
    """Retry-After as seconds, or None when absent or not a number."""
    value = response.headers.get("Retry-After") if response is not None and response.headers else None
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None  # an HTTP date: no proxy here sends one


def is_shed(response):
    """A 503/429 that says when to come back."""
    return response.status_code in SHED_STATUSES and retry_after_seconds(response) is not None


def is_waiting_page(response):
    return is_shed(response) and response.headers.get("Lanegate-Waiting") == "1"


def announced_place(response):
    """The place in line a waiting-room answer announces (JSON or the waiting page), or None."""
    ctype = response.headers.get("Content-Type", "")
    try:
        if "json" in ctype:
            p = jsonlib.loads(response.text).get("place")
            return int(p) if p is not None else None
        if "html" in ctype:
            m = PLACE_HTML.search(response.text or "")
            return int(m.group(1)) if m else None
    except (ValueError, AttributeError, TypeError):
        pass
    return None


def remaining(environment):
    """Seconds left in the run (large when unknown), so waits never outlive it."""
    limit = getattr(environment.parsed_options, "run_time", None) if environment.parsed_options else None
    if not limit or _t0 is None:
        return 1e9
    return max(0.0, _t0 + limit - time.time())


class StormUser(HttpUser):
    """Logs in on start with a distinct account, then runs the core tasks."""

    abstract = True
    wait_time = between(WAIT_MIN, WAIT_MAX)
    headers = {"Accept": "text/html,application/xhtml+xml"}
    login_client = "browser"  # in the mixed default; STORM_LOGIN_CLIENT overrides

    def on_start(self):
        n = next(_accounts)
        if n >= ACCOUNTS:
            print(f"storm: more Locust users than accounts ({ACCOUNTS}); storm{(n % ACCOUNTS) + 1:04d} is shared")
        self.account = f"storm{(ACCOUNT_OFFSET + n) % ACCOUNTS + 1:04d}"
        self.kind = self.login_client if LOGIN_CLIENT == "mixed" else LOGIN_CLIENT
        self.record = LoginRecord(n + 1, self.account, self.kind)
        self.ticket = None  # the last Lanegate-Ticket header received (scripts send it back)
        _logins[n] = self.record
        self.client.headers.update(self.headers)
        self.client.cookies.clear()
        self.login()

    # -- login -----------------------------------------------------------

    def pause(self, seconds):
        seconds = min(seconds, remaining(self.environment) + 1)
        gevent.sleep(seconds)
        return seconds

    def honour(self, retry_after):
        """Wait as the server asked (at least 0.5 s, at most STORM_RETRY_AFTER_CAP)."""
        self.record.waited += self.pause(max(0.5, min(retry_after, RETRY_AFTER_CAP)))

    def fresh_cookies(self):
        """Drop every cookie but the waiting-room ticket: a new try from a new form, in its kept place."""
        keep = [c for c in self.client.cookies if c.name == TICKET_COOKIE]
        self.client.cookies.clear()
        for c in keep:
            self.client.cookies.set_cookie(c)

    def login_headers(self, extra=None):
        h = dict(LOGIN_HEADERS[self.kind])
        if self.kind == "script" and self.ticket:
            h[TICKET_HEADER] = self.ticket
        if extra:
            h.update(extra)
        return h

    def has_ticket(self, headers):
        return TICKET_HEADER in headers or TICKET_COOKIE in self.client.cookies

    def take_ticket(self, response):
        """Keep the ticket a response hands out; forget it when lanegate deleted
        the cookie (the ticket was used up by an admitted login)."""
        tok = response.headers.get(TICKET_HEADER)
        if tok:
            self.ticket = tok
        elif TICKET_COOKIE + "=" in response.headers.get("Set-Cookie", "") and TICKET_COOKIE not in self.client.cookies:
            self.ticket = None

    def login(self):
        rec = self.record
        failures = 0
        need_form = True
        token = None
        while True:
            if rec.first_attempt is None:
                rec.first_attempt = time.time()
            if need_form:
                outcome, wait, token = self.get_form()
                if outcome == "wait":
                    self.honour(wait)
                    continue
                if outcome == "fail":
                    failures += 1
                    self.fresh_cookies()
                    self.pause(min(BACKOFF_MAX, 5 * 2 ** (failures - 1)))
                    continue
            outcome, wait = self.post_form(token)
            if outcome == "ok":
                rec.logged_in_at = time.time()
                rec.status = "ok" if rec.status == "pending" else "ok-after-lock"
                self.ticket = None
                return
            if outcome == "held":
                # A browser sends its own form again at once, ticket cookie included.
                need_form = False
                continue
            if outcome == "shed":
                self.honour(wait)
                # A person on the waiting page comes back to the form; a
                # script posts the same form again.
                need_form = self.kind == "browser"
                continue
            # A failure: a person waits a little, longer each time, and tries again.
            failures += 1
            need_form = True
            self.fresh_cookies()
            self.pause(wait if wait is not None else min(BACKOFF_MAX, 5 * 2 ** (failures - 1)))

    def get_form(self):
        """One GET of the login form. Returns (outcome, seconds to wait, CSRF token),
        outcome being form, wait (a waiting page or a shed: come back after the
        wait) or fail."""
        rec = self.record
        headers = self.login_headers()
        ticketed = self.has_ticket(headers)
        rec.ticketed += ticketed
        with self.client.get(LOGIN_PATH, name=LOGIN_GET, headers=headers, catch_response=True, timeout=TIMEOUT,
                             allow_redirects=False, context={"ticket": int(ticketed)}) as r:
            self.take_ticket(r)
            if is_waiting_page(r):
                rec.waiting_pages += 1
                rec.in_room += r.request_meta["response_time"] / 1000
                place = announced_place(r)
                rec.place(place)
                r.request_meta["name"] = LOGIN_WAITING
                r.request_meta["context"]["place"] = place
                r.success()
                return "wait", retry_after_seconds(r), None
            if is_shed(r):
                r.request_meta["name"] = LOGIN_GET + SHED_SUFFIX
                r.failure(f"shed {r.status_code} Retry-After {r.headers.get('Retry-After')}")
                return "wait", retry_after_seconds(r), None
            if r.status_code != 200:
                r.failure(describe_status(r))
                rec.last_error = f"GET {describe_status(r)}"
                return "fail", None, None
            token = csrf_token(r.text) or self.client.cookies.get("csrftoken")
            if not token:
                r.failure("no CSRF token in the login form")
                rec.last_error = "GET no CSRF token"
                return "fail", None, None
            r.success()
            return "form", None, token

    def post_form(self, token):
        """One POST of the credentials. Returns (outcome, seconds to wait before
        the next try), outcome being ok, held (post again at once), shed (come
        back after the wait) or fail."""
        rec = self.record
        rec.attempts += 1
        data = {"login": self.account, "password": PASSWORD, "csrfmiddlewaretoken": token}
        headers = self.login_headers({"Referer": self.client.base_url + LOGIN_PATH})
        ticketed = self.has_ticket(headers)
        rec.ticketed += ticketed
        with self.client.post(
            LOGIN_PATH, data=data, headers=headers, name=LOGIN_POST,
            catch_response=True, allow_redirects=False, timeout=TIMEOUT, context={"ticket": int(ticketed)},
        ) as r:
            self.take_ticket(r)
            if is_shed(r):
                rec.sheds += 1
                rec.in_room += r.request_meta["response_time"] / 1000
                place = announced_place(r)
                rec.place(place)
                r.request_meta["name"] = LOGIN_SHED
                r.request_meta["context"]["place"] = place
                r.success()
                return "shed", retry_after_seconds(r)
            location = r.headers.get("Location", "")
            if r.status_code in (307, 308) and LOGIN_PATH in location:
                # lanegate held a browser's POST a whole hold: post it again.
                rec.holds += 1
                rec.in_room += r.request_meta["response_time"] / 1000
                r.request_meta["name"] = LOGIN_HELD
                r.success()
                return "held", None
            if r.status_code in (301, 302, 303) and "sessionid" in self.client.cookies:
                if LOGIN_PATH in location:
                    r.failure(f"redirected back to the login form ({location})")
                    rec.last_error = "POST redirected to login"
                    return "fail", None
                r.success()
                return "ok", None
            if r.status_code == 200:
                if LOCKOUT_TEXT in r.text:
                    reason = "locked out by the login attempt limit"
                    rec.status = "locked"
                else:
                    reason = "form again: bad credentials or invalid form"
                r.failure(reason)
                rec.last_error = "POST " + reason
                return "fail", None
            reason = describe_status(r)
            r.failure("login " + reason)
            rec.last_error = "POST " + reason
            return "fail", None

    # -- core requests ----------------------------------------------------

    def core(self, path, name, json=False):
        headers = {"Accept": "application/json", "X-Requested-With": "XMLHttpRequest"} if json else None
        with self.client.get(
            path, name=name, headers=headers, catch_response=True, allow_redirects=False, timeout=TIMEOUT
        ) as r:
            if is_shed(r):
                r.request_meta["name"] = name + SHED_SUFFIX
                r.failure(f"shed {r.status_code} Retry-After {r.headers.get('Retry-After')}")
                return
            if r.status_code in (301, 302, 303):
                r.failure(f"{r.status_code} to {r.headers.get('Location', '?')} (session lost?)")
                return
            if r.status_code != 200:
                r.failure(describe_status(r))
                return
            if json and "json" not in r.headers.get("Content-Type", ""):
                r.failure("not JSON: " + r.headers.get("Content-Type", "no Content-Type"))
                return
            r.success()


def describe_status(r):
    if r.status_code == 0:
        err = getattr(r, "error", None)
        return f"no response: {type(err).__name__ if err else 'connection error'}"
    if r.status_code in SHED_STATUSES:
        return f"HTTP {r.status_code} without Retry-After"
    return f"HTTP {r.status_code}"


def csrf_token(html):
    m = CSRF_INPUT.search(html or "")
    return (m.group(1) or m.group(2)) if m else None


def project():
    return random.randint(1, PROJECTS)


class BrowsingUser(StormUser):
    """Someone clicking through HTML pages; logs in with browser navigations."""

    weight = 3
    login_client = "browser"

    @tag("page")
    @task(3)
    def dashboard(self):
        self.core("/dashboard/", "/dashboard/")

    @tag("page")
    @task(2)
    def harga_items(self):
        self.core(f"/detail_project/{project()}/harga-items/", "/detail_project/[id]/harga-items/")

    @tag("page")
    @task(2)
    def rekap_rab(self):
        self.core(f"/detail_project/{project()}/rekap-rab/", "/detail_project/[id]/rekap-rab/")

    @tag("page")
    @task(2)
    def list_pekerjaan(self):
        self.core(f"/detail_project/{project()}/list-pekerjaan/", "/detail_project/[id]/list-pekerjaan/")

    @tag("page")
    @task(1)
    def jadwal_pekerjaan(self):
        self.core(f"/detail_project/{project()}/jadwal-pekerjaan/", "/detail_project/[id]/jadwal-pekerjaan/")


class APIUser(StormUser):
    """A single-page front end calling JSON endpoints; it logs in with a script
    request (fetch), not a navigation, so the waiting room answers it 503 with
    Retry-After and a ticket it sends back."""

    weight = 2
    login_client = "script"

    @tag("api")
    @task(2)
    def list_pekerjaan_tree(self):
        self.core(
            f"/detail_project/api/project/{project()}/list-pekerjaan/tree/",
            "/detail_project/api/project/[id]/list-pekerjaan/tree/",
            json=True,
        )

    @tag("api")
    @task(2)
    def pricing(self):
        self.core(f"/api/project/{project()}/pricing/", "/api/project/[id]/pricing/", json=True)


# -- files -------------------------------------------------------------------


def classify(name, status, exception, response):
    if exception is None:
        return "shed" if name in ROOM_NAMES else "ok"
    if response is not None and is_shed(response):
        return "shed"
    if status >= 500 or status in SHED_STATUSES or status == 0:
        return "error"
    return "fail"


@events.request.add_listener
def on_request(request_type, name, response_time, response_length, response=None, exception=None,
               start_time=None, context=None, **_):
    status = getattr(response, "status_code", 0) or 0
    outcome = classify(name, status, exception, response)
    if name in ROOM_NAMES:
        _progress["room"] += 1
    elif outcome == "shed":
        _progress["shed"] += 1
    elif status >= 500 and outcome == "error":
        _progress["errors5xx"] += 1
    if _requests_writer is None:
        return
    ra = response.headers.get("Retry-After", "") if response is not None and response.headers else ""
    end = time.time()
    start = start_time if start_time else end - response_time / 1000
    context = context or {}
    place = context.get("place")
    _requests_writer.writerow(
        [f"{start:.3f}", f"{end:.3f}", name, request_type, status, f"{response_time:.1f}", outcome, ra,
         context.get("ticket", ""), "" if place is None else place]
    )


def _progress_loop(environment, path):
    tmp = path + ".tmp"
    while True:
        stats = environment.stats.total
        logged = sum(1 for r in list(_logins.values()) if r.logged_in_at is not None)
        users = environment.runner.user_count if environment.runner else 0
        elapsed = time.time() - _t0
        line = (
            f"t0={_t0:.3f} elapsed={elapsed:.0f} users={users} logged_in={logged} requests={stats.num_requests} "
            f"failures={stats.num_failures} shed={_progress['shed']} room={_progress['room']} "
            f"5xx={_progress['errors5xx']}\n"
        )
        try:
            with open(tmp, "w") as f:
                f.write(line)
            os.replace(tmp, path)
        except OSError:
            pass
        gevent.sleep(1)


@events.test_start.add_listener
def on_test_start(environment, **_):
    global _t0, _requests_file, _requests_writer
    _t0 = time.time()
    path = os.environ.get("STORM_REQUESTS")
    if path:
        _requests_file = open(path, "w", newline="", buffering=1 << 16)
        _requests_writer = csv.writer(_requests_file)
        _requests_writer.writerow(["t_start", "t_end", "name", "method", "status", "ms", "outcome", "retry_after",
                                   "ticket", "place"])
    progress = os.environ.get("STORM_PROGRESS")
    if progress:
        gevent.spawn(_progress_loop, environment, progress)


@events.test_stop.add_listener
def on_test_stop(environment, **_):
    global _requests_file, _requests_writer
    if _requests_file is not None:
        _requests_file.flush()
    path = os.environ.get("STORM_OUT")
    if path:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user", "account", "first_attempt", "logged_in_at", "seconds", "attempts", "sheds",
                        "status", "last_error", "client", "waiting_pages", "holds", "ticketed", "waited",
                        "in_room", "first_place", "last_place"])
            for n in sorted(_logins):
                r = _logins[n]
                secs = (r.logged_in_at - r.first_attempt) if r.logged_in_at and r.first_attempt else None
                w.writerow([
                    r.user, r.account,
                    f"{r.first_attempt:.3f}" if r.first_attempt else "",
                    f"{r.logged_in_at:.3f}" if r.logged_in_at else "",
                    f"{secs:.3f}" if secs is not None else "",
                    r.attempts, r.sheds, r.status, r.last_error,
                    r.client, r.waiting_pages, r.holds, r.ticketed, f"{r.waited:.1f}", f"{r.in_room:.1f}",
                    "" if r.first_place is None else r.first_place,
                    "" if r.last_place is None else r.last_place,
                ])


@events.quitting.add_listener
def on_quitting(environment, **_):
    if _requests_file is not None:
        _requests_file.close()
