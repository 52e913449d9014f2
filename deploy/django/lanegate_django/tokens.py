"""Signed tokens of the lanegate <-> Django identity protocol.

Pure Python (no Django import): the same format as lanegate's Go side
(session/token.go), byte for byte::

    v1.<kid>.<base64url(payload JSON)>.<base64url(HMAC-SHA256(secret, "v1.<kid>.<payload>"))>

base64url is without padding. The payload is compact JSON with the keys in
the fixed order typ, sid, sids, uid, ah, exp, iat; every key but typ and iat
is left out when empty or zero. Both sides are checked against the shared
vectors in ../testdata/token_vectors.json.
"""

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections import OrderedDict

__all__ = [
    "VERSION", "TYPE_IDENTITY", "TYPE_GRANT_REQUEST", "TYPE_GRANT", "TYPE_REVOKE",
    "MIN_SECRET_LEN", "MAX_TOKEN_LEN", "TokenError", "KeyringError", "Keyring",
    "derive_key_id", "session_hash",
]

VERSION = "v1"

TYPE_IDENTITY = "identity"
TYPE_GRANT_REQUEST = "grant-request"
TYPE_GRANT = "grant"
TYPE_REVOKE = "revoke"

# Shortest secret accepted, in bytes.
MIN_SECRET_LEN = 32

# Longest token verify reads, in bytes; anything longer is "malformed".
MAX_TOKEN_LEN = 64 << 10

# Verdict codes, as in the shared vectors.
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown_key"
SIGNATURE = "signature"
TYPE = "type"
STALE = "stale"
FUTURE = "future"

_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64_RE = re.compile(rb"[A-Za-z0-9_-]*")

# Go's strings.TrimSpace trims unicode.IsSpace runes; Python's str.strip()
# trims a different set (it includes \x1c-\x1f, for one), so spell Go's out.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class TokenError(ValueError):
    """A token failed verification; code is one of the verdict codes."""

    def __init__(self, code, message=""):
        super().__init__("%s: %s" % (code, message) if message else code)
        self.code = code


class KeyringError(ValueError):
    """The keyring spec cannot be used."""


def _to_bytes(s):
    if isinstance(s, bytes):
        return s
    # surrogateescape round-trips what os.environ decoded from raw bytes.
    return s.encode("utf-8", "surrogateescape")


def derive_key_id(secret):
    """Key id of a bare secret: first 8 hex digits of SHA-256("lanegate-kid:" + secret)."""
    return hashlib.sha256(b"lanegate-kid:" + _to_bytes(secret)).hexdigest()[:8]


def session_hash(session_key):
    """Lower-case hex SHA-256 of a session key (the sessionid cookie value): the sid claim."""
    if isinstance(session_key, str):
        session_key = session_key.encode("utf-8", "surrogatepass")
    return hashlib.sha256(session_key).hexdigest()


def _b64encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(data):
    """Decode unpadded base64url as Go's base64.RawURLEncoding does, or None."""
    # Go's decoder skips CR and LF wherever they appear.
    data = data.replace(b"\r", b"").replace(b"\n", b"")
    if not _B64_RE.fullmatch(data) or len(data) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _claims_json(claims):
    """The payload for claims, in the fixed field order, as UTF-8 bytes."""
    typ = claims.get("typ", "")
    iat = claims.get("iat", 0)
    if not isinstance(typ, str):
        raise TypeError("typ must be a str")
    if not _is_int(iat):
        raise TypeError("iat must be an int")
    out = OrderedDict()
    out["typ"] = typ
    for name in ("sid", "sids", "uid", "ah", "exp"):
        value = claims.get(name)
        if not value:
            continue
        if name == "sids":
            if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
                raise TypeError("sids must be a list of str")
            value = list(value)
        elif name == "exp":
            if not _is_int(value):
                raise TypeError("exp must be an int")
        elif not isinstance(value, str):
            raise TypeError("%s must be a str" % name)
        out[name] = value
    out["iat"] = iat
    for name in ("exp", "iat"):
        if name in out and not _INT64_MIN <= out[name] <= _INT64_MAX:
            raise ValueError("%s out of int64 range" % name)
    # ensure_ascii=False escapes exactly what the Go encoder escapes:
    # '"', '\\' and control characters below 0x20.
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


# Go's encoding/json matches object keys to struct fields case-insensitively
# (folding each rune to upper(lower(r)) with simple case mappings). Only these
# non-ASCII runes fold to ASCII letters.
_GO_FOLD = {"\u0130": "I", "\u0131": "I", "\u017f": "S", "\u212a": "K"}

_FIELDS = {"TYP": "typ", "SID": "sid", "SIDS": "sids", "UID": "uid", "AH": "ah", "EXP": "exp", "IAT": "iat"}


def _go_fold(name):
    return "".join(_GO_FOLD.get(c, c.upper() if c < "\x80" else c) for c in name)


class _Malformed(Exception):
    pass


class _Object(list):
    """A JSON object as its (key, value) pairs, in order (duplicates kept)."""


def _reject_constant(name):
    raise _Malformed("invalid JSON constant %s" % name)


