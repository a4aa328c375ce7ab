//! What Ops Manager knows that a platform backup needs, read from its API:
//!
//! - the director ([`director_access`]): its address (the `p-bosh` product's first static
//!   IP), the BBR client for its API (`uaa_bbr_client_credentials`; on an Ops Manager
//!   without it, the director manifest's `ops_manager` client, as the pipeline tasks fall
//!   back to), the CA that signed its certificate, and the `bbr` user's SSH key;
//! - the products ([`deployed_products`]): each deployed product's type and its BOSH
//!   deployment's name (the product's guid, `cf-<hex>`);
//! - whether changes are being applied ([`applying_changes`]).
//!
//! Secrets are held as [`Secret`]s: never printed, never stored unencrypted.

use super::OpsManClient;
use crate::transport::ssh::Secret;
use anyhow::{anyhow, bail};
use serde_json::Value;

/// How to reach the director, as Ops Manager deployed it.
pub struct DirectorAccess {
    /// Its IP (the `p-bosh` product's first static IP).
    pub address: String,
    /// The UAA client for the director's API, and its secret.
    pub client: String,
    pub client_secret: Secret,
    /// The CAs Ops Manager signs with (every active one: during a rotation, two).
    pub ca_pem: String,
    /// The `bbr` user's SSH private key on the director VM.
    pub ssh_user: String,
    pub ssh_key: Secret,
}

/// One deployed product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// `cf`, `p-isolation-segment`, `p-bosh`, ...
    pub kind: String,
    /// Its BOSH deployment (Ops Manager's guid for it, `cf-0123abcd...`).
    pub deployment: String,
}

/// An apply-changes in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub id: u64,
    pub user: String,
    pub started_at: String,
}

/// Every deployed product, the director's (`p-bosh`) included.
pub async fn deployed_products(c: &OpsManClient) -> anyhow::Result<Vec<Product>> {
    let v = c.get_json("/api/v0/deployed/products").await?.ok_or_else(|| anyhow!("Ops Manager has no /api/v0/deployed/products"))?;
    let list = v.as_array().ok_or_else(|| anyhow!("Ops Manager GET /api/v0/deployed/products: not a list"))?;
    list.iter()
        .map(|p| {
            let field = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(Product {
                kind: field("type").ok_or_else(|| anyhow!("a deployed product without a type: {p}"))?,
                deployment: field("guid").or_else(|| field("installation_name")).ok_or_else(|| anyhow!("a deployed product without a guid: {p}"))?,
            })
        })
        .collect()
}

