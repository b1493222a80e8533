//! The MPI process group with real OpenMPI: `clipfleet-dist-check mpi` under
//! `mpirun --allow-run-as-root --oversubscribe -np N` checks all_gather, all_reduce (sum, avg),
//! broadcast, reduce_scatter and barrier across 2 and 4 ranks; outside mpirun the backend
//! refuses with a clear message (issue 4).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CHECK: &str = env!("CARGO_BIN_EXE_clipfleet-dist-check");

/// Variables of an enclosing launch that would change what the workers detect.
const LAUNCH_VARS: [&str; 12] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_RANK",
    "SLURM_PROCID",
    "SLURM_STEP_ID",
    "JOB_COMPLETION_INDEX",
];

/// Runs `cmd` with a deadline, killing it when it hangs. The launch variables of this process's
/// environment are removed, unless `cmd` sets them itself.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let set: Vec<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
    for var in LAUNCH_VARS {
        if !set.iter().any(|k| k == var) {
            cmd.env_remove(var);
        }
    }
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let id = child.id();
    let start = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait"));
    while !waiter.is_finished() {
        if start.elapsed() > limit {
            // Ends only the process this test started, by its id.
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().expect("join")
}

fn mpirun(np: usize) -> Output {
    mpirun_args(np, &["mpi"])
}

fn mpirun_args(np: usize, args: &[&str]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), CHECK])
        .args(args)
        // Containers often forbid the cross-memory-attach that OpenMPI's shared-memory transport
        // tries first; the copy-in/copy-out path works everywhere.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    if Command::new("mpirun").arg("--version").output().is_err() {
        panic!("mpirun is missing: run scripts/setup.sh (it installs openmpi-bin and libopenmpi-dev)");
    }
    run(cmd, Duration::from_secs(180))
}

