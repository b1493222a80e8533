//! Per-sample speed of the training data path on one thread, stage by stage: JPEG decode,
//! OpenCLIP's RandomResizedCrop to 224, BPE tokenization, and all three together, on
//! photo-like JPEGs of 256–512 px per side (`synthetic::photo`, quality 90, 4:2:0).
//!
//! Run: `cargo test -p clipfleet-dataloader --release --test sample_speed -- --ignored --nocapture`
//! (`CLIPFLEET_BENCH_N` sets the number of images, default 300).

use std::hint::black_box;
use std::time::Instant;

use clipfleet_dataloader::decode::{decode_rgb_with, JpegBackend, DEFAULT_MAX_PIXELS};
use clipfleet_dataloader::rng::Rng;
use clipfleet_dataloader::synthetic::photo::{encode_jpeg, photo_caption, render_photo};
use clipfleet_dataloader::tokenizer::{bpe, BpeTokenizer, Tokenizer};
use clipfleet_dataloader::transform::RandomResizedCrop;

/// Images per second of `f` over `n` items, best of 5 passes.
fn best_rate(n: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            n as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn per_sample_stages() {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    let n = std::env::var("CLIPFLEET_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(300usize);
    let mut rng = Rng::from_key(&[2026]);
    let mut pixels = 0u64;
    let mut bytes = 0usize;
    let samples: Vec<(Vec<u8>, String)> = (0..n)
        .map(|_| {
            let (w, h) = (256 + rng.below(257) as u32, 256 + rng.below(257) as u32);
            let jpeg = encode_jpeg(&render_photo(w, h, &mut rng), 90).expect("encode");
            pixels += u64::from(w * h);
            bytes += jpeg.len();
            (jpeg, photo_caption(&mut rng))
        })
        .collect();
    println!(
        "{n} JPEGs, 256-512 px per side (mean {:.0} px), {:.2} bits/pixel, one thread, best of 5",
        (pixels as f64 / n as f64).sqrt(),
        8.0 * bytes as f64 / pixels as f64
    );
    let rrc = RandomResizedCrop::openclip(224);
    let tokenizer = bpe::default_vocab_path().and_then(|p| BpeTokenizer::from_file(&p).ok());
    for (name, backend) in [("libjpeg-turbo", JpegBackend::TurboJpeg), ("zune-jpeg", JpegBackend::ZuneJpeg)] {
        let decode =
            |blob: &[u8]| decode_rgb_with(backend, blob, "jpg", Some(224), DEFAULT_MAX_PIXELS).expect("decode");
        let decoded: Vec<_> = samples.iter().map(|(blob, _)| decode(blob)).collect();
        let d = best_rate(n, || samples.iter().for_each(|(blob, _)| drop(black_box(decode(blob)))));
        let c = best_rate(n, || {
            for (i, img) in decoded.iter().enumerate() {
                black_box(rrc.apply(img, &mut Rng::from_key(&[i as u64])));
            }
        });
        let both = best_rate(n, || {
            for (i, (blob, _)) in samples.iter().enumerate() {
                black_box(rrc.apply(&decode(blob), &mut Rng::from_key(&[i as u64])));
            }
        });
        println!("{name:<14} decode {d:>6.0}/s   crop {c:>6.0}/s   decode+crop {both:>6.0}/s");
    }
    let Some(tok) = tokenizer else {
        println!("no BPE vocabulary found: tokenization not measured");
        return;
    };
    let t = best_rate(n, || samples.iter().for_each(|(_, text)| drop(black_box(tok.tokenize(text, 77)))));
    let full = best_rate(n, || {
        let mut batch = Vec::with_capacity(n * 224 * 224 * 3);
        let mut tokens = Vec::with_capacity(n * 77);
        for (i, (blob, text)) in samples.iter().enumerate() {
            let img =
                decode_rgb_with(JpegBackend::TurboJpeg, blob, "jpg", Some(224), DEFAULT_MAX_PIXELS).expect("decode");
            batch.extend_from_slice(rrc.apply(&img, &mut Rng::from_key(&[i as u64])).as_raw());
            tokens.extend(tok.tokenize(text, 77));
        }
        black_box((batch, tokens));
    });
    println!("BPE tokenize {t:>6.0}/s   whole sample (libjpeg-turbo, crop, tokenize, batch copy) {full:>6.0}/s");
}
