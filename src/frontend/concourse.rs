//! The Concourse resource: `check`, `in` and `out` over the library.
//!
//! Every committed artifact in the store is a version `{"artifact": "<deployment>_<time>"}`,
//! ordered by the time in its name. The request arrives on stdin, the response (exactly one
//! JSON value) goes to stdout, logs to stderr. `source:` is lockstep's configuration
//! ([`crate::config`]), the same a task's `LOCKSTEP_CONFIG` holds.
//!
//! - `check`: committed artifacts of the deployment, oldest first, from the given version on
//!   (it included while it exists; only the newest once it is gone); `[]` when there are none.
//! - `in`: the version fetched into `$1` as a plain bbr artifact directory (decrypted,
//!   decompressed, every file re-hashed against `metadata`), plus `version` and
//!   `lockstep.json`. `params.skip_download: true` fetches only `metadata` and the marker;
//!   `params.verify_only: true` re-hashes every stored byte first, writing no artifact.
//! - `out`: `params.action` is `backup` (default), `restore` (from `$1/<params.artifact>`, a
//!   directory a `get` fetched) or `prune` (the `retention:` policy); it prints the version
//!   and metadata a person wants on the build page.
//!
//! With `opsman:` in `source:` the versions are platform records (`platform_<time>`): `put`
//! takes a whole platform backup, `get` verifies every member (`concourse/platform.rs`).

use crate::artifact::{CommitMarker, MARKER_FILE, METADATA_FILE};
use crate::config::Config;
use crate::events::{Event, EventSink};
use crate::orchestrate::Ctx;
use crate::frontend::report::{human_bytes, timings_table, LogReporter};
use crate::service;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod platform;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Check,
    In,
    Out,
}

/// A request as Concourse sends it: `source`, and `version` / `params` when present.
pub struct Request {
    pub config: Config,
    pub version: Option<String>,
    pub params: Map<String, Value>,
}

pub const IN_PARAMS: &[&str] = &["skip_download", "verify", "verify_only"];
pub const OUT_PARAMS: &[&str] = &["action", "artifact", "unsafe_lock_free", "dry_run"];

/// Parses stdin. Concourse may add top-level keys in a later version, so only the keys we
/// read are checked; inside `source` and `params` unknown keys are errors.
pub fn parse_request(text: &str, kind: Kind) -> anyhow::Result<Request> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("the request on stdin is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or_else(|| anyhow!("the request on stdin must be a JSON object"))?;
    let source = obj.get("source").ok_or_else(|| anyhow!("the request has no `source`: configure the resource's source"))?;
    let config = Config::from_value(source).context("source")?;
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => match m.get("artifact") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => bail!("version {} is not a lockstep version (expected {{\"artifact\": \"<deployment>_<time>\"}})", Value::Object(m.clone())),
        },
        Some(other) => bail!("version must be an object, not {other}"),
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => bail!("params must be an object, not {other}"),
    };
    let allowed: &[&str] = match kind {
        Kind::Check => &[],
        Kind::In => IN_PARAMS,
        Kind::Out => OUT_PARAMS,
    };
    for k in params.keys() {
        if !allowed.contains(&k.as_str()) {
            bail!("params: unknown key `{k}`; allowed keys: {}", if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") });
        }
    }
    Ok(Request { config, version, params })
}

fn param_bool(params: &Map<String, Value>, key: &str, default: bool) -> anyhow::Result<bool> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        // s3-resource takes strings for some booleans; accept them.
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => bail!("params.{key} must be true or false, not {other}"),
    }
}

fn version(name: &str) -> Value {
    json!({ "artifact": name })
}

