package session

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the shared token vectors")

// vectorsPath is shared with the Django companion app's tests: both sides
// must sign byte-identical tokens and agree on every verdict.
const vectorsPath = "../deploy/django/testdata/token_vectors.json"

type vectorFile struct {
	Comment string `json:"comment"`
	Keyring string `json:"keyring"`
	Now     int64  `json:"now"`
	MaxAge  int64  `json:"max_age"`
	Skew    int64  `json:"skew"`
	// DerivedKeyIDs are the key ids of bare secrets (no "kid:" prefix).
	DerivedKeyIDs []derivedKeyID `json:"derived_key_ids"`
	Sign          []struct {
		Name   string          `json:"name"`
		Claims json.RawMessage `json:"claims"`
		Token  string          `json:"token"`
	} `json:"sign"`
	Verify []struct {
		Name  string `json:"name"`
		Token string `json:"token"`
		Type  string `json:"typ"`
		Error string `json:"error"` // "" when valid
	} `json:"verify"`
}

type derivedKeyID struct {
	Secret string `json:"secret"`
	KeyID  string `json:"kid"`
}

var errorCodes = map[string]error{
	"malformed":   ErrMalformed,
	"unknown_key": ErrUnknownKey,
	"signature":   ErrSignature,
	"type":        ErrType,
	"stale":       ErrStale,
	"future":      ErrFuture,
}

const (
	testSecret1 = "first-secret-0123456789abcdefghijklmnop"
	testSecret0 = "older-secret-0123456789abcdefghijklmnop"
)

func testKeyring(t testing.TB) *Keyring {
	t.Helper()
	kr, err := ParseKeyring("k1:" + testSecret1 + ",k0:" + testSecret0)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestTokenVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	raw, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var vf vectorFile
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatalf("parse vectors: %v", err)
	}
	kr, err := ParseKeyring(vf.Keyring)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(vf.Now, 0)
	w := Window{MaxAge: time.Duration(vf.MaxAge) * time.Second, Skew: time.Duration(vf.Skew) * time.Second}
	if len(vf.Sign) < 4 || len(vf.Verify) < 10 {
		t.Fatalf("vectors too few: %d sign, %d verify", len(vf.Sign), len(vf.Verify))
	}
	for _, d := range vf.DerivedKeyIDs {
		if got := DeriveKeyID(d.Secret); got != d.KeyID {
			t.Errorf("DeriveKeyID(%q) = %q, want %q", d.Secret, got, d.KeyID)
		}
	}
	for _, v := range vf.Sign {
		var c Claims
		if err := json.Unmarshal(v.Claims, &c); err != nil {
			t.Fatalf("%s: claims: %v", v.Name, err)
		}
		if got := kr.Sign(&c); got != v.Token {
			t.Errorf("%s: Sign = %s, want %s", v.Name, got, v.Token)
		}
		back, err := kr.Verify(v.Token, c.Type, now, w)
		if err != nil {
			t.Errorf("%s: Verify of own token: %v", v.Name, err)
			continue
		}
		if back.UserID != c.UserID || back.SID != c.SID || back.AuthHash != c.AuthHash || strings.Join(back.SIDs, ",") != strings.Join(c.SIDs, ",") {
			t.Errorf("%s: round trip = %+v, want %+v", v.Name, back, c)
		}
	}
	for _, v := range vf.Verify {
		_, err := kr.Verify(v.Token, v.Type, now, w)
		if v.Error == "" {
			if err != nil {
				t.Errorf("%s: Verify = %v, want valid", v.Name, err)
			}
			continue
		}
		want, ok := errorCodes[v.Error]
		if !ok {
			t.Fatalf("%s: unknown error code %q", v.Name, v.Error)
		}
		if !errors.Is(err, want) {
			t.Errorf("%s: Verify = %v, want %v", v.Name, err, want)
		}
	}
}

