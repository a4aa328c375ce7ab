//! A store in an S3 bucket (AWS or any S3-compatible server), over `object_store`.
//!
//! Writing streams with bounded memory: bytes fill one part buffer of `part_size`; a full
//! buffer becomes a multipart part uploaded in the background, at most
//! [`PARTS_IN_FLIGHT`] at once (the writer stops accepting bytes while that many are
//! uploading). Memory per object is about `part_size x (PARTS_IN_FLIGHT + 1)`, whatever
//! the object's size, and nothing is staged on local disk. An object smaller than one part
//! is sent with a single PUT on commit.
//!
//! Reading fetches an object as byte ranges of `part_size`, several in flight, handed on in
//! order ([`super::s3_read`]): one GET would be bound by one connection and by the request
//! timeout.
//!
//! Nothing is visible under the key until [`ObjectWriter::commit`] (the multipart upload
//! is completed, or the single PUT sent). [`ObjectWriter::abort`], or dropping an
//! uncommitted writer, aborts the multipart upload so no parts stay billed in the bucket.
//!
//! Requests are retried with exponential backoff on throttling, 5xx answers and dropped
//! connections (`max_retries`, `retry_timeout_seconds`). Errors say what to do: wrong
//! credentials, a missing bucket, an unreachable endpoint, an untrusted certificate.

use super::s3_read::{RangedReads, READS_IN_FLIGHT, READ_AHEAD};
use super::url::S3Config;
use super::{check_key, NotFound, ObjectInfo, ObjectWriter, Store};
use anyhow::{anyhow, Context};
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, RetryConfig,
};
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

/// Default (first) multipart part size: 8 MiB, the AWS CLI's `multipart_chunksize`. Larger
/// objects get larger parts (see `PartSizer`), so S3's 10,000-part limit never caps them
/// below 5 TiB. With 16 MiB, three parallel drains peaked at 121-147 MiB of RSS
/// (`cargo bench --bench s3_backup`), above the 128 MiB we aim for; see docs/performance.md.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's limits: parts per upload, bytes per part, bytes per object.
pub const S3_MAX_PARTS: u64 = 10_000;
pub const S3_MAX_PART: usize = 5 * 1024 * 1024 * 1024;
pub const S3_MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Parts uploading concurrently per object.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Parts uploading concurrently per store, across every object being written (parallel
/// drains, replicas): memory is at most about `part_size x (STORE_PARTS_IN_FLIGHT +
/// objects being written)`, 32 MiB plus 8 MiB per stream with the defaults.
pub const STORE_PARTS_IN_FLIGHT: usize = 4;

pub struct S3Store {
    inner: Arc<dyn ObjectStore>,
    /// The same client, for what only S3 has: signing the open-uploads listing, aborting.
    s3: Arc<AmazonS3>,
    /// Sends the one request `object_store` does not offer (see [`super::s3_uploads`]).
    http: reqwest::Client,
    config: S3Config,
    part_size: usize,
    max_parts: u64,
    /// Aborts started by writers dropped mid-upload (a cancelled drain). Listing waits for
    /// them, so the cleanup after a stopped backup (which lists, then deletes) finds no
    /// upload still open in the bucket.
    pending_aborts: PendingAborts,
    parts_budget: Arc<tokio::sync::Semaphore>,
    /// Reads objects as ranges, its permits shared by every object being read.
    reads: RangedReads,
}

/// A background abort's end; cloned into the store's list and its writer's own.
type AbortDone = futures::future::Shared<BoxFuture<'static, ()>>;
type PendingAborts = Arc<std::sync::Mutex<Vec<AbortDone>>>;

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("config", &self.config).field("part_size", &self.part_size).finish()
    }
}

/// `ca_bundle`'s PEM text: the text itself, or the file it names.
fn ca_pem(bundle: &str) -> anyhow::Result<Vec<u8>> {
    if bundle.contains("-----BEGIN") {
        Ok(bundle.as_bytes().to_vec())
    } else {
        std::fs::read(bundle).with_context(|| format!("reading ca_bundle {bundle}"))
    }
}

