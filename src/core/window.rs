//! Per-tag sample windows: a fixed-capacity ring buffer (ringbuf) of good samples, allocated
//! up front, plus cursors that let each rule keep its own time span over the shared buffer.
//!
//! A rule's statistics are updated incrementally: a sample is added when it arrives and
//! removed when it leaves the rule's span, so each update is O(1) amortised.

use ringbuf::storage::Heap;
use ringbuf::traits::{Observer, RingBuffer};

use ringbuf::LocalRb;

use super::model::Ts;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts: Ts,
    pub v: f64,
}

/// The most points one window may hold, whatever the configuration asks.
pub const MAX_CAPACITY: usize = 1 << 20;

pub struct Window {
    rb: LocalRb<Heap<Point>>,
    /// Sequence number of the oldest point held.
    first_seq: u64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("first_seq", &self.first_seq)
            .finish()
    }
}

/// Points needed to cover `span_ms` at one point per `interval_ms`, with room for jitter.
pub fn capacity_for(span_ms: i64, interval_ms: i64) -> usize {
    let interval = interval_ms.max(1);
    let n = (span_ms.max(0) / interval) as usize;
    (n + n / 4 + 4).clamp(4, MAX_CAPACITY)
}

impl Window {
    pub fn new(capacity: usize) -> Window {
        let cap = capacity.clamp(1, MAX_CAPACITY);
        Window {
            rb: LocalRb::new(cap),
            first_seq: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.rb.capacity().get()
    }

    pub fn len(&self) -> usize {
        self.rb.occupied_len()
    }

    pub fn is_empty(&self) -> bool {
        self.rb.is_empty()
    }

    /// Sequence number the next pushed point will get.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.len() as u64
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Appends a point; when full, the oldest is overwritten and returned with its sequence.
    pub fn push(&mut self, p: Point) -> Option<(u64, Point)> {
        let evicted_seq = self.first_seq;
        match self.rb.push_overwrite(p) {
            Some(old) => {
                self.first_seq += 1;
                Some((evicted_seq, old))
            }
            None => None,
        }
    }

    pub fn get(&mut self, seq: u64) -> Option<Point> {
        if seq < self.first_seq {
            return None;
        }
        let i = (seq - self.first_seq) as usize;
        let (a, b) = RingBuffer::as_slices(&mut self.rb);
        if i < a.len() {
            Some(a[i])
        } else {
            b.get(i - a.len()).copied()
        }
    }

    pub fn latest(&mut self) -> Option<Point> {
        let (a, b) = RingBuffer::as_slices(&mut self.rb);
        b.last().or(a.last()).copied()
    }

    pub fn iter(&mut self) -> impl Iterator<Item = Point> + '_ {
        let (a, b) = RingBuffer::as_slices(&mut self.rb);
        a.iter().chain(b.iter()).copied()
    }

    /// Empties the window (e.g. when a tag's definition changed on reload).
    pub fn clear(&mut self) {
        let n = self.len() as u64;
        self.rb.clear();
        self.first_seq += n;
    }
}

/// Statistics fed incrementally by a [`SpanCursor`].
pub trait Accumulate {
    fn add(&mut self, p: Point);
    fn remove(&mut self, p: Point);
}

/// A rule's view of a window: the points within `span_ms` of the newest one.
#[derive(Debug, Clone)]
pub struct SpanCursor {
    pub span_ms: i64,
    /// Sequence of the oldest point inside the span.
    oldest: u64,
    /// Sequence of the next point not yet added.
    next: u64,
}

impl SpanCursor {
    pub fn new(span_ms: i64, window: &Window) -> SpanCursor {
        SpanCursor {
            span_ms,
            oldest: window.next_seq(),
            next: window.next_seq(),
        }
    }

