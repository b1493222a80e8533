//! The two passes of the separable resampler, written so that the compiler vectorises them,
//! and compiled twice: for the baseline target and with AVX2, chosen at run time.
//!
//! Both passes compute exactly Pillow's integer sums (`uint8 × int32` weights with 22
//! fraction bits, summed in `int32` from a rounding half, then shifted and clamped): only
//! the order of the additions differs, and integer sums do not depend on it. Each output
//! reads a fixed number of taps `K` (shorter filters are padded with zero weights by the
//! caller), so the loops have constant trip counts for the common `K` (1–16).
//!
//! The horizontal pass, which the compiler does not vectorise well (three interleaved
//! channels), also has an explicit AVX2 version ([`avx2`]) for tap counts that are a
//! multiple of 4; it reads up to [`ROW_OVERREAD`] bytes past a row's last tap and ignores
//! them. The vertical pass works on 32 bytes of a row at a time, all taps accumulated in
//! registers.

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Fraction bits of the fixed-point weights, as in Pillow (`32 - 8 - 2`).
pub(super) const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The rounding half every sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// Bytes of a row the vertical pass handles at once.
const LANES: usize = 32;

/// Pillow's `clip8`: drop the fraction bits and saturate to a byte.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The taps of one axis: output `o` reads inputs `starts[o] .. starts[o] + taps` with
/// weights `weights[o * taps ..][..taps]`.
#[derive(Debug)]
pub(super) struct Taps<'a> {
    /// Taps per output (`K`).
    pub(super) taps: usize,
    /// First input of each output.
    pub(super) starts: &'a [usize],
    /// `taps` weights per output.
    pub(super) weights: &'a [i32],
}

/// Calls `$f::<K>($args)` for the `K` of `$taps` when it is 1–16, else `$dynamic($args)`.
macro_rules! with_const_taps {
    ($taps:expr, $f:ident, $dynamic:ident, ($($arg:expr),*)) => {
        match $taps {
            1 => $f::<1>($($arg),*), 2 => $f::<2>($($arg),*), 3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*), 5 => $f::<5>($($arg),*), 6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*), 8 => $f::<8>($($arg),*), 9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*), 11 => $f::<11>($($arg),*), 12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*), 14 => $f::<14>($($arg),*), 15 => $f::<15>($($arg),*),
            16 => $f::<16>($($arg),*),
            _ => $dynamic($($arg),*),
        }
    };
}

/// Whether the AVX2 versions can run here.
#[inline]
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Bytes past the last tap of a row that [`Horizontal::line`] may read (and ignore).
pub(super) const ROW_OVERREAD: usize = 4;

/// The horizontal pass, prepared for one set of taps: with AVX2 and a tap count that is a
/// multiple of 4, each output pixel is 4 taps per step of explicit SIMD (two pixels per
/// 256-bit register, channels in `i32` lanes); otherwise the portable loops above.
#[derive(Debug)]
pub(super) struct Horizontal<'a> {
    taps: Taps<'a>,
    /// Each weight repeated 4 times (one per lane of a pixel), for the SIMD path; empty
    /// when that path is not taken.
    expanded: Vec<i32>,
}

