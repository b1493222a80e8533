//! Starting a run: the device and process group, the resume point every rank agrees on, the
//! learner (loaded from the checkpoint when resuming), the training stream, the metrics
//! exporter and the evaluation plan.

use std::sync::Arc;
use std::time::Instant;

use clipfleet_dataloader::loader::{Loader, LoaderConfig, LoaderState};
use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};
use clipfleet_dataloader::synthetic::stream::{SyntheticStream, SyntheticStreamConfig};
use clipfleet_dataloader::tokenizer::Tokenizer;

use super::report::ReportWindow;
use super::{commit, Learner, Resume, Run, TrainOptions, SYNTHETIC_EPOCH};
use crate::checkpoint::{self, Checkpoint, CheckpointDir, CheckpointState, RngState, FORMAT_VERSION};
use crate::config::TrainConfig;
use crate::data::{tokenizer_for, DataPosition, TrainStream};
use crate::device::resolve_device;
use crate::dist::{self, Backend, LaunchMode, ProcessGroup, WorldInfo};
use crate::error::{ConfigError, Result, TrainError};
use crate::eval::zero_shot::LabelledSet;
use crate::eval::EvalPlan;
use crate::metrics::Metrics;
use crate::model::ClipConfig;

/// This worker's device: the configured one; with several workers on GPUs, the GPU of its
/// local rank.
pub(super) fn worker_device(cfg: &TrainConfig, world: &WorldInfo) -> Result<tch::Device> {
    let device = resolve_device(cfg.device)?;
    Ok(match device {
        tch::Device::Cuda(_) if world.world_size > 1 => dist::cuda_device_for(world),
        other => other,
    })
}

/// The backend for `cfg.dist_backend` in `world`: an explicit name, else
/// `CLIPFLEET_DIST_BACKEND` (set by `clipfleet launch`), else single for one worker, NCCL on a
/// GPU, MPI under an MPI launcher, and tcp for other CPU workers.
pub(super) fn choose_backend(cfg: &TrainConfig, world: &WorldInfo, device: tch::Device) -> Result<Backend> {
    let named = match cfg.dist_backend.backend() {
        Some(backend) => Some(backend),
        None => match std::env::var("CLIPFLEET_DIST_BACKEND").ok().filter(|v| !v.is_empty()) {
            Some(name) => Some(name.parse::<Backend>()?),
            None => None,
        },
    };
    if let Some(backend) = named {
        if backend == Backend::Nccl && device == tch::Device::Cpu {
            return Err(ConfigError::invalid(
                "device",
                cfg.device,
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
        // CPU workers that no MPI launcher started (one per Kubernetes pod, torchrun's variables).
        _ => Backend::Tcp,
    })
}

/// libtorch's intra-op threads: the configured number, else the cores split between a
/// node's CPU workers.
fn configure_threads(cfg: &TrainConfig, world: &WorldInfo, device: tch::Device) {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    } else if world.local_world_size > 1 && device == tch::Device::Cpu {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        tch::set_num_threads((cores / world.local_world_size).max(1) as i32);
    }
}

/// The run's local folder for checkpoints on their way to or from an object store.
pub(super) fn scratch_dir(cfg: &TrainConfig) -> std::path::PathBuf {
    cfg.output.join(".clipfleet")
}

/// The checkpoint to resume from, if any.
fn find_resume(
    cfg: &TrainConfig,
    checkpoints: &CheckpointDir,
    resume: Option<&Resume>,
    restarted: bool,
) -> Result<Option<Checkpoint>> {
    let newest_of_output = || checkpoints.newest();
    let dir = match resume {
        None => None,
        Some(Resume::Latest) => newest_of_output()?,
        Some(Resume::Path(p)) => match if restarted { newest_of_output()? } else { None } {
            Some(own) => {
                tracing::info!(
                    resume = %p.display(),
                    output = %cfg.output.display(),
                    "restarted: resuming from the run's newest checkpoint instead of --resume"
                );
                Some(own)
            }
            None => Some(checkpoint::find(p)?.ok_or_else(|| TrainError::Checkpoint {
                path: p.clone(),
                reason: "holds no committed checkpoint".into(),
            })?),
        },
    };
    match dir {
        None => {
            if resume.is_some() {
                tracing::info!(output = %cfg.output.display(), "no checkpoint to resume from; starting from scratch");
            }
            Ok(None)
        }
        Some(found) => Ok(Some(found.open(&scratch_dir(cfg))?)),
    }
}

/// Checks that every rank resumes from the same step (`None`: from scratch): each reads the
/// checkpoint from `output`, which must therefore be the same folder on every node.
fn agree_on_resume(group: &dyn ProcessGroup, step: Option<i64>, device: tch::Device) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    let mine = tch::Tensor::from_slice(&[step.map_or(-1.0, |s| s as f64)]).to_device(device);
    let all = Vec::<f64>::try_from(group.all_gather(&mine)?.to_device(tch::Device::Cpu))?;
    let show = |s: f64| if s < 0.0 { "no checkpoint (a fresh start)".to_owned() } else { format!("step {s}") };
    match all.iter().enumerate().find(|&(_, &s)| s != all[0]) {
        Some((rank, &s)) => Err(TrainError::ResumeMismatch { rank, found: show(s), rank0: show(all[0]) }),
        None => Ok(()),
    }
}

