"""The token format, checked against the vectors lanegate's Go side generated."""

import json
import os
import unittest

from lanegate_django import tokens
from lanegate_django.tokens import Keyring, KeyringError, TokenError

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "testdata", "token_vectors.json")

SECRET_A = "a" * 32
SECRET_B = "b-secret-0123456789abcdefghijklmnop"


def load_vectors():
    with open(VECTORS, encoding="utf-8") as f:
        return json.load(f)


class VectorTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.v = load_vectors()
        cls.kr = Keyring(cls.v["keyring"])

    def test_enough_vectors(self):
        self.assertGreaterEqual(len(self.v["sign"]), 5)
        self.assertGreaterEqual(len(self.v["verify"]), 15)
        self.assertGreaterEqual(len(self.v["derived_key_ids"]), 2)
        self.assertEqual({c["error"] for c in self.v["verify"]},
                         {"", "malformed", "unknown_key", "signature", "type", "stale", "future"})

    def test_sign(self):
        for case in self.v["sign"]:
            with self.subTest(case["name"]):
                self.assertEqual(self.kr.sign(case["claims"]), case["token"])

    def test_signed_vectors_verify_back(self):
        for case in self.v["sign"]:
            with self.subTest(case["name"]):
                claims = self.kr.verify(case["token"], case["claims"]["typ"], case["claims"]["iat"],
                                        self.v["max_age"], self.v["skew"])
                for name, value in case["claims"].items():
                    self.assertEqual(claims[name], value)

    def test_verify(self):
        for case in self.v["verify"]:
            with self.subTest(case["name"]):
                try:
                    self.kr.verify(case["token"], case["typ"], self.v["now"], self.v["max_age"], self.v["skew"])
                    code = ""
                except TokenError as e:
                    code = e.code
                self.assertEqual(code, case["error"])

    def test_verify_accepts_bytes(self):
        case = next(c for c in self.v["verify"] if c["error"] == "")
        self.kr.verify(case["token"].encode(), case["typ"], self.v["now"], self.v["max_age"], self.v["skew"])

    def test_derived_key_ids(self):
        for case in self.v["derived_key_ids"]:
            with self.subTest(case["kid"]):
                self.assertEqual(tokens.derive_key_id(case["secret"]), case["kid"])
                self.assertEqual(Keyring(case["secret"]).signer_id, case["kid"])

    def test_keyring_from_vectors(self):
        self.assertEqual(self.kr.key_ids, ["k1", "k0"])
        self.assertEqual(self.kr.signer_id, "k1")


class KeyringTests(unittest.TestCase):
    def test_errors(self):
        for spec in ["", " ", ",, ,", "short", "k1:short", "k1:" + "x" * 31,
                     "k1:%s,k1:%s" % (SECRET_A, SECRET_B), "%s,%s" % (SECRET_A, SECRET_A)]:
            with self.subTest(spec=spec):
                with self.assertRaises(KeyringError):
                    Keyring(spec)

    def test_not_a_string(self):
        with self.assertRaises(KeyringError):
            Keyring(None)

    def test_error_never_shows_the_secret(self):
        with self.assertRaises(KeyringError) as cm:
            Keyring("k1:%s,k2:too-short-secret" % SECRET_A)
        self.assertNotIn("too-short-secret", str(cm.exception))
        self.assertIn("k2", str(cm.exception))

    def test_parse(self):
        kr = Keyring(" new:%s , ,\t%s " % (SECRET_A, SECRET_B))
        self.assertEqual(kr.key_ids, ["new", tokens.derive_key_id(SECRET_B)])
        self.assertEqual(kr.signer_id, "new")
        self.assertNotIn(SECRET_A, repr(kr))

    def test_bare_secrets_with_colons(self):
        # "not a kid:..." has a space, and a 33-character kid is too long:
        # both whole entries are bare secrets.
        for secret in ["not a kid:" + SECRET_A, "k" * 33 + ":" + SECRET_A, ":" + SECRET_A]:
            with self.subTest(secret=secret):
                self.assertEqual(Keyring(secret).signer_id, tokens.derive_key_id(secret))

    def test_secret_length_counts_bytes(self):
        Keyring("k:" + "é" * 16)  # 32 bytes, 16 characters
        with self.assertRaises(KeyringError):
            Keyring("k:" + "é" * 15 + "x")

    def test_kid_of_secret_may_hold_colons(self):
        kr = Keyring("k:%s:more" % SECRET_A)
        self.assertEqual(kr.key_ids, ["k"])
        other = Keyring("k:%s" % SECRET_A)
        token = kr.sign({"typ": "grant-request", "iat": 10})
        with self.assertRaises(TokenError) as cm:
            other.verify(token, "grant-request", 10, 5, 2)
        self.assertEqual(cm.exception.code, "signature")


