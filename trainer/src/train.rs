//! The training loop of one worker: data → towers → gathered contrastive loss → gradient
//! all-reduce → AdamW, with periodic logging, checkpoints and evaluation, and exact resume.
//! With one worker the collectives are the identity; with W workers each reads its rows of
//! the global batch and the step equals the one-process step over the whole batch
//! (see [`crate::step`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clipfleet_dataloader::loader::{Loader, LoaderConfig, LoaderState};
use clipfleet_dataloader::rng::Rng;
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::synthetic::SyntheticDataset;
use indicatif::ProgressBar;
use tch::Kind;

use crate::checkpoint::{self, Checkpoint, CheckpointState, RngState, FORMAT_VERSION};
use crate::config::TrainConfig;
use crate::data::{
    images_to_device, normalize_images, tokenizer_for, tokens_to_tensor, DataPosition, SyntheticStream,
    SyntheticStreamConfig, TrainStream,
};
use crate::device::resolve_device;
use crate::dist::{self, Backend, LaunchMode, ProcessGroup, ReduceOp, WorldInfo};
use crate::error::{ConfigError, Result, TrainError};
use crate::eval::{evaluate, evaluate_shards, EvalReport};
use crate::metrics::{Metrics, StepObservation};
use crate::model::Clip;
use crate::optim::AdamW;
use crate::precision::Precision;
use crate::step::{all_gather_bytes, broadcast_parameters, check_parameters_agree, ContrastiveStep};

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest committed checkpoint of the run folder; start fresh if there is none.
    Latest,
    /// A checkpoint folder or a run folder, which must hold a committed checkpoint.
    Path(PathBuf),
}

impl Resume {
    /// Parses `--resume`: `latest` or a path.
    pub fn parse(s: &str) -> Self {
        if s == "latest" {
            Resume::Latest
        } else {
            Resume::Path(PathBuf::from(s))
        }
    }
}

/// Options that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Resume point.
    pub resume: Option<Resume>,
    /// A progress bar to advance (hidden when not on a terminal).
    pub progress: Option<ProgressBar>,
    /// This worker was restarted by `clipfleet launch` (`CLIPFLEET_RESTART_COUNT` > 0): a
    /// `--resume PATH` then yields to the newest checkpoint of `output`, when there is one,
    /// so that a restart continues the run instead of starting over from PATH.
    pub restarted: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed.
    pub step: i64,
    /// Training loss at the last logged step (the mean over the ranks).
    pub last_loss: f64,
    /// The final evaluation (rank 0 evaluates; `None` on the other ranks).
    pub eval: Option<EvalReport>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// Training throughput of the whole job (global batches) over this process's steps.
    pub samples_per_second: f64,
    /// This worker's rank and the world size.
    pub world: WorldInfo,
}

/// Samples per epoch of the synthetic training split when `train_num_samples` is unset.
pub const SYNTHETIC_EPOCH: u64 = 1_000_000;

const TORCH_SEED_STREAM: u64 = 0x7463_685f_7365_6564; // "tch_seed"

/// Seeds libtorch's generator for micro-batch `micro` of `step` from (seed, step, micro), so
/// stochastic ops replay identically in gradient caching's second forward pass and after a
/// resume, without storing generator state.
fn seed_micro_batch(seed: u64, step: i64, micro: i64) {
    let s = Rng::from_key(&[seed, step as u64, TORCH_SEED_STREAM, micro as u64]).next_u64();
    tch::manual_seed((s >> 1) as i64);
}