/// The certificates of `ca_bundle`'s PEM text, for the store's client.
fn ca_certificates(pem: &[u8]) -> anyhow::Result<Vec<Certificate>> {
    let certs = Certificate::from_pem_bundle(pem).context("ca_bundle is not a PEM certificate bundle")?;
    if certs.is_empty() {
        anyhow::bail!("ca_bundle holds no certificate");
    }
    Ok(certs)
}

/// An HTTP client that trusts what the store's client trusts, for what `object_store` does
/// not send itself: the open-uploads listing and STS's AssumeRole.
/// `ca_pem` is `ca_bundle`'s text, already read (and checked) for the store's client.
fn uploads_client(c: &S3Config, ca_pem: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(c.request_timeout_duration()?)
        .danger_accept_invalid_certs(c.skip_ssl_verification);
    for cert in ca_pem.map(reqwest::Certificate::from_pem_bundle).transpose().context("ca_bundle is not a PEM certificate bundle")?.into_iter().flatten() {
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| anyhow!("configuring the S3 store {}: {e}", c.describe()))
}

/// Is the endpoint's host an IP address or a single label (`minio`, `localhost`)? Then
/// virtual-hosted requests (`bucket.HOST`) cannot work.
pub fn endpoint_needs_path_style(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.starts_with('[') {
        return true; // an IPv6 literal
    }
    let host = host_port.split(':').next().unwrap_or_default();
    host.parse::<std::net::Ipv4Addr>().is_ok() || !host.contains('.')
}

impl S3Store {
    /// Builds the client; makes no request (see [`Store::preflight`]).
    pub fn new(config: &S3Config) -> anyhow::Result<Self> {
        config.validate()?;
        let c = config;
        if c.access_key_id.is_none() && !c.enable_aws_creds_provider {
            anyhow::bail!(
                "no S3 credentials for {}: give access_key_id and secret_access_key (AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or --s3-access-key-id/--s3-secret-access-key), or set \
                 enable_aws_creds_provider: true (enable_aws_creds_provider=true in a store URL) to use this machine's \
                 IAM role",
                c.describe()
            );
        }
        // With enable_aws_creds_provider the credential chain (web identity, container and
        // instance roles) comes from the environment; explicit values below win over it.
        // Without it nothing is taken from there but what fill_from_env already read.
        let base = if c.enable_aws_creds_provider { AmazonS3Builder::from_env() } else { AmazonS3Builder::new() };
        let mut b = base
            .with_bucket_name(&c.bucket)
            .with_region(c.region_name.clone().unwrap_or_else(|| "us-east-1".to_string()));
        if let (Some(key), Some(secret)) = (&c.access_key_id, &c.secret_access_key) {
            b = b.with_access_key_id(key).with_secret_access_key(secret);
            b = match &c.session_token {
                Some(t) => b.with_token(t),
                None => b.with_config(AmazonS3ConfigKey::Token, ""),
            };
        }
        // Read once: both clients trust it.
        let ca = c.ca_bundle.as_deref().map(ca_pem).transpose()?;
        let http = uploads_client(c, ca.as_deref())?;
        if let Some(role) = &c.aws_role_arn {
            b = b.with_credentials(Arc::new(super::assume_role::AssumedRole::new(c, role, http.clone())?));
        }
        if let Some(endpoint) = &c.endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            // A bucket cannot be a label of an IP address or of a single-label host
            // (`bucket.127.0.0.1` is no host at all): path style there, as the AWS CLI does.
            if c.use_path_style || endpoint_needs_path_style(endpoint) {
                b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
            } else {
                // Virtual-hosted style against a custom endpoint: the bucket is a host label.
                let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", endpoint));
                b = b.with_endpoint(format!("{scheme}://{}.{host}", c.bucket)).with_virtual_hosted_style_request(true);
            }
        } else {
            b = b.with_virtual_hosted_style_request(!c.use_path_style);
        }
        match c.server_side_encryption.as_deref() {
            Some("aws:kms") => b = b.with_sse_kms_encryption(c.sse_kms_key_id.clone().unwrap_or_default()),
            Some(sse) => {
                let key = AmazonS3ConfigKey::from_str("aws_server_side_encryption").expect("a known key");
                b = b.with_config(key, sse);
            }
            None => {}
        }
        let mut opts = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(c.request_timeout_duration()?)
            .with_allow_invalid_certificates(c.skip_ssl_verification)
            .with_allow_http(c.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")));
        if let Some(pem) = &ca {
            for cert in ca_certificates(pem)? {
                opts = opts.with_root_certificate(cert);
            }
        }
        b = b.with_client_options(opts).with_retry(RetryConfig {
            backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(15), base: 2.0 },
            max_retries: c.max_retries.unwrap_or(10),
            retry_timeout: Duration::from_secs(c.retry_timeout_seconds.unwrap_or(180)),
        });
        let s3 = Arc::new(b.build().map_err(|e| anyhow!("configuring the S3 store {}: {e}", c.describe()))?);
        let part_size = c.part_size_mib.map(|m| m as usize * 1024 * 1024).unwrap_or(DEFAULT_PART_SIZE);
        let max_parts = c.max_parts.unwrap_or(S3_MAX_PARTS).clamp(1, S3_MAX_PARTS);
        let reads = RangedReads {
            store: s3.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT)),
            part: part_size as u64,
            ahead: READ_AHEAD,
        };
        Ok(S3Store { inner: s3.clone(), s3, http, config: c.clone(), part_size, max_parts,
            pending_aborts: Default::default(),
            parts_budget: Arc::new(tokio::sync::Semaphore::new(STORE_PARTS_IN_FLIGHT)),
            reads,
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    fn full_key(&self, key: &str) -> String {
        if self.config.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.config.prefix) }
    }

    /// The store's key of a full key in the bucket (the inverse of `full_key`); `None` for
    /// a key outside the store's prefix.
    fn store_key<'k>(&self, full: &'k str) -> Option<&'k str> {
        if self.config.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.config.prefix.as_str())?.strip_prefix('/')
        }
    }

    fn path(&self, key: &str) -> anyhow::Result<Path> {
        check_key(key)?;
        Path::parse(self.full_key(key)).map_err(|e| anyhow!("invalid object key {key:?}: {e}"))
    }

    fn explain(&self, e: object_store::Error, doing: &str) -> anyhow::Error {
        explain(&self.config, e, doing)
    }

    /// Waits (a bounded time) for the aborts of dropped writers.
    async fn settle(&self) {
        let handles: Vec<AbortDone> = std::mem::take(&mut *self.pending_aborts.lock().unwrap());
        if !handles.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(handles)).await;
        }
    }
}

