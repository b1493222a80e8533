//! Counter-based deterministic random numbers.
//!
//! A [`Rng`] is a pure function of its key and of how many numbers it has
//! produced: the n-th output is `hash(key, n)`. Keying by (seed, split,
//! sample index, epoch, stream) therefore gives every sample its own
//! independent stream, and the random choices made for one sample never depend
//! on which thread drew it or on how many numbers other samples consumed.

/// The 64-bit golden-ratio increment of splitmix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 / Stafford "mix13" finaliser: a bijection of `u64` with full
/// avalanche (every input bit flips each output bit with probability ~1/2).
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic, counter-based random number generator.
///
/// The key is hashed into 128 bits; output n is a double application of the
/// splitmix64 finaliser to (key, n). Cloning a `Rng` forks the stream at its current
/// position, which is how augmentations can be replayed exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    k0: u64,
    k1: u64,
    counter: u64,
}

impl Rng {
    /// Creates the stream for `key`. All words matter, in order, and so does
    /// the key's length: `[a, b]`, `[b, a]` and `[a, b, 0]` are unrelated
    /// streams.
    pub fn from_key(key: &[u64]) -> Rng {
        let mut a = 0x243F_6A88_85A3_08D3 ^ key.len() as u64;
        let mut b = 0x1319_8A2E_0370_7344_u64;
        for &w in key {
            a = mix64(a.wrapping_add(GOLDEN) ^ w);
            b = mix64(b.wrapping_add(w).wrapping_add(a).wrapping_add(GOLDEN));
        }
        Rng { k0: a, k1: b, counter: 0 }
    }

    /// The next 64 uniformly distributed bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        mix64(mix64(self.k0 ^ self.counter.wrapping_mul(GOLDEN)).wrapping_add(self.k1))
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform float in `[lo, hi)` (or `[hi, lo)` if `hi < lo`; `lo` if they
    /// are equal).
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// An unbiased uniform integer in `[0, n)` (Lemire's multiply-and-reject).
    /// Returns 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream() {
        let mut a = Rng::from_key(&[1, 2, 3]);
        let mut b = Rng::from_key(&[1, 2, 3]);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn different_keys_differ() {
        let keys: [&[u64]; 5] = [&[1, 2], &[2, 1], &[1, 2, 0], &[1, 3], &[]];
        let firsts: Vec<u64> = keys.iter().map(|k| Rng::from_key(k).next_u64()).collect();
        for i in 0..firsts.len() {
            for j in i + 1..firsts.len() {
                assert_ne!(firsts[i], firsts[j], "keys {i} and {j}");
            }
        }
    }

    #[test]
    fn floats_are_roughly_uniform() {
        let mut rng = Rng::from_key(&[42]);
        let mut buckets = [0u32; 10];
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
            buckets[(x * 10.0) as usize] += 1;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.01);
        for b in buckets {
            assert!((9_400..10_600).contains(&b), "bucket {b}");
        }
        let u = rng.uniform(-3.0, 5.0);
        assert!((-3.0..5.0).contains(&u));
    }

    #[test]
    fn below_is_in_range_and_balanced() {
        let mut rng = Rng::from_key(&[7, 7]);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "count {c}");
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
        assert!(rng.below(u64::MAX) < u64::MAX);
    }

    #[test]
    fn clone_forks_at_current_position() {
        let mut a = Rng::from_key(&[9]);
        a.next_u64();
        let mut b = a.clone();
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
