//! Replicas: one drain stream written to several stores at once. The instance's data is
//! read once whatever the number of stores; a store that fails is left without a commit
//! marker (never a committed artifact missing a file); the backup fails unless
//! `--min-stores` allows fewer copies, and then says which copy is missing.

mod s3_support;
mod testkit;

use assert_cmd::Command;
use async_trait::async_trait;
use lockstep::artifact::stored;
use lockstep::store::codec::{Codec, Compression};
use lockstep::frontend::demo::{create_deployment, snapshot};
use lockstep::events::NoEvents;
use lockstep::instance::{InstanceRef, ShellInstance};
use lockstep::model::InstanceId;
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::restore::{restore_with, RestoreOptions};
use lockstep::orchestrate::Ctx;
use lockstep::store::local::LocalStore;
use lockstep::store::replicas::ReplicaStore;
use lockstep::store::s3::S3Store;
use lockstep::store::{ObjectInfo, ObjectWriter, Store};
use lockstep::target::FixedTarget;
use testkit::{Faults, FaultyInstance, Op};
use lockstep::transport::local::LocalTransport;
use predicates::prelude::*;
use s3_support::S3sFs;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncWrite};

/// A local store whose writes fail once `budget` bytes have been written in total (a disk
/// that fills, a connection that drops mid-stream).
struct FailingStore {
    inner: LocalStore,
    budget: Arc<AtomicU64>,
}

struct FailingWriter {
    inner: Box<dyn ObjectWriter>,
    budget: Arc<AtomicU64>,
}

impl AsyncWrite for FailingWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let left = self.budget.load(Ordering::SeqCst);
        if left < buf.len() as u64 {
            return Poll::Ready(Err(io::Error::other("No space left on device (injected)")));
        }
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.budget.fetch_sub(*n as u64, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl ObjectWriter for FailingWriter {
    async fn commit(self: Box<Self>) -> anyhow::Result<u64> {
        self.inner.commit().await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

#[async_trait]
impl Store for FailingStore {
    fn describe(&self) -> String {
        format!("failing+{}", self.inner.describe())
    }
    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(FailingWriter { inner: self.inner.create(key).await?, budget: self.budget.clone() }))
    }
    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>> {
        self.inner.open(key).await
    }
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.inner.delete(key).await
    }
}

struct World {
    tmp: TempDir,
    deployed: Vec<(InstanceId, String)>,
    faults: Arc<Faults>,
}

impl World {
    fn new() -> World {
        let tmp = TempDir::new().unwrap();
        let deployed = create_deployment(&tmp.path().join("src"), true).unwrap();
        std::fs::write(Path::new(&deployed[1].1).join("var/vcap/store/blobstore/big.bin"), s3_support::pattern(3 * 1024 * 1024, 9)).unwrap();
        World { tmp, deployed, faults: Faults::new() }
    }
    fn target_over(&self, deployed: &[(InstanceId, String)]) -> FixedTarget {
        let instances: Vec<InstanceRef> = deployed
            .iter()
            .map(|(id, root)| {
                let inner: InstanceRef = Arc::new(ShellInstance::new(id.clone(), Box::new(LocalTransport::new(root.clone()))));
                FaultyInstance::wrap(inner, self.faults.clone())
            })
            .collect();
        FixedTarget { name: "cf".into(), instances }
    }
    fn ctx(&self) -> Ctx {
        Ctx::new(Arc::new(NoEvents))
    }
    fn streams(&self) -> usize {
        self.faults.count(|op| matches!(op, Op::Stream(_)))
    }
}

