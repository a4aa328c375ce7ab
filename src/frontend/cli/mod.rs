//! The `lockstep` command. Two families of commands share one binary:
//!
//! - bbr's command tree (`bbr.rs`): `director`, `deployment`, and lockstep's `hosts` and
//!   `local` targets, each with `pre-backup-check`, `backup`, `restore`, `backup-cleanup`
//!   and `restore-cleanup`, bbr's flags and exit-code bits, so scripts can swap `bbr` for
//!   `lockstep`;
//! - lockstep's own commands (`own.rs`): `list`, `verify`, `fetch`, `prune`, `run` (the
//!   configuration-driven actions the tasks use), `validate-pipeline` and `demo`;
//! - `opsman` (`opsman.rs`): Ops Manager's platform discovery and installation export;
//!   `opsman_import.rs`: the export imported into a fresh Ops Manager; `platform.rs`: the
//!   whole platform as one backup (`opsman backup`), and its records in `list` and `verify`.
//!
//! `args.rs` holds every flag definition. This module parses, dispatches, and renders a
//! run's closing block (timings, errors, the cleanup advice).
//!
//! Where output goes: bbr's command tree logs to stdout and prints its errors to stderr,
//! as bbr does (its `factory/logger.go`), so scripts that `tee` or grep bbr's stdout work
//! unchanged. lockstep's own commands keep stdout for what they are asked for (a listing,
//! a plan) and log to stderr.

mod args;
mod bbr;
mod command_line;
mod opsman;
mod opsman_import;
mod own;
mod platform;
#[cfg(test)]
mod tests;

pub use args::*;

use crate::frontend::signals::install_signal_handlers;
use crate::service::{build_origin, split_artifact_path};
use crate::artifact::stored;
use crate::store::codec::{parse_recipients, Codec, Compression, Identities};
use crate::events::EventSink;
use crate::model::Direction;
use crate::orchestrate::backup::{backup, BackupOptions};
use crate::orchestrate::cleanup::cleanup;
use crate::orchestrate::precheck::pre_backup_check;
use crate::orchestrate::restore::{open_and_verify_with, restore_with, RestoreOptions};
use crate::retention::{self, Policy};
use crate::orchestrate::{Ctx, Failures, Timings};
use crate::frontend::report::{human_bytes, timings_table, LogReporter};
use crate::store::local::LocalStore;
use crate::store::replicas::ReplicaStore;
use crate::store::s3::S3Store;
use crate::store::url::StoreUrl;
use crate::store::Store;
use crate::target::{LocalTarget, Target};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    // bbr prints `bbr version X`; so does `lockstep -v`, `--version` and `version`.
    version = concat!("version ", env!("CARGO_PKG_VERSION")),
    disable_version_flag = true,
    about = "Consistent, BBR-compatible backups of BOSH deployments",
    long_about = "Consistent, BBR-compatible backups of BOSH deployments.\n\n\
        lockstep runs the BBR scripts that BOSH jobs ship (lock, backup, unlock, restore) in \
        dependency order, streams each artifact off its instance while checksumming it, and \
        always unlocks, even when stopped with SIGTERM. It accepts bbr's commands and flags \
        and reads and writes bbr's artifact layout.\n\n\
        Exit codes are bbr's, OR-ed: 1 any error, 4 lock failed, 8 unlock failed, 16 cleanup failed."
)]
pub struct Cli {
    /// Print the version (as bbr's -v).
    #[arg(short = 'v', short_alias = 'V', long = "version", action = clap::ArgAction::Version)]
    version: (),
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
    /// Print the version, as `bbr version`.
    #[command(visible_alias = "v")]
    Version,
    /// Back up or restore a deployment whose instances are local directories standing in
    /// for `/` (used by the demo and the tests).
    Local(LocalArgs),
    /// Back up or restore a BOSH director over SSH, as `bbr director` (with its host key
    /// verified).
    Director(DirectorArgs),
    /// Back up or restore any set of SSH hosts that carry BBR scripts, listed in an
    /// inventory file (name, and per instance: group, index, address, username, key, host key).
    Hosts(HostsArgs),
    /// Back up or restore a BOSH deployment through the director API, as `bbr deployment`.
    Deployment(DeploymentArgs),
    /// List the committed backup artifacts in a directory or store, oldest first, with
    /// size, age, codec and the lock-free flag.
    List(ListArgs),
    /// Download, decrypt and decompress every file of an artifact and re-hash it against
    /// its metadata; reports exactly which file of which job differs.
    Verify(VerifyArgs),
    /// Bring an artifact back from a store as a plain bbr artifact directory
    /// (DIR/ARTIFACT: decrypted, decompressed, every file re-hashed), which `bbr restore`
    /// and `lockstep ... restore -a` read.
    Fetch(FetchArgs),
    /// Apply a retention policy: print the plan (what is kept and by which rule, what is
    /// deleted), then delete. Never deletes the newest artifact of a deployment nor
    /// anything younger than --min-age; sweeps uncommitted leftovers older than --grace.
    Prune(PruneArgs),
    /// Ops Manager (Tanzu): discover the platform's director and products, or back up
    /// the installation export. Logs in as `om` does (OM_TARGET, OM_USERNAME/OM_PASSWORD
    /// or OM_CLIENT_ID/OM_CLIENT_SECRET, OM_SKIP_SSL_VALIDATION).
    Opsman(OpsmanArgs),
    /// Run an action with the configuration a Concourse resource's `source:` holds (JSON
    /// or YAML), from $LOCKSTEP_CONFIG or --config FILE. This is what the tasks in tasks/ run.
    Run(RunArgs),
    /// Check a Concourse pipeline (and the task files it uses) as `fly validate-pipeline`
    /// does, plus: task files exist and declare the params and inputs passed; every ((var))
    /// is in the vars file.
    ValidatePipeline(ValidatePipelineArgs),
    /// Create a demo deployment, back it up, list and verify the backup, restore it into
    /// a fresh copy and show the data match. Needs no servers.
    Demo(DemoArgs),
}


fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s).map_err(|e| e.to_string())
}

/// Opens one `--store` URL.
pub fn open_store(url: &str, s3: &S3Flags) -> anyhow::Result<Box<dyn Store>> {
    match StoreUrl::parse(url)? {
        StoreUrl::File(path) => Ok(Box::new(LocalStore::new(path))),
        StoreUrl::S3(mut c) => {
            if c.access_key_id.is_none() {
                c.access_key_id = s3.s3_access_key_id.clone().map(|s| s.0);
                c.secret_access_key = s3.secret_access_key()?;
                c.session_token = s3.s3_session_token.clone().map(|s| s.0);
            }
            c.fill_from_env();
            Ok(Box::new(S3Store::new(&c)?))
        }
    }
}

/// Opens every `--store` as one replicated store.
pub fn open_stores(urls: &[String], min: Option<usize>, s3: &S3Flags) -> anyhow::Result<ReplicaStore> {
    let stores = urls.iter().map(|u| open_store(u, s3)).collect::<anyhow::Result<Vec<_>>>()?;
    let n = stores.len();
    ReplicaStore::new(stores, min.unwrap_or(n))
}

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let bbr_tree = matches!(cli.command, Command::Local(_) | Command::Director(_) | Command::Hosts(_) | Command::Deployment(_));
    LOG_TO_STDOUT.store(bbr_tree, std::sync::atomic::Ordering::Relaxed);
    let reporter: Arc<dyn EventSink> = if bbr_tree {
        Arc::new(LogReporter::new(std::io::stdout(), cli.debug))
    } else {
        Arc::new(LogReporter::new(std::io::stderr(), cli.debug))
    };
    for w in args::secret_argument_warnings(std::env::args_os()) {
        eprintln!("{w}");
    }
    let mut ctx = Ctx::new(reporter.clone());
    ctx.max_in_flight = cli.max_in_flight as usize;
    install_signal_handlers(&ctx);
    let code = match run_command(&ctx, cli.command).await {
        Ok(code) => code,
        Err(e) => {
            let line = format!("error: {e:#}\n");
            eprint!("{line}");
            record_error(&line);
            1
        }
    };
    if bbr_tree && code != 0 {
        write_error_log(std::path::Path::new("."), chrono::Utc::now());
    }
    code
}

/// Set for bbr's command tree: its log (and closing timings) go to stdout, as bbr's.
static LOG_TO_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a block of closing text is: part of the log, or the run's errors.
#[derive(Clone, Copy)]
enum Stream {
    Log,
    Errors,
}