fn assert_all_ranks_ok(np: usize) {
    let out = mpirun(np);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mpirun -np {np} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for rank in 0..np {
        let line = format!("rank {rank} of {np} (mpi backend, mpi launch): 13 checks ok");
        assert!(stdout.contains(&line), "missing {line:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
}

#[test]
fn mpi_collectives_across_2_ranks() {
    assert_all_ranks_ok(2);
}

#[test]
fn mpi_collectives_across_4_ranks() {
    assert_all_ranks_ok(4);
}

/// Runs `clipfleet-dist-check grads ARGS` on `np` MPI ranks (or one plain process for
/// `np = 1`) and returns each rank's relative gradient error against the one-process
/// autograd reference, checking every rank reported.
fn gradient_errors(np: usize, args: &[&str]) -> Vec<f64> {
    let mut all = vec!["grads"];
    all.extend_from_slice(args);
    let out = if np == 1 {
        let mut cmd = Command::new(CHECK);
        cmd.args(&all);
        run(cmd, Duration::from_secs(180))
    } else {
        mpirun_args(np, &all)
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grads {args:?} on {np} ranks failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let errors: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split("max relative gradient error ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(errors.len(), np, "one report per rank expected:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    errors
}

fn assert_gradients_match(np: usize, args: &[&str]) {
    for e in gradient_errors(np, args) {
        assert!(e <= 1e-5, "relative gradient error {e:e} > 1e-5 for {args:?} on {np} ranks");
    }
}

/// DESIGN §3's parity target: W ranks × b pairs give the parameter gradients of one process
/// with all W·b pairs (relative error ≤ 1e-5 in fp32), for CLIP and SigLIP.
#[test]
fn gradients_of_2_ranks_equal_one_process() {
    assert_gradients_match(2, &["clip", "8", "1"]);
    assert_gradients_match(2, &["siglip", "8", "1"]);
}

#[test]
fn gradients_of_4_ranks_equal_one_process() {
    assert_gradients_match(4, &["clip", "4", "1"]);
    assert_gradients_match(4, &["siglip", "4", "1"]);
}

/// Gradient caching: 4 micro-batches (and loss tiles smaller than the batch) give the
/// gradients of one pass over the whole batch, in one process and across ranks.
#[test]
fn gradient_caching_equals_one_pass() {
    assert_gradients_match(1, &["clip", "16", "4"]);
    assert_gradients_match(1, &["siglip", "16", "4", "3", "5"]);
    assert_gradients_match(2, &["clip", "8", "4", "3", "5"]);
}

/// FILIP's token-wise loss over the gathered batch: 2 ranks, and gradient caching, give the
/// gradients of one process's dense autograd loss (`filip_loss_global`), padding masked.
#[test]
fn filip_gradients_of_2_ranks_equal_one_process() {
    assert_gradients_match(1, &["filip", "8", "4", "3", "5"]);
    assert_gradients_match(2, &["filip", "8", "1"]);
    assert_gradients_match(2, &["filip", "8", "2", "--grad-checkpointing", "--patch-dropout", "0.5"]);
}

/// CoCa: the contrastive loss over the gathered batch plus the caption loss over the global
/// batch's tokens (each rank weighting its token sum by 2·W / the global count) give one
/// process's gradients, with and without gradient caching.
#[test]
fn coca_gradients_of_2_ranks_equal_one_process() {
    assert_gradients_match(1, &["clip", "8", "4", "--coca"]);
    assert_gradients_match(2, &["clip", "8", "1", "--coca"]);
    assert_gradients_match(2, &["clip", "8", "2", "--coca"]);
}

/// Patch dropout (FLIP): each sample keeps the patches drawn for its row of the global batch,
/// so 2 ranks (and gradient caching) give one process's gradients over the same samples.
#[test]
fn patch_dropout_gradients_of_2_ranks_equal_one_process() {
    assert_gradients_match(2, &["clip", "8", "1", "--patch-dropout", "0.5"]);
    assert_gradients_match(2, &["siglip", "8", "2", "--patch-dropout", "0.75"]);
}

/// Gradient checkpointing (with patch dropout, across 2 ranks and micro-batches) gives the
/// gradients of one process's plain autograd.
#[test]
fn grad_checkpointing_gradients_of_2_ranks_equal_one_process() {
    assert_gradients_match(1, &["clip", "8", "1", "--grad-checkpointing"]);
    assert_gradients_match(2, &["clip", "8", "1", "--grad-checkpointing"]);
    assert_gradients_match(2, &["siglip", "8", "4", "--grad-checkpointing", "--patch-dropout", "0.5"]);
}

/// The tcp backend: 3 processes started by nothing but torchrun's variables pass the same
/// collective checks as MPI.
#[test]
fn tcp_collectives_across_3_processes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let np = 3;
    let ranks: Vec<_> = (0..np)
        .map(|rank| {
            std::thread::spawn(move || {
                let mut cmd = Command::new(CHECK);
                cmd.arg("tcp").envs([
                    ("RANK", rank.to_string()),
                    ("WORLD_SIZE", np.to_string()),
                    ("MASTER_ADDR", "127.0.0.1".into()),
                    ("MASTER_PORT", port.to_string()),
                ]);
                run(cmd, Duration::from_secs(120))
            })
        })
        .collect();
    for (rank, out) in ranks.into_iter().map(|t| t.join().expect("rank thread")).enumerate() {
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "rank {rank} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let line = format!("rank {rank} of {np} (tcp backend, torchrun launch): 13 checks ok");
        assert!(stdout.contains(&line), "missing {line:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
}

#[test]
fn mpi_backend_outside_mpirun_fails_clearly() {
    let mut cmd = Command::new(CHECK);
    cmd.arg("mpi");
    let out = run(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mpi backend on rank 0: this process was not launched under MPI")
            && stderr.contains("mpirun -np N"),
        "{stderr}"
    );
}

#[test]
fn unknown_backend_names_the_allowed_ones() {
    let mut cmd = Command::new(CHECK);
    cmd.arg("gloo");
    let out = run(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown distributed backend \"gloo\": allowed nccl, mpi, tcp, single"), "{stderr}");
}

/// NCCL with one rank on a GPU (NCCL refuses two ranks on one GPU, DESIGN §2): the worker finds
/// pip's `libnccl.so.2` through a `libnccl.so` link on `LD_LIBRARY_PATH`, as docs/distributed.md
/// tells users to set up.
#[test]
fn nccl_collectives_on_one_gpu() {
    if tch::Cuda::device_count() == 0 {
        eprintln!("SKIPPED nccl_collectives_on_one_gpu: no CUDA device visible");
        return;
    }
    let libnccl = clipfleet_trainer::dist::nccl::find_libnccl()
        .expect("a GPU is visible but no libnccl.so.2 was found next to torch or on LD_LIBRARY_PATH");
    let dir = tempfile::tempdir().unwrap();
    let links = clipfleet_trainer::dist::nccl::link_libnccl(&libnccl, dir.path()).unwrap();
    let path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) => std::env::join_paths(std::iter::once(links).chain(std::env::split_paths(&old))).unwrap(),
        None => links.into_os_string(),
    };
    let mut cmd = Command::new(CHECK);
    cmd.arg("nccl").env("LD_LIBRARY_PATH", path);
    let out = run(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("rank 0 of 1 (nccl backend, single launch): 13 checks ok"), "{stdout}\n{stderr}");
}

/// Without a GPU the nccl backend says so, in the worker's own words.
#[test]
fn nccl_backend_without_a_gpu_fails_clearly() {
    if tch::Cuda::device_count() > 0 {
        eprintln!("SKIPPED nccl_backend_without_a_gpu_fails_clearly: a CUDA device is visible");
        return;
    }
    let mut cmd = Command::new(CHECK);
    cmd.arg("nccl");
    let out = run(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nccl backend on rank 0: nccl backend needs a CUDA device; none is visible"), "{stderr}");
}

/// The GPU correctness check's code path, run CPU against CPU: fp32 is exact, and pure bf16
/// keeps the loss within 1e-2 (its gradients are compared on the GPU by scripts/gpu-check.sh).
#[test]
fn device_comparison_runs_on_the_cpu() {
    let check = |args: &[&str]| {
        let mut cmd = Command::new(CHECK);
        cmd.arg("devices").args(args);
        let out = run(cmd, Duration::from_secs(120));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let number = |key: &str| -> f64 {
            stdout
                .split(key)
                .nth(1)
                .and_then(|r| r.split(|c: char| c == ',' || c.is_whitespace()).nth(1))
                .unwrap()
                .parse()
                .unwrap()
        };
        (number("max relative gradient error"), number("loss relative error"))
    };
    assert_eq!(check(&["clip", "8", "cpu", "fp32"]), (0.0, 0.0));
    let (_, loss) = check(&["siglip", "8", "cpu", "pure_bf16"]);
    assert!(loss <= 1e-2, "pure bf16 loss relative error {loss}");
}
