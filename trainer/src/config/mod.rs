//! The training configuration: a TOML file whose keys the CLI flags override.
//!
//! Every key is declared once, in [`declare_train_config!`]'s invocation below: its type,
//! default, doc and flag. From that declaration come the [`TrainConfig`] struct (the TOML
//! keys), [`TrainOverrides`] (the `clipfleet train` flags, one per key) and the table of
//! `docs/configuration.md` ([`reference_table`], checked by a test). Unknown keys are
//! rejected by the parser with the key named; closed sets are types ([`values`]), so a bad
//! value is rejected at parse time with the key and the allowed values named; out-of-range
//! numbers are rejected by [`TrainConfig::validate`], also naming the key.

#[macro_use]
mod declare;
mod reference;
pub mod values;

use std::path::{Path, PathBuf};

use clipfleet_dataloader::loader::DataSpec;
use clipfleet_dataloader::webdataset::CaptionSource;
use serde::{Deserialize, Serialize};

pub use reference::reference_table;
pub use values::{BackendChoice, DeviceSpec, LossKind, PrecisionMode};

use crate::error::{ConfigError, Result, TrainError};
use crate::model::{ClipConfig, PRESET_NAMES};
use crate::optim::{AdamWConfig, LrScheduler};

declare_train_config! {
    /// `tiny`, `tiny-rn`, `tiny-coca`, `small`, `ViT-B-32`, `ViT-B-16`, `ViT-L-14`, `RN50`, `RN101`, `RN50x4`,
    /// `RN50x16`, `RN50x64`, `coca_ViT-B-32`, `coca_ViT-L-14` ([presets](#built-in-presets)); ignored when
    /// `model_config` is set
    [value_name = "NAME"] model: plain String = "tiny".into();
    /// an OpenCLIP model-config JSON file ([format](#model-config-json))
    [value_name = "FILE"] model_config: optional PathBuf = None;
    /// a tokenizer file: `bpe_simple_vocab_16e6.txt.gz` (OpenCLIP BPE) or a Hugging Face
    /// `tokenizer.json` ([tokenizer](#tokenizer-selection))
    [value_name = "PATH"] vocab: optional PathBuf = None;
    /// weights to start from: an OpenCLIP state dict or a run's `model.safetensors` (safetensors with
    /// OpenCLIP's names, matching the model). Weights only: the optimizer and the schedule start fresh.
    /// Ignored when the run resumes from a checkpoint ([pretrained](operations.md#starting-from-pretrained-weights-and-lit))
    [value_name = "FILE"] pretrained: optional PathBuf = None;
    /// lock the image tower (LiT, OpenCLIP's `--lock-image`): no gradient, no optimizer state
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] lock_image: plain bool = false;
    /// ≥ 0; with `lock_image`, leave this many of the image tower's last layer groups trainable
    [value_name = "N"] lock_image_unlocked_groups: plain i64 = 0;
    /// with `lock_image`, a ResNet image tower's batch norm uses its running statistics in training too,
    /// and leaves them as they are (OpenCLIP's flag; ViTs have no batch norm)
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] lock_image_freeze_bn_stats: plain bool = false;
    /// lock the text tower (OpenCLIP's `--lock-text`)
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] lock_text: plain bool = false;
    /// ≥ 0; with `lock_text`, leave this many of the text tower's last layer groups trainable
    [value_name = "N"] lock_text_unlocked_layers: plain i64 = 0;
    /// in [0, 1); FLIP patch dropout for the ViT image tower in training, overriding the model config's
    /// `patch_dropout` (OpenCLIP's `--force-patch-dropout`; 0 turns it off). Evaluation sees every patch
    /// ([patch dropout](models.md#patch-dropout))
    [value_name = "P"] force_patch_dropout: optional f64 = None;
    /// recompute each transformer block's (or ResNet block's) activations in the backward pass instead of
    /// keeping them (OpenCLIP's `--grad-checkpointing`): less memory, one more forward pass, same gradients
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] grad_checkpointing: plain bool = false;
    /// ≥ 1; pairs per micro-batch per worker (OpenCLIP's `--batch-size`). A step's global batch is
    /// `batch_size × accum_freq × world_size`
    [value_name = "N"] batch_size: plain i64 = 128;
    /// ≥ 1; optimizer steps, counted from the start of the run, resumed runs included
    [value_name = "N"] steps: plain i64 = 1000;
    /// finite, > 0; the peak learning rate
    [value_name = "LR"] lr: plain f64 = 5e-4;
    /// ≥ 0; steps of linear warm-up
    [value_name = "N"] warmup: plain i64 = 100;
    /// `cosine` (warm-up, then cosine decay to 0 at `steps`) or `const` (warm-up, then `lr`)
    [value_name = "NAME"] lr_scheduler: plain LrScheduler = LrScheduler::Cosine;
    /// in [0, 1); AdamW β₁
    [value_name = "B1"] beta1: plain f64 = AdamWConfig::default().beta1;
    /// in [0, 1); AdamW β₂
    [value_name = "B2"] beta2: plain f64 = AdamWConfig::default().beta2;
    /// finite, > 0; AdamW ε
    [value_name = "EPS"] eps: plain f64 = AdamWConfig::default().eps;
    /// finite, ≥ 0; AdamW's decoupled weight decay, not applied to gains, biases and the logit scale
    [value_name = "WD"] weight_decay: plain f64 = AdamWConfig::default().weight_decay;
    /// `auto` (`amp_bf16` on CUDA, `fp32` on the CPU), `amp_bf16` (fp32 weights, CUDA autocast to
    /// bfloat16, as OpenCLIP's default), `pure_bf16` (bfloat16 weights, moments and compute) or `fp32`.
    /// `amp_bf16` on the CPU is an error. The loss is always computed in fp32, and checkpoints hold
    /// fp32 weights
    [value_name = "MODE"] precision: plain PrecisionMode = PrecisionMode::Auto;
    /// allow TF32 in cuBLAS matmuls and cuDNN convolutions (CUDA), as OpenCLIP does
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] tf32: plain bool = true;
    /// run AdamW as libtorch's fused kernel (`torch.optim.AdamW(fused=True)`); `false` runs it as per-
    /// parameter ops. Same update, same checkpoint format
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] fused_adamw: plain bool = true;
    /// finite, > 0; to leave it unset, omit the key (TOML has no null)
    [value_name = "NORM"] grad_clip_norm: optional f64 = None;
    /// ≥ 0 seconds; with several CPU workers (MPI, TCP), a collective that waits longer than this
    /// while another worker is frozen or dead, or while every worker waits, ends the job with an
    /// error naming the suspect rank, and `clipfleet launch` restarts it; 0 disables it
    /// ([hangs](operations.md#hung-workers))
    [value_name = "SECONDS"] collective_timeout: plain u64 = 600;
    /// ≥ 0; a step whose loss (on any rank) or gradient is NaN or infinite is skipped on every rank
    /// (no update); after more than this many in a row, `on_nonfinite` decides
    /// ([non-finite guard](operations.md#non-finite-losses))
    [value_name = "K"] max_nonfinite_skips: plain i64 = 3;
    /// `stop` (end the run with an error naming the step) or `rollback` (go back to the last
    /// checkpoint and go on, at most 3 times per process)
    [value_name = "ACTION"] on_nonfinite: plain String = "stop".into();
    /// 0 … 2⁶³−1 in TOML; seeds the initialisation, the data order and the augmentation
    [value_name = "N"] seed: plain u64 = 0;
    /// the run folder ([contents](operations.md#the-run-folder))
    [value_name = "DIR"] output: plain PathBuf = PathBuf::from("runs/default");
    /// where checkpoints go: a folder, or `s3://`, `gs://` or `az://` URL with the same commit
    /// protocol (then no shared file system is needed). Unset: `OUTPUT/checkpoints`
    /// ([object stores](operations.md#checkpoints-on-object-stores))
    [value_name = "DIR|URL"] checkpoint_dir: optional String = None;
    /// ≥ 0; a checkpoint every N steps. 0 means only the final one, which is always written
    [value_name = "N"] checkpoint_every: plain i64 = 500;
    /// ≥ 0; keep the newest K committed checkpoints, or all of them with 0
    [value_name = "K"] keep_checkpoints: plain usize = 3;
    /// ≥ 0; evaluate (and log) every N steps. 0 means only the final evaluation, which always runs
    [value_name = "N"] eval_every: plain i64 = 0;
    /// ≥ 2; held-out pairs used by each evaluation
    [value_name = "N"] eval_samples: plain i64 = 1000;
    /// ≥ 1; log the training metrics every N steps (and at the last step)
    [value_name = "N"] log_every: plain i64 = 20;
    /// `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (CUDA if libtorch sees a GPU, else CPU)
    [value_name = "DEVICE"] device: plain DeviceSpec = DeviceSpec::Auto;
    /// ≥ 0; libtorch intra-op threads, where 0 keeps libtorch's default
    [value_name = "N"] threads: plain i64 = 0;
    /// ≥ `batch_size`; samples per epoch. Unset: 1,000,000 for the synthetic data; for shards, the
    /// counts of `sizes.json` (or Parquet footers). Required with `dataset_resampled`
    [value_name = "N"] train_num_samples: optional u64 = None;
    /// ≥ 1; batches prepared ahead of the trainer (bounded queue)
    [value_name = "N"] prefetch: plain usize = 4;
    /// shard URLs: brace patterns joined with `::`; local, `s3://`, `gs://`, `az://`, `http(s)://`;
    /// `.tar` (WebDataset) or `.parquet` (img2dataset). Unset: the synthetic data ([data.md](data.md))
    [value_name = "URLS"] train_data: optional String = None;
    /// validation shards, read in order with the evaluation transform: retrieval recall and loss over
    /// the first `eval_samples` pairs (no zero-shot: shards carry no class names). Unset: the synthetic
    /// held-out split
    [value_name = "URLS"] val_data: optional String = None;
    /// labelled images for zero-shot classification at each evaluation: an image folder (one
    /// subfolder per class), a CSV with `path` and `label` columns, or shards with `cls` labels. Its
    /// top-1, top-5 and mean per-class recall replace the synthetic split's
    /// ([zero-shot](evaluation.md#zero-shot-classification))
    [value_name = "DIR|CSV|URLS"] zero_shot_data: optional String = None;
    /// one class name per line, in label order (default: the class folder names, or the CSV's labels);
    /// required for shards
    [value_name = "FILE"] zero_shot_classnames: optional PathBuf = None;
    /// `openai` (the 80 ImageNet templates of the CLIP paper), `simple`, or a file of one template per
    /// line, each with `{}` for the class name
    [value_name = "openai|simple|FILE"] zero_shot_templates: plain String = "openai".into();
    /// draw shards with replacement (OpenCLIP's `--dataset-resampled`)
    [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"] dataset_resampled: plain bool = false;
    /// one positive weight per source, joined with `::`; only with `dataset_resampled`
    [value_name = "W::W"] train_data_upsampling_factors: optional String = None;
    /// ≥ 1, a multiple of the world size that divides `batch_size` (the global batch), at most the
    /// number of shards unless resampling. A resumed run keeps its checkpoint's
    /// ([sampling](data.md#sample-order-deterministic-elastic-resumable))
    [value_name = "N"] data_partitions: optional usize = None;
    /// ≥ 1; samples per shuffle window of a data partition
    [value_name = "N"] shuffle_window: plain u64 = clipfleet_dataloader::loader::DEFAULT_SHUFFLE_WINDOW;
    /// ≥ 0; decode threads, where 0 means the cores divided by the local world size
    [value_name = "N"] workers: plain usize = 0;
    /// in [0, 1]; the run stops when more than this fraction of samples is skipped as bad input
    [value_name = "F"] max_skip_fraction: plain f64 = clipfleet_dataloader::loader::DEFAULT_MAX_SKIP_FRACTION;
    /// `txt`, or `json:FIELD` for a string field of the `json` member
    [value_name = "txt|json:FIELD"] caption_key: plain CaptionSource = CaptionSource::Txt;
    /// `auto` (by extension: `.csv`/`.tsv` CSV, `.parquet` Parquet, others WebDataset tars), `webdataset`,
    /// or `csv` (every URL is a CSV dataset, as OpenCLIP's `--dataset-type csv`) ([CSV](data.md#csv-datasets))
    [value_name = "TYPE"] dataset_type: plain String = "auto".into();
    /// the image-path column of CSV datasets (OpenCLIP's `--csv-img-key`)
    [value_name = "NAME"] csv_img_key: plain String = "filepath".into();
    /// the caption column of CSV datasets (OpenCLIP's `--csv-caption-key`)
    [value_name = "NAME"] csv_caption_key: plain String = "title".into();
    /// the field separator of CSV datasets: one character, or `\t` for a tab (OpenCLIP's
    /// `--csv-separator`, a tab by default)
    [value_name = "CHAR"] csv_separator: plain String = "\t".into();
    /// the binary image column of Parquet shards
    [value_name = "NAME"] parquet_image_column: plain String = "jpg".into();
    /// the caption column of Parquet shards; unset tries `caption`, then `txt`
    [value_name = "NAME"] parquet_caption_column: optional String = None;
    /// 0–65535; serve Prometheus metrics at `http://metrics_host:PORT/metrics` (0: any free port,
    /// logged). Unset: no exporter ([metrics](operations.md#metrics))
    [value_name = "PORT"] metrics_port: optional u16 = None;
    /// an IP address for the exporter to bind
    [value_name = "IP"] metrics_host: plain String = "0.0.0.0".into();
    /// non-empty; the `job` label of every metric
    [value_name = "NAME"] job_name: plain String = "clipfleet".into();
    /// `tensorboard`: rank 0 writes TensorBoard event files to `OUTPUT/tensorboard/` (training
    /// scalars at every log step, evaluation results), as OpenCLIP's `--report-to tensorboard`.
    /// Unset: none ([metrics](metrics.md#tensorboard))
    [value_name = "TARGET"] report_to: optional String = None;
    /// `clip` (softmax in both directions, OpenCLIP's `ClipLoss`), `siglip` (pairwise sigmoid,
    /// OpenCLIP's `SigLipLoss`; a model config without `init_logit_bias` gets OpenCLIP's SigLIP start
    /// values θ = ln 10, β = −10) or `filip` (token-wise late interaction, ViT image towers;
    /// [FILIP](models.md#filip))
    [value_name = "LOSS"] loss: plain LossKind = LossKind::Clip;
    /// ≥ 1; micro-batches per step, by gradient caching: the loss and the gradients are those of the
    /// whole `batch_size × accum_freq × world_size` batch ([distributed.md](distributed.md#training-
    /// across-workers))
    [value_name = "K"] accum_freq: plain i64 = 1;
    /// ≥ 1; rows per block of the loss: its memory is about 3 × rows × N fp32 values
    [value_name = "ROWS"] loss_block_rows: plain i64 = 1024;
    /// ≥ 1; columns per tile of the loss; below N the softmax loss computes its logits twice
    [value_name = "COLS"] loss_block_cols: optional i64 = None;
    /// `auto`, `nccl`, `mpi`, `tcp`, `single`. `auto`: `CLIPFLEET_DIST_BACKEND` (set by `clipfleet
    /// launch`), else `single` for one worker, `nccl` on a GPU (under mpirun too: the NCCL id then goes
    /// by MPI), `mpi` for CPU workers under mpirun or `srun --mpi=pmix`, `tcp` for other CPU workers
    /// (one per Kubernetes pod: CPU collectives relayed by rank 0 over the rendezvous,
    /// [distributed.md](distributed.md#backends)). `nccl` with `device = "cpu"` is an error that says
    /// to use `mpi`
    [value_name = "BACKEND"] dist_backend: plain BackendChoice = BackendChoice::Auto;
    /// ≥ 1; parameter gradients are all-reduced in flat buckets of this many MiB
    [value_name = "MIB"] grad_bucket_mb: plain usize = 64;
    /// ≥ 0; every N steps, compare checksums of the parameters across workers and stop with an error
    /// naming the rank that differs (0: never)
    [value_name = "N"] check_params_every: plain i64 = 0;
}