/// Turns an `object_store` error into one that says what to do. The original error is
/// kept as the cause; it names the request URL, never a credential.
pub fn explain(c: &S3Config, e: object_store::Error, doing: &str) -> anyhow::Error {
    // object_store's messages repeat their sources; add only what is new.
    let mut chain = format!("{e}");
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        let t = s.to_string();
        if !chain.contains(&t) {
            chain.push_str(&format!(": {t}"));
        }
        src = s.source();
    }
    let where_ = c.describe();
    let advice = if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"]
        .iter()
        .any(|k| chain.contains(k))
    {
        format!(
            "S3 refused the credentials while {doing} ({where_}): check the access key id and secret \
             (--s3-access-key-id/--s3-secret-access-key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the session token if any"
        )
    } else if chain.contains("NoSuchBucket") {
        format!(
            "the bucket {:?} does not exist at {} while {doing}: create it, or fix the bucket name in the store URL",
            c.bucket,
            c.endpoint.as_deref().unwrap_or("AWS S3")
        )
    } else if chain.contains("AccessDenied") || chain.contains("403 Forbidden") || matches!(e, object_store::Error::PermissionDenied { .. }) {
        format!("S3 denied access while {doing} ({where_}): the credentials are valid but lack permission for this bucket or prefix")
    } else if ["certificate", "UnknownIssuer", "CertificateRequired", "invalid peer certificate"].iter().any(|k| chain.contains(k)) {
        format!(
            "the TLS certificate of {} is not trusted while {doing}: give its CA with ca_bundle=PATH (or skip_ssl_verification=true, for testing only)",
            c.endpoint.as_deref().unwrap_or("the S3 endpoint")
        )
    } else if chain.contains("timed out") && !chain.contains("onnect") {
        // The connection was made; a request (one part at most) outlasted request_timeout.
        format!(
            "a request to the S3 endpoint {} took longer than request_timeout ({}) while {doing} (gave up after retrying): \
             check the network; on a slow link raise request_timeout (a request carries one part, {} MiB)",
            c.endpoint.as_deref().unwrap_or("(AWS S3)"),
            c.request_timeout_duration().map(|d| humantime::format_duration(d).to_string()).unwrap_or_default(),
            c.part_size_mib.unwrap_or((DEFAULT_PART_SIZE / (1024 * 1024)) as u64)
        )
    } else if ["error sending request", "Connection refused", "connection error", "tcp connect", "dns error", "timed out", "connection closed"]
        .iter()
        .any(|k| chain.contains(k))
    {
        format!(
            "cannot reach the S3 endpoint {} while {doing} (gave up after retrying): check the endpoint and the network",
            c.endpoint.as_deref().unwrap_or("(AWS S3)")
        )
    } else {
        format!("S3 request failed while {doing} ({where_})")
    };
    anyhow!("{chain}").context(advice)
}