impl<'a> Horizontal<'a> {
    /// Prepares the pass for `taps`.
    pub(super) fn new(taps: Taps<'a>) -> Horizontal<'a> {
        let simd = use_avx2() && taps.taps.is_multiple_of(4) && taps.weights.len() == taps.starts.len() * taps.taps;
        let expanded = if simd { taps.weights.iter().flat_map(|&w| [w; 4]).collect() } else { Vec::new() };
        Horizontal { taps, expanded }
    }

    /// One row: `dst` (3 bytes per output pixel) from `row`, which must hold
    /// `3 * (starts[o] + taps) + ROW_OVERREAD` bytes for every output `o`.
    pub(super) fn line(&self, row: &[u8], dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if !self.expanded.is_empty() {
            let t = &self.taps;
            // SAFETY: `expanded` is only filled when the CPU has AVX2 (`use_avx2`).
            if unsafe { avx2::horizontal_line(row, t.starts, &self.expanded, t.taps, dst) } {
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if use_avx2() {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { horizontal_line_avx2(row, &self.taps, dst) };
            return;
        }
        horizontal_line_any(row, &self.taps, dst);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_line_avx2(row: &[u8], taps: &Taps<'_>, dst: &mut [u8]) {
    horizontal_line_any(row, taps, dst);
}

#[inline(always)]
fn horizontal_line_any(row: &[u8], taps: &Taps<'_>, dst: &mut [u8]) {
    with_const_taps!(taps.taps, horizontal_k, horizontal_dyn, (row, taps, dst))
}

#[inline(always)]
fn horizontal_k<const K: usize>(row: &[u8], taps: &Taps<'_>, dst: &mut [u8]) {
    let outputs = dst.chunks_exact_mut(3).zip(taps.starts).zip(taps.weights.chunks_exact(K));
    for ((px, &start), w) in outputs {
        let s = &row[3 * start..3 * start + 3 * K];
        let mut acc = [HALF; 3];
        for k in 0..K {
            for c in 0..3 {
                acc[c] += i32::from(s[3 * k + c]) * w[k];
            }
        }
        px[0] = clip8(acc[0]);
        px[1] = clip8(acc[1]);
        px[2] = clip8(acc[2]);
    }
}

#[inline(always)]
fn horizontal_dyn(row: &[u8], taps: &Taps<'_>, dst: &mut [u8]) {
    let n = taps.taps;
    let outputs = dst.chunks_exact_mut(3).zip(taps.starts).zip(taps.weights.chunks_exact(n));
    for ((px, &start), w) in outputs {
        let s = &row[3 * start..3 * start + 3 * n];
        let mut acc = [HALF; 3];
        for (p, &wk) in s.chunks_exact(3).zip(w) {
            for c in 0..3 {
                acc[c] += i32::from(p[c]) * wk;
            }
        }
        px[0] = clip8(acc[0]);
        px[1] = clip8(acc[1]);
        px[2] = clip8(acc[2]);
    }
}

/// Vertical pass: each output row of `out` (`width` bytes) from rows of `src`, which start
/// `stride` bytes apart (output `o` reads rows `starts[o] ..`, `width` bytes of each).
pub(super) fn vertical(src: &[u8], stride: usize, width: usize, taps: &Taps<'_>, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { vertical_avx2(src, stride, width, taps, out) };
        return;
    }
    vertical_any(src, stride, width, taps, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_avx2(src: &[u8], stride: usize, width: usize, taps: &Taps<'_>, out: &mut [u8]) {
    vertical_any(src, stride, width, taps, out);
}

#[inline(always)]
fn vertical_any(src: &[u8], stride: usize, width: usize, taps: &Taps<'_>, out: &mut [u8]) {
    with_const_taps!(taps.taps, vertical_k, vertical_dyn, (src, stride, width, taps, out))
}

#[inline(always)]
fn vertical_k<const K: usize>(src: &[u8], stride: usize, width: usize, taps: &Taps<'_>, out: &mut [u8]) {
    if width == 0 {
        return;
    }
    let outputs = out.chunks_exact_mut(width).zip(taps.starts).zip(taps.weights.chunks_exact(K));
    for ((out_row, &start), w) in outputs {
        let rows: [&[u8]; K] = std::array::from_fn(|k| &src[(start + k) * stride..][..width]);
        let mut j = 0;
        while j + LANES <= width {
            let mut acc = [HALF; LANES];
            for k in 0..K {
                let r = &rows[k][j..j + LANES];
                for l in 0..LANES {
                    acc[l] += i32::from(r[l]) * w[k];
                }
            }
            for (d, &a) in out_row[j..j + LANES].iter_mut().zip(&acc) {
                *d = clip8(a);
            }
            j += LANES;
        }
        for (i, d) in out_row.iter_mut().enumerate().skip(j) {
            let mut acc = HALF;
            for k in 0..K {
                acc += i32::from(rows[k][i]) * w[k];
            }
            *d = clip8(acc);
        }
    }
}

#[inline(always)]
fn vertical_dyn(src: &[u8], stride: usize, width: usize, taps: &Taps<'_>, out: &mut [u8]) {
    if width == 0 {
        return;
    }
    let n = taps.taps;
    let mut acc = vec![HALF; width];
    let outputs = out.chunks_exact_mut(width).zip(taps.starts).zip(taps.weights.chunks_exact(n));
    for ((out_row, &start), w) in outputs {
        acc.fill(HALF);
        for (k, &wk) in w.iter().enumerate() {
            let row = &src[(start + k) * stride..][..width];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i32::from(v) * wk;
            }
        }
        for (d, &a) in out_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The SIMD horizontal pass (when this CPU has AVX2) equals the portable loops on random
    /// rows, weights and starts, for every tap count it takes.
    #[test]
    fn simd_horizontal_pass_equals_portable_loops() {
        let mut rng = Rng::from_key(&[5]);
        for taps in [4usize, 8, 12, 16, 20] {
            let (in_w, out_w) = (64usize, 37usize);
            let row: Vec<u8> = (0..3 * in_w + ROW_OVERREAD).map(|_| rng.below(256) as u8).collect();
            let starts: Vec<usize> = (0..out_w).map(|_| rng.below((in_w - taps + 1) as u64) as usize).collect();
            // Weights of either sign in [-1/2, 1) / taps of fixed-point one: sums cannot overflow.
            let (one, k) = (1i64 << PRECISION_BITS, taps as i64);
            let weights: Vec<i32> = (0..out_w * taps)
                .map(|_| (rng.below((3 * one / (2 * k)) as u64) as i64 - one / (2 * k)) as i32)
                .collect();
            let t = Taps { taps, starts: &starts, weights: &weights };
            let (mut fast, mut plain) = (vec![0u8; 3 * out_w], vec![0u8; 3 * out_w]);
            Horizontal::new(Taps { taps, starts: &starts, weights: &weights }).line(&row, &mut fast);
            horizontal_line_any(&row, &t, &mut plain);
            assert_eq!(fast, plain, "{taps} taps");
        }
    }
}
