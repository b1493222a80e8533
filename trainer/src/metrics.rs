//! Prometheus metrics of a training process (DESIGN §7), and the `/metrics` endpoint that
//! serves them.
//!
//! [`Metrics`] owns a private registry whose every series carries the constant labels `job`
//! and `rank`; the training loop calls its plain methods ([`Metrics::observe_step`],
//! [`Metrics::observe_data_wait`], [`Metrics::sync_skips`], ...) and [`Metrics::serve`] answers
//! scrapes on a background thread. Names follow Prometheus conventions: base units (seconds,
//! bytes, ratios in 0..=1), `_total` on counters, prefix `clipfleet_`.
//!
//! # Scraping
//! Prometheus attaches its own target label `job` (the scrape job's name) to every series, and
//! by default renames a scraped `job` label to `exported_job`. Set `honor_labels: true` on the
//! scrape job to keep clipfleet's `job` and `rank`, as `trainer/tests/metrics.rs` does with a
//! real Prometheus server.

mod http;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use clipfleet_dataloader::skip::{SkipCounts, SkipReason};
use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::eval::EvalReport;
use crate::{Result, TrainError};

/// Bucket bounds, in seconds, of the per-step timing histograms (0.5 ms to 5 min).
pub const STEP_BUCKETS: [f64; 18] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0];

/// Bucket bounds, in seconds, of `clipfleet_checkpoint_seconds` (50 ms to 1 h).
pub const CHECKPOINT_BUCKETS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];

/// The `k` values of `clipfleet_eval_retrieval_recall{direction,k}`.
pub const RECALL_K: [u32; 3] = [1, 5, 10];

/// The `direction` values of `clipfleet_eval_retrieval_recall{direction,k}`.
pub const RECALL_DIRECTIONS: [&str; 2] = ["image_to_text", "text_to_image"];

/// The `signal` values of `clipfleet_stop_requests_total{signal}` (`none`: a request made by
/// the program, as the `stop-on-rank` test fault does).
pub const STOP_SIGNAL_LABELS: [&str; 6] = ["SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "none"];

/// Where a worker runs, for `clipfleet_worker_info`: the labels that join its series to a
/// node's and a GPU's (the DCGM exporter labels its series with `Hostname` and the GPU's `UUID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The rank on its node.
    pub local_rank: usize,
    /// The host name of the node (the pod name on Kubernetes).
    pub node: String,
    /// The device it trains on: `cpu`, `cuda:0`, …
    pub device: String,
    /// The GPU's UUID as `nvidia-smi -L` and the DCGM exporter print it (`GPU-…`); empty on the CPU.
    pub gpu_uuid: String,
}

/// What the optimizer steps since the last observation did, for [`Metrics::observe_step`].
/// The training loop reads the loss back only every `log_every` steps (no host sync per
/// step), so one observation covers that window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepObservation {
    /// The optimizer step just completed (`clipfleet_step`).
    pub step: u64,
    /// Optimizer steps covered (at least 1).
    pub steps: u64,
    /// Samples this rank trained on in those steps (added to `clipfleet_samples_total`).
    pub samples: u64,
    /// Wall time of those steps, in seconds (each step is observed in `clipfleet_step_seconds`
    /// at the window's mean; with `samples` it gives `clipfleet_samples_per_second`).
    pub seconds: f64,
    /// The training loss (`clipfleet_loss`).
    pub loss: f64,
    /// The logit scale, exponentiated as it multiplies the logits (`clipfleet_logit_scale`).
    pub logit_scale: f64,
    /// The learning rate used in the step (`clipfleet_learning_rate`).
    pub learning_rate: f64,
    /// The gradient norm before clipping (`clipfleet_grad_norm`), when it was computed.
    pub grad_norm: Option<f64>,
}

