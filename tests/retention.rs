//! Retention: plans over generated histories (property tests against an independent
//! oracle), and plans executed on real stores (local directory and S3 on `s3s-fs`):
//! markers deleted first, leftovers swept after the grace period, bbr artifacts left
//! alone, `--dry-run` deleting nothing.

mod s3_support;

use assert_cmd::Command;
use chrono::{DateTime, Datelike, Duration as ChronoDuration, TimeZone, Utc};
use lockstep::artifact::marker::CommitMarker;
use lockstep::artifact::stored::{self, ArtifactWriter};
use lockstep::artifact::{artifact_name, BackupMetadata};
use lockstep::retention::{self, decide, Candidate, Policy};
use lockstep::store::local::LocalStore;
use lockstep::store::s3::S3Store;
use lockstep::store::{ObjectInfo, ObjectWriter, Store};
use predicates::prelude::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 15, 12, 0, 0).unwrap()
}

fn history() -> impl Strategy<Value = Vec<Candidate>> {
    // Up to 60 artifacts over the last ~400 days, in up to three deployments.
    prop::collection::vec((0usize..3, 0i64..400 * 24 * 60), 1..60).prop_map(|v| {
        let mut names = BTreeSet::new();
        for (dep, minutes_ago) in v {
            let at = now() - ChronoDuration::minutes(minutes_ago);
            names.insert(artifact_name(["cf", "redis", "my_sql"][dep], at));
        }
        names.into_iter().map(|n| Candidate::from_name(&n).unwrap()).collect()
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::option::of(0usize..5),
        prop::option::of(0u64..30),
        prop::option::of(0usize..10),
        prop::option::of(0usize..6),
        prop::option::of(0usize..8),
        0u64..48,
    )
        .prop_filter_map("at least one rule", |(last, within_days, daily, weekly, monthly, min_age_h)| {
            let p = Policy {
                keep_last: last,
                keep_within: within_days.map(|d| Duration::from_secs(d * 86400)),
                keep_daily: daily,
                keep_weekly: weekly,
                keep_monthly: monthly,
                min_age: Duration::from_secs(min_age_h * 3600),
                ..Policy::default()
            };
            p.has_rules().then_some(p)
        })
}

/// The oracle for one bucketed rule: group a deployment's artifacts by bucket, take the
/// newest of each bucket, keep those of the `n` most recent buckets.
fn oracle(arts: &[Candidate], n: usize, bucket: impl Fn(&DateTime<Utc>) -> (i32, u32, u32)) -> BTreeSet<String> {
    let mut by_dep: BTreeMap<&str, BTreeMap<(i32, u32, u32), &Candidate>> = BTreeMap::new();
    for a in arts {
        let e = by_dep.entry(&a.deployment).or_default().entry(bucket(&a.at)).or_insert(a);
        if a.at > e.at {
            *e = a;
        }
    }
    by_dep.values().flat_map(|buckets| buckets.values().rev().take(n).map(|a| a.name.clone())).collect()
}

fn kept(policy: &Policy, arts: &[Candidate]) -> BTreeSet<String> {
    decide(policy, arts, now()).into_iter().filter(|d| d.keep()).map(|d| d.artifact.name).collect()
}

fn newest_per_deployment(arts: &[Candidate]) -> BTreeSet<String> {
    let mut m: BTreeMap<&str, &Candidate> = BTreeMap::new();
    for a in arts {
        let e = m.entry(&a.deployment).or_insert(a);
        if a.at > e.at {
            *e = a;
        }
    }
    m.values().map(|a| a.name.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_newest_and_the_young_always_survive(arts in history(), p in policy()) {
        let decisions = decide(&p, &arts, now());
        prop_assert_eq!(decisions.len(), arts.len());
        let kept: BTreeSet<String> = decisions.iter().filter(|d| d.keep()).map(|d| d.artifact.name.clone()).collect();
        for n in newest_per_deployment(&arts) {
            prop_assert!(kept.contains(&n), "newest {} deleted", n);
        }
        let young = now() - ChronoDuration::from_std(p.min_age).unwrap();
        for a in arts.iter().filter(|a| a.at > young) {
            prop_assert!(kept.contains(&a.name), "{} is younger than min-age", a.name);
        }
        // Oldest first, and every kept artifact says why.
        prop_assert!(decisions.windows(2).all(|w| w[0].artifact.at <= w[1].artifact.at));
    }

    #[test]
    fn daily_weekly_monthly_keep_exactly_the_expected_set(arts in history(), n in 0usize..12, which in 0usize..3) {
        // Only the bucketed rule (min-age 0): the kept set is the oracle's plus the newest.
        let mut p = Policy { min_age: Duration::ZERO, ..Policy::default() };
        let expected = match which {
            0 => { p.keep_daily = Some(n); oracle(&arts, n, |t| (t.year(), t.month(), t.day())) }
            1 => { p.keep_weekly = Some(n); oracle(&arts, n, |t| { let w = t.iso_week(); (w.year(), w.week(), 0) }) }
            _ => { p.keep_monthly = Some(n); oracle(&arts, n, |t| (t.year(), t.month(), 0)) }
        };
        let expected: BTreeSet<String> = expected.union(&newest_per_deployment(&arts)).cloned().collect();
        prop_assert_eq!(kept(&p, &arts), expected);
    }

    #[test]
    fn keep_last_and_keep_within_keep_exactly_theirs(arts in history(), n in 0usize..8, days in 0u64..60) {
        let p = Policy { keep_last: Some(n), min_age: Duration::ZERO, ..Policy::default() };
        let mut expected = BTreeSet::new();
        let mut by_dep: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
        for a in &arts { by_dep.entry(&a.deployment).or_default().push(a); }
        for v in by_dep.values_mut() {
            v.sort_by_key(|a| std::cmp::Reverse(a.at));
            expected.extend(v.iter().take(n.max(1)).map(|a| a.name.clone()));
        }
        prop_assert_eq!(kept(&p, &arts), expected);

        let p = Policy { keep_within: Some(Duration::from_secs(days * 86400)), min_age: Duration::ZERO, ..Policy::default() };
        let cutoff = now() - ChronoDuration::days(days as i64);
        let mut expected: BTreeSet<String> = arts.iter().filter(|a| a.at >= cutoff).map(|a| a.name.clone()).collect();
        expected.extend(newest_per_deployment(&arts));
        prop_assert_eq!(kept(&p, &arts), expected);
    }
}

// ---- executing plans on real stores ----

/// Records the order of deletes.
struct Recording<S> {
    inner: S,
    deletes: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl<S: Store> Store for Recording<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        self.inner.create(key).await
    }
    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
        self.inner.open(key).await
    }
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.deletes.lock().unwrap().push(key.to_string());
        self.inner.delete(key).await
    }
}

