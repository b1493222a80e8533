//! Fault injection for the crash tests. Set `CLIPFLEET_FAULT` to one of:
//! - `exit-after-checkpoint:N`: exit with status 137 right after checkpoint N is committed,
//!   as if the process had been killed there;
//! - `stall-in-checkpoint:N`: while writing checkpoint N, after the weights are written and
//!   before the manifest, print `clipfleet-fault: stalled in checkpoint N` to stderr and
//!   sleep until killed.
//!
//! - `fail-on-rank-R:N`: worker rank R returns an error at the start of step N (the other
//!   workers carry on into their collectives), as a one-rank failure would.
//!
//! - `stop-on-rank-R:N`: worker rank R requests a stop before step N, as a preemption
//!   signal would; every rank ends the run at the boundary after that step, with a checkpoint.
//!
//! - `nan-on-rank-R:N`: worker rank R's loss reads NaN in the step after N steps are done,
//!   once per process, as a numerical blow-up on one rank would.
//!
//! Unset (the normal case) costs one environment lookup per checkpoint and one per run.

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Inside the checkpoint write, before the commit.
    InCheckpoint,
    /// Just after the commit.
    AfterCheckpoint,
}

fn configured() -> Option<(String, i64)> {
    let spec = std::env::var("CLIPFLEET_FAULT").ok()?;
    let (kind, step) = spec.split_once(':')?;
    Some((kind.to_string(), step.parse().ok()?))
}

/// Triggers the configured fault if it matches `point` and `step`.
pub fn maybe_inject(point: FaultPoint, step: i64) {
    let Some((kind, at)) = configured() else { return };
    if at != step {
        return;
    }
    match (kind.as_str(), point) {
        ("exit-after-checkpoint", FaultPoint::AfterCheckpoint) => {
            eprintln!("clipfleet-fault: exiting after checkpoint {step}");
            std::process::exit(137);
        }
        ("stall-in-checkpoint", FaultPoint::InCheckpoint) => {
            eprintln!("clipfleet-fault: stalled in checkpoint {step}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

/// The `fail-on-rank-R:N` fault, read once per run: `Some((R, N))` when configured.
pub fn rank_failure() -> Option<(usize, i64)> {
    let (kind, step) = configured()?;
    Some((kind.strip_prefix("fail-on-rank-")?.parse().ok()?, step))
}

/// The `stop-on-rank-R:N` fault, read once per run: `Some((R, N))` when configured. Rank R
/// requests a stop (as a preemption signal would) before step N, so that the run ends at
/// the boundary after it on every rank.
pub fn stop_request() -> Option<(usize, i64)> {
    let (kind, step) = configured()?;
    Some((kind.strip_prefix("stop-on-rank-")?.parse().ok()?, step))
}

/// The `nan-on-rank-R:N` fault, read once per run: `Some((R, N))` when configured. Rank R's
/// loss reads NaN at the step boundary of the step that starts with N steps done (once).
pub fn nan_loss() -> Option<(usize, i64)> {
    let (kind, step) = configured()?;
    Some((kind.strip_prefix("nan-on-rank-")?.parse().ok()?, step))
}
