//! WebDataset reading and image decoding against the Python oracle.
//!
//! The fixtures in `tests/fixtures/wds/` and `expected.json` are written by the committed
//! `gen_wds_fixtures.py` with webdataset 1.0.2's TarWriter; `expected.json` lists what
//! webdataset's `tarfile_to_samples` yields for each shard (keys and member extensions, in
//! order) and Pillow 12.3.0's decoded size and channel means of the fixture images.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use clipfleet_dataloader::decode::{
    dct_scale_eighths, decode_rgb, decode_rgb_with, image_dimensions, JpegBackend, DEFAULT_MAX_PIXELS,
};
use clipfleet_dataloader::skip::SkipReason;
use clipfleet_dataloader::webdataset::{to_pair, CaptionSource, ShardError, TarSamples, WdsSample};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wds")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn read_shard(name: &str) -> (Vec<WdsSample>, Option<ShardError>) {
    let file = std::fs::File::open(fixtures().join(name)).expect("fixture");
    collect(TarSamples::new(file, name))
}

fn collect<R: Read>(mut it: TarSamples<R>) -> (Vec<WdsSample>, Option<ShardError>) {
    let mut samples = Vec::new();
    let mut error = None;
    for item in it.by_ref() {
        match item {
            Ok(s) => {
                assert!(error.is_none(), "a sample after the shard error");
                samples.push(s);
            }
            Err(e) => {
                assert!(error.is_none(), "two shard errors");
                error = Some(e);
            }
        }
    }
    assert!(it.next().is_none(), "iterator not fused");
    (samples, error)
}

/// (key, extensions) of each sample, as in expected.json.
fn layout(samples: &[WdsSample]) -> Vec<(String, Vec<String>)> {
    samples.iter().map(|s| (s.key.clone(), s.members.iter().map(|(e, _)| e.clone()).collect())).collect()
}

fn oracle(name: &str) -> Vec<(String, Vec<String>)> {
    let exp = expected();
    let list = exp["shards"][name].as_array().expect("shard in expected.json");
    list.iter()
        .map(|s| {
            let exts = s["exts"].as_array().expect("exts").iter().map(|e| e.as_str().expect("str").to_string());
            (s["key"].as_str().expect("key").to_string(), exts.collect())
        })
        .collect()
}

#[test]
fn grouping_matches_python_webdataset() {
    for name in ["clean.tar", "json_caption.tar", "edge.tar", "gnu.tar", "ustar.tar"] {
        let (samples, error) = read_shard(name);
        assert!(error.is_none(), "{name}: {error:?}");
        assert_eq!(layout(&samples), oracle(name), "{name}");
    }
}

#[test]
fn truncated_shard_keeps_the_complete_samples_then_reports() {
    // Cut inside 000002.webp. Python also yields 000002 without its webp; we drop the
    // sample that was being read, as it may lack members.
    let (samples, error) = read_shard("truncated.tar");
    let mut want = oracle("truncated.tar");
    assert_eq!(want.pop().map(|(k, _)| k).as_deref(), Some("000002"));
    assert_eq!(layout(&samples), want);
    let error = error.expect("a shard error");
    assert_eq!(error.reason, SkipReason::TruncatedShard);
    assert_eq!(error.shard, "truncated.tar");
    let (clean, _) = read_shard("clean.tar");
    assert_eq!(samples[..], clean[..2], "the samples before the cut are intact");
}

#[test]
fn garbage_and_empty_streams_are_truncated_shards() {
    let (samples, error) = read_shard("garbage.tar");
    assert!(samples.is_empty() && oracle("garbage.tar").is_empty());
    assert_eq!(error.map(|e| e.reason), Some(SkipReason::TruncatedShard));
    let (samples, error) = collect(TarSamples::new(&b""[..], "empty"));
    assert!(samples.is_empty());
    assert_eq!(error.map(|e| e.reason), Some(SkipReason::TruncatedShard));
}

#[test]
fn cut_at_a_member_boundary_is_caught() {
    // Python's tarfile stops silently here; the missing end-of-archive block gives it away.
    let bytes = std::fs::read(fixtures().join("clean.tar")).expect("fixture");
    let tar = tar_offsets(&bytes);
    let (cut, _) = tar.iter().find(|(_, n)| n == "000002.cls").expect("member").clone();
    // 000000 is complete (000001 followed it); 000001 might not be, and is dropped.
    let (samples, error) = collect(TarSamples::new(&bytes[..cut as usize], "cut"));
    assert_eq!(layout(&samples), oracle("clean.tar")[..1]);
    assert_eq!(error.map(|e| e.reason), Some(SkipReason::TruncatedShard));
}

