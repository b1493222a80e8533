//! Multi-process training with real OpenMPI: `clipfleet launch --nproc-per-node 2 --backend
//! mpi -- train …` ends with the weights of one process training on the same global batch
//! (synthetic data and shards), gradient caching matches one pass, and the launcher restarts
//! the group from the last checkpoint when a worker is killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, ok, refs, run, stderr, tiny_args};

/// Largest |a − b| over every weight two runs end with. After a few AdamW steps, fp32
/// rounding differences of ~1e-6 in a gradient (another summation order across ranks) move a
/// weight by at most a small fraction of the learning rate (5e-4): Adam normalises each
/// update, so a near-zero gradient entry can flip its small update.
const WEIGHT_TOLERANCE: f64 = 1e-4;

fn weights(run: &Path, step: i64) -> Vec<(String, tch::Tensor)> {
    let path = run.join(format!("checkpoints/step_{step}/model.safetensors"));
    let mut w = tch::Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn max_weight_difference(a: &Path, b: &Path, step: i64) -> f64 {
    let (wa, wb) = (weights(a, step), weights(b, step));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .zip(&wb)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// Asserts that runs `a` and `b` end step `step` with weights within [`WEIGHT_TOLERANCE`],
/// printing the difference under `what`.
fn assert_same_weights(a: &Path, b: &Path, step: i64, what: &str) {
    let diff = max_weight_difference(a, b, step);
    eprintln!("{what}: max |Δw| = {diff:e}");
    assert!(diff <= WEIGHT_TOLERANCE, "{what}: max |Δw| = {diff:e}");
}

/// `state.json` of checkpoint `step` of `run`.
fn checkpoint_state(run: &Path, step: i64) -> serde_json::Value {
    let path = run.join(format!("checkpoints/step_{step}/state.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("state.json")).expect("json")
}

/// `train` flags with `--batch-size` replaced.
fn with_batch(mut args: Vec<String>, batch: i64) -> Vec<String> {
    let i = args.iter().position(|a| a == "--batch-size").expect("--batch-size");
    args[i + 1] = batch.to_string();
    args
}

/// `clipfleet launch --nproc-per-node N --backend mpi [EXTRA] -- ARGS`.
fn launch_args(n: usize, extra: &[&str], worker: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        ["launch", "--nproc-per-node", &n.to_string(), "--backend", "mpi"].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(worker.iter().cloned());
    args
}

fn eval_report(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).expect("eval.json")).expect("json")
}

fn assert_same_eval(a: &Path, b: &Path) {
    let (ea, eb) = (eval_report(a), eval_report(b));
    for key in ["image_to_text_r1", "text_to_image_r1", "val_loss"] {
        let (x, y) = (ea[key].as_f64().expect(key), eb[key].as_f64().expect(key));
        assert!((x - y).abs() <= 1e-3, "{key}: {x} vs {y}\n{ea}\n{eb}");
    }
}

#[test]
fn two_mpi_workers_train_like_one_process_on_synthetic_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(run(&refs(&with_batch(tiny_args(&one, 6, 3), 16))));
    let out = ok(run(&refs(&launch_args(2, &[], &with_batch(tiny_args(&two, 6, 3), 8)))));
    let log = stderr(&out);
    assert!(log.contains("\"mode\":\"mpi\"") && log.contains("\"world_size\":2"), "{log}");
    assert_same_weights(&one, &two, 6, "2 MPI workers × 8 vs 1 process × 16, 6 steps");
    assert_same_eval(&one, &two);
    // The 2-worker checkpoint says so.
    let state = checkpoint_state(&two, 3);
    assert_eq!((state["world_size"].as_u64(), state["global_batch"].as_i64()), (Some(2), Some(16)), "{state}");
}

/// Two `clipfleet train` processes, started by nothing but their environment (as two Kubeflow
/// pods are: `PET_*`, `RANK` the pod index, no `LOCAL_RANK`), pick the tcp backend and train
/// like one process with the whole batch.
#[test]
fn two_tcp_workers_from_a_kubeflow_environment_train_like_one_process() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(run(&refs(&with_batch(tiny_args(&one, 6, 3), 16))));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let workers: Vec<_> = (0..2)
        .map(|rank| {
            std::process::Command::new(bin())
                .args(refs(&with_batch(tiny_args(&two, 6, 3), 8)))
                .args(["--log-format", "json"])
                .env("OMP_NUM_THREADS", "1")
                .envs([
                    ("RANK", rank.to_string()),
                    ("WORLD_SIZE", "2".into()),
                    ("MASTER_ADDR", "127.0.0.1".into()),
                    ("MASTER_PORT", port.to_string()),
                    ("PET_NNODES", "2".into()),
                    ("PET_NPROC_PER_NODE", "1".into()),
                    ("PET_NODE_RANK", rank.to_string()),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a worker")
        })
        .collect();
    for worker in workers {
        let out = ok(worker.wait_with_output().expect("wait"));
        let log = stderr(&out);
        assert!(log.contains("\"mode\":\"kubeflow\"") && log.contains("\"backend\":\"tcp\""), "{log}");
    }
    assert_same_weights(&one, &two, 6, "2 tcp workers × 8 vs 1 process × 16, 6 steps");
    assert_same_eval(&one, &two);
}

#[test]
fn two_mpi_workers_train_like_one_process_on_shards_and_resume_on_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("shards");
    let o = dir.to_str().expect("utf-8");
    ok(run(&["shards", "make", "--synthetic", "240", "--samples-per-shard", "30", "--output", o]));
    let train = format!("{o}/shard-{{000000..000007}}.tar");
    let shard_flags = |args: Vec<String>| {
        let mut args = args;
        args.extend(["--train-data", &train, "--workers", "1", "--shuffle-window", "16"].map(String::from));
        args
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(run(&refs(&shard_flags(with_batch(tiny_args(&one, 6, 3), 16)))));
    ok(run(&refs(&launch_args(2, &[], &shard_flags(with_batch(tiny_args(&two, 6, 3), 8))))));
    assert_same_weights(&one, &two, 6, "shards: 2 MPI workers × 8 vs 1 process × 16, 6 steps");

    // The 2-worker checkpoint holds every partition's cursor, merged by rank 0; one process
    // resumes from it and continues the same batches.
    let state = checkpoint_state(&two, 3);
    assert_eq!(state["shards"]["cursors"].as_object().map(|c| c.len()), Some(8), "{state}");
    let resumed = tmp.path().join("resumed");
    copy_dir(&two.join("checkpoints/step_3"), &resumed.join("checkpoints/step_3"));
    std::fs::write(resumed.join("checkpoints/latest"), "step_3").expect("latest");
    let mut args = shard_flags(with_batch(tiny_args(&resumed, 6, 3), 16));
    args.extend(["--resume", "latest"].map(String::from));
    ok(run(&refs(&args)));
    assert_same_weights(&one, &resumed, 6, "shards: 2 workers to step 3, then 1 process to step 6, vs 1 process");
}

#[test]
fn gradient_caching_trains_like_one_pass() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, cached) = (tmp.path().join("one"), tmp.path().join("cached"));
    ok(run(&refs(&with_batch(tiny_args(&one, 4, 0), 16))));
    let mut args = with_batch(tiny_args(&cached, 4, 0), 4);
    args.extend(["--accum-freq", "4", "--loss-block-rows", "5"].map(String::from));
    ok(run(&refs(&args)));
    assert_same_weights(&one, &cached, 4, "--batch-size 4 --accum-freq 4 vs --batch-size 16, 4 steps");
}

