"""Formatter for the Django error log.

Every 500 is logged by Django's "django.request" logger with its traceback.
This formatter also puts the exception's type and the first line of its text
on the record's first line, e.g.

  2026-01-11T12:51:06.134Z ERROR django.request pid=4242 Internal Server Error: /dashboard/ \
[OperationalError: server closed the connection unexpectedly]

so that a count per cause is one grep away, whatever the traceback looks like.
"""
import logging
import time


class ErrorFormatter(logging.Formatter):
    """Timestamps in UTC (as PgBouncer's log), ISO 8601 with milliseconds."""

    converter = time.gmtime

    def __init__(self):
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s pid=%(process)d %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )

    def format(self, record):
        text = super().format(record)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = str(exc).strip().splitlines()
            summary = "[%s: %s]" % (type(exc).__name__, first[0].strip() if first else "")
            head, sep, rest = text.partition("\n")
            text = head + " " + summary + sep + rest
        return text