/// (header offset, name) of each member, from the tar crate.
fn tar_offsets(bytes: &[u8]) -> Vec<(u64, String)> {
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().expect("tar");
    entries
        .map(|e| {
            let e = e.expect("entry");
            (e.raw_header_position(), e.path().expect("path").to_string_lossy().into_owned())
        })
        .collect()
}

/// A reader that fails with a connection reset after `left` bytes.
struct FailingReader<'a> {
    data: &'a [u8],
    left: usize,
}

impl Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn reader_failure_is_an_unreadable_shard() {
    let bytes = std::fs::read(fixtures().join("clean.tar")).expect("fixture");
    let reader = FailingReader { data: &bytes, left: 9000 };
    let (_, error) = collect(TarSamples::new(reader, "s3://b/x.tar"));
    let error = error.expect("error");
    assert_eq!(error.reason, SkipReason::UnreadableShard);
    assert!(error.to_string().contains("s3://b/x.tar"), "{error}");
}

#[test]
fn oversized_members_are_skipped_unread_and_the_stream_stays_in_step() {
    let file = std::fs::File::open(fixtures().join("clean.tar")).expect("fixture");
    let (samples, error) = collect(TarSamples::with_max_member_bytes(file, "clean.tar", 1000));
    assert!(error.is_none());
    assert_eq!(samples.len(), 5);
    let first = &samples[0];
    assert!(first.oversized.contains(&"jpg".to_string()), "{:?}", first.oversized);
    assert_eq!(first.get("txt"), Some(&b"a red fox"[..]));
    assert_eq!(to_pair(first.clone(), "clean.tar", &CaptionSource::Txt), Err(SkipReason::OversizedImage));
    assert_eq!(samples[4].get("txt"), Some("caf\u{e9} \u{2615} unicode".as_bytes()));
}

#[test]
fn pairs_from_the_clean_shard() {
    let (samples, _) = read_shard("clean.tar");
    let pairs: Vec<_> =
        samples.into_iter().map(|s| to_pair(s, "clean.tar", &CaptionSource::Txt).expect("valid pair")).collect();
    let got: Vec<_> = pairs.iter().map(|p| (p.key.as_str(), p.image_format.as_str(), p.label)).collect();
    assert_eq!(
        got,
        [
            ("000000", "jpg", Some(3)),
            ("000001", "png", Some(7)),
            ("000002", "webp", Some(-1)),
            ("000003", "jpeg", None),
            ("000004", "jpg", None)
        ]
    );
    assert_eq!(pairs[0].caption, "a red fox");
    assert_eq!(pairs[4].caption, "caf\u{e9} \u{2615} unicode");
    assert_eq!(pairs[0].shard, "clean.tar");
    let json = CaptionSource::Json { field: "caption".into() };
    let (samples, _) = read_shard("clean.tar");
    let captions: Vec<_> = samples.into_iter().map(|s| to_pair(s, "c", &json).map(|p| p.caption)).collect();
    assert_eq!(captions[1], Ok("json caption 1".to_string()));
    assert_eq!(captions[3], Err(SkipReason::MissingCaption), "000003 has no json");
}

#[test]
fn captions_from_a_json_field() {
    let json = CaptionSource::Json { field: "caption".into() };
    let (samples, _) = read_shard("json_caption.tar");
    let got: Vec<_> = samples.iter().map(|s| to_pair(s.clone(), "j", &json).map(|p| p.caption)).collect();
    assert_eq!(
        got,
        [
            Ok("caption 0".to_string()),
            Ok("caption 1".to_string()),
            Ok("caption 2".to_string()),
            Err(SkipReason::MissingCaption),
            Err(SkipReason::MissingCaption)
        ]
    );
    assert!(samples.into_iter().all(|s| to_pair(s, "j", &CaptionSource::Txt) == Err(SkipReason::MissingCaption)));
}