/// Every error block this process printed, for the error log (see [`write_error_log`]).
static ERRORS: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn record_error(text: &str) {
    if let Ok(mut all) = ERRORS.lock() {
        all.push_str(text);
    }
}

/// As bbr's `bbr-<time>.err.log`: after a failed run of bbr's command tree, the errors it
/// printed go to `lockstep-<RFC 3339 UTC>.err.log` in `dir` (the working directory), for a
/// ticket or a later look. The text is what was printed, which never holds a secret. The
/// file is created new (never through a symlink or over another file); if it cannot be,
/// the run says so and goes on.
pub(super) fn write_error_log(dir: &std::path::Path, at: chrono::DateTime<chrono::Utc>) -> Option<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = ERRORS.lock().map(|t| t.clone()).unwrap_or_default();
    if text.is_empty() {
        return None;
    }
    let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let create = |path: &std::path::Path| {
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(path)
    };
    let mut path = dir.join(format!("lockstep-{stamp}.err.log"));
    let mut file = create(&path);
    if file.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists) {
        // Another run failed in the same second here: a name of its own, not the other's file.
        path = dir.join(format!("lockstep-{stamp}-{}.err.log", std::process::id()));
        file = create(&path);
    }
    match file.and_then(|mut f| f.write_all(text.as_bytes())) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("WARNING: could not write the error log {}: {e}", path.display());
            None
        }
    }
}

async fn run_command(ctx: &Ctx, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Version => {
            println!("lockstep version {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Local(args) => bbr::local(ctx, args).await,
        Command::Director(args) => bbr::director(ctx, args).await,
        Command::Hosts(args) => bbr::hosts(ctx, args).await,
        Command::Deployment(args) => bbr::deployment(ctx, args).await,
        Command::List(args) => own::list(args).await,
        Command::Verify(args) => own::verify(ctx, args).await,
        Command::Fetch(args) => own::fetch(ctx, args).await,
        Command::Prune(args) => own::prune(args).await,
        Command::Run(args) => own::run_configured(ctx, args).await,
        Command::Opsman(args) => opsman::run(ctx, args).await,
        Command::ValidatePipeline(args) => own::validate_pipeline(args).await,
        Command::Demo(args) => crate::frontend::demo::run(ctx, args.dir).await,
    }
}

/// Prints the timings and the errors (each line labelled when `ctx` is one of several
/// runs); returns the exit code.
pub(super) fn finish(ctx: &Ctx, failures: &Failures, timings: &Timings, cleanup_cmd: &str) -> i32 {
    // A run that failed while finding its instances has nothing to time: the table would
    // only push the error out of view.
    let got_past_discovery = timings.phases.keys().any(|p| *p != "discover");
    if got_past_discovery || (failures.is_empty() && !timings.phases.is_empty()) {
        report_block(ctx, &timings_table(timings), Stream::Log);
    }
    if !failures.is_empty() {
        let mut errors = failures.render();
        if failures.needs_cleanup() {
            errors.push_str(&format!(
                "It is recommended that you run `{cleanup_cmd}` to ensure that any temp files are cleaned up and all jobs are unlocked.\n"
            ));
        }
        record_error(&errors);
        report_block(ctx, &errors, Stream::Errors);
    }
    failures.exit_code()
}

/// Prints an error of the run `ctx` is for.
pub(super) fn print_error(ctx: &Ctx, e: &anyhow::Error) {
    let line = format!("error: {e:#}\n");
    record_error(&line);
    report_block(ctx, &line, Stream::Errors);
}

/// A run's closing text: as it is (errors on stderr; the log on stdout for bbr's command
/// tree, else on stderr), or, for one of several deployments, as one event (labelled on
/// every line, and in that deployment's log file too).
fn report_block(ctx: &Ctx, text: &str, stream: Stream) {
    use std::io::Write;
    match &ctx.label {
        None => {
            // A closed stream must not turn a finished run into a panic.
            let _ = match stream {
                Stream::Log if LOG_TO_STDOUT.load(std::sync::atomic::Ordering::Relaxed) => std::io::stdout().write_all(text.as_bytes()),
                _ => std::io::stderr().write_all(text.as_bytes()),
            };
        }
        Some(_) if text.trim().is_empty() => {}
        Some(_) => ctx.info(text.trim_end()),
    }
}

