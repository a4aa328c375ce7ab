//! Keys: client keys (with passphrases), host-key policies, known_hosts and the check of
//! an offered host key, whose error says what to do.

use anyhow::{anyhow, bail, Context};
use russh::keys::{self, HashAlg, PrivateKey, PublicKey};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use super::*;

/// A secret string (a passphrase) that never shows in `Debug` output or messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The passphrase from [`PASSPHRASE_ENV`], if set and not empty.
    pub fn from_env() -> Option<Secret> {
        std::env::var(PASSPHRASE_ENV).ok().filter(|s| !s.is_empty()).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a private key comes from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    Path(PathBuf),
    /// PEM content (OpenSSH, PKCS#1 or PKCS#8).
    Pem(String),
}

impl KeySource {
    pub(super) fn origin(&self) -> String {
        match self {
            KeySource::Path(p) => format!("private key {}", p.display()),
            KeySource::Pem(_) => "the inline private key".to_string(),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Path(p) => write!(f, "Path({})", p.display()),
            KeySource::Pem(_) => f.write_str("Pem(<redacted>)"),
        }
    }
}

/// A loaded (decrypted) client private key. `Debug` shows its type and fingerprint only.
#[derive(Clone)]
pub struct ClientKey {
    pub(super) key: Arc<PrivateKey>,
    pub(super) origin: String,
}

impl ClientKey {
    /// Loads and, with `passphrase`, decrypts a private key: ed25519, ECDSA or RSA, in
    /// OpenSSH, PKCS#1 or PKCS#8 PEM form.
    pub fn load(source: &KeySource, passphrase: Option<&Secret>) -> anyhow::Result<ClientKey> {
        let origin = source.origin();
        let text = match source {
            KeySource::Path(p) => {
                std::fs::read_to_string(p).with_context(|| format!("could not read {origin}"))?
            }
            KeySource::Pem(s) => s.clone(),
        };
        let trimmed = text.trim_start();
        if trimmed.starts_with("ssh-") || trimmed.starts_with("ecdsa-") {
            bail!("{origin} is a public key; give the private key (the file without .pub)");
        }
        let key = match keys::decode_secret_key(&text, passphrase.map(Secret::expose)) {
            Ok(k) => k,
            Err(keys::Error::KeyIsEncrypted) => bail!(
                "{origin} is protected by a passphrase: set {PASSPHRASE_ENV} to it (it is never printed)"
            ),
            Err(e) if passphrase.is_some() => {
                bail!("could not decrypt {origin}: {e} (is the passphrase in {PASSPHRASE_ENV} right?)")
            }
            Err(e) => bail!(
                "could not read {origin}: {e}; expected an OpenSSH, PKCS#1 or PKCS#8 PEM private key"
            ),
        };
        Ok(ClientKey { key: Arc::new(key), origin })
    }

    pub fn from_private_key(key: PrivateKey, origin: impl Into<String>) -> Self {
        ClientKey { key: Arc::new(key), origin: origin.into() }
    }

    /// `SHA256:...` of the public half.
    pub fn fingerprint(&self) -> String {
        self.key.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    pub(super) fn describe(&self) -> String {
        format!("{} key {} ({})", self.key.algorithm().as_str(), self.fingerprint(), self.origin)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.describe())
    }
}

/// How an instance's host key is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// The host must present exactly this key (as BOSH's `host_public_key`).
    Pinned(PublicKey),
    /// The host must be listed in this OpenSSH `known_hosts` file (plain or hashed names,
    /// `[host]:port` for ports other than 22; no wildcards or markers).
    KnownHosts(PathBuf),
    /// No check at all (`--insecure-skip-host-key-check`).
    Insecure,
}

impl HostKeyPolicy {
    /// Parses a pinned key from an OpenSSH public key line: `ssh-ed25519 AAAA... [comment]`.
    pub fn pinned(line: &str) -> anyhow::Result<HostKeyPolicy> {
        Ok(HostKeyPolicy::Pinned(parse_public_key_line(line)?))
    }

