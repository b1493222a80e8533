//! `clipfleet launch`: the environment each worker gets, failure handling, the grace period,
//! restarts with `--resume latest`, signal forwarding and exit codes. The workers are small
//! shell scripts (CLIPFLEET_LAUNCH_WORKER) that write what they saw into a temporary folder and
//! wait for each other through files, not sleeps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::bin;

/// Variables of the test's own environment that would change the launcher's decisions.
const PLACEMENT_VARS: [&str; 14] = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "SLURM_JOB_ID",
    "SLURM_NNODES",
    "SLURM_NODEID",
    "SLURM_STEP_ID",
    "JOB_COMPLETION_INDEX",
    "CLIPFLEET_NNODES",
    "CLIPFLEET_NPROC_PER_NODE",
    "CLIPFLEET_MASTER_ADDR",
];

/// A temporary folder with a fake worker script `worker.sh`; the script sees the folder as `$T`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(script: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write worker");
        let mut perms = std::fs::metadata(&path).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).expect("chmod");
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn command(&self, flags: &[&str], worker_args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(["--log-format", "json", "launch"]).args(flags).arg("--").args(worker_args);
        for var in PLACEMENT_VARS {
            cmd.env_remove(var);
        }
        cmd.env("CLIPFLEET_LAUNCH_WORKER", self.path("worker.sh")).env("T", self.dir.path());
        cmd
    }

    /// Runs the launcher to the end; returns its output and how long it took.
    fn run(&self, flags: &[&str], worker_args: &[&str]) -> (Output, Duration) {
        let start = Instant::now();
        let out = self.spawn(flags, worker_args).finish();
        (out, start.elapsed())
    }

    fn spawn(&self, flags: &[&str], worker_args: &[&str]) -> Launcher {
        let child = self
            .command(flags, worker_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clipfleet launch");
        Launcher { child: Some(child) }
    }
}

/// A running launcher; killed (and with it, its workers) if a test gives up on it.
struct Launcher {
    child: Option<Child>,
}

impl Launcher {
    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits for the launcher to exit; a launcher still running after 30 s fails the test.
    fn finish(mut self) -> Output {
        let mut child = self.child.take().expect("running");
        let stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut { stderr }, &mut buf);
            buf
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("clipfleet launch did not exit within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output { status, stdout: Vec::new(), stderr: reader.join().expect("stderr reader") }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits for `path` to exist (the workers' way of saying they are ready).
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
    }
}

