"""LanegateMiddleware end to end, through Django's test client and allauth's views."""

import os
import time
from datetime import datetime, timezone
from unittest import mock

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.http import HttpResponse
from django.test import Client, TestCase, override_settings
from django.test.utils import CaptureQueriesContext

from lanegate_django.middleware import LanegateMiddleware
from lanegate_django.tokens import Keyring, TokenError, session_hash

# lanegate's side of the keyring in tests/settings.py, and a stranger's.
LANEGATE = Keyring(settings.LANEGATE_IDENTITY_SECRET)
FORGER = Keyring("test:someone-else-secret-0123456789abcdefgh")
OTHER_KID = Keyring("other:lanegate-django-test-secret-0123456789abcdef")

COOKIE = settings.SESSION_COOKIE_NAME
PASSWORD = "pw-alice-123"

IDENTITY = "HTTP_X_LANEGATE_IDENTITY"
GRANT_REQUEST = "HTTP_X_LANEGATE_GRANT_REQUEST"


def now():
    return int(time.time())


def grant_request(keyring=LANEGATE, iat=None):
    return keyring.sign({"typ": "grant-request", "iat": now() if iat is None else iat})


def identity(cookie, user, keyring=LANEGATE, **claims):
    """The X-Lanegate-Identity lanegate sends for cookie after Django granted it for user."""
    c = {
        "typ": "identity",
        "sid": session_hash(cookie),
        "uid": str(user.pk),
        "ah": user.get_session_auth_hash(),
        "exp": now() + 3600,
        "iat": now(),
    }
    c.update(claims)
    return keyring.sign(c)


def grant_of(response):
    """The verified claims of the response's grant, or None."""
    token = response.get("X-Lanegate-Grant")
    if token is None:
        return None
    return LANEGATE.verify(token, "grant", time.time(), 5, 2)


def revoked(response):
    """The session hashes the response revokes (verified)."""
    token = response.get("X-Lanegate-Revoke")
    if token is None:
        return []
    return LANEGATE.verify(token, "revoke", time.time(), 5, 2)["sids"]


def session_queries(ctx):
    return [q["sql"] for q in ctx.captured_queries if "django_session" in q["sql"]]


def user_queries(ctx):
    return [q["sql"] for q in ctx.captured_queries if "auth_user" in q["sql"]]


class LanegateTestCase(TestCase):
    def setUp(self):
        self.user = get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)

    def login(self, client=None):
        """Log client in the ordinary way (a session row); return its session key."""
        client = client or self.client
        client.force_login(self.user)
        return client.cookies[COOKIE].value

    def unknown_cookie(self, client=None):
        """Give client a session cookie Django has no session for; return it."""
        key = "nosuchsession0123456789abcdefghi"
        (client or self.client).cookies[COOKIE] = key
        return key

    def assertNormalPathAnonymous(self, response):
        self.assertEqual(response.status_code, 302)
        self.assertTrue(response["Location"].startswith(settings.LOGIN_URL), response["Location"])

    def assertNoProtocolHeaders(self, response):
        self.assertNotIn("X-Lanegate-Grant", response)
        self.assertNotIn("X-Lanegate-Revoke", response)


