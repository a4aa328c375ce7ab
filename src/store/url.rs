//! Where artifacts go: `--store` URLs and the S3 configuration behind them.
//!
//! ```text
//! file:///var/backups                      a local directory (bbr's layout)
//! s3://BUCKET/PREFIX                       AWS S3, credentials from the environment
//! s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:9000&use_path_style=true&region_name=us-east-1
//! ```
//!
//! Query keys are `s3-resource`'s source keys (see [`S3Config`]), so one vocabulary serves
//! the CLI and the Concourse resource. Secrets are never accepted in a URL (it would show
//! in process listings and logs): they come from flags or the standard `AWS_*` variables.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // parsed once per command
pub enum StoreUrl {
    File(PathBuf),
    S3(S3Config),
}

/// One request carries at most one part (8 MiB by default): 300 s lets a slow link
/// (about 0.25 Mbit/s) send it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// `request_timeout` as text, given as a string (`10m`) or a number of seconds.
fn duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    }))
}

/// An S3 (or S3-compatible) store. Field names are `concourse/s3-resource`'s.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix (no leading or trailing `/`); artifacts are `<prefix>/<artifact>/...`.
    #[serde(default)]
    pub prefix: String,
    /// `https://host:port` or `http://127.0.0.1:9000` for S3-compatible servers.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region_name: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers need.
    #[serde(default)]
    pub use_path_style: bool,
    /// PEM CA certificate(s) to trust for the endpoint: the PEM text itself (as
    /// `s3-resource` takes it) or a path to a PEM file (as the CLI takes it).
    #[serde(default)]
    pub ca_bundle: Option<String>,
    #[serde(default)]
    pub skip_ssl_verification: bool,
    /// `AES256` or `aws:kms`.
    #[serde(default)]
    pub server_side_encryption: Option<String>,
    /// The KMS key for `aws:kms`.
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// Multipart part size in MiB (lockstep's own key; default 16). Memory per upload is
    /// about this times 5 (four parts in flight plus the one filling).
    #[serde(default)]
    pub part_size_mib: Option<u64>,
    /// Retries of a failed request (throttling, 5xx, dropped connections); default 10.
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Give up retrying one request after this many seconds; default 180.
    #[serde(default)]
    pub retry_timeout_seconds: Option<u64>,
    /// The most one request (one part at most) may take, from sending it to the last byte
    /// of its answer: a duration (`300s`, `10m`) or seconds; default 300s. A request that
    /// takes longer is dropped and retried.
    #[serde(default, deserialize_with = "duration_text")]
    pub request_timeout: Option<String>,
    /// The most parts one multipart upload may have: S3's 10,000 by default; lower for
    /// S3-compatible servers with a lower limit.
    #[serde(default)]
    pub max_parts: Option<u64>,
    /// Without keys, use the credential chain of the machine (instance profile, container
    /// or web-identity role). Off by default, as in s3-resource: on a shared Concourse
    /// worker any team would otherwise get the worker's IAM role.
    #[serde(default)]
    pub enable_aws_creds_provider: bool,
    /// s3-resource's key: a role to assume (STS AssumeRole, signed with the keys given);
    /// the store then works with the role's temporary credentials.
    #[serde(default)]
    pub aws_role_arn: Option<String>,
}