/// The backend for `cfg.dist_backend` in `world`: an explicit name, else
/// `CLIPFLEET_DIST_BACKEND` (set by `clipfleet launch`), else single for one worker, MPI
/// under an MPI launcher, NCCL on a GPU.
fn choose_backend(cfg: &TrainConfig, world: &WorldInfo, device: tch::Device) -> Result<Backend> {
    let named = match cfg.dist_backend.as_str() {
        "auto" => std::env::var("CLIPFLEET_DIST_BACKEND").ok().filter(|v| !v.is_empty()),
        other => Some(other.to_owned()),
    };
    if let Some(name) = named {
        let backend = name.parse::<Backend>()?;
        if backend == Backend::Nccl && device == tch::Device::Cpu {
            return Err(ConfigError::invalid(
                "device",
                &cfg.device,
                "cuda or auto with the nccl backend (NCCL moves CUDA tensors); for CPU workers use \
                 `clipfleet launch --backend mpi` or dist_backend = \"mpi\"",
            )
            .into());
        }
        return Ok(backend);
    }
    Ok(match (world.world_size, world.mode, device) {
        (1, _, _) => Backend::Single,
        // On GPUs NCCL, under MPI too (the unique id then goes by an MPI broadcast).
        (_, _, tch::Device::Cuda(_)) => Backend::Nccl,
        (_, LaunchMode::Mpi, _) => Backend::Mpi,
        _ => {
            return Err(ConfigError::invalid(
                "dist_backend",
                "auto",
                format!(
                    "nccl (on GPUs) or mpi: {} CPU workers ({} launch) need MPI; start them with \
                     `clipfleet launch --backend mpi` or mpirun",
                    world.world_size, world.mode
                ),
            )
            .into())
        }
    })
}

fn find_resume(cfg: &TrainConfig, resume: Option<&Resume>, restarted: bool) -> Result<Option<Checkpoint>> {
    let dir = match resume {
        None => return Ok(None),
        Some(Resume::Path(p)) if restarted && cfg.output.exists() && checkpoint::resolve(&cfg.output)?.is_some() => {
            tracing::info!(
                resume = %p.display(),
                output = %cfg.output.display(),
                "restarted: resuming from the run's newest checkpoint instead of --resume"
            );
            checkpoint::resolve(&cfg.output)?
        }
        Some(Resume::Latest) => {
            if !cfg.output.exists() {
                None
            } else {
                checkpoint::resolve(&cfg.output)?
            }
        }
        Some(Resume::Path(p)) => Some(checkpoint::resolve(p)?.ok_or_else(|| TrainError::Checkpoint {
            path: p.clone(),
            reason: "holds no committed checkpoint".into(),
        })?),
    };
    match dir {
        None => {
            tracing::info!(output = %cfg.output.display(), "no checkpoint to resume from; starting from scratch");
            Ok(None)
        }
        Some(dir) => Ok(Some(Checkpoint::open(&dir)?)),
    }
}

fn write_json_atomic(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Pipeline(e.to_string()))?;
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

/// Trains this worker according to `cfg`, on `train_data` shards or the synthetic data.
/// The worker finds its rank and the world from its environment (DESIGN §1: `clipfleet
/// launch`, torchrun's variables, mpirun, Slurm or Kubernetes); one process needs nothing.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    cfg.validate()?;
    let world = dist::env::detect_from_env()?;
    let mut device = resolve_device(&cfg.device)?;
    if let (tch::Device::Cuda(_), true) = (device, world.world_size > 1) {
        device = dist::cuda_device_for(&world);
    }
    let backend = choose_backend(cfg, &world, device)?;
    tracing::info!(backend = %backend, ?device, "process group");
    let group = dist::init(backend, &world)?;
    if group.world_size() == 1 {
        return train_in_group(cfg, opts, &world, device, group.as_ref());
    }
    // With several workers, a failure on one must end the job: returning (or unwinding) would
    // finalise the process group, which waits for the other ranks, blocked in a collective.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_in_group(cfg, opts, &world, device, group.as_ref())
    }));
    let message = match outcome {
        Ok(Ok(summary)) => return Ok(summary),
        Ok(Err(err)) => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()),
    };
    let (rank, world_size) = (group.rank(), group.world_size());
    tracing::error!(error = %message, "worker failed; aborting the job so that the other workers do not wait for it");
    eprintln!("error: worker rank {rank} of {world_size} failed: {message}");
    dist::error_file::record(rank, &message);
    group.abort(1)
}

