//! Every flag and argument of the `lockstep` command, as clap definitions: the targets of
//! bbr's tree and their actions, the SSH and S3 flags they share, and the arguments of
//! lockstep's own commands.

use super::parse_duration;
use crate::store::codec::Compression;
use clap::{Args, Subcommand};
use std::path::PathBuf;

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
    /// Print the target's deployment name and instances (id and address) as one JSON
    /// line: what a smoke check may know, nothing secret.
    Describe,
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
    #[arg(long, default_value = "local", global = true)]
    pub name: String,
    /// An instance: GROUP/INDEX=DIR, where DIR stands in for the instance's `/`. Repeat.
    /// Required.
    #[arg(long = "instance", value_name = "GROUP/INDEX=DIR", global = true)]
    pub instances: Vec<String>,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Args, Debug)]
pub struct DirectorArgs {
    /// BOSH Director hostname, with an optional port (default 22). Required.
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// SSH user; needs passwordless sudo. Required.
    #[arg(short = 'u', long, global = true)]
    pub username: Option<String>,
    /// Path to the SSH private key. Required.
    #[arg(long = "private-key-path", visible_alias = "key", global = true)]
    pub private_key_path: Option<PathBuf>,
    /// Pin the director's host key ('ssh-ed25519 AAAA...') instead of using known_hosts.
    #[arg(long, value_name = "LINE", global = true)]
    pub host_public_key: Option<String>,
    #[command(flatten)]
    pub ssh: SshFlags,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Args, Debug)]
pub struct HostsArgs {
    /// The inventory YAML: `name:` (the deployment name) and `instances:` (group, index,
    /// address, username, private_key_path or private_key, host_public_key or known_hosts_path;
    /// docs/configuration.md). Required.
    #[arg(long, value_name = "FILE", global = true)]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub ssh: SshFlags,
    #[command(subcommand)]
    pub action: Action,
}

/// How instances are reached over SSH (shared by `director` and `hosts`).
#[derive(Args, Debug, Clone)]
pub struct SshFlags {
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, global = true, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,
    /// Do not check host keys at all (a machine in the middle could take the backups).
    #[arg(long, global = true)]
    pub insecure_skip_host_key_check: bool,
    /// Connect timeout: TCP, SSH handshake and authentication.
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub connect_timeout: std::time::Duration,
    /// Send an SSH keepalive this often; three unanswered in a row close the connection
    /// (a command on it fails, an owed unlock is tried again on a new one).
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_keepalive)]
    pub keepalive: std::time::Duration,
    /// Stop and fail a BBR script that runs longer (default 24h), and when given any other
    /// remote command (a transfer) too (transfers have no default limit).
    #[arg(long, global = true, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub script_timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// An SSH jump host between lockstep and what it reaches (instances, a director's or Ops
/// Manager's API).
#[derive(Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// Go through this SSH jump host (else BOSH_ALL_PROXY, if set).
    #[arg(long, global = true, value_name = "USER@HOST[:PORT]")]
    pub gateway: Option<String>,
    /// The jump host's private key.
    #[arg(long, global = true, value_name = "PATH")]
    pub gateway_private_key_path: Option<PathBuf>,
    /// Pin the jump host's host key.
    #[arg(long, global = true, value_name = "LINE")]
    pub gateway_host_public_key: Option<String>,
}

impl GatewayArgs {
    /// The flags, with BOSH_ALL_PROXY for when no jump host is given.
    pub(super) fn flags(&self) -> crate::target::GatewayFlags {
        crate::target::GatewayFlags {
            gateway: self.gateway.clone(),
            private_key_path: self.gateway_private_key_path.clone(),
            host_public_key: self.gateway_host_public_key.clone(),
            bosh_all_proxy: std::env::var("BOSH_ALL_PROXY").ok(),
        }
    }
}

fn parse_keepalive(s: &str) -> anyhow::Result<std::time::Duration> {
    let d = crate::config::parse_duration(s)?;
    crate::target::check_keepalive(d)?;
    Ok(d)
}

impl SshFlags {
    pub(super) fn options(&self) -> anyhow::Result<crate::target::SshOptions> {
        let mut opts = crate::target::SshOptions::from_env();
        opts.known_hosts_path = self.known_hosts.clone();
        opts.insecure_skip_host_key_check = self.insecure_skip_host_key_check;
        opts.connect_timeout = self.connect_timeout;
        opts.keepalive_interval = self.keepalive;
        opts.script_timeout = self.script_timeout;
        opts.gateway = crate::target::resolve_gateway(&self.gateway.flags(), &opts)?;
        Ok(opts)
    }
}

