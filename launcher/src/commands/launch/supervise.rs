//! Supervision of one attempt: watch the workers and the launcher's signals until every worker
//! has exited. The decisions are a state machine ([`Supervision`]) driven by events with
//! explicit times, so they are tested without processes or sleeps; [`supervise`] drives it with
//! real children, polling every 50 ms.
//!
//! - A worker that exits non-zero or is killed by a signal fails the attempt: the others get
//!   SIGKILL at once (a group with a dead rank can neither step nor checkpoint).
//! - A worker that exits [`EXIT_CHECKPOINTED`] (75) stopped on request with a checkpoint, as
//!   every other rank does at the same step: no failure, and the attempt ends "checkpointed".
//! - A signal to the launcher (SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2) is a stop request: it
//!   is forwarded once, and the attempt is never restarted. The workers checkpoint and exit 75
//!   in their own time (`train --stop-grace`). The same signal again, [`REPEAT_AFTER`] or more
//!   later, is forwarded too (the workers then exit at once) and the workers still running
//!   after the grace period get SIGKILL. A quicker echo, or another signal, is the same
//!   request: schedulers often deliver one request twice (Slurm signals every process of a
//!   step, the launcher included).
//! - Workers that exit 0 while others still run are fine.
//!
//! The report of a failed attempt names the root cause from the workers' error files
//! ([`clipfleet_trainer::dist::error_file`]) when one was written: the earliest, which need not be the first to exit.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use clipfleet_trainer::dist::error_file::WorkerError;
use clipfleet_trainer::run::signals::{EXIT_CHECKPOINTED, REPEAT_AFTER};
use libc::c_int;

use super::signals;
use super::workers::{Label, MpirunReport, Worker};

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Death {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled { signal: c_int, core_dumped: bool },
}

impl Death {
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Death::Exited(code),
            (None, Some(signal)) => Death::Signaled { signal, core_dumped: status.core_dumped() },
            (None, None) => Death::Exited(1),
        }
    }

    pub(crate) fn is_success(self) -> bool {
        self == Death::Exited(0)
    }

    /// The worker stopped on request after committing a checkpoint.
    pub(crate) fn is_checkpointed(self) -> bool {
        self == Death::Exited(i32::from(EXIT_CHECKPOINTED))
    }

    /// The launcher's exit status for this death: the code itself, or 128 + the signal.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Death::Exited(code) => (code & 0xff) as u8,
            Death::Signaled { signal, .. } => (128 + signal).clamp(0, 255) as u8,
        }
    }
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Death::Exited(code) => write!(f, "exit status {code}"),
            Death::Signaled { signal, core_dumped } => {
                write!(f, "killed by signal {signal} ({})", signals::name(signal))?;
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// Something to do to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Action {
    pub(crate) worker: usize,
    pub(crate) signal: c_int,
}

/// The first failure of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) worker: usize,
    pub(crate) death: Death,
}

/// How an attempt ended, once every worker has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every worker exited 0.
    Succeeded,
    /// A worker failed first (and the launcher was not asked to stop).
    Failed(Failure),
    /// The workers stopped on request with a checkpoint (exit 75), none failed.
    Checkpointed,
    /// The launcher was asked to stop by this signal, and the workers did not all checkpoint.
    Stopped(c_int),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { deadline: Instant, killed: bool },
}

/// The decisions of one attempt.
#[derive(Debug)]
pub(crate) struct Supervision {
    grace: Duration,
    live: Vec<bool>,
    phase: Phase,
    failure: Option<Failure>,
    /// The first stop signal and when it arrived.
    stop: Option<(c_int, Instant)>,
    /// Some worker exited 75.
    checkpointed: bool,
}

impl Supervision {
    pub(crate) fn new(workers: usize, grace: Duration) -> Self {
        Supervision {
            grace,
            live: vec![true; workers],
            phase: Phase::Running,
            failure: None,
            stop: None,
            checkpointed: false,
        }
    }

    fn to_live(&self, signal: c_int) -> Vec<Action> {
        (0..self.live.len()).filter(|&w| self.live[w]).map(|worker| Action { worker, signal }).collect()
    }

    fn begin_stopping(&mut self, now: Instant) {
        let deadline = now + self.grace;
        self.phase = match self.phase {
            Phase::Running => Phase::Stopping { deadline, killed: false },
            Phase::Stopping { deadline: d, killed } => Phase::Stopping { deadline: d.min(deadline), killed },
        };
    }

    /// Whether worker `worker` is still running.
    pub(crate) fn is_live(&self, worker: usize) -> bool {
        self.live[worker]
    }

