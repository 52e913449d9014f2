package session

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names of the lanegate ↔ Django protocol. Every header whose name
// starts with HeaderPrefix is removed from client requests before anything
// else looks at them, and Grant and Revoke are removed from every response.
const (
	HeaderPrefix       = "X-Lanegate-"
	HeaderIdentity     = "X-Lanegate-Identity"
	HeaderGrantRequest = "X-Lanegate-Grant-Request"
	HeaderGrant        = "X-Lanegate-Grant"
	HeaderRevoke       = "X-Lanegate-Revoke"
)

// Token types: the typ claim. A token is valid only for the purpose its type
// names, so a grant can never be replayed as an identity.
const (
	TypeIdentity     = "identity"
	TypeGrantRequest = "grant-request"
	TypeGrant        = "grant"
	TypeRevoke       = "revoke"
	// TypeTicket is a waiting-room ticket: lanegate signs it for a client
	// and reads it back; Django never sees one.
	TypeTicket = "ticket"
)

// version starts every token; a future format changes it.
const version = "v1"

// MinSecretLen is the shortest identity secret accepted: 32 bytes, the
// HMAC-SHA256 block of entropy a secret should carry at least.
const MinSecretLen = 32

// Claims are the facts a token carries. Field order in the signed JSON is
// fixed (typ, sid, sids, uid, ah, exp, iat, then the ticket's lane, arr,
// tid) and empty fields are left out, so both sides produce byte-identical
// tokens.
type Claims struct {
	// Type says what the token is for.
	Type string `json:"typ"`
	// SID is the lower-case hex SHA-256 of a session key.
	SID string `json:"sid,omitempty"`
	// SIDs are the session hashes a revocation names.
	SIDs []string `json:"sids,omitempty"`
	// UserID is Django's _auth_user_id, a string.
	UserID string `json:"uid,omitempty"`
	// AuthHash is Django's _auth_user_hash.
	AuthHash string `json:"ah,omitempty"`
	// Expires is the session's expiry, Unix seconds.
	Expires int64 `json:"exp,omitempty"`
	// IssuedAt is when the token was signed, Unix seconds.
	IssuedAt int64 `json:"iat"`
	// Lane is the lane a ticket is good for.
	Lane string `json:"lane,omitempty"`
	// Arrival is a ticket's first arrival, Unix nanoseconds.
	Arrival int64 `json:"arr,omitempty"`
	// TicketID names a ticket's place in line.
	TicketID string `json:"tid,omitempty"`
}

// Errors Verify returns, wrapped. A token that fails for any reason is
// ignored by both sides: the request takes Django's normal path.
var (
	ErrMalformed  = errors.New("malformed token")
	ErrUnknownKey = errors.New("unknown key id")
	ErrSignature  = errors.New("bad signature")
	ErrType       = errors.New("wrong token type")
	ErrStale      = errors.New("token too old")
	ErrFuture     = errors.New("token issued in the future")
)

// Keyring holds the shared identity secrets by key id. The first key signs;
// every key verifies, so a new secret can be added everywhere first and the
// old one removed once nothing signs with it (rotation without downtime).
type Keyring struct {
	signer string
	keys   map[string]*key
}

type key struct {
	id     string
	secret []byte
	pool   sync.Pool // of hash.Hash, HMAC-SHA256 keyed with secret
}

func (k *key) mac() hash.Hash {
	if h, ok := k.pool.Get().(hash.Hash); ok {
		h.Reset()
		return h
	}
	return hmac.New(sha256.New, k.secret)
}

// ParseKeyring reads a comma-separated list of secrets, each "kid:secret"
// or a bare secret whose key id is then derived from it. Key ids are 1–32
// characters of [A-Za-z0-9_-]; secrets at least MinSecretLen bytes.
func ParseKeyring(spec string) (*Keyring, error) {
	kr := &Keyring{keys: map[string]*key{}}
	for i, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, secret, ok := strings.Cut(part, ":")
		if !ok || !validKeyID(id) {
			id, secret = DeriveKeyID(part), part
		}
		if len(secret) < MinSecretLen {
			return nil, fmt.Errorf("secret %d (key id %q) has %d bytes: want at least %d", i+1, id, len(secret), MinSecretLen)
		}
		if _, dup := kr.keys[id]; dup {
			return nil, fmt.Errorf("key id %q appears twice", id)
		}
		kr.keys[id] = &key{id: id, secret: []byte(secret)}
		if kr.signer == "" {
			kr.signer = id
		}
	}
	if kr.signer == "" {
		return nil, errors.New("no secret given")
	}
	return kr, nil
}

// DeriveKeyID is the key id of a bare secret: the first 8 hex digits of
// SHA-256("lanegate-kid:" + secret), so both sides agree without naming it.
func DeriveKeyID(secret string) string {
	sum := sha256.Sum256([]byte("lanegate-kid:" + secret))
	return hex.EncodeToString(sum[:4])
}