impl TrainConfig {
    /// Reads a TOML file; unknown keys are an error that names them.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses the TOML text of the file `path` (named in errors); unknown keys are an error.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), reason: e.to_string() }.into())
    }

    /// The AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            fused: self.fused_adamw,
        }
    }

    /// The shard-reading settings shared by training and validation data, for `urls`.
    pub fn data_spec(&self, urls: &str, local_world: usize) -> Result<DataSpec, ConfigError> {
        let mut spec = DataSpec::new(urls);
        spec.upsampling_factors = self.train_data_upsampling_factors.clone();
        spec.resampled = self.dataset_resampled;
        spec.num_samples = self.train_num_samples;
        spec.partitions = self.data_partitions;
        spec.shuffle_window = self.shuffle_window;
        spec.format.caption = self.caption_key.clone();
        spec.format.parquet.columns.image = self.parquet_image_column.clone();
        spec.format.parquet.columns.caption = self.parquet_caption_column.clone();
        spec.format.dataset_type = match self.dataset_type.as_str() {
            "csv" => clipfleet_dataloader::loader::DatasetType::Csv,
            "webdataset" => clipfleet_dataloader::loader::DatasetType::WebDataset,
            _ => clipfleet_dataloader::loader::DatasetType::Auto,
        };
        spec.format.csv = clipfleet_dataloader::csv_dataset::CsvColumns {
            image: self.csv_img_key.clone(),
            caption: self.csv_caption_key.clone(),
            separator: self.csv_separator_char()?,
        };
        if self.workers > 0 {
            spec.decode_threads = self.workers;
        } else {
            spec.decode_threads = (spec.decode_threads / local_world.max(1)).max(1);
        }
        spec.prefetch_batches = self.prefetch;
        spec.max_skip_fraction = self.max_skip_fraction;
        Ok(spec)
    }

    /// Reads a TOML file (or the defaults) and applies `overrides` on top, then validates.
    pub fn resolve(file: Option<&Path>, overrides: &TrainOverrides) -> Result<Self> {
        let mut cfg = match file {
            Some(path) => Self::from_toml_file(path)?,
            None => Self::default(),
        };
        overrides.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The model config: the JSON file if given, else the preset; with `loss = "siglip"`, a
    /// config without a logit bias gets OpenCLIP's SigLIP initial scale and bias.
    pub fn model_config(&self) -> Result<ClipConfig> {
        let mut cfg = crate::model::resolve_model(Some(&self.model), self.model_config.as_deref())?;
        if let Some(p) = self.force_patch_dropout {
            if cfg.is_resnet() && p > 0.0 {
                return Err(
                    ConfigError::invalid("force_patch_dropout", p, "0 or unset for a ResNet image tower").into()
                );
            }
            cfg.vision_cfg.patch_dropout = p;
        }
        if self.loss == LossKind::Filip {
            cfg.validate_for_filip()?;
        }
        if cfg.is_coca() {
            let refusals = [
                ("loss", self.loss != LossKind::Clip, "clip for CoCa (its contrastive half is CLIP's loss)"),
                ("grad_checkpointing", self.grad_checkpointing, "false for CoCa"),
                ("force_patch_dropout", self.force_patch_dropout.is_some_and(|p| p > 0.0), "0 or unset for CoCa"),
                ("lock_text", self.lock_text, "false for CoCa (OpenCLIP's CoCa has no text lock)"),
                ("lock_image_unlocked_groups", self.lock_image_unlocked_groups > 0, "0 for CoCa"),
            ];
            for (key, refused, allowed) in refusals {
                if refused {
                    return Err(ConfigError::invalid(key, "set", allowed).into());
                }
            }
        }
        if cfg.is_resnet() && self.lock_image_unlocked_groups > 0 {
            return Err(ConfigError::invalid(
                "lock_image_unlocked_groups",
                self.lock_image_unlocked_groups,
                "0 for a ResNet image tower (OpenCLIP locks it whole)",
            )
            .into());
        }
        Ok(match self.loss {
            LossKind::Siglip if cfg.init_logit_bias.is_none() => cfg.with_siglip_init(),
            _ => cfg,
        })
    }

    /// The blockwise loss's tile sizes.
    pub fn loss_blocks(&self) -> crate::loss::blockwise::BlockSizes {
        crate::loss::blockwise::BlockSizes::tiles(self.loss_block_rows, self.loss_block_cols.unwrap_or(i64::MAX))
    }

    /// `csv_separator` as one character (`\t` is a tab).
    pub fn csv_separator_char(&self) -> Result<char, ConfigError> {
        let text = match self.csv_separator.as_str() {
            "\\t" | "tab" => "\t",
            other => other,
        };
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(ConfigError::invalid("csv_separator", &self.csv_separator, "one character, or \\t for a tab")),
        }
    }

    /// Which towers are locked.
    pub fn lock_spec(&self) -> crate::model::lock::LockSpec {
        crate::model::lock::LockSpec {
            image: self.lock_image,
            image_unlocked_groups: self.lock_image_unlocked_groups,
            text: self.lock_text,
            text_unlocked_layers: self.lock_text_unlocked_layers,
        }
    }

    /// Pairs per worker per step: `batch_size × accum_freq`.
    pub fn local_batch(&self) -> i64 {
        self.batch_size * self.accum_freq
    }

    /// Checks every value, naming the first bad key and what it accepts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model_config.is_none() && !PRESET_NAMES.contains(&self.model.as_str()) {
            return Err(ConfigError::invalid("model", &self.model, PRESET_NAMES.join(", ")));
        }
        let at_least_one = [
            ("batch_size", self.batch_size),
            ("steps", self.steps),
            ("log_every", self.log_every),
            ("accum_freq", self.accum_freq),
            ("loss_block_rows", self.loss_block_rows),
        ];
        for (key, v) in at_least_one {
            if v < 1 {
                return Err(ConfigError::invalid(key, v, "an integer >= 1"));
            }
        }
        let non_negative = [
            ("warmup", self.warmup),
            ("checkpoint_every", self.checkpoint_every),
            ("eval_every", self.eval_every),
            ("threads", self.threads),
            ("check_params_every", self.check_params_every),
        ];
        for (key, v) in non_negative {
            if v < 0 {
                return Err(ConfigError::invalid(key, v, "an integer >= 0"));
            }
        }
        if self.eval_samples < 2 {
            return Err(ConfigError::invalid("eval_samples", self.eval_samples, "an integer >= 2"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConfigError::invalid("lr", self.lr, "a finite number > 0"));
        }
        for (key, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(ConfigError::invalid(key, v, "a number in [0, 1)"));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(ConfigError::invalid("eps", self.eps, "a finite number > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(ConfigError::invalid("weight_decay", self.weight_decay, "a finite number >= 0"));
        }
        if let Some(c) = self.grad_clip_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(ConfigError::invalid("grad_clip_norm", c, "a finite number > 0, or unset"));
            }
        }
        if let Some(n) = self.train_num_samples {
            if n < self.batch_size as u64 {
                return Err(ConfigError::invalid(
                    "train_num_samples",
                    n,
                    format!("at least batch_size ({})", self.batch_size),
                ));
            }
        }
        if self.train_data.is_none() && (self.dataset_resampled || self.train_data_upsampling_factors.is_some()) {
            return Err(ConfigError::invalid(
                "train_data",
                "unset",
                "shard URLs (dataset_resampled and train_data_upsampling_factors apply to shards)",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_skip_fraction) {
            return Err(ConfigError::invalid("max_skip_fraction", self.max_skip_fraction, "a number in [0, 1]"));
        }
        if self.shuffle_window < 1 {
            return Err(ConfigError::invalid("shuffle_window", self.shuffle_window, "an integer >= 1"));
        }
        if self.data_partitions == Some(0) {
            return Err(ConfigError::invalid("data_partitions", 0, "an integer >= 1 dividing batch_size, or unset"));
        }
        if self.metrics_host.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                "metrics_host",
                &self.metrics_host,
                "an IP address, such as 0.0.0.0 or 127.0.0.1",
            ));
        }
        if self.output.to_string_lossy().contains("://") {
            return Err(ConfigError::invalid(
                "output",
                self.output.display(),
                "a file-system path, local or mounted (NFS, Lustre, …); to write checkpoints to an object store, set checkpoint_dir to its URL",
            ));
        }
        if let Some(dir) = self.checkpoint_dir.as_deref() {
            let scheme = dir.split_once("://").map(|(s, _)| s);
            let stores = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "file"];
            if dir.is_empty() || scheme.is_some_and(|s| !stores.contains(&s)) {
                return Err(ConfigError::invalid(
                    "checkpoint_dir",
                    dir,
                    "a folder, or an s3://, gs:// or az:// URL (bucket and prefix)",
                ));
            }
        }
        if self.max_nonfinite_skips < 0 {
            return Err(ConfigError::invalid("max_nonfinite_skips", self.max_nonfinite_skips, "an integer >= 0"));
        }
        if !["stop", "rollback"].contains(&self.on_nonfinite.as_str()) {
            return Err(ConfigError::invalid("on_nonfinite", &self.on_nonfinite, "stop or rollback"));
        }
        if !["auto", "webdataset", "csv"].contains(&self.dataset_type.as_str()) {
            return Err(ConfigError::invalid("dataset_type", &self.dataset_type, "auto, webdataset or csv"));
        }
        self.csv_separator_char()?;
        for (key, value, lock, lock_key) in [
            ("lock_image_unlocked_groups", self.lock_image_unlocked_groups, self.lock_image, "lock_image"),
            ("lock_text_unlocked_layers", self.lock_text_unlocked_layers, self.lock_text, "lock_text"),
        ] {
            if value < 0 {
                return Err(ConfigError::invalid(key, value, "an integer >= 0"));
            }
            if value > 0 && !lock {
                return Err(ConfigError::invalid(key, value, format!("0 unless {lock_key} = true")));
            }
        }
        if let Some(p) = self.force_patch_dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(ConfigError::invalid("force_patch_dropout", p, "a number in [0, 1)"));
            }
        }
        if self.lock_image_freeze_bn_stats && !self.lock_image {
            return Err(ConfigError::invalid("lock_image_freeze_bn_stats", true, "false unless lock_image = true"));
        }
        if let Some(path) = &self.pretrained {
            if !path.is_file() {
                return Err(ConfigError::invalid("pretrained", path.display(), "an existing safetensors file"));
            }
        }
        if self.zero_shot_data.is_some() && self.loss == LossKind::Filip {
            return Err(ConfigError::invalid(
                "zero_shot_data",
                "set",
                "unset with loss = filip (zero-shot on labelled images scores pooled embeddings; FILIP runs evaluate retrieval and the synthetic zero-shot with token-wise scores)",
            ));
        }
        if self.zero_shot_data.is_some() {
            crate::eval::zero_shot::templates(&self.zero_shot_templates, "zero_shot_templates")?;
        } else if self.zero_shot_classnames.is_some() {
            return Err(ConfigError::invalid("zero_shot_classnames", "set", "only with zero_shot_data"));
        }
        if let Some(targets) = &self.report_to {
            for target in targets.split(',').map(str::trim) {
                if target != "tensorboard" {
                    return Err(ConfigError::invalid("report_to", targets, "tensorboard"));
                }
            }
        }
        if self.job_name.is_empty() {
            return Err(ConfigError::invalid("job_name", "", "a non-empty label value"));
        }
        if self.prefetch < 1 {
            return Err(ConfigError::invalid("prefetch", self.prefetch, "an integer >= 1"));
        }
        if let Some(c) = self.loss_block_cols {
            if c < 1 {
                return Err(ConfigError::invalid("loss_block_cols", c, "an integer >= 1, or unset"));
            }
        }
        if self.grad_bucket_mb < 1 {
            return Err(ConfigError::invalid("grad_bucket_mb", self.grad_bucket_mb, "an integer >= 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "batch_size = 4\nlearning_rate = 0.1\n").unwrap();
        let err = TrainConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }

    fn parse_error(toml_text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        TrainConfig::from_toml_file(&path).unwrap_err().to_string()
    }

    #[test]
    fn bad_value_names_key_and_allowed_values() {
        let err = parse_error("lr_scheduler = \"step\"\n");
        assert!(err.contains("lr_scheduler") && err.contains("cosine") && err.contains("const"), "{err}");
        let err = parse_error("device = \"tpu\"\n");
        assert!(err.contains("device") && err.contains("cuda:N"), "{err}");
        let err = parse_error("precision = \"fp16\"\n");
        assert!(err.contains("precision") && err.contains("amp_bf16"), "{err}");
        let err = parse_error("loss = \"infonce\"\n");
        assert!(err.contains("loss") && err.contains("siglip"), "{err}");
        let err = parse_error("dist_backend = \"gloo\"\n");
        assert!(err.contains("dist_backend") && err.contains("mpi"), "{err}");
        let err = parse_error("caption_key = \"json\"\n");
        assert!(err.contains("caption_key") && err.contains("json:FIELD"), "{err}");
    }

    /// The flags parse as `clipfleet train` declares them (a clap `Args` of the overrides).
    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        overrides: TrainOverrides,
    }

    fn apply(args: &[&str], mut cfg: TrainConfig) -> TrainConfig {
        use clap::Parser;
        let flags = Flags::try_parse_from(std::iter::once("train").chain(args.iter().copied())).unwrap();
        flags.overrides.apply(&mut cfg);
        cfg
    }

    #[test]
    fn flags_override_their_keys() {
        let cfg = apply(
            &["--tf32", "false", "--dataset-resampled", "--lr", "0.01", "--grad-clip-norm", "1"],
            TrainConfig::default(),
        );
        assert!(!cfg.tf32 && cfg.dataset_resampled && cfg.fused_adamw);
        assert_eq!((cfg.lr, cfg.grad_clip_norm), (0.01, Some(1.0)));
        let cfg = apply(
            &["--tf32", "--precision", "pure_bf16", "--device", "cuda:1"],
            TrainConfig { tf32: false, ..Default::default() },
        );
        assert!(cfg.tf32);
        assert_eq!((cfg.precision, cfg.device), (PrecisionMode::PureBf16, DeviceSpec::Cuda(1)));
        // --model names the preset to train, over a model_config from the file.
        let file = TrainConfig { model_config: Some("m.json".into()), ..Default::default() };
        assert_eq!(apply(&["--model", "small"], file.clone()).model_config, None);
        assert_eq!(apply(&["--batch-size", "4"], file.clone()).model_config, file.model_config);
        assert_eq!(apply(&[], file.clone()), file);
    }

    /// Checkpoints written before `dist_backend` was a type may spell it in capitals.
    #[test]
    fn dist_backend_parses_as_before() {
        let cfg: TrainConfig = toml::from_str("dist_backend = \" NCCL\"\n").unwrap();
        assert_eq!(cfg.dist_backend, BackendChoice::Nccl);
        assert!(toml::to_string(&cfg).unwrap().contains("dist_backend = \"nccl\""));
    }

    #[test]
    fn typed_values_keep_their_config_spelling() {
        let text = "lr_scheduler = \"const\"\nprecision = \"pure_bf16\"\ndevice = \"cuda:1\"\nloss = \"siglip\"\n\
                    dist_backend = \"mpi\"\ncaption_key = \"json:caption\"\n";
        let cfg: TrainConfig = toml::from_str(text).unwrap();
        let back = toml::to_string(&cfg).unwrap();
        for line in text.lines() {
            assert!(back.contains(line), "{line} missing from {back}");
        }
    }

    /// Issue 16's model options are checked by name: patch dropout's range, FILIP's towers and
    /// its zero-shot data, the ResNet's whole-tower lock, and what CoCa cannot do.
    #[test]
    fn model_options_name_the_bad_key() {
        let err = |cfg: TrainConfig| match cfg.validate() {
            Err(e) => e.to_string(),
            Ok(()) => cfg.model_config().unwrap_err().to_string(),
        };
        let e = err(TrainConfig { force_patch_dropout: Some(1.5), ..Default::default() });
        assert!(e.contains("force_patch_dropout") && e.contains("[0, 1)"), "{e}");
        let e = err(TrainConfig { model: "tiny-rn".into(), force_patch_dropout: Some(0.5), ..Default::default() });
        assert!(e.contains("force_patch_dropout") && e.contains("ResNet"), "{e}");
        let e = err(TrainConfig { model: "tiny-rn".into(), loss: LossKind::Filip, ..Default::default() });
        assert!(e.contains("loss") && e.contains("ViT patch tokens"), "{e}");
        let e = err(TrainConfig { loss: LossKind::Filip, zero_shot_data: Some("x.csv".into()), ..Default::default() });
        assert!(e.contains("zero_shot_data") && e.contains("filip"), "{e}");
        let e = err(TrainConfig {
            model: "tiny-rn".into(),
            lock_image: true,
            lock_image_unlocked_groups: 1,
            ..Default::default()
        });
        assert!(e.contains("lock_image_unlocked_groups") && e.contains("ResNet"), "{e}");
        let e = err(TrainConfig { model: "tiny-coca".into(), force_patch_dropout: Some(0.5), ..Default::default() });
        assert!(e.contains("force_patch_dropout") && e.contains("CoCa"), "{e}");
        TrainConfig { model: "tiny-coca".into(), ..Default::default() }.model_config().unwrap();
    }
}
