//! The `lockstep` command: bbr's command tree and flags (so scripts can swap `bbr` for
//! `lockstep`), a `local` target for directories standing in for VMs, and lockstep's own
//! commands (`list`, `verify`, `demo`). Logs go to stderr; exit codes are bbr's bits.

use crate::artifact::stored;
use crate::store::codec::{parse_recipients, Codec, Compression, Identities};
use crate::events::{Event, EventSink};
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
    List {
        /// Directory holding artifacts.
        #[arg(short = 'a', long = "artifact-path", default_value = ".", conflicts_with = "store")]
        artifact_path: PathBuf,
        /// A store URL instead: s3://BUCKET/PREFIX?... or file:///PATH.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Download, decrypt and decompress every file of an artifact and re-hash it against
    /// its metadata; reports exactly which file of which job differs.
    Verify {
        /// The artifact's name (`<deployment>_<timestamp>`), with --store.
        #[arg(value_name = "ARTIFACT", required_unless_present = "artifact_path")]
        artifact: Option<String>,
        /// The artifact directory (`<deployment>_<timestamp>`) instead of a store.
        #[arg(short = 'a', long = "artifact-path", conflicts_with_all = ["store", "artifact"])]
        artifact_path: Option<PathBuf>,
        /// The store holding the artifact: s3://BUCKET/PREFIX?... or file:///PATH.
        #[arg(long, value_name = "URL", requires = "artifact")]
        store: Option<String>,
        /// age identity file (AGE-SECRET-KEY-1...) for an encrypted artifact. Repeat.
        #[arg(long = "identity", short = 'i', value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Bring an artifact back from a store as a plain bbr artifact directory
    /// (DIR/ARTIFACT: decrypted, decompressed, every file re-hashed), which `bbr restore`
    /// and `lockstep ... restore -a` read.
    Fetch {
        /// The artifact's name (`<deployment>_<timestamp>`).
        #[arg(value_name = "ARTIFACT")]
        artifact: String,
        /// The store holding it: s3://BUCKET/PREFIX?... or file:///PATH.
        #[arg(long, value_name = "URL")]
        store: String,
        /// Directory in which to create the artifact directory.
        #[arg(short = 'a', long = "artifact-path", value_name = "DIR")]
        artifact_path: PathBuf,
        /// age identity file for an encrypted artifact. Repeat.
        #[arg(long = "identity", short = 'i', value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Apply a retention policy: print the plan (what is kept and by which rule, what is
    /// deleted), then delete. Never deletes the newest artifact of a deployment nor
    /// anything younger than --min-age; sweeps uncommitted leftovers older than --grace.
    Prune {
        /// The store to prune (repeat to prune several, each on its own).
        #[arg(long = "store", value_name = "URL", required_unless_present = "artifact_path")]
        stores: Vec<String>,
        /// A local directory of artifacts instead.
        #[arg(short = 'a', long = "artifact-path", conflicts_with = "stores")]
        artifact_path: Option<PathBuf>,
        /// Only this deployment's artifacts.
        #[arg(long, short = 'd')]
        deployment: Option<String>,
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        #[arg(long, value_name = "N")]
        keep_daily: Option<usize>,
        #[arg(long, value_name = "N")]
        keep_weekly: Option<usize>,
        #[arg(long, value_name = "N")]
        keep_monthly: Option<usize>,
        /// Keep everything newer than this (e.g. 14d, 2w).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        keep_within: Option<std::time::Duration>,
        /// Never delete anything younger than this.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        min_age: std::time::Duration,
        /// Sweep uncommitted leftovers (interrupted backups) older than this.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Print the plan; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Run an action with the configuration a Concourse resource's `source:` holds (JSON
    /// or YAML), from $LOCKSTEP_CONFIG or --config FILE. This is what the tasks in tasks/ run.
    Run(RunArgs),
    /// Check a Concourse pipeline (and the task files it uses) as `fly validate-pipeline`
    /// does, plus: task files exist and declare the params and inputs passed; every ((var))
    /// is in the vars file.
    ValidatePipeline {
        /// The pipeline YAML.
        file: PathBuf,
        /// The vars file (`fly -l`): every ((var)) must be defined in it.
        #[arg(long, short = 'l', value_name = "FILE")]
        vars: Option<PathBuf>,
        /// Where task files live (default: the directory above the pipeline's).
        #[arg(long, value_name = "DIR")]
        repo_root: Option<PathBuf>,
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
pub struct RunArgs {
    /// The configuration file (JSON or YAML); default: the LOCKSTEP_CONFIG variable.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub action: RunAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum RunAction {
    /// Check the target can be backed up (and the store reached). Locks nothing.
    PreBackupCheck,
    /// Back up the target into the store(s).
    Backup {
        /// Skip the lock and unlock scripts; the artifact is marked lock-free.
        #[arg(long)]
        unsafe_lock_free: bool,
    },
    /// Restore an artifact from the store (--artifact NAME) or a local artifact
    /// directory (-a DIR, e.g. one a `get` fetched) onto the target.
    Restore {
        #[arg(long, value_name = "NAME", required_unless_present = "artifact_path", conflicts_with = "artifact_path")]
        artifact: Option<String>,
        #[arg(short = 'a', long = "artifact-path", value_name = "DIR")]
        artifact_path: Option<PathBuf>,
        /// A restore drill into a scratch deployment: refuse when the target is where the
        /// backup was taken from (tasks/restore-drill.sh sets it).
        #[arg(long)]
        drill: bool,
    },
    /// Run every post-backup-unlock and remove the staging directories.
    BackupCleanup,
    /// Run every post-restore-unlock and remove the staging directories.
    RestoreCleanup,
    /// List the deployment's committed artifacts, oldest first.
    List,
    /// Re-hash every file of an artifact (default: the newest) against its metadata.
    Verify {
        artifact: Option<String>,
    },
    /// Bring an artifact back as a plain bbr artifact directory DIR/ARTIFACT.
    Fetch {
        artifact: String,
        #[arg(short = 'a', long = "artifact-path", value_name = "DIR")]
        artifact_path: PathBuf,
    },
    /// Apply the configuration's retention policy; print the plan first.
    Prune {
        #[arg(long)]
        dry_run: bool,
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
    /// Pin the director's host key ('ssh-ed25519 AAAA...') instead of using known_hosts.
    #[arg(long, value_name = "LINE")]
    pub host_public_key: Option<String>,
    #[command(flatten)]
    pub ssh: SshFlags,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Args, Debug)]
pub struct HostsArgs {
    /// The inventory YAML: `name:` (the deployment name) and `instances:` (group, index,
    /// address, username, private_key_path or private_key, host_public_key or known_hosts_path).
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    #[command(flatten)]
    pub ssh: SshFlags,
    #[command(subcommand)]
    pub action: Action,
}

/// How instances are reached over SSH (shared by `director` and `hosts`).
#[derive(Args, Debug, Clone)]
pub struct SshFlags {
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,
    /// Do not check host keys at all (a machine in the middle could take the backups).
    #[arg(long)]
    pub insecure_skip_host_key_check: bool,
    /// Connect timeout: TCP, SSH handshake and authentication.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub connect_timeout: std::time::Duration,
    /// Fail any remote command (scripts, transfers) that runs longer (default: no limit).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub script_timeout: Option<std::time::Duration>,
    /// Reach the instances through this SSH jump host (else BOSH_ALL_PROXY, if set).
    #[arg(long, value_name = "USER@HOST[:PORT]")]
    pub gateway: Option<String>,
    /// The jump host's private key.
    #[arg(long, value_name = "PATH")]
    pub gateway_private_key_path: Option<PathBuf>,
    /// Pin the jump host's host key.
    #[arg(long, value_name = "LINE")]
    pub gateway_host_public_key: Option<String>,
}

impl SshFlags {
    fn options(&self) -> anyhow::Result<crate::target::SshOptions> {
        let mut opts = crate::target::SshOptions::from_env();
        opts.known_hosts_path = self.known_hosts.clone();
        opts.insecure_skip_host_key_check = self.insecure_skip_host_key_check;
        opts.connect_timeout = self.connect_timeout;
        opts.script_timeout = self.script_timeout;
        let flags = crate::target::GatewayFlags {
            gateway: self.gateway.clone(),
            private_key_path: self.gateway_private_key_path.clone(),
            host_public_key: self.gateway_host_public_key.clone(),
            bosh_all_proxy: std::env::var("BOSH_ALL_PROXY").ok(),
        };
        opts.gateway = crate::target::resolve_gateway(&flags, &opts)?;
        Ok(opts)
    }
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
    /// Director CA certificate: a path, or PEM content (then BOSH_CA_CERT is read too;
    /// CA_CERT wins).
    #[arg(long = "ca-cert", env = "CA_CERT", allow_hyphen_values = true)]
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
        /// Directory in which to create the artifact directory (default: current directory),
        /// in bbr's layout, uncompressed unless --compression says otherwise.
        #[arg(short = 'a', long = "artifact-path", conflicts_with = "stores")]
        artifact_path: Option<PathBuf>,
        /// Skip the lock and unlock scripts. The backup may be inconsistent; it is marked so.
        #[arg(long)]
        unsafe_lock_free: bool,
        /// Also store the deployment manifest (it contains secrets).
        #[arg(long)]
        with_manifest: bool,
        /// Store the artifact here instead: s3://BUCKET/PREFIX?endpoint=...&use_path_style=true
        /// or file:///PATH. Repeat to write replicas from the same stream.
        #[arg(long = "store", value_name = "URL")]
        stores: Vec<String>,
        /// With several --store: succeed when at least N copies are complete (default: all).
        #[arg(long, value_name = "N", requires = "stores")]
        min_stores: Option<usize>,
        /// zstd, zstd:LEVEL, gzip, gzip:LEVEL or none (default: zstd with --store, none
        /// with --artifact-path so bbr can restore the directory).
        #[arg(long, value_name = "CODEC")]
        compression: Option<Compression>,
        /// Encrypt with age to this recipient (age1...) or to every recipient in this file.
        /// Repeat.
        #[arg(long = "encrypt-to", value_name = "RECIPIENT|FILE")]
        encrypt_to: Vec<String>,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Restore from an artifact directory or a store, after verifying every checksum.
    #[command(visible_alias = "r")]
    Restore {
        /// The artifact directory to restore from.
        #[arg(short = 'a', long = "artifact-path", required_unless_present = "stores", conflicts_with = "stores")]
        artifact_path: Option<PathBuf>,
        /// Restore from this store instead (repeat: the first that has each file serves it).
        #[arg(long = "store", value_name = "URL", requires = "artifact")]
        stores: Vec<String>,
        /// The artifact's name in the store (`<deployment>_<timestamp>`).
        #[arg(long, value_name = "ARTIFACT")]
        artifact: Option<String>,
        /// age identity file (AGE-SECRET-KEY-1...) for an encrypted artifact. Repeat.
        #[arg(long = "identity", short = 'i', value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// After an interrupted backup: run every post-backup-unlock and remove the staging
    /// directory on every instance.
    BackupCleanup,
    /// After an interrupted restore: run every post-restore-unlock and remove the staging
    /// directory on every instance.
    RestoreCleanup,
}

/// A secret given on the command line or in the environment; `Debug` never shows it.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Credentials for `s3://` stores. Each defaults to the standard AWS variable; region and
/// endpoint come from the store URL or `AWS_REGION` / `AWS_ENDPOINT_URL`.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Flags {
    /// S3 access key id for s3:// stores.
    #[arg(long, value_name = "ID", env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<Secret>,
    /// S3 secret access key for s3:// stores.
    #[arg(long, value_name = "SECRET", env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// S3 session token (temporary credentials).
    #[arg(long, value_name = "TOKEN", env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub s3_session_token: Option<Secret>,
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
                c.secret_access_key = s3.s3_secret_access_key.clone().map(|s| s.0);
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

fn age_of(at: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(t) => {
            let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0) as u64;
            let d = std::time::Duration::from_secs(if secs >= 3600 { secs / 60 * 60 } else { secs });
            format!("{} ago", humantime::format_duration(d))
        }
        Err(_) => "at an unknown time".to_string(),
    }
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
pub fn install_signal_handlers(ctx: &Ctx) {
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
            let opts = args.ssh.options()?;
            let target = crate::target::DirectorTarget::new(
                &args.host,
                &args.username,
                &args.private_key_path,
                args.host_public_key.as_deref(),
                &opts,
            )?;
            for w in target.warnings() {
                ctx.warn(w);
            }
            let tree = format!("lockstep director --host {} ...", args.host);
            run_action(ctx, &target, &args.action, &tree).await
        }
        Command::Hosts(args) => {
            let opts = args.ssh.options()?;
            let target = crate::target::HostsTarget::from_file(&args.inventory, &opts)?;
            for w in target.warnings() {
                ctx.warn(w);
            }
            let tree = format!("lockstep hosts --inventory {} ...", args.inventory.display());
            run_action(ctx, &target, &args.action, &tree).await
        }
        Command::Deployment(args) => {
            if args.deployment.is_none() && !args.all_deployments {
                bail!("provide one of '--deployment' or '--all-deployments' flags.");
            }
            if args.all_deployments {
                match &args.action {
                    Action::Restore { .. } | Action::RestoreCleanup => bail!(
                        "--all-deployments is only supported for pre-backup-check, backup and backup-cleanup: \
                         restore and restore-cleanup need --deployment NAME (BOSH_DEPLOYMENT)"
                    ),
                    Action::Backup { unsafe_lock_free: true, .. } => {
                        bail!("Cannot use the --unsafe-lock-free flag in conjunction with the --all-deployments flag")
                    }
                    _ => {}
                }
            }
            for (flag, v) in [("--target", &args.target), ("--username", &args.username), ("--password", &args.password)] {
                if v.trim().is_empty() {
                    bail!("{flag} flag is required.");
                }
            }
            // CA_CERT (clap's env for --ca-cert) wins over BOSH_CA_CERT.
            let ca = args.ca_cert.clone().or_else(|| std::env::var("BOSH_CA_CERT").ok()).filter(|s| !s.trim().is_empty());
            let ca = ca.as_deref().map(crate::target::bosh::read_ca_cert).transpose()?;
            let mut opts = crate::target::SshOptions::from_env();
            let flags = crate::target::GatewayFlags { bosh_all_proxy: std::env::var("BOSH_ALL_PROXY").ok(), ..Default::default() };
            opts.gateway = crate::target::resolve_gateway(&flags, &opts)?;
            // BOSH_ALL_PROXY carries the director's API calls too, as bosh-cli's.
            let client =
                crate::target::bosh::DirectorClient::connect(&args.target, &args.username, &args.password, ca.as_deref(), opts.gateway.as_ref()).await?;
            let Some(deployment) = args.deployment.clone() else {
                return run_all_deployments(ctx, &client, &opts, &args).await;
            };
            let target = crate::target::bosh::DeploymentTarget::new(client, &deployment, &opts)?;
            let tree = format!("lockstep deployment --target {} --deployment {deployment} ...", args.target);
            run_deployment(ctx, &target, &args.action, &tree).await
        }
        Command::List { artifact_path, store, s3 } => {
            let store: Box<dyn Store> = match &store {
                Some(url) => open_store(url, &s3)?,
                None => Box::new(LocalStore::new(&artifact_path)),
            };
            let names = stored::list(store.as_ref()).await?;
            if names.is_empty() {
                eprintln!("No committed backup artifacts in {}", store.describe());
            }
            for name in names {
                let art = stored::open(store.as_ref(), &name, false).await?;
                let m = art.marker.as_ref().expect("listed artifacts are committed");
                let codec = format!("{}{}", m.compression, if m.encrypted { "+age" } else { "" });
                println!(
                    "{name}  {}  {}  {codec}{}",
                    human_bytes(m.total_size()),
                    age_of(&m.finished_at),
                    if m.lock_free { "  LOCK-FREE" } else { "" }
                );
            }
            Ok(0)
        }
        Command::Verify { artifact, artifact_path, store, identity, s3 } => {
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
            match open_and_verify_with(ctx, store.as_ref(), &name, accept_bbr, &ids).await {
                Ok(_) => Ok(0),
                Err(e) => {
                    eprintln!("{e:#}");
                    Ok(1)
                }
            }
        }
        Command::Fetch { artifact, store, artifact_path, identity, s3 } => {
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
        Command::Prune { stores, artifact_path, deployment, keep_last, keep_daily, keep_weekly, keep_monthly, keep_within, min_age, grace, dry_run, s3 } => {
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
                println!("Deleted {} artifact(s), swept {} leftover(s) from {}", done.deleted.len(), done.swept.len(), store.describe());
                for e in &done.errors {
                    eprintln!("error: {e}");
                    code = 1;
                }
            }
            Ok(code)
        }
        Command::Run(args) => run_configured(ctx, args).await,
        Command::ValidatePipeline { file, vars, repo_root } => {
            let report = crate::frontend::pipeline_check::check_pipeline_file(&file, vars.as_deref(), repo_root.as_deref())?;
            for w in &report.warnings {
                eprintln!("WARNING: {w}");
            }
            for e in &report.errors {
                eprintln!("error: {e}");
            }
            if report.is_ok() {
                eprintln!("{}: looks good ({} warning(s))", file.display(), report.warnings.len());
                Ok(0)
            } else {
                eprintln!("{}: {} error(s)", file.display(), report.errors.len());
                Ok(1)
            }
        }
        Command::Demo { dir } => crate::frontend::demo::run(ctx, dir).await,
    }
}

/// `lockstep run ACTION`: the configuration-driven actions the tasks use.
async fn run_configured(ctx: &Ctx, args: RunArgs) -> anyhow::Result<i32> {
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
        RunAction::List => {
            for name in service::committed(&cfg).await? {
                let art = service::describe(&cfg, &name).await?;
                let m = art.marker.as_ref().expect("committed");
                println!(
                    "{name}  {}  {}  finished {}{}",
                    human_bytes(m.total_size()),
                    service::codec_of(m),
                    m.finished_at,
                    if m.lock_free { "  LOCK-FREE" } else { "" }
                );
            }
            return Ok(0);
        }
        RunAction::Verify { artifact } => {
            let name = match artifact {
                Some(a) => a.clone(),
                None => service::newest(&cfg).await?,
            };
            return match service::verify(ctx, &cfg, &name).await {
                Ok(_) => Ok(0),
                Err(e) => {
                    eprintln!("{e:#}");
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
                    println!("Deleted {} artifact(s), swept {} leftover(s)", done.deleted.len(), done.swept.len());
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
    Ok(finish(ctx, &failures, &timings, &format!("lockstep run {cleanup_cmd}")))
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

/// One BOSH deployment: `--with-manifest` downloads the manifest (before any SSH setup)
/// and stores it in the artifact.
async fn run_deployment(ctx: &Ctx, target: &crate::target::bosh::DeploymentTarget, action: &Action, tree: &str) -> anyhow::Result<i32> {
    let manifest = match action {
        Action::Backup { with_manifest: true, .. } => {
            ctx.warn(
                "--with-manifest: the deployment manifest stored in the artifact (manifest.yml) contains secrets \
                 (credentials, certificates, keys); store the artifact securely or encrypt it (--encrypt-to)",
            );
            Some(target.manifest().await?.as_bytes().to_vec())
        }
        _ => None,
    };
    run_action_with(ctx, target, action, tree, manifest).await
}

/// Deployments of `--all-deployments` that run at once (bbr: 10, fixed).
const ALL_DEPLOYMENTS_IN_FLIGHT: usize = 10;

/// `--all-deployments` (pre-backup-check, backup, backup-cleanup): every deployment the
/// director lists (`GET /deployments`), up to 10 at once as bbr, each with its own SSH
/// identity, cleaned up after it, and its log lines labelled `[name]`. bbr's summary goes
/// to stdout; the exit code is 1 when any deployment failed, 0 otherwise.
async fn run_all_deployments(
    ctx: &Ctx,
    client: &crate::target::bosh::DirectorClient,
    opts: &crate::target::SshOptions,
    args: &DeploymentArgs,
) -> anyhow::Result<i32> {
    let (verb, done) = match &args.action {
        Action::PreBackupCheck => ("pre-backup-check", "Can be backed up"),
        Action::Backup { .. } => ("backup", "Successfully backed up"),
        Action::BackupCleanup => ("backup-cleanup", "Successfully cleaned up"),
        Action::Restore { .. } | Action::RestoreCleanup => {
            bail!("--all-deployments is only supported for pre-backup-check, backup and backup-cleanup")
        }
    };
    let now = || chrono::Utc::now().format("%H:%M:%S").to_string();
    let names = client.deployments().await?;
    if names.is_empty() {
        println!("[{}] No deployments found on the director {}", now(), client.url());
        return Ok(0);
    }
    println!("[{}] Pending: {}", now(), names.join(", "));
    let tree = format!("lockstep deployment --target {} --all-deployments ...", args.target);
    let log_dir = match &args.action {
        Action::Backup { artifact_path: Some(dir), .. } => dir.clone(),
        _ => PathBuf::from("."),
    };
    let (tree, now, log_dir) = (&tree, &now, &log_dir);
    let codes = crate::orchestrate::bounded(ALL_DEPLOYMENTS_IN_FLIGHT, &names, |name| async move {
        if ctx.cancelled() {
            println!("[{}] Not starting {verb} of {name}: cancelled", now());
            return 1;
        }
        // As bbr: every deployment's log also goes to <artifact path or .>/<name>_<time>.log.
        let log_path = log_dir.join(format!("{}.log", crate::artifact::artifact_name(name, chrono::Utc::now())));
        let file: Option<Arc<dyn crate::events::EventSink>> = match std::fs::File::create(&log_path) {
            Ok(f) => {
                println!("[{}] Starting {verb} of {name}, log file: {}", now(), log_path.display());
                Some(Arc::new(crate::frontend::report::LogReporter::new(f, false)))
            }
            Err(e) => {
                println!("[{}] Starting {verb} of {name} (no log file: {}: {e})", now(), log_path.display());
                None
            }
        };
        // Each deployment's lines carry its name: several run at once.
        let labelled: Arc<dyn crate::events::EventSink> = Arc::new(crate::events::Labelled { inner: ctx.events.clone(), label: name.clone() });
        let sink = match file {
            Some(f) => Arc::new(crate::events::Tee(vec![labelled, f])) as Arc<dyn crate::events::EventSink>,
            None => labelled,
        };
        let mut one = Ctx::new(sink);
        one.cancel = ctx.cancel.clone();
        one.max_in_flight = ctx.max_in_flight;
        one.bbr_version = ctx.bbr_version.clone();
        one.label = Some(name.clone());
        let code = match crate::target::bosh::DeploymentTarget::new(client.clone(), name, opts) {
            Ok(target) => run_deployment(&one, &target, &args.action, tree).await,
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            print_error(&one, &e);
            1
        });
        if code == 0 {
            println!("[{}] Finished {verb} of {name}", now());
        } else {
            println!("[{}] {verb} of {name} FAILED (exit code {code})", now());
        }
        code
    })
    .await;
    let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
    for (name, code) in names.iter().zip(codes) {
        if code == 0 { succeeded.push(name.clone()) } else { failed.push(name.clone()) }
    }
    println!("[{}] {done}: {}", now(), succeeded.join(", "));
    if failed.is_empty() {
        return Ok(0);
    }
    println!("[{}] FAILED: {}", now(), failed.join(", "));
    Ok(1)
}

/// Runs the action, then [`Target::release`] whatever happened (a failed release is
/// reported and ORs bbr's cleanup bit, 16, into the exit code).
async fn run_action(ctx: &Ctx, target: &dyn Target, action: &Action, tree: &str) -> anyhow::Result<i32> {
    run_action_with(ctx, target, action, tree, None).await
}

/// [`run_action`], with the manifest to store (`--with-manifest`, BOSH deployments only).
async fn run_action_with(ctx: &Ctx, target: &dyn Target, action: &Action, tree: &str, manifest: Option<Vec<u8>>) -> anyhow::Result<i32> {
    let out = run_action_inner(ctx, target, action, tree, manifest).await;
    match target.release().await {
        Ok(()) => out,
        Err(e) => {
            let code = match out {
                Ok(code) => code,
                Err(e) => {
                    print_error(ctx, &e);
                    1
                }
            };
            print_error(ctx, &e);
            Ok(code | 16)
        }
    }
}

async fn run_action_inner(ctx: &Ctx, target: &dyn Target, action: &Action, tree: &str, manifest: Option<Vec<u8>>) -> anyhow::Result<i32> {
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
        Action::Backup { artifact_path, unsafe_lock_free, with_manifest, stores, min_stores, compression, encrypt_to, s3 } => {
            if *with_manifest && manifest.is_none() {
                bail!("--with-manifest needs a BOSH director (the deployment target); this target has no manifest");
            }
            let recipients = parse_recipients(encrypt_to)?;
            let (store, default_compression): (Box<dyn Store>, Compression) = if stores.is_empty() {
                let dir = artifact_path.clone().unwrap_or_else(|| PathBuf::from("."));
                if !dir.is_dir() {
                    bail!("artifact path {} is not a directory", dir.display());
                }
                (Box::new(LocalStore::new(&dir)), Compression::None)
            } else {
                (Box::new(open_stores(stores, *min_stores, s3)?), Compression::ZSTD)
            };
            let codec = Codec { compression: compression.unwrap_or(default_compression), recipients };
            let opts = BackupOptions { unsafe_lock_free: *unsafe_lock_free, origin: build_origin(), manifest, codec };
            let out = backup(ctx, target, store.as_ref(), &opts).await;
            if let Some(a) = &out.artifact {
                let location = match artifact_path.as_ref().filter(|_| stores.is_empty()) {
                    Some(dir) => dir.join(a).display().to_string(),
                    None if stores.is_empty() => PathBuf::from(".").join(a).display().to_string(),
                    None => format!("{a} in {}", store.describe()),
                };
                ctx.info(format!("Backup created of {name}: {location}"));
                if *unsafe_lock_free {
                    ctx.warn("This artifact was taken with --unsafe-lock-free and is marked so in lockstep.json");
                }
            }
            (out.failures, out.timings, "backup-cleanup")
        }
        Action::Restore { artifact_path, stores, artifact, identity, s3 } => {
            let identities = Identities::from_files(identity)?;
            let (store, art, accept_bbr): (Box<dyn Store>, String, bool) = match artifact_path {
                Some(path) => {
                    let (s, n) = split_artifact_path(path)?;
                    (Box::new(s), n, true)
                }
                None => (Box::new(open_stores(stores, Some(1), s3)?), artifact.clone().unwrap_or_default(), false),
            };
            let out = restore_with(ctx, target, store.as_ref(), &art, &RestoreOptions { accept_bbr, identities, drill: false }).await;
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
    Ok(finish(ctx, &failures, &timings, &format!("{tree} {cleanup_cmd}")))
}

/// Prints the timings and the errors (each line labelled when `ctx` is one of several
/// runs); returns the exit code.
fn finish(ctx: &Ctx, failures: &Failures, timings: &Timings, cleanup_cmd: &str) -> i32 {
    let mut text = String::new();
    if !timings.phases.is_empty() {
        text.push_str(&timings_table(timings));
    }
    if !failures.is_empty() {
        text.push_str(&failures.render());
        if failures.needs_cleanup() {
            text.push_str(&format!(
                "It is recommended that you run `{cleanup_cmd}` to ensure that any temp files are cleaned up and all jobs are unlocked.\n"
            ));
        }
    }
    report_block(ctx, &text);
    failures.exit_code()
}

/// Prints an error of the run `ctx` is for.
fn print_error(ctx: &Ctx, e: &anyhow::Error) {
    report_block(ctx, &format!("error: {e:#}\n"));
}

/// A run's closing text: on stderr as it is, or, for one of several deployments, as one
/// event (labelled on every line, and in that deployment's log file too).
fn report_block(ctx: &Ctx, text: &str) {
    match &ctx.label {
        None => eprint!("{text}"),
        Some(_) if text.trim().is_empty() => {}
        Some(_) => ctx.info(text.trim_end()),
    }
}

/// Concourse build variables, when running in a build, so an artifact can be traced.
pub fn build_origin() -> std::collections::BTreeMap<String, String> {
    ["BUILD_PIPELINE_NAME", "BUILD_JOB_NAME", "BUILD_NAME", "BUILD_TEAM_NAME", "ATC_EXTERNAL_URL"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}