#[test]
fn skip_reasons_for_the_edge_cases() {
    let (samples, _) = read_shard("edge.tar");
    let outcome = |key: &str| {
        let s = samples.iter().find(|s| s.key == key).expect(key).clone();
        to_pair(s, "edge.tar", &CaptionSource::Txt)
            .and_then(|p| decode_rgb(&p.image, &p.image_format, Some(224), DEFAULT_MAX_PIXELS).map(|_| p.caption))
    };
    assert_eq!(outcome("e0"), Ok("fine".to_string()));
    assert_eq!(outcome("e1"), Err(SkipReason::CorruptImage), "truncated JPEG");
    assert_eq!(outcome("e2"), Err(SkipReason::CorruptImage), "not an image");
    assert_eq!(outcome("e3"), Err(SkipReason::MissingCaption));
    assert_eq!(outcome("e4"), Err(SkipReason::CaptionNotUtf8));
    assert_eq!(outcome("e5"), Err(SkipReason::MissingImage));
    assert_eq!(outcome("e6"), Ok("uppercase extensions".to_string()));
    assert_eq!(outcome("data.v1/e7"), Ok("dots in the directory".to_string()));
    assert_eq!(outcome("e9"), Ok("first caption".to_string()), "the duplicate txt is dropped");
    assert_eq!(outcome("dir/"), Err(SkipReason::MissingImage));
    let e10: Vec<_> = samples.iter().filter(|s| s.key == "e10").cloned().collect();
    assert_eq!(e10.len(), 2, "a key that comes back starts a new sample");
}

fn image_stats(img: &image::RgbImage) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    let n = f64::from(img.width() * img.height());
    sum.map(|s| s / n)
}

/// Decodes each fixture image and compares size and channel means with Pillow's.
#[test]
fn decoding_matches_pillow() {
    let exp = expected();
    let (samples, _) = read_shard("clean.tar");
    let mut images: Vec<(String, Vec<u8>, String)> = samples
        .into_iter()
        .map(|s| {
            let p = to_pair(s, "clean.tar", &CaptionSource::Txt).expect("pair");
            (format!("clean.tar/{}.{}", p.key, p.image_format), p.image, p.image_format)
        })
        .filter(|(name, _, _)| exp["images"].get(name).is_some())
        .collect();
    images.push(("cmyk.jpg".into(), std::fs::read(fixtures().join("cmyk.jpg")).expect("cmyk"), "jpg".into()));
    assert_eq!(images.len(), 5);
    for (name, bytes, format) in &images {
        let want = &exp["images"][name];
        let size = (want["width"].as_u64().expect("w") as u32, want["height"].as_u64().expect("h") as u32);
        assert_eq!(image_dimensions(bytes, format), Ok(size), "{name}");
        for backend in [JpegBackend::TurboJpeg, JpegBackend::ZuneJpeg] {
            let img = decode_rgb_with(backend, bytes, format, Some(224), DEFAULT_MAX_PIXELS).expect(name);
            // Images under twice the target are decoded at full size.
            assert_eq!(img.dimensions(), size, "{name}");
            let mean = image_stats(&img);
            for c in 0..3 {
                let pillow = want["mean"][c].as_f64().expect("mean");
                // libjpeg-turbo is Pillow's decoder: equal but for the CMYK path (zune).
                let tol = if backend == JpegBackend::TurboJpeg && !name.contains("cmyk") { 0.01 } else { 1.5 };
                assert!((mean[c] - pillow).abs() <= tol, "{name} {backend:?} channel {c}: {} vs {pillow}", mean[c]);
            }
        }
    }
}

/// A baseline JPEG whose header claims `w`×`h`, with minimal tables and 8 bytes of scan
/// data: enough for a header parser, far too little for the pixels.
fn jpeg_header_only(w: u16, h: u16) -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    j.extend_from_slice(&[0xFF, 0xDB, 0, 67, 0]);
    j.extend_from_slice(&[1u8; 64]);
    j.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8]);
    j.extend_from_slice(&h.to_be_bytes());
    j.extend_from_slice(&w.to_be_bytes());
    j.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0]);
    // One DC and one AC Huffman table, each with the single 1-bit code `0` for symbol 0.
    j.extend_from_slice(&[0xFF, 0xC4, 0, 38]);
    for class in [0x00u8, 0x10] {
        j.push(class);
        j.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    j.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0, 3, 0, 0, 63, 0]);
    j.extend_from_slice(&[0u8; 8]);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

