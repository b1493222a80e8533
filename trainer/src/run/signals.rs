//! Stop requests by signal: preemption and time limits that lose nothing.
//!
//! [`install`] makes SIGTERM, SIGINT and the chosen checkpoint signal ([`StopSignal`],
//! default SIGUSR1) ask the run to stop: the handler only records the signal, and a watcher
//! thread turns the record into a [`StopRequest`], logs it and keeps the deadline. At the next
//! step boundary every rank agrees on the stop ([`super::boundary`]), commits a checkpoint and
//! exits with [`EXIT_CHECKPOINTED`] (75: "checkpointed, requeue me").
//!
//! Two things end the process at once, without a checkpoint of the stop, with the status a
//! shell gives a process killed by the first signal (128 + its number):
//! - the same signal again, at least [`REPEAT_AFTER`] after the first. Schedulers and
//!   launchers often deliver one request twice within milliseconds (Slurm signals every
//!   process of a step, and `clipfleet launch` forwards what it receives), so a quick echo is
//!   the same request, and so is a different signal (Slurm's preemption sends SIGTERM while
//!   the batch script forwards the checkpoint signal);
//! - the grace deadline (`--stop-grace`, from the first signal): a stop that cannot finish in
//!   time (a hung collective, a checkpoint to a stalled filesystem) must not outlive the
//!   scheduler's own SIGKILL.
//!
//! A checkpoint cut short this way is never seen: only a committed checkpoint counts
//! ([`crate::checkpoint`]), and the next start resumes from the one before.
//!
//! This follows Megatron-LM's distributed signal handler: a flag set by the handler, agreed
//! by all ranks with one all-reduce at the next step boundary.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use libc::c_int;

use super::boundary::StopRequest;

/// The exit status of a worker that stopped on request after committing a checkpoint: the
/// job should be requeued and resumed with `--resume latest`. (`EX_TEMPFAIL` of sysexits.h.)
pub const EXIT_CHECKPOINTED: u8 = 75;

/// A repeat of the first stop signal sooner than this is the same request delivered twice.
pub const REPEAT_AFTER: Duration = Duration::from_secs(1);

/// The stop signal besides SIGTERM and SIGINT: the one `#SBATCH --signal` sends before a time
/// limit. SIGUSR1 by default; SIGUSR2 and SIGHUP for the NCCL versions that catch SIGUSR1
/// (nvidia/nccl#704).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGUSR1.
    #[default]
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGHUP.
    Hup,
}

impl StopSignal {
    /// The signal number.
    pub fn number(self) -> c_int {
        match self {
            StopSignal::Usr1 => libc::SIGUSR1,
            StopSignal::Usr2 => libc::SIGUSR2,
            StopSignal::Hup => libc::SIGHUP,
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(signal_name(self.number()))
    }
}

impl FromStr for StopSignal {
    type Err = String;

    /// `USR1`, `SIGUSR1`, `usr2`, `HUP`, … (case-insensitive, with or without `SIG`).
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        match upper.strip_prefix("SIG").unwrap_or(&upper) {
            "USR1" => Ok(StopSignal::Usr1),
            "USR2" => Ok(StopSignal::Usr2),
            "HUP" => Ok(StopSignal::Hup),
            _ => Err(format!("stop signal {s:?}: allowed values are USR1, USR2 and HUP")),
        }
    }
}

/// The usual name of the signals handled here (`SIGTERM`), `signal` otherwise.
pub fn signal_name(signal: c_int) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The first stop signal received (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// When it arrived, in nanoseconds of `CLOCK_MONOTONIC`.
static FIRST_AT: AtomicI64 = AtomicI64::new(0);
/// The same signal, repeated at least [`REPEAT_AFTER`] later: exit at once (0: not yet).
static INSIST: AtomicI32 = AtomicI32::new(0);
static INSTALLED: OnceLock<()> = OnceLock::new();

fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given and is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

extern "C" fn on_signal(signal: c_int) {
    // Only atomics and clock_gettime: async-signal-safe.
    let now = monotonic_ns();
    match FIRST.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => FIRST_AT.store(now, Ordering::SeqCst),
        Err(first) if first == signal => {
            if now - FIRST_AT.load(Ordering::SeqCst) >= REPEAT_AFTER.as_nanos() as i64 {
                INSIST.store(signal, Ordering::SeqCst);
            }
        }
        Err(_) => {}
    }
}

