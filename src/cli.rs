//! The `lockstep` command: bbr's command tree and flags (so scripts can swap `bbr` for
//! `lockstep`), a `local` target for directories standing in for VMs, and lockstep's own
//! commands (`list`, `verify`, `demo`). Logs go to stderr; exit codes are bbr's bits.

use crate::artifact::stored;
use crate::events::{Event, EventSink};
use crate::model::Direction;
use crate::orchestrate::backup::{backup, BackupOptions};
use crate::orchestrate::cleanup::cleanup;
use crate::orchestrate::precheck::pre_backup_check;
use crate::orchestrate::restore::{open_and_verify, restore};
use crate::orchestrate::{Ctx, Failures, Timings};
use crate::report::{human_bytes, timings_table, LogReporter};
use crate::store::local::LocalStore;
use crate::target::{LocalTarget, Target};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    version,
    about = "Consistent, BBR-compatible backups of BOSH deployments",
    long_about = "Consistent, BBR-compatible backups of BOSH deployments.\n\n\
        lockstep runs the BBR scripts that BOSH jobs ship (lock, backup, unlock, restore) in \
        dependency order, streams each artifact off its instance while checksumming it, and \
        always unlocks, even when stopped with SIGTERM. It accepts bbr's commands and flags \
        and reads and writes bbr's artifact layout.\n\n\
        Exit codes are bbr's, OR-ed: 1 any error, 4 lock failed, 8 unlock failed, 16 cleanup failed."
)]
pub struct Cli {
    /// Show debug output: every discovered job, lock levels, script details.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Operations run in parallel within a phase (bbr: 10, fixed).
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_in_flight: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Back up or restore a deployment whose instances are local directories standing in
    /// for `/` (used by the demo and the tests).
    Local(LocalArgs),
    /// Back up or restore a BOSH director over SSH, as `bbr director`.
    Director(DirectorArgs),
    /// Back up or restore a BOSH deployment through the director API, as `bbr deployment`.
    Deployment(DeploymentArgs),
    /// List the committed backup artifacts in a directory, oldest first.
    List {
        /// Directory holding artifacts.
        #[arg(short = 'a', long = "artifact-path", default_value = ".")]
        artifact_path: PathBuf,
    },
    /// Re-hash every file of an artifact against its metadata and report what differs.
    Verify {
        /// The artifact directory (`<deployment>_<timestamp>`).
        #[arg(short = 'a', long = "artifact-path")]
        artifact_path: PathBuf,
    },
    /// Create a demo deployment, back it up, list and verify the backup, restore it into
    /// a fresh copy and show the data match. Needs no servers.
    Demo {
        /// Where to create the demo (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Deployment name, used to name artifacts.
    #[arg(long, default_value = "local")]
    pub name: String,
    /// An instance: GROUP/INDEX=DIR, where DIR stands in for the instance's `/`. Repeat.
    #[arg(long = "instance", required = true, value_name = "GROUP/INDEX=DIR")]
    pub instances: Vec<String>,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Args, Debug)]
pub struct DirectorArgs {
    /// BOSH Director hostname, with an optional port (default 22).
    #[arg(long)]
    pub host: String,
    /// SSH user; needs passwordless sudo.
    #[arg(short = 'u', long)]
    pub username: String,
    /// Path to the SSH private key.
    #[arg(long = "private-key-path", visible_alias = "key")]
    pub private_key_path: PathBuf,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Args, Debug)]
