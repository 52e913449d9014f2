#!/usr/bin/python3
"""A background job that takes the app's pool in bursts (bench/storm/run --scenario hog).

Like a Celery worker woken by a burst of tasks, it connects through PgBouncer
as the app's database user to the app's database, so it draws from the same
pool as the app, and in every cycle of CYCLE seconds holds CONNS server
connections for HOLD seconds, then lets them go:

    burst n: from t0 + OFFSET + n * CYCLE to that + HOLD (cut at t0 + DURATION)

t0 is when Locust started (read from the locustfile's progress file, so the
bursts line up with the load), or the hog's own start.

How it holds a connection, and why so (PgBouncer 1.18, pool_mode=session):

- A client connected to PgBouncer holds no server connection until its first
  query; from then on it keeps one until it disconnects, idle or not. So the
  hog opens its CONNS client connections a few seconds before each burst
  (cheap, no server taken), sends `SELECT 1` on each at the burst's start
  (that query takes the server connection: it is the "acquire"), then
  `SELECT pg_sleep(...)` until the burst's end, and disconnects, which gives
  the server connection back. Keeping the connections open between bursts
  would keep their servers: no burst at all, a smaller pool.
- Once a client waits in PgBouncer's queue it is served or, after
  query_wait_timeout, disconnected with "pooler error: query_wait_timeout":
  neither closing the socket nor a cancel request takes it out of the queue
  (measured: the line is logged either way). So the hog cannot give up
  quietly; when the pool is full at the burst's start its acquire waits
  like anyone's, and if it times out the hog connects again and retries until
  the burst is over, as a task queue would retry. Every connection's local
  port is logged so that the report tells the hog's query_wait_timeout lines
  in PgBouncer's log from the app's.

Writes (tab-separated, one event a line, epoch seconds):
  OUT/hog.tsv    time, event, burst, conn, port, detail
                 events: start (detail: the plan), burst_start (detail: planned
                 end), connect, acquire (sent the first query), acquired
                 (detail: seconds waited), failed (detail: seconds waited and
                 the error; "query_wait_timeout" when PgBouncer timed it out),
                 released, burst_end (detail: connections held at the end
                 of the burst / asked for), stop
  OUT/hog.state  one line, rewritten as it changes: burst, held, waiting
                 (for the runner's progress line)

Usage:
  hog.py --dsn DSN --conns K --hold H [--cycle 40] [--offset 10]
         --duration S [--t0-file PROGRESS] [--query-wait 5] --out DIR
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time

import psycopg2

PRECONNECT = 3.0  # seconds before a burst the client connections are opened


class Log:
    def __init__(self, out):
        self.f = open(os.path.join(out, "hog.tsv"), "a", buffering=1)
        self.state_path = os.path.join(out, "hog.state")
        self.lock = threading.Lock()
        self.held = 0
        self.waiting = 0
        self.burst = -1

    def event(self, event, burst="", conn="", port="", detail=""):
        with self.lock:
            self.f.write(f"{time.time():.3f}\t{event}\t{burst}\t{conn}\t{port}\t{detail}\n")

    def count(self, held=0, waiting=0):
        with self.lock:
            self.held += held
            self.waiting += waiting
            line = f"burst={self.burst + 1} held={self.held} waiting={self.waiting}\n"
            try:
                with open(self.state_path + ".tmp", "w") as f:
                    f.write(line)
                os.replace(self.state_path + ".tmp", self.state_path)
            except OSError:
                pass


def local_port(conn):
    try:
        s = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            return s.getsockname()[1]
        finally:
            s.close()
    except OSError:
        return ""


def connect(dsn, log, burst, i):
    """A client connection to PgBouncer; holds no server connection yet."""
    while True:
        try:
            c = psycopg2.connect(dsn, connect_timeout=5, application_name="storm-hog")
            c.autocommit = True
            port = local_port(c)
            log.event("connect", burst, i, port)
            return c, port
        except psycopg2.Error as e:
            log.event("connect_failed", burst, i, "", one_line(e))
            time.sleep(0.5)


def one_line(e):
    return " ".join(str(e).split())[:200]


def hold(dsn, log, burst, i, conn, port, end, query_wait):
    """Take one server connection and keep it until `end`, retrying after a
    failed acquire (a query_wait_timeout) while the burst lasts."""
    while True:
        log.event("acquire", burst, i, port)
        log.count(waiting=1)
        sent = time.time()
        try:
            conn.cursor().execute("SELECT 1")
        except psycopg2.Error as e:
            waited = time.time() - sent
            log.count(waiting=-1)
            why = "query_wait_timeout" if waited >= query_wait - 0.5 else "error"
            log.event("failed", burst, i, port, f"{waited:.3f} {why}: {one_line(e)}")
            try:
                conn.close()
            except psycopg2.Error:
                pass
            if time.time() >= end - 0.5:
                return
            time.sleep(0.2)
            conn, port = connect(dsn, log, burst, i)
            continue
        log.count(waiting=-1, held=1)
        log.event("acquired", burst, i, port, f"{time.time() - sent:.3f}")
        try:
            left = end - time.time()
            if left > 0:
                conn.cursor().execute("SELECT pg_sleep(%s)", (left,))
        except psycopg2.Error as e:
            log.event("failed", burst, i, port, f"0 error during the hold: {one_line(e)}")
        finally:
            try:
                conn.close()
            except psycopg2.Error:
                pass
            log.count(held=-1)
            log.event("released", burst, i, port)
        return


def read_t0(path, wait):
    """Locust's start, from the locustfile's progress file (t0=...)."""
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            with open(path) as f:
                for part in f.read().split():
                    if part.startswith("t0="):
                        return float(part[3:])
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", required=True, help="libpq DSN of the app's database through PgBouncer")
    ap.add_argument("--conns", type=int, required=True, help="server connections to hold in a burst")
    ap.add_argument("--hold", type=float, required=True, help="seconds each burst holds them")
    ap.add_argument("--cycle", type=float, default=40.0, help="seconds from one burst's start to the next")
    ap.add_argument("--offset", type=float, default=10.0, help="seconds from t0 to the first burst")
    ap.add_argument("--duration", type=float, required=True, help="seconds of load from t0; no burst outlives it")
    ap.add_argument("--t0-file", help="the locustfile's progress file; t0 is read from it")
    ap.add_argument("--t0-wait", type=float, default=60.0, help="seconds to wait for that file")
    ap.add_argument("--query-wait", type=float, default=5.0, help="PgBouncer's query_wait_timeout, seconds")
    ap.add_argument("--out", required=True, help="directory for hog.tsv and hog.state")
    a = ap.parse_args(argv)
    if a.conns < 1 or a.hold <= 0 or a.cycle < a.hold:
        ap.error("need --conns >= 1, --hold > 0 and --cycle >= --hold")
    os.makedirs(a.out, exist_ok=True)
    log = Log(a.out)

    def stop(signum, _frame):
        log.event("stop", log.burst, "", "", f"signal {signum}")
        log.f.flush()
        os._exit(0)  # closing the sockets gives PgBouncer back what is held

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    t0 = read_t0(a.t0_file, a.t0_wait) if a.t0_file else None
    t0_from = "locust" if t0 is not None else "own start"
    t0 = t0 if t0 is not None else time.time()
    stop_at = t0 + a.duration
    log.event("start", "", "", "", f"t0={t0:.3f} ({t0_from}) conns={a.conns} hold={a.hold:g} cycle={a.cycle:g} "
                                   f"offset={a.offset:g} duration={a.duration:g} query_wait={a.query_wait:g}")
    log.count()
    n = 0
    while True:
        start = t0 + a.offset + n * a.cycle
        end = min(start + a.hold, stop_at)
        if start >= stop_at - 1:
            break
        time.sleep(max(0.0, start - PRECONNECT - time.time()))
        conns = [connect(a.dsn, log, n, i) for i in range(a.conns)]
        time.sleep(max(0.0, start - time.time()))
        log.burst = n
        log.event("burst_start", n, "", "", f"{end:.3f}")
        log.count()
        threads = [threading.Thread(target=hold, args=(a.dsn, log, n, i, c, p, end, a.query_wait), daemon=True)
                   for i, (c, p) in enumerate(conns)]
        for t in threads:
            t.start()
        time.sleep(max(0.0, end - 0.2 - time.time()))
        held = log.held  # just before the pg_sleeps return
        time.sleep(max(0.0, end - time.time()))
        log.event("burst_end", n, "", "", f"{held}/{a.conns}")
        for t in threads:
            t.join()
        n += 1
    time.sleep(max(0.0, stop_at - time.time()))
    log.event("stop", "", "", "", "end of the load")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
