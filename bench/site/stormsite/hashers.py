"""Django's PBKDF2 hasher with the iteration count taken from the environment.

The storm benchmark makes the CPU cost of a login a knob: a login verifies the
password with PBKDF2-SHA256 at STORM_PBKDF2_ITERATIONS iterations (Django 3.2's
own default is 260000). The algorithm name stays "pbkdf2_sha256", so the stored
hashes are ordinary Django hashes; the seeded users' hashes are made at the same
count, so check_password never finds an outdated hash and no login pays an
upgrade re-hash.
"""
import os

from django.contrib.auth.hashers import PBKDF2PasswordHasher


def configured_iterations():
    raw = os.environ.get("STORM_PBKDF2_ITERATIONS", "").strip()
    if not raw:
        return PBKDF2PasswordHasher.iterations
    value = int(raw)
    if value < 1:
        raise ValueError("STORM_PBKDF2_ITERATIONS must be positive, got %r" % raw)
    return value


class StormPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = configured_iterations()