/// Asserts that every pid written in the file `name` ends within two seconds.
fn assert_ended(fx: &Fixture, names: &[&str]) {
    for name in names {
        let pid: i32 = fx.read(name).trim().parse().expect("pid");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !ended(pid) {
            assert!(Instant::now() < deadline, "{name}: process {pid} is still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawn mode is exercised with `--backend nccl` (no GPU is needed to start the workers).
const SPAWN: [&str; 2] = ["--backend", "nccl"];

#[test]
fn launch_gives_each_worker_the_torchrun_variables_and_the_args_verbatim() {
    let fx = Fixture::new(
        r#"echo "$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $GROUP_RANK $CLIPFLEET_DIST_BACKEND $CLIPFLEET_RESTART_COUNT" > "$T/env.$RANK"
for a in "$@"; do echo "$a"; done > "$T/args.$RANK""#,
    );
    let flags =
        [&SPAWN[..], &["--nproc-per-node", "3", "--nnodes", "2", "--node-rank", "1", "--master-port", "4321"]].concat();
    let (out, _) = fx.run(&flags, &["train", "--config", "a b.toml", "--steps", "3"]);
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    for (rank, local) in [(3, 0), (4, 1), (5, 2)] {
        assert_eq!(fx.read(&format!("env.{rank}")).trim(), format!("{rank} {local} 6 3 127.0.0.1 4321 1 nccl 0"));
        assert_eq!(fx.read(&format!("args.{rank}")), "train\n--config\na b.toml\n--steps\n3\n");
    }
    assert!(!fx.path("env.0").exists() && !fx.path("env.6").exists());
}

#[test]
fn launch_derives_the_node_from_slurm_and_master_addr_overrides_it() {
    let fx = Fixture::new(r#"echo "$RANK $WORLD_SIZE $MASTER_ADDR $MASTER_PORT" > "$T/env.$RANK""#);
    let slurm = |cmd: &mut Command| {
        cmd.env("SLURM_JOB_ID", "77")
            .env("SLURM_STEP_ID", "0")
            .env("SLURM_NNODES", "2")
            .env("SLURM_NODEID", "1")
            .env("SLURM_JOB_NODELIST", "gpu[017-018]");
    };
    let mut cmd = fx.command(&[&SPAWN[..], &["--nproc-per-node", "2"]].concat(), &["train"]);
    slurm(&mut cmd);
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fx.read("env.2").trim(), "2 4 gpu017 29500");
    assert_eq!(fx.read("env.3").trim(), "3 4 gpu017 29500");
    assert!(stderr(&out).contains("node 1 of 2 (slurm)"), "{}", stderr(&out));

    let mut cmd = fx.command(&[&SPAWN[..], &["--nproc-per-node", "2"]].concat(), &["train"]);
    slurm(&mut cmd);
    let out = cmd.env("MASTER_ADDR", "login1").env("MASTER_PORT", "4000").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fx.read("env.2").trim(), "2 4 login1 4000");
}

#[test]
fn launch_stops_the_others_when_a_worker_fails() {
    let fx = Fixture::new(
        r#"if [ "$RANK" = 1 ]; then
  while [ ! -e "$T/pid.0" ] || [ ! -e "$T/pid.2" ]; do sleep 0.02; done
  exit 3
fi
sleep 60 &
echo $! > "$T/sleep.$RANK.tmp" && mv "$T/sleep.$RANK.tmp" "$T/sleep.$RANK"
echo $$ > "$T/pid.$RANK.tmp" && mv "$T/pid.$RANK.tmp" "$T/pid.$RANK"
wait"#,
    );
    let (out, took) = fx.run(&[&SPAWN[..], &["--nproc-per-node", "3", "--grace-period", "5"]].concat(), &["train"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("error: worker rank 1 failed: exit status 3"), "{err}");
    // The others are killed at once: a group with a dead rank can neither step nor checkpoint.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_ended(&fx, &["pid.0", "pid.2", "sleep.0", "sleep.2"]);
}

/// The report names the worker whose error file is the earliest (the root cause), even when a
/// peer exited first, and the launcher removes the error folder afterwards.
#[test]
fn launch_reports_the_root_cause_from_the_error_files() {
    let fx = Fixture::new(
        r#"echo "$CLIPFLEET_ERROR_DIR" > "$T/errors.$RANK"
case "$RANK" in
  2) printf '{"rank":2,"message":"CUDA out of memory","unix_time_ns":%s}' "$(date +%s%N)" > "$CLIPFLEET_ERROR_DIR/rank-2.json"
     sleep 60 ;;
  0) while [ ! -e "$CLIPFLEET_ERROR_DIR/rank-2.json" ]; do sleep 0.02; done
     exit 1 ;;
  *) sleep 60 ;;
esac"#,
    );
    let (out, _) = fx.run(&[&SPAWN[..], &["--nproc-per-node", "3", "--grace-period", "5"]].concat(), &["train"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "error: worker rank 2 failed: CUDA out of memory (first to exit: worker rank 0, exit status 1, pid"
        ),
        "{err}"
    );
    let folder = fx.read("errors.0");
    assert!(folder.trim().ends_with("/attempt-0"), "{folder}");
    assert_eq!(fx.read("errors.1"), folder, "one folder per attempt");
    assert!(!Path::new(folder.trim()).exists(), "{folder} is left behind");
}

/// The launcher's folder (error files, the `libnccl.so` link) is private: made under `$TMPDIR`
/// with mode 0700 and owned by the user, and removed when the launcher exits.
#[test]
fn launch_keeps_its_files_in_a_private_folder() {
    let fx = Fixture::new(
        r#"root=$(dirname "$CLIPFLEET_ERROR_DIR")
echo "$root" > "$T/root.$RANK"
stat -c '%a %u' "$root" "$CLIPFLEET_ERROR_DIR" > "$T/stat.$RANK"
first=${LD_LIBRARY_PATH%%:*}
echo "$first" > "$T/lib.$RANK"
case "$first" in "$root"/*) stat -c '%a %u' "$first" > "$T/libstat.$RANK"; test -L "$first/libnccl.so" || exit 7 ;; esac"#,
    );
    let child = fx
        .command(&[&SPAWN[..], &["--nproc-per-node", "2"]].concat(), &["train"])
        .env("TMPDIR", fx.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clipfleet launch");
    let out = Launcher { child: Some(child) }.finish();
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    let root = fx.read("root.0");
    let root = Path::new(root.trim());
    assert_eq!(root.parent(), Some(fx.dir.path()), "not under TMPDIR: {}", root.display());
    assert!(
        root.file_name().is_some_and(|n| n.to_string_lossy().starts_with("clipfleet-launch-")),
        "{}",
        root.display()
    );
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(fx.read("stat.0"), format!("700 {me}\n700 {me}\n"), "the folder and the attempt folder");
    let lib = fx.read("lib.0");
    if lib.trim().starts_with(&root.display().to_string()) {
        assert_eq!(Path::new(lib.trim()), root.join("nccl"));
        assert_eq!(fx.read("libstat.0"), format!("700 {me}\n"));
    } else {
        eprintln!("SKIPPED the libnccl.so check: no pip NCCL found, LD_LIBRARY_PATH starts with {}", lib.trim());
    }
    assert!(!root.exists(), "{} is left behind", root.display());
}

/// A stop signal sent again (a second Ctrl-C) is forwarded, and workers still running after
/// the grace period are killed.
#[test]
fn launch_kills_workers_that_ignore_a_repeated_stop_signal_after_the_grace_period() {
    let fx = Fixture::new(
        r#"trap 'echo term >> "$T/term.$RANK"' TERM
echo $$ > "$T/pid.$RANK.tmp" && mv "$T/pid.$RANK.tmp" "$T/pid.$RANK"
while :; do sleep 0.05; done"#,
    );
    let child = fx.spawn(&[&SPAWN[..], &["--nproc-per-node", "2", "--grace-period", "1"]].concat(), &["train"]);
    let launcher = child.pid();
    wait_for(&fx.path("pid.0"));
    wait_for(&fx.path("pid.1"));
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGTERM) }, 0);
    wait_for(&fx.path("term.1"));
    std::thread::sleep(Duration::from_millis(1300));
    let again = Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGTERM) }, 0);
    let out = child.finish();
    let (err, took) = (stderr(&out), again.elapsed());
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(took >= Duration::from_secs(1), "SIGKILL came before the grace period: {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(err.contains("sending SIGKILL"), "{err}");
    assert_eq!(fx.read("term.0"), "term\nterm\n", "SIGTERM reached rank 0 other than twice");
    assert_ended(&fx, &["pid.0", "pid.1"]);
}

/// Rank 0 fails on the first attempt only; every attempt records its arguments.
const FAIL_ONCE: &str = r#"for a in "$@"; do echo "$a"; done > "$T/args.$RANK.$CLIPFLEET_RESTART_COUNT"
if [ "$RANK" = 0 ] && [ ! -e "$T/failed" ]; then touch "$T/failed"; exit 1; fi
if [ ! -e "$T/failed" ]; then sleep 30; fi"#;

#[test]
fn launch_restarts_with_resume_latest() {
    let fx = Fixture::new(FAIL_ONCE);
    let flags = [&SPAWN[..], &["--nproc-per-node", "2", "--grace-period", "2", "--max-restarts", "1"]].concat();
    let (out, _) = fx.run(&flags, &["train", "--resume", "foo", "--steps", "3"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert!(err.contains("restart 1 of 1"), "{err}");
    // A named checkpoint is kept: the restarted worker (CLIPFLEET_RESTART_COUNT = 1) prefers
    // its --output's newest checkpoint and falls back to it.
    assert_eq!(fx.read("args.0.0"), "train\n--resume\nfoo\n--steps\n3\n");
    for rank in 0..2 {
        assert_eq!(fx.read(&format!("args.{rank}.1")), "train\n--resume\nfoo\n--steps\n3\n");
    }

    let fx = Fixture::new(FAIL_ONCE);
    let (out, _) = fx.run(&flags, &["train", "--steps", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fx.read("args.1.1"), "train\n--steps\n3\n--resume\nlatest\n");
}

#[test]
fn launch_without_restarts_fails_on_the_first_failure() {
    let fx = Fixture::new(FAIL_ONCE);
    let flags = [&SPAWN[..], &["--nproc-per-node", "2", "--grace-period", "2"]].concat();
    let (out, _) = fx.run(&flags, &["train"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: worker rank 0 failed: exit status 1"), "{err}");
    assert!(!fx.path("args.0.1").exists(), "restarted without --max-restarts");
}

/// A stop request reaches each worker once (a quick echo and another signal are the same
/// request); workers that checkpoint and exit 75 end the launch with 75, never restarted.
#[test]
fn launch_forwards_one_stop_request_and_exits_75_when_the_workers_checkpoint() {
    let fx = Fixture::new(
        r#"trap 'echo usr1 >> "$T/usr1.$RANK"; sleep 0.3; exit 75' USR1
echo $$ > "$T/pid.$RANK.tmp" && mv "$T/pid.$RANK.tmp" "$T/pid.$RANK"
while :; do sleep 0.05; done"#,
    );
    let flags = [&SPAWN[..], &["--nproc-per-node", "2", "--grace-period", "5", "--max-restarts", "1"]].concat();
    let child = fx.spawn(&flags, &["train"]);
    let launcher = child.pid();
    wait_for(&fx.path("pid.0"));
    wait_for(&fx.path("pid.1"));
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGTERM) }, 0);
    let out = child.finish();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(!err.contains("restarting"), "{err}");
    for rank in 0..2 {
        assert_eq!(fx.read(&format!("usr1.{rank}")), "usr1\n", "rank {rank} got SIGUSR1 other than once");
    }
    assert_ended(&fx, &["pid.0", "pid.1"]);
}

/// Workers signalled directly (Slurm signals every process of a step) that checkpoint and exit
/// 75 are no failure: the launcher exits 75 and does not restart them.
#[test]
fn launch_treats_workers_that_exit_75_as_checkpointed_not_failed() {
    let fx = Fixture::new(r#"if [ "$RANK" = 1 ]; then sleep 0.5; fi; exit 75"#);
    let flags = [&SPAWN[..], &["--nproc-per-node", "2", "--max-restarts", "1"]].concat();
    let (out, _) = fx.run(&flags, &["train"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(!err.contains("restarting") && !err.contains("failed"), "{err}");
}

#[test]
fn launch_reports_a_worker_killed_by_a_signal() {
    let fx = Fixture::new(r#"if [ "$RANK" = 1 ]; then kill -9 $$; fi; sleep 30"#);
    let (out, _) = fx.run(&[&SPAWN[..], &["--nproc-per-node", "2", "--grace-period", "2"]].concat(), &["train"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("error: worker rank 1 failed: killed by signal 9 (SIGKILL)"), "{err}");
}

#[test]
fn launch_single_worker_without_gpu_is_a_plain_spawn() {
    let fx = Fixture::new(r#"echo "$RANK $WORLD_SIZE $CLIPFLEET_DIST_BACKEND" > "$T/env""#);
    let (out, _) = fx.run(&["--nproc-per-node", "1"], &["eval"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = fx.read("env");
    // On a GPU machine auto picks nccl.
    assert!(env == "0 1 single\n" || env == "0 1 nccl\n", "{env:?}");
}

#[test]
fn launch_refuses_mpi_across_nodes_and_without_mpirun() {
    let fx = Fixture::new("exit 0");
    let (out, _) = fx.run(&["--backend", "mpi", "--nnodes", "2", "--node-rank", "0"], &["train"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("srun --mpi=pmix") && err.contains("hostfile"), "{err}");

    let empty = tempfile::tempdir().expect("tempdir");
    let out = fx
        .command(&["--backend", "mpi", "--nproc-per-node", "2"], &["train"])
        .env("PATH", empty.path())
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("mpirun") && err.contains("PATH"), "{err}");

    // Restarts are per node: with several nodes they are refused, naming the alternative.
    let (out, _) = fx.run(
        &[&SPAWN[..], &["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1", "--max-restarts", "1"]]
            .concat(),
        &["train"],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("--max-restarts 1 with 2 nodes") && err.contains("--requeue"), "{err}");
}

/// The MPI-mode tests need OpenMPI, which `scripts/setup.sh` installs: its absence is a broken
/// setup, reported as a failure rather than a pass.
fn have_mpirun() -> bool {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "mpirun (OpenMPI) is not on PATH: run scripts/setup.sh, which installs openmpi-bin");
    found
}

#[test]
fn launch_mpi_mode_runs_one_mpirun() {
    if !have_mpirun() {
        return;
    }
    let fx = Fixture::new(
        r#"echo "$OMPI_COMM_WORLD_RANK $OMPI_COMM_WORLD_SIZE rank=$RANK $CLIPFLEET_DIST_BACKEND $CLIPFLEET_RESTART_COUNT $*" > "$T/env.$OMPI_COMM_WORLD_RANK""#,
    );
    let mut cmd = fx.command(&["--backend", "mpi", "--nproc-per-node", "2"], &["train", "--steps", "2"]);
    // A RANK inherited by the launcher must not reach the ranks (it would win over OMPI_*).
    let out = cmd.env("RANK", "9").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fx.read("env.0").trim(), "0 2 rank= mpi 0 train --steps 2");
    assert_eq!(fx.read("env.1").trim(), "1 2 rank= mpi 0 train --steps 2");
}

#[test]
fn launch_mpi_mode_reports_a_failure() {
    if !have_mpirun() {
        return;
    }
    let fx = Fixture::new(r#"if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then exit 3; fi; sleep 30"#);
    let (out, took) = fx.run(&["--backend", "mpi", "--nproc-per-node", "2", "--grace-period", "2"], &["train"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    // mpirun names the failed rank only sometimes; otherwise the launcher names mpirun.
    assert!(
        err.contains("error: worker rank 1 failed: exit status 3")
            || err.contains("error: mpirun failed: exit status 3"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn launch_has_help_and_needs_a_worker_command() {
    let out = Command::new(bin()).args(["launch", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for flag in [
        "Usage",
        "--nproc-per-node",
        "--nnodes",
        "--node-rank",
        "--master-addr",
        "--max-restarts",
        "--grace-period",
        "--backend",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
    let out = Command::new(bin()).args(["launch", "--nproc-per-node", "2"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("WORKER ARGS"), "{}", stderr(&out));
}
