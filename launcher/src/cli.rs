//! The command line, declared with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// clipfleet: contrastive image–text pretraining (CLIP) in Rust on libtorch.
#[derive(Debug, Parser)]
#[command(name = "clipfleet", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Log format: `human`, `json` (one JSON object per line), or `auto` (human on a terminal, JSON otherwise).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise.
    Auto,
    /// Human-readable.
    Human,
    /// JSON lines.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Train a CLIP model: one worker, or one of several started by `clipfleet launch`, mpirun,
    /// srun or a Kubernetes Indexed Job (it finds its rank in its environment). Without shards it
    /// trains on the built-in synthetic image–caption data. Settings come from `--config
    /// FILE.toml`, overridden by flags (one per config key).
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint as its run evaluated (same data, batch and transform): on the run's
    /// validation shards (or `--val-data`), else the held-out synthetic split with zero-shot
    /// top-1/top-5; image↔text recall@1/5/10 and the validation loss.
    Eval(EvalArgs),
    /// Embed images and/or captions with a checkpoint or OpenCLIP weights, into a safetensors file.
    Embed(EmbedArgs),
    /// Caption images with a CoCa model (OpenCLIP's `coca_ViT-B-32`, `coca_ViT-L-14` or a CoCa
    /// config file) and its weights: greedy decoding (OpenCLIP's `generate(generation_type="top_k",
    /// top_k=1)`, token for token) or beam search (`--beam`, OpenCLIP's default `generate`).
    ///
    /// Example: `clipfleet caption --model coca_ViT-B-32 --weights coca.safetensors --images a.jpg b.jpg`
    Caption(CaptionArgs),
    /// Masked image modelling, EVA-style: pretrain a ViT image tower by regressing a frozen CLIP
    /// teacher's patch features at block-wise masked patches (cosine loss), on the synthetic data.
    /// Writes `image_tower.safetensors`, which `train --pretrained` loads into a CLIP image tower.
    ///
    /// Example: `clipfleet mim --model tiny --teacher runs/try --steps 300 --output runs/mim`
    Mim(MimArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Tokenize captions with OpenCLIP's BPE tokenizer, or a Hugging Face tokenizer.json in
    /// OpenCLIP's [sot] + ids + [eot] convention: one JSON array of ids per text, one per line.
    Tokenize(TokenizeArgs),
    /// Make datasets of shards (WebDataset tars or img2dataset Parquet) and inspect them.
    #[command(subcommand)]
    Shards(ShardsCommand),
    /// Start the workers of this node and supervise them (like torchrun): one process per GPU
    /// (NCCL), or one `mpirun` on CPUs (MPI). When a worker fails, the others are stopped, and
    /// the group is restarted (with `--resume latest`) up to `--max-restarts` times.
    ///
    /// The worker's command line goes after `--`. Without --nnodes/--node-rank, the node's place
    /// is read from Slurm (SLURM_NNODES, SLURM_NODEID) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, CLIPFLEET_NNODES); otherwise this is the only node.
    ///
    /// Example: `clipfleet launch --nproc-per-node 8 -- train --config run.toml`
    Launch(LaunchArgs),
}

/// Which transport the workers use, and so how `clipfleet launch` starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LaunchBackend {
    /// nccl when a CUDA device is visible; otherwise mpi for more than one worker, else one plain worker.
    Auto,
    /// One process per GPU, started by the launcher with the torchrun variables.
    Nccl,
    /// One `mpirun -np N` on this node (CPU tensors); one node only.
    Mpi,
}

/// `clipfleet launch`.
#[derive(Debug, Args)]
pub(crate) struct LaunchArgs {
    /// Workers on this node (default: CLIPFLEET_NPROC_PER_NODE, else the number of CUDA devices, else 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) nproc_per_node: Option<u32>,
    /// Nodes in the job (default: from Slurm or a Kubernetes Indexed Job, else 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) nnodes: Option<u32>,
    /// This node's index, 0..nnodes (default: from Slurm or a Kubernetes Indexed Job, else 0).
    #[arg(long, value_name = "I")]
    pub(crate) node_rank: Option<u32>,
    /// Host of the rendezvous, reachable from every node (default: MASTER_ADDR, else Slurm's first
    /// node or the Job's pod 0, else 127.0.0.1).
    #[arg(long, value_name = "HOST")]
    pub(crate) master_addr: Option<String>,
    /// Port of the rendezvous on the master (default: MASTER_PORT, else 29500).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) master_port: Option<u16>,
    /// Restart the whole group this many times after a worker fails (each restart resumes
    /// `train` from its latest checkpoint).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) max_restarts: u32,
    /// Seconds between SIGTERM and SIGKILL when stopping workers.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_seconds)]
    pub(crate) grace_period: f64,
    /// Transport: auto, nccl or mpi.
    #[arg(long, value_enum, default_value_t = LaunchBackend::Auto)]
    pub(crate) backend: LaunchBackend,
    /// The worker's command line, after `--`, e.g. `train --config run.toml`.
    #[arg(last = true, required = true, value_name = "WORKER ARGS")]
    pub(crate) worker_args: Vec<String>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds >= 0")),
    }
}