#[derive(Args, Debug)]
pub struct DeploymentArgs {
    /// Director URL. Required.
    #[arg(short = 't', long, env = "BOSH_ENVIRONMENT", global = true)]
    pub target: Option<String>,
    /// UAA client, or basic-auth user. Required.
    #[arg(short = 'u', long, env = "BOSH_CLIENT", global = true)]
    pub username: Option<String>,
    /// Its secret (better from BOSH_CLIENT_SECRET: a flag shows in process listings).
    /// Required.
    #[arg(short = 'p', long, env = "BOSH_CLIENT_SECRET", hide_env_values = true, global = true)]
    pub password: Option<Secret>,
    /// Deployment name.
    #[arg(short = 'd', long, env = "BOSH_DEPLOYMENT", conflicts_with = "all_deployments", global = true)]
    pub deployment: Option<String>,
    /// Director CA certificate: a path, or PEM content (then BOSH_CA_CERT is read too;
    /// CA_CERT wins).
    #[arg(long = "ca-cert", env = "CA_CERT", allow_hyphen_values = true, global = true)]
    pub ca_cert: Option<String>,
    /// Every deployment (pre-backup-check, backup and backup-cleanup only).
    #[arg(long, global = true)]
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
        /// The longest the platform may stay locked (lock, backup scripts): past it the
        /// scripts are stopped, everything is unlocked and the backup fails (default 4h).
        #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
        max_lock_window: Option<std::time::Duration>,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Restore from an artifact directory or a store, verifying every checksum as it streams
    /// (no lock or restore script runs until every artifact arrived intact).
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
    /// S3 secret access key for s3:// stores. On the command line it shows in process
    /// listings: prefer AWS_SECRET_ACCESS_KEY or --s3-secret-access-key-file.
    #[arg(long, value_name = "SECRET", env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// Read the S3 secret access key from this file (one line; wins over the flag and
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "PATH")]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// S3 session token (temporary credentials).
    #[arg(long, value_name = "TOKEN", env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub s3_session_token: Option<Secret>,
}


impl S3Flags {
    /// The secret access key: from `--s3-secret-access-key-file`, else the flag or
    /// `AWS_SECRET_ACCESS_KEY`. The file's content is never shown, only its path.
    pub fn secret_access_key(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.s3_secret_access_key_file else {
            return Ok(self.s3_secret_access_key.clone().map(|s| s.0));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--s3-secret-access-key-file {}: {e}", path.display()))?;
        let secret = text.trim();
        if secret.is_empty() || secret.contains(char::is_whitespace) {
            anyhow::bail!("--s3-secret-access-key-file {}: expected the secret access key alone on one line", path.display());
        }
        Ok(Some(secret.to_string()))
    }
}

/// Warnings for secrets given as command-line arguments, which any user on the machine can
/// read in `ps` (and which stay in shell history).
pub fn secret_argument_warnings<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Vec<String> {
    const SECRET_FLAGS: [(&str, &str); 2] = [
        ("--s3-secret-access-key", "set AWS_SECRET_ACCESS_KEY or use --s3-secret-access-key-file"),
        ("--s3-session-token", "set AWS_SESSION_TOKEN"),
    ];
    let args: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    SECRET_FLAGS
        .iter()
        .filter(|(flag, _)| args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))))
        .map(|(flag, instead)| format!("warning: {flag} on the command line shows in process listings and shell history: {instead}"))
        .collect()
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Directory holding artifacts.
    #[arg(short = 'a', long = "artifact-path", default_value = ".", conflicts_with = "store")]
    pub artifact_path: PathBuf,
    /// A store URL instead: s3://BUCKET/PREFIX?... or file:///PATH.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub s3: S3Flags,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The artifact's name (`<deployment>_<timestamp>`), with --store.
    #[arg(value_name = "ARTIFACT", required_unless_present = "artifact_path")]
    pub artifact: Option<String>,
    /// The artifact directory (`<deployment>_<timestamp>`) instead of a store.
    #[arg(short = 'a', long = "artifact-path", conflicts_with_all = ["store", "artifact"])]
    pub artifact_path: Option<PathBuf>,
    /// The store holding the artifact: s3://BUCKET/PREFIX?... or file:///PATH.
    #[arg(long, value_name = "URL", requires = "artifact")]
    pub store: Option<String>,
    /// age identity file (AGE-SECRET-KEY-1...) for an encrypted artifact. Repeat.
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    #[command(flatten)]
    pub s3: S3Flags,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The artifact's name (`<deployment>_<timestamp>`).
    #[arg(value_name = "ARTIFACT")]
    pub artifact: String,
    /// The store holding it: s3://BUCKET/PREFIX?... or file:///PATH.
    #[arg(long, value_name = "URL")]
    pub store: String,
    /// Directory in which to create the artifact directory.
    #[arg(short = 'a', long = "artifact-path", value_name = "DIR")]
    pub artifact_path: PathBuf,
    /// age identity file for an encrypted artifact. Repeat.
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    #[command(flatten)]
    pub s3: S3Flags,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The store to prune (repeat to prune several, each on its own).
    #[arg(long = "store", value_name = "URL", required_unless_present = "artifact_path")]
    pub stores: Vec<String>,
    /// A local directory of artifacts instead.
    #[arg(short = 'a', long = "artifact-path", conflicts_with = "stores")]
    pub artifact_path: Option<PathBuf>,
    /// Only this deployment's artifacts.
    #[arg(long, short = 'd')]
    pub deployment: Option<String>,
    /// Keep the N newest artifacts.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest artifact of each of the N most recent days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// Keep the newest artifact of each of the N most recent ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// Keep the newest artifact of each of the N most recent months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// Keep everything newer than this (e.g. 14d, 2w).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Never delete anything younger than this.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub min_age: std::time::Duration,
    /// Sweep uncommitted leftovers (interrupted backups) older than this.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// Print the plan; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub s3: S3Flags,
}