def _parse_claims(raw):
    """Decode the payload as Go's json.Unmarshal into Claims would, or raise _Malformed."""
    text = raw.decode("utf-8", "replace")
    try:
        pairs_doc = json.loads(text, object_pairs_hook=_Object, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise _Malformed(str(e))
    claims = {"typ": "", "sid": "", "sids": [], "uid": "", "ah": "", "exp": 0, "iat": 0}
    if pairs_doc is None:  # Go: null unmarshals into a struct as a no-op.
        return claims
    if not isinstance(pairs_doc, _Object):
        raise _Malformed("payload is not a JSON object")
    for key, value in pairs_doc:
        field = _FIELDS.get(_go_fold(key))
        if field is None or value is None:  # unknown field; null leaves a field alone
            continue
        if field in ("exp", "iat"):
            if not _is_int(value) or not _INT64_MIN <= value <= _INT64_MAX:
                raise _Malformed("%s is not an int64" % field)
        elif field == "sids":
            if type(value) is not list:
                raise _Malformed("sids is not an array")
            sids = []
            for s in value:
                if s is None:
                    s = ""
                if not isinstance(s, str):
                    raise _Malformed("sids holds a non-string")
                sids.append(s)
            value = sids
        elif not isinstance(value, str):
            raise _Malformed("%s is not a string" % field)
        claims[field] = value
    return claims


class Keyring:
    """Shared identity secrets by key id. The first signs; every one verifies.

    spec is the LANEGATE_IDENTITY_SECRET format: comma-separated entries,
    each "kid:secret" (kid = 1-32 of [A-Za-z0-9_-]) or a bare secret whose
    kid is derive_key_id(secret). Secrets are at least MIN_SECRET_LEN bytes.
    """

    def __init__(self, spec):
        if not isinstance(spec, str):
            raise KeyringError("keyring spec must be a str")
        self._keys = OrderedDict()  # kid (bytes) -> secret (bytes)
        signer = None
        for i, part in enumerate(spec.split(",")):
            part = part.strip(_GO_SPACE)
            if not part:
                continue
            kid, sep, secret = part.partition(":")
            if not sep or not _KID_RE.fullmatch(kid):
                kid, secret = derive_key_id(part), part
            secret_bytes = _to_bytes(secret)
            if len(secret_bytes) < MIN_SECRET_LEN:
                raise KeyringError("secret %d (key id %r) has %d bytes: want at least %d"
                                   % (i + 1, kid, len(secret_bytes), MIN_SECRET_LEN))
            kid_bytes = kid.encode("ascii")
            if kid_bytes in self._keys:
                raise KeyringError("key id %r appears twice" % kid)
            self._keys[kid_bytes] = secret_bytes
            if signer is None:
                signer = kid_bytes
        if signer is None:
            raise KeyringError("no secret given")
        self._signer = signer

    @property
    def signer_id(self):
        """The key id new tokens are signed with."""
        return self._signer.decode("ascii")

    @property
    def key_ids(self):
        """Every key id, signer first."""
        return [k.decode("ascii") for k in self._keys]

    def __repr__(self):  # never show secrets
        return "<Keyring %s>" % ",".join(self.key_ids)

    def sign(self, claims):
        """Return the token (str) for claims, a mapping with typ, iat and the optional fields."""
        secret = self._keys[self._signer]
        signed = b"".join((VERSION.encode(), b".", self._signer, b".", _b64encode(_claims_json(claims))))
        mac = hmac.new(secret, signed, hashlib.sha256).digest()
        return (signed + b"." + _b64encode(mac)).decode("ascii")

    def verify(self, token, typ, now, max_age, skew):
        """Check token's signature, type and age at now (Unix seconds).

        Return its claims as a dict with every field (typ, sid, sids, uid,
        ah, exp, iat; missing ones empty or zero). Raise TokenError whose
        code is malformed, unknown_key, signature, type, future or stale.
        """
        if isinstance(token, str):
            raw = token.encode("utf-8", "surrogatepass")
        elif isinstance(token, bytes):
            raw = token
        else:
            raise TokenError(MALFORMED, "not a string")
        if len(raw) > MAX_TOKEN_LEN:
            raise TokenError(MALFORMED, "%d bytes" % len(raw))
        parts = raw.split(b".")
        if len(parts) != 4 or parts[0] != VERSION.encode():
            raise TokenError(MALFORMED, "not v1.<kid>.<payload>.<sig>")
        ver, kid, payload, sig = parts
        secret = self._keys.get(kid)
        if secret is None:
            raise TokenError(UNKNOWN_KEY, repr(kid.decode("utf-8", "replace")))
        mac = _b64decode(sig)
        if mac is None or len(mac) != hashlib.sha256().digest_size:
            raise TokenError(MALFORMED, "signature encoding")
        want = hmac.new(secret, raw[:len(ver) + 1 + len(kid) + 1 + len(payload)], hashlib.sha256).digest()
        if not hmac.compare_digest(want, mac):
            raise TokenError(SIGNATURE)
        data = _b64decode(payload)
        if data is None:
            raise TokenError(MALFORMED, "payload encoding")
        try:
            claims = _parse_claims(data)
        except _Malformed as e:
            raise TokenError(MALFORMED, "payload: %s" % e)
        if claims["typ"] != typ:
            raise TokenError(TYPE, "%r, want %r" % (claims["typ"], typ))
        if claims["iat"] > now + skew:
            raise TokenError(FUTURE, "issued %ss ahead" % (claims["iat"] - now))
        if now - claims["iat"] > max_age:
            raise TokenError(STALE, "issued %ss ago" % int(now - claims["iat"]))
        return claims
