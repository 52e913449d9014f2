"""Login-storm scenario for the storm benchmark (bench/storm/run).

Modelled on the load test whose failure lanegate exists to prevent: every
Locust user logs in on start (GET the form for its CSRF token, POST the
credentials), then loops over weighted core pages (BrowsingUser, tag `page`)
or JSON endpoints (APIUser, tag `api`). With users spawned at a few per
second, the logins pile up; what happens next depends on what stands between
Locust and the app.

Names in Locust's statistics:
  [AUTH] Login GET        the login form (for the CSRF token)
  [AUTH] Login POST       the credentials; a failure is a 5xx, a timeout, a
                          503/429 without Retry-After, or the form again
                          (bad credentials or allauth's attempt limit)
  [AUTH] Login shed       a 503/429 *with* Retry-After to the login POST:
                          counted as a success-type event (the proxy did its
                          job), honoured by waiting Retry-After (capped) and
                          retrying
  <endpoint>              a core request, answered by the app
  <endpoint> (shed)       a core request refused with 503/429 + Retry-After:
                          a failure, but never confused with a 500

Files written (paths from the environment; each is optional):
  STORM_OUT         per-user logins CSV, written at test stop:
                    user,account,first_attempt,logged_in_at,seconds,attempts,sheds,status,last_error
  STORM_REQUESTS    one row per request, as it completes:
                    t_start,t_end,name,method,status,ms,outcome,retry_after
                    outcome is ok, fail, shed (503/429 with Retry-After) or
                    error (503/429 without Retry-After, 5xx, timeout...)
  STORM_PROGRESS    one line rewritten every second, for the runner's progress

Knobs (environment): STORM_PROJECTS (50), STORM_ACCOUNTS (300),
STORM_ACCOUNT_OFFSET (0), STORM_PASSWORD, STORM_WAIT_MIN/STORM_WAIT_MAX
(seconds between tasks, 1/3), STORM_TIMEOUT (per request, 180 s),
STORM_RETRY_AFTER_CAP (30 s), STORM_LOGIN_BACKOFF_MAX (60 s).
"""

import csv
import itertools
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
RETRY_AFTER_CAP = float(os.environ.get("STORM_RETRY_AFTER_CAP", "30"))
BACKOFF_MAX = float(os.environ.get("STORM_LOGIN_BACKOFF_MAX", "60"))

LOGIN_PATH = "/accounts/login/"
LOGIN_GET = "[AUTH] Login GET"
LOGIN_POST = "[AUTH] Login POST"
LOGIN_SHED = "[AUTH] Login shed"
SHED_SUFFIX = " (shed)"
SHED_STATUSES = (429, 503)

_accounts = itertools.count()
_logins = {}  # Locust user number -> LoginRecord
_progress = {"shed": 0, "errors5xx": 0}
_requests_file = None
_requests_writer = None
_t0 = None

CSRF_INPUT = re.compile(
    r"""<input[^>]*name=["']csrfmiddlewaretoken["'][^>]*value=["']([^"']+)["']"""
    r"""|<input[^>]*value=["']([^"']+)["'][^>]*name=["']csrfmiddlewaretoken["']"""
)
LOCKOUT_TEXT = "Too many failed login attempts"