/// How big each part of one upload is. S3 allows `max_parts` parts per upload, so a
/// fixed part size caps the object (8 MiB x 10,000 = 78 GiB) and a 1 TB blobstore would
/// fail after 78 GiB had been sent. With the object's size known in advance, the first
/// part size already fits it in 90% of the parts; past those (the estimate was low), or
/// from the start without one, the part size doubles every tenth of the parts left, which
/// reaches S3's 5 TiB object limit before the part limit. Memory grows only with the parts
/// an object needs.
#[derive(Debug, Clone)]
struct PartSizer {
    first: usize,
    max_parts: u64,
    /// Parts handed to the upload so far.
    sent: u64,
    /// Parts after which growth starts: the count the size hint planned for, or none.
    planned: u64,
}

impl PartSizer {
    fn new(base: usize, max_parts: u64, size_hint: Option<u64>) -> anyhow::Result<PartSizer> {
        let (mut first, mut planned) = (base, 0);
        if let Some(size) = size_hint {
            if size > S3_MAX_OBJECT.min(max_parts * S3_MAX_PART as u64) {
                anyhow::bail!("about {size} bytes cannot be one S3 object: the most is {S3_MAX_OBJECT} bytes (5 TiB)");
            }
            let parts = (max_parts * 9 / 10).max(1);
            first = first.max(size.div_ceil(parts) as usize).min(S3_MAX_PART);
            planned = parts;
        }
        Ok(PartSizer { first, max_parts, sent: 0, planned })
    }

    /// The size of the next part, once one of `current` bytes was handed over.
    fn next(&mut self, current: usize) -> usize {
        self.sent += 1;
        if self.sent < self.planned {
            return current;
        }
        let tier = (self.max_parts - self.planned).div_ceil(10).max(1);
        if (self.sent - self.planned).is_multiple_of(tier) { current.saturating_mul(2).min(S3_MAX_PART) } else { current }
    }

    /// The part being filled is the last one the upload may have.
    fn is_last(&self) -> bool {
        self.sent + 1 >= self.max_parts
    }
}

type StartFuture = BoxFuture<'static, object_store::Result<Box<dyn MultipartUpload>>>;
type Permit = Option<tokio::sync::OwnedSemaphorePermit>;

/// Uploads one part in the background, holding a place in the store's budget until done.
fn spawn_part(upload: &mut Box<dyn MultipartUpload>, data: PutPayload, permit: Permit) -> JoinHandle<object_store::Result<()>> {
    let fut = upload.put_part(data);
    tokio::spawn(async move {
        let r = fut.await;
        drop(permit);
        r
    })
}

enum State {
    /// Less than one part written: no request made yet.
    Buffering,
    /// The multipart upload is being created; `first` is the first part's data.
    Starting { fut: StartFuture, first: Option<(PutPayload, Permit)> },
    Uploading { upload: Box<dyn MultipartUpload>, parts: FuturesUnordered<JoinHandle<object_store::Result<()>>> },
    Failed(String),
    /// Committed or aborted.
    Finished,
}