/// Makes SIGTERM, SIGINT and `stop_signal` request a stop through `request`, with `grace`
/// from the first signal to the forced exit (see the [module docs](self)). Call it once per
/// process, before training; later calls change nothing.
///
/// # Errors
/// When a handler cannot be installed or the watcher thread cannot start.
pub fn install(stop_signal: StopSignal, grace: Duration, request: StopRequest) -> io::Result<()> {
    if INSTALLED.set(()).is_err() {
        return Ok(());
    }
    for signal in [libc::SIGTERM, libc::SIGINT, stop_signal.number()] {
        set_handler(signal, on_signal)?;
    }
    let span = tracing::Span::current();
    std::thread::Builder::new().name("stop-signals".into()).spawn(move || {
        let _entered = span.enter();
        watch(grace, &request);
    })?;
    Ok(())
}

/// Installs `handler` for `signal` (`SA_RESTART`, nothing masked). The handler must be
/// async-signal-safe: touch atomics only. Handlers are reset to the default by `exec`.
///
/// # Errors
/// When `sigaction` refuses (an invalid signal, or SIGKILL/SIGSTOP).
pub fn set_handler(signal: c_int, handler: extern "C" fn(c_int)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler's safety is the caller's contract.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Polls the handler's record: announces the first signal, then exits the process when the
/// signal is repeated or the grace period is over.
fn watch(grace: Duration, request: &StopRequest) {
    const POLL: Duration = Duration::from_millis(20);
    let first = loop {
        let first = FIRST.load(Ordering::SeqCst);
        if first != 0 {
            break first;
        }
        std::thread::sleep(POLL);
    };
    let name = signal_name(first);
    request.request_by(first);
    tracing::warn!(
        signal = name,
        grace_seconds = grace.as_secs_f64(),
        "received {name}: stopping at the next step boundary with a checkpoint (exit status {EXIT_CHECKPOINTED}); \
         {name} again or {:.0} s without finishing exits at once without one",
        grace.as_secs_f64()
    );
    let deadline = FIRST_AT.load(Ordering::SeqCst).saturating_add(grace.as_nanos().min(i64::MAX as u128) as i64);
    loop {
        if INSIST.load(Ordering::SeqCst) != 0 {
            tracing::error!(signal = name, "received {name} again: exiting now, without a checkpoint of this stop");
            exit_now(first);
        }
        if monotonic_ns() >= deadline {
            tracing::error!(
                signal = name,
                "the stop requested by {name} did not finish within the {:.0} s grace period (--stop-grace): \
                 exiting now, without a checkpoint of this stop",
                grace.as_secs_f64()
            );
            exit_now(first);
        }
        std::thread::sleep(POLL);
    }
}

/// Ends the process at once, as the signal would have: no destructors, so no collective that
/// waits for another rank (an MPI finalize, an NCCL teardown) can hold the exit.
fn exit_now(signal: c_int) -> ! {
    use std::io::Write;
    let _ = io::stderr().flush();
    let _ = io::stdout().flush();
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(128 + signal) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_with_or_without_sig_and_name_the_allowed_values() {
        assert_eq!("USR1".parse(), Ok(StopSignal::Usr1));
        assert_eq!("sigusr2".parse(), Ok(StopSignal::Usr2));
        assert_eq!("SIGHUP".parse(), Ok(StopSignal::Hup));
        let err = "TERM".parse::<StopSignal>().unwrap_err();
        assert!(err.contains("USR1, USR2 and HUP"), "{err}");
        assert_eq!(StopSignal::default().number(), libc::SIGUSR1);
        assert_eq!(StopSignal::Hup.to_string(), "SIGHUP");
    }
}