/// The metrics of one training process (one rank); see the [module docs](self).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    job: String,
    rank: u32,
    step: IntGauge,
    samples_total: IntCounter,
    samples_per_second: Gauge,
    loss: Gauge,
    logit_scale: Gauge,
    learning_rate: Gauge,
    grad_norm: Gauge,
    step_seconds: Histogram,
    data_wait_seconds: Histogram,
    all_gather_seconds: Histogram,
    all_reduce_seconds: Histogram,
    optimizer_seconds: Histogram,
    checkpoint_seconds: Histogram,
    /// One counter per [`SkipReason::ALL`] entry, in that order.
    samples_skipped: Vec<IntCounter>,
    samples_not_downloaded: IntCounter,
    /// The [`SkipCounts`] values last added, in [`SkipReason::ALL`] order, then the rows not
    /// downloaded.
    skips_synced: Mutex<[u64; SkipReason::ALL.len() + 1]>,
    shard_bytes_read: IntCounter,
    restarts: IntCounter,
    nonfinite_skips: IntCounter,
    nonfinite_rollbacks: IntCounter,
    /// `[SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, none]`, in [`STOP_SIGNAL_LABELS`] order.
    stop_requests: Vec<IntCounter>,
    slurm_restart_count: IntGauge,
    worker_info: IntGaugeVec,
    world_size: IntGauge,
    target_steps: IntGauge,
    gpu_memory_reserved: IntGauge,
    gpu_memory_allocated: IntGauge,
    eval_top1: Gauge,
    eval_top5: Gauge,
    eval_mean_per_class_recall: Gauge,
    eval_loss: Gauge,
    /// `[direction][k]`, in [`RECALL_DIRECTIONS`] × [`RECALL_K`] order.
    eval_recall: [[Gauge; RECALL_K.len()]; RECALL_DIRECTIONS.len()],
}

