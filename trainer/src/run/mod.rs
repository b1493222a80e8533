//! The training run of one worker, as a type: [`Run::start`] sets it up (config, process
//! group, resume), then the loop of [`train`] (`run_to_end`) reads as one page — a step, the step boundary
//! every rank agrees on, and the periodic report, checkpoint and evaluation.
//!
//! With one worker the collectives are the identity; with W workers each reads its rows of
//! the global batch and the step equals the one-process step over the whole batch
//! ([`crate::step`]).
//!
//! # Where features plug in
//! [`boundary::StepBoundary`] is the point between two steps where every rank agrees: a stop
//! request (preemption: checkpoint, then end; [`signals`] sets it from SIGTERM, SIGINT and the
//! checkpoint signal), a non-finite loss (end with an error) and a
//! heartbeat (a watchdog's view of progress). [`TrainOptions::boundary`] hands a run its
//! stop request and heartbeat.

pub mod boundary;
mod commit;
pub mod learner;
mod report;
pub mod signals;
mod start;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clipfleet_dataloader::loader::LoaderState;
use clipfleet_dataloader::store::ShardStore;
use clipfleet_dataloader::tokenizer::Tokenizer;
use indicatif::ProgressBar;
use tch::Tensor;

use crate::config::TrainConfig;
use crate::data::{images_to_device, DataPosition, TrainStream};
use crate::dist::{self, ProcessGroup, WorldInfo};
use crate::error::{Result, TrainError};
use crate::eval::{log_eval, EvalPlan, EvalReport};
use crate::metrics::Metrics;
use crate::step::DeviceBatch;
pub use boundary::{Decision, Heartbeat, StepBoundary, StopCause, StopRequest};
pub use learner::{Learner, StepOutcome};
use report::ReportWindow;
pub use signals::{StopSignal, EXIT_CHECKPOINTED};

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
    /// The run's stop request and heartbeat.
    pub boundary: StepBoundary,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed.
    pub step: i64,
    /// Training loss at the last logged step (the mean over the ranks).
    pub last_loss: f64,
    /// The final evaluation (rank 0 evaluates; `None` on the other ranks, and when the run
    /// stopped early on request).
    pub eval: Option<EvalReport>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// Training throughput of the whole job (global batches) over this process's steps.
    pub samples_per_second: f64,
    /// The run ended at a step boundary on a stop request, before its last step.
    pub stopped: bool,
    /// This worker's rank and the world size.
    pub world: WorldInfo,
}

/// Samples per epoch of the synthetic training split when `train_num_samples` is unset.
pub const SYNTHETIC_EPOCH: u64 = 1_000_000;

/// One worker's training run.
#[derive(Debug)]
pub struct Run<'g> {
    cfg: TrainConfig,
    world: WorldInfo,
    group: &'g dyn ProcessGroup,
    device: tch::Device,
    learner: Learner<'g>,
    /// `None` once the loop is over: the producers stop before the final checkpoint.
    data: Option<TrainStream>,
    tokenizer: Arc<dyn Tokenizer>,
    store: Option<Arc<ShardStore>>,
    /// Where checkpoints go (`checkpoint_dir`, else `OUTPUT/checkpoints`).
    checkpoints: crate::checkpoint::CheckpointDir,
    eval: EvalPlan,
    metrics: Metrics,
    window: ReportWindow,
    boundary: StepBoundary,
    progress: Option<ProgressBar>,
    /// Optimizer steps completed.
    step: i64,
    first_step: i64,
    position: DataPosition,
    shards: Option<LoaderState>,
    resumed_from: Option<PathBuf>,
    last_loss: f64,
    started: Instant,
    /// When the training loop ended, for the throughput.
    ended: Option<Instant>,
    /// The test faults (`CLIPFLEET_FAULT`), read once.
    faults: Faults,
    /// This worker's stop request is in `clipfleet_stop_requests_total`.
    stop_counted: bool,
    /// Steps skipped in a row for a non-finite loss or gradient.
    nonfinite_streak: i64,
    /// Rollbacks to the last checkpoint so far.
    rollbacks: u32,
    /// Rank 0's TensorBoard event file (`report_to = "tensorboard"`).
    tensorboard: Option<crate::tensorboard::EventWriter>,
}