#[derive(Args, Debug)]
pub struct ValidatePipelineArgs {
    /// The pipeline YAML.
    pub file: PathBuf,
    /// The vars file (`fly -l`): every ((var)) must be defined in it.
    #[arg(long, short = 'l', value_name = "FILE")]
    pub vars: Option<PathBuf>,
    /// Where task files live (default: the directory above the pipeline's).
    #[arg(long, value_name = "DIR")]
    pub repo_root: Option<PathBuf>,
    /// Fail on warnings too, as `fly validate-pipeline --strict` does (top-level keys
    /// that are no pipeline field, such as YAML anchor keys, are warnings).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to create the demo (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `lockstep opsman backup`: what to back up of the platform, where, and how the director
/// is reached.
#[derive(Args, Debug, Clone)]
pub struct OpsmanBackupArgs {
    /// The products to back up, by type (cf,p-isolation-segment), or `all`: every product
    /// Ops Manager deployed but the director.
    #[arg(long, value_name = "TYPE,...|all", value_delimiter = ',', default_value = "all")]
    pub products: Vec<String>,
    /// Store the artifacts here: s3://BUCKET/PREFIX?... or file:///PATH. Repeat for replicas.
    #[arg(long = "store", value_name = "URL", required_unless_present = "artifact_path")]
    pub stores: Vec<String>,
    /// A directory instead of a store.
    #[arg(short = 'a', long = "artifact-path", conflicts_with = "stores")]
    pub artifact_path: Option<PathBuf>,
    /// zstd (default), zstd:LEVEL, gzip, gzip:LEVEL or none.
    #[arg(long, value_name = "CODEC")]
    pub compression: Option<Compression>,
    /// Encrypt with age to this recipient (age1...) or every recipient in this file.
    /// The export and the director's backup hold every credential of the platform.
    #[arg(long = "encrypt-to", value_name = "RECIPIENT|FILE")]
    pub encrypt_to: Vec<String>,
    /// The director VM's SSH host key ('ssh-rsa AAAA...'); else --known-hosts decides.
    #[arg(long, value_name = "LINE")]
    pub host_public_key: Option<String>,
    /// SSH to the director here instead of the address Ops Manager gives, port 22 (a
    /// forwarded port).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub director_ssh: Option<String>,
    /// The director's API here instead of https://ADDRESS:25555.
    #[arg(long, value_name = "URL")]
    pub director_url: Option<String>,
    /// The longest each deployment may stay locked (default 4h).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub max_lock_window: Option<std::time::Duration>,
    #[command(flatten)]
    pub ssh: SshFlags,
    #[command(flatten)]
    pub s3: S3Flags,
}

/// Ops Manager: where it is and how to log in, as `om` names them.
#[derive(Args, Debug)]
pub struct OpsmanArgs {
    /// Ops Manager's URL (https is assumed).
    #[arg(long, short = 't', env = "OM_TARGET", global = true)]
    pub target: Option<String>,
    /// A UAA user of Ops Manager (with --password).
    #[arg(long, short = 'u', env = "OM_USERNAME", global = true)]
    pub username: Option<String>,
    /// The user's password. On the command line it shows in process listings: prefer OM_PASSWORD.
    #[arg(long, short = 'p', env = "OM_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<Secret>,
    /// A UAA client of Ops Manager instead of a user (with --client-secret).
    #[arg(long, short = 'c', env = "OM_CLIENT_ID", global = true)]
    pub client_id: Option<String>,
    /// The client's secret; prefer OM_CLIENT_SECRET.
    #[arg(long, short = 's', env = "OM_CLIENT_SECRET", hide_env_values = true, global = true)]
    pub client_secret: Option<Secret>,
    /// The CA that signed Ops Manager's certificate: a path, or the PEM itself.
    #[arg(long, value_name = "PATH|PEM", global = true, allow_hyphen_values = true)]
    pub ca_cert: Option<String>,
    /// Accept any certificate (a machine in the middle could take the credentials).
    #[arg(long, short = 'k', env = "OM_SKIP_SSL_VALIDATION", global = true)]
    pub skip_ssl_validation: bool,
    /// The longest one request may take; the installation export is one request.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::config::parse_duration, global = true)]
    pub request_timeout: std::time::Duration,
    #[command(subcommand)]
    pub action: OpsmanAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum OpsmanAction {
    /// Print what Ops Manager knows of the platform (the director's address and BBR
    /// client, the products and their deployments, whether changes are being applied).
    /// Prints no secret.
    Discover {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Back up the whole platform as one: the installation export, the director (over
    /// SSH as the bbr user, with the key Ops Manager holds) and each chosen product's
    /// deployment (through the director's API with Ops Manager's BBR client), each an
    /// artifact of its own, then a platform record (platform_<time>) committed last. Refused
    /// while changes are being applied; no record when any member fails.
    Backup(OpsmanBackupArgs),
    /// Back up Ops Manager's installation (its settings export, installation.zip) into a
    /// store as the artifact opsman_<time>: streamed, compressed and encrypted as every
    /// artifact, never staged on disk. Refused while changes are being applied.
    Export {
        /// Store the artifact here: s3://BUCKET/PREFIX?... or file:///PATH. Repeat for replicas.
        #[arg(long = "store", value_name = "URL", required_unless_present = "artifact_path")]
        stores: Vec<String>,
        /// A directory instead of a store.
        #[arg(short = 'a', long = "artifact-path", conflicts_with = "stores")]
        artifact_path: Option<PathBuf>,
        /// zstd (default), zstd:LEVEL, gzip, gzip:LEVEL or none.
        #[arg(long, value_name = "CODEC")]
        compression: Option<Compression>,
        /// Encrypt with age to this recipient (age1...) or every recipient in this file.
        /// The export holds the key to every credential of the platform: encrypt it.
        #[arg(long = "encrypt-to", value_name = "RECIPIENT|FILE")]
        encrypt_to: Vec<String>,
        #[command(flatten)]
        s3: S3Flags,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Import a stored installation export (opsman_<time>) into a fresh, unconfigured Ops
    /// Manager, as `om import-installation` does: streamed from the store, its checksums
    /// verified on the way (a damaged export is cut off before its end), then waits until
    /// Ops Manager is ready. Refused when Ops Manager is configured already. Needs no login.
    Import {
        /// The export artifact's name (opsman_<time>), as `lockstep list` shows it.
        #[arg(long, value_name = "NAME")]
        artifact: String,
        /// The store holding it: s3://BUCKET/PREFIX?... or file:///PATH. Repeat: the first
        /// that has each file serves it.
        #[arg(long = "store", value_name = "URL", required_unless_present = "artifact_path")]
        stores: Vec<String>,
        /// A directory of artifacts instead of a store.
        #[arg(short = 'a', long = "artifact-path", conflicts_with = "stores")]
        artifact_path: Option<PathBuf>,
        /// age identity file (AGE-SECRET-KEY-1...) for an encrypted artifact. Repeat.
        #[arg(long = "identity", short = 'i', value_name = "FILE")]
        identity: Vec<PathBuf>,
        /// The decryption passphrase of the Ops Manager that was exported; prefer
        /// OM_DECRYPTION_PASSPHRASE.
        #[arg(long, short = 'd', env = "OM_DECRYPTION_PASSPHRASE", hide_env_values = true)]
        decryption_passphrase: Option<Secret>,
        /// How often to ask whether Ops Manager has finished the import (om's default).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::config::parse_duration)]
        polling_interval: std::time::Duration,
        #[command(flatten)]
        s3: S3Flags,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}