struct S3Writer {
    pending_aborts: PendingAborts,
    /// The aborts this writer started (a failed part's), which its own abort waits for.
    own_aborts: Vec<AbortDone>,
    budget: tokio_util::sync::PollSemaphore,
    /// A place in the store's budget, acquired for the next part.
    permit: Permit,
    store: Arc<dyn ObjectStore>,
    config: S3Config,
    path: Path,
    /// The size of the part being filled (see [`PartSizer`]).
    part_size: usize,
    sizer: PartSizer,
    buf: Vec<u8>,
    state: State,
    size: u64,
    /// `shutdown` completed: every part is uploaded.
    closed: bool,
}

impl S3Writer {
    /// Records a failure and aborts what was started: once the sibling parts still uploading
    /// have ended, the multipart upload is aborted, so no parts stay in the bucket (billed,
    /// unseen) after an upload that can no longer commit.
    fn fail(&mut self, e: object_store::Error, doing: &str) -> io::Error {
        let err = explain(&self.config, e, doing);
        self.fail_with(format!("{err:#}"))
    }

    fn fail_with(&mut self, msg: String) -> io::Error {
        match std::mem::replace(&mut self.state, State::Failed(msg.clone())) {
            // The siblings are not cancelled: a cancelled request only stops the client, and
            // the server may still store the part after the abort (seen with s3s-fs under
            // load: a part left behind). Let them end, then abort.
            State::Uploading { upload, parts } => self.track_abort(abort_upload(upload, parts)),
            State::Starting { fut, .. } => self.track_abort(async move {
                if let Ok(mut u) = fut.await {
                    let _ = u.abort().await;
                }
            }),
            _ => {}
        }
        io::Error::other(msg)
    }

    /// Runs an abort in the background; [`S3Store::list`] and [`ObjectWriter::abort`] wait
    /// for it.
    fn track_abort(&mut self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let task = handle.spawn(fut);
        let done: AbortDone = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        let mut pending = self.pending_aborts.lock().unwrap();
        pending.retain(|h| h.peek().is_none());
        pending.push(done.clone());
        self.own_aborts.push(done);
    }

    /// Hands the full (or, at shutdown, final) buffer to the upload.
    fn take_part(&mut self) -> PutPayload {
        let data = std::mem::take(&mut self.buf);
        PutPayload::from(data)
    }

