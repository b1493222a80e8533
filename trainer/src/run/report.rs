//! The periodic training report: throughput and data wait over the window of steps since
//! the last report, the loss averaged over the ranks, the log line and the metrics.

use std::time::Instant;

use tch::Kind;

use crate::data::TrainStream;
use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::Result;
use crate::metrics::{Metrics, StepObservation};
use crate::run::{Learner, StepOutcome};

/// What a report found, for the TensorBoard scalars.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reported {
    /// The loss averaged over the ranks.
    pub(super) loss: f64,
    pub(super) learning_rate: f64,
    pub(super) logit_scale: f64,
    pub(super) grad_norm: f64,
    /// Samples per second of the whole job over the window.
    pub(super) samples_per_second: f64,
    pub(super) data_wait_fraction: f64,
}

impl Reported {
    /// The scalars under OpenCLIP's TensorBoard tags (`train/…`).
    pub(super) fn scalars(&self) -> [(&'static str, f64); 6] {
        [
            ("train/loss", self.loss),
            ("train/lr", self.learning_rate),
            ("train/scale", self.logit_scale),
            ("train/grad_norm", self.grad_norm),
            ("train/samples_per_second", self.samples_per_second),
            ("train/data_wait_fraction", self.data_wait_fraction),
        ]
    }
}

/// The steps since the last report.
#[derive(Debug)]
pub(super) struct ReportWindow {
    start: Instant,
    data_wait: f64,
    steps: i64,
    last_rate: f64,
    bytes_reported: u64,
}

impl ReportWindow {
    pub(super) fn new() -> Self {
        ReportWindow { start: Instant::now(), data_wait: 0.0, steps: 0, last_rate: 0.0, bytes_reported: 0 }
    }

    /// Records time spent waiting for a batch.
    pub(super) fn waited(&mut self, seconds: f64, metrics: &Metrics) {
        self.data_wait += seconds;
        metrics.observe_data_wait(seconds);
    }

    /// Records a completed step.
    pub(super) fn stepped(&mut self) {
        self.steps += 1;
    }

    /// Samples per second of the last report.
    pub(super) fn last_rate(&self) -> f64 {
        self.last_rate
    }

    /// Reports the window ending with `outcome` and starts a new one; returns what it
    /// reported, with the loss averaged over the ranks (the only host synchronisation of the report).
    pub(super) fn report(
        &mut self,
        outcome: &StepOutcome,
        learner: &Learner<'_>,
        group: &dyn ProcessGroup,
        metrics: &Metrics,
        global_batch: i64,
    ) -> Result<Reported> {
        let mut loss = outcome.loss.to_kind(Kind::Double).view([1]);
        group.all_reduce(&mut loss, ReduceOp::Avg)?;
        let loss = loss.double_value(&[0]);
        let elapsed = self.start.elapsed().as_secs_f64();
        let samples = self.steps * global_batch;
        self.last_rate = samples as f64 / elapsed;
        let logit_scale = learner.model().logit_scale().double_value(&[]).exp();
        let grad_norm = outcome.grad_norm.to_kind(Kind::Double).double_value(&[]);
        if group.rank() == 0 {
            tracing::info!(
                step = outcome.step,
                loss = format_args!("{loss:.4}"),
                lr = format_args!("{:.3e}", outcome.lr),
                logit_scale = format_args!("{logit_scale:.2}"),
                grad_norm = format_args!("{grad_norm:.3}"),
                samples_per_second = format_args!("{:.1}", self.last_rate),
                data_wait_fraction = format_args!("{:.3}", self.data_wait / elapsed),
                "train"
            );
        }
        metrics.observe_step(&StepObservation {
            step: outcome.step as u64,
            steps: self.steps as u64,
            samples: samples as u64,
            seconds: elapsed,
            loss,
            logit_scale,
            learning_rate: outcome.lr,
            grad_norm: Some(grad_norm),
        });
        let reported = Reported {
            loss,
            learning_rate: outcome.lr,
            logit_scale,
            grad_norm,
            samples_per_second: self.last_rate,
            data_wait_fraction: self.data_wait / elapsed,
        };
        (self.start, self.data_wait, self.steps) = (Instant::now(), 0.0, 0);
        Ok(reported)
    }

    /// Brings the data metrics up to date: the bytes the store has read (`bytes_read`, a
    /// running total) and the skips by reason, which are also logged.
    pub(super) fn sync_data(&mut self, metrics: &Metrics, data: &TrainStream, bytes_read: Option<u64>) {
        if let Some(total) = bytes_read {
            metrics.add_bytes_read(total.saturating_sub(self.bytes_reported));
            self.bytes_reported = total;
        }
        if let Some(skips) = data.skips() {
            metrics.sync_skips(&skips);
            if skips.total() > 0 {
                let by_reason: Vec<String> = skips.snapshot().iter().map(|(r, n)| format!("{r}={n}")).collect();
                tracing::info!(skipped = skips.total(), by_reason = %by_reason.join(","), "data skips so far");
            }
        }
    }
}