#[test]
fn pixel_limit_refuses_before_decoding() {
    // 60000 x 60000 = 3.6 G pixels: a decode attempt would be corrupt (no scan data) or
    // allocate 10 GiB; the header check refuses it first.
    let bomb = jpeg_header_only(60000, 60000);
    assert_eq!(image_dimensions(&bomb, "jpg"), Ok((60000, 60000)));
    for backend in [JpegBackend::TurboJpeg, JpegBackend::ZuneJpeg] {
        assert_eq!(decode_rgb_with(backend, &bomb, "jpg", None, DEFAULT_MAX_PIXELS), Err(SkipReason::OversizedImage));
    }
    // The same stub at 64 x 64 decodes, to flat grey (Pillow 12.3 gives (128, 128, 128)
    // too): only the pixel count refused the large one.
    let small = decode_rgb(&jpeg_header_only(64, 64), "jpg", None, DEFAULT_MAX_PIXELS).expect("small stub");
    assert!(small.dimensions() == (64, 64) && small.pixels().all(|p| p.0 == [128, 128, 128]));
    // A PNG whose IHDR claims 100000 x 100000 and has no image data.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    let ihdr = [&100_000u32.to_be_bytes()[..], &100_000u32.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&[&b"IHDR"[..], &ihdr].concat()).to_be_bytes());
    assert_eq!(decode_rgb(&png, "png", None, DEFAULT_MAX_PIXELS), Err(SkipReason::OversizedImage));
    // The fixture images pass with a limit equal to their size, not one below.
    let (samples, _) = read_shard("clean.tar");
    let png = samples[1].get("png").expect("png");
    assert!(decode_rgb(png, "png", None, 40 * 30).is_ok());
    assert_eq!(decode_rgb(png, "png", None, 40 * 30 - 1), Err(SkipReason::OversizedImage));
    let jpg = samples[0].get("jpg").expect("jpg");
    assert_eq!(decode_rgb(jpg, "jpg", None, 48 * 32 - 1), Err(SkipReason::OversizedImage));
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn encode_jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(img).expect("encode");
    out
}

#[test]
fn dct_scaling_keeps_the_short_side_at_or_above_the_target() {
    let img =
        image::RgbImage::from_fn(1024, 768, |x, y| image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 8) as u8]));
    let jpg = encode_jpeg(&img);
    let full = decode_rgb(&jpg, "jpg", None, DEFAULT_MAX_PIXELS).expect("decode");
    assert_eq!(full.dimensions(), (1024, 768));
    for (target, want) in [(224, (512, 384)), (100, (256, 192)), (500, (1024, 768)), (95, (128, 96)), (97, (256, 192))]
    {
        let out = decode_rgb(&jpg, "jpg", Some(target), DEFAULT_MAX_PIXELS).expect("decode");
        assert_eq!(out.dimensions(), want, "target {target}");
        assert!(out.width().min(out.height()) >= target);
        assert_eq!(8 * want.0 / 1024, dct_scale_eighths(1024, 768, Some(target)));
    }
    // The scaled decode is the image, smaller: the centre pixel agrees with the full decode.
    let half = decode_rgb(&jpg, "jpg", Some(224), DEFAULT_MAX_PIXELS).expect("decode");
    let (a, b) = (full.get_pixel(512, 384), half.get_pixel(256, 192));
    assert!((0..3).all(|c| a[c].abs_diff(b[c]) <= 6), "{a:?} vs {b:?}");
}