    /// Drives the upload: creates it if needed, reaps finished parts, sends `first`.
    /// Ready when the number of parts in flight is below `limit`.
    fn poll_progress(&mut self, cx: &mut TaskContext<'_>, limit: usize) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Failed(m) => return Poll::Ready(Err(io::Error::other(m.clone()))),
                State::Finished => return Poll::Ready(Err(io::Error::other("object already committed or aborted"))),
                State::Buffering => return Poll::Ready(Ok(())),
                State::Starting { fut, first } => match ready!(fut.poll_unpin(cx)) {
                    Ok(mut upload) => {
                        let parts = FuturesUnordered::new();
                        if let Some((p, permit)) = first.take() {
                            parts.push(spawn_part(&mut upload, p, permit));
                        }
                        self.state = State::Uploading { upload, parts };
                    }
                    Err(e) => return Poll::Ready(Err(self.fail(e, "starting a multipart upload"))),
                },
                State::Uploading { parts, .. } => {
                    while !parts.is_empty() {
                        match parts.poll_next_unpin(cx) {
                            Poll::Ready(Some(Ok(Ok(())))) => {}
                            Poll::Ready(Some(Ok(Err(e)))) => return Poll::Ready(Err(self.fail(e, "uploading a part"))),
                            Poll::Ready(Some(Err(join))) => {
                                let msg = format!("a part upload task failed: {join}");
                                self.state = State::Failed(msg.clone());
                                return Poll::Ready(Err(io::Error::other(msg)));
                            }
                            Poll::Ready(None) => break,
                            Poll::Pending => break,
                        }
                    }
                    let State::Uploading { parts, .. } = &self.state else { unreachable!() };
                    return if parts.len() < limit { Poll::Ready(Ok(())) } else { Poll::Pending };
                }
            }
        }
    }

    /// Ready once this writer holds a place in the store's budget for its next part.
    fn poll_permit(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.permit.is_none() {
            match self.budget.poll_acquire(cx) {
                Poll::Ready(p) => self.permit = p,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    fn send_part(&mut self) {
        let part = self.take_part();
        let permit = self.permit.take();
        self.part_size = self.sizer.next(self.part_size);
        match &mut self.state {
            State::Buffering => {
                let store = self.store.clone();
                let path = self.path.clone();
                let fut = async move { store.put_multipart_opts(&path, PutMultipartOptions::default()).await }.boxed();
                self.state = State::Starting { fut, first: Some((part, permit)) };
            }
            State::Uploading { upload, parts } => parts.push(spawn_part(upload, part, permit)),
            _ => unreachable!("send_part is only called when ready"),
        }
    }

    /// Aborts whatever was started, in the background (for `Drop`).
    fn abort_in_background(&mut self) {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Starting { fut, .. } => self.track_abort(async move {
                if let Ok(mut u) = fut.await {
                    let _ = u.abort().await;
                }
            }),
            State::Uploading { upload, parts } => self.track_abort(abort_upload(upload, parts)),
            _ => {}
        }
    }
}

/// Aborts a multipart upload. Parts still uploading are let finish first, for a bounded
/// time: a part that lands after the abort would stay in the bucket, billed and unseen. S3
/// may still take a part that was in flight during the abort, so the abort is sent twice,
/// as AWS advises.
async fn abort_upload(mut upload: Box<dyn MultipartUpload>, parts: FuturesUnordered<JoinHandle<object_store::Result<()>>>) {
    let _ = tokio::time::timeout(Duration::from_secs(60), parts.collect::<Vec<_>>()).await;
    if upload.abort().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = upload.abort().await;
    }
}