impl Metrics {
    /// Registers every metric, with `job` and `rank` as constant labels on all of them.
    ///
    /// # Errors
    /// [`TrainError::Metrics`] if `job` is not a valid label value (it is empty) or a metric
    /// cannot be registered.
    pub fn new(job: &str, rank: u32) -> Result<Metrics> {
        if job.is_empty() {
            return Err(TrainError::Metrics("the job label must not be empty".to_string()));
        }
        let labels = HashMap::from([("job".to_string(), job.to_string()), ("rank".to_string(), rank.to_string())]);
        let r = Registrar { registry: Registry::new(), labels };
        let skipped_vec = r.int_counter_vec(
            "clipfleet_data_samples_skipped_total",
            "Samples (or shards) skipped by the data pipeline, by reason.",
            &["reason"],
        )?;
        let samples_skipped = SkipReason::ALL
            .iter()
            .map(|reason| skipped_vec.get_metric_with_label_values(&[reason.as_str()]).map_err(metrics_error))
            .collect::<Result<Vec<_>>>()?;
        let recall_vec = r.gauge_vec(
            "clipfleet_eval_retrieval_recall",
            "Held-out retrieval recall@k (0..1), by direction (image_to_text, text_to_image) and k.",
            &["direction", "k"],
        )?;
        let recall = |direction: &str, k: u32| {
            recall_vec.get_metric_with_label_values(&[direction, k.to_string().as_str()]).map_err(metrics_error)
        };
        let recall_row = |direction: &str| -> Result<[Gauge; 3]> {
            Ok([recall(direction, RECALL_K[0])?, recall(direction, RECALL_K[1])?, recall(direction, RECALL_K[2])?])
        };
        let stop_vec = r.int_counter_vec(
            "clipfleet_stop_requests_total",
            "Stop requests (preemption, time limit) this process received, by signal.",
            &["signal"],
        )?;
        let stop_requests = STOP_SIGNAL_LABELS
            .iter()
            .map(|signal| stop_vec.get_metric_with_label_values(&[signal]).map_err(metrics_error))
            .collect::<Result<Vec<_>>>()?;
        let step_histogram = |name: &str, help: &str| r.histogram(name, help, &STEP_BUCKETS);
        Ok(Metrics {
            step: r.int_gauge("clipfleet_step", "The last optimizer step completed.")?,
            samples_total: r.int_counter("clipfleet_samples_total", "Samples trained on by this rank.")?,
            samples_per_second: r
                .gauge("clipfleet_samples_per_second", "Samples per second of this rank, last step.")?,
            loss: r.gauge("clipfleet_loss", "Training loss of the last step.")?,
            logit_scale: r.gauge("clipfleet_logit_scale", "The logit scale (exp of the learned log scale).")?,
            learning_rate: r.gauge("clipfleet_learning_rate", "Learning rate of the last step.")?,
            grad_norm: r.gauge("clipfleet_grad_norm", "Gradient norm of the last step, before clipping.")?,
            step_seconds: step_histogram("clipfleet_step_seconds", "Wall time of a training step.")?,
            data_wait_seconds: step_histogram(
                "clipfleet_data_wait_seconds",
                "Time a step waited for its batch from the data pipeline.",
            )?,
            all_gather_seconds: step_histogram("clipfleet_all_gather_seconds", "Time spent gathering features.")?,
            all_reduce_seconds: step_histogram("clipfleet_all_reduce_seconds", "Time spent all-reducing gradients.")?,
            optimizer_seconds: step_histogram("clipfleet_optimizer_seconds", "Time of the optimizer update.")?,
            checkpoint_seconds: r.histogram(
                "clipfleet_checkpoint_seconds",
                "Time to write and commit a checkpoint.",
                &CHECKPOINT_BUCKETS,
            )?,
            samples_skipped,
            samples_not_downloaded: r.int_counter(
                "clipfleet_data_samples_not_downloaded_total",
                "Parquet rows that img2dataset could not download (status not success): not samples, and not skips.",
            )?,
            skips_synced: Mutex::new([0; SkipReason::ALL.len() + 1]),
            shard_bytes_read: r
                .int_counter("clipfleet_shard_bytes_read_total", "Bytes of shards read from storage.")?,
            restarts: r.int_counter("clipfleet_restarts_total", "Times this process resumed a run.")?,
            nonfinite_skips: r.int_counter(
                "clipfleet_nonfinite_steps_skipped_total",
                "Optimizer steps whose update every rank skipped because some rank's loss or gradient was NaN or infinite.",
            )?,
            nonfinite_rollbacks: r.int_counter(
                "clipfleet_nonfinite_rollbacks_total",
                "Times the run went back to its last checkpoint after max_nonfinite_skips skipped steps in a row.",
            )?,
            stop_requests,
            slurm_restart_count: r.int_gauge(
                "clipfleet_slurm_restart_count",
                "Times Slurm requeued this job (SLURM_RESTART_COUNT; 0 outside Slurm).",
            )?,
            worker_info: r.int_gauge_vec(
                "clipfleet_worker_info",
                "1 for every worker: where it runs (local_rank, node, device, gpu_uuid), to join node and GPU metrics to ranks.",
                &["local_rank", "node", "device", "gpu_uuid"],
            )?,
            world_size: r.int_gauge("clipfleet_world_size", "Workers in the job.")?,
            target_steps: r.int_gauge("clipfleet_target_steps", "Optimizer steps the run trains to (the config's steps).")?,
            gpu_memory_reserved: r.int_gauge(
                "clipfleet_gpu_memory_reserved_bytes",
                "GPU memory held by libtorch's CUDA caching allocator (allocated, plus cached for reuse).",
            )?,
            gpu_memory_allocated: r.int_gauge(
                "clipfleet_gpu_memory_allocated_bytes",
                "GPU memory allocated to tensors, from libtorch's CUDA caching allocator.",
            )?,
            eval_top1: r.gauge("clipfleet_eval_zero_shot_top1", "Held-out zero-shot top-1 accuracy (0..1).")?,
            eval_top5: r.gauge("clipfleet_eval_zero_shot_top5", "Held-out zero-shot top-5 accuracy (0..1).")?,
            eval_mean_per_class_recall: r.gauge(
                "clipfleet_eval_zero_shot_mean_per_class_recall",
                "Zero-shot mean per-class recall on zero_shot_data (0..1).",
            )?,
            eval_loss: r.gauge("clipfleet_eval_loss", "Held-out contrastive loss.")?,
            eval_recall: [recall_row(RECALL_DIRECTIONS[0])?, recall_row(RECALL_DIRECTIONS[1])?],
            registry: r.registry,
            job: job.to_string(),
            rank,
        })
    }