    /// Whether the attempt is winding down (a failure or a stop signal).
    pub(crate) fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// Worker `worker` exited. The first failure kills the others.
    pub(crate) fn exited(&mut self, worker: usize, death: Death, now: Instant) -> Vec<Action> {
        self.live[worker] = false;
        if death.is_checkpointed() {
            self.checkpointed = true;
        }
        if death.is_success() || death.is_checkpointed() || self.failure.is_some() {
            return Vec::new();
        }
        self.failure = Some(Failure { worker, death });
        self.begin_stopping(now);
        self.phase = Phase::Stopping { deadline: now, killed: true };
        self.to_live(libc::SIGKILL)
    }

    /// The launcher received `signal`: what to forward (see the module docs).
    pub(crate) fn signal(&mut self, signal: c_int, now: Instant) -> Vec<Action> {
        match self.stop {
            None => {
                self.stop = Some((signal, now));
                self.to_live(signal)
            }
            Some((first, at)) if first == signal && now.duration_since(at) >= REPEAT_AFTER && !self.stopping() => {
                self.begin_stopping(now);
                self.to_live(signal)
            }
            Some(_) => Vec::new(),
        }
    }

    /// Time passed: after the grace period, SIGKILL whoever is left.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Stopping { deadline, killed: false } if now >= deadline => {
                self.phase = Phase::Stopping { deadline, killed: true };
                self.to_live(libc::SIGKILL)
            }
            _ => Vec::new(),
        }
    }

    /// The outcome, once no worker is left.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        if self.live.iter().any(|&l| l) {
            return None;
        }
        Some(match (self.stop, self.failure, self.checkpointed) {
            (_, None, true) => Outcome::Checkpointed,
            (Some((signal, _)), Some(_), _) => Outcome::Stopped(signal),
            (None, Some(failure), _) => Outcome::Failed(failure),
            (_, None, false) => Outcome::Succeeded,
        })
    }
}

/// A failed attempt, described for the user.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FailureReport {
    /// `worker rank 1`, or `mpirun` when mpirun did not say which rank failed.
    pub(crate) who: String,
    /// The process that exited first with a failure.
    pub(crate) pid: libc::pid_t,
    pub(crate) death: Death,
    /// The earliest error file of the attempt: the root cause, when a worker wrote one.
    pub(crate) cause: Option<WorkerError>,
}

impl FailureReport {
    /// Adds the root cause from the attempt's error files.
    pub(crate) fn with_cause(mut self, cause: Option<WorkerError>) -> Self {
        self.cause = cause;
        self
    }
}

impl fmt::Display for FailureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(cause) = &self.cause else {
            return write!(f, "{} failed: {} (pid {})", self.who, self.death, self.pid);
        };
        let rank = format!("worker rank {}", cause.rank);
        if self.who == rank || self.who == "mpirun" {
            write!(f, "{rank} failed: {} (pid {}): {}", self.death, self.pid, cause.message)
        } else {
            // Another worker failed first; this one exited first (e.g. of the first's abort).
            write!(
                f,
                "{rank} failed: {} (first to exit: {}, {}, pid {})",
                cause.message, self.who, self.death, self.pid
            )
        }
    }
}

/// The end of an attempt, as [`supervise`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ended {
    Succeeded,
    Failed(FailureReport),
    Checkpointed,
    Stopped(c_int),
}

impl Ended {
    /// Applies `f` to the report of a failed attempt.
    pub(crate) fn map_failure(self, f: impl FnOnce(FailureReport) -> FailureReport) -> Self {
        match self {
            Ended::Failed(report) => Ended::Failed(f(report)),
            other => other,
        }
    }
}

const POLL: Duration = Duration::from_millis(50);

