//! The step boundary: the one point between two optimizer steps where every rank agrees on
//! what happens next. It is where preemption (a stop request), the non-finite-loss decision
//! and a watchdog's heartbeat plug in.
//!
//! Each rank votes (has it been asked to stop? is its loss finite?); one all-reduce of
//! the votes (a sum: any vote counts) makes the decision the same on every rank, so no rank leaves the loop while
//! another enters the next step's collectives. With one worker the vote is the decision.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::Result;

/// A request to end the run at the next step boundary, with a checkpoint. Cloned handles
/// share one flag: a signal watcher ([`super::signals`]) or another thread sets it, the run
/// reads it.
#[derive(Debug, Clone, Default)]
pub struct StopRequest(Arc<AtomicI32>);

/// What asked a run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// This signal number.
    Signal(i32),
    /// The program itself ([`StopRequest::request`]), as the `stop-on-rank` test fault does.
    Program,
}

impl StopCause {
    /// The `signal` label of `clipfleet_stop_requests_total`: `SIGTERM`, …, or `none`.
    pub fn label(self) -> &'static str {
        match self {
            StopCause::Signal(signal) => super::signals::signal_name(signal),
            StopCause::Program => "none",
        }
    }
}

impl StopRequest {
    /// Asks the run to stop at its next step boundary.
    pub fn request(&self) {
        let _ = self.0.compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Asks the run to stop at its next step boundary because `signal` arrived. The first
    /// request's cause is kept.
    pub fn request_by(&self, signal: i32) {
        let _ = self.0.compare_exchange(0, signal.max(1), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst) != 0
    }

    /// What asked for the stop, if anything did.
    pub fn cause(&self) -> Option<StopCause> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            -1 => Some(StopCause::Program),
            signal => Some(StopCause::Signal(signal)),
        }
    }
}

/// The last step boundary every rank reached: a watchdog reads it to tell a slow step from
/// a hung one. Cloned handles share one counter.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<AtomicI64>);

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat(Arc::new(AtomicI64::new(-1)))
    }
}

impl Heartbeat {
    /// The last agreed step boundary (-1 before the first).
    pub fn last_step(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    fn beat(&self, step: i64) {
        self.0.store(step, Ordering::SeqCst);
    }
}

/// What every rank agreed on at a step boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Some rank was asked to stop: every rank checkpoints and ends the run.
    pub stop: bool,
    /// Some rank's loss, or the gradient, is NaN or infinite: every rank skips the update.
    pub non_finite: bool,
}

/// The step boundary of a run: its stop request and its heartbeat.
#[derive(Debug, Clone, Default)]
pub struct StepBoundary {
    /// Set to end the run at the next boundary.
    pub stop: StopRequest,
    /// Beaten at every agreed boundary.
    pub heartbeat: Heartbeat,
}

impl StepBoundary {
    /// Agrees with every rank on what follows optimizer step `step`, whose loss on this rank
    /// is `loss` and whose global gradient norm is `grad_norm` ([], on the device), before its
    /// update. Reads one small tensor back to the host.
    pub fn agree(&self, group: &dyn ProcessGroup, step: i64, loss: &Tensor, grad_norm: &Tensor) -> Result<Decision> {
        let device = loss.device();
        let stop = Tensor::from(if self.stop.is_requested() { 1.0f32 } else { 0.0 }).to_device(device);
        let finite = loss.detach().isfinite().logical_and(&grad_norm.detach().to_device(device).isfinite());
        let non_finite = finite.logical_not().to_kind(Kind::Float);
        let mut votes = Tensor::stack(&[stop, non_finite.reshape([])], 0);
        if group.world_size() > 1 {
            group.all_reduce(&mut votes, ReduceOp::Sum)?;
        }
        let votes = Vec::<f32>::try_from(votes.to_device(tch::Device::Cpu))?;
        self.heartbeat.beat(step);
        Ok(Decision { stop: votes[0] > 0.0, non_finite: votes[1] > 0.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{SingleGroup, WorldInfo};

    #[test]
    fn the_boundary_decides_on_stop_requests_and_non_finite_values_and_beats() {
        let group = SingleGroup::new(&WorldInfo::single()).unwrap();
        let boundary = StepBoundary::default();
        assert_eq!(boundary.heartbeat.last_step(), -1);
        let finite = Tensor::from(2.5f32);
        let norm = Tensor::from(1.0f32);
        let decide = |loss: &Tensor, step| boundary.agree(&group, step, loss, &norm).unwrap();
        assert_eq!(decide(&finite, 1), Decision { stop: false, non_finite: false });
        assert_eq!(boundary.heartbeat.last_step(), 1);
        assert_eq!(decide(&Tensor::from(f32::NAN), 2), Decision { stop: false, non_finite: true });
        assert!(decide(&Tensor::from(f32::INFINITY), 3).non_finite);
        assert!(boundary.agree(&group, 3, &finite, &Tensor::from(f32::NAN)).unwrap().non_finite, "a NaN gradient");
        // A handle given away (as to a signal handler) asks the run to stop.
        assert_eq!(boundary.stop.cause(), None);
        boundary.stop.clone().request_by(libc::SIGUSR1);
        boundary.stop.request_by(libc::SIGTERM);
        assert_eq!(boundary.stop.cause(), Some(StopCause::Signal(libc::SIGUSR1)), "the first cause is kept");
        assert_eq!(boundary.stop.cause().map(StopCause::label), Some("SIGUSR1"));
        assert_eq!(decide(&finite, 4), Decision { stop: true, non_finite: false });
        assert_eq!(decide(&Tensor::from(f32::NAN), 5), Decision { stop: true, non_finite: true });
        assert_eq!(boundary.heartbeat.last_step(), 5);
    }
}