    /// The `job` label.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The `rank` label.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Records a completed optimizer step: sets `clipfleet_step`, `clipfleet_loss`,
    /// `clipfleet_logit_scale`, `clipfleet_learning_rate`, `clipfleet_grad_norm` (when given)
    /// and `clipfleet_samples_per_second`; adds to `clipfleet_samples_total`; observes
    /// `clipfleet_step_seconds`.
    pub fn observe_step(&self, s: &StepObservation) {
        self.step.set(i64::try_from(s.step).unwrap_or(i64::MAX));
        self.samples_total.inc_by(s.samples);
        if s.seconds > 0.0 {
            self.samples_per_second.set(s.samples as f64 / s.seconds);
        }
        self.loss.set(s.loss);
        self.logit_scale.set(s.logit_scale);
        self.learning_rate.set(s.learning_rate);
        if let Some(norm) = s.grad_norm {
            self.grad_norm.set(norm);
        }
        let steps = s.steps.max(1);
        for _ in 0..steps {
            self.step_seconds.observe(s.seconds / steps as f64);
        }
    }

    /// Observes `clipfleet_data_wait_seconds`: how long a step waited for its batch.
    pub fn observe_data_wait(&self, seconds: f64) {
        self.data_wait_seconds.observe(seconds);
    }

    /// Observes `clipfleet_all_gather_seconds`: one all-gather of features.
    pub fn observe_all_gather(&self, seconds: f64) {
        self.all_gather_seconds.observe(seconds);
    }

    /// Observes `clipfleet_all_reduce_seconds`: one all-reduce of gradients.
    pub fn observe_all_reduce(&self, seconds: f64) {
        self.all_reduce_seconds.observe(seconds);
    }

    /// Observes `clipfleet_optimizer_seconds`: one optimizer update.
    pub fn observe_optimizer(&self, seconds: f64) {
        self.optimizer_seconds.observe(seconds);
    }

    /// Observes `clipfleet_checkpoint_seconds`: one checkpoint written and committed.
    pub fn observe_checkpoint(&self, seconds: f64) {
        self.checkpoint_seconds.observe(seconds);
    }

    /// Brings `clipfleet_data_samples_skipped_total{reason}` (and
    /// `clipfleet_data_samples_not_downloaded_total`) up to date with `counts` by adding
    /// what each reason gained since the last call. Call it as often as convenient (every step,
    /// every log line). A count lower than last time means `counts` is a new set of counters
    /// (a restarted pipeline): its value is then added whole.
    pub fn sync_skips(&self, counts: &SkipCounts) {
        let mut synced = self.skips_synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let counters = self.samples_skipped.iter().chain(std::iter::once(&self.samples_not_downloaded));
        let values = SkipReason::ALL.iter().map(|r| counts.get(*r)).chain(std::iter::once(counts.not_downloaded()));
        for (i, (counter, now)) in counters.zip(values).enumerate() {
            let delta = if now >= synced[i] { now - synced[i] } else { now };
            if delta > 0 {
                counter.inc_by(delta);
            }
            synced[i] = now;
        }
    }

    /// Adds to `clipfleet_shard_bytes_read_total` (e.g. the change in a reader's
    /// `bytes_read()`).
    pub fn add_bytes_read(&self, bytes: u64) {
        self.shard_bytes_read.inc_by(bytes);
    }

    /// Adds one to `clipfleet_nonfinite_steps_skipped_total`.
    pub fn record_nonfinite_skip(&self) {
        self.nonfinite_skips.inc();
    }

    /// Adds one to `clipfleet_nonfinite_rollbacks_total`.
    pub fn record_nonfinite_rollback(&self) {
        self.nonfinite_rollbacks.inc();
    }

    /// Adds one to `clipfleet_restarts_total`; call it when the process resumes a run from a
    /// checkpoint.
    pub fn record_restart(&self) {
        self.restarts.inc();
    }

