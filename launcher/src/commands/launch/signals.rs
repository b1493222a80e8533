//! The launcher's signals: handlers that only record which signals arrived (polled by the
//! supervision loop), and the helpers that deliver signals to workers.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use libc::c_int;

/// The signals the launcher catches and forwards to its workers: each is a stop request
/// (SIGTERM and SIGINT, and the checkpoint signals a `train --stop-signal` may name).
pub(crate) const CAUGHT: [c_int; 5] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

/// One bit per signal number that arrived since the last [`take_pending`].
static PENDING: AtomicU32 = AtomicU32::new(0);

extern "C" fn record(signal: c_int) {
    // An atomic read-modify-write is async-signal-safe.
    if (0..32).contains(&signal) {
        PENDING.fetch_or(1 << signal, Ordering::SeqCst);
    }
}

/// Installs the recording handler for every signal in [`CAUGHT`]. Handlers are reset to the
/// default by `exec`, so the workers start with the usual dispositions.
pub(crate) fn install() -> io::Result<()> {
    CAUGHT.into_iter().try_for_each(|signal| clipfleet_trainer::run::signals::set_handler(signal, record))
}

/// The signals that arrived since the last call, in increasing number, and clears them.
pub(crate) fn take_pending() -> Vec<c_int> {
    let bits = PENDING.swap(0, Ordering::SeqCst);
    (1..32).filter(|s| bits & (1 << s) != 0).collect()
}

/// The usual name of a signal (`SIGKILL`), or `signal N` for uncommon ones.
pub(crate) fn name(signal: c_int) -> String {
    let known = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => return format!("signal {signal}"),
    };
    known.to_owned()
}

/// Sends `signal` to every process of the group `pgid`. A group that is already gone is not an error.
pub(crate) fn to_group(pgid: libc::pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: kill has no memory effects; a negative pid names a process group.
    checked(unsafe { libc::kill(-pgid, signal) })
}

/// Sends `signal` to one process. A process that is already gone is not an error.
pub(crate) fn to_process(pid: libc::pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    checked(unsafe { libc::kill(pid, signal) })
}

fn checked(rc: c_int) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// The processes whose parent is `pid`, from `/proc` (empty where `/proc` cannot be read).
/// `mpirun` puts each local rank in a group of its own, so killing `mpirun`'s group misses them.
pub(crate) fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().and_then(|s| parent_pid(&s)) == Some(pid)
        })
        .collect()
}

/// The parent pid in the text of `/proc/PID/stat`: `pid (comm) state ppid …`, where `comm` may
/// hold spaces and parentheses, so the fields are counted from the last `)`.
fn parent_pid(stat: &str) -> Option<libc::pid_t> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_skips_a_command_with_spaces() {
        assert_eq!(parent_pid("123 (sleep) S 45 123 45 0 -1"), Some(45));
        assert_eq!(parent_pid("123 (a) b (c)) R 7 1"), Some(7));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn names_of_signals() {
        assert_eq!(name(libc::SIGKILL), "SIGKILL");
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(40), "signal 40");
    }

    #[test]
    fn children_of_this_process_include_a_spawned_child() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let found = children_of(std::process::id() as libc::pid_t);
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(found.contains(&(child.id() as libc::pid_t)), "{found:?} lacks {}", child.id());
    }
}