/// `clipfleet tokenize`.
#[derive(Debug, Args)]
pub(crate) struct TokenizeArgs {
    /// The BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); default: CLIPFLEET_BPE_VOCAB, then .cache/ of the checkout.
    #[arg(long, value_name = "PATH", conflicts_with = "tokenizer")]
    pub(crate) vocab: Option<PathBuf>,
    /// A tokenizer file: a Hugging Face tokenizer.json (*.json, or a folder holding one), whose
    /// end-of-text token must have the largest id; any other name is OpenCLIP's BPE merges (*.txt.gz, *.txt).
    #[arg(long, value_name = "PATH")]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Tokens per text, sot and eot included; longer texts are truncated with eot forced last.
    #[arg(long, default_value_t = 77)]
    pub(crate) context_length: usize,
    /// The texts.
    #[arg(required = true)]
    pub(crate) texts: Vec<String>,
}

/// `clipfleet train`.
#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    /// A TOML config file; flags given on the command line override its keys.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Resume: `latest` (the newest checkpoint in --output, or start fresh if none) or a checkpoint/run folder.
    #[arg(long, value_name = "latest|PATH")]
    pub(crate) resume: Option<String>,
    /// Print the final evaluation as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// The checkpoint signal besides SIGTERM and SIGINT: USR1, USR2 or HUP. Any of them stops the
    /// run at the next step with a checkpoint and exit status 75.
    #[arg(long, value_name = "SIG", default_value = "USR1")]
    pub(crate) stop_signal: clipfleet_trainer::run::StopSignal,
    /// Seconds from a stop signal to a forced exit without a checkpoint, when the stop has not
    /// finished by then.
    #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = parse_seconds)]
    pub(crate) stop_grace: f64,
    /// One flag per config key (docs/configuration.md).
    #[command(flatten)]
    pub(crate) overrides: clipfleet_trainer::config::TrainOverrides,
}

/// `clipfleet eval`.
#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// A run folder (its latest checkpoint is used) or one checkpoint folder.
    #[arg(long, value_name = "DIR", required_unless_present = "weights", conflicts_with = "weights")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Weights instead of a checkpoint: a safetensors file with OpenCLIP's keys (OpenCLIP's, or a run's
    /// model.safetensors), with --model or --model-config; zero-shot classification only.
    #[arg(long, value_name = "FILE.safetensors", requires = "zero_shot")]
    pub(crate) weights: Option<PathBuf>,
    /// Built-in model preset of --weights (see `clipfleet train --help`: tiny, tiny-rn, tiny-coca, small, ViT-*, RN*, coca_*).
    #[arg(long, requires = "weights", conflicts_with = "model_config")]
    pub(crate) model: Option<String>,
    /// An OpenCLIP model-config JSON file, for --weights.
    #[arg(long, value_name = "FILE", requires = "weights")]
    pub(crate) model_config: Option<PathBuf>,
    /// Zero-shot classification on labelled images instead of the held-out pairs: an image folder
    /// (one subfolder per class), a CSV with `path` and `label` columns, or shards with `cls` labels.
    #[arg(long, value_name = "DIR|CSV|URLS")]
    pub(crate) zero_shot: Option<String>,
    /// Class names, one per line (default: the class folder names, or the CSV's labels).
    #[arg(long, value_name = "FILE", requires = "zero_shot")]
    pub(crate) classnames: Option<PathBuf>,
    /// Prompt templates: openai (the 80 of the CLIP paper), simple, or a file with one template per
    /// line, each with {} for the class name.
    #[arg(long, value_name = "openai|simple|FILE", default_value = "openai", requires = "zero_shot")]
    pub(crate) templates: String,
    /// Write one JSON object per image (path, label, top5 class names) to this file.
    #[arg(long, value_name = "FILE.jsonl", requires = "zero_shot")]
    pub(crate) predictions: Option<PathBuf>,
    /// Images per forward pass of zero-shot classification.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch_size: u32,
    /// Validation shards to evaluate on (default: the run's val_data, else the synthetic held-out split).
    #[arg(long, value_name = "URLS", conflicts_with = "zero_shot")]
    pub(crate) val_data: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Held-out pairs to evaluate (default: the run's eval_samples).
    #[arg(long, value_name = "N", conflicts_with = "zero_shot")]
    pub(crate) samples: Option<i64>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: clipfleet_trainer::config::DeviceSpec,
    /// BPE vocabulary file, for models with OpenCLIP's vocabulary.
    #[arg(long, value_name = "PATH")]
    pub(crate) vocab: Option<PathBuf>,
}