    /// Adds one to `clipfleet_stop_requests_total{signal}`; `signal` is one of
    /// [`STOP_SIGNAL_LABELS`] (anything else counts as `none`).
    pub fn record_stop_request(&self, signal: &str) {
        let i = STOP_SIGNAL_LABELS.iter().position(|&l| l == signal).unwrap_or(STOP_SIGNAL_LABELS.len() - 1);
        self.stop_requests[i].inc();
    }

    /// Sets `clipfleet_slurm_restart_count`.
    pub fn set_slurm_restart_count(&self, count: u32) {
        self.slurm_restart_count.set(i64::from(count));
    }

    /// Sets `clipfleet_worker_info{local_rank, node, device, gpu_uuid}` to 1, and
    /// `clipfleet_world_size` and `clipfleet_target_steps`.
    pub fn set_worker(&self, who: &WorkerIdentity, world_size: usize, target_steps: i64) {
        let local_rank = who.local_rank.to_string();
        if let Ok(info) =
            self.worker_info.get_metric_with_label_values(&[&local_rank, &who.node, &who.device, &who.gpu_uuid])
        {
            info.set(1);
        }
        self.world_size.set(i64::try_from(world_size).unwrap_or(i64::MAX));
        self.target_steps.set(target_steps);
    }

    /// Sets `clipfleet_gpu_memory_allocated_bytes` and `clipfleet_gpu_memory_reserved_bytes`.
    pub fn set_gpu_memory(&self, allocated: u64, reserved: u64) {
        self.gpu_memory_allocated.set(i64::try_from(allocated).unwrap_or(i64::MAX));
        self.gpu_memory_reserved.set(i64::try_from(reserved).unwrap_or(i64::MAX));
    }

    /// Sets the evaluation gauges from a report: `clipfleet_eval_zero_shot_top1`/`top5` (left
    /// as they were when the report has no zero-shot result),
    /// `clipfleet_eval_retrieval_recall{direction,k}` and `clipfleet_eval_loss`.
    pub fn set_eval(&self, report: &EvalReport) {
        if let Some(top1) = report.zero_shot_top1 {
            self.eval_top1.set(top1);
        }
        if let Some(top5) = report.zero_shot_top5 {
            self.eval_top5.set(top5);
        }
        if let Some(recall) = report.zero_shot_mean_per_class_recall {
            self.eval_mean_per_class_recall.set(recall);
        }
        self.eval_loss.set(report.val_loss);
        let recalls = [
            [report.image_to_text_r1, report.image_to_text_r5, report.image_to_text_r10],
            [report.text_to_image_r1, report.text_to_image_r5, report.text_to_image_r10],
        ];
        for (gauges, values) in self.eval_recall.iter().zip(recalls) {
            for (gauge, value) in gauges.iter().zip(values) {
                gauge.set(value);
            }
        }
    }

    /// The current values in Prometheus' text exposition format (what `/metrics` returns).
    ///
    /// # Errors
    /// [`TrainError::Metrics`] if encoding fails.
    pub fn render(&self) -> Result<String> {
        http::render(&self.registry)
    }

    /// Serves `GET /metrics` on `addr` from a background thread that lives as long as the
    /// process. Port 0 picks a free port; the address actually bound is returned.
    ///
    /// # Errors
    /// [`TrainError::Metrics`] when `addr` cannot be bound (in use, not local, no permission)
    /// or the thread cannot start.
    pub fn serve(&self, addr: SocketAddr) -> Result<SocketAddr> {
        http::serve(self.registry.clone(), addr)
    }
}

fn metrics_error(e: prometheus::Error) -> TrainError {
    TrainError::Metrics(e.to_string())
}

/// Creates metrics with the constant labels `job` and `rank` and registers them.
struct Registrar {
    registry: Registry,
    labels: HashMap<String, String>,
}