#[test]
fn siglip_trains_across_two_mpi_workers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let siglip = |mut args: Vec<String>| {
        args.extend(["--loss", "siglip", "--check-params-every", "1"].map(String::from));
        args
    };
    ok(run(&refs(&siglip(with_batch(tiny_args(&one, 4, 0), 16)))));
    ok(run(&refs(&launch_args(2, &[], &siglip(with_batch(tiny_args(&two, 4, 0), 8))))));
    assert_same_weights(&one, &two, 4, "siglip: 2 MPI workers × 8 vs 1 process × 16, 4 steps");
    let bias = weights(&two, 4).into_iter().find(|(n, _)| n == "logit_bias").expect("logit_bias").1;
    let bias = bias.double_value(&[]);
    assert!(bias != -10.0 && (bias + 10.0).abs() < 0.1, "the learnable bias starts at -10 and moves: {bias}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Pids of `clipfleet-core train` workers whose command line mentions `output`.
fn worker_pids(output: &Path) -> Vec<u32> {
    let needle = output.to_str().expect("utf-8");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.get(1).map(String::as_str) == Some("train") && args.iter().any(|a| a == needle) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// Starts `clipfleet launch ARGS` with its output piped, waits until `output` has a committed
/// checkpoint, and returns the child with the pid of its last worker.
// The child is returned to the caller, which waits for it (the lint does not follow it there).
#[allow(clippy::zombie_processes)]
fn launch_until_checkpoint(args: &[String], output: &Path) -> (std::process::Child, u32) {
    let mut child = Command::new(bin())
        .args(args)
        .args(["--log-format", "json"])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn launch");
    let start = Instant::now();
    let latest = output.join("checkpoints/latest");
    loop {
        if start.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no checkpoint appeared");
        }
        if latest.exists() {
            if let Some(&pid) = worker_pids(output).last() {
                return (child, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A worker SIGKILLed mid-run: the launcher stops the other, restarts the group from the last
/// checkpoint, and the run completes with the weights of an uninterrupted run.
#[test]
fn launcher_restarts_the_group_after_a_worker_is_killed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let steps = 40;
    let worker = |output: &PathBuf| with_batch(tiny_args(output, steps, 5), 8);
    ok(run(&refs(&launch_args(2, &[], &worker(&straight)))));

    let args = launch_args(2, &["--max-restarts", "2", "--grace-period", "5"], &worker(&killed));
    let (child, victim) = launch_until_checkpoint(&args, &killed);
    // SAFETY: sends SIGKILL to a worker process this test's launcher started.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let out = child.wait_with_output().expect("wait");
    let log = stderr(&out);
    assert!(out.status.success(), "the launcher did not finish the run: {:?}\n{log}", out.status);
    assert!(log.contains("restart"), "{log}");
    let state = checkpoint_state(&killed, steps);
    assert_eq!(state["step"], steps);
    assert_same_weights(&straight, &killed, steps, &format!("killed and restarted vs uninterrupted, {steps} steps"));
}

/// One worker fails while the other waits in a collective: the failing worker aborts the job
/// (a graceful MPI shutdown would wait forever for its peer), and the launcher reports the rank.
#[test]
fn one_failing_worker_ends_the_job_instead_of_hanging_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let args = launch_args(2, &["--grace-period", "5"], &with_batch(tiny_args(&run_dir, 6, 0), 8));
    let mut child = Command::new(bin())
        .args(&args)
        .args(["--log-format", "json"])
        .env("CLIPFLEET_FAULT", "fail-on-rank-1:3")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn launch");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            for pid in worker_pids(&run_dir) {
                // SAFETY: kills the workers this test's launcher started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            panic!("the job hung after one worker failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("wait");
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("worker rank 1 of 2 failed") && log.contains("injected fault"), "{log}");
    // The launcher names the rank and its error from the worker's error file, whether or not
    // mpirun printed which rank called MPI_Abort.
    assert!(log.contains("error: worker rank 1 failed: exit status 1 (pid "), "{log}");
    assert!(log.contains("): injected fault: rank 1 fails at step 3"), "{log}");
}

/// A restarted worker (`CLIPFLEET_RESTART_COUNT` > 0) given `--resume PATH` continues its own
/// run from `--output`'s newest checkpoint once there is one, and starts from PATH before that.
#[test]
fn a_restarted_worker_prefers_its_runs_newest_checkpoint_over_resume_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (base, fine) = (tmp.path().join("base"), tmp.path().join("fine"));
    ok(run(&refs(&tiny_args(&base, 2, 0))));
    let mut args = tiny_args(&fine, 4, 3);
    args.extend(["--resume", base.to_str().expect("utf-8")].map(String::from));
    let restarted = [("CLIPFLEET_RESTART_COUNT", "1")];
    // No checkpoint of its own yet: it starts from the named one (step 2).
    let log = stderr(&ok(crate::common::run_env(&refs(&args), &restarted)));
    assert!(log.contains("\"message\":\"resumed\"") && log.contains("\"step\":2"), "{log}");
    assert!(!log.contains("restarted: resuming"), "{log}");
    // Now it has one (step 4): a restart continues from it, not from the named one.
    let log = stderr(&ok(crate::common::run_env(&refs(&args), &restarted)));
    assert!(log.contains("restarted: resuming from the run's newest checkpoint"), "{log}");
    assert!(log.contains("\"step\":4"), "{log}");
    // Without the restart count, --resume PATH means PATH.
    let log = stderr(&ok(run(&refs(&args))));
    assert!(!log.contains("restarted: resuming"), "{log}");
}

/// Issue 10: `clipfleet eval` on a 2-worker run's checkpoint reads the same data in the same
/// batches (batch_size × world_size) as the run's own final evaluation, so it prints its
/// `eval.json`.
#[test]
fn eval_of_a_two_worker_checkpoint_equals_the_runs_eval_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let two = tmp.path().join("two");
    ok(run(&refs(&launch_args(2, &[], &with_batch(tiny_args(&two, 4, 0), 8)))));
    let out = ok(run(&["eval", "--checkpoint", two.to_str().expect("utf-8"), "--device", "cpu", "--json"]));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let saved = eval_report(&two);
    let (printed, saved) = (printed.as_object().expect("object"), saved.as_object().expect("object"));
    assert_eq!(printed.keys().collect::<Vec<_>>(), saved.keys().collect::<Vec<_>>());
    for (key, want) in saved {
        let got = &printed[key];
        match (want.as_f64(), got.as_f64()) {
            // The same weights and batches; libtorch's thread count may differ (1 per worker
            // in the run, all cores in `eval`), which may move the last bits of a sum.
            (Some(w), Some(g)) => assert!((w - g).abs() <= 1e-6, "{key}: eval.json {w} vs clipfleet eval {g}"),
            _ => assert_eq!(want, got, "{key}"),
        }
    }
}

/// A stop request on one rank (as a preemption signal will make) ends every rank at the same
/// step boundary, with a checkpoint of that step and no final evaluation.
#[test]
fn a_stop_request_on_one_rank_ends_every_rank_at_the_same_step_with_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let two = tmp.path().join("two");
    let args = launch_args(2, &[], &with_batch(tiny_args(&two, 10, 0), 8));
    let out = crate::common::run_env(&refs(&args), &[("CLIPFLEET_FAULT", "stop-on-rank-1:2")]);
    assert_eq!(out.status.code(), Some(75), "checkpointed, requeue me: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stopped at step 3"), "{stdout}\n{}", stderr(&out));
    let latest = std::fs::read_to_string(two.join("checkpoints/latest")).expect("latest");
    assert_eq!(latest.trim(), "step_3");
    assert_eq!(checkpoint_state(&two, 3)["step"], 3);
    assert!(!two.join("eval.json").exists(), "a stopped run does not evaluate");
}

