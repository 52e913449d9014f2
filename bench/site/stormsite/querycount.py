"""Counts the SQL this process runs, by table, for end-to-end tests that must
prove which reads a proxy saved (STORM_COUNT_QUERIES=1).

The counts live in this process: run one gunicorn worker (any number of
threads) when reading them. GET /_stats/queries returns them as JSON;
POST /_stats/queries returns them and resets them.
"""
import re
import threading

from django.db import connections
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

_lock = threading.Lock()
_counts = {}
_TABLE = re.compile(r'\b(SELECT|INSERT|UPDATE|DELETE)\b.*?\b(?:FROM|INTO|UPDATE)\s+"(\w+)"', re.S | re.I)


def _record(execute, sql, params, many, context):
    m = _TABLE.search(sql)
    if m:
        key = "%s %s" % (m.group(1).upper(), m.group(2))
        with _lock:
            _counts[key] = _counts.get(key, 0) + 1
    return execute(sql, params, many, context)


class QueryCounter:
    """Outermost middleware: every query of the request is counted."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/_stats/queries":
            return self.get_response(request)
        with connections["default"].execute_wrapper(_record):
            return self.get_response(request)


@csrf_exempt
def stats(request):
    with _lock:
        counts = dict(_counts)
        if request.method == "POST":
            _counts.clear()
    return JsonResponse(counts)