/// `clipfleet embed`.
#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
    /// Built-in model preset (tiny, tiny-rn, tiny-coca, small, ViT-B-32, ViT-B-16, ViT-L-14, RN50, RN101, RN50x4, RN50x16, RN50x64, coca_ViT-B-32, coca_ViT-L-14).
    #[arg(long, conflicts_with = "model_config", required_unless_present = "model_config")]
    pub(crate) model: Option<String>,
    /// An OpenCLIP model-config JSON file.
    #[arg(long, value_name = "FILE")]
    pub(crate) model_config: Option<PathBuf>,
    /// Weights: a safetensors file with OpenCLIP's keys (a clipfleet checkpoint's model.safetensors, or OpenCLIP's).
    #[arg(long, value_name = "FILE.safetensors")]
    pub(crate) weights: PathBuf,
    /// JPEG or PNG images; the short side is resized (bicubic), centre-cropped and normalised as in OpenCLIP.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub(crate) images: Vec<PathBuf>,
    /// A text file with one caption per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) texts: Option<PathBuf>,
    /// Output safetensors file with `image_embeddings` and/or `text_embeddings` (float32, L2-normalised, input order).
    #[arg(long, value_name = "OUT.safetensors")]
    pub(crate) output: PathBuf,
    /// BPE vocabulary file, for models with OpenCLIP's vocabulary.
    #[arg(long, value_name = "PATH")]
    pub(crate) vocab: Option<PathBuf>,
    /// Items per forward pass.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: clipfleet_trainer::config::DeviceSpec,
}