class VerifyTests(unittest.TestCase):
    def setUp(self):
        self.kr = Keyring("new:%s,old:%s" % (SECRET_A, SECRET_B))

    def verdict(self, token, typ="identity", now=1000, max_age=5, skew=2, kr=None):
        try:
            (kr or self.kr).verify(token, typ, now, max_age, skew)
        except TokenError as e:
            return e.code
        return ""

    def test_rotation(self):
        old = Keyring("old:%s" % SECRET_B)
        token = old.sign({"typ": "identity", "uid": "1", "iat": 1000})
        self.assertEqual(self.verdict(token), "")
        self.assertEqual(self.verdict(self.kr.sign({"typ": "identity", "iat": 1000}), kr=old), "unknown_key")

    def test_window_edges(self):
        sign = lambda iat: self.kr.sign({"typ": "identity", "iat": iat})  # noqa: E731
        self.assertEqual(self.verdict(sign(995)), "")
        self.assertEqual(self.verdict(sign(994)), "stale")
        self.assertEqual(self.verdict(sign(1002)), "")
        self.assertEqual(self.verdict(sign(1003)), "future")
        self.assertEqual(self.verdict(sign(1000), now=1000.5), "")

    def test_too_long(self):
        token = self.kr.sign({"typ": "revoke", "sids": ["x" * 64] * 2000, "iat": 1000})
        self.assertGreater(len(token), tokens.MAX_TOKEN_LEN)
        self.assertEqual(self.verdict(token, typ="revoke"), "malformed")

    def test_malformed(self):
        good = self.kr.sign({"typ": "identity", "iat": 1000})
        head, sig = good.rsplit(".", 1)
        for token in ["", "v1", "v1.new", "v1.new.x", good + ".", "." + good, head + "." + sig + "=",
                      head + "." + sig[:-1], head + "." + sig + "AAAA", head + ".!" + sig[1:]]:
            with self.subTest(token=token[-50:]):
                self.assertEqual(self.verdict(token), "malformed")

    def test_payload_must_be_an_object_of_the_right_types(self):
        def signed(payload):
            import base64
            import hashlib
            import hmac
            body = "v1.new." + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
            mac = hmac.new(SECRET_A.encode(), body.encode(), hashlib.sha256).digest()
            return body + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")

        self.assertEqual(self.verdict(signed('{"typ":"identity","iat":1000}')), "")
        self.assertEqual(self.verdict(signed('{"typ":"identity","iat":1000,"extra":[1,{}]}')), "")
        for payload in ['[]', '"x"', '1', '{"typ":"identity","iat":1000.0}', '{"typ":"identity","iat":"1000"}',
                        '{"typ":"identity","iat":true}', '{"typ":"identity","iat":1000,"uid":1}',
                        '{"typ":"identity","iat":1000,"sids":"x"}', '{"typ":"identity","iat":1000,"sids":[1]}',
                        '{"typ":"identity","iat":1000,"exp":NaN}', '{"typ":"identity","iat":1000}x',
                        '{"typ":"identity","iat":99999999999999999999}', "not json"]:
            with self.subTest(payload=payload):
                self.assertEqual(self.verdict(signed(payload)), "malformed")
        # Go's decoder: null leaves a field alone, keys match case-insensitively, the last wins.
        self.assertEqual(self.verdict(signed('null')), "type")
        self.assertEqual(self.verdict(signed('{"TYP":"identity","Iat":1000}')), "")
        self.assertEqual(self.verdict(signed('{"typ":"grant","typ":"identity","iat":1000,"iat":null}')), "")

    def test_sign_rejects_wrong_types(self):
        for claims in [{"typ": 1, "iat": 1}, {"typ": "x", "iat": "1"}, {"typ": "x", "iat": 1, "uid": 1},
                       {"typ": "x", "iat": 1, "exp": 1.5}, {"typ": "x", "iat": 1, "sids": "ab"}]:
            with self.subTest(claims=claims):
                with self.assertRaises(TypeError):
                    self.kr.sign(claims)

    def test_session_hash(self):
        self.assertEqual(tokens.session_hash(""),
                         "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        self.assertEqual(tokens.session_hash("abc"),
                         "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
