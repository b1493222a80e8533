//! Tests of the synthetic dataset.

use super::*;
use crate::tokenizer::word::WordTokenizer;
use crate::tokenizer::Tokenizer;

#[test]
fn class_names_follow_label_order() {
    let names = class_names();
    assert_eq!(names.len(), NUM_CLASSES);
    assert_eq!(names[0], "red circle");
    assert_eq!(names[1], "red square");
    assert_eq!(names[5], "green circle");
    assert_eq!(names[29], "orange star");
}

#[test]
fn samples_are_deterministic() {
    let ds = SyntheticDataset::new(64, 7);
    assert_eq!(ds.image_size(), 64);
    for index in [0, 1, 12345] {
        assert_eq!(ds.sample(Split::Train, index, None), ds.sample(Split::Train, index, None));
        assert_eq!(ds.sample(Split::Val, index, Some(3)), ds.sample(Split::Val, index, Some(3)));
    }
    let other_seed = SyntheticDataset::new(64, 8);
    assert_ne!(ds.sample(Split::Train, 0, None), other_seed.sample(Split::Train, 0, None));
}

#[test]
fn augmentation_depends_on_epoch_only_in_the_image() {
    let ds = SyntheticDataset::new(48, 1);
    let plain = ds.sample(Split::Train, 5, None);
    let e0 = ds.sample(Split::Train, 5, Some(0));
    assert_eq!(e0.image.dimensions(), (48, 48));
    assert_eq!((e0.label, &e0.caption), (plain.label, &plain.caption));
    let differs = (1..10).any(|epoch| ds.sample(Split::Train, 5, Some(epoch)).image != e0.image);
    assert!(differs, "augmentation ignores the epoch");
    let cropped = (0..10).any(|epoch| ds.sample(Split::Train, 5, Some(epoch)).image != plain.image);
    assert!(cropped, "augmentation did nothing");
}

#[test]
fn labels_are_in_range_and_roughly_balanced() {
    let ds = SyntheticDataset::new(8, 0);
    let mut counts = [0u32; NUM_CLASSES];
    for index in 0..3000 {
        let s = ds.sample(Split::Train, index, None);
        counts[s.label as usize] += 1;
    }
    for (label, c) in counts.iter().enumerate() {
        assert!((60..=140).contains(c), "class {label}: {c} of 3000");
    }
}

#[test]
fn train_and_val_differ() {
    let ds = SyntheticDataset::new(32, 3);
    for index in 0..50 {
        assert_ne!(ds.sample(Split::Train, index, None), ds.sample(Split::Val, index, None));
    }
}

#[test]
fn every_caption_and_prompt_is_in_vocabulary() {
    let tok = WordTokenizer::new();
    let ds = SyntheticDataset::new(8, 11);
    for index in 0..2000 {
        for split in [Split::Train, Split::Val] {
            let caption = ds.sample(split, index, None).caption;
            assert_eq!(tok.unknown_count(&caption), 0, "{caption:?}");
            assert!(tok.tokenize(&caption, 32).contains(&i64::from(tok.eot_id())));
        }
    }
    for name in class_names() {
        for template in zero_shot_templates() {
            assert!(template.contains("{}"));
            let prompt = template.replace("{}", &name);
            assert_eq!(tok.unknown_count(&prompt), 0, "{prompt:?}");
        }
    }
}

#[test]
fn captions_name_the_class() {
    let ds = SyntheticDataset::new(8, 2);
    let names = class_names();
    for index in 0..200 {
        let s = ds.sample(Split::Train, index, None);
        assert!(
            s.caption.contains(&names[s.label as usize]) || {
                // "a photo of a red circle, small, ..." keeps colour and shape adjacent too.
                let (c, h) = names[s.label as usize].split_once(' ').unwrap_or_default();
                s.caption.contains(c) && s.caption.contains(h)
            }
        );
    }
}

#[test]
fn batch_is_nhwc_and_matches_samples() {
    let ds = SyntheticDataset::new(16, 4);
    let (batch, captions, labels) = ds.batch(Split::Val, &[3, 1, 4], Some(2));
    assert_eq!((batch.batch, batch.height, batch.width), (3, 16, 16));
    assert_eq!(batch.data.len(), 3 * 16 * 16 * 3);
    let s = ds.sample(Split::Val, 1, Some(2));
    assert!(batch.image(1) == Some(s.image));
    assert_eq!((captions[1].as_str(), labels[1]), (s.caption.as_str(), s.label));
}

#[test]
fn writes_a_png_grid() {
    let ds = SyntheticDataset::new(64, 0);
    let mut grid = RgbImage::new(64 * 8, 64 * 4);
    for index in 0..32u32 {
        let s = ds.sample(Split::Train, u64::from(index), None);
        image::imageops::replace(&mut grid, &s.image, i64::from(index % 8 * 64), i64::from(index / 8 * 64));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("grid.png");
    grid.save(&path).expect("write png");
    let back = image::open(&path).expect("read png").to_rgb8();
    assert!(back == grid);
    if let Ok(out) = std::env::var("CLIPFLEET_SYNTHETIC_GRID") {
        grid.save(out).expect("write requested grid");
    }
}

/// Run with `cargo test -p clipfleet-dataloader --release -- --ignored render_speed --nocapture`.
#[test]
#[ignore = "timing; run in release mode"]
fn render_speed() {
    let ds = SyntheticDataset::new(64, 0);
    let indices: Vec<u64> = (0..128).collect();
    let _ = ds.batch(Split::Train, &indices, None);
    let runs = 20;
    let start = std::time::Instant::now();
    for run in 0..runs {
        let idx: Vec<u64> = indices.iter().map(|i| i + run * 128).collect();
        std::hint::black_box(ds.batch(Split::Train, &idx, None));
    }
    let plain = start.elapsed() / runs as u32;
    let start = std::time::Instant::now();
    for run in 0..runs {
        let idx: Vec<u64> = indices.iter().map(|i| i + run * 128).collect();
        std::hint::black_box(ds.batch(Split::Train, &idx, Some(run)));
    }
    let augmented = start.elapsed() / runs as u32;
    println!("128 images of 64x64: {plain:?} rendered, {augmented:?} rendered + RandomResizedCrop");
    if !cfg!(debug_assertions) {
        assert!(plain.as_millis() < 50, "{plain:?}");
    }
}
