"""LanegateMiddleware: trust lanegate's identity header, grant and revoke sessions.

Place it in MIDDLEWARE right after
django.contrib.auth.middleware.AuthenticationMiddleware.

Per request:

* Trust path: a valid X-Lanegate-Identity bound to the request's session
  cookie, for a user who exists, is active and whose session auth hash is
  unchanged, sets request.user with one auth_user read and no django_session
  read. request.session stays lazy. Any failure leaves Django's normal path
  in place and revokes the cookie's session.
* Grant: when lanegate asked (valid X-Lanegate-Grant-Request) and the
  request was not trusted, a response for an authenticated session carries
  X-Lanegate-Grant describing it (its key as of the response: after a login,
  the new one).
* Revoke: X-Lanegate-Revoke lists the sessions lanegate must forget: trust
  failures, session rows deleted during the request, the request's own
  session when its key changed, it was flushed, or Django found it
  anonymous.
"""

import contextvars
import hmac
import logging
import numbers
import time

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.core.exceptions import ImproperlyConfigured, ValidationError

from . import conf
from .tokens import (
    MAX_TOKEN_LEN, TYPE_GRANT, TYPE_GRANT_REQUEST, TYPE_IDENTITY, TYPE_REVOKE,
    TokenError, session_hash,
)

logger = logging.getLogger("lanegate_django")

# The state of the request being handled in this context, so the Session
# post_delete receiver can record deleted sessions for its response.
_current = contextvars.ContextVar("lanegate_django_request", default=None)

# Most sids one revoke token carries: each costs 67 JSON bytes, ~90 encoded,
# and a token may not exceed MAX_TOKEN_LEN.
MAX_REVOKED_SIDS = (MAX_TOKEN_LEN - 200) * 3 // 4 // 67