/// `clipfleet caption`.
#[derive(Debug, Args)]
pub(crate) struct CaptionArgs {
    /// CoCa preset: coca_ViT-B-32 or coca_ViT-L-14.
    #[arg(long, conflicts_with = "model_config", required_unless_present = "model_config")]
    pub(crate) model: Option<String>,
    /// An OpenCLIP CoCa model-config JSON file (`coca_*.json`).
    #[arg(long, value_name = "FILE")]
    pub(crate) model_config: Option<PathBuf>,
    /// Weights: OpenCLIP's CoCa state dict as safetensors.
    #[arg(long, value_name = "FILE.safetensors")]
    pub(crate) weights: PathBuf,
    /// JPEG, PNG or WebP images; resized (short side, bicubic), centre-cropped and normalised as in OpenCLIP.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// Beam search instead of greedy decoding.
    #[arg(long)]
    pub(crate) beam: bool,
    /// Beams (OpenCLIP's num_beams; its 3 groups without a diversity penalty search the same
    /// num_beams / num_beam_groups beams).
    #[arg(long, default_value_t = 6)]
    pub(crate) num_beams: i64,
    /// OpenCLIP's num_beam_groups.
    #[arg(long, default_value_t = 3)]
    pub(crate) num_beam_groups: i64,
    /// The longest caption in tokens, start and end included (OpenCLIP's seq_len).
    #[arg(long, default_value_t = 30)]
    pub(crate) seq_len: i64,
    /// The end token is not allowed before this many tokens (OpenCLIP's min_seq_len).
    #[arg(long, default_value_t = 5)]
    pub(crate) min_seq_len: i64,
    /// BPE vocabulary file (default: the one scripts/setup.sh fetches, or CLIPFLEET_BPE_VOCAB).
    #[arg(long, value_name = "PATH")]
    pub(crate) vocab: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub(crate) batch_size: usize,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: clipfleet_trainer::config::DeviceSpec,
    /// Print one JSON object per image (path, ids, caption).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `clipfleet mim`.
#[derive(Debug, Args)]
pub(crate) struct MimArgs {
    /// The student's model preset (a ViT); its image tower is trained.
    #[arg(long, default_value = "tiny", conflicts_with = "model_config")]
    pub(crate) model: String,
    /// The student's OpenCLIP model-config JSON file instead of a preset.
    #[arg(long, value_name = "FILE")]
    pub(crate) model_config: Option<PathBuf>,
    /// The frozen teacher: a clipfleet run, `checkpoints/` or `step_N/` folder (or object-store
    /// URL), or a safetensors file of OpenCLIP weights (then `--teacher-model` says its model).
    #[arg(long, value_name = "RUN|FILE")]
    pub(crate) teacher: PathBuf,
    /// The teacher's preset when `--teacher` is a safetensors file (default: `--model`).
    #[arg(long, value_name = "NAME")]
    pub(crate) teacher_model: Option<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub(crate) steps: i64,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub(crate) batch_size: i64,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 50)]
    pub(crate) warmup: i64,
    /// AdamW weight decay (EVA-02's 0.05).
    #[arg(long, default_value_t = 0.05)]
    pub(crate) weight_decay: f64,
    /// Fraction of each image's patches masked, in blocks (EVA-02's 0.4).
    #[arg(long, default_value_t = 0.4)]
    pub(crate) mask_ratio: f64,
    /// Seed of the student's initialisation, the data and the masks.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Log the loss every N steps (and to OUTPUT/mim.jsonl).
    #[arg(long, default_value_t = 20)]
    pub(crate) log_every: i64,
    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "runs/mim")]
    pub(crate) output: PathBuf,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: clipfleet_trainer::config::DeviceSpec,
    /// libtorch intra-op threads (0: default).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: i32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Time the training step that `clipfleet train` runs (uint8 images normalised on the device,
    /// the towers in the chosen precision, the blockwise loss, clipping, fused AdamW) on the run's
    /// synthetic batches already on the device, with OpenCLIP's own step in the same run
    /// (`--reference-python`).
    ///
    /// Example: `clipfleet bench train --model tiny --batch-size 128 --device cpu --reference-python .venv/bin/python`
    Train(BenchTrainArgs),
    /// Time the training data pipeline in images/s: read shards, decode JPEGs, RandomResizedCrop to
    /// 224, tokenize and batch, with the loader `clipfleet train` uses.
    ///
    /// Without `--train-data` it writes photo-like JPEG shards (256–512 px per side, ~20 MB, or
    /// `--shards-dir` to keep and reuse them) and also runs OpenCLIP's own WebDataset pipeline
    /// (`scripts/bench_data_reference.py`: webdataset + Pillow + torchvision, with as many DataLoader
    /// workers as threads here) on the same shards and cores, then prints both and the ratio.
    ///
    /// Example: `clipfleet bench data`, or `clipfleet bench data --train-data 'data/{00000..00099}.tar'`
    Data(BenchDataArgs),
    /// Time the blockwise contrastive loss with its feature gradients for a global batch N at
    /// several local batch sizes b (gather simulated: the N×d features are already on the device),
    /// and print its peak memory beside the b×N and N×N matrices the un-blocked forms hold.
    ///
    /// Each b runs in a fresh child process, so that its peak memory is its own. Defaults: N = 32,768,
    /// d = 512, b = 256, 1,024 and (on CUDA) 32,768; on 2 CPU cores the CPU default takes ~20 s and
    /// b = 32,768 another ~2–3 min.
    ///
    /// Example: `clipfleet bench loss --device cpu`, or `clipfleet bench loss --global-batch 4096 --local-batch 512 --json`
    Loss(crate::commands::bench::loss::BenchLossArgs),
}

