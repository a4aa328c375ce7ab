//! bbr's command tree: a target (`local`, `director`, `hosts`, `deployment`) and an action
//! (`pre-backup-check`, `backup`, `restore`, `backup-cleanup`, `restore-cleanup`), run with
//! bbr's messages and exit-code bits, plus `--all-deployments` as bbr runs it.

use super::*;

/// What a result line names: bbr says "Director can be backed up." in director mode and
/// "Deployment 'NAME' can be backed up." otherwise.
#[derive(Clone, Copy)]
enum Subject {
    Deployment,
    Director,
}

/// A flag clap cannot require (it is global, so it may come after the action): bbr's
/// message when it is missing or empty.
fn required<'a, T: AsRef<std::ffi::OsStr>>(v: &'a Option<T>, flag: &str) -> anyhow::Result<&'a T> {
    match v {
        Some(x) if !x.as_ref().to_string_lossy().trim().is_empty() => Ok(x),
        _ => bail!("{flag} flag is required."),
    }
}

pub(super) async fn local(ctx: &Ctx, args: LocalArgs) -> anyhow::Result<i32> {
    let instances = args.instances.iter().map(|s| LocalTarget::parse_instance(s)).collect::<anyhow::Result<Vec<_>>>()?;
    if instances.is_empty() {
        bail!("--instance flag is required: give each instance as --instance GROUP/INDEX=DIR");
    }
    let target = LocalTarget::new(args.name.clone(), instances);
    let tree = command_line::local(&args);
    run_action(ctx, &target, &args.action, &tree, Subject::Deployment).await
}

pub(super) async fn director(ctx: &Ctx, args: DirectorArgs) -> anyhow::Result<i32> {
    let host = required(&args.host, "--host")?;
    let username = required(&args.username, "--username")?;
    let key = required(&args.private_key_path, "--private-key-path")?;
    let opts = args.ssh.options()?;
    let target = crate::target::DirectorTarget::new(host, username, key, args.host_public_key.as_deref(), &opts)?;
    for w in target.warnings() {
        ctx.warn(w);
    }
    let tree = command_line::director(&args);
    run_action(ctx, &target, &args.action, &tree, Subject::Director).await
}

pub(super) async fn hosts(ctx: &Ctx, args: HostsArgs) -> anyhow::Result<i32> {
    let inventory = required(&args.inventory, "--inventory")?;
    let opts = args.ssh.options()?;
    let target = crate::target::HostsTarget::from_file(inventory, &opts)?;
    for w in target.warnings() {
        ctx.warn(w);
    }
    let tree = command_line::hosts(&args);
    run_action(ctx, &target, &args.action, &tree, Subject::Deployment).await
}

pub(super) async fn deployment(ctx: &Ctx, args: DeploymentArgs) -> anyhow::Result<i32> {
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
    let director = required(&args.target, "--target")?;
    let username = required(&args.username, "--username")?;
    let password = match &args.password {
        Some(p) if !p.0.trim().is_empty() => p.0.as_str(),
        _ => bail!("--password flag is required."),
    };
    // CA_CERT (clap's env for --ca-cert) wins over BOSH_CA_CERT.
    let ca = args.ca_cert.clone().or_else(|| std::env::var("BOSH_CA_CERT").ok()).filter(|s| !s.trim().is_empty());
    let ca = ca.as_deref().map(crate::target::bosh::read_ca_cert).transpose()?;
    let mut opts = crate::target::SshOptions::from_env();
    let flags = crate::target::GatewayFlags { bosh_all_proxy: std::env::var("BOSH_ALL_PROXY").ok(), ..Default::default() };
    opts.gateway = crate::target::resolve_gateway(&flags, &opts)?;
    // BOSH_ALL_PROXY carries the director's API calls too, as bosh-cli's.
    let client =
        crate::target::bosh::DirectorClient::connect(director, username, password, ca.as_deref(), opts.gateway.as_ref()).await?;
    let Some(deployment) = args.deployment.clone() else {
        return run_all_deployments(ctx, &client, &opts, &args).await;
    };
    let target = crate::target::bosh::DeploymentTarget::new(client, &deployment, &opts)?;
    let tree = command_line::deployment(&args, &deployment);
    run_deployment(ctx, &target, &args.action, &tree).await
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
    run_action_with(ctx, target, action, tree, manifest, Subject::Deployment).await
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
    let log_dir = match &args.action {
        Action::Backup { artifact_path: Some(dir), .. } => dir.clone(),
        _ => PathBuf::from("."),
    };
    let (now, log_dir) = (&now, &log_dir);
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
            Ok(target) => run_deployment(&one, &target, &args.action, &command_line::deployment(args, name)).await,
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
async fn run_action(ctx: &Ctx, target: &dyn Target, action: &Action, tree: &str, subject: Subject) -> anyhow::Result<i32> {
    run_action_with(ctx, target, action, tree, None, subject).await
}

/// [`run_action`], with the manifest to store (`--with-manifest`, BOSH deployments only).
async fn run_action_with(
    ctx: &Ctx,
    target: &dyn Target,
    action: &Action,
    tree: &str,
    manifest: Option<Vec<u8>>,
    subject: Subject,
) -> anyhow::Result<i32> {
    let out = run_action_inner(ctx, target, action, tree, manifest, subject).await;
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

async fn run_action_inner(
    ctx: &Ctx,
    target: &dyn Target,
    action: &Action,
    tree: &str,
    manifest: Option<Vec<u8>>,
    subject: Subject,
) -> anyhow::Result<i32> {
    let name = target.deployment_name().to_string();
    let (failures, timings, cleanup_cmd) = match action {
        Action::PreBackupCheck => {
            let (failures, timings) = pre_backup_check(ctx, target).await;
            let who = match subject {
                Subject::Director => "Director".to_string(),
                Subject::Deployment => format!("Deployment '{name}'"),
            };
            ctx.info(format!("{who} {} backed up.", if failures.is_empty() { "can be" } else { "cannot be" }));
            (failures, timings, "backup-cleanup")
        }
        Action::Backup { artifact_path, unsafe_lock_free, with_manifest, stores, min_stores, compression, encrypt_to, max_lock_window, s3 } => {
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
            let opts = BackupOptions { unsafe_lock_free: *unsafe_lock_free, origin: build_origin(), manifest, codec, max_lock_window: *max_lock_window };
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

