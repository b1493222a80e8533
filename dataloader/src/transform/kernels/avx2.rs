//! The horizontal pass with explicit AVX2, for tap counts that are a multiple of 4.
//!
//! Each tap weight is stored 4 times (`expanded`), once per lane of a pixel. One 16-byte
//! load covers 4 taps of an output pixel (12 bytes, plus 4 read and ignored); two byte
//! shuffles spread them into `i32` lanes, two pixels per 256-bit register (R, G, B, 0),
//! and `vpmulld` + `vpaddd` accumulate them. Four output pixels are finished together:
//! their sums are reduced, shifted, saturated to bytes and stored as 12 bytes.

use std::arch::x86_64::*;

use super::{HALF, PRECISION_BITS, ROW_OVERREAD};

/// The shuffle that puts source pixels `first / 3` and `first / 3 + 1` of the 16 loaded
/// bytes into lanes 0–2 and 4–6, with zeros in lanes 3 and 7.
#[inline]
#[target_feature(enable = "avx2")]
fn pair_mask(first: i8) -> __m256i {
    let z = -1i8;
    let (a, b) = (first, first + 3);
    _mm256_setr_epi8(
        a,
        z,
        z,
        z,
        a + 1,
        z,
        z,
        z,
        a + 2,
        z,
        z,
        z,
        z,
        z,
        z,
        z, //
        b,
        z,
        z,
        z,
        b + 1,
        z,
        z,
        z,
        b + 2,
        z,
        z,
        z,
        z,
        z,
        z,
        z,
    )
}

/// The 8-lane partial sums of one output: lanes 0–3 hold the even taps' (R, G, B, 0),
/// lanes 4–7 the odd taps'.
///
/// # Safety
/// `src` must be readable for `12 * quads + 4` bytes and `weights` for `16 * quads` i32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot(src: *const u8, weights: *const i32, quads: usize, m01: __m256i, m23: __m256i) -> __m256i {
    let mut acc = _mm256_setzero_si256();
    for q in 0..quads {
        // SAFETY: within the bounds the caller guarantees.
        let (bytes, w01, w23) = unsafe {
            (
                _mm_loadu_si128(src.add(12 * q).cast()),
                _mm256_loadu_si256(weights.add(16 * q).cast()),
                _mm256_loadu_si256(weights.add(16 * q + 8).cast()),
            )
        };
        let bytes = _mm256_broadcastsi128_si256(bytes);
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_shuffle_epi8(bytes, m01), w01));
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_shuffle_epi8(bytes, m23), w23));
    }
    acc
}

/// Rounds, shifts and saturates the sums of two outputs (`a`, `b`: the 8-lane sums of
/// [`dot`]) to four `i32` lanes each: `[a (R, G, B, 0), b (R, G, B, 0)]`.
#[inline]
#[target_feature(enable = "avx2")]
fn finish_pair(a: __m256i, b: __m256i) -> __m256i {
    let lo = _mm256_permute2x128_si256::<0x20>(a, b);
    let hi = _mm256_permute2x128_si256::<0x31>(a, b);
    let sum = _mm256_add_epi32(_mm256_add_epi32(lo, hi), _mm256_set1_epi32(HALF));
    _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(sum)
}

/// One row of the horizontal pass (see [`super::Horizontal::line`]); `taps` is a
/// multiple of 4. Returns `false`, having written nothing, if some output's window is not
/// inside `row` or the slices are inconsistent.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn horizontal_line(
    row: &[u8],
    starts: &[usize],
    expanded: &[i32],
    taps: usize,
    dst: &mut [u8],
) -> bool {
    let outputs = dst.len() / 3;
    if taps == 0 || !taps.is_multiple_of(4) || starts.len() < outputs || expanded.len() < outputs * taps * 4 {
        return false;
    }
    let max_start = starts[..outputs].iter().copied().max().unwrap_or(0);
    if 3 * (max_start + taps) + ROW_OVERREAD > row.len() {
        return false;
    }
    // A constant trip count for the common filters (4-16 taps) lets the tap loop unroll.
    match taps / 4 {
        1 => line::<1>(row, starts, expanded, taps, &mut dst[..3 * outputs]),
        2 => line::<2>(row, starts, expanded, taps, &mut dst[..3 * outputs]),
        3 => line::<3>(row, starts, expanded, taps, &mut dst[..3 * outputs]),
        4 => line::<4>(row, starts, expanded, taps, &mut dst[..3 * outputs]),
        _ => line::<0>(row, starts, expanded, taps, &mut dst[..3 * outputs]),
    }
    true
}

/// [`horizontal_line`] after its checks, with `Q` = taps / 4 (0: not a constant).
#[inline]
#[target_feature(enable = "avx2")]
fn line<const Q: usize>(row: &[u8], starts: &[usize], expanded: &[i32], taps: usize, dst: &mut [u8]) {
    let outputs = dst.len() / 3;
    let quads = if Q == 0 { taps / 4 } else { Q };
    let (m01, m23) = (pair_mask(0), pair_mask(6));
    // The output of `finish_pair` for (o, o+1) and (o+2, o+3), packed: dwords 0, 4, 1, 5
    // are outputs o..o+4, whose first three bytes each are kept.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0);
    let compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    // SAFETY (every `dot` below): output o < `outputs` reads `row` from 3·starts[o] for
    // 3·taps + 4 = 12·quads + 4 bytes, inside `row` by the max_start check of
    // `horizontal_line`, and `expanded` from o·4·taps for 16·quads = 4·taps i32, inside it
    // by its length check.
    let one = |o: usize| unsafe {
        dot(row.as_ptr().add(3 * starts[o]), expanded.as_ptr().add(o * 4 * taps), quads, m01, m23)
    };
    let mut o = 0;
    while o + 4 <= outputs {
        let (a, b, c, d) = (one(o), one(o + 1), one(o + 2), one(o + 3));
        let packed = _mm256_packs_epi32(finish_pair(a, b), finish_pair(c, d));
        let bytes = _mm256_packus_epi16(packed, packed);
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        let rgb = _mm_shuffle_epi8(_mm256_castsi256_si128(bytes), compact);
        let mut out = [0u8; 16];
        // SAFETY: `out` holds 16 bytes; storeu needs no alignment.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), rgb) };
        dst[3 * o..3 * o + 12].copy_from_slice(&out[..12]);
        o += 4;
    }
    while o < outputs {
        let sums = finish_pair(one(o), _mm256_setzero_si256());
        let packed = _mm256_packs_epi32(sums, sums);
        let bytes = _mm256_packus_epi16(packed, packed);
        let rgb = (_mm256_cvtsi256_si32(bytes) as u32).to_le_bytes();
        dst[3 * o..3 * o + 3].copy_from_slice(&rgb[..3]);
        o += 1;
    }
}