fn meta(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

/// What the build page shows about an artifact.
fn artifact_metadata(m: &CommitMarker) -> Vec<Value> {
    let mut out = vec![
        meta("artifact", m.artifact.clone()),
        meta("size stored", human_bytes(m.total_size())),
        meta("finished", m.finished_at.clone()),
        meta("codec", service::codec_of(m)),
        meta("encrypted", m.encrypted.to_string()),
        meta("lock-free", m.lock_free.to_string()),
    ];
    if let Some(w) = m.lock_window_seconds {
        out.push(meta("lock window (API downtime)", format!("{w:.3}s")));
    }
    let total: f64 = m.phases.values().sum();
    out.push(meta("duration", format!("{total:.1}s")));
    if !m.warnings.is_empty() {
        out.push(meta("warnings", m.warnings.join("; ")));
    }
    out
}

/// `api/0: cloud_controller; db/0: postgres, pgbouncer`
fn jobs_summary(m: &crate::artifact::BackupMetadata) -> String {
    m.instances
        .iter()
        .map(|i| format!("{}/{}: {}", i.name, i.index, i.artifacts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

pub async fn check(req: &Request) -> anyhow::Result<Value> {
    let (names, warnings) = service::versions(&req.config).await?;
    for w in warnings {
        eprintln!("WARNING: {w}");
    }
    let from = match &req.version {
        None => names.len().saturating_sub(1),
        Some(v) => match names.iter().position(|n| n == v) {
            Some(i) => i,
            // The given version is gone (pruned): only the newest, as Concourse's resource
            // contract asks of a version the resource cannot place.
            None => names.len().saturating_sub(1),
        },
    };
    Ok(Value::Array(names.iter().skip(from).map(|n| version(n)).collect()))
}

pub async fn get(ctx: &Ctx, req: &Request, dest: &Path) -> anyhow::Result<Value> {
    if req.config.opsman.is_some() {
        return platform::get(ctx, req, dest).await;
    }
    let name = req.version.clone().ok_or_else(|| anyhow!("in needs a version ({{\"artifact\": ...}})"))?;
    let skip = param_bool(&req.params, "skip_download", false)?;
    let verify_only = param_bool(&req.params, "verify_only", false)?;
    if skip && verify_only {
        bail!("params: give skip_download or verify_only, not both (verify_only also writes only the records, after re-hashing every stored byte)");
    }
    let art = if verify_only {
        // Every stored byte read, decrypted, decompressed and re-hashed against the
        // metadata, and nothing of the artifact written: a worker needs no disk for it.
        ctx.info(format!("verify_only: re-hashing every file of {name} in the store against its metadata, writing only its records"));
        service::verify(ctx, &req.config, &name).await?
    } else {
        service::describe(&req.config, &name).await?
    };
    let marker = art.marker.clone().ok_or_else(|| anyhow!("{name} is not committed"))?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    if skip || verify_only {
        if verify_only {
            ctx.info(format!("Verified {name} ({} as stored): every file matches its metadata", human_bytes(marker.total_size())));
        }
        if skip {
            ctx.info(format!("skip_download: writing only the metadata of {name}"));
        }
        std::fs::write(dest.join(METADATA_FILE), art.metadata.to_yaml()?)?;
        std::fs::write(dest.join(MARKER_FILE), marker.to_json()?)?;
    } else {
        let verify = param_bool(&req.params, "verify", true)?;
        if !verify {
            ctx.warn("params.verify: false has no effect: fetching re-hashes every file against the metadata");
        }
        let m = service::fetch_into(&req.config, &name, dest).await?;
        ctx.info(format!("Fetched {name} ({} as stored), every file verified against its metadata", human_bytes(marker.total_size())));
        let _ = m;
    }
    std::fs::write(dest.join("version"), format!("{name}\n"))?;
    readable_by_tasks(dest)?;
    Ok(json!({ "version": version(&name), "metadata": artifact_metadata(&marker) }))
}

/// Whether a get's directory holds only what `skip_download` writes (the version and the
/// records), so the artifact itself is to be read from the store.
pub fn fetched_only_records(dir: &Path) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if ![METADATA_FILE, MARKER_FILE, "version"].iter().any(|f| name == *f) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A get runs as root; the task that reads its output may not (an image's `USER`,
/// `run.user`). The store writes privately (0600 files, 0700 directories, for local
/// directories other users can reach); in the build's own volume, which only the build's
/// containers mount, everything is made readable (0644, 0755), as s3-resource leaves it.
/// Symlinks are not followed (the store never makes any).
fn readable_by_tasks(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let mode = if kind.is_dir() {
            0o755
        } else if kind.is_file() {
            0o644
        } else {
            continue;
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} readable", entry.path().display()))?;
        if kind.is_dir() {
            readable_by_tasks(&entry.path())?;
        }
    }
    Ok(())
}

pub async fn put(ctx: &Ctx, req: &Request, sources: &Path) -> anyhow::Result<Value> {
    let action = match req.params.get("action") {
        None | Some(Value::Null) => "backup".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => bail!("params.action must be backup, restore or prune, not {other}"),
    };
    if req.config.opsman.is_some() && action != "prune" {
        return platform::put(ctx, req, &action).await;
    }
    match action.as_str() {
        "backup" => {
            let lock_free = param_bool(&req.params, "unsafe_lock_free", false)?;
            let out = service::run_backup(ctx, &req.config, lock_free, service::build_origin()).await?;
            eprint!("{}", timings_table(&out.timings));
            service::ensure_ok(&out.failures, "the backup")?;
            let marker = out.marker.ok_or_else(|| anyhow!("the backup committed no artifact"))?;
            let mut md = artifact_metadata(&marker);
            md.push(meta("deployment", marker.deployment.clone()));
            if let Ok(art) = service::describe(&req.config, &marker.artifact).await {
                md.push(meta("instances and jobs", jobs_summary(&art.metadata)));
            }
            Ok(json!({ "version": version(&marker.artifact), "metadata": md }))
        }
        "restore" => {
            let input = match req.params.get("artifact") {
                Some(Value::String(s)) => s.clone(),
                _ => bail!("params.artifact must name the input that holds the fetched artifact (the get step's name)"),
            };
            let dir = sources.join(&input);
            if !dir.join(METADATA_FILE).is_file() {
                bail!(
                    "{} holds no artifact: params.artifact must name a `get` of this resource in the same job",
                    dir.display()
                );
            }
            let name = std::fs::read_to_string(dir.join("version")).map(|s| s.trim().to_string()).unwrap_or(input.clone());
            // A get with skip_download left only the version and its records: the restore
            // streams the artifact from the store, and no worker holds it on disk.
            let out = if fetched_only_records(&dir)? {
                ctx.info(format!("Restoring {name} from {}, streamed (the get fetched only its records)", req.config.store.describe()));
                service::restore_from_store(ctx, &req.config, &name, false).await?
            } else {
                service::restore_from_dir(ctx, &req.config, &dir, false).await?
            };
            eprint!("{}", timings_table(&out.timings));
            service::ensure_ok(&out.failures, "the restore")?;
            let deployment = req.config.deployment_name().unwrap_or("").to_string();
            Ok(json!({ "version": version(&name), "metadata": [meta("restored", name.clone()), meta("onto", deployment)] }))
        }
        "prune" => {
            let dry_run = param_bool(&req.params, "dry_run", false)?;
            let (plan, done) = service::prune(&req.config, dry_run).await?;
            eprintln!("{plan}");
            let mut md = vec![meta("dry run", dry_run.to_string())];
            if let Some(done) = &done {
                md.push(meta("deleted", done.deleted.len().to_string()));
                md.push(meta("swept", done.swept.len().to_string()));
                md.push(meta("aborted_uploads", done.aborted_uploads.to_string()));
                eprintln!("{}", done.summary());
                for w in &done.warnings {
                    eprintln!("WARNING: {w}");
                }
                if !done.errors.is_empty() {
                    bail!("pruning failed:\n  {}", done.errors.join("\n  "));
                }
            }
            // A put must emit a version: the newest artifact, which pruning never deletes.
            let newest = service::newest(&req.config).await.context("after pruning")?;
            Ok(json!({ "version": version(&newest), "metadata": md }))
        }
        other => bail!("params.action {other:?} is not one of backup, restore, prune"),
    }
}

/// The `main` of `/opt/resource/{check,in,out}`: stdin to stdout, logs to stderr, exit 1
/// on any error. Never panics on bad input.
pub fn main(kind: Kind) -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: reading the request from stdin: {e}");
        return 1;
    }
    let dir: Option<PathBuf> = std::env::args_os().nth(1).map(PathBuf::from);
    if kind != Kind::Check && dir.is_none() {
        eprintln!("error: {} needs the directory as its first argument (Concourse passes it)", if kind == Kind::In { "in" } else { "out" });
        return 1;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        let req = parse_request(&input, kind)?;
        let reporter: Arc<dyn EventSink> = Arc::new(LogReporter::new(std::io::stderr(), false));
        let mut ctx = Ctx::new(reporter);
        service::tune(&mut ctx, &req.config);
        if kind == Kind::Out {
            crate::frontend::signals::install_signal_handlers(&ctx);
        }
        match kind {
            Kind::Check => check(&req).await,
            Kind::In => get(&ctx, &req, dir.as_deref().expect("checked")).await,
            Kind::Out => {
                let r = put(&ctx, &req, dir.as_deref().expect("checked")).await;
                if ctx.cancelled() {
                    ctx.events.emit(Event::Warning("stopped by a signal: owed unlocks and cleanup ran".into()));
                }
                r
            }
        }
    });
    match result {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"{"source": {"store": {"path": "/tmp/x"}}"#;

    #[test]
    fn requests_are_checked() {
        let r = parse_request(&format!("{SRC}}}"), Kind::Check).unwrap();
        assert!(r.version.is_none());
        let r = parse_request(&format!("{SRC}, \"version\": {{\"artifact\": \"cf_20260101T000000Z\"}}}}"), Kind::Check).unwrap();
        assert_eq!(r.version.as_deref(), Some("cf_20260101T000000Z"));
        let e = parse_request(&format!("{SRC}, \"version\": {{\"path\": \"x\"}}}}"), Kind::In).err().unwrap();
        assert!(e.to_string().contains("not a lockstep version"), "{e}");
        let e = parse_request(&format!("{SRC}, \"params\": {{\"acton\": \"backup\"}}}}"), Kind::Out).err().unwrap();
        assert!(e.to_string().contains("unknown key `acton`") && e.to_string().contains("action, artifact"), "{e}");
        let e = parse_request("{\"params\": {}}", Kind::Out).err().unwrap();
        assert!(e.to_string().contains("no `source`"), "{e}");
        let e = parse_request("not json", Kind::Check).err().unwrap();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        // Extra top-level keys from a future Concourse are tolerated.
        assert!(parse_request(&format!("{SRC}, \"future\": 1}}"), Kind::Check).is_ok());
    }

    #[test]
    fn booleans_accept_strings() {
        let mut p = Map::new();
        p.insert("skip_download".into(), json!("true"));
        assert!(param_bool(&p, "skip_download", false).unwrap());
        p.insert("skip_download".into(), json!(1));
        assert!(param_bool(&p, "skip_download", false).is_err());
        assert!(!param_bool(&p, "verify", false).unwrap());
    }
}