/// The training loop of this worker in `group`.
fn train_in_group(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    world: &WorldInfo,
    device: tch::Device,
    group: &dyn ProcessGroup,
) -> Result<TrainSummary> {
    let (rank, world_size) = (group.rank(), group.world_size());
    let main = rank == 0;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    } else if world.local_world_size > 1 && device == tch::Device::Cpu {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        tch::set_num_threads((cores / world.local_world_size).max(1) as i32);
    }
    let model_cfg = cfg.model_config()?;
    let scheduler = cfg.scheduler()?;
    let loss_kind = cfg.loss_kind()?;
    let precision = Precision::resolve(&cfg.precision, device)?;
    precision.configure(cfg.tf32)?;
    let global_batch = cfg.local_batch() * world_size as i64;
    let resume = find_resume(cfg, opts.resume.as_ref(), opts.restarted)?;
    agree_on_resume(group, resume.as_ref().map(|ck| ck.state.step), device)?;
    if let Some(ck) = &resume {
        if ck.state.model_config != model_cfg {
            return Err(TrainError::Checkpoint {
                path: ck.dir.clone(),
                reason: format!(
                    "was written for a different model ({}); pass the same --model/--model-config/--loss or another --output",
                    serde_json::to_string(&ck.state.model_config).unwrap_or_default()
                ),
            });
        }
        let old = &ck.state.train_config;
        let old_global = ck.state.global_batch.unwrap_or(old.batch_size * old.accum_freq);
        if old.seed != cfg.seed || old_global != global_batch {
            tracing::warn!(
                checkpoint_global_batch = old_global,
                global_batch,
                "seed or global batch differs from the checkpoint's: the data order will not continue exactly"
            );
        }
    }

    let tokenizer = tokenizer_for(&model_cfg, cfg.vocab.as_deref())?;
    tch::manual_seed(cfg.seed as i64);
    let mut model = Clip::new(&model_cfg, device)?;
    model.set_parameter_kind(precision.parameter_kind());
    let mut optimizer = AdamW::new(model.named_parameters(), cfg.adamw());
    let (mut step, mut position, mut shards_position) = (0i64, DataPosition::default(), None);
    if let Some(ck) = &resume {
        ck.load_model(&mut model)?;
        ck.load_optimizer(&mut optimizer)?;
        step = ck.state.step;
        position = ck.state.data;
        shards_position = ck.state.shards.clone();
        tracing::info!(checkpoint = %ck.dir.display(), step, epoch = position.epoch, samples_in_epoch = position.samples_in_epoch, "resumed");
    }
    // Rank 0's parameters everywhere (the same already, from the shared seed or checkpoint;
    // this makes it so whatever the hardware's initialisation kernels do).
    broadcast_parameters(group, &model)?;
    let rank_failure = crate::fault::rank_failure();

    if main {
        std::fs::create_dir_all(&cfg.output).map_err(|source| TrainError::Io { path: cfg.output.clone(), source })?;
        write_json_atomic(&cfg.output.join("config.json"), cfg)?;
    }

    let params: i64 = model.named_parameters().iter().map(|(_, t)| t.numel() as i64).sum();
    tracing::info!(
        model = %cfg.model_config.as_ref().map(|p| p.display().to_string()).unwrap_or(cfg.model.clone()),
        parameters = params,
        loss = %cfg.loss,
        precision = precision.name(),
        micro_batch = cfg.batch_size,
        accum_freq = cfg.accum_freq,
        global_batch,
        steps = cfg.steps,
        "training"
    );

    let image_size = model_cfg.vision_cfg.image_size as u32;
    let ctx = model_cfg.text_cfg.context_length;
    let store = match (&cfg.train_data, &cfg.val_data) {
        (None, None) => None,
        _ => Some(Arc::new(ShardStore::new(ShardStoreOptions::default())?)),
    };
    let mut stream = match (&cfg.train_data, &store) {
        (Some(urls), Some(store)) => {
            let spec = cfg.data_spec(urls, world.local_world_size)?;
            if resume.is_some() && shards_position.is_none() {
                tracing::warn!("the checkpoint holds no shard position: the shard data starts from the beginning");
            }
            let loader_cfg = LoaderConfig::training(
                &spec,
                store,
                world_size,
                rank,
                global_batch as usize,
                cfg.seed,
                image_size,
                ctx as usize,
                shards_position.as_ref(),
            )?;
            tracing::info!(
                shards = loader_cfg.shards.len(),
                partitions = loader_cfg.partitions,
                steps_per_epoch = loader_cfg.steps_per_epoch.unwrap_or(0),
                decode_threads = loader_cfg.decode_threads,
                "training data"
            );
            let loader = Loader::new(loader_cfg, Arc::clone(store), tokenizer.clone(), shards_position.clone())?;
            TrainStream::Shards(Box::new(loader))
        }
        _ => TrainStream::Synthetic(SyntheticStream::start(
            SyntheticStreamConfig {
                image_size,
                seed: cfg.seed,
                batch_size: global_batch as usize,
                world_size,
                rank,
                num_samples: cfg.train_num_samples.unwrap_or(SYNTHETIC_EPOCH),
                context_length: ctx as usize,
                prefetch: cfg.prefetch,
            },
            tokenizer.clone(),
            position,
        )?),
    };
    let metrics = Metrics::new(&cfg.job_name, rank as u32)?;
    if let Some(port) = cfg.metrics_port {
        let host: std::net::IpAddr = cfg.metrics_host.parse().map_err(|_| {
            ConfigError::invalid("metrics_host", &cfg.metrics_host, "an IP address, such as 0.0.0.0 or 127.0.0.1")
        })?;
        // One exporter per worker: the workers of a node take consecutive ports.
        let port = if port == 0 { 0 } else { port + world.local_rank as u16 };
        let addr = metrics.serve(std::net::SocketAddr::new(host, port))?;
        tracing::info!(address = %format!("http://{addr}/metrics"), "serving Prometheus metrics");
    }
    if resume.is_some() {
        metrics.record_restart();
    }
    let bytes_read = store.as_ref().map(|s| s.bytes_read());
    let mut bytes_reported = 0u64;
    let val_data = SyntheticDataset::new(image_size, cfg.seed);
    // The validation loss depends on the batch it is computed over: batch_size × world_size
    // pairs, so that it does not depend on how a global batch is spread over workers.
    let eval_batch = cfg.batch_size * world_size as i64;
    let run_eval = |model: &Clip, step: i64| -> Result<EvalReport> {
        match (&cfg.val_data, &store) {
            (Some(urls), Some(store)) => {
                let spec = cfg.data_spec(urls, 1)?;
                let loader_cfg = LoaderConfig::evaluation(&spec, eval_batch as usize, image_size, ctx as usize)?;
                evaluate_shards(model, loader_cfg, Arc::clone(store), tokenizer.clone(), cfg.eval_samples, step)
            }
            _ => evaluate(model, &val_data, tokenizer.as_ref(), cfg.eval_samples, eval_batch, step),
        }
    };
    // Rank 0 evaluates; the others wait for it, so the ranks leave together.
    let eval_on_main = |model: &Clip, step: i64| -> Result<Option<EvalReport>> {
        let report = if main {
            let report = run_eval(model, step)?;
            metrics.set_eval(&report);
            log_eval(&report);
            Some(report)
        } else {
            None
        };
        group.barrier()?;
        Ok(report)
    };
    let state_at = |step: i64, position: DataPosition, shards: Option<LoaderState>| CheckpointState {
        format_version: FORMAT_VERSION,
        step,
        data: position,
        shards,
        rng: RngState { kind: "counter".into(), seed: cfg.seed, step },
        train_config: cfg.clone(),
        model_config: model_cfg.clone(),
        world_size: Some(world_size),
        global_batch: Some(global_batch),
        clipfleet_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let contrastive = ContrastiveStep {
        precision,
        group,
        loss: loss_kind,
        blocks: cfg.loss_blocks(),
        bucket_bytes: cfg.grad_bucket_mb << 20,
    };

    let progress = opts.progress.as_ref().filter(|_| main);
    if let Some(pb) = progress {
        pb.set_length(cfg.steps as u64);
        pb.set_position(step as u64);
    }
    let started = Instant::now();
    let first_step = step;
    let (mut window_start, mut window_wait, mut window_steps) = (Instant::now(), 0.0f64, 0i64);
    let mut last_loss = f64::NAN;
    while step < cfg.steps {
        if rank_failure == Some((rank, step)) {
            return Err(TrainError::Pipeline(format!("injected fault: rank {rank} fails at step {step}")));
        }
        let lr = scheduler.lr(cfg.lr, cfg.warmup, cfg.steps, step);
        let wait_start = Instant::now();
        let batch = stream.next_batch()?;
        let waited = wait_start.elapsed().as_secs_f64();
        window_wait += waited;
        metrics.observe_data_wait(waited);
        // uint8 on the device; normalised one micro-batch at a time.
        let images = images_to_device(&batch.images, device);
        let tokens = tokens_to_tensor(&batch.tokens, ctx, device);
        optimizer.zero_grad();
        let out = contrastive.backward(&model, &images, &normalize_images, &tokens, cfg.accum_freq, &|micro| {
            seed_micro_batch(cfg.seed, step, micro)
        })?;
        drop((images, tokens));
        metrics.observe_all_gather(out.times.all_gather);
        metrics.observe_all_reduce(out.times.all_reduce);
        let grad_norm = optimizer.clip_grad_norm(cfg.grad_clip_norm);
        let optimizer_start = Instant::now();
        optimizer.step(lr);
        metrics.observe_optimizer(optimizer_start.elapsed().as_secs_f64());
        model.clamp_logit_scale();
        position = batch.position_after;
        shards_position = batch.shards_after;
        step += 1;
        window_steps += 1;
        if let Some(pb) = progress {
            pb.set_position(step as u64);
        }
        if cfg.check_params_every > 0 && step % cfg.check_params_every == 0 {
            check_parameters_agree(group, &model, step)?;
        }

        let checkpoint_now = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step != cfg.steps;
        if step % cfg.log_every == 0 || step == cfg.steps || checkpoint_now {
            // The only host synchronisation in the loop: the loss, averaged over the ranks.
            let mut loss = out.loss.to_kind(Kind::Double).view([1]);
            group.all_reduce(&mut loss, ReduceOp::Avg)?;
            last_loss = loss.double_value(&[0]);
            if !last_loss.is_finite() {
                return Err(TrainError::NonFiniteLoss { step, loss: last_loss });
            }
            let elapsed = window_start.elapsed().as_secs_f64();
            let samples_per_second = (window_steps * global_batch) as f64 / elapsed;
            let logit_scale = model.logit_scale().double_value(&[]).exp();
            let grad_norm = grad_norm.to_kind(Kind::Double).double_value(&[]);
            if main {
                tracing::info!(
                    step,
                    loss = format_args!("{last_loss:.4}"),
                    lr = format_args!("{lr:.3e}"),
                    logit_scale = format_args!("{logit_scale:.2}"),
                    grad_norm = format_args!("{grad_norm:.3}"),
                    samples_per_second = format_args!("{samples_per_second:.1}"),
                    data_wait_fraction = format_args!("{:.3}", window_wait / elapsed),
                    "train"
                );
            }
            metrics.observe_step(&StepObservation {
                step: step as u64,
                steps: window_steps as u64,
                samples: (window_steps * global_batch) as u64,
                seconds: elapsed,
                loss: last_loss,
                logit_scale,
                learning_rate: lr,
                grad_norm: Some(grad_norm),
            });
            if let Some(total) = &bytes_read {
                let now = total.load(std::sync::atomic::Ordering::Relaxed);
                metrics.add_bytes_read(now.saturating_sub(bytes_reported));
                bytes_reported = now;
            }
            if let Some(skips) = stream.skips() {
                metrics.sync_skips(&skips);
                if skips.total() > 0 {
                    let by_reason: Vec<String> = skips.snapshot().iter().map(|(r, n)| format!("{r}={n}")).collect();
                    tracing::info!(skipped = skips.total(), by_reason = %by_reason.join(","), "data skips so far");
                }
            }
            if let Some(pb) = progress {
                pb.set_message(format!("loss {last_loss:.3} · {samples_per_second:.0} samples/s"));
            }
            (window_start, window_wait, window_steps) = (Instant::now(), 0.0, 0);
        }
        if checkpoint_now {
            let shards = merge_shard_states(group, shards_position.as_ref(), device)?;
            commit_checkpoint(cfg, group, &model, &optimizer, &state_at(step, position, shards), &metrics)?;
        }
        if cfg.eval_every > 0 && step % cfg.eval_every == 0 && step != cfg.steps {
            eval_on_main(&model, step)?;
        }
    }
    let trained = step - first_step;
    let samples_per_second = (trained * global_batch) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    drop(stream);

    let checkpoint = match (trained, &resume) {
        (0, Some(ck)) => ck.dir.clone(),
        _ => {
            let shards = merge_shard_states(group, shards_position.as_ref(), device)?;
            commit_checkpoint(cfg, group, &model, &optimizer, &state_at(step, position, shards), &metrics)?
        }
    };
    let eval = eval_on_main(&model, step)?;
    if let Some(report) = &eval {
        write_json_atomic(&cfg.output.join("eval.json"), report)?;
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    Ok(TrainSummary { step, last_loss, eval, checkpoint, samples_per_second, world: world.clone() })
}

/// Checks that every rank resumes from the same step (`None`: from scratch): each reads the
/// checkpoint from `output`, which must therefore be the same folder on every node.
fn agree_on_resume(group: &dyn ProcessGroup, step: Option<i64>, device: tch::Device) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    let mine = tch::Tensor::from_slice(&[step.map_or(-1.0, |s| s as f64)]).to_device(device);
    let all = Vec::<f64>::try_from(group.all_gather(&mine)?.to_device(tch::Device::Cpu))
        .map_err(|e| TrainError::Pipeline(e.to_string()))?;
    let show = |s: f64| if s < 0.0 { "no checkpoint (a fresh start)".to_owned() } else { format!("step {s}") };
    if let Some((rank, &s)) = all.iter().enumerate().find(|&(_, &s)| s != all[0]) {
        return Err(TrainError::Pipeline(format!(
            "the workers disagree on where to resume: rank {rank} found {}, rank 0 {}; every worker reads \
             --output, so it must be a folder that all nodes see (a shared filesystem)",
            show(s),
            show(all[0])
        )));
    }
    Ok(())
}

