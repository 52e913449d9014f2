package upstream

import (
	"io"
	"sync/atomic"
)

// ChunkSize is the size of the pieces a buffered response is kept in: the
// size of httputil.ReverseProxy's copy buffer, so one read of the upstream
// fills at most two.
const ChunkSize = 32 << 10

// Buffers bound the memory of buffered responses, the way nginx's
// proxy_buffering does: lanegate reads a response from the app as fast as
// the app sends it, frees the request's slot as soon as the app is done,
// and feeds the client at the client's pace from memory. Django keeps its
// database connection until gunicorn has written the last byte, so without
// buffering a slow client's pace would be the pool's.
//
// Each response may use up to PerResponse bytes, and all responses together
// up to Total; a response that would go past either is relayed unbuffered
// from then on, holding its slot as it always did. Memory is taken in
// chunks of ChunkSize as bytes arrive, never from an announced length.
// Buffers are safe for concurrent use.
type Buffers struct {
	perResponse int64
	total       int64
	inUse       atomic.Int64
	free        chan []byte // spare chunks, so a busy proxy does not allocate them
	// tooLarge and full count responses relayed unbuffered for want of
	// room: past the per-response limit, or past the total.
	tooLarge, full atomic.Uint64
}

// Overflows are how many responses were relayed unbuffered because they
// were larger than the per-response limit (tooLarge) or because buffered
// responses already held the total (full).
func (b *Buffers) Overflows() (tooLarge, full uint64) {
	if b == nil {
		return 0, 0
	}
	return b.tooLarge.Load(), b.full.Load()
}

// NewBuffers returns buffers of at most perResponse bytes each and total
// bytes together. A perResponse of 0 (or a total smaller than one chunk)
// buffers nothing.
func NewBuffers(perResponse, total int64) *Buffers {
	return &Buffers{perResponse: perResponse, total: total, free: make(chan []byte, 64)}
}

// InUse is how many bytes buffered responses hold now.
func (b *Buffers) InUse() int64 {
	if b == nil {
		return 0
	}
	return b.inUse.Load()
}

// PerResponse is the most one response may buffer.
func (b *Buffers) PerResponse() int64 {
	if b == nil {
		return 0
	}
	return b.perResponse
}

// Fits reports whether a response announced as n bytes long may be
// buffered; one that may not is counted as too large.
func (b *Buffers) Fits(n int64) bool {
	if n > b.perResponse {
		b.tooLarge.Add(1)
		return false
	}
	return true
}

// take reserves one chunk, or reports false when the total is reached.
func (b *Buffers) take() ([]byte, bool) {
	if b.inUse.Add(ChunkSize) > b.total {
		b.inUse.Add(-ChunkSize)
		return nil, false
	}
	select {
	case c := <-b.free:
		return c, true
	default:
		return make([]byte, ChunkSize), true
	}
}

// give returns a chunk taken with take.
func (b *Buffers) give(c []byte) {
	b.inUse.Add(-ChunkSize)
	select {
	case b.free <- c[:ChunkSize]:
	default: // enough are kept; let this one go
	}
}

// Buffer is one response's body, kept in memory while the client reads it.
// Its zero value is empty and ready; it is not safe for concurrent use.
type Buffer struct {
	chunks [][]byte
	n      int64 // bytes held
}

// Len is how many bytes the buffer holds.
func (b *Buffer) Len() int64 { return b.n }

// Append copies p into the buffer, taking chunks from bufs as it needs
// them. It reports false, having copied nothing, when p would take the
// buffer past bufs' per-response limit or their total: the caller then
// relays the rest unbuffered.
func (b *Buffer) Append(bufs *Buffers, p []byte) bool {
	if b.n+int64(len(p)) > bufs.perResponse {
		bufs.tooLarge.Add(1)
		return false
	}
	// Reserve every chunk first, so that a refusal leaves the buffer as it
	// was.
	room := int64(len(b.chunks))*ChunkSize - b.n
	had := len(b.chunks)
	for room < int64(len(p)) {
		c, ok := bufs.take()
		if !ok {
			for _, c := range b.chunks[had:] {
				bufs.give(c)
			}
			clear(b.chunks[had:])
			b.chunks = b.chunks[:had]
			bufs.full.Add(1)
			return false
		}
		b.chunks = append(b.chunks, c)
		room += ChunkSize
	}
	for len(p) > 0 {
		i, off := b.n/ChunkSize, b.n%ChunkSize
		k := copy(b.chunks[i][off:], p)
		p = p[k:]
		b.n += int64(k)
	}
	return true
}

// Drain writes the buffer's bytes to w in order, then releases them. A
// write error stops it; what is left is released too.
func (b *Buffer) Drain(w io.Writer, bufs *Buffers) (int64, error) {
	var written int64
	var err error
	left := b.n
	for _, c := range b.chunks {
		if left == 0 || err != nil {
			break
		}
		k := min(left, ChunkSize)
		var m int
		m, err = w.Write(c[:k])
		written += int64(m)
		left -= k
	}
	b.Release(bufs)
	return written, err
}

// Release gives the buffer's memory back to bufs and empties it.
func (b *Buffer) Release(bufs *Buffers) {
	for _, c := range b.chunks {
		bufs.give(c)
	}
	clear(b.chunks)
	b.chunks = b.chunks[:0]
	b.n = 0
}
