//! UAA tokens for the HTTP APIs lockstep calls: the BOSH director's (client credentials)
//! and Ops Manager's (client credentials, or a user's password through Ops Manager's own
//! `opsman` client, as `om` does). A run can outlast a token (UAA's lifetimes are short),
//! so a [`Uaa`] renews its token a minute before it expires, and again on request when an
//! API refuses it anyway.

use crate::transport::ssh::Secret;
use anyhow::{anyhow, bail, Context};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How a token is asked for.
#[derive(Clone)]
pub enum Grant {
    /// `grant_type=client_credentials`, the client's id and secret as HTTP basic auth.
    ClientCredentials { client: String, secret: Secret },
    /// `grant_type=password` for a user, through `client` (with an empty secret, as
    /// Ops Manager's `opsman` client has).
    Password { client: String, username: String, password: Secret },
}

impl Grant {
    /// Who the credentials are, for messages (never the secret).
    fn who(&self) -> String {
        match self {
            Grant::ClientCredentials { client, .. } => format!("client '{client}'"),
            Grant::Password { username, .. } => format!("user '{username}'"),
        }
    }
}

pub struct Token {
    pub value: Secret,
    /// When to stop using it: a minute before UAA's `expires_in` (at half its life when
    /// that is shorter), if it gave one.
    renew_at: Option<Instant>,
}

/// A token endpoint, the grant for it, and the token it last gave.
pub struct Uaa {
    token_url: Url,
    grant: Grant,
    /// What to check when UAA refuses the credentials (the flags or variables that gave them).
    advice: String,
    token: tokio::sync::Mutex<Token>,
}

impl Uaa {
    /// Gets a first token, so that wrong credentials fail before anything else happens.
    pub async fn login(http: &reqwest::Client, token_url: Url, grant: Grant, advice: impl Into<String>) -> anyhow::Result<Uaa> {
        let advice = advice.into();
        let token = fetch(http, &token_url, &grant, &advice).await?;
        Ok(Uaa { token_url, grant, advice, token: tokio::sync::Mutex::new(token) })
    }

    /// The current token, renewed first if it is about to expire (or `force`).
    pub async fn token(&self, http: &reqwest::Client, force: bool) -> anyhow::Result<Secret> {
        let mut t = self.token.lock().await;
        if force || t.renew_at.is_some_and(|at| Instant::now() >= at) {
            *t = fetch(http, &self.token_url, &self.grant, &self.advice).await.context("renewing the UAA token")?;
        }
        Ok(t.value.clone())
    }
}

/// `POST <token_url>` for one token.
pub async fn fetch(http: &reqwest::Client, url: &Url, grant: &Grant, advice: &str) -> anyhow::Result<Token> {
    let (client, secret, body) = match grant {
        Grant::ClientCredentials { client, secret } => (client.as_str(), secret.expose(), "grant_type=client_credentials".to_string()),
        Grant::Password { client, username, password } => (
            client.as_str(),
            "",
            format!("grant_type=password&username={}&password={}", form_encode(username), form_encode(password.expose())),
        ),
    };
    let resp = http
        .post(url.clone())
        .basic_auth(client, Some(secret))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow!("UAA {url} unreachable: {}", error_chain(&e)))?;
    let status = resp.status();
    let who = grant.who();
    if status == StatusCode::UNAUTHORIZED || (status == StatusCode::BAD_REQUEST && matches!(grant, Grant::Password { .. })) {
        // UAA answers a wrong user password with 401, sometimes 400 (invalid_grant).
        bail!("UAA {url} rejected the credentials of {who} ({status}): check {advice}");
    }
    if !status.is_success() {
        bail!("UAA {url}: getting a token for {who} failed: {status}");
    }
    let v: Value = resp.json().await.with_context(|| format!("UAA {url}: invalid token response"))?;
    let token = v.get("access_token").and_then(Value::as_str).ok_or_else(|| anyhow!("UAA {url}: the token response has no access_token"))?;
    let renew_at = v.get("expires_in").and_then(Value::as_u64).map(|secs| Instant::now() + Duration::from_secs(secs - 60.min(secs / 2)));
    Ok(Token { value: Secret::new(token), renew_at })
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// An error with its causes, for messages (reqwest's own Display hides them).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_values_are_encoded() {
        assert_eq!(super::form_encode("a b&c=d+é"), "a%20b%26c%3Dd%2B%C3%A9");
    }
}
