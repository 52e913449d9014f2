"""System checks: settings that would make Django read the session anyway."""

from django.conf import settings
from django.core.checks import Error, Warning, register

from . import conf
from .tokens import Keyring, KeyringError

SESSION_MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
SIGNED_COOKIES_ENGINE = "django.contrib.sessions.backends.signed_cookies"


@register()
def check_lanegate(app_configs=None, **kwargs):
    messages = []
    if getattr(settings, "SESSION_SAVE_EVERY_REQUEST", False):
        messages.append(Warning(
            "SESSION_SAVE_EVERY_REQUEST is True: every request reads and writes the session, "
            "so lanegate's identity header saves nothing.",
            hint="Set SESSION_SAVE_EVERY_REQUEST = False.",
            id="lanegate_django.W001",
        ))
    if getattr(settings, "CSRF_USE_SESSIONS", False):
        messages.append(Warning(
            "CSRF_USE_SESSIONS is True: every request with a CSRF check (and every page with a "
            "CSRF token) reads the session.",
            hint="Set CSRF_USE_SESSIONS = False (the CSRF token then lives in its own cookie).",
            id="lanegate_django.W002",
        ))
    if getattr(settings, "MESSAGE_STORAGE", None) == SESSION_MESSAGE_STORAGE:
        messages.append(Warning(
            "MESSAGE_STORAGE is the session storage: every request that shows messages reads the session.",
            hint="Use django.contrib.messages.storage.fallback.FallbackStorage (the default) "
                 "or django.contrib.messages.storage.cookie.CookieStorage.",
            id="lanegate_django.W003",
        ))
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if conf.MIDDLEWARE_PATH not in middleware:
        messages.append(Warning(
            "%s is not in MIDDLEWARE: Django ignores lanegate's identity header, "
            "never grants and never revokes." % conf.MIDDLEWARE_PATH,
            hint="Add it right after %s." % conf.AUTH_MIDDLEWARE_PATH,
            id="lanegate_django.W004",
        ))
    elif (conf.AUTH_MIDDLEWARE_PATH not in middleware
          or middleware.index(conf.MIDDLEWARE_PATH) < middleware.index(conf.AUTH_MIDDLEWARE_PATH)):
        messages.append(Warning(
            "%s must come after %s in MIDDLEWARE, or AuthenticationMiddleware replaces the "
            "user it sets." % (conf.MIDDLEWARE_PATH, conf.AUTH_MIDDLEWARE_PATH),
            hint="Place it right after %s." % conf.AUTH_MIDDLEWARE_PATH,
            id="lanegate_django.W005",
        ))
    if getattr(settings, "SESSION_ENGINE", None) == SIGNED_COOKIES_ENGINE:
        messages.append(Warning(
            "SESSION_ENGINE is signed_cookies: there is no session read to save, and the session "
            "key changes whenever the session is written.",
            hint="Use the db, cached_db or cache session engine, or leave lanegate's session "
                 "cache off.",
            id="lanegate_django.W006",
        ))
    spec = conf.secret_spec()
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        messages.append(Error(
            "%s is not set, in the settings nor in the environment." % conf.SECRET_SETTING,
            hint="Set it to the same value as lanegate's %s (at least 32 bytes per secret)."
                 % conf.SECRET_SETTING,
            id="lanegate_django.E001",
        ))
    elif not isinstance(spec, str):
        messages.append(Error("%s must be a string." % conf.SECRET_SETTING, id="lanegate_django.E002"))
    else:
        try:
            Keyring(spec)
        except KeyringError as e:
            messages.append(Error(
                "%s is invalid: %s." % (conf.SECRET_SETTING, e),
                hint="Comma-separated \"kid:secret\" or bare secrets, each at least 32 bytes, "
                     "key ids unique; the first signs.",
                id="lanegate_django.E002",
            ))
    return messages