/// Supervises `workers` until all have exited; see the module docs.
pub(crate) fn supervise(mut workers: Vec<Worker>, grace: Duration) -> Ended {
    let mut sup = Supervision::new(workers.len(), grace);
    let outcome = loop {
        let now = Instant::now();
        for signal in signals::take_pending() {
            let actions = sup.signal(signal, now);
            if actions.is_empty() {
                tracing::info!("received {}: the stop request is already on its way", signals::name(signal));
            } else {
                tracing::warn!(
                    "received {}: forwarding it to the workers, which stop at their next step with a checkpoint",
                    signals::name(signal)
                );
            }
            apply(&workers, actions);
        }
        for i in 0..workers.len() {
            if !sup.is_live(i) {
                continue;
            }
            let polled = workers[i].child.try_wait();
            let w = &workers[i];
            let death = match polled {
                Ok(None) => continue,
                Ok(Some(status)) => Death::from_status(status),
                Err(e) => {
                    tracing::error!("cannot wait for {} (pid {}): {e}", w.label, w.pid());
                    Death::Exited(1)
                }
            };
            let was_stopping = sup.stopping();
            let actions = sup.exited(i, death, now);
            if death.is_success() {
                tracing::info!("worker {} (pid {}) finished", w.label, w.pid());
            } else if death.is_checkpointed() {
                tracing::info!("worker {} (pid {}) stopped on request with a checkpoint", w.label, w.pid());
            } else if was_stopping {
                tracing::info!("worker {} (pid {}) stopped: {death}", w.label, w.pid());
            } else {
                tracing::error!("worker {} (pid {}) failed: {death}; killing the others", w.label, w.pid());
            }
            apply(&workers, actions);
        }
        let actions = sup.tick(Instant::now());
        if !actions.is_empty() {
            tracing::warn!("the {:.1} s grace period is over", grace.as_secs_f64());
        }
        apply(&workers, actions);
        if let Some(outcome) = sup.outcome() {
            break outcome;
        }
        std::thread::sleep(POLL);
    };
    if !matches!(outcome, Outcome::Succeeded | Outcome::Checkpointed) {
        for w in &workers {
            w.kill_leftovers();
        }
    }
    let reports: Vec<MpirunReport> = workers.iter_mut().map(Worker::finish).collect();
    match outcome {
        Outcome::Succeeded => Ended::Succeeded,
        Outcome::Checkpointed => Ended::Checkpointed,
        Outcome::Stopped(signal) => Ended::Stopped(signal),
        Outcome::Failed(Failure { worker, death }) => {
            let w = &workers[worker];
            let (who, death) = match (w.label, &reports[worker]) {
                (Label::Mpirun, MpirunReport { rank: Some(rank), signal }) => (
                    format!("worker rank {rank}"),
                    signal.map_or(death, |signal| Death::Signaled { signal, core_dumped: false }),
                ),
                (Label::Mpirun, _) => ("mpirun".to_owned(), death),
                (label, _) => (format!("worker {label}"), death),
            };
            Ended::Failed(FailureReport { who, pid: w.pid(), death, cause: None })
        }
    }
}

