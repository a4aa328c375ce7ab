//! lockstep's own commands: `list`, `verify`, `fetch` and `prune` over a store or a
//! directory, `run` (the configuration-driven actions the tasks use) and
//! `validate-pipeline`.

use super::*;
use crate::artifact::marker::CommitMarker;

fn age_of(at: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(t) => {
            let secs = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0) as u64;
            let d = std::time::Duration::from_secs(if secs >= 3600 { secs / 60 * 60 } else { secs });
            format!("{} ago", humantime::format_duration(d))
        }
        Err(_) => "unknown".to_string(),
    }
}

/// The table `lockstep list` and `lockstep run list` both print: one labelled column per
/// fact, aligned, oldest artifact first.
pub(super) fn artifact_table(rows: &[(String, CommitMarker)], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut cells = vec![["ARTIFACT", "SIZE", "FINISHED", "AGE", "CODEC", "LOCKS"].map(String::from).to_vec()];
    for (name, m) in rows {
        cells.push(vec![
            name.clone(),
            human_bytes(m.total_size()),
            m.finished_at.clone(),
            age_of(&m.finished_at, now),
            format!("{}{}", m.compression, if m.encrypted { "+age" } else { "" }),
            if m.lock_free { "LOCK-FREE".to_string() } else { "locked".to_string() },
        ]);
    }
    let widths: Vec<usize> = (0..cells[0].len()).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Text from a store (artifact names, error causes) with control characters escaped: a
/// store must not be able to forge lines in the output.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Prints the table of the committed artifacts, then every damaged one with the reason (on
/// stderr); says so when the store holds none. Exit code 1 when any is damaged, after
/// listing every other.
fn print_artifacts(rows: &[(String, CommitMarker)], damaged: &[(String, String)], store: &str) -> i32 {
    if rows.is_empty() && damaged.is_empty() {
        eprintln!("No committed backup artifacts in {}", printable(store));
    }
    if !rows.is_empty() {
        let safe: Vec<(String, CommitMarker)> = rows.iter().map(|(n, m)| (printable(n), m.clone())).collect();
        print!("{}", artifact_table(&safe, chrono::Utc::now()));
    }
    for (name, why) in damaged {
        eprintln!("error: {} is damaged and cannot be used: {}", printable(name), printable(why));
    }
    if damaged.is_empty() { 0 } else { 1 }
}

/// A local store that does not exist is a typo, not an empty store.
fn local_store_must_exist(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("the store directory {} does not exist: check the path", dir.display());
    }
    Ok(())
}

pub(super) async fn list(ListArgs { artifact_path, store, s3 }: ListArgs) -> anyhow::Result<i32> {
    let store: Box<dyn Store> = match &store {
        Some(url) => {
            if let Ok(StoreUrl::File(dir)) = StoreUrl::parse(url) {
                local_store_must_exist(&dir)?;
            }
            open_store(url, &s3)?
        }
        None => {
            local_store_must_exist(&artifact_path)?;
            Box::new(LocalStore::new(&artifact_path))
        }
    };
    let (mut rows, mut damaged) = (Vec::new(), Vec::new());
    for name in stored::list(store.as_ref()).await? {
        match stored::open(store.as_ref(), &name, false).await {
            Ok(art) => rows.push((name, art.marker.context("listed artifacts are committed")?)),
            Err(e) => damaged.push((name, format!("{e:#}"))),
        }
    }
    let code = print_artifacts(&rows, &damaged, &store.describe());
    Ok(code.max(super::platform::print_records(store.as_ref()).await?))
}

pub(super) async fn verify(ctx: &Ctx, VerifyArgs { artifact, artifact_path, store, identity, s3 }: VerifyArgs) -> anyhow::Result<i32> {
    let ids = Identities::from_files(&identity)?;
    let (store, name, accept_bbr): (Box<dyn Store>, String, bool) = match (&store, &artifact_path) {
        (_, Some(path)) => {
            let (s, n) = split_artifact_path(path)?;
            (Box::new(s), n, true)
        }
        (Some(url), None) => (open_store(url, &s3)?, artifact.clone().unwrap_or_default(), false),
        (None, None) => {
            // `verify DIR/NAME`: a directory given as the argument, as -a takes it.
            let (s, n) = split_artifact_path(std::path::Path::new(artifact.as_deref().unwrap_or(".")))?;
            (Box::new(s), n, true)
        }
    };
    if crate::artifact::platform::is_platform_name(&name) {
        return Ok(super::platform::verify(ctx, store.as_ref(), &name, &ids).await);
    }
    match open_and_verify_with(ctx, store.as_ref(), &name, accept_bbr, &ids).await {
        Ok(_) => Ok(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(1)
        }
    }
}

