//! The platform Ops Manager describes, as the parts of one platform backup
//! ([`crate::target::platform`]): its installation export, its director over SSH (the
//! `bbr` user and key Ops Manager holds, the host key pinned or in known_hosts), and each
//! chosen product's deployment through the director's API (the BBR client and CA Ops
//! Manager holds). Every chosen product's deployment must be on the director before
//! anything is taken: a platform backup that cannot finish does not start.

use super::discover::{applying_changes, choose_products, deployed_products, director_access, Product};
use super::export::InstallationExport;
use super::OpsManClient;
use crate::target::bosh::{DeploymentTarget, DirectorClient};
use crate::target::platform::{Platform, PlatformParts, ProductPart};
use crate::target::{DirectorTarget, SshOptions};
use crate::transport::ssh::KeySource;
use anyhow::{bail, Context};
use async_trait::async_trait;

/// Where to reach the director when not where Ops Manager says (a forwarded port), and
/// its VM's host key.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// SSH to `HOST[:PORT]` instead of Ops Manager's address, port 22.
    pub director_ssh: Option<String>,
    /// The director's API at this URL instead of `https://<address>:25555`.
    pub director_url: Option<String>,
    /// The director VM's host key (`ssh-rsa AAAA...`); else known_hosts decides.
    pub host_public_key: Option<String>,
}

/// Ops Manager's platform, discovered.
pub struct OpsmanPlatform {
    pub export: InstallationExport,
    pub director: DirectorTarget,
    pub products: Vec<(Product, DeploymentTarget)>,
}

impl OpsmanPlatform {
    /// Asks Ops Manager for the director and the products of `kinds` (every product but
    /// the director's when empty), logs in to the director's API, and checks that it has
    /// every chosen product's deployment.
    pub async fn discover(client: OpsManClient, kinds: &[String], opts: &SshOptions, reach: &Reach) -> anyhow::Result<OpsmanPlatform> {
        let access = director_access(&client).await?;
        let chosen = choose_products(&deployed_products(&client).await?, kinds)?;
        let ssh_to = reach.director_ssh.clone().unwrap_or_else(|| access.address.clone());
        let director = DirectorTarget::with_key(
            &access.address,
            &ssh_to,
            &access.ssh_user,
            KeySource::Pem(access.ssh_key.expose().to_string()),
            reach.host_public_key.as_deref(),
            opts,
        )
        .context("the director Ops Manager names")?;
        let url = reach.director_url.clone().unwrap_or_else(|| access.address.clone());
        let bosh = DirectorClient::connect(&url, &access.client, access.client_secret.expose(), Some(access.ca_pem.as_bytes()), opts.gateway.as_ref())
            .await
            .with_context(|| format!("logging in to the director {url} as Ops Manager's BBR client {}", access.client))?;
        let on_director = bosh.deployments().await?;
        let mut products = Vec::new();
        for p in chosen {
            if !on_director.contains(&p.deployment) {
                bail!(
                    "product {} (deployment {}) is deployed according to Ops Manager, but the director {} has no such deployment \
                     (it has: {}): apply changes in Ops Manager, or leave the product out (--products)",
                    p.kind,
                    p.deployment,
                    bosh.url(),
                    if on_director.is_empty() { "none".to_string() } else { on_director.join(", ") }
                );
            }
            let target = DeploymentTarget::new(bosh.clone(), &p.deployment, opts)?;
            products.push((p, target));
        }
        Ok(OpsmanPlatform { export: InstallationExport { client }, director, products })
    }

    /// The parts, for [`crate::orchestrate::platform::backup_platform`].
    pub fn parts(&self) -> PlatformParts<'_> {
        PlatformParts {
            source: &self.export,
            export: &self.export,
            director: &self.director,
            products: self.products.iter().map(|(p, t)| ProductPart { kind: p.kind.clone(), target: t }).collect(),
        }
    }
}

#[async_trait]
impl Platform for InstallationExport {
    fn location(&self) -> String {
        self.client.url().to_string()
    }

    async fn changing(&self) -> anyhow::Result<Option<String>> {
        Ok(applying_changes(&self.client).await?.map(|i| {
            format!("Ops Manager {} is applying changes (installation {}, started by {} at {})", self.client.url(), i.id, i.user, i.started_at)
        }))
    }
}