impl S3Config {
    /// The keys `s3-resource` defines that lockstep understands, plus lockstep's own
    /// tuning keys, for validating a Concourse `source:`.
    pub const KEYS: &'static [&'static str] = &[
        "bucket",
        "prefix",
        "endpoint",
        "region_name",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "use_path_style",
        "ca_bundle",
        "skip_ssl_verification",
        "server_side_encryption",
        "sse_kms_key_id",
        "part_size_mib",
        "max_retries",
        "retry_timeout_seconds",
        "request_timeout",
        "max_parts",
        "enable_aws_creds_provider",
        "aws_role_arn",
    ];
    /// The options a store URL's query takes (`s3://BUCKET/PREFIX?key=value&...`): the
    /// source keys without the bucket and prefix (they are the URL's path) and without the
    /// secrets (never in a URL). `region` is accepted as an alias of `region_name`.
    pub const QUERY_KEYS: &'static [&'static str] = &[
        "endpoint",
        "region_name",
        "use_path_style",
        "ca_bundle",
        "skip_ssl_verification",
        "server_side_encryption",
        "sse_kms_key_id",
        "part_size_mib",
        "max_retries",
        "retry_timeout_seconds",
        "request_timeout",
        "max_parts",
        "enable_aws_creds_provider",
        "aws_role_arn",
    ];
    /// Keys that hold secrets: never accepted in a URL, never printed.
    pub const SECRET_KEYS: &'static [&'static str] = &["access_key_id", "secret_access_key", "session_token"];

    /// Fills what is not set from the standard AWS environment variables:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
    pub fn fill_from_env(&mut self) {
        self.fill_from(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    }

    pub fn fill_from(&mut self, get: impl Fn(&str) -> Option<String>) {
        let first = |keys: &[&str]| keys.iter().find_map(|k| get(k));
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = get("AWS_ACCESS_KEY_ID");
            self.secret_access_key = get("AWS_SECRET_ACCESS_KEY");
            if self.session_token.is_none() {
                self.session_token = get("AWS_SESSION_TOKEN");
            }
        }
        if self.region_name.is_none() {
            self.region_name = first(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        }
        if self.endpoint.is_none() {
            self.endpoint = first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
        }
    }

    /// `s3://bucket/prefix` (with the endpoint when not AWS). Never includes secrets.
    pub fn describe(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" at {}", redact_userinfo(e)));
        }
        s
    }

    /// Checks values that would otherwise fail obscurely later.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.bucket.is_empty() {
            bail!("the S3 store needs a bucket (s3://BUCKET/PREFIX)");
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            bail!(
                "S3 credentials are incomplete: give both access_key_id and secret_access_key \
                 (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or neither with enable_aws_creds_provider: true to use the machine's IAM role"
            );
        }
        match self.server_side_encryption.as_deref() {
            None | Some("AES256") => {
                if self.sse_kms_key_id.is_some() && self.server_side_encryption.is_some() {
                    bail!("sse_kms_key_id needs server_side_encryption: aws:kms");
                }
            }
            Some("aws:kms") => {}
            Some(other) => bail!("server_side_encryption {other:?} is not supported: use AES256 or aws:kms"),
        }
        check_bucket_name(&self.bucket)?;
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            bail!("endpoint {:?} must start with http:// or https://", redact_userinfo(e));
        }
        if self.part_size_mib.is_some_and(|p| !(5..=5120).contains(&p)) {
            bail!("part_size_mib must be between 5 and 5120 (S3's limits)");
        }
        self.request_timeout_duration()?;
        Ok(())
    }

    /// [`S3Config::request_timeout`], parsed; at least a second.
    pub fn request_timeout_duration(&self) -> anyhow::Result<Duration> {
        let Some(text) = &self.request_timeout else { return Ok(DEFAULT_REQUEST_TIMEOUT) };
        let d = crate::config::parse_duration(text).context("request_timeout")?;
        if d < Duration::from_secs(1) {
            bail!("request_timeout must be at least 1s (got {text:?})");
        }
        Ok(d)
    }
}

/// Secrets are shown as `<redacted>`; the access key id is shown by its first four
/// characters only.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region_name", &self.region_name)
            .field("access_key_id", &self.access_key_id.as_ref().map(|k| format!("{}…", k.chars().take(4).collect::<String>())))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("use_path_style", &self.use_path_style)
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|c| if c.contains("-----BEGIN") { "<PEM>" } else { c.as_str() }))
            .field("skip_ssl_verification", &self.skip_ssl_verification)
            .field("server_side_encryption", &self.server_side_encryption)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .field("part_size_mib", &self.part_size_mib)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout_seconds", &self.retry_timeout_seconds)
            .field("request_timeout", &self.request_timeout)
            .field("max_parts", &self.max_parts)
            .field("enable_aws_creds_provider", &self.enable_aws_creds_provider)
            .field("aws_role_arn", &self.aws_role_arn)
            .finish()
    }
}

/// An endpoint for messages: a `user:password@` in it is never shown.
pub fn redact_userinfo(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").map_or(("", endpoint), |(a, b)| (a, b));
    let (authority, tail) = rest.find(['/', '?', '#']).map_or((rest, ""), |i| rest.split_at(i));
    let shown = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    if scheme.is_empty() { format!("{shown}{tail}") } else { format!("{scheme}://{shown}{tail}") }
}

/// S3's bucket naming rules (3 to 63 characters: lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit). The name is not echoed when it holds a
/// character a name never has (`s3://KEY:SECRET@bucket` puts credentials there).
pub fn check_bucket_name(bucket: &str) -> anyhow::Result<()> {
    if bucket.contains(['@', ':']) {
        bail!(
            "the bucket name holds '@' or ':': credentials may not be given in a store URL (it would show in process \
             listings and logs); give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
    }
    let ok_chars = bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !ends_ok(bucket.bytes().next()) || !ends_ok(bucket.bytes().last()) {
        bail!(
            "invalid bucket name {bucket:?}: S3 bucket names are 3 to 63 characters of lowercase letters, digits, '.' \
             and '-', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

fn parse_bool(key: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => bail!("store URL: {key}={v:?} is not true or false"),
    }
}

/// Decodes `%XX` escapes (and `+` as a space) in a query value.
fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(b) = hex else { bail!("store URL: bad %-escape in {s:?}") };
                out.push(b);
                i += 3;
            }
            b'%' => bail!("store URL: bad %-escape in {s:?}"),
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).context("store URL: query value is not UTF-8")
}