// writeVectors regenerates the vector file from this implementation. Run
// `go test ./session -run TestTokenVectors -update` after a deliberate
// format change, then make the Django side pass again.
func writeVectors(t *testing.T) {
	kr := testKeyring(t)
	bare, err := ParseKeyring(testSecret0)
	if err != nil {
		t.Fatal(err)
	}
	older, err := ParseKeyring("k0:" + testSecret0)
	if err != nil {
		t.Fatal(err)
	}
	unknown, err := ParseKeyring("k9:" + testSecret1)
	if err != nil {
		t.Fatal(err)
	}
	const now = 1767225600
	sid := SessionHash("abcdefghijklmnopqrstuvwxyz012345")
	ah := "6c1f9e2d4b8a7f3e6c1f9e2d4b8a7f3e6c1f9e2d4b8a7f3e6c1f9e2d4b8a7f3e"
	claims := []struct {
		name string
		c    Claims
	}{
		{"identity", Claims{Type: TypeIdentity, SID: sid, UserID: "42", AuthHash: ah, Expires: now + 1209600, IssuedAt: now}},
		{"identity with an odd user id", Claims{Type: TypeIdentity, SID: sid, UserID: "a\"b\\c\nd\x01é€😀", AuthHash: ah, Expires: now + 60, IssuedAt: now}},
		{"grant request", Claims{Type: TypeGrantRequest, IssuedAt: now}},
		{"grant", Claims{Type: TypeGrant, SID: sid, UserID: "7", AuthHash: ah, Expires: now + 3600, IssuedAt: now - 1}},
		{"revoke", Claims{Type: TypeRevoke, SIDs: []string{sid, SessionHash("another-session-key-000000000000")}, IssuedAt: now}},
	}
	vf := vectorFile{
		Comment: "Shared by session/token_test.go and deploy/django/tests: both sides must sign these claims to exactly these tokens and reach these verdicts. Regenerate with: go test ./session -run TestTokenVectors -update",
		Keyring: "k1:" + testSecret1 + ",k0:" + testSecret0,
		Now:     now, MaxAge: 5, Skew: 2,
	}
	for _, c := range claims {
		raw := appendClaims(nil, &c.c)
		vf.Sign = append(vf.Sign, struct {
			Name   string          `json:"name"`
			Claims json.RawMessage `json:"claims"`
			Token  string          `json:"token"`
		}{c.name, raw, kr.Sign(&c.c)})
	}
	id := Claims{Type: TypeIdentity, SID: sid, UserID: "42", AuthHash: ah, Expires: now + 60, IssuedAt: now}
	good := kr.Sign(&id)
	parts := strings.Split(good, ".")
	flip := func(s string) string {
		b := []byte(s)
		if b[5] == 'A' {
			b[5] = 'B'
		} else {
			b[5] = 'A'
		}
		return string(b)
	}
	at := func(iat int64) string { c := id; c.IssuedAt = iat; return kr.Sign(&c) }
	add := func(name, tok, typ, code string) {
		vf.Verify = append(vf.Verify, struct {
			Name  string `json:"name"`
			Token string `json:"token"`
			Type  string `json:"typ"`
			Error string `json:"error"`
		}{name, tok, typ, code})
	}
	add("valid identity", good, TypeIdentity, "")
	add("signed with the older key", older.Sign(&id), TypeIdentity, "")
	add("issued max_age ago", at(now-5), TypeIdentity, "")
	add("issued skew ahead", at(now+2), TypeIdentity, "")
	add("stale", at(now-6), TypeIdentity, "stale")
	add("replayed a minute later", at(now-60), TypeIdentity, "stale")
	add("from the future", at(now+3), TypeIdentity, "future")
	add("unknown key id", unknown.Sign(&id), TypeIdentity, "unknown_key")
	add("signature flipped", parts[0]+"."+parts[1]+"."+parts[2]+"."+flip(parts[3]), TypeIdentity, "signature")
	add("payload tampered", parts[0]+"."+parts[1]+"."+flip(parts[2])+"."+parts[3], TypeIdentity, "signature")
	add("key id swapped", parts[0]+".k0."+parts[2]+"."+parts[3], TypeIdentity, "signature")
	add("grant presented as identity", kr.Sign(&Claims{Type: TypeGrant, SID: sid, UserID: "42", AuthHash: ah, IssuedAt: now}), TypeIdentity, "type")
	add("identity presented as grant", good, TypeGrant, "type")
	add("three parts", parts[0]+"."+parts[1]+"."+parts[2], TypeIdentity, "malformed")
	add("five parts", good+".x", TypeIdentity, "malformed")
	add("version 2", "v2"+good[2:], TypeIdentity, "malformed")
	add("empty", "", TypeIdentity, "malformed")
	add("signature not base64", parts[0]+"."+parts[1]+"."+parts[2]+".!!!!", TypeIdentity, "malformed")
	add("signature truncated", parts[0]+"."+parts[1]+"."+parts[2]+"."+parts[3][:20], TypeIdentity, "malformed")
	vf.DerivedKeyIDs = []derivedKeyID{{testSecret0, bare.SignerID()}, {testSecret1, DeriveKeyID(testSecret1)}}
	out, err := json.MarshalIndent(vf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vectorsPath, append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseKeyring(t *testing.T) {
	for _, tc := range []struct {
		spec, signer, err string
	}{
		{"k1:" + testSecret1, "k1", ""},
		{" k1:" + testSecret1 + " , k0:" + testSecret0 + " ", "k1", ""},
		{testSecret1, DeriveKeyID(testSecret1), ""},
		{"", "", "no secret"},
		{" , ", "", "no secret"},
		{"k1:short", "", "at least 32"},
		{"k1:" + testSecret1 + ",k1:" + testSecret0, "", "appears twice"},
		// A colon after an invalid key id is part of a bare secret.
		{"bad kid!:" + testSecret1, DeriveKeyID("bad kid!:" + testSecret1), ""},
	} {
		kr, err := ParseKeyring(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseKeyring(%q) = %v, want error containing %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseKeyring(%q): %v", tc.spec, err)
			continue
		}
		if kr.SignerID() != tc.signer {
			t.Errorf("ParseKeyring(%q) signer = %q, want %q", tc.spec, kr.SignerID(), tc.signer)
		}
	}
}

func TestRotation(t *testing.T) {
	now := time.Unix(1767225600, 0)
	w := Window{MaxAge: 5 * time.Second}
	old, _ := ParseKeyring("k0:" + testSecret0)
	both, _ := ParseKeyring("k1:" + testSecret1 + ",k0:" + testSecret0)
	next, _ := ParseKeyring("k1:" + testSecret1)
	c := &Claims{Type: TypeIdentity, SID: "s", UserID: "1", IssuedAt: now.Unix()}
	// Step 1: every side accepts both, still signs with the old key.
	if _, err := both.Verify(old.Sign(c), TypeIdentity, now, w); err != nil {
		t.Errorf("mid-rotation keyring refused the old key: %v", err)
	}
	// Step 2: signing moves to the new key; old verifiers must already have it.
	if _, err := both.Verify(next.Sign(c), TypeIdentity, now, w); err != nil {
		t.Errorf("mid-rotation keyring refused the new key: %v", err)
	}
	// Step 3: the old key is dropped and tokens under it are refused.
	if _, err := next.Verify(old.Sign(c), TypeIdentity, now, w); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("after rotation the old key verified: %v", err)
	}
}

func BenchmarkSignIdentity(b *testing.B) {
	kr := testKeyring(b)
	c := &Claims{Type: TypeIdentity, SID: SessionHash("abcdefghijklmnopqrstuvwxyz012345"), UserID: "42", AuthHash: strings.Repeat("ab", 32), Expires: 1767225600, IssuedAt: 1767225600}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = kr.AppendSign(buf[:0], c)
	}
}

func FuzzVerify(f *testing.F) {
	kr := testKeyring(f)
	now := time.Unix(1767225600, 0)
	f.Add(kr.Sign(&Claims{Type: TypeIdentity, SID: "x", IssuedAt: now.Unix()}))
	f.Add("v1.k1..")
	f.Add("v1.k1.e30.AAAA")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := kr.Verify(tok, TypeIdentity, now, Window{MaxAge: time.Hour, Skew: time.Hour})
		if err == nil {
			// Anything that verifies must be what this keyring signed.
			if again := kr.Sign(c); again != tok && !strings.HasPrefix(tok, "v1.k0.") {
				// A token may carry fields in another order or spacing and
				// still verify; the signature is over its bytes. That is fine
				// only if its signature really is ours.
				parts := strings.Split(tok, ".")
				if len(parts) != 4 {
					t.Fatalf("verified a token with %d parts", len(parts))
				}
			}
		}
	})
}