/// The whole job's shard position: every rank holds the cursors of its own partitions; rank
/// 0 gets them all, merged (`None` elsewhere, and for synthetic data).
fn merge_shard_states(
    group: &dyn ProcessGroup,
    local: Option<&LoaderState>,
    device: tch::Device,
) -> Result<Option<LoaderState>> {
    let Some(local) = local else { return Ok(None) };
    if group.world_size() == 1 {
        return Ok(Some(local.clone()));
    }
    let bytes = serde_json::to_vec(local).map_err(|e| TrainError::Pipeline(e.to_string()))?;
    let all = all_gather_bytes(group, &bytes, device)?;
    if group.rank() != 0 {
        return Ok(None);
    }
    let states = all
        .iter()
        .map(|b| serde_json::from_slice::<LoaderState>(b).map_err(|e| TrainError::Pipeline(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(LoaderState::merge(&states)?))
}

/// Writes and commits a checkpoint on rank 0 (the parameters and optimizer state are the same
/// on every rank), logs how long it took, and holds every rank until it is committed.
fn commit_checkpoint(
    cfg: &TrainConfig,
    group: &dyn ProcessGroup,
    model: &Clip,
    optimizer: &AdamW,
    state: &CheckpointState,
    metrics: &Metrics,
) -> Result<PathBuf> {
    let t = Instant::now();
    let dir = if group.rank() == 0 {
        let dir = checkpoint::save(&cfg.output, model, optimizer, state, cfg.keep_checkpoints)?;
        let seconds = t.elapsed().as_secs_f64();
        metrics.observe_checkpoint(seconds);
        tracing::info!(step = state.step, path = %dir.display(), seconds = format_args!("{seconds:.2}"), "checkpoint");
        dir
    } else {
        checkpoint::checkpoints_dir(&cfg.output).join(format!("step_{}", state.step))
    };
    group.barrier()?;
    Ok(dir)
}

/// Logs an evaluation report.
pub fn log_eval(r: &EvalReport) {
    tracing::info!(
        step = r.step,
        zero_shot_top1 = format_args!("{:.3}", r.zero_shot_top1.unwrap_or(f64::NAN)),
        zero_shot_top5 = format_args!("{:.3}", r.zero_shot_top5.unwrap_or(f64::NAN)),
        image_to_text_r1 = format_args!("{:.3}", r.image_to_text_r1),
        text_to_image_r1 = format_args!("{:.3}", r.text_to_image_r1),
        val_loss = format_args!("{:.4}", r.val_loss),
        classes = r.num_classes,
        samples = r.num_samples,
        "eval"
    );
}