pub(super) async fn fetch(ctx: &Ctx, FetchArgs { artifact, store, artifact_path, identity, s3 }: FetchArgs) -> anyhow::Result<i32> {
    let ids = Identities::from_files(&identity)?;
    let src = open_store(&store, &s3)?;
    std::fs::create_dir_all(&artifact_path).with_context(|| format!("creating {}", artifact_path.display()))?;
    let dest = LocalStore::new(&artifact_path);
    let m = stored::fetch(src.as_ref(), &artifact, &dest, &ids).await?;
    ctx.info(format!(
        "Fetched {artifact} from {} into {} ({}, every file verified against its metadata)",
        src.describe(),
        artifact_path.join(&artifact).display(),
        human_bytes(m.total_size())
    ));
    Ok(0)
}

pub(super) async fn prune(PruneArgs { stores, artifact_path, deployment, keep_last, keep_daily, keep_weekly, keep_monthly, keep_within, min_age, grace, dry_run, s3 }: PruneArgs) -> anyhow::Result<i32> {
    let policy = Policy { keep_last, keep_within, keep_daily, keep_weekly, keep_monthly, min_age, grace };
    policy.validate()?;
    let targets: Vec<Box<dyn Store>> = match &artifact_path {
        Some(p) => vec![Box::new(LocalStore::new(p))],
        None => stores.iter().map(|u| open_store(u, &s3)).collect::<anyhow::Result<_>>()?,
    };
    let mut code = 0;
    for store in &targets {
        let plan = retention::plan(store.as_ref(), &policy, deployment.as_deref(), chrono::Utc::now()).await?;
        println!("{plan}");
        if dry_run {
            println!("Dry run: nothing deleted.");
            continue;
        }
        let done = retention::execute(store.as_ref(), &plan).await;
        println!("{} from {}", done.summary(), store.describe());
        for w in &done.warnings {
            eprintln!("warning: {w}");
        }
        for e in &done.errors {
            eprintln!("error: {e}");
            code = 1;
        }
    }
    Ok(code)
}