/// The `fail-on-rank-R:N`, `stop-on-rank-R:N` and `nan-on-rank-R:N` test faults of
/// [`crate::fault`]; the last fires once.
#[derive(Debug, Clone, Copy)]
struct Faults {
    fail: Option<(usize, i64)>,
    stop: Option<(usize, i64)>,
    nan: Option<(usize, i64)>,
}

/// Rollbacks one process makes before a non-finite streak stops the run: a blow-up that
/// comes back after each rollback is not transient.
pub const MAX_ROLLBACKS: u32 = 3;

/// Trains this worker according to `cfg`, on `train_data` shards or the synthetic data.
/// The worker finds its rank and the world from its environment (DESIGN §1: `clipfleet
/// launch`, torchrun's variables, mpirun, Slurm or Kubernetes); one process needs nothing.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    cfg.validate()?;
    let world = dist::env::detect_from_env()?;
    let device = start::worker_device(cfg, &world)?;
    let backend = start::choose_backend(cfg, &world, device)?;
    tracing::info!(backend = %backend, ?device, "process group");
    let group = dist::init(backend, &world)?;
    let group: Box<dyn ProcessGroup> = if group.world_size() > 1 && cfg.collective_timeout > 0 {
        let dir = cfg.output.join(".clipfleet").join("heartbeats");
        let timeout = std::time::Duration::from_secs(cfg.collective_timeout);
        Box::new(dist::watchdog::WatchedGroup::new(group, &dir, timeout, opts.boundary.heartbeat.clone())?)
    } else {
        group
    };
    if group.world_size() == 1 {
        return run_to_end(cfg, opts, &world, device, group.as_ref());
    }
    // With several workers, a failure on one must end the job: returning (or unwinding) would
    // finalise the process group, which waits for the other ranks, blocked in a collective.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_to_end(cfg, opts, &world, device, group.as_ref())
    }));
    let message = match outcome {
        Ok(Ok(summary)) => return Ok(summary),
        Ok(Err(err)) => error_chain(&err),
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

/// The training loop.
fn run_to_end(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    world: &WorldInfo,
    device: tch::Device,
    group: &dyn ProcessGroup,
) -> Result<TrainSummary> {
    let mut run = Run::start(cfg, opts, world, device, group)?;
    while !run.done() {
        let (outcome, decision) = run.step()?;
        if decision.non_finite && run.after_nonfinite(&outcome)? {
            continue;
        }
        if run.report_due() {
            run.report(&outcome)?;
        }
        if decision.stop && !run.done() {
            tracing::info!(step = run.step, "stop requested: checkpointing and ending the run at this step");
            return run.finish_early();
        }
        if run.checkpoint_due() {
            run.checkpoint()?;
        }
        if run.eval_due() {
            run.evaluate()?;
        }
    }
    run.finish()
}

impl<'g> Run<'g> {
    /// Whether the run has completed its steps.
    pub fn done(&self) -> bool {
        self.step >= self.cfg.steps
    }

    /// Runs the next optimizer step on the next batch of the stream, with the step boundary's
    /// agreement ([`StepBoundary`]) between its gradients and its update.
    pub fn step(&mut self) -> Result<(StepOutcome, Decision)> {
        if self.faults.fail == Some((self.group.rank(), self.step)) {
            return Err(TrainError::InjectedFault { rank: self.group.rank(), step: self.step });
        }
        if self.faults.stop == Some((self.group.rank(), self.step)) {
            self.boundary.stop.request();
        }
        if let (Some(cause), false) = (self.boundary.stop.cause(), self.stop_counted) {
            self.metrics.record_stop_request(cause.label());
            self.stop_counted = true;
        }
        let inject_nan = self.faults.nan == Some((self.group.rank(), self.step));
        if inject_nan {
            self.faults.nan = None;
            tracing::warn!(step = self.step + 1, "clipfleet-fault: this rank's loss reads NaN");
        }
        let wait = Instant::now();
        let data = self.data.as_mut().ok_or(TrainError::DataEnded)?;
        let batch = data.next_batch()?;
        self.window.waited(wait.elapsed().as_secs_f64(), &self.metrics);
        let model = self.learner.model();
        let on_device = DeviceBatch {
            images: images_to_device(&batch.images, self.device),
            tokens: model.text_input(&batch.tokens),
        };
        let (boundary, group, next) = (&self.boundary, self.group, self.step + 1);
        let (outcome, decision) = self.learner.step_agreed(self.step, on_device, |loss, grad_norm| {
            let nan = Tensor::from(f32::NAN).to_device(loss.device());
            boundary.agree(group, next, if inject_nan { &nan } else { loss }, grad_norm)
        })?;
        self.metrics.observe_all_gather(outcome.times.all_gather);
        self.metrics.observe_all_reduce(outcome.times.all_reduce);
        self.metrics.observe_optimizer(outcome.optimizer_seconds);
        self.position = batch.position_after;
        self.shards = batch.shards_after;
        self.step = outcome.step;
        self.window.stepped();
        if let Some(pb) = &self.progress {
            pb.set_position(self.step as u64);
        }
        if decision.non_finite {
            self.nonfinite_streak += 1;
        } else {
            self.nonfinite_streak = 0;
        }
        if self.cfg.check_params_every > 0 && self.step % self.cfg.check_params_every == 0 {
            crate::step::check_parameters_agree(self.group, self.learner.model(), self.step)?;
        }
        Ok((outcome, decision))
    }

    /// After a step whose update every rank skipped (a non-finite loss or gradient on some
    /// rank): counts and logs it, and past `max_nonfinite_skips` in a row, goes back to the
    /// last checkpoint (`on_nonfinite = "rollback"`, returning `true`) or ends the run with
    /// an error naming the step.
    ///
    /// # Errors
    /// [`TrainError::NonFiniteLoss`] when the streak is over the limit and the run stops (or
    /// has no checkpoint to go back to, or has rolled back [`MAX_ROLLBACKS`] times).
    pub fn after_nonfinite(&mut self, outcome: &StepOutcome) -> Result<bool> {
        self.metrics.record_nonfinite_skip();
        let loss = outcome.loss.double_value(&[]);
        let grad_norm = outcome.grad_norm.double_value(&[]);
        tracing::warn!(
            step = outcome.step,
            loss,
            grad_norm,
            in_a_row = self.nonfinite_streak,
            limit = self.cfg.max_nonfinite_skips,
            "a loss or gradient is not finite on some rank: every rank skipped this step's update"
        );
        if self.nonfinite_streak <= self.cfg.max_nonfinite_skips {
            return Ok(false);
        }
        let stop = |why: String| TrainError::NonFiniteLoss { step: outcome.step, loss, why };
        if self.cfg.on_nonfinite != "rollback" {
            return Err(stop(format!(
                "{} steps in a row (max_nonfinite_skips = {}); on_nonfinite = \"rollback\" would go back to the last checkpoint instead",
                self.nonfinite_streak, self.cfg.max_nonfinite_skips
            )));
        }
        if self.rollbacks >= MAX_ROLLBACKS {
            return Err(stop(format!(
                "{} steps in a row after {MAX_ROLLBACKS} rollbacks: not transient",
                self.nonfinite_streak
            )));
        }
        let Some(found) = self.checkpoints.newest()? else {
            return Err(stop(format!(
                "{} steps in a row, and no checkpoint to roll back to yet",
                self.nonfinite_streak
            )));
        };
        self.rollback(&found)?;
        Ok(true)
    }

    /// Goes back to the committed checkpoint `dir`: its weights, optimizer state, step and data
    /// position, on every rank (they all decide to, at the same step).
    fn rollback(&mut self, found: &crate::checkpoint::Found) -> Result<()> {
        let ck = found.open(&start::scratch_dir(&self.cfg))?;
        let from = self.step;
        {
            let (model, optimizer) = self.learner.parts_mut();
            ck.load_model(model)?;
            ck.load_optimizer(optimizer)?;
        }
        crate::step::broadcast_parameters(self.group, self.learner.model())?;
        self.data = None;
        let at = start::StartPosition { step: ck.state.step, data: ck.state.data, shards: ck.state.shards.clone() };
        let model_cfg = self.cfg.model_config()?;
        self.data = Some(start::open_stream(
            &self.cfg,
            &self.world,
            self.group,
            &model_cfg,
            self.store.as_ref(),
            Arc::clone(&self.tokenizer),
            &at,
        )?);
        self.step = at.step;
        self.position = at.data;
        self.shards = at.shards;
        self.nonfinite_streak = 0;
        self.rollbacks += 1;
        self.metrics.record_nonfinite_rollback();
        tracing::warn!(from, to = self.step, checkpoint = %ck.source, rollback = self.rollbacks, "rolled back to the last checkpoint after non-finite steps");
        if let Some(pb) = &self.progress {
            pb.set_position(self.step as u64);
        }
        Ok(())
    }

    fn report_due(&self) -> bool {
        self.step % self.cfg.log_every == 0 || self.done() || self.checkpoint_due()
    }

    fn checkpoint_due(&self) -> bool {
        self.cfg.checkpoint_every > 0 && self.step % self.cfg.checkpoint_every == 0 && !self.done()
    }

    fn eval_due(&self) -> bool {
        self.cfg.eval_every > 0 && self.step % self.cfg.eval_every == 0 && !self.done()
    }

    /// Logs the window of steps since the last report and updates the metrics; the loss is
    /// averaged over the ranks (a collective: every rank reports at the same steps).
    pub fn report(&mut self, outcome: &StepOutcome) -> Result<()> {
        let global_batch = self.global_batch();
        let reported = self.window.report(outcome, &self.learner, self.group, &self.metrics, global_batch)?;
        self.last_loss = reported.loss;
        self.write_scalars(outcome.step, &reported.scalars());
        if let tch::Device::Cuda(i) = self.device {
            if let Ok((allocated, reserved)) = crate::shim::cuda_memory(i) {
                self.metrics.set_gpu_memory(allocated, reserved);
            }
        }
        let bytes_read = self.store.as_ref().map(|s| s.bytes_read().load(std::sync::atomic::Ordering::Relaxed));
        if let Some(data) = &self.data {
            self.window.sync_data(&self.metrics, data, bytes_read);
        }
        if let Some(pb) = &self.progress {
            pb.set_message(format!("loss {:.3} · {:.0} samples/s", self.last_loss, self.window.last_rate()));
        }
        Ok(())
    }

    /// Commits a checkpoint of the current step (rank 0 writes; every rank waits for it).
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        let shards = commit::merge_shard_states(self.group, self.shards.as_ref(), self.device)?;
        let state = self.checkpoint_state(shards);
        commit::commit_checkpoint(&self.cfg, &self.checkpoints, self.group, &self.learner, &state, &self.metrics)
    }

    /// Evaluates the current weights on rank 0 while the other ranks wait, so the ranks
    /// leave together, and appends the report to `results.jsonl`; `None` on the other ranks.
    pub fn evaluate(&mut self) -> Result<Option<EvalReport>> {
        let report = if self.group.rank() == 0 {
            let report =
                self.eval.evaluate(self.learner.model(), Arc::clone(&self.tokenizer), self.store.clone(), self.step)?;
            self.metrics.set_eval(&report);
            log_eval(&report);
            commit::append_json_line(&self.cfg.output.join("results.jsonl"), &report)?;
            self.write_scalars(report.step, &eval_scalars(&report));
            Some(report)
        } else {
            None
        };
        self.group.barrier()?;
        Ok(report)
    }

    /// Ends a run that completed its steps: the final checkpoint (unless the run resumed
    /// at its last step and trained none), the final evaluation into `eval.json`.
    pub fn finish(mut self) -> Result<TrainSummary> {
        self.end_loop();
        let checkpoint = match (&self.resumed_from, self.step == self.first_step) {
            (Some(dir), true) => dir.clone(),
            _ => self.checkpoint()?,
        };
        let eval = self.evaluate()?;
        if let Some(report) = &eval {
            commit::write_json_atomic(&self.cfg.output.join("eval.json"), report)?;
        }
        Ok(self.summary(checkpoint, eval, false))
    }

    /// Ends a run at a stop request: a checkpoint of the current step, no evaluation.
    pub fn finish_early(mut self) -> Result<TrainSummary> {
        self.end_loop();
        let checkpoint = self.checkpoint()?;
        Ok(self.summary(checkpoint, None, true))
    }

    /// Writes TensorBoard scalars (rank 0, with `report_to = "tensorboard"`). A write that
    /// fails is logged and ends the event file, never the run.
    fn write_scalars(&mut self, step: i64, values: &[(&str, f64)]) {
        if let Some(writer) = &mut self.tensorboard {
            if let Err(e) = writer.scalars(step, values) {
                tracing::error!(path = %writer.path().display(), "cannot write TensorBoard events: {e}; no more will be written");
                self.tensorboard = None;
            }
        }
    }

    /// Stops the data producers and the throughput clock.
    fn end_loop(&mut self) {
        self.ended = Some(Instant::now());
        self.data = None;
    }

    fn summary(self, checkpoint: PathBuf, eval: Option<EvalReport>, stopped: bool) -> TrainSummary {
        let trained = self.step - self.first_step;
        let ended = self.ended.unwrap_or_else(Instant::now);
        let seconds = ended.duration_since(self.started).as_secs_f64().max(1e-9);
        if let Some(pb) = &self.progress {
            pb.finish_and_clear();
        }
        TrainSummary {
            step: self.step,
            last_loss: self.last_loss,
            eval,
            checkpoint,
            samples_per_second: (trained * self.global_batch()) as f64 / seconds,
            stopped,
            world: self.world.clone(),
        }
    }

    /// Pairs per optimizer step over all workers.
    fn global_batch(&self) -> i64 {
        self.cfg.local_batch() * self.group.world_size() as i64
    }
}

/// An evaluation's scalars under OpenCLIP's TensorBoard tags (`val/…`).
fn eval_scalars(report: &EvalReport) -> Vec<(&'static str, f64)> {
    let mut values = vec![
        ("val/image_to_text_R@1", report.image_to_text_r1),
        ("val/image_to_text_R@5", report.image_to_text_r5),
        ("val/image_to_text_R@10", report.image_to_text_r10),
        ("val/text_to_image_R@1", report.text_to_image_r1),
        ("val/text_to_image_R@5", report.text_to_image_r5),
        ("val/text_to_image_R@10", report.text_to_image_r10),
        ("val/clip_val_loss", report.val_loss),
    ];
    if let (Some(top1), Some(top5)) = (report.zero_shot_top1, report.zero_shot_top5) {
        values.extend([("val/zeroshot-top1", top1), ("val/zeroshot-top5", top5)]);
    }
    if let Some(recall) = report.zero_shot_mean_per_class_recall {
        values.push(("val/zeroshot-mean-per-class-recall", recall));
    }
    values
}

/// An error and its sources, joined with `: `.
fn error_chain(err: &TrainError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
