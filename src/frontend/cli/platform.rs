//! Platform backups on the command line: `lockstep opsman backup` (the whole platform Ops
//! Manager describes, through `orchestrate::platform`), and the platform records `list`
//! shows (each member, present and committed or not) and `verify` checks.

use super::*;
use crate::artifact::platform;
use crate::orchestrate::platform::{backup_platform, verify_platform};
use crate::target::opsman::discover::guard;
use crate::target::opsman::platform::{OpsmanPlatform, Reach};
use crate::target::opsman::OpsManClient;

/// `lockstep opsman backup`.
pub(super) async fn backup(ctx: &Ctx, client: OpsManClient, args: OpsmanBackupArgs) -> anyhow::Result<i32> {
    let kinds: Vec<String> = args.products.iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
    let kinds = match kinds.iter().any(|k| k == "all") {
        true if kinds.len() > 1 => bail!("--products: give `all` alone, or the products' types (cf,p-isolation-segment)"),
        true => Vec::new(),
        false => kinds,
    };
    let opts = args.ssh.options()?;
    let recipients = parse_recipients(&args.encrypt_to)?;
    if recipients.is_empty() {
        ctx.warn("the installation export and the director's backup hold every credential of the platform: store them encrypted (--encrypt-to)");
    }
    let store: Box<dyn Store> = match &args.artifact_path {
        Some(dir) if dir.is_dir() => Box::new(LocalStore::new(dir)),
        Some(dir) => bail!("artifact path {} is not a directory", dir.display()),
        None => Box::new(open_stores(&args.stores, None, &args.s3)?),
    };
    // Before discovery: while changes are applied the director may be half-deployed.
    guard(&client).await?;
    let reach = Reach { director_ssh: args.director_ssh.clone(), director_url: args.director_url.clone(), host_public_key: args.host_public_key.clone() };
    let platform = OpsmanPlatform::discover(client, &kinds, &opts, &reach).await?;
    for w in platform.director.warnings() {
        ctx.warn(w);
    }
    let codec = Codec { compression: args.compression.unwrap_or(Compression::ZSTD), recipients };
    let bopts = BackupOptions { origin: build_origin(), codec, max_lock_window: args.max_lock_window, ..Default::default() };
    let out = backup_platform(ctx, &platform.parts(), store.as_ref(), &bopts).await;
    match out.record {
        Some(r) if out.failures.is_empty() => {
            ctx.info(format!("Platform backup {r} in {}: {}", store.describe(), out.members.iter().map(|m| m.artifact.as_str()).collect::<Vec<_>>().join(", ")));
            Ok(0)
        }
        _ => {
            let mut text = out.failures.render();
            text.push_str("No platform record was written: this platform backup is incomplete.\n");
            if let Some(line) = out.ordinary_members() {
                text.push_str(&format!("{line}\n"));
            }
            if out.failures.needs_cleanup() {
                text.push_str("A lock, unlock or cleanup failed: run `lockstep director ... backup-cleanup` or `lockstep deployment ... backup-cleanup` for the member named above.\n");
            }
            eprint!("{text}");
            Ok(out.failures.exit_code().max(1))
        }
    }
}

/// Prints the platform records of `store` after `list`'s table: each record, then each
/// member and what became of it. An incomplete record is also an error line on stderr,
/// and makes the exit code 1.
pub(super) async fn print_records(store: &dyn Store) -> anyhow::Result<i32> {
    let names = platform::list(store).await?;
    let mut code = 0;
    for (i, name) in names.iter().enumerate() {
        if i == 0 {
            println!();
            println!("PLATFORM BACKUPS");
        }
        let record = match platform::read(store, name).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: platform record {name} cannot be read: {e:#}");
                code = 1;
                continue;
            }
        };
        let states = platform::member_states(store, &record).await?;
        let bad = states.iter().filter(|(_, s)| !s.is_committed()).count();
        let status = if bad == 0 { "complete".to_string() } else { format!("INCOMPLETE ({bad} of {} members)", states.len()) };
        println!("{name}  {}  {}  {status}", record.finished_at, record.source);
        let rows: Vec<[String; 3]> = states
            .iter()
            .map(|(m, s)| {
                let role = match &m.product {
                    Some(p) => format!("{} {p}", m.role),
                    None => m.role.clone(),
                };
                [role, m.artifact.clone(), s.to_string()]
            })
            .collect();
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
        for [role, artifact, state] in rows {
            println!("  {role:<w0$}  {artifact:<w1$}  {state}");
        }
        if bad > 0 {
            let which: Vec<String> = states.iter().filter(|(_, s)| !s.is_committed()).map(|(m, s)| format!("{} {s}", m.artifact)).collect();
            eprintln!("error: platform backup {name} is incomplete: {}", which.join(", "));
            code = 1;
        }
    }
    Ok(code)
}

/// `verify platform_<time>`: every member verified; an error names each one missing or
/// damaged.
pub(super) async fn verify(ctx: &Ctx, store: &dyn Store, name: &str, ids: &Identities) -> i32 {
    match verify_platform(ctx, store, name, ids).await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