fn apply(workers: &[Worker], actions: Vec<Action>) {
    for Action { worker, signal } in actions {
        let w = &workers[worker];
        if signal == libc::SIGKILL {
            tracing::warn!("worker {} (pid {}) is still running: sending SIGKILL", w.label, w.pid());
        }
        w.signal(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn kill(worker: usize) -> Action {
        Action { worker, signal: libc::SIGKILL }
    }

    #[test]
    fn all_zero_exits_succeed_even_when_early() {
        let t0 = Instant::now();
        let mut s = Supervision::new(3, GRACE);
        assert!(s.exited(1, Death::Exited(0), t0).is_empty());
        assert_eq!(s.tick(t0 + GRACE * 10), vec![]);
        assert_eq!(s.outcome(), None);
        s.exited(0, Death::Exited(0), t0);
        s.exited(2, Death::Exited(0), t0);
        assert_eq!(s.outcome(), Some(Outcome::Succeeded));
    }

    #[test]
    fn a_failure_kills_the_others_at_once() {
        let t0 = Instant::now();
        let mut s = Supervision::new(3, GRACE);
        assert_eq!(s.exited(1, Death::Exited(3), t0), vec![kill(0), kill(2)]);
        assert_eq!(s.tick(t0 + GRACE * 2), vec![], "SIGKILL is sent once");
        s.exited(0, Death::Signaled { signal: libc::SIGKILL, core_dumped: false }, t0);
        assert_eq!(s.outcome(), None);
        s.exited(2, Death::Signaled { signal: libc::SIGKILL, core_dumped: false }, t0);
        assert_eq!(s.outcome(), Some(Outcome::Failed(Failure { worker: 1, death: Death::Exited(3) })));
    }

    #[test]
    fn a_stop_signal_is_forwarded_once_and_checkpointed_workers_end_the_attempt() {
        let t0 = Instant::now();
        let mut s = Supervision::new(2, GRACE);
        let usr1 = |w| Action { worker: w, signal: libc::SIGUSR1 };
        assert_eq!(s.signal(libc::SIGUSR1, t0), vec![usr1(0), usr1(1)]);
        // An echo (Slurm signals the launcher and its workers) and another signal are the same request.
        assert_eq!(s.signal(libc::SIGUSR1, t0 + REPEAT_AFTER / 2), vec![]);
        assert_eq!(s.signal(libc::SIGTERM, t0 + REPEAT_AFTER * 2), vec![]);
        assert!(!s.stopping());
        assert_eq!(s.tick(t0 + GRACE * 10), vec![], "no deadline: the workers keep their own");
        s.exited(0, Death::Exited(75), t0);
        s.exited(1, Death::Exited(75), t0);
        assert_eq!(s.outcome(), Some(Outcome::Checkpointed));
    }

    #[test]
    fn workers_that_checkpoint_without_a_signal_to_the_launcher_are_no_failure() {
        let t0 = Instant::now();
        let mut s = Supervision::new(2, GRACE);
        assert_eq!(s.exited(1, Death::Exited(75), t0), vec![], "the others stop at the same step");
        assert_eq!(s.outcome(), None);
        s.exited(0, Death::Exited(75), t0);
        assert_eq!(s.outcome(), Some(Outcome::Checkpointed));
    }

    #[test]
    fn a_repeated_stop_signal_is_forwarded_and_kills_after_the_grace_period() {
        let t0 = Instant::now();
        let mut s = Supervision::new(2, GRACE);
        let int = |w| Action { worker: w, signal: libc::SIGINT };
        assert_eq!(s.signal(libc::SIGINT, t0), vec![int(0), int(1)]);
        let t1 = t0 + REPEAT_AFTER;
        assert_eq!(s.signal(libc::SIGINT, t1), vec![int(0), int(1)]);
        assert!(s.stopping());
        assert_eq!(s.signal(libc::SIGINT, t1 + REPEAT_AFTER), vec![], "forwarded twice at most");
        assert_eq!(s.tick(t1 + GRACE - Duration::from_millis(1)), vec![]);
        assert_eq!(s.tick(t1 + GRACE), vec![kill(0), kill(1)]);
        assert_eq!(s.tick(t1 + GRACE * 2), vec![], "already killed");
        s.exited(0, Death::Signaled { signal: libc::SIGKILL, core_dumped: false }, t1 + GRACE);
        s.exited(1, Death::Signaled { signal: libc::SIGKILL, core_dumped: false }, t1 + GRACE);
        assert_eq!(s.outcome(), Some(Outcome::Stopped(libc::SIGINT)));
    }

    #[test]
    fn a_stop_that_ends_in_a_finished_run_succeeds() {
        let t0 = Instant::now();
        let mut s = Supervision::new(2, GRACE);
        s.signal(libc::SIGTERM, t0);
        s.exited(0, Death::Exited(0), t0);
        s.exited(1, Death::Exited(0), t0);
        assert_eq!(s.outcome(), Some(Outcome::Succeeded));
    }

    #[test]
    fn a_failure_during_a_stop_is_a_stop_without_a_checkpoint() {
        let t0 = Instant::now();
        let mut s = Supervision::new(2, GRACE);
        s.signal(libc::SIGTERM, t0);
        assert_eq!(s.exited(0, Death::Signaled { signal: libc::SIGSEGV, core_dumped: true }, t0), vec![kill(1)]);
        s.exited(1, Death::Exited(75), t0);
        assert_eq!(s.outcome(), Some(Outcome::Stopped(libc::SIGTERM)));
    }

    #[test]
    fn deaths_read_like_the_shell() {
        assert_eq!(Death::Exited(3).to_string(), "exit status 3");
        let killed = Death::Signaled { signal: libc::SIGKILL, core_dumped: false };
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(killed.exit_code(), 137);
        let segv = Death::Signaled { signal: libc::SIGSEGV, core_dumped: true };
        assert_eq!(segv.to_string(), "killed by signal 11 (SIGSEGV), core dumped");
        assert_eq!(Death::Exited(3).exit_code(), 3);
    }

    #[test]
    fn a_failure_report_names_the_root_cause() {
        let cause = |rank| Some(WorkerError { rank, message: "out of memory".into(), unix_time_ns: 1 });
        let report = FailureReport { who: "mpirun".into(), pid: 7, death: Death::Exited(1), cause: None };
        assert_eq!(report.to_string(), "mpirun failed: exit status 1 (pid 7)");
        assert_eq!(
            report.clone().with_cause(cause(1)).to_string(),
            "worker rank 1 failed: exit status 1 (pid 7): out of memory"
        );
        let report = FailureReport { who: "worker rank 0".into(), ..report };
        assert_eq!(
            report.clone().with_cause(cause(0)).to_string(),
            "worker rank 0 failed: exit status 1 (pid 7): out of memory"
        );
        assert_eq!(
            report.with_cause(cause(2)).to_string(),
            "worker rank 2 failed: out of memory (first to exit: worker rank 0, exit status 1, pid 7)"
        );
    }
}
