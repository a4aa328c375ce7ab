//! s3-resource's `aws_role_arn`: the store works with a role's temporary credentials,
//! obtained with STS `AssumeRole` signed with the configured keys and renewed before they
//! expire. (`object_store` assumes roles only through a web-identity token.)
//!
//! The STS endpoint is the store's `endpoint` when one is given (MinIO and other
//! S3-compatible servers answer STS there), else AWS's regional one.

use super::s3_uploads::element;
use super::url::S3Config;
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::CredentialProvider;
use std::sync::Arc;
use std::time::Duration;

/// Credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Asked for each time; STS's default and the least every role allows.
const SESSION_SECONDS: u64 = 3600;

pub struct AssumedRole {
    role_arn: String,
    base: AwsCredential,
    region: String,
    sts: String,
    http: reqwest::Client,
    current: tokio::sync::Mutex<Option<(Arc<AwsCredential>, DateTime<Utc>)>>,
}

impl std::fmt::Debug for AssumedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumedRole").field("role_arn", &self.role_arn).field("sts", &self.sts).finish_non_exhaustive()
    }
}

impl AssumedRole {
    pub fn new(c: &S3Config, role_arn: &str, http: reqwest::Client) -> anyhow::Result<Self> {
        let (Some(key_id), Some(secret_key)) = (&c.access_key_id, &c.secret_access_key) else {
            bail!(
                "aws_role_arn needs access_key_id and secret_access_key to assume the role with (assuming it from the \
                 machine's own credentials is not supported: use its role directly with enable_aws_creds_provider: true)"
            );
        };
        let region = c.region_name.clone().unwrap_or_else(|| "us-east-1".to_string());
        let sts = match &c.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://sts.{region}.amazonaws.com"),
        };
        let base = AwsCredential { key_id: key_id.clone(), secret_key: secret_key.clone(), token: c.session_token.clone() };
        Ok(AssumedRole { role_arn: role_arn.to_string(), base, region, sts, http, current: Default::default() })
    }

    async fn assume(&self) -> anyhow::Result<(AwsCredential, DateTime<Utc>)> {
        let mut url = reqwest::Url::parse(&format!("{}/", self.sts)).with_context(|| format!("the STS endpoint {}", self.sts))?;
        url.query_pairs_mut()
            .append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &format!("lockstep-{}", std::process::id()))
            .append_pair("DurationSeconds", &SESSION_SECONDS.to_string());
        let mut request = HttpRequest::new(HttpRequestBody::empty());
        *request.uri_mut() = url.as_str().parse().map_err(|e| anyhow!("the STS URL {url}: {e}"))?;
        AwsAuthorizer::new(&self.base, "sts", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| anyhow!("signing the AssumeRole request: {e}"))?;
        let mut send = self.http.get(url.as_str());
        for (name, value) in request.headers() {
            send = send.header(name.as_str(), value.as_bytes());
        }
        let answer = send.send().await.with_context(|| format!("reaching STS at {}", self.sts))?;
        let status = answer.status();
        let body = answer.text().await.context("reading STS's answer")?;
        if !status.is_success() {
            bail!("STS refused: {status}: {}", element(&body, "Message").unwrap_or_else(|| "no message".into()));
        }
        let field = |name: &str| element(&body, name).ok_or_else(|| anyhow!("STS's answer has no {name}"));
        let expires = field("Expiration")?;
        let expires = DateTime::parse_from_rfc3339(&expires).map_err(|e| anyhow!("STS's Expiration {expires:?}: {e}"))?.with_timezone(&Utc);
        let credential = AwsCredential { key_id: field("AccessKeyId")?, secret_key: field("SecretAccessKey")?, token: Some(field("SessionToken")?) };
        Ok((credential, expires))
    }
}

#[async_trait]
impl CredentialProvider for AssumedRole {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut current = self.current.lock().await;
        let renew_at = Utc::now() + chrono::Duration::from_std(RENEW_BEFORE).unwrap_or_default();
        if let Some((c, expires)) = current.as_ref()
            && *expires > renew_at
        {
            return Ok(c.clone());
        }
        let (c, expires) = self.assume().await.map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: format!("assuming the role {}: {e:#}", self.role_arn).into(),
        })?;
        let c = Arc::new(c);
        *current = Some((c.clone(), expires));
        Ok(c)
    }
}
