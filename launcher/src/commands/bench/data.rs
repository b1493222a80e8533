//! `clipfleet bench data`: images/s of the training data pipeline (read shards, decode JPEGs,
//! RandomResizedCrop to 224, tokenize, batch), beside OpenCLIP's pipeline on the same shards and
//! the same number of cores.
//!
//! Both sides are timed the same way: the clock starts once every worker has delivered its
//! first batch (here: the first batch, which all decode threads fill together; in the
//! reference: the first batch of each DataLoader worker), so that start-up is left out, and
//! stops at the last timed batch.

mod measure;
mod reference;
mod shards;

use anyhow::Context;
use clipfleet_dataloader::tokenizer::bpe::default_vocab_path;
use serde::Serialize;

use crate::cli::BenchDataArgs;
use measure::{time_loader, LoaderRun, Timing};

/// The data that was benchmarked.
#[derive(Debug, Serialize)]
struct DataSummary {
    /// `generated` (this command's photo-like shards) or `user` (`--train-data`).
    source: &'static str,
    /// The shard URLs.
    urls: String,
    /// Generated images (null for user shards).
    images: Option<u64>,
    /// Bytes of the generated shards.
    bytes: Option<u64>,
    /// Shards drawn with replacement.
    resampled: bool,
}

/// The JSON object `--json` prints.
#[derive(Debug, Serialize)]
struct BenchDataReport {
    /// `model name` of /proc/cpuinfo.
    cpu_model: String,
    /// Cores the run was allowed (and the reference's workers).
    cores: usize,
    /// Decode threads.
    threads: usize,
    batch_size: usize,
    data: DataSummary,
    /// The timed run of clipfleet's loader.
    clipfleet: Timing,
    images_per_second: f64,
    images_per_second_per_core: f64,
    /// OpenCLIP's figures from the same command, if it ran.
    reference: Option<serde_json::Value>,
    /// The reference's images/s per core.
    reference_images_per_second_per_core: Option<f64>,
    /// clipfleet ÷ reference images/s.
    ratio: Option<f64>,
}

pub(crate) fn run(args: BenchDataArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size >= 1 && args.batches >= 1, "--batch-size and --batches must be at least 1");
    let allowed = super::host::allowed_cpus();
    let threads = if args.threads == 0 { allowed.len().max(1) } else { args.threads };
    let cores = threads.min(allowed.len()).max(1);
    let tokenizer = match args.vocab.clone().or_else(default_vocab_path) {
        Some(path) => {
            clipfleet_dataloader::tokenizer::load(&path).with_context(|| format!("loading {}", path.display()))?
        }
        None => anyhow::bail!(
            "no tokenizer: pass --vocab (bpe_simple_vocab_16e6.txt.gz or a tokenizer.json), set CLIPFLEET_BPE_VOCAB, \
             or run scripts/setup.sh to fetch OpenCLIP's vocabulary into .cache/"
        ),
    };

    // The data: the user's shards, or generated ones (kept in --shards-dir, else a temporary folder).
    let mut temp = None;
    let (data, run) = match &args.train_data {
        Some(urls) => {
            let data = DataSummary {
                source: "user",
                urls: urls.clone(),
                images: None,
                bytes: None,
                resampled: args.dataset_resampled,
            };
            let num_samples = args.train_num_samples;
            (data, loader_run(&args, urls.clone(), args.dataset_resampled, num_samples, threads))
        }
        None => {
            let dir = match &args.shards_dir {
                Some(dir) => dir.clone(),
                None => temp.insert(shards::TempDir::new()?).0.clone(),
            };
            let generated = shards::prepare(&dir, args.images, args.seed, allowed.len())?;
            let data = DataSummary {
                source: "generated",
                urls: generated.urls.clone(),
                images: Some(generated.images),
                bytes: Some(generated.bytes),
                resampled: true,
            };
            // One epoch holds the warm-up and the timed batches.
            let num_samples = Some(((args.batches + 1) * args.batch_size) as u64);
            (data, loader_run(&args, generated.urls, true, num_samples, threads))
        }
    };

    if cores < allowed.len() {
        super::host::pin_to(&allowed[..cores]).context("pinning to --threads cores")?;
    }
    tracing::info!(threads, cores, urls = %run.urls, "timing the clipfleet loader");
    let timing = time_loader(&run, tokenizer)?;

    let with_reference = !args.no_reference && (args.train_data.is_none() || args.reference);
    let reference = if with_reference {
        let python = args.reference_python.clone().unwrap_or_else(super::reference::default_python);
        // The reference sizes its own epoch (it warms up one batch per worker) unless told.
        let reference_run = LoaderRun { num_samples: args.train_num_samples, ..run.clone() };
        tracing::info!(workers = threads, "timing the OpenCLIP reference");
        Some(reference::run_reference(&python, &reference_run)?)
    } else {
        None
    };
    drop(temp);

    let ips = timing.images_per_second;
    let reference_ips = reference.as_ref().and_then(|r| r["images_per_second"].as_f64());
    let report = BenchDataReport {
        cpu_model: clipfleet_trainer::bench::memory::cpu_model(),
        cores,
        threads,
        batch_size: args.batch_size,
        data,
        clipfleet: timing,
        images_per_second: ips,
        images_per_second_per_core: ips / cores as f64,
        reference_images_per_second_per_core: reference_ips.map(|r| r / cores as f64),
        ratio: reference_ips.map(|r| ips / r),
        reference,
    };
    if args.json {
        super::super::print_json(&report)
    } else {
        print_human(&report);
        Ok(())
    }
}

/// The run settings shared by both sides.
fn loader_run(
    args: &BenchDataArgs,
    urls: String,
    resampled: bool,
    num_samples: Option<u64>,
    threads: usize,
) -> LoaderRun {
    LoaderRun {
        urls,
        resampled,
        num_samples,
        threads,
        batch_size: args.batch_size,
        batches: args.batches,
        seed: args.seed,
    }
}

fn print_human(r: &BenchDataReport) {
    let data = match (r.data.images, r.data.bytes) {
        (Some(n), Some(bytes)) => format!(
            "{n} generated JPEGs ({}-{} px, q90, {:.1} MB)",
            shards::SIDES.0,
            shards::SIDES.1,
            bytes as f64 / 1e6
        ),
        _ => r.data.urls.clone(),
    };
    println!(
        "clipfleet bench data: {data}; decode + RandomResizedCrop(224) + tokenize + batch {}; {} thread(s) on {} core(s) of {}",
        r.batch_size, r.threads, r.cores, r.cpu_model
    );
    println!(
        "clipfleet loader: {:.1} images/s, {:.1} per core ({} images in {:.2} s)",
        r.images_per_second, r.images_per_second_per_core, r.clipfleet.images, r.clipfleet.seconds
    );
    if let (Some(reference), Some(per_core), Some(ratio)) =
        (&r.reference, r.reference_images_per_second_per_core, r.ratio)
    {
        println!(
            "reference ({}, {} workers): {:.1} images/s, {:.1} per core",
            reference["reference"].as_str().unwrap_or("open_clip"),
            reference["workers"].as_u64().unwrap_or(0),
            reference["images_per_second"].as_f64().unwrap_or(f64::NAN),
            per_core
        );
        println!("clipfleet / reference = {ratio:.2}x");
    }
}