pub struct DeploymentArgs {
    /// Director URL.
    #[arg(short = 't', long, env = "BOSH_ENVIRONMENT")]
    pub target: String,
    /// UAA client, or basic-auth user.
    #[arg(short = 'u', long, env = "BOSH_CLIENT")]
    pub username: String,
    /// Its secret.
    #[arg(short = 'p', long, env = "BOSH_CLIENT_SECRET", hide_env_values = true)]
    pub password: String,
    /// Deployment name.
    #[arg(short = 'd', long, env = "BOSH_DEPLOYMENT", conflicts_with = "all_deployments")]
    pub deployment: Option<String>,
    /// Director CA certificate: a path, or PEM content.
    #[arg(long = "ca-cert", env = "CA_CERT")]
    pub ca_cert: Option<String>,
    /// Every deployment (pre-backup-check, backup and backup-cleanup only).
    #[arg(long)]
    pub all_deployments: bool,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Action {
    /// Check the deployment can be backed up: scripts found, metadata valid, lock order
    /// acyclic, no leftover artifact directory. Locks nothing.
    #[command(visible_alias = "c")]
    PreBackupCheck,
    /// Back up: lock in dependency order, run the backup scripts, always unlock, stream
    /// and checksum every artifact into the artifact path.
    #[command(visible_alias = "b")]
    Backup {
        /// Directory in which to create the artifact directory (default: current directory).
        #[arg(short = 'a', long = "artifact-path")]
        artifact_path: Option<PathBuf>,
        /// Skip the lock and unlock scripts. The backup may be inconsistent; it is marked so.
        #[arg(long)]
        unsafe_lock_free: bool,
        /// Also store the deployment manifest (it contains secrets).
        #[arg(long)]
        with_manifest: bool,
    },
    /// Restore from an artifact directory, after verifying every checksum.
    #[command(visible_alias = "r")]
    Restore {
        /// The artifact directory to restore from.
        #[arg(short = 'a', long = "artifact-path", required = true)]
        artifact_path: PathBuf,
    },
    /// After an interrupted backup: run every post-backup-unlock and remove the staging
    /// directory on every instance.
    BackupCleanup,
    /// After an interrupted restore: run every post-restore-unlock and remove the staging
    /// directory on every instance.
    RestoreCleanup,
}

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let reporter: Arc<dyn EventSink> = Arc::new(LogReporter::new(std::io::stderr(), cli.debug));
    let mut ctx = Ctx::new(reporter.clone());
    ctx.max_in_flight = cli.max_in_flight as usize;
    install_signal_handlers(&ctx);
    match run_command(&ctx, cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// First SIGINT/SIGTERM: stop new work, finish owed unlocks and cleanup. Second: exit now.
fn install_signal_handlers(ctx: &Ctx) {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = ctx.cancel.clone();
    let events = ctx.events.clone();
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        events.emit(Event::Warning("could not install signal handlers".into()));
        return;
    };
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        events.emit(Event::Cancelling);
        cancel.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("Second signal: exiting now. Run backup-cleanup or restore-cleanup to unlock and clean up.");
        std::process::exit(130);
    });
}

async fn run_command(ctx: &Ctx, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Local(args) => {
            let instances = args.instances.iter().map(|s| LocalTarget::parse_instance(s)).collect::<anyhow::Result<Vec<_>>>()?;
            let target = LocalTarget::new(args.name.clone(), instances);
            let tree = format!("lockstep local --name {} ...", args.name);
            run_action(ctx, &target, &args.action, &tree).await
        }
        Command::Director(args) => {
            bail!(
                "the director target ({}) needs the SSH transport, which is not built yet; use `lockstep local` meanwhile",
                args.host
            )
        }
        Command::Deployment(args) => {
            bail!("the deployment target ({}) needs the BOSH director API client, which is not built yet", args.target)
        }
        Command::List { artifact_path } => {
            let store = LocalStore::new(&artifact_path);
            let names = stored::list(&store).await?;
            if names.is_empty() {
                eprintln!("No committed backup artifacts in {}", artifact_path.display());
            }
            for name in names {
                let art = stored::open(&store, &name, false).await?;
                let m = art.marker.as_ref().expect("listed artifacts are committed");
                println!(
                    "{name}  {}  finished {}{}",
                    human_bytes(m.total_size()),
                    m.finished_at,
                    if m.lock_free { "  LOCK-FREE" } else { "" }
                );
            }
            Ok(0)
        }
        Command::Verify { artifact_path } => {
            let (store, name) = split_artifact_path(&artifact_path)?;
            match open_and_verify(ctx, &store, &name, true).await {
                Ok(_) => Ok(0),
                Err(e) => {
                    eprintln!("{e:#}");
                    Ok(1)
                }
            }
        }
        Command::Demo { dir } => crate::demo::run(ctx, dir).await,
    }
}

