//! Stop requests by signal (preemption, time limits): SIGTERM or the checkpoint signal stops a
//! run at the next step with a checkpoint and exit status 75, and `--resume latest` continues
//! it bit for bit; the same signal again, or the grace deadline, exits at once without a
//! checkpoint; `clipfleet launch` forwards the request and exits 75 too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{bin, ok, refs, run, tiny_args};

/// A running `clipfleet` whose stderr lines are collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn start(args: &[String], env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(bin());
        cmd.args(refs(args))
            .args(["--log-format", "json"])
            .env("OMP_NUM_THREADS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn clipfleet");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
            text
        });
        Running { child, lines, stdout: Some(stdout) }
    }

    /// Waits (up to 120 s) for a stderr line that contains `needle`.
    fn wait_for(&self, needle: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if self.lines.lock().expect("lines").iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no line with {needle:?} in 120 s:\n{}", self.stderr());
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// Waits for the exit: the status code and stdout.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().expect("wait");
        let stdout = self.stdout.take().expect("stdout").join().expect("stdout thread");
        // The stderr reader ends with the pipe.
        std::thread::sleep(Duration::from_millis(50));
        (status.code(), stdout, self.stderr())
    }

    fn stderr(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }
}

fn latest(run_dir: &Path) -> Option<String> {
    std::fs::read_to_string(run_dir.join("checkpoints/latest")).ok().map(|s| s.trim().to_owned())
}

/// The step `stopped at step N on request` names on stdout.
fn stopped_step(stdout: &str) -> i64 {
    let rest = stdout.split("stopped at step ").nth(1).unwrap_or_else(|| panic!("not stopped:\n{stdout}"));
    rest.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a step number")
}

/// SIGTERM, SIGUSR1 (the default checkpoint signal) and SIGUSR2 (chosen with --stop-signal)
/// each stop a run mid-training in well under 10 s: one step and one checkpoint. A request
/// delivered twice at once (as Slurm and a launcher may) is one request.
#[test]
fn a_stop_signal_checkpoints_and_exits_75_within_seconds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, libc::c_int, &[&str]); 3] = [
        ("SIGTERM", libc::SIGTERM, &[]),
        ("SIGUSR1", libc::SIGUSR1, &[]),
        ("SIGUSR2", libc::SIGUSR2, &["--stop-signal", "USR2"]),
    ];
    for (name, signal, extra) in cases {
        let run_dir = tmp.path().join(name);
        let mut args = tiny_args(&run_dir, 100_000, 100_000);
        args.extend(extra.iter().map(|s| s.to_string()));
        let running = Running::start(&args, &[]);
        running.wait_for(r#""step":3,"#);
        let sent = Instant::now();
        running.signal(signal);
        if signal == libc::SIGUSR1 {
            running.signal(signal); // the same request, delivered twice
        }
        let (code, stdout, stderr) = running.finish();
        let took = sent.elapsed();
        eprintln!("{name}: stopped in {:.2} s", took.as_secs_f64());
        assert_eq!(code, Some(75), "{name}: {stderr}");
        assert!(took < Duration::from_secs(10), "{name}: the stop took {took:?}");
        let step = stopped_step(&stdout);
        assert_eq!(latest(&run_dir), Some(format!("step_{step}")), "{name}");
        assert!(run_dir.join(format!("checkpoints/step_{step}/manifest.json")).is_file());
        assert!(stderr.contains(&format!("received {name}: stopping at the next step boundary")), "{stderr}");
        assert!(!run_dir.join("eval.json").exists(), "{name}: a stopped run does not evaluate");
    }
}

