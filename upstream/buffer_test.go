package upstream

import (
	"bytes"
	"errors"
	"testing"
)

// testPattern is n bytes that differ from their neighbours, so that a
// misplaced chunk shows.
func testPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/ChunkSize)
	}
	return b
}

func TestBufferKeepsBytesInOrder(t *testing.T) {
	bufs := NewBuffers(1<<20, 8<<20)
	want := testPattern(3*ChunkSize + 123)
	var b Buffer
	// Writes of odd sizes straddle chunk boundaries.
	for p := want; len(p) > 0; {
		k := min(len(p), 10007)
		if !b.Append(bufs, p[:k]) {
			t.Fatalf("Append of %d bytes at %d refused, want it within the limits", k, b.Len())
		}
		p = p[k:]
	}
	if got := bufs.InUse(); got != 4*ChunkSize {
		t.Errorf("InUse while holding %d bytes: got %d, want %d (four chunks)", len(want), got, 4*ChunkSize)
	}
	var out bytes.Buffer
	n, err := b.Drain(&out, bufs)
	if err != nil || n != int64(len(want)) {
		t.Fatalf("Drain: got %d bytes, %v; want %d, nil", n, err, len(want))
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("Drain wrote other bytes than were appended")
	}
	if got := bufs.InUse(); got != 0 {
		t.Errorf("InUse after Drain: got %d, want 0", got)
	}
	if b.Len() != 0 {
		t.Errorf("Len after Drain: got %d, want 0", b.Len())
	}
}

func TestBufferPerResponseLimit(t *testing.T) {
	bufs := NewBuffers(100, 8<<20)
	var b Buffer
	if !b.Append(bufs, make([]byte, 60)) {
		t.Fatal("Append of 60 of 100 bytes refused")
	}
	if b.Append(bufs, make([]byte, 41)) {
		t.Fatal("Append past the per-response limit accepted, want refused")
	}
	if b.Len() != 60 {
		t.Errorf("Len after a refused Append: got %d, want the 60 held before", b.Len())
	}
	if large, full := bufs.Overflows(); large != 1 || full != 0 {
		t.Errorf("Overflows: got too_large %d, full %d; want 1, 0", large, full)
	}
	b.Release(bufs)
	if got := bufs.InUse(); got != 0 {
		t.Errorf("InUse after Release: got %d, want 0", got)
	}
}

func TestBuffersTotal(t *testing.T) {
	bufs := NewBuffers(4*ChunkSize, 3*ChunkSize)
	var a, b Buffer
	if !a.Append(bufs, make([]byte, 2*ChunkSize)) {
		t.Fatal("first response's two chunks refused under a total of three")
	}
	// Two more chunks would pass the total: refused whole, nothing kept.
	if b.Append(bufs, make([]byte, ChunkSize+1)) {
		t.Fatal("Append past the total accepted, want refused")
	}
	if got := bufs.InUse(); got != 2*ChunkSize {
		t.Errorf("InUse after a refusal: got %d, want the first response's %d", got, 2*ChunkSize)
	}
	if large, full := bufs.Overflows(); large != 0 || full != 1 {
		t.Errorf("Overflows: got too_large %d, full %d; want 0, 1", large, full)
	}
	if !b.Append(bufs, make([]byte, ChunkSize)) {
		t.Fatal("one chunk within the total refused")
	}
	a.Release(bufs)
	b.Release(bufs)
	if got := bufs.InUse(); got != 0 {
		t.Errorf("InUse after both released: got %d, want 0", got)
	}
}

func TestBuffersOff(t *testing.T) {
	var b Buffer
	if b.Append(NewBuffers(0, 1<<20), []byte("x")) {
		t.Error("Append with a per-response limit of 0 accepted, want refused")
	}
	if b.Append(NewBuffers(1<<20, ChunkSize-1), []byte("x")) {
		t.Error("Append with a total below one chunk accepted, want refused")
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("client gone")
	}
	w.after--
	return len(p), nil
}

func TestBufferDrainErrorReleasesAll(t *testing.T) {
	bufs := NewBuffers(1<<20, 8<<20)
	var b Buffer
	b.Append(bufs, make([]byte, 3*ChunkSize))
	n, err := b.Drain(&failWriter{after: 1}, bufs)
	if err == nil || n != ChunkSize {
		t.Fatalf("Drain to a writer failing on its second write: got %d, %v; want %d and the error", n, err, ChunkSize)
	}
	if got := bufs.InUse(); got != 0 {
		t.Errorf("InUse after a failed Drain: got %d, want 0", got)
	}
}

func BenchmarkBufferSmallResponse(b *testing.B) {
	bufs := NewBuffers(1<<20, 128<<20)
	page := testPattern(20 << 10)
	var out bytes.Buffer
	var buf Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Append(bufs, page)
		out.Reset()
		buf.Drain(&out, bufs)
	}
}
