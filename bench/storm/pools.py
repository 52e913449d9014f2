#!/usr/bin/python3
"""Samples PgBouncer's SHOW POOLS (and, optionally, lanegate's /metrics) at a
fixed interval, for the storm benchmark's hog scenarios (bench/storm/run).

The runner's own poller starts psql once a second; a burst of the hog is
over in 20 s and lanegate's pool watcher reads every 250 ms, so this one
keeps one connection to PgBouncer's admin console and reads it every
--interval (0.25 s). The console's connections are not the app's pool.

Writes
  --out FILE       pools.tsv as the runner writes it: a header `time` + the
                   SHOW POOLS columns, then one line per pool of --db per
                   poll, prefixed by the epoch time of the poll
  --metrics-out F  time, in_flight, budget, effective_budget, queued (summed
                   over lanes), queued_core (the core lane's), login_in_flight
                   (the login lane's), from --metrics-url every
                   --metrics-every polls; a gauge lanegate does not export
                   is left empty. --metrics-url may be given once per
                   replica of a fleet: each gauge is then the sum over the
                   replicas (the fleet's budget is the sum of their shares),
                   and a poll in which any replica did not answer is left out

Stops on SIGTERM; reconnects while PgBouncer is down.
"""

import argparse
import re
import signal
import sys
import time
import urllib.request

import psycopg2

GAUGES = ("lanegate_in_flight", "lanegate_budget", "lanegate_effective_budget", "lanegate_lane_queued")
# Per-lane gauges kept apart: (column, metric, lane).
LANE_GAUGES = (("queued_core", "lanegate_lane_queued", "core"), ("login_in_flight", "lanegate_lane_in_flight", "login"))
COLUMNS = GAUGES + tuple(c for c, _, _ in LANE_GAUGES)
METRIC = re.compile(r"^(lanegate_[a-z_]+)(\{[^}]*\})?\s+(\S+)")


def read_metrics(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode("utf-8", "replace")
    vals = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m or m.group(1) not in GAUGES + ("lanegate_lane_in_flight",):
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        if m.group(1) in GAUGES:
            vals[m.group(1)] = vals.get(m.group(1), 0.0) + v
        for col, name, lane in LANE_GAUGES:
            if m.group(1) == name and f'lane="{lane}"' in (m.group(2) or ""):
                vals[col] = vals.get(col, 0.0) + v
    return vals


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", required=True, help="libpq DSN of PgBouncer's admin console (dbname=pgbouncer)")
    ap.add_argument("--db", required=True, help="the app's database: only its pools are kept")
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics-url", action="append", default=[],
                    help="lanegate's /metrics; once per replica of a fleet, summed")
    ap.add_argument("--metrics-out")
    ap.add_argument("--metrics-every", type=int, default=2)
    a = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    out = open(a.out, "a", buffering=1)
    mout = open(a.metrics_out, "a", buffering=1) if a.metrics_url and a.metrics_out else None
    if mout:
        mout.write("time\tin_flight\tbudget\teffective_budget\tqueued\tqueued_core\tlogin_in_flight\n")
    conn, header = None, False
    tick, nxt = 0, time.time()
    while True:
        now = time.time()
        try:
            if conn is None:
                conn = psycopg2.connect(a.dsn, connect_timeout=2)
                conn.autocommit = True  # the console takes no BEGIN
            cur = conn.cursor()
            cur.execute("SHOW POOLS")
            rows = cur.fetchall()
            if not header:
                out.write("time\t" + "\t".join(d[0] for d in cur.description) + "\n")
                header = True
            for row in rows:
                if row[0] == a.db:
                    out.write(f"{now:.3f}\t" + "\t".join("" if v is None else str(v) for v in row) + "\n")
        except psycopg2.Error:
            try:
                if conn is not None:
                    conn.close()
            except psycopg2.Error:
                pass
            conn = None
        if mout and tick % a.metrics_every == 0:
            try:
                v = {}
                for url in a.metrics_url:
                    for g, x in read_metrics(url, min(1.0, 4 * a.interval)).items():
                        v[g] = v.get(g, 0.0) + x
                mout.write(f"{now:.3f}\t" + "\t".join(
                    "" if g not in v else f"{v[g]:g}" for g in COLUMNS) + "\n")
            except Exception:  # lanegate not up yet, or gone
                pass
        tick += 1
        nxt += a.interval
        time.sleep(max(0.0, nxt - time.time()))
        if time.time() - nxt > 5 * a.interval:  # fell behind (a slow poll): do not catch up in a rush
            nxt = time.time()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
