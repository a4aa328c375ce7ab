//! `lockstep opsman import`: a stored installation export imported into a fresh Ops Manager
//! (`orchestrate::import`, `target::opsman::import`). Unauthenticated, as `om
//! import-installation`: a fresh Ops Manager has no users yet. The decryption passphrase is
//! never printed.

use super::*;
use crate::orchestrate::import::import_export;
use crate::target::opsman::http_client;
use crate::target::opsman::import::InstallationImport;
use crate::transport::ssh::Secret;

pub(super) async fn run(ctx: &Ctx, args: OpsmanArgs) -> anyhow::Result<i32> {
    let OpsmanAction::Import { artifact, stores, artifact_path, identity, decryption_passphrase, polling_interval, s3, gateway } = args.action else {
        bail!("not an import");
    };
    let target = args.target.filter(|t| !t.trim().is_empty()).ok_or_else(|| anyhow::anyhow!("--target (OM_TARGET) is required: the fresh Ops Manager's URL"))?;
    let passphrase = decryption_passphrase.map(|s| s.0).filter(|p| !p.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("--decryption-passphrase (OM_DECRYPTION_PASSPHRASE) is required: the passphrase of the Ops Manager that was exported")
    })?;
    if args.skip_ssl_validation {
        ctx.warn("--skip-ssl-validation: Ops Manager's certificate is not checked; a machine in the middle could take the installation and its passphrase");
    }
    let ids = Identities::from_files(&identity)?;
    let store: Box<dyn Store> = match &artifact_path {
        Some(dir) if dir.is_dir() => Box::new(LocalStore::new(dir)),
        Some(dir) => bail!("artifact path {} is not a directory", dir.display()),
        None => Box::new(open_stores(&stores, Some(1), &s3)?),
    };
    let ca_pem = args.ca_cert.as_deref().map(crate::target::bosh::read_ca_cert).transpose()?;
    let opts = crate::target::SshOptions::from_env();
    let proxy = crate::target::resolve_gateway(&gateway.flags(), &opts)?;
    let http = http_client(ca_pem.as_deref(), args.skip_ssl_validation, proxy.as_ref(), args.request_timeout).await?;
    let dest = InstallationImport::new(&target, http, Secret::new(passphrase), polling_interval, args.request_timeout)?;
    match import_export(ctx, store.as_ref(), &artifact, &ids, &dest).await {
        Ok(_) => Ok(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(1)
        }
    }
}