/// `clipfleet bench data`.
#[derive(Debug, Args)]
pub(crate) struct BenchDataArgs {
    /// Benchmark these shards (brace patterns joined with `::`, local paths or URLs) instead of
    /// generated ones. The OpenCLIP reference then runs only with `--reference`.
    #[arg(long, value_name = "URLS")]
    pub(crate) train_data: Option<String>,
    /// With `--train-data`: samples per epoch, where the shards have no `sizes.json`.
    #[arg(long, value_name = "N")]
    pub(crate) train_num_samples: Option<u64>,
    /// With `--train-data`: draw shards with replacement (OpenCLIP's `--dataset-resampled`).
    /// Generated shards are always read this way.
    #[arg(long)]
    pub(crate) dataset_resampled: bool,
    /// Write the generated shards here and keep them; a later run with the same `--images` and
    /// `--seed` reuses them. Default: a temporary folder, removed afterwards.
    #[arg(long, value_name = "DIR", conflicts_with = "train_data")]
    pub(crate) shards_dir: Option<PathBuf>,
    /// Generated images (split into 8 shards).
    #[arg(long, default_value_t = 384, value_name = "N")]
    pub(crate) images: u64,
    /// Decode threads here, DataLoader workers in the reference, and the cores both may use
    /// (the process is pinned to that many CPUs when it is fewer than it has). 0: all cores.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Timed batches, after the warm-up (the first batch here; the first batch of each worker in
    /// the reference).
    #[arg(long, default_value_t = 16)]
    pub(crate) batches: usize,
    /// Seed of the generated data and of the loader.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// The tokenizer: OpenCLIP's BPE merges (default: CLIPFLEET_BPE_VOCAB, then .cache/ of the
    /// checkout) or a Hugging Face tokenizer.json.
    #[arg(long, value_name = "PATH")]
    pub(crate) vocab: Option<PathBuf>,
    /// Also run the OpenCLIP reference with `--train-data`.
    #[arg(long, conflicts_with = "no_reference")]
    pub(crate) reference: bool,
    /// Skip the OpenCLIP reference.
    #[arg(long)]
    pub(crate) no_reference: bool,
    /// The python that runs the reference (needs open_clip_torch, webdataset, torchvision);
    /// default: `.venv/bin/python` of the checkout.
    #[arg(long, value_name = "PYTHON")]
    pub(crate) reference_python: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `clipfleet bench train`.
#[derive(Debug, Args)]
pub(crate) struct BenchTrainArgs {
    /// Built-in model preset.
    #[arg(long, default_value = "ViT-B-32")]
    pub(crate) model: String,
    /// Pairs per step.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: i64,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub(crate) steps: i64,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    pub(crate) warmup: i64,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: clipfleet_trainer::config::DeviceSpec,
    /// libtorch intra-op threads (0: default); the reference uses as many.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: i64,
    /// Precision: auto (amp_bf16 on CUDA, fp32 on the CPU), amp_bf16, pure_bf16 or fp32 (TF32 on).
    #[arg(long, value_enum, default_value_t = clipfleet_trainer::config::PrecisionMode::Auto)]
    pub(crate) precision: clipfleet_trainer::config::PrecisionMode,
    /// The contrastive loss: clip or siglip.
    #[arg(long, value_enum, default_value_t = clipfleet_trainer::config::LossKind::Clip)]
    pub(crate) loss: clipfleet_trainer::config::LossKind,
    /// Clip the global gradient norm to this value (default: no clipping, as OpenCLIP's default).
    #[arg(long, value_name = "NORM")]
    pub(crate) grad_clip_norm: Option<f64>,
    /// Seed of the model and the data.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Lock the image tower (LiT): no gradient, no optimizer state; the reference locks it too.
    #[arg(long)]
    pub(crate) lock_image: bool,
    /// Lock the text tower; the reference locks it too.
    #[arg(long)]
    pub(crate) lock_text: bool,
    /// FLIP patch dropout of the ViT image tower in training, in [0, 1) (OpenCLIP's
    /// `--force-patch-dropout`); the reference gets the same model config.
    #[arg(long, value_name = "P")]
    pub(crate) force_patch_dropout: Option<f64>,
    /// Gradient checkpointing of both towers; the reference checkpoints too.
    #[arg(long)]
    pub(crate) grad_checkpointing: bool,
    /// Peak FLOP/s of the device in TFLOP/s, for the MFU figure. Default: NVIDIA's datasheet
    /// figure for the card and precision (printed with its source); none on the CPU.
    #[arg(long, value_name = "TFLOPS")]
    pub(crate) peak_tflops: Option<f64>,
    /// Also time OpenCLIP's own training step with the same model, batch, precision, loss,
    /// clipping and optimizer on the same device in this run (before clipfleet's, so that
    /// neither holds the other's memory), with this python (which must have
    /// open_clip_torch), and print the ratio.
    #[arg(long, value_name = "PYTHON")]
    pub(crate) reference_python: Option<PathBuf>,
    /// Write the weights after the last step to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub(crate) save_weights: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ShardsCommand {
    /// Write a dataset of WebDataset tars or img2dataset Parquet files, with a `sizes.json`.
    ///
    /// N samples per shard. The input is the synthetic generator (`--synthetic N`) or a folder of images
    /// with a CSV/TSV of `filepath,caption` (`--images-dir DIR --captions FILE`). Bad input (a
    /// missing or undecodable image, a malformed row, an empty caption) stops it with an error
    /// naming the file and line; shards are renamed into place only once complete.
    ///
    /// Example: `clipfleet shards make --synthetic 1000 --samples-per-shard 100 --output data/`
    Make(ShardsMakeArgs),
    /// Read every sample of some shards, decode it, and count valid samples and skips by reason.
    ///
    /// Exits 0 even when samples are skipped; non-zero only for usage errors (no shard found,
    /// a bad `--caption`).
    ///
    /// Example: `clipfleet shards inspect 'data/shard-{000000..000009}.tar' --json`
    Inspect(ShardsInspectArgs),
}

/// Shard layout written by `clipfleet shards make`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShardFormatArg {
    /// WebDataset tars: `<key>.jpg`, `<key>.txt`, `<key>.json` (and `<key>.cls` with a label).
    Wds,
    /// img2dataset Parquet: columns `key`, `caption`, `width`, `height` and the image bytes in a column named after its format (`jpg`).
    Parquet,
}

