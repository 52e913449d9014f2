"""Settings of lanegate_django, with their defaults."""

import os

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .tokens import Keyring, KeyringError

#: Name of the Django setting and of the environment variable holding the
#: shared keyring (same format as lanegate's LANEGATE_IDENTITY_SECRET).
SECRET_SETTING = "LANEGATE_IDENTITY_SECRET"

DEFAULT_MAX_AGE = 5
DEFAULT_SKEW = 2

MIDDLEWARE_PATH = "lanegate_django.middleware.LanegateMiddleware"
AUTH_MIDDLEWARE_PATH = "django.contrib.auth.middleware.AuthenticationMiddleware"

HEADER_IDENTITY = "X-Lanegate-Identity"
HEADER_GRANT_REQUEST = "X-Lanegate-Grant-Request"
HEADER_GRANT = "X-Lanegate-Grant"
HEADER_REVOKE = "X-Lanegate-Revoke"

META_IDENTITY = "HTTP_X_LANEGATE_IDENTITY"
META_GRANT_REQUEST = "HTTP_X_LANEGATE_GRANT_REQUEST"


def secret_spec():
    """The keyring spec: the Django setting, else the environment variable, else None."""
    value = getattr(settings, SECRET_SETTING, None)
    if value is None:
        value = os.environ.get(SECRET_SETTING)
    return value


def _missing(value):
    return value is None or (isinstance(value, str) and not value.strip())


def get_keyring():
    """Parse the keyring; raise ImproperlyConfigured naming the setting when it is unusable."""
    spec = secret_spec()
    if _missing(spec):
        raise ImproperlyConfigured(
            "lanegate_django needs the shared identity secret: set %s in the Django settings "
            "or in the environment, to the same value as lanegate's %s." % (SECRET_SETTING, SECRET_SETTING)
        )
    if not isinstance(spec, str):
        raise ImproperlyConfigured("%s must be a string, not %s." % (SECRET_SETTING, type(spec).__name__))
    try:
        return Keyring(spec)
    except KeyringError as e:
        raise ImproperlyConfigured("%s is invalid: %s." % (SECRET_SETTING, e))


def max_age():
    """How old (seconds) an X-Lanegate-* request token may be."""
    return getattr(settings, "LANEGATE_IDENTITY_MAX_AGE", DEFAULT_MAX_AGE)


def skew():
    """How far (seconds) lanegate's clock may run ahead of Django's."""
    return getattr(settings, "LANEGATE_IDENTITY_SKEW", DEFAULT_SKEW)