impl Registrar {
    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_labels(self.labels.clone())
    }

    fn register<C: Collector + Clone + 'static>(&self, collector: prometheus::Result<C>) -> Result<C> {
        let collector = collector.map_err(metrics_error)?;
        self.registry.register(Box::new(collector.clone())).map_err(metrics_error)?;
        Ok(collector)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<Gauge> {
        self.register(Gauge::with_opts(self.opts(name, help)))
    }

    fn int_gauge(&self, name: &str, help: &str) -> Result<IntGauge> {
        self.register(IntGauge::with_opts(self.opts(name, help)))
    }

    fn int_counter(&self, name: &str, help: &str) -> Result<IntCounter> {
        self.register(IntCounter::with_opts(self.opts(name, help)))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
        self.register(GaugeVec::new(self.opts(name, help), labels))
    }

    fn int_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(self.opts(name, help), labels))
    }

    fn int_counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
        self.register(IntCounterVec::new(self.opts(name, help), labels))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
        let opts = HistogramOpts::new(name, help).const_labels(self.labels.clone()).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix}:\n{text}"))
    }

    #[test]
    fn renders_every_design_name_with_job_and_rank() {
        let m = Metrics::new("j", 2).expect("metrics");
        let text = m.render().expect("render");
        for name in [
            "clipfleet_step",
            "clipfleet_samples_total",
            "clipfleet_samples_per_second",
            "clipfleet_loss",
            "clipfleet_logit_scale",
            "clipfleet_learning_rate",
            "clipfleet_grad_norm",
            "clipfleet_step_seconds_bucket",
            "clipfleet_data_wait_seconds_bucket",
            "clipfleet_all_gather_seconds_bucket",
            "clipfleet_all_reduce_seconds_bucket",
            "clipfleet_optimizer_seconds_bucket",
            "clipfleet_data_samples_skipped_total",
            "clipfleet_shard_bytes_read_total",
            "clipfleet_checkpoint_seconds_bucket",
            "clipfleet_restarts_total",
            "clipfleet_nonfinite_steps_skipped_total",
            "clipfleet_nonfinite_rollbacks_total",
            "clipfleet_data_samples_not_downloaded_total",
            "clipfleet_eval_zero_shot_mean_per_class_recall",
            "clipfleet_stop_requests_total",
            "clipfleet_slurm_restart_count",
            "clipfleet_gpu_memory_allocated_bytes",
            "clipfleet_gpu_memory_reserved_bytes",
            "clipfleet_world_size",
            "clipfleet_target_steps",
            "clipfleet_eval_zero_shot_top1",
            "clipfleet_eval_zero_shot_top5",
            "clipfleet_eval_retrieval_recall",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                    && l.contains(r#"job="j""#)
                    && l.contains(r#"rank="2""#)),
                "{name}:\n{text}"
            );
        }
        for reason in SkipReason::ALL {
            assert!(text.contains(&format!(r#"reason="{}""#, reason.as_str())), "{reason}");
        }
        assert!(Metrics::new("", 0).is_err());
    }

    #[test]
    fn worker_info_names_where_the_worker_runs() {
        let m = Metrics::new("j", 3).expect("metrics");
        let who = WorkerIdentity {
            local_rank: 1,
            node: "gpu017".into(),
            device: "cuda:1".into(),
            gpu_uuid: "GPU-5fd4c2b1-0a1b-2c3d-4e5f-60718293a4b5".into(),
        };
        m.set_worker(&who, 16, 10_000);
        m.set_gpu_memory(3 << 30, 5 << 30);
        let text = m.render().expect("render");
        assert!(text.contains(
            r#"clipfleet_worker_info{device="cuda:1",gpu_uuid="GPU-5fd4c2b1-0a1b-2c3d-4e5f-60718293a4b5",job="j",local_rank="1",node="gpu017",rank="3"} 1"#
        ), "{text}");
        assert!(text.contains(r#"clipfleet_world_size{job="j",rank="3"} 16"#), "{text}");
        assert!(text.contains(r#"clipfleet_target_steps{job="j",rank="3"} 10000"#), "{text}");
        assert!(text.contains(r#"clipfleet_gpu_memory_reserved_bytes{job="j",rank="3"} 5368709120"#), "{text}");
    }

    #[test]
    fn stop_requests_count_by_signal_and_the_slurm_restart_count_is_a_gauge() {
        let m = Metrics::new("j", 0).expect("metrics");
        m.record_stop_request("SIGUSR1");
        m.record_stop_request("SIGUSR1");
        m.record_stop_request("SIGTERM");
        m.record_stop_request("whatever");
        m.set_slurm_restart_count(3);
        let text = m.render().expect("render");
        let value = |prefix: &str| line(&text, prefix).rsplit(' ').next().unwrap().to_string();
        assert_eq!(value(r#"clipfleet_stop_requests_total{job="j",rank="0",signal="SIGUSR1"}"#), "2");
        assert_eq!(value(r#"clipfleet_stop_requests_total{job="j",rank="0",signal="SIGTERM"}"#), "1");
        assert_eq!(value(r#"clipfleet_stop_requests_total{job="j",rank="0",signal="SIGHUP"}"#), "0");
        assert_eq!(value(r#"clipfleet_stop_requests_total{job="j",rank="0",signal="none"}"#), "1");
        assert_eq!(value(r#"clipfleet_slurm_restart_count{job="j",rank="0"}"#), "3");
    }

    #[test]
    fn step_and_skips_and_eval() {
        let m = Metrics::new("j", 0).expect("metrics");
        let obs = StepObservation {
            step: 7,
            steps: 1,
            samples: 64,
            seconds: 0.5,
            loss: 2.5,
            logit_scale: 14.0,
            learning_rate: 1e-3,
            grad_norm: None,
        };
        m.observe_step(&obs);
        m.observe_step(&StepObservation { step: 8, ..obs });
        let counts = SkipCounts::default();
        counts.record(SkipReason::CorruptImage);
        counts.record(SkipReason::CorruptImage);
        counts.record_not_downloaded();
        m.sync_skips(&counts);
        m.sync_skips(&counts); // no change: nothing added
        counts.record(SkipReason::CorruptImage);
        m.sync_skips(&counts);
        let fresh = SkipCounts::default(); // a restarted pipeline: added whole
        fresh.record(SkipReason::CorruptImage);
        m.sync_skips(&fresh);
        let report: EvalReport = serde_json::from_value(serde_json::json!({
            "zero_shot_top1": 0.5, "zero_shot_top5": 0.75,
            "image_to_text_r1": 0.125, "image_to_text_r5": 0.25, "image_to_text_r10": 0.5,
            "text_to_image_r1": 0.0625, "text_to_image_r5": 0.375, "text_to_image_r10": 0.625,
            "val_loss": 1.5, "num_samples": 64, "num_classes": 8, "step": 8,
        }))
        .expect("an EvalReport");
        m.set_eval(&report);
        let text = m.render().expect("render");
        assert!(line(&text, "clipfleet_step{").ends_with(" 8"), "{text}");
        assert!(line(&text, "clipfleet_samples_total{").ends_with(" 128"));
        assert!(line(&text, "clipfleet_samples_per_second{").ends_with(" 128"));
        assert!(line(&text, "clipfleet_step_seconds_count{").ends_with(" 2"));
        assert!(
            line(&text, r#"clipfleet_data_samples_skipped_total{job="j",rank="0",reason="corrupt_image"}"#)
                .ends_with(" 4"),
            "{text}"
        );
        assert!(line(&text, r#"clipfleet_data_samples_skipped_total{job="j",rank="0",reason="missing_caption"}"#)
            .ends_with(" 0"));
        assert!(line(&text, "clipfleet_data_samples_not_downloaded_total{").ends_with(" 1"), "{text}");
        assert!(line(&text, "clipfleet_eval_zero_shot_top1{").ends_with(" 0.5"));
        assert!(
            line(&text, r#"clipfleet_eval_retrieval_recall{direction="image_to_text",job="j",k="5",rank="0"}"#)
                .ends_with(" 0.25"),
            "{text}"
        );
    }
}