    /// Feeds points that entered the window since the last call to `add`, then evicts points
    /// older than `now - span` (or overwritten in the ring) through `remove`.
    pub fn advance(&mut self, window: &mut Window, now: Ts, acc: &mut impl Accumulate) {
        while self.next < window.next_seq() {
            if let Some(p) = window.get(self.next) {
                acc.add(p);
            }
            self.next += 1;
        }
        let horizon = now - self.span_ms;
        while self.oldest < self.next {
            match window.get(self.oldest) {
                Some(p) if p.ts >= horizon => break,
                Some(p) => acc.remove(p),
                // Already overwritten: the caller removed it when it was evicted.
                None => {}
            }
            self.oldest += 1;
        }
    }

    /// Must be called with every point the ring overwrote, before `advance`: if it was still
    /// inside this span, it leaves now.
    pub fn evicted(&mut self, seq: u64, p: Point, acc: &mut impl Accumulate) {
        if seq >= self.oldest && seq < self.next {
            acc.remove(p);
            self.oldest = seq + 1;
        }
    }

    /// Sequence of the oldest point inside the span (valid when `points_in_span() > 0`).
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    pub fn points_in_span(&self) -> u64 {
        self.next - self.oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_fixed_and_overwrites_oldest() {
        let mut w = Window::new(3);
        for i in 0..3 {
            assert_eq!(w.push(Point { ts: i, v: i as f64 }), None);
        }
        assert_eq!(
            w.push(Point { ts: 3, v: 3.0 }),
            Some((0, Point { ts: 0, v: 0.0 }))
        );
        assert_eq!(w.len(), 3);
        assert_eq!(w.capacity(), 3);
        assert_eq!(w.get(0), None);
        assert_eq!(w.get(1).map(|p| p.ts), Some(1));
        assert_eq!(w.get(3).map(|p| p.ts), Some(3));
        assert_eq!(w.get(4), None);
        assert_eq!(w.latest().map(|p| p.ts), Some(3));
        assert_eq!(w.iter().map(|p| p.ts).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn capacity_for_covers_the_span() {
        assert!(capacity_for(600_000, 1_000) >= 600);
        assert_eq!(capacity_for(0, 1_000), 4);
        assert_eq!(capacity_for(i64::MAX, 1), MAX_CAPACITY);
    }

    #[derive(Default)]
    struct Sum {
        n: i64,
        sum: f64,
    }

    impl Accumulate for Sum {
        fn add(&mut self, p: Point) {
            self.n += 1;
            self.sum += p.v;
        }
        fn remove(&mut self, p: Point) {
            self.n -= 1;
            self.sum -= p.v;
        }
    }

    #[test]
    fn cursor_keeps_a_running_sum_over_its_time_span() {
        let mut w = Window::new(100);
        let mut c = SpanCursor::new(10_000, &w);
        let mut acc = Sum::default();
        for t in 0..60 {
            let now = t * 1_000;
            let p = Point {
                ts: now,
                v: t as f64,
            };
            if let Some((seq, old)) = w.push(p) {
                c.evicted(seq, old, &mut acc);
            }
            c.advance(&mut w, now, &mut acc);
            let expected: Vec<f64> = w
                .iter()
                .filter(|q| q.ts >= now - 10_000)
                .map(|q| q.v)
                .collect();
            assert_eq!(acc.n, expected.len() as i64, "t={t}");
            assert_eq!(acc.sum, expected.iter().sum::<f64>(), "t={t}");
            assert_eq!(c.points_in_span(), expected.len() as u64);
        }
    }

    #[test]
    fn cursor_survives_a_window_smaller_than_its_span() {
        let mut w = Window::new(4);
        let mut c = SpanCursor::new(1_000_000, &w);
        let mut acc = Sum::default();
        for t in 0..50 {
            if let Some((seq, old)) = w.push(Point { ts: t, v: 1.0 }) {
                c.evicted(seq, old, &mut acc);
            }
            c.advance(&mut w, t, &mut acc);
            assert_eq!(acc.n, w.len() as i64);
        }
    }
}