async fn committed_artifact(store: &dyn Store, name: &str) {
    let w = ArtifactWriter::new(store, name);
    w.put("web-0-nginx.tar", b"tar bytes").await.unwrap();
    let marker = CommitMarker::new(name.rsplit_once('_').unwrap().0, name);
    w.commit(&BackupMetadata::default(), marker).await.unwrap();
}

async fn prune_scenario(store: &dyn Store) {
    let rec = Recording { inner: RefStore(store), deletes: Mutex::new(Vec::new()) };
    let t = |days: i64, hours: i64| artifact_name("cf", now() - ChronoDuration::days(days) - ChronoDuration::hours(hours));
    let (newest, yesterday, old1, old2) = (t(0, 2), t(1, 0), t(10, 0), t(11, 0));
    for n in [&newest, &yesterday, &old1, &old2] {
        committed_artifact(&rec, n).await;
    }
    // A crashed backup three days ago (objects, no metadata, no marker), one in progress,
    // and a bbr artifact (metadata, no marker).
    let crashed = t(3, 0);
    ArtifactWriter::new(&rec, &crashed).put("db-0-postgres.tar", b"half").await.unwrap();
    let running = t(0, 1);
    ArtifactWriter::new(&rec, &running).put("db-0-postgres.tar", b"half").await.unwrap();
    let bbr = t(30, 0);
    ArtifactWriter::new(&rec, &bbr).put("metadata", b"instances: []\n").await.unwrap();
    ArtifactWriter::new(&rec, &bbr).put("db-0-postgres.tar", b"bbr's").await.unwrap();

    let policy = Policy { keep_daily: Some(2), ..Policy::default() };
    let plan = retention::plan(&rec, &policy, None, now()).await.unwrap();
    let text = plan.to_string();
    assert!(text.contains(&format!("keep    {newest}  (newest, daily 2024-06-15)")), "{text}");
    assert!(text.contains(&format!("keep    {yesterday}  (daily 2024-06-14)")), "{text}");
    assert!(text.contains(&format!("delete  {old1}  (no rule keeps it)")), "{text}");
    assert!(text.contains(&format!("sweep   {crashed}")), "{text}");
    assert!(text.contains(&format!("ignore  {running}")) && text.contains("backup in progress"), "{text}");
    assert!(text.contains(&format!("ignore  {bbr}")) && text.contains("made by bbr"), "{text}");
    assert!(text.ends_with("2 kept, 2 to delete, 1 leftover(s) to sweep"), "{text}");

    let done = retention::execute(&rec, &plan).await;
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert_eq!(done.deleted, vec![old2.clone(), old1.clone()]);
    assert_eq!(stored::list(&rec).await.unwrap(), vec![yesterday.clone(), newest.clone()]);
    assert!(rec.list(&format!("{old1}/")).await.unwrap().is_empty());
    assert!(rec.list(&format!("{crashed}/")).await.unwrap().is_empty());
    assert_eq!(rec.list(&format!("{running}/")).await.unwrap().len(), 1);
    assert_eq!(rec.list(&format!("{bbr}/")).await.unwrap().len(), 2);
    // The marker goes first: a half-deleted artifact is already invisible.
    let deletes = rec.deletes.lock().unwrap().clone();
    for name in [&old1, &old2] {
        let first = deletes.iter().find(|k| k.starts_with(&format!("{name}/"))).unwrap();
        assert_eq!(first, &format!("{name}/lockstep.json"), "{deletes:?}");
    }
}

