//! Shards on an S3 server (moto, on loopback) behind a fault-injecting proxy: 503s, connections
//! reset mid-response and slow responses. A 2-worker training through it completes with the
//! same sample stream, so the same weights bit for bit, as without faults; a missing shard stops
//! the run at once, naming its URL and never the credentials.

#[allow(dead_code)]
#[path = "../../dataloader/tests/store/faulty_proxy.rs"]
pub(crate) mod faulty_proxy;
#[allow(dead_code)]
#[path = "../../dataloader/tests/store/moto.rs"]
pub(crate) mod moto;

use std::path::Path;
use std::sync::atomic::Ordering;

use clipfleet_dataloader::store::{ShardStore, ShardStoreOptions};

use crate::common::{ok, refs, run, run_env, stderr, tiny_args};

/// Never printed: the tests check the logs for it.
pub(crate) const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-never-printed";

pub(crate) fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE".into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// `clipfleet launch` of 2 MPI workers training 8 steps on `url`, with the S3 endpoint at `port`.
fn train_two(output: &Path, url: &str, port: u16) -> std::process::Output {
    let mut worker = tiny_args(output, 8, 0);
    let i = worker.iter().position(|a| a == "--batch-size").expect("--batch-size");
    worker[i + 1] = "8".into();
    worker.extend(["--train-data", url, "--shuffle-window", "16", "--workers", "1"].map(String::from));
    let mut args: Vec<String> =
        ["launch", "--nproc-per-node", "2", "--backend", "mpi", "--max-restarts", "0", "--"].map(String::from).to_vec();
    args.extend(worker);
    let env = s3_env(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(&refs(&args), &env)
}

#[test]
fn two_workers_train_through_s3_faults_exactly_as_without_them() {
    let server = moto::server();
    let tmp = tempfile::tempdir().expect("tmp");
    let shards = tmp.path().join("shards");
    ok(run(&[
        "shards",
        "make",
        "--synthetic",
        "192",
        "--samples-per-shard",
        "24",
        "--output",
        shards.to_str().expect("utf-8"),
    ]));
    let store =
        ShardStore::new(ShardStoreOptions { config: server.config(), ..ShardStoreOptions::default() }).expect("store");
    let prefix = format!("faults-{}", std::process::id());
    for entry in std::fs::read_dir(&shards).expect("shards") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        server.upload(&store, &format!("{prefix}/{name}"), &std::fs::read(&path).expect("read"));
    }
    let url = format!("s3://{}/{prefix}/shard-{{000000..000007}}.tar", moto::BUCKET);

    let clean = tmp.path().join("clean");
    let out = ok(train_two(&clean, &url, server.port()));
    assert!(!stderr(&out).contains(SECRET));

    // 5% of requests get a 503, 10% are reset mid-response, 10% are slow.
    let proxy = faulty_proxy::start(server.port(), 11, 5, 10, 10);
    let faulty = tmp.path().join("faulty");
    let out = ok(train_two(&faulty, &url, proxy.port));
    let log = stderr(&out);
    assert!(!log.contains(SECRET), "the secret key was printed");
    let c = &proxy.counts;
    let (requests, errors, resets, slow) = (
        c.requests.load(Ordering::SeqCst),
        c.errors.load(Ordering::SeqCst),
        c.resets.load(Ordering::SeqCst),
        c.slow.load(Ordering::SeqCst),
    );
    eprintln!("proxy: {requests} requests, {errors} answered 503, {resets} reset mid-response, {slow} slow");
    assert!(errors > 0 && resets > 0 && slow > 0, "faults were injected: {requests} requests");
    for (name, a) in tch::Tensor::read_safetensors(clean.join("checkpoints/step_8/model.safetensors")).expect("clean") {
        let b = tch::Tensor::read_safetensors(faulty.join("checkpoints/step_8/model.safetensors"))
            .expect("faulty")
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("same names")
            .1;
        assert!(a.equal(&b), "{name}: the faults changed what was trained on");
    }

    // A shard that does not exist stops the run at once, naming it, and no secret is printed.
    let missing = format!("s3://{}/{prefix}/missing-{{0..1}}.tar", moto::BUCKET);
    let started = std::time::Instant::now();
    let mut args = tiny_args(&tmp.path().join("missing"), 4, 0);
    args.extend(["--train-data", &missing, "--train-num-samples", "64"].map(String::from));
    let env = s3_env(proxy.port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_env(&refs(&args), &env);
    let log = stderr(&out);
    assert!(!out.status.success());
    assert!(log.contains("missing-0.tar") || log.contains("missing-1.tar"), "{log}");
    assert!(!log.contains(SECRET), "the secret key was printed");
    assert!(started.elapsed().as_secs() < 60, "a 404 is not retried: {:?}", started.elapsed());
}