pub(super) async fn validate_pipeline(ValidatePipelineArgs { file, vars, repo_root, strict }: ValidatePipelineArgs) -> anyhow::Result<i32> {
    let report = crate::frontend::pipeline_check::check_pipeline_file(&file, vars.as_deref(), repo_root.as_deref())?;
    for w in &report.warnings {
        eprintln!("WARNING: {w}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if strict && report.is_ok() && !report.warnings.is_empty() {
        eprintln!("{}: {} warning(s), which --strict treats as errors", file.display(), report.warnings.len());
        return Ok(1);
    }
    if report.is_ok() {
        eprintln!("{}: looks good ({} warning(s))", file.display(), report.warnings.len());
        Ok(0)
    } else {
        eprintln!("{}: {} error(s)", file.display(), report.errors.len());
        Ok(1)
    }
}

/// `lockstep run ACTION`: the configuration-driven actions the tasks use.
pub(super) async fn run_configured(ctx: &Ctx, args: RunArgs) -> anyhow::Result<i32> {
    use crate::service;
    let text = match &args.config {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => std::env::var("LOCKSTEP_CONFIG")
            .map_err(|_| anyhow::anyhow!("no configuration: set LOCKSTEP_CONFIG (the resource's source, as JSON or YAML) or give --config FILE"))?,
    };
    let cfg = crate::config::Config::parse(&text).context("LOCKSTEP_CONFIG")?;
    let mut tuned = Ctx::new(ctx.events.clone());
    tuned.cancel = ctx.cancel.clone();
    tuned.max_in_flight = ctx.max_in_flight;
    service::tune(&mut tuned, &cfg);
    let ctx = &tuned;
    let (failures, timings, cleanup_cmd) = match &args.action {
        RunAction::PreBackupCheck => {
            cfg.open_store()?.preflight().await.context("the store is not usable")?;
            let (f, t) = service::run_pre_backup_check(ctx, &cfg).await?;
            let name = cfg.deployment_name().unwrap_or("the deployment");
            ctx.info(if f.is_empty() { format!("Deployment '{name}' can be backed up.") } else { format!("Deployment '{name}' cannot be backed up.") });
            (f, t, "backup-cleanup")
        }
        RunAction::Backup { unsafe_lock_free: false } if cfg.opsman.is_some() => {
            let out = service::platform::run_platform_backup(ctx, &cfg, build_origin()).await?;
            match &out.record {
                Some(r) => ctx.info(format!("Platform backup {r} in {}: {}", cfg.store.describe(), out.members.iter().map(|m| m.artifact.as_str()).collect::<Vec<_>>().join(", "))),
                None => ctx.warn("no platform record was written: this platform backup is incomplete"),
            }
            // A cleanup is owed to the member that failed, which has a target of its own.
            let cleanup = "lockstep director|deployment ... backup-cleanup";
            return Ok(finish(ctx, &out.failures, &Default::default(), cleanup).max(i32::from(out.record.is_none())));
        }
        RunAction::Backup { unsafe_lock_free } => {
            let out = service::run_backup(ctx, &cfg, *unsafe_lock_free, build_origin()).await?;
            if let Some(a) = &out.artifact {
                ctx.info(format!("Backup created: {a} in {}", cfg.store.describe()));
            }
            (out.failures, out.timings, "backup-cleanup")
        }
        RunAction::Restore { artifact, artifact_path, drill } => {
            let out = match (artifact, artifact_path) {
                (Some(name), _) => service::restore_from_store(ctx, &cfg, name, *drill).await?,
                (None, Some(dir)) => service::restore_from_dir(ctx, &cfg, dir, *drill).await?,
                (None, None) => bail!("give --artifact NAME or -a DIR"),
            };
            (out.failures, out.timings, "restore-cleanup")
        }
        RunAction::BackupCleanup => {
            let (f, t) = service::run_cleanup(ctx, &cfg, Direction::Backup).await?;
            (f, t, "backup-cleanup")
        }
        RunAction::RestoreCleanup => {
            let (f, t) = service::run_cleanup(ctx, &cfg, Direction::Restore).await?;
            (f, t, "restore-cleanup")
        }
        RunAction::Describe => {
            println!("{}", service::describe_target(&cfg).await?);
            return Ok(0);
        }
        RunAction::List => {
            if let crate::config::StoreConfig::Local(dir) = &cfg.store {
                local_store_must_exist(dir)?;
            }
            let (mut rows, mut damaged) = (Vec::new(), Vec::new());
            let (names, warnings) = service::committed(&cfg).await?;
            for w in warnings {
                ctx.warn(w);
            }
            for name in names {
                match service::describe(&cfg, &name).await {
                    Ok(art) => rows.push((name, art.marker.context("committed")?)),
                    Err(e) => damaged.push((name, format!("{e:#}"))),
                }
            }
            let code = print_artifacts(&rows, &damaged, &cfg.store.describe());
            return Ok(code.max(super::platform::print_records(cfg.open_store()?.as_ref()).await?));
        }
        RunAction::Verify { artifact } => {
            let name = match artifact {
                Some(a) => a.clone(),
                None => service::newest(&cfg).await?,
            };
            let verified = match crate::artifact::platform::is_platform_name(&name) {
                true => service::platform::check_record(ctx, &cfg, &name, true).await.map(|_| ()),
                false => service::verify(ctx, &cfg, &name).await.map(|_| ()),
            };
            return match verified {
                Ok(_) => Ok(0),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(1)
                }
            };
        }
        RunAction::Fetch { artifact, artifact_path } => {
            let dir = artifact_path.join(artifact);
            let m = service::fetch_into(&cfg, artifact, &dir).await?;
            ctx.info(format!("Fetched {artifact} into {} ({}), every file verified", dir.display(), human_bytes(m.total_size())));
            return Ok(0);
        }
        RunAction::Prune { dry_run } => {
            let (plan, done) = service::prune(&cfg, *dry_run).await?;
            println!("{plan}");
            match done {
                None => println!("Dry run: nothing deleted."),
                Some(done) => {
                    println!("{}", done.summary());
                    for w in &done.warnings {
                        eprintln!("warning: {w}");
                    }
                    if !done.errors.is_empty() {
                        for e in &done.errors {
                            eprintln!("error: {e}");
                        }
                        return Ok(1);
                    }
                }
            }
            return Ok(0);
        }
    };
    Ok(finish(ctx, &failures, &timings, &format!("{} {cleanup_cmd}", command_line::run(args.config.as_deref()))))
}

