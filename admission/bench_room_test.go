package admission

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// benchPlaces is the most places the room keeps for logins that are away
// (maxAway): a storm at its worst.
const benchPlaces = maxAway

// benchRoom is a controller whose login line holds benchPlaces places,
// each from its own address, with the login lane busy and the measured
// rate one login a second.
type benchRoom struct {
	c      *Controller
	clock  *clockwork.FakeClock
	places []Place
	busy   *Permit
}

// keepPage keeps a waiting-page place for client.
func keepPage(b *testing.B, c *Controller, client string, id uint64, arrival, until time.Time) Place {
	p, err := c.Keep(client, id, arrival, until)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func newBenchRoom(b *testing.B) *benchRoom {
	b.Helper()
	clock := clockwork.NewFakeClock()
	l := roomLimits()
	l.Lane[Login].Queue = 100
	c, err := New(l, WithClock(clock))
	if err != nil {
		b.Fatal(err)
	}
	br := &benchRoom{c: c, clock: clock}
	br.busy, err = c.Acquire(context.Background(), Request{Lane: Login})
	if err != nil {
		b.Fatal(err)
	}
	setRate(c, clock, time.Second)
	until := clock.Now().Add(30 * time.Minute)
	for i := range benchPlaces {
		clock.Advance(time.Microsecond)
		br.places = append(br.places, keepPage(b, c, benchClient(i), 0, time.Time{}, until))
	}
	if st := c.Snapshot().Room; st.Away != benchPlaces {
		b.Fatalf("away %d, want %d", st.Away, benchPlaces)
	}
	return br
}

// benchClient is the address of place i.
func benchClient(i int) string {
	return "10.0." + strconv.Itoa(i>>8) + "." + strconv.Itoa(i&255)
}

// BenchmarkRoom measures the login line's bookkeeping, all of it under
// the controller's mutex, with 50,000 places kept for logins that are
// away: keep renews a place (a waiting page reloaded), line reads a
// place's position, and return is a login back with its ticket that
// arrives and is sent away again in its place.
func BenchmarkRoom(b *testing.B) {
	b.Run("keep", func(b *testing.B) {
		br := newBenchRoom(b)
		until := br.clock.Now().Add(30 * time.Minute)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := (i * 7919) % benchPlaces
			p := br.places[k]
			keepPage(b, br.c, benchClient(k), p.ID, p.Arrival, until)
			i++
		}
	})
	b.Run("line", func(b *testing.B) {
		br := newBenchRoom(b)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			p := br.places[(i*7919)%benchPlaces]
			br.c.Line(p.ID, p.Arrival)
			i++
		}
	})
	b.Run("return", func(b *testing.B) {
		br := newBenchRoom(b)
		ctx := context.Background()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := 100 + (i*7919)%(benchPlaces-100) // far past the hold
			p := br.places[k]
			_, err := br.c.Acquire(ctx, Request{Lane: Login, Client: benchClient(k), Ticket: p.ID, Arrival: p.Arrival})
			var se *ShedError
			if !errors.As(err, &se) || se.Place == nil || se.Place.ID != p.ID {
				b.Fatalf("return of place %d: %v, want sent away in its place", k, err)
			}
			i++
		}
	})
}