/// `clipfleet shards make`.
#[derive(Debug, Args)]
pub(crate) struct ShardsMakeArgs {
    /// The output folder (created if missing); shards and `sizes.json` are written into it.
    #[arg(long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    /// Shard layout: `wds` (WebDataset tars) or `parquet` (img2dataset layout).
    #[arg(long, value_enum, default_value_t = ShardFormatArg::Wds)]
    pub(crate) format: ShardFormatArg,
    /// Samples per shard; the last shard may hold fewer.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub(crate) samples_per_shard: u64,
    /// Shard names are PREFIX-000000.tar, PREFIX-000001.tar, ... (PREFIX-000000.parquet for Parquet).
    #[arg(long, value_name = "NAME", default_value = "shard")]
    pub(crate) prefix: String,
    /// JPEG quality (1-100) of the synthetic images; files from --images-dir are copied as they are.
    #[arg(long, value_name = "Q", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub(crate) jpeg_quality: u8,
    /// Write N samples of the built-in synthetic dataset (training split, not augmented), JPEG-encoded, labels in `.cls`.
    #[arg(long, value_name = "N", conflicts_with_all = ["images_dir", "captions"], required_unless_present = "images_dir")]
    pub(crate) synthetic: Option<u64>,
    /// Side of the synthetic images, in pixels.
    #[arg(long, value_name = "PIXELS", default_value_t = 64, requires = "synthetic")]
    pub(crate) image_size: u32,
    /// Seed of the synthetic dataset.
    #[arg(long, default_value_t = 0, requires = "synthetic")]
    pub(crate) seed: u64,
    /// Folder of images (jpg, jpeg, png, webp); the paths in --captions are relative to it.
    #[arg(long, value_name = "DIR", requires = "captions")]
    pub(crate) images_dir: Option<PathBuf>,
    /// CSV (`.csv`) or TSV (`.tsv`, `.txt`) file with a header naming the columns `filepath` and `caption`, like CC3M's; one sample per row, in order.
    #[arg(long, value_name = "FILE", requires = "images_dir")]
    pub(crate) captions: Option<PathBuf>,
    /// Print one JSON object on stdout: {"shards": n, "samples": n, "output": DIR}.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `clipfleet shards inspect`.
#[derive(Debug, Args)]
pub(crate) struct ShardsInspectArgs {
    /// Shard URLs or paths: local, s3://, gs://, az://, http(s)://. Braces are expanded
    /// (`shard-{000000..000009}.tar`) and `::` joins several sources. `.parquet` files are read
    /// as img2dataset Parquet, everything else as WebDataset tars.
    #[arg(required = true, value_name = "URL")]
    pub(crate) urls: Vec<String>,
    /// Print one JSON object on stdout: {"shards": n, "samples": n, "skipped": {"reason": n, ...}}.
    #[arg(long)]
    pub(crate) json: bool,
    /// Where a WebDataset caption comes from: `txt` (the `.txt` member) or `json:FIELD` (a string field of the `.json` member).
    #[arg(long, value_name = "txt|json:FIELD", default_value = "txt")]
    pub(crate) caption: clipfleet_dataloader::webdataset::CaptionSource,
    /// Parquet: the binary image column; its name is the image format.
    #[arg(long, value_name = "NAME", default_value = "jpg")]
    pub(crate) image_column: String,
    /// Parquet: the caption column (default: `caption`, else `txt`).
    #[arg(long, value_name = "NAME")]
    pub(crate) caption_column: Option<String>,
}