    /// `~/.ssh/known_hosts` of the current user.
    pub fn default_known_hosts() -> PathBuf {
        default_known_hosts_path()
    }
}

impl fmt::Debug for HostKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyPolicy::Pinned(k) => write!(f, "Pinned({} {})", k.algorithm().as_str(), fingerprint(k)),
            HostKeyPolicy::KnownHosts(p) => write!(f, "KnownHosts({})", p.display()),
            HostKeyPolicy::Insecure => f.write_str("Insecure"),
        }
    }
}

/// `~/.ssh/known_hosts`, from `$HOME`.
pub fn default_known_hosts_path() -> PathBuf {
    std::env::home_dir().unwrap_or_else(|| PathBuf::from("/root")).join(".ssh").join("known_hosts")
}

/// Parses `ssh-ed25519 AAAA... [comment]` (or the key alone, base64).
pub fn parse_public_key_line(line: &str) -> anyhow::Result<PublicKey> {
    let line = line.trim();
    let usage = "expected an OpenSSH public key line such as \"ssh-ed25519 AAAA...\"";
    if line.is_empty() {
        bail!("empty host public key: {usage}");
    }
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let result = if let Some(b64) = words.next() {
        keys::parse_public_key_base64(b64).map_err(anyhow::Error::from).and_then(|k| {
            if k.algorithm().as_str() == first {
                Ok(k)
            } else {
                Err(anyhow!("the key type {first:?} does not match the key data ({})", k.algorithm().as_str()))
            }
        })
    } else {
        keys::parse_public_key_base64(first).map_err(anyhow::Error::from)
    };
    result.map_err(|e| anyhow!("invalid host public key: {e}; {usage}"))
}

pub(super) fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}


/// Checks an offered host key; the error says what to do about it.
pub fn verify_host_key(policy: &HostKeyPolicy, host: &str, port: u16, offered: &PublicKey) -> Result<(), String> {
    let alg = offered.algorithm();
    let alg = alg.as_str();
    let fp = fingerprint(offered);
    let addr = host_port(host, port);
    let keyscan = format!("ssh-keyscan -p {port} {host}");
    match policy {
        HostKeyPolicy::Insecure => Ok(()),
        HostKeyPolicy::Pinned(pinned) => {
            if pinned.key_data() == offered.key_data() {
                Ok(())
            } else {
                Err(format!(
                    "host key verification failed for {addr}: it offered the {alg} key {fp}, which is not \
                     the pinned host public key ({} {}). Refusing to connect. If the instance was recreated, \
                     check the new key's fingerprint (`{keyscan} | ssh-keygen -lf -`) and update \
                     host_public_key (--host-public-key)",
                    pinned.algorithm().as_str(),
                    fingerprint(pinned)
                ))
            }
        }
        HostKeyPolicy::KnownHosts(path) => {
            let file = path.display();
            match keys::check_known_hosts_path(host, port, offered, path) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    let missing = if Path::new(path).exists() { "" } else { " (the file does not exist)" };
                    Err(format!(
                        "host key verification failed for {addr}: its {alg} key {fp} is not in {file}{missing}. \
                         Refusing to connect. To trust it, check that fingerprint and add the key with \
                         `{keyscan} >> {file}`, or pin it with host_public_key (--host-public-key); \
                         only --insecure-skip-host-key-check skips this check"
                    ))
                }
                Err(keys::Error::KeyChanged { line }) => Err(format!(
                    "host key verification failed for {addr}: the HOST KEY HAS CHANGED. It offered the {alg} \
                     key {fp}, but {file} line {line} holds a different {alg} key for it. Someone may be \
                     intercepting the connection, or the instance was recreated. Refusing to connect. If you \
                     know it was recreated, remove the old entry with `ssh-keygen -R '{known}' -f {file}` and \
                     add the new one with `{keyscan} >> {file}`",
                    known = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") }
                )),
                Err(e) => Err(format!(
                    "host key verification failed for {addr}: could not read the known_hosts file {file}: {e}"
                )),
            }
        }
    }
}
