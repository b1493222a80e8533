//! `clipfleet bench loss`: time and memory of the blockwise contrastive loss and its feature
//! gradients (issue 4) for one global batch at several local batch sizes, beside the memory
//! the un-blocked b×N and N×N forms would hold.
//!
//! The gather is simulated: the N×d gathered features are already on the device, and the
//! local rows are the first b of them (every rank costs the same). Each row of the table runs
//! in a fresh child process (this binary, with one `--local-batch`), so that its peak resident
//! memory on the CPU is its own.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use clipfleet_trainer::bench::PeakMemory;
use clipfleet_trainer::device::resolve_device;
use clipfleet_trainer::loss::filip::{filip_loss_blockwise, FilipLayout, FILIP_TILE_BYTES};
use clipfleet_trainer::loss::{
    clip_loss, clip_loss_blockwise, siglip_loss, siglip_loss_blockwise, BlockSizes, ContrastiveBatch, LossGradients,
    SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE,
};
use clipfleet_trainer::model::l2_normalize;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Bytes per fp32 value.
const F32: i64 = 4;

/// Which loss to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BenchLossKind {
    /// CLIP InfoNCE, local form (both directions).
    Clip,
    /// SigLIP sigmoid loss, all-gather form.
    Siglip,
    /// FILIP token-wise loss over `--image-tokens` × `--text-tokens` token features.
    Filip,
}

impl BenchLossKind {
    fn name(self) -> &'static str {
        match self {
            BenchLossKind::Clip => "clip",
            BenchLossKind::Siglip => "siglip",
            BenchLossKind::Filip => "filip",
        }
    }
}