func validKeyID(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// SignerID returns the key id new tokens are signed with.
func (kr *Keyring) SignerID() string { return kr.signer }

// SessionHash returns the lower-case hex SHA-256 of a session key: the sid
// claim. Django computes the same from the cookie it receives.
func SessionHash(sessionKey string) string {
	sum := sha256.Sum256([]byte(sessionKey))
	return hex.EncodeToString(sum[:])
}

var b64 = base64.RawURLEncoding

// Sign returns the token for c, signed with the signing key:
//
//	v1.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "v1.<kid>.<payload>"))>
//
// base64url is without padding.
func (kr *Keyring) Sign(c *Claims) string {
	// An identity token is about 330 bytes: one buffer, then the string.
	return string(kr.AppendSign(make([]byte, 0, 384), c))
}

// AppendSign appends the token for c to dst, for callers that reuse a buffer.
func (kr *Keyring) AppendSign(dst []byte, c *Claims) []byte {
	k := kr.keys[kr.signer]
	var stack [512]byte
	payload := appendClaims(stack[:0], c)

	start := len(dst)
	dst = append(dst, version...)
	dst = append(dst, '.')
	dst = append(dst, k.id...)
	dst = append(dst, '.')
	dst = b64.AppendEncode(dst, payload)
	h := k.mac()
	h.Write(dst[start:])
	var sum [sha256.Size]byte
	mac := h.Sum(sum[:0])
	k.pool.Put(h)
	dst = append(dst, '.')
	return b64.AppendEncode(dst, mac)
}

// appendClaims writes c as compact JSON in the fixed field order. Strings
// are escaped as Python's json.dumps(ensure_ascii=False) escapes them, so
// the Django side signs the same bytes.
func appendClaims(b []byte, c *Claims) []byte {
	b = append(b, `{"typ":`...)
	b = appendJSONString(b, c.Type)
	if c.SID != "" {
		b = append(b, `,"sid":`...)
		b = appendJSONString(b, c.SID)
	}
	if len(c.SIDs) > 0 {
		b = append(b, `,"sids":[`...)
		for i, s := range c.SIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, s)
		}
		b = append(b, ']')
	}
	if c.UserID != "" {
		b = append(b, `,"uid":`...)
		b = appendJSONString(b, c.UserID)
	}
	if c.AuthHash != "" {
		b = append(b, `,"ah":`...)
		b = appendJSONString(b, c.AuthHash)
	}
	if c.Expires != 0 {
		b = append(b, `,"exp":`...)
		b = strconv.AppendInt(b, c.Expires, 10)
	}
	b = append(b, `,"iat":`...)
	b = strconv.AppendInt(b, c.IssuedAt, 10)
	if c.Lane != "" {
		b = append(b, `,"lane":`...)
		b = appendJSONString(b, c.Lane)
	}
	if c.Arrival != 0 {
		b = append(b, `,"arr":`...)
		b = strconv.AppendInt(b, c.Arrival, 10)
	}
	if c.TicketID != "" {
		b = append(b, `,"tid":`...)
		b = appendJSONString(b, c.TicketID)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			if c < 0x20 {
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			} else {
				b = append(b, c)
			}
		}
	}
	return append(b, '"')
}

// Window bounds how old or how far in the future a token's iat may be.
type Window struct {
	MaxAge time.Duration
	// Skew tolerates clocks running ahead of the verifier's.
	Skew time.Duration
}

// Verify checks token's signature, type and age at now and returns its
// claims. It never panics on hostile input; every failure wraps one of the
// Err* values.
func (kr *Keyring) Verify(token, typ string, now time.Time, w Window) (*Claims, error) {
	if len(token) > maxTokenLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(token))
	}
	ver, rest, ok1 := strings.Cut(token, ".")
	kid, rest, ok2 := strings.Cut(rest, ".")
	payload, sig, ok3 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || !ok3 || ver != version || strings.Contains(sig, ".") {
		return nil, fmt.Errorf("%w: not v1.<kid>.<payload>.<sig>", ErrMalformed)
	}
	k, ok := kr.keys[kid]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, kid)
	}
	// 32 bytes are 43 base64url characters; anything longer would not fit
	// the buffer and cannot be a signature.
	if len(sig) != b64.EncodedLen(sha256.Size) {
		return nil, fmt.Errorf("%w: signature length", ErrMalformed)
	}
	var sigBuf [sha256.Size]byte
	n, err := b64.Decode(sigBuf[:], []byte(sig))
	if err != nil || n != sha256.Size {
		return nil, fmt.Errorf("%w: signature encoding", ErrMalformed)
	}
	h := k.mac()
	h.Write([]byte(token[:len(ver)+1+len(kid)+1+len(payload)]))
	var sum [sha256.Size]byte
	want := h.Sum(sum[:0])
	k.pool.Put(h)
	if subtle.ConstantTimeCompare(want, sigBuf[:n]) != 1 {
		return nil, ErrSignature
	}
	raw, err := b64.DecodeString(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload encoding", ErrMalformed)
	}
	var c Claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if c.Type != typ {
		return nil, fmt.Errorf("%w: %q, want %q", ErrType, c.Type, typ)
	}
	iat := time.Unix(c.IssuedAt, 0)
	if iat.After(now.Add(w.Skew)) {
		return nil, fmt.Errorf("%w: issued %s ahead", ErrFuture, iat.Sub(now))
	}
	if now.Sub(iat) > w.MaxAge {
		return nil, fmt.Errorf("%w: issued %s ago", ErrStale, now.Sub(iat).Truncate(time.Second))
	}
	return &c, nil
}

// maxTokenLen bounds what Verify reads: a revocation naming a few hundred
// sessions fits; anything larger is refused before decoding.
const maxTokenLen = 64 << 10
