//! Deterministic, resumable epoch shuffles.
//!
//! [`EpochPermutation`] maps a position in an epoch to a sample index with a
//! keyed Feistel network, so the order is a function of (seed, epoch, length)
//! only, costs O(1) memory even for billions of samples, and can be resumed
//! at any position without replaying the ones before it.

use crate::rng::{mix64, Rng};

/// Number of Feistel rounds; 6 is ample for shuffling (not for cryptography).
const ROUNDS: usize = 6;
/// Stream id that separates permutation keys from every other use of a seed.
const PERMUTATION_STREAM: u64 = 0x7065_726d_7574_6521;

/// A pseudo-random bijection of `[0, len)` that depends only on
/// (seed, epoch, len).
///
/// It is a balanced Feistel network on the smallest even number of bits that
/// covers `len`, made a bijection of `[0, len)` by cycle-walking; the domain
/// is at most 4·len, so [`index`](Self::index) takes fewer than 4 rounds of
/// the network on average.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochPermutation {
    len: u64,
    half_bits: u32,
    mask: u64,
    keys: [u64; ROUNDS],
}

impl EpochPermutation {
    /// The permutation of `[0, len)` for this seed and epoch.
    pub fn new(seed: u64, epoch: u64, len: u64) -> EpochPermutation {
        let bits = if len <= 1 { 0 } else { 64 - (len - 1).leading_zeros() };
        let half_bits = bits.div_ceil(2);
        let mask = if half_bits == 0 { 0 } else { (1u64 << half_bits) - 1 };
        let mut rng = Rng::from_key(&[seed, epoch, len, PERMUTATION_STREAM]);
        let keys = std::array::from_fn(|_| rng.next_u64());
        EpochPermutation { len, half_bits, mask, keys }
    }

    /// The number of elements permuted.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the permutation is over the empty set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sample index at `position` of the epoch. A position outside
    /// `[0, len)` is returned unchanged.
    pub fn index(&self, position: u64) -> u64 {
        if position >= self.len {
            return position;
        }
        let mut x = position;
        loop {
            x = self.feistel(x);
            if x < self.len {
                return x;
            }
        }
    }

    /// One pass of the Feistel network: a bijection of `[0, 2^(2·half_bits))`.
    fn feistel(&self, x: u64) -> u64 {
        if self.half_bits == 0 {
            return x;
        }
        let mut left = x >> self.half_bits;
        let mut right = x & self.mask;
        for key in self.keys {
            let f = mix64(right ^ key) & self.mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(seed: u64, epoch: u64, len: u64) -> Vec<u64> {
        let p = EpochPermutation::new(seed, epoch, len);
        (0..len).map(|i| p.index(i)).collect()
    }

    #[test]
    fn is_a_permutation() {
        for len in [1u64, 2, 3, 7, 1000, 4096, 4097] {
            let mut seen = vec![false; len as usize];
            for i in order(5, 0, len) {
                assert!(i < len);
                assert!(!seen[i as usize], "len {len}: {i} seen twice");
                seen[i as usize] = true;
            }
        }
    }

    #[test]
    fn epochs_and_seeds_change_the_order() {
        let base = order(1, 0, 1000);
        assert_ne!(base, order(1, 1, 1000));
        assert_ne!(base, order(2, 0, 1000));
        assert_ne!(base, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn is_deterministic() {
        assert_eq!(order(3, 4, 777), order(3, 4, 777));
    }

    #[test]
    fn handles_empty_and_huge_lengths() {
        let empty = EpochPermutation::new(0, 0, 0);
        assert!(empty.is_empty());
        assert_eq!(empty.index(3), 3);
        for len in [u64::MAX, 1 << 63, (1 << 40) + 3] {
            let p = EpochPermutation::new(9, 1, len);
            assert_eq!(p.len(), len);
            for pos in [0, 1, len / 2, len - 1] {
                assert!(p.index(pos) < len);
            }
            assert_ne!(p.index(0), p.index(1));
        }
    }
}