/// The Python of the workspace's virtual environment (or `CLIPFLEET_PYTHON`).
fn python() -> PathBuf {
    std::env::var_os("CLIPFLEET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

fn run_python(args: &[&str]) -> String {
    let script = fixtures().join("bench_pillow_decode.py");
    let out = std::process::Command::new(python()).arg(&script).args(args).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Single-threaded decode + OpenCLIP's RandomResizedCrop to 224, against Pillow +
/// torchvision on the same JPEGs, in one run. `CLIPFLEET_BENCH_N` sets the images per
/// size (default 200). Run:
/// `cargo test -p clipfleet-dataloader --release --test webdataset -- --ignored --nocapture decode_throughput`
#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn decode_throughput() {
    use clipfleet_dataloader::rng::Rng;
    use clipfleet_dataloader::transform::RandomResizedCrop;

    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    let n = std::env::var("CLIPFLEET_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_str().expect("utf-8 path");
    run_python(&["generate", root, &n.to_string()]);
    let pillow: Value = serde_json::from_str(run_python(&["bench", root]).trim()).expect("bench JSON");
    let rrc = RandomResizedCrop::openclip(224);
    let configs = [
        ("libjpeg-turbo 3, DCT scaling", JpegBackend::TurboJpeg, Some(224)),
        ("libjpeg-turbo 3, full size", JpegBackend::TurboJpeg, None),
        ("zune-jpeg 0.4", JpegBackend::ZuneJpeg, None),
    ];
    println!("decode + RandomResizedCrop(224), one thread, {n} JPEGs (q90) per size, best of 3 passes");
    println!("{:<8} {:<32} {:>10} {:>10} {:>12}", "size", "decoder", "images/s", "vs Pillow", "decode only");
    for (set, dims) in [("small", "380x256"), ("large", "1024x768")] {
        let folder = dir.path().join(set);
        let mut files: Vec<_> = std::fs::read_dir(&folder).expect("dir").map(|e| e.expect("entry").path()).collect();
        files.sort();
        let blobs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("jpeg")).collect();
        let reference = pillow[set].as_f64().expect("figure");
        println!("{:<8} {:<32} {:>10.0} {:>10}", dims, "Pillow 12.3 + torchvision", reference, "1.00x");
        for (name, backend, target) in configs {
            let mut best = 0f64;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                for (i, blob) in blobs.iter().enumerate() {
                    let img = decode_rgb_with(backend, blob, "jpg", target, DEFAULT_MAX_PIXELS).expect("decode");
                    let out = rrc.apply(&img, &mut Rng::from_key(&[i as u64]));
                    assert_eq!(std::hint::black_box(out).dimensions(), (224, 224));
                }
                best = best.max(blobs.len() as f64 / start.elapsed().as_secs_f64());
            }
            let mut decode_only = 0f64;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                for blob in &blobs {
                    let img = decode_rgb_with(backend, blob, "jpg", target, DEFAULT_MAX_PIXELS).expect("decode");
                    std::hint::black_box(img);
                }
                decode_only = decode_only.max(blobs.len() as f64 / start.elapsed().as_secs_f64());
            }
            println!("{:<8} {:<32} {:>10.0} {:>9.2}x {:>12.0}", dims, name, best, best / reference, decode_only);
        }
    }
}

/// A tar of `(path, bytes)` members, written with the `tar` crate's raw headers (so that any
/// path, `..` and absolute ones included, goes in as given).
fn raw_tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, data) in members {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_member_paths_and_huge_captions_are_counted_skips() {
    let (samples, _) = read_shard("clean.tar");
    let jpg = samples[0].get("jpg").expect("jpg").to_vec();
    let huge = vec![b'a'; clipfleet_dataloader::skip::MAX_CAPTION_BYTES + 1];
    let bytes = raw_tar(&[
        ("../../etc/evil.jpg", jpg.clone()),
        ("../../etc/evil.txt", b"a caption".to_vec()),
        ("/abs/x.jpg", jpg.clone()),
        ("/abs/x.txt", b"a caption".to_vec()),
        ("ok/a.jpg", jpg.clone()),
        ("ok/a.txt", b"a fine caption".to_vec()),
        ("big.jpg", jpg.clone()),
        ("big.txt", huge.clone()),
        ("bigjson.jpg", jpg),
        ("bigjson.json", [&b"{\"caption\": \""[..], &huge, b"\"}"].concat()),
    ]);
    let (samples, error) = collect(TarSamples::new(io::Cursor::new(bytes), "hostile.tar"));
    assert!(error.is_none(), "{error:?}");
    let pairs: Vec<_> =
        samples.iter().map(|s| (s.key.clone(), to_pair(s.clone(), "hostile.tar", &CaptionSource::Txt))).collect();
    assert_eq!(pairs.len(), 5);
    assert_eq!(pairs[0].1, Err(SkipReason::UnsafePath), "{}", pairs[0].0);
    assert_eq!(pairs[1].1, Err(SkipReason::UnsafePath), "{}", pairs[1].0);
    assert_eq!(pairs[2].1.as_ref().map(|p| p.caption.as_str()), Ok("a fine caption"));
    assert_eq!(pairs[3].1, Err(SkipReason::OversizedCaption));
    let json = CaptionSource::Json { field: "caption".into() };
    assert_eq!(to_pair(samples[4].clone(), "hostile.tar", &json), Err(SkipReason::OversizedCaption));
}