/// A `&dyn Store` as a `Store`.
struct RefStore<'a>(&'a dyn Store);

#[async_trait::async_trait]
impl Store for RefStore<'_> {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        self.0.create(key).await
    }
    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
        self.0.open(key).await
    }
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.0.list(prefix).await
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.0.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_executes_the_plan_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    prune_scenario(&LocalStore::new(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_executes_the_plan_on_s3() {
    let Some(server) = s3_support::S3sFs::start() else { return };
    server.bucket("retention");
    prune_scenario(&S3Store::new(&server.config("retention", "cf")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prune_prints_the_plan_and_dry_run_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    // Real clock here: the CLI plans against now.
    let start = Utc::now();
    let t = |days: i64| artifact_name("cf", start - ChronoDuration::days(days));
    for d in [0, 1, 2, 3] {
        committed_artifact(&store, &t(d)).await;
    }
    let run = |args: &[&str]| Command::cargo_bin("lockstep").unwrap().args(["prune", "-a"]).arg(dir.path()).args(args).assert();
    run(&["--keep-last", "2", "--dry-run"])
        .success()
        .stdout(predicate::str::contains("2 kept, 2 to delete").and(predicate::str::contains("Dry run: nothing deleted.")));
    assert_eq!(stored::list(&store).await.unwrap().len(), 4);
    run(&[]).code(1).stderr(predicate::str::contains("no keep rule"));
    run(&["--keep-last", "2"]).success().stdout(predicate::str::contains("Deleted 2 artifact(s)"));
    assert_eq!(stored::list(&store).await.unwrap(), vec![t(1), t(0)]);
    // --min-age protects even what no rule keeps.
    run(&["--keep-last", "1", "--min-age", "30d"]).success().stdout(predicate::str::contains("younger than min-age 30days"));
    assert_eq!(stored::list(&store).await.unwrap().len(), 2);
}
