"""lanegate_django's system checks."""

import os
from unittest import mock

from django.conf import settings
from django.core import checks
from django.test import SimpleTestCase, override_settings

from lanegate_django.checks import check_lanegate

AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
LANEGATE = "lanegate_django.middleware.LanegateMiddleware"


def ids(messages=None):
    return sorted(m.id for m in (check_lanegate() if messages is None else messages))


class CheckTests(SimpleTestCase):
    def test_test_settings_are_clean(self):
        self.assertEqual(ids(), [])

    def test_registered(self):
        with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
            self.assertIn("lanegate_django.W001", ids(checks.run_checks()))

    def test_bad_settings(self):
        without = [m for m in settings.MIDDLEWARE if m != LANEGATE]
        cases = {
            "lanegate_django.W001": {"SESSION_SAVE_EVERY_REQUEST": True},
            "lanegate_django.W002": {"CSRF_USE_SESSIONS": True},
            "lanegate_django.W003": {"MESSAGE_STORAGE": "django.contrib.messages.storage.session.SessionStorage"},
            "lanegate_django.W004": {"MIDDLEWARE": without},
            "lanegate_django.W006": {"SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies"},
            "lanegate_django.E002": {"LANEGATE_IDENTITY_SECRET": "too-short"},
        }
        for check_id, overrides in cases.items():
            with self.subTest(check_id), override_settings(**overrides):
                self.assertEqual(ids(), [check_id])

    def test_middleware_before_authentication(self):
        swapped = list(settings.MIDDLEWARE)
        i, j = swapped.index(AUTH), swapped.index(LANEGATE)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        for middleware in (swapped, [m for m in settings.MIDDLEWARE if m != AUTH]):
            with self.subTest(middleware), override_settings(MIDDLEWARE=middleware):
                self.assertEqual(ids(), ["lanegate_django.W005"])

    def test_secret_levels(self):
        with override_settings(LANEGATE_IDENTITY_SECRET="k:short"):
            (message,) = check_lanegate()
            self.assertEqual(message.level, checks.ERROR)
            self.assertNotIn("short", message.msg.replace("shortest", ""))
        with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
            (message,) = check_lanegate()
            self.assertEqual(message.level, checks.WARNING)

    def test_secret_missing(self):
        with override_settings():
            del settings.LANEGATE_IDENTITY_SECRET
            with mock.patch.dict(os.environ, clear=True):
                self.assertEqual(ids(), ["lanegate_django.E001"])
            with mock.patch.dict(os.environ, {"LANEGATE_IDENTITY_SECRET": "x" * 32}):
                self.assertEqual(ids(), [])
        with override_settings(LANEGATE_IDENTITY_SECRET=" "):
            self.assertEqual(ids(), ["lanegate_django.E001"])