class LoginRecord:
    __slots__ = ("user", "account", "first_attempt", "logged_in_at", "attempts", "sheds", "status", "last_error")

    def __init__(self, user, account):
        self.user = user
        self.account = account
        self.first_attempt = None
        self.logged_in_at = None
        self.attempts = 0  # login POSTs sent (sheds included)
        self.sheds = 0
        self.status = "pending"  # pending, ok, locked (was refused by the attempt limit at least once)
        self.last_error = ""


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

    def on_start(self):
        n = next(_accounts)
        if n >= ACCOUNTS:
            print(f"storm: more Locust users than accounts ({ACCOUNTS}); storm{(n % ACCOUNTS) + 1:04d} is shared")
        self.account = f"storm{(ACCOUNT_OFFSET + n) % ACCOUNTS + 1:04d}"
        self.record = LoginRecord(n + 1, self.account)
        _logins[n] = self.record
        self.client.headers.update(self.headers)
        self.login()

    # -- login -----------------------------------------------------------

    def pause(self, seconds):
        gevent.sleep(min(seconds, remaining(self.environment) + 1))

    def login(self):
        rec = self.record
        failures = 0
        while True:
            if rec.first_attempt is None:
                rec.first_attempt = time.time()
            outcome, wait = self.login_once()
            if outcome == "ok":
                rec.logged_in_at = time.time()
                if rec.status == "pending":
                    rec.status = "ok"
                else:
                    rec.status = "ok-after-lock"
                return
            if outcome == "shed":
                self.pause(max(0.5, min(wait, RETRY_AFTER_CAP)))
                continue
            # A failure: a person waits a little, longer each time, and tries again.
            failures += 1
            self.pause(wait if wait is not None else min(BACKOFF_MAX, 5 * 2 ** (failures - 1)))

    def login_once(self):
        """One GET of the form and, if that worked, one POST.

        Returns (outcome, seconds to wait before the next try), outcome being
        ok, shed or fail."""
        rec = self.record
        self.client.cookies.clear()
        with self.client.get(LOGIN_PATH, name=LOGIN_GET, catch_response=True, timeout=TIMEOUT) as r:
            if is_shed(r):
                r.request_meta["name"] = LOGIN_GET + SHED_SUFFIX
                r.failure(f"shed {r.status_code} Retry-After {r.headers.get('Retry-After')}")
                return "shed", retry_after_seconds(r)
            if r.status_code != 200:
                r.failure(describe_status(r))
                rec.last_error = f"GET {describe_status(r)}"
                return "fail", None
            token = csrf_token(r.text) or self.client.cookies.get("csrftoken")
            if not token:
                r.failure("no CSRF token in the login form")
                rec.last_error = "GET no CSRF token"
                return "fail", None
        rec.attempts += 1
        data = {"login": self.account, "password": PASSWORD, "csrfmiddlewaretoken": token}
        headers = {"Referer": self.client.base_url + LOGIN_PATH}
        with self.client.post(
            LOGIN_PATH, data=data, headers=headers, name=LOGIN_POST,
            catch_response=True, allow_redirects=False, timeout=TIMEOUT,
        ) as r:
            if is_shed(r):
                rec.sheds += 1
                r.request_meta["name"] = LOGIN_SHED
                r.success()
                return "shed", retry_after_seconds(r)
            if r.status_code in (301, 302, 303) and "sessionid" in self.client.cookies:
                location = r.headers.get("Location", "")
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
    """Someone clicking through HTML pages."""

    weight = 3

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
    """A single-page front end calling JSON endpoints."""

    weight = 2

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
        return "shed" if name == LOGIN_SHED else "ok"
    if response is not None and is_shed(response):
        return "shed"
    if status >= 500 or status in SHED_STATUSES or status == 0:
        return "error"
    return "fail"


@events.request.add_listener
def on_request(request_type, name, response_time, response_length, response=None, exception=None,
               start_time=None, **_):
    status = getattr(response, "status_code", 0) or 0
    outcome = classify(name, status, exception, response)
    if outcome == "shed":
        _progress["shed"] += 1
    elif status >= 500 and outcome == "error":
        _progress["errors5xx"] += 1
    if _requests_writer is None:
        return
    ra = response.headers.get("Retry-After", "") if response is not None and response.headers else ""
    end = time.time()
    start = start_time if start_time else end - response_time / 1000
    _requests_writer.writerow(
        [f"{start:.3f}", f"{end:.3f}", name, request_type, status, f"{response_time:.1f}", outcome, ra]
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
            f"failures={stats.num_failures} shed={_progress['shed']} 5xx={_progress['errors5xx']}\n"
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
        _requests_writer.writerow(["t_start", "t_end", "name", "method", "status", "ms", "outcome", "retry_after"])
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
                        "status", "last_error"])
            for n in sorted(_logins):
                r = _logins[n]
                secs = (r.logged_in_at - r.first_attempt) if r.logged_in_at and r.first_attempt else None
                w.writerow([
                    r.user, r.account,
                    f"{r.first_attempt:.3f}" if r.first_attempt else "",
                    f"{r.logged_in_at:.3f}" if r.logged_in_at else "",
                    f"{secs:.3f}" if secs is not None else "",
                    r.attempts, r.sheds, r.status, r.last_error,
                ])


@events.quitting.add_listener
def on_quitting(environment, **_):
    if _requests_file is not None:
        _requests_file.close()
