//! Checkpoints on an S3 server (moto, on loopback) through `--checkpoint-dir s3://…`: a kill
//! in the middle of an upload and a kill right after a commit both leave a loadable previous
//! checkpoint, `--resume latest` continues from the store to the weights of an uninterrupted
//! run, and a restarted 2-worker group reads the checkpoint from the store on every rank,
//! through 503s and connection resets.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};

use crate::common::{bin, ok, refs, run_env, stderr, tiny_args};
use crate::s3_faults::{faulty_proxy, moto, s3_env, SECRET};

/// The objects under `s3://shards/<prefix>/`, read with moto's settings.
struct Bucket {
    store: ShardStore,
    prefix: String,
}

impl Bucket {
    fn new(server: &moto::Moto, name: &str) -> Bucket {
        let store = ShardStore::new(ShardStoreOptions { config: server.config(), ..ShardStoreOptions::default() })
            .expect("store");
        Bucket { store, prefix: format!("checkpoints-{name}-{}", std::process::id()) }
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", moto::BUCKET, self.prefix)
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let url = format!("{}/{key}", self.url());
        self.store.runtime().block_on(self.store.read_optional(&url)).expect("read from moto").map(|b| b.to_vec())
    }
}

fn env_of(port: u16) -> Vec<(&'static str, String)> {
    s3_env(port)
}

fn with_store(args: &mut Vec<String>, url: &str) {
    args.extend(["--checkpoint-dir".to_owned(), url.to_owned()]);
}