impl AsyncWrite for S3Writer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Err(io::Error::other("write after shutdown")));
        }
        // Backpressure: wait while the upload has as many parts in flight as allowed, and
        // while a full part waits for a place in the store's budget.
        ready!(this.poll_progress(cx, PARTS_IN_FLIGHT))?;
        if this.buf.len() == this.part_size {
            if this.sizer.is_last() {
                let msg = format!(
                    "{} does not fit in one S3 object: {} bytes in {} parts is the most an upload may hold",
                    this.path, this.size, this.sizer.max_parts
                );
                return Poll::Ready(Err(this.fail_with(msg)));
            }
            ready!(this.poll_permit(cx));
            this.send_part();
            ready!(this.poll_progress(cx, PARTS_IN_FLIGHT))?;
        }
        let room = this.part_size - this.buf.len();
        let n = room.min(data.len());
        if this.buf.capacity() < this.part_size && this.buf.len() + n > this.buf.capacity() {
            // Small objects stay small; a second write means a stream: take one whole part
            // at once (pages are only touched as they fill) rather than growing by copies.
            let want = if this.buf.is_empty() { n.max(64 * 1024) } else { this.part_size };
            this.buf.reserve_exact(want.min(this.part_size) - this.buf.len());
        }
        this.buf.extend_from_slice(&data[..n]);
        this.size += n as u64;
        if this.buf.len() == this.part_size && !this.sizer.is_last() && this.poll_permit(cx).is_ready() {
            this.send_part();
            // Start the request now rather than on the next write.
            if let Poll::Ready(Err(e)) = this.poll_progress(cx, usize::MAX) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        // Parts are sent whole; there is nothing to flush before shutdown.
        Poll::Ready(Ok(()))
    }

    /// Sends the last part and waits for every part: after this only `commit` remains.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &this.state {
                State::Buffering => {
                    // Smaller than one part: sent by a single PUT on commit.
                    this.closed = true;
                    return Poll::Ready(Ok(()));
                }
                State::Starting { .. } => {
                    ready!(this.poll_progress(cx, usize::MAX))?;
                }
                State::Uploading { .. } => {
                    if !this.buf.is_empty() {
                        ready!(this.poll_permit(cx));
                        this.send_part();
                    }
                    ready!(this.poll_progress(cx, 1))?;
                    this.closed = true;
                    return Poll::Ready(Ok(()));
                }
                State::Failed(m) => return Poll::Ready(Err(io::Error::other(m.clone()))),
                State::Finished => return Poll::Ready(Err(io::Error::other("object already committed or aborted"))),
            }
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        self.abort_in_background();
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn commit(mut self: Box<Self>) -> anyhow::Result<u64> {
        if !self.closed {
            tokio::io::AsyncWriteExt::shutdown(&mut *self).await.context("finishing the upload")?;
        }
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Buffering => {
                let payload = self.take_part();
                self.store
                    .put_opts(&self.path, payload, PutOptions::default())
                    .await
                    .map_err(|e| explain(&self.config, e, &format!("storing {}", self.path)))?;
            }
            State::Uploading { mut upload, .. } => {
                if let Err(e) = upload.complete().await {
                    let _ = upload.abort().await;
                    return Err(explain(&self.config, e, &format!("completing the upload of {}", self.path)));
                }
            }
            State::Failed(m) => return Err(anyhow!(m)),
            State::Starting { .. } | State::Finished => anyhow::bail!("object {} is not ready to commit", self.path),
        }
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) {
        // An abort a failure already started: wait for it, so the caller knows the bucket
        // holds nothing of this object when this returns. Only this writer's: another
        // writer's abort is its own caller's (and the next listing's) to wait for.
        let started = std::mem::take(&mut self.own_aborts);
        let _ = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(started)).await;
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Starting { fut, .. } => {
                if let Ok(Ok(mut u)) = tokio::time::timeout(Duration::from_secs(30), fut).await {
                    let _ = u.abort().await;
                }
            }
            State::Uploading { upload, parts } => abort_upload(upload, parts).await,
            _ => {}
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.config.describe()
    }

    async fn preflight(&self) -> anyhow::Result<()> {
        let prefix = if self.config.prefix.is_empty() { None } else { Some(Path::parse(&self.config.prefix)?) };
        self.inner
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| self.explain(e, &format!("listing {}", self.describe())))?;
        Ok(())
    }

    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        self.create_sized(key, None).await
    }

    async fn create_sized(&self, key: &str, size_hint: Option<u64>) -> anyhow::Result<Box<dyn ObjectWriter>> {
        let path = self.path(key)?;
        let sizer = PartSizer::new(self.part_size, self.max_parts, size_hint)
            .with_context(|| format!("storing {key} in {}", self.describe()))?;
        Ok(Box::new(S3Writer {
            pending_aborts: self.pending_aborts.clone(),
            own_aborts: Vec::new(),
            budget: tokio_util::sync::PollSemaphore::new(self.parts_budget.clone()),
            permit: None,
            store: self.inner.clone(),
            config: self.config.clone(),
            path,
            part_size: sizer.first,
            sizer,
            buf: Vec::new(),
            state: State::Buffering,
            size: 0,
            closed: false,
        }))
    }

    async fn put_if_absent(&self, key: &str, data: &[u8]) -> anyhow::Result<bool> {
        // `If-None-Match: *` (AWS since 2024, MinIO, Ceph): the server refuses the put if
        // the key exists, so of two writers exactly one succeeds.
        let path = self.path(key)?;
        let opts = PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&path, data.to_vec().into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.explain(e, &format!("creating {key}"))),
        }
    }

    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>> {
        let path = self.path(key)?;
        match self.reads.open(&path).await {
            Ok(stream) => {
                let config = self.config.clone();
                let key = key.to_string();
                let stream = stream.map_err(move |e| {
                    let e = match e {
                        object_store::Error::Precondition { .. } => anyhow!(
                            "{key} was replaced in the bucket while it was read ({}): nothing read from it is used; read it again",
                            config.describe()
                        ),
                        e => explain(&config, e, &format!("reading {key}")),
                    };
                    io::Error::other(format!("{e:#}"))
                });
                Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
            }
            Err(object_store::Error::NotFound { .. }) => Err(NotFound { key: key.to_string(), store: self.describe() }.into()),
            Err(e) => Err(self.explain(e, &format!("opening {key}"))),
        }
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.settle().await;
        // object_store lists whole path segments: list the directory part of the prefix
        // and filter on the rest.
        let full = self.full_key(prefix);
        let dir = match full.rfind('/') {
            Some(i) => &full[..i],
            None if self.config.prefix.is_empty() => "",
            None => &full[..0],
        };
        let dir_path = if dir.is_empty() { None } else { Some(Path::parse(dir).map_err(|e| anyhow!("invalid prefix {prefix:?}: {e}"))?) };
        let mut out: Vec<ObjectInfo> = self
            .inner
            .list(dir_path.as_ref())
            .map_err(|e| self.explain(e, &format!("listing {}", self.describe())))
            .try_filter_map(|meta| {
                let key = self.store_key(meta.location.as_ref()).map(str::to_string);
                futures::future::ready(Ok(key.filter(|k| k.starts_with(prefix)).map(|key| ObjectInfo { key, size: meta.size })))
            })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn abort_open_uploads(&self, prefix: &str, keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync)) -> anyhow::Result<usize> {
        use object_store::multipart::MultipartStore;
        self.settle().await;
        let mut aborted = 0;
        for u in super::s3_uploads::list(&self.s3, &self.http, &self.full_key(prefix)).await.with_context(|| self.describe())? {
            let Some(key) = self.store_key(&u.key) else { continue };
            if keep(key) {
                continue;
            }
            let path = Path::parse(&u.key).map_err(|e| anyhow!("invalid key {:?} of an open upload: {e}", u.key))?;
            match self.s3.abort_multipart(&path, &u.upload_id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => aborted += 1,
                Err(e) => return Err(self.explain(e, &format!("aborting the open upload of {key}"))),
            }
        }
        Ok(aborted)
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.explain(e, &format!("deleting {key}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes the parts of an upload can hold, part by part as the writer asks.
    fn capacity(mut s: PartSizer) -> u64 {
        let (mut size, mut total) = (s.first, 0u64);
        while !s.is_last() {
            total += size as u64;
            size = s.next(size);
        }
        total + size as u64
    }

    #[test]
    fn without_keys_the_machine_role_is_used_only_when_enabled() {
        let mut c = S3Config { bucket: "backups".into(), region_name: Some("us-east-1".into()), ..Default::default() };
        let e = format!("{:#}", S3Store::new(&c).unwrap_err());
        assert!(e.contains("no S3 credentials") && e.contains("enable_aws_creds_provider"), "{e}");
        c.enable_aws_creds_provider = true;
        S3Store::new(&c).unwrap();
    }

    #[test]
    fn parts_grow_so_any_object_up_to_5_tib_fits() {
        let mib = 1024 * 1024;
        let unsized_ = PartSizer::new(16 * mib, S3_MAX_PARTS, None).unwrap();
        assert!(capacity(unsized_) >= S3_MAX_OBJECT, "without a hint the parts must still reach 5 TiB");
        let one_tb = 1_000_000_000_000u64;
        let sized = PartSizer::new(16 * mib, S3_MAX_PARTS, Some(one_tb)).unwrap();
        assert!(sized.first < 128 * mib && sized.first as u64 * 9000 >= one_tb, "{}", sized.first);
        assert!(PartSizer::new(16 * mib, S3_MAX_PARTS, Some(S3_MAX_OBJECT + 1)).is_err());
        // A small object keeps the configured part size.
        assert_eq!(PartSizer::new(16 * mib, S3_MAX_PARTS, Some(100 * mib as u64)).unwrap().first, 16 * mib);
    }
    #[test]
    fn ip_and_single_label_endpoints_use_path_style() {
        use super::endpoint_needs_path_style as p;
        for e in ["http://127.0.0.1:9000", "https://10.0.0.9", "http://[::1]:9000", "http://minio:9000", "http://localhost:9000/", "http://user:pw@192.168.1.5:9000"] {
            assert!(p(e), "{e}");
        }
        for e in ["https://s3.eu-west-1.amazonaws.com", "https://minio.example.com:9000", "storage.googleapis.com"] {
            assert!(!p(e), "{e}");
        }
    }
}
