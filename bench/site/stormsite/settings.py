"""Settings of the storm benchmark site: a small Django 3.2 + django-allauth 0.51
project shaped like the application in the incident report, served by gunicorn
behind PgBouncer. Everything machine-specific comes from STORM_* variables
(bench/storm/defaults.env holds the defaults the benchmark uses).
"""
import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default):
    value = os.environ.get(name, "")
    return value if value != "" else default


# A fixed key: this site only ever runs on loopback for the benchmark. A proxy
# that needs to read session cookies can be given the same STORM_SECRET_KEY.
SECRET_KEY = env("STORM_SECRET_KEY", "storm-bench-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_X_FORWARDED_HOST = False

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",
    "allauth",
    "allauth.account",
    # allauth's login template loads the socialaccount tag library.
    "allauth.socialaccount",
    "projects",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "stormsite.urls"
WSGI_APPLICATION = "stormsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The database is reached through PgBouncer (session pooling). CONN_MAX_AGE=0:
# Django opens a connection at a request's first query and closes it when the
# request ends, so a request holds a pooled server connection from its first
# query to its last byte - a login holds one while it hashes the password.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": env("STORM_DB_HOST", "127.0.0.1"),
        "PORT": env("STORM_DB_PORT", "6432"),
        "NAME": env("STORM_DB_NAME", "lanegate_storm"),
        "USER": env("STORM_DB_USER", "storm"),
        "PASSWORD": env("STORM_DB_PASSWORD", ""),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"connect_timeout": int(env("STORM_DB_CONNECT_TIMEOUT", "10"))},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Sessions: Django's default database backend (django_session).
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# The cache holds only allauth's login-attempt counters (5 failures per 300 s
# per login name). A file cache is shared by all gunicorn workers, as Redis or
# memcached would be in production (a per-process LocMem cache would let a name
# fail 5 times on each worker), and it needs no database connection, so an
# attempt is counted before the login waits for the pool - a login that then
# dies with a 500 still counts, as in the incident. The directory is emptied
# when gunicorn starts and by clear_sessions, so each run starts unlocked.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": env("STORM_CACHE_DIR", "/tmp/lanegate-storm-cache"),
        "TIMEOUT": 600,
        "OPTIONS": {"MAX_ENTRIES": 100000},
    }
}

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

# PBKDF2 with a configurable iteration count first, so new hashes use it and
# hashes at that count are never "upgraded". Django's stock PBKDF2 hasher is left
# out: it has the same algorithm name and would shadow this one when Django
# looks a stored hash's hasher up by name.
PASSWORD_HASHERS = [
    "stormsite.hashers.StormPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = []

SITE_ID = 1
LOGIN_URL = "/accounts/login/"

# lanegate's session cache: with STORM_LANEGATE_IDENTITY_SECRET set, the
# lanegate_django app (deploy/django in this repository) trusts lanegate's
# identity header and grants sessions to it. SESSION_SAVE_EVERY_REQUEST and
# CSRF_USE_SESSIONS keep their defaults (False), as it needs.
LANEGATE_IDENTITY_SECRET = env("STORM_LANEGATE_IDENTITY_SECRET", "")
if LANEGATE_IDENTITY_SECRET:
    sys.path.insert(0, str(BASE_DIR.parent.parent / "deploy" / "django"))
    INSTALLED_APPS.append("lanegate_django")
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
        "lanegate_django.middleware.LanegateMiddleware",
    )

# STORM_COUNT_QUERIES=1 counts every query by table, served at /_stats/queries,
# for tests that prove which reads were saved.
COUNT_QUERIES = env("STORM_COUNT_QUERIES", "") == "1"
if COUNT_QUERIES:
    MIDDLEWARE.insert(0, "stormsite.querycount.QueryCounter")
LOGIN_REDIRECT_URL = "/dashboard/"
ACCOUNT_AUTHENTICATION_METHOD = "username"
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_EMAIL_REQUIRED = False
# allauth's login-attempt limit stays at its defaults (5 per 300 s), on purpose:
# the benchmark reports accounts locked by logins that died with a 500.

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_L10N = True
USE_TZ = True

STATIC_URL = "/static/"

# Every 500 goes to the error log with its exception text and traceback.
ERROR_LOG = env("STORM_DJANGO_ERROR_LOG", "")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"storm": {"()": "stormsite.logformat.ErrorFormatter"}},
    "handlers": {
        "errors": (
            {"class": "logging.FileHandler", "filename": ERROR_LOG, "formatter": "storm", "level": "ERROR"}
            if ERROR_LOG
            else {"class": "logging.StreamHandler", "formatter": "storm", "level": "ERROR"}
        ),
    },
    "loggers": {
        "django.request": {"handlers": ["errors"], "level": "ERROR", "propagate": False},
        "django.security": {"handlers": ["errors"], "level": "ERROR", "propagate": False},
        "django.db.backends": {"handlers": ["errors"], "level": "ERROR", "propagate": False},
    },
}
