//! The command line to run next, rebuilt from what was parsed: the cleanup advice after a
//! failed run names the whole command (target, flags, the cleanup action), quoted for a
//! shell, so an operator can paste it. Secrets are never part of it: they are named by the
//! environment variable that carries them.

use super::args::{DeploymentArgs, DirectorArgs, HostsArgs, LocalArgs, SshFlags};
use crate::transport::quote::quote;
use std::path::Path;

fn path(p: &Path) -> String {
    quote(&p.display().to_string())
}

fn push(words: &mut Vec<String>, flag: &str, value: Option<String>) {
    if let Some(v) = value {
        words.push(flag.to_string());
        words.push(v);
    }
}

impl SshFlags {
    /// The SSH flags that differ from their defaults.
    fn words(&self) -> Vec<String> {
        let mut w = Vec::new();
        push(&mut w, "--known-hosts", self.known_hosts.as_deref().map(path));
        if self.insecure_skip_host_key_check {
            w.push("--insecure-skip-host-key-check".into());
        }
        if self.connect_timeout != crate::transport::ssh::DEFAULT_CONNECT_TIMEOUT {
            push(&mut w, "--connect-timeout", Some(humantime::format_duration(self.connect_timeout).to_string()));
        }
        if self.keepalive != crate::transport::ssh::DEFAULT_KEEPALIVE_INTERVAL {
            push(&mut w, "--keepalive", Some(humantime::format_duration(self.keepalive).to_string()));
        }
        push(&mut w, "--script-timeout", self.script_timeout.map(|d| humantime::format_duration(d).to_string()));
        let g = &self.gateway;
        push(&mut w, "--gateway", g.gateway.as_deref().map(quote));
        push(&mut w, "--gateway-private-key-path", g.gateway_private_key_path.as_deref().map(path));
        push(&mut w, "--gateway-host-public-key", g.gateway_host_public_key.as_deref().map(quote));
        w
    }
}

/// `lockstep local --name N --instance G/I=DIR ...`
pub(super) fn local(a: &LocalArgs) -> String {
    let mut w = vec!["lockstep".to_string(), "local".into(), "--name".into(), quote(&a.name)];
    for i in &a.instances {
        push(&mut w, "--instance", Some(quote(i)));
    }
    w.join(" ")
}

/// `lockstep director --host H --username U --private-key-path KEY [...]`
pub(super) fn director(a: &DirectorArgs) -> String {
    let mut w = vec!["lockstep".to_string(), "director".into()];
    push(&mut w, "--host", a.host.as_deref().map(quote));
    push(&mut w, "--username", a.username.as_deref().map(quote));
    push(&mut w, "--private-key-path", a.private_key_path.as_deref().map(path));
    push(&mut w, "--host-public-key", a.host_public_key.as_deref().map(quote));
    w.extend(a.ssh.words());
    w.join(" ")
}

/// `lockstep hosts --inventory FILE [...]`
pub(super) fn hosts(a: &HostsArgs) -> String {
    let mut w = vec!["lockstep".to_string(), "hosts".into()];
    push(&mut w, "--inventory", a.inventory.as_deref().map(path));
    w.extend(a.ssh.words());
    w.join(" ")
}

/// `lockstep deployment --target URL --username CLIENT --deployment NAME [--ca-cert PATH]`,
/// with the client secret named by its variable. A CA given as PEM text is left to
/// `CA_CERT`/`BOSH_CA_CERT` (it would fill a screen).
pub(super) fn deployment(a: &DeploymentArgs, deployment: &str) -> String {
    let mut w = vec!["lockstep".to_string(), "deployment".into()];
    push(&mut w, "--target", a.target.as_deref().map(quote));
    push(&mut w, "--username", a.username.as_deref().map(quote));
    w.push("--password".into());
    w.push("\"$BOSH_CLIENT_SECRET\"".into());
    push(&mut w, "--deployment", Some(quote(deployment)));
    if let Some(ca) = a.ca_cert.as_deref().filter(|c| !c.contains("-----BEGIN")) {
        push(&mut w, "--ca-cert", Some(quote(ca)));
    }
    w.join(" ")
}

/// `lockstep run [--config FILE]`
pub(super) fn run(config: Option<&Path>) -> String {
    match config {
        Some(p) => format!("lockstep run --config {}", path(p)),
        None => "lockstep run".to_string(),
    }
}