fn zstd() -> BackupOptions {
    BackupOptions { codec: Codec { compression: Compression::ZSTD, recipients: vec![] }, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_fans_out_to_every_store_and_each_copy_restores() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("primary");
    let w = World::new();
    let local_dir = w.tmp.path().join("second");
    let stores: Vec<Box<dyn Store>> =
        vec![Box::new(S3Store::new(&server.config("primary", "cf")).unwrap()), Box::new(LocalStore::new(&local_dir))];
    let replicas = ReplicaStore::new(stores, 2).unwrap();
    let out = backup(&w.ctx(), &w.target_over(&w.deployed), &replicas, &zstd()).await;
    assert!(out.failures.is_empty(), "{}", out.failures.render());
    let name = out.artifact.unwrap();
    // Three jobs, three streams: the data was read from the instances once.
    assert_eq!(w.streams(), 3);
    assert!(replicas.failed().is_empty());

    // Each copy is complete and restores on its own.
    let s3 = S3Store::new(&server.config("primary", "cf")).unwrap();
    let local = LocalStore::new(&local_dir);
    for (i, store) in [&s3 as &dyn Store, &local].into_iter().enumerate() {
        assert_eq!(stored::list(store).await.unwrap(), vec![name.clone()]);
        let dst = create_deployment(&w.tmp.path().join(format!("dst{i}")), false).unwrap();
        let r = restore_with(&w.ctx(), &w.target_over(&dst), store, &name, &RestoreOptions::default()).await;
        assert!(r.failures.is_empty(), "{}", r.failures.render());
        for ((_, a), (_, b)) in w.deployed.iter().zip(&dst) {
            assert_eq!(snapshot(&Path::new(a).join("var/vcap/store")).unwrap(), snapshot(&Path::new(b).join("var/vcap/store")).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replica_never_gets_a_marker_and_min_stores_decides() {
    let Some(server) = S3sFs::start() else { return };
    server.bucket("primary");
    let w = World::new();

    // min 2 of 2: the backup fails and nothing is committed anywhere.
    let failing_dir = w.tmp.path().join("failing");
    let stores: Vec<Box<dyn Store>> = vec![
        Box::new(S3Store::new(&server.config("primary", "cf")).unwrap()),
        Box::new(FailingStore { inner: LocalStore::new(&failing_dir), budget: Arc::new(AtomicU64::new(512 * 1024)) }),
    ];
    let replicas = ReplicaStore::new(stores, 2).unwrap();
    let out = backup(&w.ctx(), &w.target_over(&w.deployed), &replicas, &zstd()).await;
    assert!(out.artifact.is_none());
    let text = out.failures.render();
    assert!(text.contains("only 1 of 2 stores") && text.contains("No space left on device"), "{text}");
    assert!(text.contains(&format!("failing+file://{}", failing_dir.display())), "names the store: {text}");
    let s3 = S3Store::new(&server.config("primary", "cf")).unwrap();
    assert!(s3.list("").await.unwrap().is_empty(), "{:?}", s3.list("").await.unwrap());
    assert!(stored::list(&LocalStore::new(&failing_dir)).await.unwrap().is_empty());
    // The drain failed: the instance keeps its copy; clean up for the next run.
    lockstep::orchestrate::cleanup::cleanup(&w.ctx(), &w.target_over(&w.deployed), lockstep::model::Direction::Backup).await;

    // min 1 of 2: the backup succeeds with one copy and says which is missing.
    let stores: Vec<Box<dyn Store>> = vec![
        Box::new(S3Store::new(&server.config("primary", "cf")).unwrap()),
        Box::new(FailingStore { inner: LocalStore::new(&failing_dir), budget: Arc::new(AtomicU64::new(512 * 1024)) }),
    ];
    let replicas = ReplicaStore::new(stores, 1).unwrap();
    let out = backup(&w.ctx(), &w.target_over(&w.deployed), &replicas, &zstd()).await;
    assert!(out.failures.is_empty(), "{}", out.failures.render());
    let name = out.artifact.unwrap();
    let marker = out.marker.unwrap();
    assert!(
        marker.warnings.iter().any(|m| m.contains("copy in failing+file://") && m.contains("is missing")),
        "{:?}",
        marker.warnings
    );
    assert_eq!(stored::list(&s3).await.unwrap(), vec![name.clone()]);
    // The failed replica holds no committed artifact (no marker), whatever it received.
    let failing = LocalStore::new(&failing_dir);
    assert!(stored::list(&failing).await.unwrap().is_empty());
    assert!(failing.list(&format!("{name}/lockstep.json")).await.unwrap().is_empty());
}

#[test]
fn cli_replicas_with_a_stopped_server() {
    let Some(a) = S3sFs::start() else { return };
    let Some(mut b) = S3sFs::start() else { return };
    a.bucket("copies");
    b.bucket("copies");
    let w = World::new();
    let instance_args: Vec<String> = w.deployed.iter().flat_map(|(id, root)| ["--instance".to_string(), format!("{id}={root}")]).collect();
    // The environment holds a's credentials, which b (another secret) refuses: b fails
    // its preflight, before anything is locked.
    let b_env_url = b.url("copies", "dr");
    let run = |extra: &[&str]| {
        Command::cargo_bin("lockstep")
            .unwrap()
            .envs(a.env())
            .args(["local", "--name", "cf"])
            .args(&instance_args)
            .args(["backup", "--store", &a.url("copies", "main"), "--store", &b_env_url])
            .args(extra)
            .assert()
    };
    run(&[])
        .code(1)
        .stderr(predicate::str::contains("only 1 of 2 stores can take the backup").and(predicate::str::contains("refused the credentials")));
    b.stop();
    run(&["--min-stores", "1"]).success().stdout(
        predicate::str::contains("WARNING: the copy in s3://copies/dr").and(predicate::str::contains("is missing")),
    );
    Command::cargo_bin("lockstep")
        .unwrap()
        .envs(a.env())
        .args(["list", "--store", &a.url("copies", "main")])
        .assert()
        .success()
        .stdout(predicate::str::contains("cf_"));
    Command::cargo_bin("lockstep")
        .unwrap()
        .envs(a.env())
        .args(["local", "--name", "cf"])
        .args(&instance_args)
        .args(["backup", "--store", &a.url("copies", "main"), "--min-stores", "3"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--min-stores 3 must be between 1 and the number of stores (1)"));
}