/// Every (name, tensor) of checkpoint `step` of `run`, bitwise compared with another run's.
fn assert_bitwise_weights(a: &Path, b: &Path, step: i64, what: &str) {
    for ((na, ta), (_, tb)) in weights(a, step).iter().zip(&weights(b, step)) {
        assert!(ta.equal(tb), "{what}: {na} differs");
    }
}

#[test]
fn a_nan_on_one_rank_skips_the_step_on_every_rank_and_the_weights_stay_equal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let skip = tmp.path().join("skip");
    // Rank 1's loss reads NaN at step 3: both ranks skip its update, and the parameter check
    // after every step (a collective over both ranks' checksums) proves the weights equal.
    let mut worker = with_batch(tiny_args(&skip, 6, 0), 8);
    worker.extend(["--check-params-every", "1", "--max-nonfinite-skips", "1"].map(String::from));
    let out = crate::common::run_env(&refs(&launch_args(2, &[], &worker)), &[("CLIPFLEET_FAULT", "nan-on-rank-1:2")]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let skipped = log.lines().filter(|l| l.contains("every rank skipped this step's update")).count();
    assert_eq!(skipped, 2, "both ranks log the skip of step 3:\n{log}");
    assert!(log.contains(r#""step":3"#), "{log}");

    // With no skip allowed, the run stops at that step, naming it.
    let stop = tmp.path().join("stop");
    let mut worker = with_batch(tiny_args(&stop, 6, 0), 8);
    worker.extend(["--max-nonfinite-skips", "0"].map(String::from));
    let out = crate::common::run_env(
        &refs(&launch_args(2, &["--max-restarts", "0"], &worker)),
        &[("CLIPFLEET_FAULT", "nan-on-rank-1:2")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not finite at step 3") && stderr(&out).contains("max_nonfinite_skips = 0"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rollback_after_a_nan_replays_from_the_checkpoint_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let straight = tmp.path().join("straight");
    ok(run(&refs(&launch_args(2, &[], &with_batch(tiny_args(&straight, 8, 4), 8)))));
    let rolled = tmp.path().join("rolled");
    let mut worker = with_batch(tiny_args(&rolled, 8, 4), 8);
    worker.extend(["--max-nonfinite-skips", "0", "--on-nonfinite", "rollback"].map(String::from));
    let out = crate::common::run_env(&refs(&launch_args(2, &[], &worker)), &[("CLIPFLEET_FAULT", "nan-on-rank-0:5")]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("rolled back to the last checkpoint"), "{log}");
    // Back to step 4, then steps 5 to 8 again on the same data: the straight run's weights.
    assert_bitwise_weights(&straight, &rolled, 8, "after a rollback");
}

/// A worker frozen with SIGSTOP: its peer's collective passes its deadline, the peer names the
/// frozen rank and the collective and exits, the launcher restarts the group from the last
/// checkpoint, and the run completes.
#[test]
fn a_frozen_worker_is_named_and_the_group_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("frozen");
    let timeout = 6;
    let mut worker = with_batch(tiny_args(&out_dir, 60, 5), 8);
    worker.extend(["--collective-timeout".to_string(), timeout.to_string()]);
    let args = launch_args(2, &["--max-restarts", "1", "--grace-period", "5"], &worker);
    let (child, victim) = launch_until_checkpoint(&args, &out_dir);
    // SAFETY: stops a worker process this test's launcher started (the launcher kills it later).
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGSTOP) }, 0);
    let out = child.wait_with_output().expect("wait");
    let log = stderr(&out);
    assert!(out.status.success(), "the launcher did not finish the run: {:?}\n{log}", out.status);
    let line = log
        .lines()
        .find(|l| l.contains("did not finish within the collective_timeout"))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("{line}");
    assert!(line.contains("suspect rank(s) 1") || line.contains("suspect rank(s) 0"), "{line}");
    assert!(
        ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "barrier"].iter().any(|c| line.contains(c)),
        "{line}"
    );
    let waited: f64 = line
        .split("(waited ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(waited < 2.0 * f64::from(timeout), "aborted after {waited} s: {line}");
    assert!(log.contains("restart"), "{log}");
    assert_eq!(checkpoint_state(&out_dir, 60)["step"], 60);
}
