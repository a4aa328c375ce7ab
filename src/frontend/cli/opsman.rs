//! `lockstep opsman discover|export`: Ops Manager's view of the platform, and its
//! installation export backed up as an artifact. Credentials come from `om`'s flags or
//! variables and are never printed.

use super::*;
use crate::orchestrate::export::backup_export;
use crate::target::opsman::discover::{applying_changes, deployed_products, director_access, guard};
use crate::target::opsman::export::InstallationExport;
use crate::target::opsman::{OpsManAuth, OpsManClient, OpsManConfig};
use crate::transport::ssh::Secret;

fn config(args: &OpsmanArgs) -> anyhow::Result<OpsManConfig> {
    let target = args.target.clone().filter(|t| !t.trim().is_empty()).ok_or_else(|| anyhow::anyhow!("--target (OM_TARGET) is required: Ops Manager's URL"))?;
    let auth = match (&args.client_id, &args.username) {
        (Some(id), _) => OpsManAuth::Client {
            id: id.clone(),
            secret: Secret::new(args.client_secret.as_ref().map(|s| s.0.clone()).ok_or_else(|| anyhow::anyhow!("--client-id needs --client-secret (OM_CLIENT_SECRET)"))?),
        },
        (None, Some(user)) => OpsManAuth::User {
            username: user.clone(),
            password: Secret::new(args.password.as_ref().map(|s| s.0.clone()).ok_or_else(|| anyhow::anyhow!("--username needs --password (OM_PASSWORD)"))?),
        },
        (None, None) => bail!("give Ops Manager credentials: --username/--password (OM_USERNAME/OM_PASSWORD) or --client-id/--client-secret (OM_CLIENT_ID/OM_CLIENT_SECRET)"),
    };
    let ca_pem = args.ca_cert.as_deref().map(crate::target::bosh::read_ca_cert).transpose()?;
    let opts = crate::target::SshOptions::from_env();
    // Ops Manager is reached as the instances are: through --gateway, else BOSH_ALL_PROXY.
    let gateway = match &args.action {
        OpsmanAction::Discover { gateway } | OpsmanAction::Export { gateway, .. } | OpsmanAction::Import { gateway, .. } => gateway,
        OpsmanAction::Backup(b) => &b.ssh.gateway,
    };
    let proxy = crate::target::resolve_gateway(&gateway.flags(), &opts)?;
    Ok(OpsManConfig { target, auth, ca_pem, skip_ssl_validation: args.skip_ssl_validation, proxy, request_timeout: args.request_timeout })
}

pub(super) async fn run(ctx: &Ctx, args: OpsmanArgs) -> anyhow::Result<i32> {
    if matches!(args.action, OpsmanAction::Import { .. }) {
        return super::opsman_import::run(ctx, args).await;
    }
    let cfg = config(&args)?;
    if cfg.skip_ssl_validation {
        ctx.warn("--skip-ssl-validation: Ops Manager's certificate is not checked; a machine in the middle could take the credentials");
    }
    let client = OpsManClient::connect(&cfg).await?;
    match args.action {
        OpsmanAction::Discover { .. } => {
            let d = director_access(&client).await?;
            println!("director: {} (BBR client {}, SSH user {})", d.address, d.client, d.ssh_user);
            for p in deployed_products(&client).await? {
                println!("product: {} deployment {}", p.kind, p.deployment);
            }
            match applying_changes(&client).await? {
                Some(i) => println!("applying changes: installation {} started by {} at {}", i.id, i.user, i.started_at),
                None => println!("applying changes: no"),
            }
            Ok(0)
        }
        OpsmanAction::Import { .. } => unreachable!("handled above: an import needs no login"),
        OpsmanAction::Export { stores, artifact_path, compression, encrypt_to, s3, .. } => {
            guard(&client).await?;
            let recipients = parse_recipients(&encrypt_to)?;
            if recipients.is_empty() {
                ctx.warn("the installation export holds the key to every credential of the platform: store it encrypted (--encrypt-to)");
            }
            let store: Box<dyn Store> = match &artifact_path {
                Some(dir) if dir.is_dir() => Box::new(LocalStore::new(dir)),
                Some(dir) => bail!("artifact path {} is not a directory", dir.display()),
                None => Box::new(open_stores(&stores, None, &s3)?),
            };
            let codec = Codec { compression: compression.unwrap_or(Compression::ZSTD), recipients };
            let opts = BackupOptions { origin: build_origin(), codec, ..Default::default() };
            let source = InstallationExport { client };
            let out = backup_export(ctx, &source, store.as_ref(), &opts).await;
            // A guard again: changes applied while the export ran make it suspect.
            if let Ok(Some(i)) = applying_changes(&source.client).await {
                ctx.warn(format!("Ops Manager started applying changes (installation {}, by {}) while the export ran: take it again once they finish", i.id, i.user));
            }
            match out.artifact {
                Some(a) if out.failures.is_empty() => {
                    ctx.info(format!("Ops Manager installation exported: {a} in {}", store.describe()));
                    Ok(0)
                }
                _ => {
                    eprint!("{}", out.failures.render());
                    Ok(1)
                }
            }
        }
        OpsmanAction::Backup(b) => super::platform::backup(ctx, client, b).await,
    }
}