impl StoreUrl {
    /// Parses `file:///PATH` or `s3://BUCKET[/PREFIX][?key=value&...]`. A bare path is not
    /// accepted (say `file://` so there is no doubt what is meant).
    pub fn parse(url: &str) -> anyhow::Result<StoreUrl> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("store URL {url:?}: a file URL needs an absolute path, e.g. file:///var/backups");
            }
            if path.contains('?') {
                bail!("store URL {url:?}: file URLs take no options");
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!("store URL {url:?} is not understood: use s3://BUCKET/PREFIX or file:///PATH");
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            bail!("store URL {url:?} names no bucket: use s3://BUCKET/PREFIX");
        }
        check_bucket_name(bucket).context("store URL")?;
        let mut c = S3Config { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string(), ..Default::default() };
        if c.prefix.split('/').any(|p| p == "." || p == "..") || c.prefix.contains("//") {
            bail!("store URL {url:?}: the prefix may not contain empty, `.` or `..` parts");
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            if S3Config::SECRET_KEYS.contains(&key) {
                bail!(
                    "store URL: {key} may not be given in a URL (it would show in process listings and logs); \
                     use --s3-access-key-id/--s3-secret-access-key/--s3-session-token or \
                     AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN"
                );
            }
            let v = percent_decode(raw)?;
            let num = |v: &str| v.parse::<u64>().with_context(|| format!("store URL: {key}={v:?} is not a number"));
            match key {
                "endpoint" => c.endpoint = Some(v),
                "region_name" | "region" => c.region_name = Some(v),
                "use_path_style" => c.use_path_style = parse_bool(key, &v)?,
                "ca_bundle" => c.ca_bundle = Some(v),
                "skip_ssl_verification" => c.skip_ssl_verification = parse_bool(key, &v)?,
                "server_side_encryption" => c.server_side_encryption = Some(v),
                "sse_kms_key_id" => c.sse_kms_key_id = Some(v),
                "part_size_mib" => c.part_size_mib = Some(num(&v)?),
                "max_retries" => c.max_retries = Some(num(&v)? as usize),
                "retry_timeout_seconds" => c.retry_timeout_seconds = Some(num(&v)?),
                "request_timeout" => c.request_timeout = Some(v),
                "max_parts" => c.max_parts = Some(num(&v)?),
                "enable_aws_creds_provider" => c.enable_aws_creds_provider = parse_bool(key, &v)?,
                "aws_role_arn" => c.aws_role_arn = Some(v),
                _ => bail!("store URL: unknown option {key:?}; allowed: {}", S3Config::QUERY_KEYS.join(", ")),
            }
        }
        Ok(StoreUrl::S3(c))
    }

    /// For messages; never includes secrets.
    pub fn describe(&self) -> String {
        match self {
            StoreUrl::File(p) => format!("file://{}", p.display()),
            StoreUrl::S3(c) => c.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_the_source_keys_without_the_path_and_the_secrets() {
        let want: Vec<&str> = S3Config::KEYS
            .iter()
            .copied()
            .filter(|k| !["bucket", "prefix"].contains(k) && !S3Config::SECRET_KEYS.contains(k))
            .collect();
        assert_eq!(S3Config::QUERY_KEYS, want.as_slice());
    }

    #[test]
    fn credentials_in_a_url_or_an_endpoint_are_refused_or_redacted() {
        let e = format!("{:#}", StoreUrl::parse("s3://AKIAKEY:s3cr3tValue@backups/cf").unwrap_err());
        assert!(e.contains("credentials may not be given") && !e.contains("s3cr3tValue") && !e.contains("AKIAKEY"), "{e}");
        let c = S3Config { bucket: "backups".into(), endpoint: Some("https://admin:hunter22@minio.example.com:9000/x".into()), ..Default::default() };
        assert_eq!(c.describe(), "s3://backups at https://<redacted>@minio.example.com:9000/x");
        for bad in ["ab", "Backups", "-backups", "back_ups", &"a".repeat(64)] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
        for good in ["backups", "my.backups-2", "abc"] {
            check_bucket_name(good).unwrap();
        }
    }

    #[test]
    fn a_url_takes_a_request_timeout() {
        let StoreUrl::S3(c) = StoreUrl::parse("s3://bkt/p?request_timeout=2m").unwrap() else { panic!() };
        assert_eq!(c.request_timeout_duration().unwrap(), Duration::from_secs(120));
        let StoreUrl::S3(c) = StoreUrl::parse("s3://bkt/p?request_timeout=2x").unwrap() else { panic!() };
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("request_timeout"));
    }

    #[test]
    fn parses_file_and_s3_urls() {
        assert_eq!(StoreUrl::parse("file:///var/backups").unwrap(), StoreUrl::File("/var/backups".into()));
        assert!(StoreUrl::parse("file://relative").is_err());
        let StoreUrl::S3(c) = StoreUrl::parse(
            "s3://bkt/some/prefix/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&use_path_style=true&region_name=eu-west-1&server_side_encryption=aws:kms&sse_kms_key_id=k1&part_size_mib=8",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.bucket, "bkt");
        assert_eq!(c.prefix, "some/prefix");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.use_path_style);
        assert_eq!(c.region_name.as_deref(), Some("eu-west-1"));
        assert_eq!(c.part_size_mib, Some(8));
        c.validate().unwrap();
        let StoreUrl::S3(c) = StoreUrl::parse("s3://bucket").unwrap() else { panic!() };
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", ""));
    }

    #[test]
    fn refuses_secrets_unknown_keys_and_bad_values() {
        let e = StoreUrl::parse("s3://bkt/p?secret_access_key=hunter2").unwrap_err().to_string();
        assert!(e.contains("may not be given in a URL") && !e.contains("hunter2"), "{e}");
        assert!(StoreUrl::parse("s3://bkt/p?colour=red").unwrap_err().to_string().contains("allowed: endpoint"));
        assert!(StoreUrl::parse("s3:///p").is_err());
        assert!(StoreUrl::parse("s3://bkt/../x").is_err());
        assert!(StoreUrl::parse("/tmp/x").unwrap_err().to_string().contains("file:///PATH"));
        assert!(StoreUrl::parse("s3://bkt?use_path_style=maybe").is_err());
        let StoreUrl::S3(c) = StoreUrl::parse("s3://bkt?server_side_encryption=rot13").unwrap() else { panic!() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn environment_fills_only_what_is_missing() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIAEXAMPLE".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t-value".to_string()),
            "AWS_REGION" => Some("eu-central-1".to_string()),
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:1".to_string()),
            _ => None,
        };
        let mut c = S3Config { bucket: "b".into(), region_name: Some("us-east-1".into()), ..Default::default() };
        c.fill_from(env);
        assert_eq!(c.access_key_id.as_deref(), Some("AKIAEXAMPLE"));
        assert_eq!(c.region_name.as_deref(), Some("us-east-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        // Flags win over the environment, as a pair.
        let mut c = S3Config { bucket: "b".into(), access_key_id: Some("A".into()), secret_access_key: Some("B".into()), ..Default::default() };
        c.fill_from(env);
        assert_eq!(c.secret_access_key.as_deref(), Some("B"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = S3Config {
            bucket: "b".into(),
            access_key_id: Some("AKIAIOSFODNN7EXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI/K7MDENG".into()),
            session_token: Some("FQoGZXIvYXdzEJr".into()),
            ca_bundle: Some("-----BEGIN CERTIFICATE-----\nMIIB".into()),
            ..Default::default()
        };
        let d = format!("{c:?} {c:#?}");
        for secret in ["wJalrXUtnFEMI", "FQoGZXIvYXdzEJr", "AKIAIOSFODNN7EXAMPLE", "MIIB"] {
            assert!(!d.contains(secret), "{d}");
        }
        assert!(d.contains("<redacted>") && d.contains("AKIA…"), "{d}");
        let incomplete = S3Config { bucket: "b".into(), access_key_id: Some("A".into()), ..Default::default() };
        assert!(incomplete.validate().unwrap_err().to_string().contains("incomplete"));
    }

    #[test]
    fn s3_resource_source_keys_deserialize() {
        let json = r#"{"bucket":"bkt","prefix":"p","endpoint":"https://s3.example","region_name":"r",
            "access_key_id":"a","secret_access_key":"s","session_token":"t","use_path_style":true,
            "ca_bundle":"-----BEGIN CERTIFICATE-----","skip_ssl_verification":true,
            "server_side_encryption":"aws:kms","sse_kms_key_id":"k"}"#;
        let c: S3Config = serde_json::from_str(json).unwrap();
        assert!(c.use_path_style && c.skip_ssl_verification);
        assert_eq!(c.sse_kms_key_id.as_deref(), Some("k"));
        c.validate().unwrap();
    }
}