/// Refuses a checkpoint of another model; warns when the data order cannot continue exactly.
fn check_checkpoint_fits(ck: &Checkpoint, cfg: &TrainConfig, model_cfg: &ClipConfig, global_batch: i64) -> Result<()> {
    if ck.state.model_config != *model_cfg {
        return Err(TrainError::Checkpoint {
            path: ck.source.clone().into(),
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
    Ok(())
}

/// Where a resumed run's data stream continues.
pub(super) struct StartPosition {
    pub(super) step: i64,
    pub(super) data: DataPosition,
    pub(super) shards: Option<LoaderState>,
}

impl<'g> Run<'g> {
    /// Sets up the run of this worker in `group`: resume point, learner, data, metrics.
    pub fn start(
        cfg: &TrainConfig,
        opts: &TrainOptions,
        world: &WorldInfo,
        device: tch::Device,
        group: &'g dyn ProcessGroup,
    ) -> Result<Self> {
        configure_threads(cfg, world, device);
        let model_cfg = cfg.model_config()?;
        let global_batch = cfg.local_batch() * group.world_size() as i64;
        let checkpoints = CheckpointDir::of_run(cfg)?;
        let resume = find_resume(cfg, &checkpoints, opts.resume.as_ref(), opts.restarted)?;
        agree_on_resume(group, resume.as_ref().map(|ck| ck.state.step), device)?;
        if let Some(ck) = &resume {
            check_checkpoint_fits(ck, cfg, &model_cfg, global_batch)?;
        }
        let tokenizer = tokenizer_for(&model_cfg, cfg.vocab.as_deref())?;
        let mut learner = Learner::new(cfg, &model_cfg, device, group)?;
        let mut at = StartPosition { step: 0, data: DataPosition::default(), shards: None };
        match (&resume, &cfg.pretrained) {
            (None, Some(path)) => {
                let loaded = learner.parts_mut().0.load_pretrained(path)?;
                tracing::info!(pretrained = %path.display(), ?loaded, "starting from pretrained weights (a fresh optimizer and schedule)");
            }
            (Some(_), Some(path)) => {
                tracing::info!(pretrained = %path.display(), "resuming from a checkpoint: pretrained weights not loaded");
            }
            _ => {}
        }
        if let Some(ck) = &resume {
            let (model, optimizer) = learner.parts_mut();
            ck.load_model(model)?;
            ck.load_optimizer(optimizer)?;
            at = StartPosition { step: ck.state.step, data: ck.state.data, shards: ck.state.shards.clone() };
            tracing::info!(checkpoint = %ck.source, step = at.step, epoch = at.data.epoch, samples_in_epoch = at.data.samples_in_epoch, "resumed");
        }
        // Rank 0's parameters everywhere (the same already, from the shared seed or checkpoint;
        // this makes it so whatever the hardware's initialisation kernels do).
        crate::step::broadcast_parameters(group, learner.model())?;
        if group.rank() == 0 {
            std::fs::create_dir_all(&cfg.output)
                .map_err(|source| TrainError::Io { path: cfg.output.clone(), source })?;
            commit::write_json_atomic(&cfg.output.join("config.json"), cfg)?;
        }
        log_start(cfg, &learner, global_batch);
        let store = match (&cfg.train_data, &cfg.val_data) {
            (None, None) => None,
            _ => Some(Arc::new(ShardStore::new(ShardStoreOptions::default())?)),
        };
        if resume.is_some() && cfg.train_data.is_some() && at.shards.is_none() {
            tracing::warn!("the checkpoint holds no shard position: the shard data starts from the beginning");
        }
        let data = open_stream(cfg, world, group, &model_cfg, store.as_ref(), Arc::clone(&tokenizer), &at)?;
        let metrics = start_metrics(cfg, world, group.rank())?;
        metrics.set_worker(&worker_identity(world, device), group.world_size(), cfg.steps);
        if resume.is_some() {
            metrics.record_restart();
        }
        if let Some(count) = slurm_restart_count() {
            metrics.set_slurm_restart_count(count);
            tracing::info!(slurm_restart_count = count, job_id = %std::env::var("SLURM_JOB_ID").unwrap_or_default(), "Slurm job, restart {count}");
        }
        let progress = opts.progress.clone().filter(|_| group.rank() == 0);
        if let Some(pb) = &progress {
            pb.set_length(cfg.steps as u64);
            pb.set_position(at.step as u64);
        }
        let image_size = model_cfg.vision_cfg.image_size as u32;
        let eval = EvalPlan::for_run(cfg, image_size, group.world_size());
        if let (Some((spec, _)), 0) = (&eval.zero_shot, group.rank()) {
            // A bad zero_shot_data fails now, not at the first evaluation hours later.
            let set = LabelledSet::open(spec, "zero_shot_data", "zero_shot_classnames")?;
            tracing::info!(data = %spec.data, classes = set.classnames.len(), templates = %spec.templates, "zero-shot classification at each evaluation");
        }
        Ok(Run {
            cfg: cfg.clone(),
            world: world.clone(),
            group,
            device,
            learner,
            data: Some(data),
            tokenizer,
            store,
            eval,
            metrics,
            window: ReportWindow::new(),
            boundary: opts.boundary.clone(),
            progress,
            step: at.step,
            first_step: at.step,
            position: at.data,
            shards: at.shards,
            resumed_from: resume.map(|ck| std::path::PathBuf::from(ck.source)),
            checkpoints,
            last_loss: f64::NAN,
            started: Instant::now(),
            ended: None,
            faults: super::Faults {
                fail: crate::fault::rank_failure(),
                stop: crate::fault::stop_request(),
                nan: crate::fault::nan_loss(),
            },
            nonfinite_streak: 0,
            rollbacks: 0,
            stop_counted: false,
            tensorboard: open_tensorboard(cfg, group.rank())?,
        })
    }

    /// `state.json` of a checkpoint of the current step.
    pub(super) fn checkpoint_state(&self, shards: Option<LoaderState>) -> CheckpointState {
        CheckpointState {
            format_version: FORMAT_VERSION,
            step: self.step,
            data: self.position,
            shards,
            rng: RngState { kind: "counter".into(), seed: self.cfg.seed, step: self.step },
            train_config: self.cfg.clone(),
            model_config: self.learner.model().config().clone(),
            world_size: Some(self.group.world_size()),
            global_batch: Some(self.global_batch()),
            clipfleet_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

fn log_start(cfg: &TrainConfig, learner: &Learner<'_>, global_batch: i64) {
    let params: i64 = learner.model().named_parameters().iter().map(|(_, t)| t.numel() as i64).sum();
    tracing::info!(
        model = %cfg.model_config.as_ref().map(|p| p.display().to_string()).unwrap_or(cfg.model.clone()),
        parameters = params,
        loss = %cfg.loss,
        precision = learner.precision().name(),
        micro_batch = cfg.batch_size,
        accum_freq = cfg.accum_freq,
        global_batch,
        steps = cfg.steps,
        "training"
    );
}

/// The training stream: the shard loader on `train_data`, else the synthetic stream, each
/// from where the run stands.
pub(super) fn open_stream(
    cfg: &TrainConfig,
    world: &WorldInfo,
    group: &dyn ProcessGroup,
    model_cfg: &ClipConfig,
    store: Option<&Arc<ShardStore>>,
    tokenizer: Arc<dyn Tokenizer>,
    at: &StartPosition,
) -> Result<TrainStream> {
    let (rank, world_size) = (group.rank(), group.world_size());
    let global_batch = cfg.local_batch() as usize * world_size;
    let image_size = model_cfg.vision_cfg.image_size as u32;
    let ctx = model_cfg.text_cfg.context_length as usize;
    if let (Some(urls), Some(store)) = (&cfg.train_data, store) {
        let spec = cfg.data_spec(urls, world.local_world_size)?;
        let loader_cfg = LoaderConfig::training(
            &spec,
            store,
            world_size,
            rank,
            global_batch,
            cfg.seed,
            image_size,
            ctx,
            at.shards.as_ref(),
        )?;
        tracing::info!(
            shards = loader_cfg.shards.len(),
            partitions = loader_cfg.partitions,
            samples = loader_cfg.shards.iter().map(|s| s.samples).sum::<Option<u64>>(),
            steps_per_epoch = loader_cfg.steps_per_epoch.unwrap_or(0),
            decode_threads = loader_cfg.decode_threads,
            "training data"
        );
        let loader = Loader::new(loader_cfg, Arc::clone(store), tokenizer, at.shards.clone())?;
        return Ok(TrainStream::Shards(Box::new(loader)));
    }
    let stream_cfg = SyntheticStreamConfig {
        image_size,
        seed: cfg.seed,
        batch_size: global_batch,
        world_size,
        rank,
        num_samples: cfg.train_num_samples.unwrap_or(SYNTHETIC_EPOCH),
        context_length: ctx,
        prefetch: cfg.prefetch,
    };
    Ok(TrainStream::Synthetic(SyntheticStream::start(stream_cfg, tokenizer, at.data)?))
}

/// Rank 0's TensorBoard event file in `OUTPUT/tensorboard/`, with `report_to = "tensorboard"`.
fn open_tensorboard(cfg: &TrainConfig, rank: usize) -> Result<Option<crate::tensorboard::EventWriter>> {
    let wanted = cfg.report_to.as_deref().is_some_and(|t| t.split(',').any(|t| t.trim() == "tensorboard"));
    if !wanted || rank != 0 {
        return Ok(None);
    }
    let dir = cfg.output.join("tensorboard");
    let writer =
        crate::tensorboard::EventWriter::create(&dir).map_err(|source| TrainError::Io { path: dir, source })?;
    tracing::info!(path = %writer.path().display(), "writing TensorBoard events");
    Ok(Some(writer))
}

/// Where this worker runs, for `clipfleet_worker_info`.
fn worker_identity(world: &WorldInfo, device: tch::Device) -> crate::metrics::WorkerIdentity {
    let (device_name, gpu_uuid) = match device {
        tch::Device::Cuda(i) => (format!("cuda:{i}"), crate::device::gpu_uuid(i).unwrap_or_default()),
        tch::Device::Cpu => ("cpu".to_owned(), String::new()),
        other => (format!("{other:?}").to_lowercase(), String::new()),
    };
    crate::metrics::WorkerIdentity {
        local_rank: world.local_rank,
        node: crate::device::host_name(),
        device: device_name,
        gpu_uuid,
    }
}

/// `SLURM_RESTART_COUNT` (the times Slurm requeued this job; unset before the first requeue):
/// `Some(0)` in a Slurm job that never restarted, `None` outside Slurm.
fn slurm_restart_count() -> Option<u32> {
    match std::env::var("SLURM_RESTART_COUNT") {
        Ok(count) => count.trim().parse().ok(),
        Err(_) => std::env::var_os("SLURM_JOB_ID").map(|_| 0),
    }
}

/// The metrics of this worker, served over HTTP when `metrics_port` is set (the workers of
/// a node take consecutive ports).
fn start_metrics(cfg: &TrainConfig, world: &WorldInfo, rank: usize) -> Result<Metrics> {
    let metrics = Metrics::new(&cfg.job_name, rank as u32)?;
    if let Some(port) = cfg.metrics_port {
        let host: std::net::IpAddr = cfg.metrics_host.parse().map_err(|_| {
            ConfigError::invalid("metrics_host", &cfg.metrics_host, "an IP address, such as 0.0.0.0 or 127.0.0.1")
        })?;
        let port = if port == 0 { 0 } else { port + world.local_rank as u16 };
        let addr = metrics.serve(std::net::SocketAddr::new(host, port))?;
        tracing::info!(address = %format!("http://{addr}/metrics"), "serving Prometheus metrics");
    }
    Ok(metrics)
}