/// The deployments of the products named (by type), in the order named; all but the
/// director's when `kinds` is empty. A product named but not deployed is an error naming
/// what is deployed.
pub fn choose_products(products: &[Product], kinds: &[String]) -> anyhow::Result<Vec<Product>> {
    if kinds.is_empty() {
        return Ok(products.iter().filter(|p| p.kind != "p-bosh").cloned().collect());
    }
    let mut out = Vec::new();
    for k in kinds {
        match products.iter().find(|p| &p.kind == k) {
            Some(p) => out.push(p.clone()),
            None => bail!(
                "product {k:?} is not deployed by this Ops Manager; deployed: {}",
                products.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(out)
}

/// The director's address, BBR client, CA and SSH key.
pub async fn director_access(c: &OpsManClient) -> anyhow::Result<DirectorAccess> {
    let products = deployed_products(c).await?;
    let bosh = products.iter().find(|p| p.kind == "p-bosh").ok_or_else(|| anyhow!("Ops Manager lists no deployed director (p-bosh): apply changes first"))?;
    let ips_path = format!("/api/v0/deployed/products/{}/static_ips", bosh.deployment);
    let ips = c.get_json(&ips_path).await?.unwrap_or(Value::Null);
    let address = ips
        .as_array()
        .and_then(|a| a.iter().find_map(|e| e.get("ips")?.as_array()?.first()?.as_str()))
        .ok_or_else(|| anyhow!("Ops Manager GET {ips_path}: no static IP for the director"))?
        .to_string();

    let (client, client_secret, ca_pem) = match c.get_json("/api/v0/deployed/director/credentials/uaa_bbr_client_credentials").await? {
        Some(v) => {
            let value = &v["credential"]["value"];
            let identity = value["identity"].as_str().ok_or_else(|| anyhow!("uaa_bbr_client_credentials has no identity"))?;
            let password = value["password"].as_str().ok_or_else(|| anyhow!("uaa_bbr_client_credentials has no password"))?;
            (identity.to_string(), Secret::new(password), certificate_authorities(c).await?)
        }
        // Older Ops Managers: the director manifest's ops_manager client.
        None => {
            let m = c
                .get_json("/api/v0/deployed/director/manifest")
                .await?
                .ok_or_else(|| anyhow!("Ops Manager has neither the director's BBR client credentials nor its manifest"))?;
            let bosh = m["jobs"]
                .as_array()
                .and_then(|jobs| jobs.iter().find(|j| j["name"] == "bosh"))
                .ok_or_else(|| anyhow!("the director manifest has no job named bosh"))?;
            let props = &bosh["properties"];
            let secret = props["uaa"]["clients"]["ops_manager"]["secret"].as_str().ok_or_else(|| anyhow!("the director manifest has no ops_manager client secret"))?;
            let ca = props["director"]["config_server"]["ca_cert"].as_str().ok_or_else(|| anyhow!("the director manifest has no config_server.ca_cert"))?;
            ("ops_manager".to_string(), Secret::new(secret), ca.to_string())
        }
    };

    let keys = c
        .get_json("/api/v0/deployed/director/credentials/bbr_ssh_credentials")
        .await?
        .ok_or_else(|| anyhow!("Ops Manager has no bbr_ssh_credentials for the director (enable BOSH Backup and Restore on the director tile)"))?;
    let key = keys["credential"]["value"]["private_key_pem"].as_str().ok_or_else(|| anyhow!("bbr_ssh_credentials has no private_key_pem"))?;
    Ok(DirectorAccess { address, client, client_secret, ca_pem, ssh_user: "bbr".into(), ssh_key: Secret::new(key) })
}

/// Every active CA's certificate, one PEM bundle (all of them when none is marked active).
async fn certificate_authorities(c: &OpsManClient) -> anyhow::Result<String> {
    let v = c.get_json("/api/v0/certificate_authorities").await?.unwrap_or(Value::Null);
    let cas = v["certificate_authorities"].as_array().cloned().unwrap_or_default();
    let active: Vec<&Value> = cas.iter().filter(|ca| ca["active"] == true).collect();
    let chosen = if active.is_empty() { cas.iter().collect() } else { active };
    let pems: Vec<&str> = chosen.iter().filter_map(|ca| ca["cert_pem"].as_str()).collect();
    if pems.is_empty() {
        bail!("Ops Manager GET /api/v0/certificate_authorities: no certificate");
    }
    Ok(pems.iter().map(|p| format!("{}\n", p.trim_end())).collect())
}

/// The installation being applied, if any (the newest entry of `/api/v0/installations`,
/// while its status is `running`).
pub async fn applying_changes(c: &OpsManClient) -> anyhow::Result<Option<Installation>> {
    let v = c.get_json("/api/v0/installations").await?.unwrap_or(Value::Null);
    let list = v["installations"].as_array().cloned().unwrap_or_default();
    // Newest first, as Ops Manager lists them; by id to be sure.
    let newest = list.iter().max_by_key(|i| i["id"].as_u64().unwrap_or(0));
    Ok(newest.filter(|i| i["status"] == "running").map(|i| Installation {
        id: i["id"].as_u64().unwrap_or(0),
        user: i["user_name"].as_str().unwrap_or("someone").to_string(),
        started_at: i["started_at"].as_str().unwrap_or("an unknown time").to_string(),
    }))
}

/// Refuses while Ops Manager applies changes: a backup then would capture a platform
/// half-way between two configurations.
pub async fn guard(c: &OpsManClient) -> anyhow::Result<()> {
    if let Some(i) = applying_changes(c).await? {
        bail!(
            "Ops Manager {} is applying changes (installation {}, started by {} at {}): a backup now would capture a \
             platform half-way through them. Wait until it finishes, then run the backup again",
            c.url(),
            i.id,
            i.user,
            i.started_at
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: &str, deployment: &str) -> Product {
        Product { kind: kind.into(), deployment: deployment.into() }
    }

    #[test]
    fn products_are_chosen_by_type_and_an_unknown_one_is_named() {
        let all = [p("p-bosh", "p-bosh-1"), p("cf", "cf-2"), p("p-isolation-segment", "p-isolation-segment-3")];
        assert_eq!(choose_products(&all, &[]).unwrap(), vec![all[1].clone(), all[2].clone()]);
        assert_eq!(choose_products(&all, &["p-isolation-segment".into()]).unwrap(), vec![all[2].clone()]);
        let err = choose_products(&all, &["p-redis".into()]).unwrap_err().to_string();
        assert!(err.contains("\"p-redis\" is not deployed") && err.contains("cf, p-isolation-segment"), "{err}");
    }
}