/// Stopping by signal at a random step and resuming with `--resume latest` gives the weights
/// and optimizer state of an uninterrupted run, byte for byte.
#[test]
fn a_signal_at_a_random_step_then_resume_latest_is_bitwise_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let steps = 40;
    let straight = tmp.path().join("straight");
    ok(run(&refs(&tiny_args(&straight, steps, 0))));

    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").subsec_nanos();
    let signal = if nanos.is_multiple_of(2) { libc::SIGTERM } else { libc::SIGUSR1 };
    let after_step = 2 + i64::from(nanos % 20);
    let stopped = tmp.path().join("stopped");
    let running = Running::start(&tiny_args(&stopped, steps, 0), &[]);
    running.wait_for(&format!(r#""step":{after_step},"#));
    running.signal(signal);
    let (code, stdout, stderr) = running.finish();
    assert_eq!(code, Some(75), "{stderr}");
    let at = stopped_step(&stdout);
    eprintln!("signal {signal} after step {after_step}: stopped at step {at}");
    assert!(at > after_step && at < steps, "stopped at step {at}");

    let mut resume = tiny_args(&stopped, steps, 0);
    resume.extend(["--resume".into(), "latest".into()]);
    let out = ok(run(&refs(&resume)));
    assert!(crate::common::stderr(&out).contains("resumed"));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(straight.join(format!("checkpoints/step_{steps}/{file}"))).expect("straight");
        let b = std::fs::read(stopped.join(format!("checkpoints/step_{steps}/{file}"))).expect("resumed");
        assert!(a == b, "{file} differs after a stop at step {at} and a resume");
    }
}

/// A stop that cannot finish (here: stalled in its checkpoint write) ends at the grace
/// deadline, and the same signal again ends it at once; neither leaves a committed checkpoint.
#[test]
fn the_same_signal_again_or_the_grace_deadline_exits_at_once_without_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (grace, repeat) in [("2", false), ("100", true)] {
        let run_dir = tmp.path().join(format!("grace{grace}"));
        let mut args = tiny_args(&run_dir, 100_000, 5);
        args.extend(["--stop-grace".into(), grace.into()]);
        let running = Running::start(&args, &[("CLIPFLEET_FAULT", "stall-in-checkpoint:5")]);
        running.wait_for("clipfleet-fault: stalled in checkpoint 5");
        let sent = Instant::now();
        running.signal(libc::SIGUSR1);
        if repeat {
            running.wait_for("received SIGUSR1");
            std::thread::sleep(Duration::from_millis(1200));
            running.signal(libc::SIGUSR1);
        }
        let (code, _, stderr) = running.finish();
        let took = sent.elapsed();
        assert_eq!(code, Some(128 + libc::SIGUSR1), "{stderr}");
        if repeat {
            assert!(took < Duration::from_secs(4), "{took:?}");
            assert!(stderr.contains("received SIGUSR1 again: exiting now"), "{stderr}");
        } else {
            assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(6), "{took:?}");
            assert!(stderr.contains("did not finish within the 2 s grace period"), "{stderr}");
        }
        assert_eq!(latest(&run_dir), None, "nothing was committed");
        assert!(!run_dir.join("checkpoints/step_5").exists());
    }
}

/// `clipfleet launch` forwards SIGTERM to its MPI ranks, which agree on the step, checkpoint
/// and exit 75; the launcher does not restart them and exits 75. The next launch resumes.
#[test]
fn launch_forwards_a_stop_and_exits_75_without_restarting() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no mpirun");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let launch = |steps: i64, resume: bool| {
        let mut args: Vec<String> =
            ["launch", "--nproc-per-node", "2", "--backend", "mpi", "--max-restarts", "2", "--"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(tiny_args(&run_dir, steps, 0));
        if resume {
            args.extend(["--resume".into(), "latest".into()]);
        }
        args
    };
    let running = Running::start(&launch(100_000, false), &[("OMP_NUM_THREADS", "1")]);
    running.wait_for(r#""step":2,"#);
    let sent = Instant::now();
    running.signal(libc::SIGTERM);
    let (code, stdout, stderr) = running.finish();
    eprintln!("launch: stopped in {:.2} s", sent.elapsed().as_secs_f64());
    assert_eq!(code, Some(75), "{stderr}");
    assert!(!stderr.contains("restarting"), "{stderr}");
    let step = stopped_step(&stdout);
    assert_eq!(latest(&run_dir), Some(format!("step_{step}")));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join(format!("checkpoints/step_{step}/state.json"))).expect("state.json"),
    )
    .expect("json");
    assert_eq!(state["step"], step);

    let out = Command::new(bin())
        .args(refs(&launch(step + 3, true)))
        .args(["--log-format", "json"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("launch");
    let out = ok(out);
    assert!(crate::common::stderr(&out).contains("resumed"), "{}", crate::common::stderr(&out));
    assert_eq!(latest(&run_dir), Some(format!("step_{}", step + 3)));
}