/// `clipfleet bench loss`.
#[derive(Debug, Args)]
pub(crate) struct BenchLossArgs {
    /// N, the global batch: rows of the simulated gathered image and text features.
    #[arg(long, default_value_t = 32_768, value_name = "N")]
    pub(crate) global_batch: i64,
    /// d, the embedding width.
    #[arg(long, default_value_t = 512)]
    pub(crate) dim: i64,
    /// Local batch sizes b (one row each; comma-separated); b = N is the single-process form.
    /// Default: 256,1024,N on CUDA; 256,1024 on the CPU, where b = N = 32,768 takes ~2–3 min on
    /// 2 cores (ask for it with `--local-batch 256,1024,32768`).
    #[arg(long, value_delimiter = ',', value_name = "B,...")]
    pub(crate) local_batch: Vec<i64>,
    /// Local rows per block of the loss (peak extra memory ~3 × rows × cols × 4 bytes).
    #[arg(long, default_value_t = 1024, value_name = "ROWS")]
    pub(crate) block_size: i64,
    /// Gathered columns per tile; default all N (one pass). Fewer bounds memory by rows × cols
    /// and costs one more matmul per tile for the cross-entropy.
    #[arg(long, value_name = "COLS")]
    pub(crate) block_cols: Option<i64>,
    /// The loss.
    #[arg(long, value_enum, default_value_t = BenchLossKind::Clip)]
    pub(crate) loss: BenchLossKind,
    /// FILIP: image tokens per sample (49: ViT-B/32's 7×7 patches).
    #[arg(long, default_value_t = 49, value_name = "L")]
    pub(crate) image_tokens: i64,
    /// FILIP: text positions per sample (77: OpenCLIP's context); a quarter to all of them
    /// are real tokens, the rest padding.
    #[arg(long, default_value_t = 77, value_name = "L")]
    pub(crate) text_tokens: i64,
    /// Timed runs per row (the figure is their mean), after one untimed run of a single block.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeats: u32,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// libtorch intra-op threads (0: default).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: i32,
    /// Also measure the un-blocked local form under autograd (the b×N logits held whole, as
    /// `clip_loss` + `backward`), in its own child process, for each b whose estimate fits
    /// `--unblocked-max-gib`.
    #[arg(long)]
    pub(crate) unblocked: bool,
    /// The largest estimated memory of the un-blocked form that `--unblocked` runs, GiB.
    #[arg(long, default_value_t = 4.0, value_name = "GIB")]
    pub(crate) unblocked_max_gib: f64,
    /// Which form this process measures (set on the child processes).
    #[arg(long, value_enum, default_value_t = Form::Blockwise, hide = true)]
    pub(crate) form: Form,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The form of the loss a process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Form {
    /// `clip_loss_blockwise` / `siglip_loss_blockwise`.
    Blockwise,
    /// `clip_loss` / `siglip_loss` with autograd: the b×N logits whole.
    Unblocked,
}

/// One local batch size.
#[derive(Debug, Serialize, Deserialize)]
struct LossRow {
    /// b.
    local_batch: i64,
    /// N / b: the ranks this b stands for.
    world_size: f64,
    /// Mean wall time of loss + feature gradients, seconds.
    seconds: f64,
    /// Matmul FLOPs of the row (2·b·N·d per matmul), ÷ seconds, in GFLOP/s.
    gflops_per_second: f64,
    /// Peak memory above what the process held before the loss ran (features included
    /// there): peak resident set on the CPU; null on CUDA (tch binds no allocator statistics).
    peak_extra_bytes: Option<u64>,
    /// One b×N fp32 logit matrix.
    bxn_matrix_bytes: i64,
    /// Estimate for the un-blocked local form under autograd: two b×N logit matrices plus the
    /// two b×N log-softmax outputs saved for the backward pass (CLIP; SigLIP: logits, labels
    /// and the log-sigmoid input), before the backward's transient b×N gradients; plus the same
    /// two N×d feature gradients.
    unblocked_bytes: i64,
    /// One tile, `min(rows, b) × min(cols, N)` fp32.
    tile_bytes: i64,
    /// The two N×d fp32 feature gradients the blockwise loss returns.
    feature_grad_bytes: i64,
    /// With `--unblocked`: wall time of the un-blocked autograd form (loss + backward to the
    /// features), seconds; null where not run.
    #[serde(default)]
    unblocked_seconds: Option<f64>,
    /// With `--unblocked`: its measured peak memory, as `peak_extra_bytes`.
    #[serde(default)]
    unblocked_peak_extra_bytes: Option<u64>,
    /// The loss value (a sanity check: random features at s = 100 give ~ln N + s²/(2d)).
    loss: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LossReport {
    loss: BenchLossKind,
    global_batch: i64,
    dim: i64,
    block_rows: i64,
    /// Null: all N columns.
    block_cols: Option<i64>,
    device: String,
    dtype: String,
    threads: i32,
    cpu_model: String,
    /// One N×N fp32 matrix: what the global form holds per logit matrix.
    nxn_matrix_bytes: i64,
    /// FILIP: image tokens and text positions per sample.
    #[serde(default)]
    tokens: Option<(i64, i64)>,
    rows: Vec<LossRow>,
}

/// `--local-batch`, or the default for the device: 256, 1,024 (and N on CUDA), at most N.
fn local_batches(args: &BenchLossArgs, device: Device) -> Vec<i64> {
    if !args.local_batch.is_empty() {
        return args.local_batch.clone();
    }
    let n = args.global_batch;
    let mut sizes: Vec<i64> = [256, 1024].into_iter().filter(|&b| b < n).collect();
    if device != Device::Cpu || sizes.is_empty() {
        sizes.push(n);
    }
    sizes
}

fn validate(args: &BenchLossArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.global_batch >= 1 && args.dim >= 1, "--global-batch and --dim must be >= 1");
    for &b in &args.local_batch {
        anyhow::ensure!(
            (1..=args.global_batch).contains(&b),
            "--local-batch {b} must be between 1 and --global-batch {}",
            args.global_batch
        );
    }
    anyhow::ensure!(args.block_size >= 1, "--block-size must be >= 1");
    anyhow::ensure!(args.block_cols.is_none_or(|c| c >= 1), "--block-cols must be >= 1");
    anyhow::ensure!(args.repeats >= 1, "--repeats must be >= 1");
    anyhow::ensure!(args.unblocked_max_gib >= 0.0, "--unblocked-max-gib must be >= 0");
    anyhow::ensure!(args.image_tokens >= 1 && args.text_tokens >= 1, "--image-tokens and --text-tokens must be >= 1");
    anyhow::ensure!(
        !(args.unblocked && args.loss == BenchLossKind::Filip),
        "--unblocked is for --loss clip or siglip: FILIP's un-blocked b × N × L_i × L_t similarity is what its blocks avoid"
    );
    Ok(())
}

fn blocks(args: &BenchLossArgs) -> BlockSizes {
    BlockSizes::tiles(args.block_size, args.block_cols.unwrap_or(i64::MAX))
}

/// Runs one local batch size in this process.
fn measure(args: &BenchLossArgs, b: i64, device: Device) -> anyhow::Result<LossRow> {
    if args.loss == BenchLossKind::Filip {
        return measure_filip(args, b, device);
    }
    let (n, d) = (args.global_batch, args.dim);
    tch::manual_seed(0);
    // The simulated gather: N×d features already on the device.
    let image = l2_normalize(&Tensor::randn([n, d], (Kind::Float, device)));
    let text = l2_normalize(&Tensor::randn([n, d], (Kind::Float, device)));
    let (scale, bias) = match args.loss {
        BenchLossKind::Clip => (Tensor::from(100.0f32), None),
        BenchLossKind::Siglip => {
            (Tensor::from(SIGLIP_INIT_LOGIT_SCALE.exp() as f32), Some(Tensor::from(SIGLIP_INIT_LOGIT_BIAS as f32)))
        }
        BenchLossKind::Filip => unreachable!("measured by measure_filip"),
    };
    let (scale, bias) = (scale.to_device(device), bias.map(|t| t.to_device(device)));
    let run = |rows: i64| -> anyhow::Result<LossGradients> {
        let (il, tl) = (image.narrow(0, 0, rows), text.narrow(0, 0, rows));
        let batch =
            ContrastiveBatch { image_local: &il, text_local: &tl, image_all: &image, text_all: &text, row_offset: 0 };
        Ok(match &bias {
            None => clip_loss_blockwise(&batch, &scale, blocks(args))?,
            Some(bias) => siglip_loss_blockwise(&batch, &scale, bias, blocks(args))?,
        })
    };
    let run_unblocked = |rows: i64| -> f64 {
        let (ia, ta) = (image.detach().set_requires_grad(true), text.detach().set_requires_grad(true));
        let (il, tl) = (ia.narrow(0, 0, rows), ta.narrow(0, 0, rows));
        let batch =
            ContrastiveBatch { image_local: &il, text_local: &tl, image_all: &ia, text_all: &ta, row_offset: 0 };
        let s = scale.detach().set_requires_grad(true);
        let loss = match &bias {
            None => clip_loss(&batch, &s),
            Some(bias) => siglip_loss(&batch, &s, &bias.detach().set_requires_grad(true)),
        };
        loss.backward();
        let _ = (ia.grad(), ta.grad());
        loss.double_value(&[])
    };
    let run_form = |rows: i64| -> anyhow::Result<f64> {
        Ok(match args.form {
            Form::Blockwise => run(rows)?.loss.double_value(&[]),
            Form::Unblocked => run_unblocked(rows),
        })
    };
    let (seconds, peak_extra_bytes, loss) =
        timed(device, args.repeats, || run_form(b.min(args.block_size)), || run_form(b))?;
    let matmuls = match args.loss {
        BenchLossKind::Clip => 6 + if args.block_cols.is_some_and(|c| c < n) { 2 } else { 0 },
        BenchLossKind::Siglip | BenchLossKind::Filip => 3,
    };
    let flops = matmuls as f64 * 2.0 * (b * n * d) as f64;
    let bxn = b * n * F32;
    Ok(LossRow {
        local_batch: b,
        world_size: n as f64 / b as f64,
        seconds,
        gflops_per_second: flops / seconds / 1e9,
        peak_extra_bytes,
        bxn_matrix_bytes: bxn,
        unblocked_bytes: match args.loss {
            BenchLossKind::Clip => 4 * bxn,
            BenchLossKind::Siglip | BenchLossKind::Filip => 3 * bxn,
        } + 2 * n * d * F32,
        tile_bytes: blocks(args).tile_bytes(b, n, F32),
        feature_grad_bytes: 2 * n * d * F32,
        unblocked_seconds: None,
        unblocked_peak_extra_bytes: None,
        loss,
    })
}

/// FILIP at one local batch size in this process: N samples' token features (image tokens
/// all real, text tokens real for a random quarter to all of the positions) on the device.
fn measure_filip(args: &BenchLossArgs, b: i64, device: Device) -> anyhow::Result<LossRow> {
    let (n, d, li, lt) = (args.global_batch, args.dim, args.image_tokens, args.text_tokens);
    let layout = FilipLayout { dim: d, text_tokens: lt };
    tch::manual_seed(0);
    let image = l2_normalize(&Tensor::randn([n, li, d], (Kind::Float, device))).reshape([n, li * d]);
    let lens = Tensor::randint_low((lt / 4).max(1), lt + 1, [n, 1], (Kind::Int64, device));
    let mask = Tensor::arange(lt, (Kind::Int64, device)).view([1, lt]).lt_tensor(&lens).to_kind(Kind::Float);
    let tokens = l2_normalize(&Tensor::randn([n, lt, d], (Kind::Float, device))) * mask.unsqueeze(-1);
    let text = layout.text_rows(&tokens, &mask);
    drop(tokens);
    let scale = Tensor::from(100.0f32).to_device(device);
    let run = |rows: i64| -> anyhow::Result<LossGradients> {
        let (il, tl) = (image.narrow(0, 0, rows), text.narrow(0, 0, rows));
        let batch =
            ContrastiveBatch { image_local: &il, text_local: &tl, image_all: &image, text_all: &text, row_offset: 0 };
        Ok(filip_loss_blockwise(&batch, layout, &scale, blocks(args))?)
    };
    let loss_of = |rows: i64| -> anyhow::Result<f64> { Ok(run(rows)?.loss.double_value(&[])) };
    let (seconds, peak_extra_bytes, loss) = timed(device, args.repeats, || loss_of(b.min(8)), || loss_of(b))?;
    // Token similarities b·N·L_i·L_t·d: pass 1 once, pass 2 forward and two backward matmuls;
    // twice (one per direction) unless b = N, where both directions score the same pairs.
    let directions = if b == n { 1.0 } else { 2.0 };
    let flops = directions * 4.0 * 2.0 * (b * n) as f64 * (li * lt * d) as f64;
    let bxn = b * n * F32;
    let token_grads = n * (li * d + lt * (d + 1)) * F32;
    Ok(LossRow {
        local_batch: b,
        world_size: n as f64 / b as f64,
        seconds,
        gflops_per_second: flops / seconds / 1e9,
        peak_extra_bytes,
        bxn_matrix_bytes: bxn,
        // The b × N × L_i × L_t similarity, its masked copy and autograd's saved max indices.
        unblocked_bytes: 3 * bxn * li * lt + token_grads,
        tile_bytes: FILIP_TILE_BYTES,
        feature_grad_bytes: token_grads,
        unblocked_seconds: None,
        unblocked_peak_extra_bytes: None,
        loss,
    })
}

/// Times `run` (mean over `repeats`, after one `warm_up`) on `device`: (seconds, peak memory
/// above what the process held before, the last loss). Peak memory is the CPU's resident set,
/// `None` on CUDA (tch binds no allocator statistics).
fn timed(
    device: Device,
    repeats: u32,
    warm_up: impl Fn() -> anyhow::Result<f64>,
    run: impl Fn() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, Option<u64>, f64)> {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    sync();
    let mut memory = PeakMemory::start(Device::Cpu)?;
    warm_up()?;
    sync();
    memory.reset_peak()?;
    let start = Instant::now();
    let mut loss = f64::NAN;
    for _ in 0..repeats {
        loss = run()?;
    }
    sync();
    let seconds = start.elapsed().as_secs_f64() / f64::from(repeats);
    let peak = if device == Device::Cpu { memory.peak_extra_bytes() } else { None };
    Ok((seconds, peak, loss))
}

/// Runs one local batch size in a child process (this binary) and reads its JSON row.
fn measure_in_child(args: &BenchLossArgs, b: i64, form: Form) -> anyhow::Result<LossRow> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "loss", "--json", "--local-batch", &b.to_string()])
        .args(["--global-batch", &args.global_batch.to_string(), "--dim", &args.dim.to_string()])
        .args(["--block-size", &args.block_size.to_string(), "--repeats", &args.repeats.to_string()])
        .args(["--device", &args.device, "--threads", &args.threads.to_string()])
        .args(["--loss", args.loss.name()])
        .args(["--image-tokens", &args.image_tokens.to_string(), "--text-tokens", &args.text_tokens.to_string()])
        .args(["--form", if form == Form::Blockwise { "blockwise" } else { "unblocked" }]);
    if let Some(c) = args.block_cols {
        cmd.args(["--block-cols", &c.to_string()]);
    }
    let out = cmd.output().context("cannot run the benchmark child process")?;
    anyhow::ensure!(
        out.status.success(),
        "the benchmark of --local-batch {b} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut report: LossReport =
        serde_json::from_slice(&out.stdout).context("the benchmark child printed no JSON report")?;
    report.rows.pop().context("the benchmark child reported no row")
}

