//! Targets: how the instances of a deployment are found. The orchestration asks a target
//! for its instances and, when it knows them, the releases of jobs (for lock ordering).
//! Knows instances and how to reach them; knows nothing of the workflows that run on them
//! or of where artifacts are stored.
//!
//! - [`LocalTarget`] (here): directories standing in for instances, for demos and tests.
//! - [`hosts`]: any set of SSH hosts listed in an inventory.
//! - [`director`]: bbr's `director` mode, the director VM over SSH.
//! - [`bosh`]: a BOSH deployment found through the director's API (bbr's `deployment`).
//! - [`ssh_options`]: the SSH settings the three SSH targets share.
//! - [`export`]: a file an API exports (Ops Manager's installation), backed up whole.
//! - [`uaa`]: UAA tokens for the director's and Ops Manager's APIs.
//! - [`opsman`]: Ops Manager's API: the director and products of a platform.
//! - [`platform`]: what a platform backup takes (an API's export, a director, products).

pub mod bosh;
pub mod director;
pub mod export;
pub mod hosts;
pub mod opsman;
pub mod platform;
pub mod ssh_options;
pub mod uaa;

pub use director::{deployment_name_from_address, DirectorTarget};
pub use hosts::{HostSpec, HostsTarget, Inventory};
pub use ssh_options::{check_keepalive, resolve_gateway, GatewayFlags, SshOptions};

use crate::instance::{InstanceRef, ShellInstance};
use crate::model::InstanceId;
use crate::transport::local::LocalTransport;
use async_trait::async_trait;
use std::sync::Arc;

#[async_trait]
pub trait Target: Send + Sync {
    /// Names the artifact: `<deployment>_<timestamp>`.
    fn deployment_name(&self) -> &str;
    async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>>;
    /// Where the deployment's instances are (addresses, directories, director and
    /// deployment), without secrets: recorded in `lockstep.json` as `taken_from`, so that
    /// a restore drill can refuse to restore onto the deployment a backup came from.
    /// `None` when the target cannot say.
    fn location(&self) -> Option<String> {
        None
    }
    /// The release a job comes from, if this target knows (a BOSH manifest does).
    fn release_of(&self, _group: &str, _job: &str) -> Option<String> {
        None
    }
    /// Does the manifest set `bbr.backup_one_restore_all` on this job?
    fn backup_one_restore_all(&self, _group: &str, _job: &str) -> bool {
        false
    }
    /// Is this the bootstrap instance of its group (the director's `bootstrap: true`)?
    fn is_bootstrap(&self, _id: &InstanceId) -> bool {
        false
    }
    /// Gives back what the target acquired to reach the instances (the BOSH deployment
    /// target's temporary SSH users). Called once the action has finished, whether it
    /// succeeded, failed or was stopped by a signal.
    async fn release(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A deployment whose instances are local directories standing in for `/`.
pub struct LocalTarget {
    name: String,
    instances: Vec<(InstanceId, String)>,
}

impl LocalTarget {
    pub fn new(name: impl Into<String>, instances: Vec<(InstanceId, String)>) -> Self {
        LocalTarget { name: name.into(), instances }
    }

    /// Parses `GROUP/INDEX=DIR`, as given to `lockstep local --instance`.
    pub fn parse_instance(spec: &str) -> anyhow::Result<(InstanceId, String)> {
        let usage = || anyhow::anyhow!("--instance {spec:?}: expected GROUP/INDEX=DIR, e.g. redis/0=/tmp/vm0");
        let (id, dir) = spec.split_once('=').ok_or_else(usage)?;
        let (group, index) = id.split_once('/').ok_or_else(usage)?;
        if group.is_empty() || index.is_empty() || dir.is_empty() {
            return Err(usage());
        }
        let dir = std::path::absolute(dir)
            .map_err(|e| anyhow::anyhow!("--instance {spec:?}: {e}"))?
            .to_string_lossy()
            .into_owned();
        Ok((InstanceId::new(group, index), dir))
    }
}

#[async_trait]
impl Target for LocalTarget {
    fn deployment_name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> Option<String> {
        let mut dirs: Vec<&str> = self.instances.iter().map(|(_, d)| d.as_str()).collect();
        dirs.sort();
        Some(format!("local instances {}", dirs.join(", ")))
    }

    async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>> {
        let mut out: Vec<InstanceRef> = Vec::new();
        for (id, dir) in &self.instances {
            if !std::path::Path::new(dir).is_dir() {
                anyhow::bail!("instance {id}: {dir} is not a directory");
            }
            out.push(Arc::new(ShellInstance::new(id.clone(), Box::new(LocalTransport::new(dir.clone())))));
        }
        Ok(out)
    }
}

/// A target over instances that already exist (tests wrap instances to inject faults).
pub struct FixedTarget {
    pub name: String,
    pub instances: Vec<InstanceRef>,
}

#[async_trait]
impl Target for FixedTarget {
    fn deployment_name(&self) -> &str {
        &self.name
    }
    async fn instances(&self) -> anyhow::Result<Vec<InstanceRef>> {
        Ok(self.instances.clone())
    }
}
