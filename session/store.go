// Package session remembers which Django session cookie belongs to which
// user, as Django itself said in a signed grant, so that lanegate can tell
// Django who a request is for in a signed identity header and Django can
// skip its django_session read.
//
// Django stays the authority: lanegate caches only what Django granted,
// forgets it when Django revokes it or rotates the cookie, and Django still
// checks the user (exists, active, unchanged password) on every trusted
// request. When the store fails, requests take Django's normal path.
package session

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"sync"
	"time"
)

// Key names a session in a store: HMAC-SHA256 over the session hash under
// a secret, so a dump of the store (Redis RDB, MONITOR, a heap profile)
// yields no live session key, nor anything to look one up by.
type Key [sha256.Size]byte

// String is the key's hex form, as stored in Redis.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// Entry is what Django granted about one session.
type Entry struct {
	// UserID is Django's _auth_user_id.
	UserID string
	// AuthHash is Django's _auth_user_hash at grant time; Django compares
	// it with the user's current one on every trusted request, so a
	// password change elsewhere ends trust at once.
	AuthHash string
	// Expires is the session's own expiry. The entry never outlives it.
	Expires time.Time
	// Granted is when Django issued the grant.
	Granted time.Time
}

// Store keeps entries for a bounded time. Implementations are safe for
// concurrent use.
type Store interface {
	// Get returns the live entry under k. ok is false when there is none,
	// it expired, or it was revoked.
	Get(ctx context.Context, k Key) (e Entry, ok bool, err error)
	// Put stores e under k for ttl. It stores nothing and returns false
	// when k was revoked within the tombstone period of that revocation,
	// so a grant computed before a logout cannot undo the logout.
	Put(ctx context.Context, k Key, e Entry, ttl time.Duration) (stored bool, err error)
	// Revoke removes k and leaves a tombstone for tombstone.
	Revoke(ctx context.Context, k Key, tombstone time.Duration) error
	// Len reports how many entries (and tombstones) the store holds.
	Len(ctx context.Context) (int, error)
	// Close releases the store's resources.
	Close() error
}

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("session: store closed")

// KeyMaker derives store keys from session hashes.
type KeyMaker struct {
	secret []byte
	pool   *sync.Pool // of hash.Hash, HMAC-SHA256 under secret
}

// NewKeyMaker returns a KeyMaker keyed by the keyring's signing secret,
// through a label so the store key never equals a token signature. Replicas
// sharing a store must share the signing secret, which they do anyway.
func NewKeyMaker(kr *Keyring) KeyMaker {
	m := hmac.New(sha256.New, kr.keys[kr.signer].secret)
	m.Write([]byte("lanegate session store key"))
	secret := m.Sum(nil)
	return KeyMaker{secret: secret, pool: &sync.Pool{New: func() any { return hmac.New(sha256.New, secret) }}}
}

// Key returns the store key of the session whose hash (SessionHash) is sid.
func (m KeyMaker) Key(sid string) Key {
	h := m.pool.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte(sid))
	var k Key
	h.Sum(k[:0])
	m.pool.Put(h)
	return k
}