fn gib(bytes: f64) -> String {
    if bytes >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

/// `clipfleet bench loss`.
pub(crate) fn run(args: BenchLossArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let device = resolve_device(args.device.parse()?)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let sizes = local_batches(&args, device);
    let in_process = sizes.len() == 1;
    let mut rows = Vec::with_capacity(sizes.len());
    for &b in &sizes {
        let mut row = if in_process { measure(&args, b, device)? } else { measure_in_child(&args, b, args.form)? };
        if args.unblocked && row.unblocked_bytes as f64 <= args.unblocked_max_gib * (1u64 << 30) as f64 {
            let unblocked = measure_in_child(&args, b, Form::Unblocked)?;
            row.unblocked_seconds = Some(unblocked.seconds);
            row.unblocked_peak_extra_bytes = unblocked.peak_extra_bytes;
        }
        rows.push(row);
    }
    let report = LossReport {
        loss: args.loss,
        global_batch: args.global_batch,
        dim: args.dim,
        block_rows: args.block_size,
        block_cols: args.block_cols,
        device: format!("{device:?}"),
        dtype: "float32".into(),
        threads: tch::get_num_threads(),
        cpu_model: clipfleet_trainer::bench::memory::cpu_model(),
        nxn_matrix_bytes: args.global_batch * args.global_batch * F32,
        tokens: (args.loss == BenchLossKind::Filip).then_some((args.image_tokens, args.text_tokens)),
        rows,
    };
    if args.json {
        return super::super::print_json(&report);
    }
    let cols = report.block_cols.map_or_else(|| "all".to_string(), |c| c.to_string());
    println!(
        "clipfleet bench loss {:?}: N={} d={} blocks {}×{} on {} ({}, {} threads), fp32; one N×N matrix = {}",
        report.loss,
        report.global_batch,
        report.dim,
        report.block_rows,
        cols,
        report.device,
        report.cpu_model,
        report.threads,
        gib(report.nxn_matrix_bytes as f64)
    );
    if let Some((li, lt)) = report.tokens {
        println!(
            "FILIP: {li} image tokens × {lt} text positions per pair; tiles of {} token similarities (\"tile\"); \
             \"un-blocked est\" is the whole b×N×{li}×{lt} similarity with its masked copy and saved indices",
            gib(FILIP_TILE_BYTES as f64)
        );
    }
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>12} {:>12} {:>14} {:>10} {:>12} {:>14}",
        "b",
        "W=N/b",
        "seconds",
        "GFLOP/s",
        "peak extra",
        "b×N matrix",
        "un-blocked est",
        "tile",
        "un-blk s",
        "un-blk peak"
    );
    for r in &report.rows {
        let peak = r.peak_extra_bytes.map_or_else(|| "n/a".to_string(), |p| gib(p as f64));
        println!(
            "{:>8} {:>8} {:>10.3} {:>10.1} {:>12} {:>12} {:>14} {:>10} {:>12} {:>14}",
            r.local_batch,
            format!("{:.1}", r.world_size),
            r.seconds,
            r.gflops_per_second,
            peak,
            gib(r.bxn_matrix_bytes as f64),
            gib(r.unblocked_bytes as f64),
            gib(r.tile_bytes as f64),
            r.unblocked_seconds.map_or_else(|| "-".to_string(), |s| format!("{s:.3}")),
            r.unblocked_peak_extra_bytes.map_or_else(|| "-".to_string(), |p| gib(p as f64)),
        );
    }
    Ok(())
}
