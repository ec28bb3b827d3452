//! A log-linear latency histogram in microseconds (64 sub-buckets per
//! power of two, so a quantile is within ~1.6 % of the true value), small
//! enough to be summed across client processes as one line of text.

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Up to 2^40 µs, far beyond any bounded run.
const BUCKETS: usize = (SUB as usize) * 36;

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: vec![0; BUCKETS],
            n: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // ≥ SUB_BITS
    let shift = e - SUB_BITS;
    let i = ((shift as u64 + 1) * SUB + ((v >> shift) - SUB)) as usize;
    i.min(BUCKETS - 1)
}

/// The smallest value that falls in bucket `i`.
fn lower(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    (SUB + i % SUB) << shift
}

impl Hist {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Midpoint of the bucket, capped by the exact maximum.
                let lo = lower(i);
                let hi = lower(i + 1).max(lo + 1);
                return ((lo + hi - 1) / 2).min(self.max);
            }
        }
        self.max
    }

    /// `max n idx:count idx:count ...` (non-empty buckets only).
    pub fn encode(&self) -> String {
        let mut s = format!("{} {}", self.max, self.n);
        for (i, c) in self.counts.iter().enumerate() {
            if *c > 0 {
                s.push_str(&format!(" {i}:{c}"));
            }
        }
        s
    }

    pub fn decode(s: &str) -> Hist {
        let mut h = Hist::default();
        let mut it = s.split_whitespace();
        h.max = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        h.n = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        for kv in it {
            if let Some((i, c)) = kv.split_once(':') {
                if let (Ok(i), Ok(c)) = (i.parse::<usize>(), c.parse::<u64>()) {
                    if i < BUCKETS {
                        h.counts[i] += c;
                    }
                }
            }
        }
        h
    }
}