/// `--artifact-path DIR/NAME` for restore and verify: the store is DIR, the artifact NAME.
pub fn split_artifact_path(path: &Path) -> anyhow::Result<(LocalStore, String)> {
    let abs = std::path::absolute(path).with_context(|| format!("artifact path {}", path.display()))?;
    if !abs.is_dir() {
        bail!("Could not open backup: {} is not a directory", path.display());
    }
    let name = abs.file_name().context("artifact path has no final component")?.to_string_lossy().into_owned();
    let parent = abs.parent().context("artifact path has no parent")?;
    Ok((LocalStore::new(parent), name))
}

async fn run_action(ctx: &Ctx, target: &dyn Target, action: &Action, tree: &str) -> anyhow::Result<i32> {
    let name = target.deployment_name().to_string();
    let (failures, timings, cleanup_cmd) = match action {
        Action::PreBackupCheck => {
            let (failures, timings) = pre_backup_check(ctx, target).await;
            if failures.is_empty() {
                ctx.info(format!("Deployment '{name}' can be backed up."));
            } else {
                ctx.info(format!("Deployment '{name}' cannot be backed up."));
            }
            (failures, timings, "backup-cleanup")
        }
        Action::Backup { artifact_path, unsafe_lock_free, with_manifest } => {
            let dir = artifact_path.clone().unwrap_or_else(|| PathBuf::from("."));
            if !dir.is_dir() {
                bail!("artifact path {} is not a directory", dir.display());
            }
            if *with_manifest {
                bail!("--with-manifest needs a BOSH director (the deployment target); this target has no manifest");
            }
            let store = LocalStore::new(&dir);
            let opts = BackupOptions { unsafe_lock_free: *unsafe_lock_free, origin: build_origin(), manifest: None };
            let out = backup(ctx, target, &store, &opts).await;
            if let Some(a) = &out.artifact {
                ctx.info(format!("Backup created of {name}: {}", dir.join(a).display()));
                if *unsafe_lock_free {
                    ctx.warn("This artifact was taken with --unsafe-lock-free and is marked so in lockstep.json");
                }
            }
            (out.failures, out.timings, "backup-cleanup")
        }
        Action::Restore { artifact_path } => {
            let (store, art) = split_artifact_path(artifact_path)?;
            let out = restore(ctx, target, &store, &art, true).await;
            if out.failures.is_empty() {
                ctx.info(format!("Restored {art} onto {name}"));
            }
            (out.failures, out.timings, "restore-cleanup")
        }
        Action::BackupCleanup => {
            let (f, t) = cleanup(ctx, target, Direction::Backup).await;
            (f, t, "backup-cleanup")
        }
        Action::RestoreCleanup => {
            let (f, t) = cleanup(ctx, target, Direction::Restore).await;
            (f, t, "restore-cleanup")
        }
    };
    Ok(finish(&failures, &timings, &format!("{tree} {cleanup_cmd}")))
}

/// Prints the timings and the errors; returns the exit code.
fn finish(failures: &Failures, timings: &Timings, cleanup_cmd: &str) -> i32 {
    if !timings.phases.is_empty() {
        eprint!("{}", timings_table(timings));
    }
    if failures.is_empty() {
        return 0;
    }
    eprint!("{}", failures.render());
    if failures.needs_cleanup() {
        eprintln!(
            "It is recommended that you run `{cleanup_cmd}` to ensure that any temp files are cleaned up and all jobs are unlocked."
        );
    }
    failures.exit_code()
}

/// Concourse build variables, when running in a build, so an artifact can be traced.
pub fn build_origin() -> std::collections::BTreeMap<String, String> {
    ["BUILD_PIPELINE_NAME", "BUILD_JOB_NAME", "BUILD_NAME", "BUILD_TEAM_NAME", "ATC_EXTERNAL_URL"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}