class GrantTests(LanegateTestCase):
    def post_login(self, password=PASSWORD, **headers):
        return self.client.post("/accounts/login/", {"login": "alice", "password": password}, **headers)

    def test_login_post_grants_the_new_session(self):
        response = self.post_login(**{GRANT_REQUEST: grant_request()})
        self.assertEqual(response.status_code, 302)
        new_key = response.cookies[COOKIE].value
        self.assertTrue(new_key)
        grant = grant_of(response)
        self.assertIsNotNone(grant)
        self.user.refresh_from_db()
        self.assertEqual(grant["sid"], session_hash(new_key))
        self.assertEqual(grant["uid"], str(self.user.pk))
        self.assertEqual(grant["ah"], self.user.get_session_auth_hash())
        stored = SessionStore(new_key).load()
        self.assertEqual(grant["uid"], stored[SESSION_KEY])
        self.assertEqual(grant["ah"], stored[HASH_SESSION_KEY])
        row = Session.objects.get(session_key=new_key)
        self.assertAlmostEqual(grant["exp"], row.expire_date.timestamp(), delta=5)
        self.assertAlmostEqual(grant["iat"], time.time(), delta=5)
        self.assertEqual(revoked(response), [])

        # What lanegate then sends is trusted.
        token = identity(new_key, self.user, ah=grant["ah"], exp=grant["exp"])
        self.assertEqual(self.client.get("/protected/", **{IDENTITY: token}).content, str(self.user.pk).encode())

    def test_login_over_an_anonymous_session_revokes_the_old_key(self):
        old = SessionStore()
        old["cart"] = 3
        old.create()
        old.save()
        self.client.cookies[COOKIE] = old.session_key
        response = self.post_login(**{GRANT_REQUEST: grant_request()})
        new_key = response.cookies[COOKIE].value
        self.assertNotEqual(new_key, old.session_key)
        self.assertEqual(grant_of(response)["sid"], session_hash(new_key))
        self.assertIn(session_hash(old.session_key), revoked(response))
        self.assertNotIn(session_hash(new_key), revoked(response))

    def test_no_grant_without_grant_request(self):
        response = self.post_login()
        self.assertEqual(response.status_code, 302)
        self.assertIn(COOKIE, response.cookies)
        self.assertIsNone(grant_of(response))

    def test_no_grant_with_bad_grant_request(self):
        bad = {
            "forged": grant_request(keyring=FORGER),
            "unknown key": grant_request(keyring=OTHER_KID),
            "stale": grant_request(iat=now() - 60),
            "future": grant_request(iat=now() + 60),
            "wrong type": LANEGATE.sign({"typ": "grant", "sid": "x", "iat": now()}),
            "garbage": "v1.test.e30.AAAA",
            "empty": "",
        }
        for name, header in bad.items():
            with self.subTest(name):
                self.client = Client()
                response = self.post_login(**{GRANT_REQUEST: header})
                self.assertEqual(response.status_code, 302)
                self.assertIn(COOKIE, response.cookies)  # the login itself worked
                self.assertIsNone(grant_of(response))

    def test_no_grant_on_failed_login(self):
        response = self.post_login(password="wrong", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(response.status_code, 200)
        self.assertIsNone(grant_of(response))

    def test_grant_on_an_authenticated_request(self):
        key = self.login()
        response = self.client.get("/protected/", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(response.status_code, 200)
        grant = grant_of(response)
        self.assertEqual(grant["sid"], session_hash(key))
        self.assertEqual(grant["uid"], str(self.user.pk))
        self.assertEqual(grant["ah"], self.user.get_session_auth_hash())
        self.assertGreater(grant["exp"], time.time())
        self.assertEqual(revoked(response), [])

    def test_grant_without_a_protected_view(self):
        # The grant request alone makes the session read, whatever the view.
        key = self.login()
        response = self.client.get("/accounts/login/", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(grant_of(response)["sid"], session_hash(key))

    def test_nothing_to_grant_costs_no_session_read(self):
        with CaptureQueriesContext(connection) as ctx:
            response = self.client.get("/whoami/", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(response.content, b"anonymous")
        self.assertEqual(session_queries(ctx), [])
        self.assertNoProtocolHeaders(response)

    def test_no_grant_for_an_anonymous_session(self):
        key = self.unknown_cookie()
        response = self.client.get("/whoami/", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(response.content, b"anonymous")
        self.assertIsNone(grant_of(response))
        self.assertEqual(revoked(response), [session_hash(key)])

    def test_no_grant_on_5xx(self):
        self.login()
        response = self.client.get("/boom/", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(response.status_code, 500)
        self.assertIsNone(grant_of(response))

    def test_no_grant_on_a_trusted_request(self):
        key = self.login()
        response = self.client.get("/protected/", **{IDENTITY: identity(key, self.user),
                                                     GRANT_REQUEST: grant_request()})
        self.assertEqual(response.status_code, 200)
        self.assertNoProtocolHeaders(response)

    def test_grant_supersedes_a_failed_identity_for_the_same_session(self):
        # A stale identity (lanegate's clock behind) for a session Django
        # still stands behind: the grant, not a revocation.
        key = self.login()
        response = self.client.get("/protected/", **{IDENTITY: identity(key, self.user, iat=now() - 60),
                                                     GRANT_REQUEST: grant_request()})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(grant_of(response)["sid"], session_hash(key))
        self.assertEqual(revoked(response), [])

    def test_views_cannot_speak_for_django(self):
        response = self.client.get("/forged/")
        self.assertEqual(response.content, b"forged")
        self.assertNoProtocolHeaders(response)


class TrustTests(LanegateTestCase):
    def test_trusted_request_reads_no_session(self):
        key = self.login()
        token = identity(key, self.user)
        with CaptureQueriesContext(connection) as ctx:
            response = self.client.get("/protected/", **{IDENTITY: token})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, str(self.user.pk).encode())
        self.assertEqual(session_queries(ctx), [])
        self.assertEqual(len(user_queries(ctx)), 1)
        self.assertNoProtocolHeaders(response)
        self.assertEqual(response.wsgi_request.user, self.user)
        self.assertTrue(response.wsgi_request.lanegate_trusted)

    def test_the_normal_path_reads_the_session(self):
        # The control for the test above: without the header Django reads it.
        self.login()
        with CaptureQueriesContext(connection) as ctx:
            response = self.client.get("/protected/")
        self.assertEqual(response.content, str(self.user.pk).encode())
        self.assertEqual(len(session_queries(ctx)), 1)
        self.assertFalse(response.wsgi_request.lanegate_trusted)

    def test_session_stays_usable(self):
        key = self.login()
        for visits in (1, 2):
            with CaptureQueriesContext(connection) as ctx:
                response = self.client.get("/counter/", **{IDENTITY: identity(key, self.user)})
            self.assertEqual(response.content, str(visits).encode())
            self.assertTrue(session_queries(ctx))  # read lazily because the view asked
            self.assertNoProtocolHeaders(response)
        self.assertEqual(SessionStore(key).load()["visits"], 2)
        self.assertEqual(self.client.cookies[COOKIE].value, key)

    def test_rotated_key_accepted(self):
        # lanegate still signs with the old key (now second); Django signs
        # with the new one.
        spec = "next:the-next-secret-0123456789abcdefghijkl," + settings.LANEGATE_IDENTITY_SECRET
        with override_settings(LANEGATE_IDENTITY_SECRET=spec):
            client = Client()
            key = self.login(client)
            response = client.get("/protected/", **{IDENTITY: identity(key, self.user)})
            self.assertEqual(response.content, str(self.user.pk).encode())
            self.assertTrue(response.wsgi_request.lanegate_trusted)
            response = client.get("/whoami/", **{GRANT_REQUEST: grant_request()})
            token = response["X-Lanegate-Grant"]
            self.assertTrue(token.startswith("v1.next."))
            self.assertEqual(Keyring(spec).verify(token, "grant", time.time(), 5, 2)["sid"], session_hash(key))

    def test_session_deleted_elsewhere_is_revoked_when_read(self):
        # lanegate still trusts the cookie, but its row is gone; the view
        # reads the session: Django learns it and revokes.
        key = self.login()
        Session.objects.filter(session_key=key).delete()
        response = self.client.get("/counter/", **{IDENTITY: identity(key, self.user)})
        self.assertEqual(response.status_code, 200)
        self.assertIn(session_hash(key), revoked(response))


class RejectionTests(LanegateTestCase):
    """Every bad identity: the normal path decides, and the cookie's session is revoked."""

    def setUp(self):
        super().setUp()
        self.key = self.unknown_cookie()

    def get(self, token):
        """(the protected view's response, a session-free view's response) for token."""
        responses = []
        for url in ("/protected/", "/plain/"):
            if self.key:  # Django deletes the cookie of a session it cannot find
                self.client.cookies[COOKIE] = self.key
            responses.append(self.client.get(url, **{IDENTITY: token}))
        return responses

    def assertRejected(self, responses, sid=None):
        protected, plain = responses
        sid = sid or session_hash(self.key)
        self.assertNormalPathAnonymous(protected)
        self.assertFalse(protected.wsgi_request.lanegate_trusted)
        self.assertIn(sid, revoked(protected))
        self.assertNotIn("X-Lanegate-Grant", protected)
        # The session-free view reads no session: the rejection alone revokes.
        self.assertEqual(plain.content, b"plain")
        self.assertFalse(plain.wsgi_request.lanegate_trusted)
        self.assertEqual(revoked(plain), [sid])

    def test_valid_identity_is_trusted(self):
        # The control: the very same setup with an intact token is trusted,
        # without any session behind the cookie.
        for response in self.get(identity(self.key, self.user)):
            self.assertEqual(response.status_code, 200)
            self.assertTrue(response.wsgi_request.lanegate_trusted)
            self.assertNoProtocolHeaders(response)
        self.assertEqual(self.get(identity(self.key, self.user))[0].content, str(self.user.pk).encode())

    def test_tampered(self):
        token = identity(self.key, self.user)
        head, payload, sig = token.rsplit(".", 2)
        other = LANEGATE.sign({"typ": "identity", "sid": session_hash(self.key), "uid": "999",
                               "ah": "x", "exp": now() + 60, "iat": now()})
        tampered = {
            "signature": "%s.%s.%s" % (head, payload, sig[:-2] + ("AA" if not sig.endswith("AA") else "BA")),
            "payload": "%s.%s.%s" % (head, other.split(".")[2], sig),
            "forged": identity(self.key, self.user, keyring=FORGER),
            "unknown key": identity(self.key, self.user, keyring=OTHER_KID),
            "truncated": token[:-10],
            "garbage": "garbage",
            "empty": "",
        }
        for name, bad in tampered.items():
            with self.subTest(name):
                self.assertRejected(self.get(bad))

    def test_session_expired(self):
        self.assertRejected(self.get(identity(self.key, self.user, exp=now() - 1)))

    def test_no_expiry(self):
        self.assertRejected(self.get(identity(self.key, self.user, exp=0)))

    def test_stale_or_replayed(self):
        self.assertRejected(self.get(identity(self.key, self.user, iat=now() - 6)))
        self.assertRejected(self.get(identity(self.key, self.user, iat=now() - 3600)))

    def test_future(self):
        self.assertRejected(self.get(identity(self.key, self.user, iat=now() + 30)))

    def test_wrong_type(self):
        grant = LANEGATE.sign({"typ": "grant", "sid": session_hash(self.key), "uid": str(self.user.pk),
                               "ah": self.user.get_session_auth_hash(), "exp": now() + 60, "iat": now()})
        self.assertRejected(self.get(grant))
        self.assertRejected(self.get(grant_request()))

    def test_bound_to_another_cookie(self):
        self.assertRejected(self.get(identity("anothersession0123456789abcdefgh", self.user)))

    def test_no_cookie(self):
        token = identity(self.key, self.user)
        sid, self.key = session_hash(self.key), None
        del self.client.cookies[COOKIE]
        self.assertRejected(self.get(token), sid=sid)

    def test_wrong_auth_hash(self):
        self.assertRejected(self.get(identity(self.key, self.user, ah="0" * 64)))
        self.assertRejected(self.get(identity(self.key, self.user, ah="")))

    def test_other_user(self):
        bob = get_user_model().objects.create_user("bob", "bob@example.com", "pw-bob-12345")
        self.assertRejected(self.get(identity(self.key, self.user, uid=str(bob.pk))))

    def test_odd_user_ids(self):
        for uid in ["", "abc", "1.5", "99999999999999999999999999", "-1", "\u00e9"]:
            with self.subTest(uid=uid):
                self.assertRejected(self.get(identity(self.key, self.user, uid=uid)))

    def test_deleted_user(self):
        token = identity(self.key, self.user)
        self.user.delete()
        self.assertRejected(self.get(token))

    def test_inactive_user(self):
        token = identity(self.key, self.user)
        self.user.is_active = False
        self.user.save()
        self.assertRejected(self.get(token))


class InvalidationTests(LanegateTestCase):
    """What the normal path learns about a session with a real row behind it."""

    def test_logout_revokes(self):
        key = self.login()
        response = self.client.post("/accounts/logout/")
        self.assertEqual(response.status_code, 302)
        self.assertIn(session_hash(key), revoked(response))
        self.assertFalse(Session.objects.filter(session_key=key).exists())

    def test_trusted_logout_revokes(self):
        key = self.login()
        response = self.client.post("/accounts/logout/", **{IDENTITY: identity(key, self.user)})
        self.assertEqual(response.status_code, 302)
        self.assertTrue(response.wsgi_request.lanegate_trusted)
        self.assertEqual(revoked(response), [session_hash(key)])
        self.assertFalse(Session.objects.filter(session_key=key).exists())

    def test_password_change_revokes(self):
        key = self.login()
        other = Client()
        other_key = self.login(other)
        old_ah = self.user.get_session_auth_hash()

        response = self.client.post("/accounts/password/change/", {
            "oldpassword": PASSWORD, "password1": "new-pw-456789", "password2": "new-pw-456789",
        }, **{IDENTITY: identity(key, self.user)})
        self.assertEqual(response.status_code, 302, response.content[:500])
        self.assertIn(session_hash(key), revoked(response))
        new_key = self.client.cookies[COOKIE].value
        self.assertNotEqual(new_key, key)

        # The other device: lanegate still holds the old hash; rejected,
        # revoked, and Django's normal path logs it out.
        response = other.get("/protected/", **{IDENTITY: identity(other_key, self.user, ah=old_ah)})
        self.assertNormalPathAnonymous(response)
        self.assertIn(session_hash(other_key), revoked(response))

        # The device that changed it goes on, after a fresh grant.
        self.user.refresh_from_db()
        response = self.client.get("/protected/", **{GRANT_REQUEST: grant_request()})
        self.assertEqual(grant_of(response)["sid"], session_hash(new_key))
        self.assertEqual(grant_of(response)["ah"], self.user.get_session_auth_hash())

    def test_set_password_elsewhere(self):
        key = self.login()
        old_ah = self.user.get_session_auth_hash()
        self.user.set_password("changed-by-admin-1")
        self.user.save()
        response = self.client.get("/protected/", **{IDENTITY: identity(key, self.user, ah=old_ah)})
        self.assertNormalPathAnonymous(response)
        self.assertIn(session_hash(key), revoked(response))

    def test_inactive_user_normal_path(self):
        key = self.login()
        self.user.is_active = False
        self.user.save()
        response = self.client.get("/protected/", **{IDENTITY: identity(key, self.user)})
        self.assertNormalPathAnonymous(response)
        self.assertEqual(revoked(response), [session_hash(key)])
        # And without any header: Django's normal path finds the session's
        # user inactive, and says so.
        response = self.client.get("/protected/")
        self.assertNormalPathAnonymous(response)
        self.assertEqual(revoked(response), [session_hash(key)])

    def test_deleted_user_normal_path(self):
        key = self.login()
        self.user.delete()
        response = self.client.get("/protected/", **{GRANT_REQUEST: grant_request()})
        self.assertNormalPathAnonymous(response)
        self.assertIsNone(grant_of(response))
        self.assertEqual(revoked(response), [session_hash(key)])

    def test_deleting_other_sessions_revokes_them(self):
        key = self.login()
        other_key = self.login(Client())
        response = self.client.get("/drop/%s/" % other_key, **{IDENTITY: identity(key, self.user)})
        self.assertEqual(response.content, b"dropped")
        self.assertEqual(revoked(response), [session_hash(other_key)])

    def test_deletions_outside_requests_are_ignored(self):
        key = self.login()
        Session.objects.filter(session_key=key).delete()  # no request: nothing to tell, nothing breaks
        response = self.client.get("/whoami/")
        self.assertEqual(response.content, b"anonymous")

    def test_untouched_session_is_not_judged(self):
        # A cookie Django has no session for, on a view that never looks:
        # nothing is read, so nothing is revoked.
        self.unknown_cookie()
        with CaptureQueriesContext(connection) as ctx:
            response = self.client.get("/forged/")
        self.assertEqual(session_queries(ctx), [])
        self.assertNoProtocolHeaders(response)

    def test_expired_session_revoked_when_read(self):
        key = self.login()
        Session.objects.filter(session_key=key).update(expire_date=datetime(2000, 1, 1, tzinfo=timezone.utc))
        response = self.client.get("/protected/")
        self.assertNormalPathAnonymous(response)
        self.assertEqual(revoked(response), [session_hash(key)])


class ConfigurationTests(TestCase):
    def make(self):
        return LanegateMiddleware(lambda request: HttpResponse())

    def test_missing_secret(self):
        with override_settings():
            del settings.LANEGATE_IDENTITY_SECRET
            with mock.patch.dict(os.environ, clear=True):
                with self.assertRaisesRegex(ImproperlyConfigured, "LANEGATE_IDENTITY_SECRET"):
                    self.make()
            with mock.patch.dict(os.environ, {"LANEGATE_IDENTITY_SECRET": "env:" + "e" * 32}):
                self.assertEqual(self.make().keyring.key_ids, ["env"])

    def test_bad_secret(self):
        for spec in ["", "short", "k:%s,k:%s" % ("a" * 32, "b" * 32)]:
            with self.subTest(spec=spec), override_settings(LANEGATE_IDENTITY_SECRET=spec):
                with self.assertRaisesRegex(ImproperlyConfigured, "LANEGATE_IDENTITY_SECRET"):
                    self.make()

    def test_bad_window(self):
        for name, value in [("LANEGATE_IDENTITY_MAX_AGE", -1), ("LANEGATE_IDENTITY_SKEW", "2")]:
            with self.subTest(name), override_settings(**{name: value}):
                with self.assertRaisesRegex(ImproperlyConfigured, name):
                    self.make()

    @override_settings(LANEGATE_IDENTITY_MAX_AGE=60)
    def test_window_setting(self):
        user = get_user_model().objects.create_user("carol", "carol@example.com", PASSWORD)
        client = Client()
        client.force_login(user)
        key = client.cookies[COOKIE].value
        response = client.get("/protected/", **{IDENTITY: identity(key, user, iat=now() - 30)})
        self.assertTrue(response.wsgi_request.lanegate_trusted)

    def test_defaults(self):
        with override_settings():
            del settings.LANEGATE_IDENTITY_MAX_AGE
            del settings.LANEGATE_IDENTITY_SKEW
            m = self.make()
        self.assertEqual((m.max_age, m.skew), (5, 2))

    def test_tokens_are_checked_with_the_window(self):
        # The unit under test really uses verify's verdicts.
        m = self.make()
        with self.assertRaises(TokenError):
            m.keyring.verify(grant_request(iat=now() - 60), "grant-request", time.time(), m.max_age, m.skew)