fn eval_step(spec: &str, port: u16) -> i64 {
    let env = env_of(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = ok(run_env(&["eval", "--checkpoint", spec, "--json", "--device", "cpu"], &env));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval JSON");
    report["step"].as_i64().expect("step")
}

fn train(args: &[String], port: u16, fault: Option<&str>) -> std::process::Output {
    let mut env = env_of(port);
    if let Some(fault) = fault {
        env.push(("CLIPFLEET_FAULT", fault.to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(&refs(args), &env)
}

#[test]
fn a_run_checkpointing_to_s3_survives_kills_at_each_stage_and_resumes_bitwise() {
    let server = moto::server();
    let tmp = tempfile::tempdir().expect("tmp");
    let port = server.port();

    // Uninterrupted: 6 steps, a checkpoint every 2, all on the store.
    let straight = Bucket::new(&server, "straight");
    let mut args = tiny_args(&tmp.path().join("straight"), 6, 2);
    with_store(&mut args, &straight.url());
    let log = stderr(&ok(train(&args, port, None)));
    assert!(!log.contains(SECRET), "the secret key was printed");
    assert_eq!(straight.get("latest").as_deref(), Some(&b"step_6\n"[..]));
    assert!(!tmp.path().join("straight/checkpoints").exists(), "nothing is written to the local checkpoints folder");
    let want_model = straight.get("step_6/model.safetensors").expect("step_6 weights");
    let want_optimizer = straight.get("step_6/optimizer.safetensors").expect("step_6 optimizer");

    // Killed in the middle of checkpoint 4's upload: the weights are up, the manifest is not.
    let stalled = Bucket::new(&server, "stalled");
    let mut args = tiny_args(&tmp.path().join("stalled"), 6, 2);
    with_store(&mut args, &stalled.url());
    let mut child = Command::new(bin())
        .args(refs(&args))
        .args(["--log-format", "json"])
        .envs(env_of(port))
        .env("CLIPFLEET_FAULT", "stall-in-checkpoint:4")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let reached = BufReader::new(child.stderr.take().expect("stderr"))
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("clipfleet-fault: stalled in checkpoint 4"));
    assert!(reached, "the run never reached the upload of checkpoint 4");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(stalled.get("step_4/model.safetensors").is_some(), "the weights of step 4 were uploaded");
    assert!(stalled.get("step_4/manifest.json").is_none(), "step 4 was never committed");
    assert_eq!(stalled.get("latest").as_deref(), Some(&b"step_2\n"[..]));
    assert_eq!(eval_step(&stalled.url(), port), 2, "the previous checkpoint is the one that loads");
    let err = run_env(
        &["eval", "--checkpoint", &format!("{}/step_4", stalled.url()), "--device", "cpu"],
        &env_of(port).iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    assert!(!err.status.success() && stderr(&err).contains("never committed"), "{}", stderr(&err));

    let mut resume = args.clone();
    resume.extend(["--resume".to_owned(), "latest".to_owned()]);
    let log = stderr(&ok(train(&resume, port, None)));
    assert!(log.contains(&format!("{}/step_2", stalled.url())) && log.contains("resumed"), "{log}");
    assert_eq!(stalled.get("step_6/model.safetensors"), Some(want_model.clone()), "weights after resume");
    assert_eq!(stalled.get("step_6/optimizer.safetensors"), Some(want_optimizer.clone()), "optimizer after resume");

    // Killed right after checkpoint 4 was committed: the run resumes at step 4.
    let after = Bucket::new(&server, "after");
    let mut args = tiny_args(&tmp.path().join("after"), 6, 2);
    with_store(&mut args, &after.url());
    let out = train(&args, port, Some("exit-after-checkpoint:4"));
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(after.get("latest").as_deref(), Some(&b"step_4\n"[..]));
    args.extend(["--resume".to_owned(), "latest".to_owned()]);
    let log = stderr(&ok(train(&args, port, None)));
    assert!(log.contains(&format!("{}/step_4", after.url())), "{log}");
    assert_eq!(after.get("step_6/model.safetensors"), Some(want_model), "weights after resume");
    assert_eq!(after.get("step_6/optimizer.safetensors"), Some(want_optimizer), "optimizer after resume");
}

/// `clipfleet launch` of 2 MPI workers, 8 steps, a checkpoint every 2.
fn launch_two(output: &Path, checkpoint_dir: Option<&str>, port: u16, fault: Option<&str>) -> std::process::Output {
    let mut worker = tiny_args(output, 8, 2);
    let i = worker.iter().position(|a| a == "--batch-size").expect("--batch-size");
    worker[i + 1] = "8".into();
    if let Some(url) = checkpoint_dir {
        with_store(&mut worker, url);
    }
    let mut args: Vec<String> =
        ["launch", "--nproc-per-node", "2", "--backend", "mpi", "--max-restarts", "1", "--grace-period", "5", "--"]
            .map(String::from)
            .to_vec();
    args.extend(worker);
    train(&args, port, fault)
}

#[test]
fn a_restarted_group_reads_its_checkpoint_from_s3_on_every_rank_through_store_faults() {
    let server = moto::server();
    let tmp = tempfile::tempdir().expect("tmp");
    let local = tmp.path().join("local");
    ok(launch_two(&local, None, server.port(), None));

    // 5% of requests get a 503, 10% are reset mid-response, 5% are slow.
    let proxy = faulty_proxy::start(server.port(), 5, 5, 10, 5);
    let bucket = Bucket::new(&server, "group");
    let out = launch_two(&tmp.path().join("store"), Some(&bucket.url()), proxy.port, Some("exit-after-checkpoint:4"));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(SECRET), "the secret key was printed");
    assert!(log.contains("restart"), "{log}");
    // Both ranks of the restarted group downloaded step 4 themselves.
    let downloads =
        log.lines().filter(|l| l.contains("\"downloaded\"") && l.contains(&format!("{}/step_4", bucket.url()))).count();
    assert_eq!(downloads, 2, "{log}");
    let c = &proxy.counts;
    let faults =
        c.errors.load(std::sync::atomic::Ordering::SeqCst) + c.resets.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("proxy: {} requests, {faults} failed", c.requests.load(std::sync::atomic::Ordering::SeqCst));
    assert!(faults > 0, "faults were injected");
    for name in ["model.safetensors", "optimizer.safetensors"] {
        let want = std::fs::read(local.join("checkpoints/step_8").join(name)).expect("local checkpoint");
        assert_eq!(
            bucket.get(&format!("step_8/{name}")),
            Some(want),
            "{name}: the store run differs from the local one"
        );
    }
}