def _eq(a, b):
    """Constant-time string equality that tolerates non-ASCII and non-str input."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def session_deleted(sender, instance, **kwargs):
    """post_delete receiver for session models: revoke the deleted session."""
    state = _current.get()
    if state is not None and instance.pk:
        state.deleted.append(session_hash(instance.pk))


class _RequestState:
    __slots__ = ("cookie", "cookie_sid", "trusted", "claims", "grant_requested", "revoked", "deleted")

    def __init__(self, cookie):
        self.cookie = cookie
        self.cookie_sid = session_hash(cookie) if cookie else None
        self.trusted = False
        self.claims = None
        self.grant_requested = False
        self.revoked = []  # sids revoked by this request's own checks
        self.deleted = []  # sids of session rows deleted during the request


class _Rejected(Exception):
    def __init__(self, reason, claims=None):
        super().__init__(reason)
        self.reason = reason
        self.claims = claims


def _user_can_authenticate(user):
    # As ModelBackend.user_can_authenticate: users without is_active may.
    is_active = getattr(user, "is_active", None)
    return is_active or is_active is None


class LanegateMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response
        self.keyring = conf.get_keyring()
        self.max_age = conf.max_age()
        self.skew = conf.skew()
        for name, value in (("LANEGATE_IDENTITY_MAX_AGE", self.max_age), ("LANEGATE_IDENTITY_SKEW", self.skew)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
                raise ImproperlyConfigured("%s must be a non-negative number of seconds." % name)
        self.cookie_name = settings.SESSION_COOKIE_NAME

    def __call__(self, request):
        state = _RequestState(request.COOKIES.get(self.cookie_name) or None)
        token = _current.set(state)
        try:
            self.process_request(request, state)
            response = self.get_response(request)
            self.process_response(request, response, state)
        finally:
            _current.reset(token)
        return response

    # Request

    def process_request(self, request, state):
        request.lanegate_trusted = False
        now = time.time()

        grant_request = request.META.get(conf.META_GRANT_REQUEST)
        if grant_request is not None:
            try:
                self.keyring.verify(grant_request, TYPE_GRANT_REQUEST, now, self.max_age, self.skew)
            except TokenError as e:
                self._log_token_error("grant request", e)
            else:
                state.grant_requested = True

        identity = request.META.get(conf.META_IDENTITY)
        if identity is None:
            return
        try:
            user = self._trust(identity, state, now)
        except _Rejected as e:
            logger.info("identity rejected (%s); taking the normal path", e.reason)
            if state.cookie_sid:
                state.revoked.append(state.cookie_sid)
            elif e.claims and e.claims["sid"]:
                state.revoked.append(e.claims["sid"])
            return
        request.user = user
        request._cached_user = user
        request.lanegate_trusted = True
        state.trusted = True

    def _trust(self, identity, state, now):
        """Return the user identity names, or raise _Rejected."""
        try:
            claims = self.keyring.verify(identity, TYPE_IDENTITY, now, self.max_age, self.skew)
        except TokenError as e:
            self._log_token_error("identity", e)
            raise _Rejected("token %s" % e.code)
        if not state.cookie:
            raise _Rejected("no session cookie", claims)
        if not _eq(claims["sid"], state.cookie_sid):
            raise _Rejected("bound to another session", claims)
        if not claims["exp"] > now:
            raise _Rejected("session expired", claims)
        if not claims["uid"]:
            raise _Rejected("no user id", claims)
        UserModel = get_user_model()
        try:
            pk = UserModel._meta.pk.to_python(claims["uid"])
            user = UserModel._default_manager.get(pk=pk)
        except (UserModel.DoesNotExist, ValidationError, ValueError, TypeError, OverflowError):
            raise _Rejected("no such user", claims)
        if not _user_can_authenticate(user):
            raise _Rejected("user inactive", claims)
        get_hash = getattr(user, "get_session_auth_hash", None)
        if get_hash is None or not claims["ah"] or not _eq(claims["ah"], get_hash()):
            raise _Rejected("session auth hash changed", claims)
        state.claims = claims
        return user

    def _log_token_error(self, what, e):
        if e.code in ("stale", "future", "type"):
            logger.info("%s token rejected: %s", what, e)
        else:
            logger.warning("%s token rejected: %s", what, e)

    # Response

    def process_response(self, request, response, state):
        # Only this middleware speaks for Django to lanegate.
        for header in (conf.HEADER_GRANT, conf.HEADER_REVOKE):
            if header in response:
                del response[header]
        now = int(time.time())
        session = getattr(request, "session", None)

        granted_sid = None
        if state.grant_requested and not state.trusted and session is not None and response.status_code < 500:
            grant = self._grant(request, session, state, now)
            if grant is not None:
                granted_sid, claims = grant
                response[conf.HEADER_GRANT] = self.keyring.sign(claims)

        if session is not None and state.cookie:
            self._revoke_own_session(request, session, state)

        # A grant is Django's fresh word on its session and supersedes this
        # request's own doubts about it (a stale identity, say); sessions
        # deleted during the request are never granted (see _grant).
        sids = []
        seen = {granted_sid}
        for sid in state.deleted + state.revoked:
            if sid not in seen:
                seen.add(sid)
                sids.append(sid)
        if sids:
            if len(sids) > MAX_REVOKED_SIDS:
                logger.warning("%d sessions to revoke; lanegate is told about the first %d only",
                               len(sids), MAX_REVOKED_SIDS)
                sids = sids[:MAX_REVOKED_SIDS]
            response[conf.HEADER_REVOKE] = self.keyring.sign({"typ": TYPE_REVOKE, "sids": sids, "iat": now})
        return response

    def _grant(self, request, session, state, now):
        """Return (sid, grant claims) for the request's authenticated session, or None."""
        if not state.cookie and not session.modified:
            # No session came in and none was written (no login): there is
            # nothing to grant, and looking would cost a read Django skipped.
            return None
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not _user_can_authenticate(user):
            return None
        key = session.session_key
        if not key:
            return None
        uid = session.get(SESSION_KEY)
        ah = session.get(HASH_SESSION_KEY)
        if not isinstance(uid, str) or not uid or not isinstance(ah, str) or not ah:
            return None
        if uid != user._meta.pk.value_to_string(user):
            return None
        # The trust path will compare ah with the user's current hash; a
        # session still holding a legacy hash is not granted, or every
        # trusted request would fail and revoke it.
        get_hash = getattr(user, "get_session_auth_hash", None)
        if get_hash is None or not _eq(ah, get_hash()):
            return None
        sid = session_hash(key)
        if sid in state.deleted:
            return None
        exp = int(session.get_expiry_date().timestamp())
        if exp <= now:
            return None
        return sid, {"typ": TYPE_GRANT, "sid": sid, "uid": uid, "ah": ah, "exp": exp, "iat": now}

    def _revoke_own_session(self, request, session, state):
        """Revoke the request's cookie session when Django no longer stands behind it.

        Never loads the session: only what the request already read counts.
        """
        if session.session_key != state.cookie:
            # Cycled (login, password change), flushed (logout, failed auth
            # hash) or unknown to Django (expired, deleted, invalid).
            state.revoked.append(state.cookie_sid)
            return
        try:
            data = session._session_cache
        except AttributeError:
            return  # never loaded: nothing learned, and no read forced
        if SESSION_KEY not in data:
            state.revoked.append(state.cookie_sid)  # the session is anonymous
        elif state.trusted:
            claims = state.claims
            if data.get(SESSION_KEY) != claims["uid"] or not _eq(data.get(HASH_SESSION_KEY), claims["ah"]):
                state.revoked.append(state.cookie_sid)  # the row disagrees with lanegate
        else:
            user = request.__dict__.get("_cached_user")
            if user is not None and not user.is_authenticated:
                # Django's normal path found the session's user gone,
                # inactive or no longer allowed.
                state.revoked.append(state.cookie_sid)
