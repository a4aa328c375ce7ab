//! A protocol double of Ops Manager's API and its UAA, over real TLS ([`super::https`]).
//!
//! The endpoints and answers are those of the Ops Manager API documentation and of the
//! calls `om curl` makes in pivotal-cf/bbr-pcf-pipeline-tasks (`scripts/export-director-metadata`):
//!
//! - `POST /uaa/oauth/token`: the password grant through the `opsman` client (HTTP basic
//!   `opsman:` with an empty secret, as `om` sends it) or the client-credentials grant;
//!   `401 {"error": "unauthorized"}` for wrong credentials.
//! - `GET /api/v0/deployed/products`: `[{installation_name, guid, type, product_version}]`.
//! - `GET /api/v0/deployed/products/:guid/static_ips`: `[{name, ips: [...]}]`.
//! - `GET /api/v0/deployed/director/credentials/uaa_bbr_client_credentials` and
//!   `.../bbr_ssh_credentials`: `{"credential": {"type": ..., "value": {...}}}`; 404 when
//!   the credential does not exist (an older Ops Manager has no BBR client).
//! - `GET /api/v0/deployed/director/manifest`: the director's manifest (`jobs[name=bosh]`).
//! - `GET /api/v0/certificate_authorities`: `{"certificate_authorities": [{guid, issuer,
//!   created_on, expires_on, active, cert_pem}]}`.
//! - `GET /api/v0/installations`: `{"installations": [{id, user_name, status, started_at,
//!   finished_at}]}`, newest first.
//!
//! Every `/api/` call needs a token the double issued and that has not expired (tests can
//! shorten the lifetime the double accepts while it announces a long one, so only a
//! client that renews on a 401 gets through). Every call is logged; anything else is
//! recorded as unexpected.
//!
//! An **unconfigured** Ops Manager (a fresh VM, `Spec::configured` false) answers as `om
//! import-installation` expects (pivotal-cf/om `api/setup_service.go` and its test
//! fixtures, `acceptance/import_installation_test.go`):
//!
//! - `GET /login/ensure_availability`, unauthenticated: `302` to `/setup` while fresh; after
//!   an import, `200` "Waiting for authentication system to start..." for
//!   `Spec::import_polls` calls, then `302` to `/auth/cloudfoundry` (configured), which is
//!   also what a configured Ops Manager answers.
//! - `POST /api/v0/installation_asset_collection`, unauthenticated, `multipart/form-data`
//!   with the file part `installation[file]` and the field `passphrase`: the file is hashed
//!   as it arrives (sha256 and size recorded, never held); `200 {}` when the passphrase is
//!   the installation's and the file is a zip. A wrong passphrase is `422` with the API's
//!   nested-errors shape; Ops Manager's reference names no answer for it, so the status and
//!   message are the double's choice. A body cut short is counted and never imported. On a
//!   configured Ops Manager the POST is `401` and recorded as unexpected.
//! - Until an import finishes, the UAA answers `503` and `/api/` calls `400` "Setup is not
//!   completed" (the API's `RequireSetupCompleted`).

use super::https::{b64, hex, json, Answer, Handler, Https, Request, Response};
use sha2::{Digest, Sha256};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Spec {
    pub user: (String, String),
    pub client: (String, String),
    pub director_ip: String,
    /// `None`: the BBR client credential does not exist (404), as on older Ops Managers.
    pub bbr_client: Option<(String, String)>,
    /// The director manifest's `ops_manager` client secret (the fallback).
    pub ops_manager_secret: String,
    /// `(cert_pem, active)`
    pub cas: Vec<(String, bool)>,
    pub bbr_ssh_key: String,
    /// `(type, guid)`
    pub products: Vec<(String, String)>,
    /// `(id, status, user)`, newest first.
    pub installations: Vec<(u64, String, String)>,
    /// The size of the data in `installation.zip` (one stored entry).
    pub export_size: usize,
    /// Cut the export's connection after this many bytes (a dropped download).
    pub export_cut_after: Option<usize>,
    /// Announce the export's length (as Ops Manager does); else send it chunked.
    pub export_length: bool,
    /// Set up already; false: a fresh VM waiting for its setup or an import.
    pub configured: bool,
    /// The decryption passphrase an import must come with.
    pub passphrase: String,
    /// `ensure_availability` calls answered "Waiting for authentication system..." after
    /// an import, before Ops Manager is configured.
    pub import_polls: usize,
}

impl Spec {
    /// A platform with a director, the runtime and an isolation segment.
    pub fn platform(bbr_ssh_key: &str) -> Spec {
        Spec {
            user: ("admin".into(), "admin pass\"word&=".into()),
            client: ("lockstep-backups".into(), "client-secret-1".into()),
            director_ip: "10.0.0.6".into(),
            bbr_client: Some(("bbr_client".into(), "bbr-client-secret".into())),
            ops_manager_secret: "ops-manager-secret".into(),
            cas: vec![("-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----".into(), false), ("-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----".into(), true)],
            bbr_ssh_key: bbr_ssh_key.into(),
            products: vec![
                ("p-bosh".into(), "p-bosh-5a1d2c3e4f".into()),
                ("cf".into(), "cf-9f8e7d6c5b4a".into()),
                ("p-isolation-segment".into(), "p-isolation-segment-0a1b2c3d".into()),
            ],
            installations: vec![(7, "succeeded".into(), "admin".into()), (6, "failed".into(), "admin".into())],
            export_size: 1 << 20,
            export_cut_after: None,
            export_length: true,
            configured: true,
            passphrase: "the passphrase: \"&=+ \u{263a}".into(),
            import_polls: 2,
        }
    }

    /// A fresh Ops Manager VM that will take `platform`'s installation.
    pub fn unconfigured(platform: &Spec) -> Spec {
        Spec { configured: false, ..platform.clone() }
    }
}

/// An installation a fresh Ops Manager took.
#[derive(Debug, Clone)]
pub struct Import {
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Default)]
struct State {
    calls: Vec<String>,
    unexpected: Vec<String>,
    /// token -> issued at
    tokens: Vec<(String, Instant)>,
    /// How long a token is accepted, and the `expires_in` announced.
    token_life: (Duration, u64),
    /// sha256 of each export served whole.
    served: Vec<String>,
    imports: Vec<Import>,
    /// Import uploads whose body was cut short.
    cut_uploads: usize,
    /// After an import: `ensure_availability` calls left before it is configured.
    importing: Option<usize>,
}

pub struct OpsMan {
    pub url: String,
    pub ca_pem: String,
    spec: Arc<Mutex<Spec>>,
    state: Arc<Mutex<State>>,
    _https: Https,
}

impl OpsMan {
    pub fn start(spec: Spec) -> OpsMan {
        let spec = Arc::new(Mutex::new(spec));
        let state = Arc::new(Mutex::new(State { token_life: (Duration::from_secs(3600), 3600), ..State::default() }));
        let (sp, st) = (spec.clone(), state.clone());
        let https = Https::start_streaming("lockstep-opsman-", "lockstep test Ops Manager CA", move |url| {
            let url = url.to_string();
            Arc::new(move |req: &Request| {
                if (req.method.as_str(), req.path.as_str()) == ("GET", "/api/v0/installation_asset_collection") && authorized(&st, req) {
                    st.lock().unwrap().calls.push(format!("{} {}", req.method, req.path));
                    let spec = sp.lock().unwrap().clone();
                    let len = spec.export_length.then(|| zip_len(spec.export_size) as u64);
                    let headers = vec![("Content-Type".into(), "application/zip".into())];
                    let st = st.clone();
                    return Answer::Stream(
                        "200 OK",
                        headers,
                        len,
                        Box::new(move |w| {
                            let mut hashed = HashingWrite(w, Sha256::new());
                            write_zip(&mut hashed, spec.export_size, spec.export_cut_after)?;
                            st.lock().unwrap().served.push(hex(&hashed.1.finalize()));
                            Ok(())
                        }),
                    );
                }
                Answer::Whole(handle(&sp, &st, &url, req))
            }) as Handler
        });
        OpsMan { url: https.url.clone(), ca_pem: https.ca_pem.clone(), spec, state, _https: https }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.state.lock().unwrap().unexpected.clone()
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.lock().unwrap().tokens.len()
    }

    /// Tokens issued from now on are accepted for `accepted`, announced as `expires_in`.
    pub fn set_token_life(&self, accepted: Duration, announced: u64) {
        self.state.lock().unwrap().token_life = (accepted, announced);
    }

    pub fn edit(&self, f: impl FnOnce(&mut Spec)) {
        f(&mut self.spec.lock().unwrap());
    }

    /// The sha256 of each installation export served whole, as the double sent it.
    pub fn served(&self) -> Vec<String> {
        self.state.lock().unwrap().served.clone()
    }

    /// The installations imported (received whole, with the right passphrase).
    pub fn imports(&self) -> Vec<Import> {
        self.state.lock().unwrap().imports.clone()
    }

    /// Import uploads that stopped before their end.
    pub fn cut_uploads(&self) -> usize {
        self.state.lock().unwrap().cut_uploads
    }

    pub fn configured(&self) -> bool {
        self.spec.lock().unwrap().configured
    }

    /// Requests with a body announced longer than `bytes` get `413` from their head alone,
    /// as Ops Manager's nginx answers past its `client_max_body_size`.
    pub fn set_upload_limit(&self, bytes: u64) {
        self._https.max_body.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Hashes what passes on its way to the client.
struct HashingWrite<'a>(&'a mut dyn std::io::Write, Sha256);

impl std::io::Write for HashingWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `application/x-www-form-urlencoded` → pairs.
fn form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00"), 16).unwrap_or(0));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body).split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

fn handle(spec_lock: &Mutex<Spec>, state: &Mutex<State>, url: &str, req: &Request) -> Response {
    let call = format!("{} {}", req.method, req.path);
    state.lock().unwrap().calls.push(call.clone());
    let spec = spec_lock.lock().unwrap().clone();
    let unexpected = |why: &str| {
        state.lock().unwrap().unexpected.push(format!("{call}: {why}"));
        json("404 Not Found", json!({"errors": {"base": [format!("unexpected request {call}")]}}))
    };
    if req.too_large {
        return ("413 Request Entity Too Large", vec![("Content-Type".into(), "text/html".into())], "<html><center><h1>413 Request Entity Too Large</h1></center><hr><center>nginx</center></html>".into());
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/login/ensure_availability") => return availability(spec_lock, state, url),
        ("POST", "/api/v0/installation_asset_collection") if !spec.configured => return import(spec_lock, state, req),
        ("POST", "/api/v0/installation_asset_collection") => {
            unexpected("an import into a configured Ops Manager");
            return json("401 Unauthorized", json!({"error": "invalid_token", "error_description": "Full authentication is required"}));
        }
        (_, "/uaa/oauth/token") if !spec.configured => return json("503 Service Unavailable", json!({"error": "the authentication system is not set up"})),
        (_, p) if !spec.configured && p.starts_with("/api/") => return json("400 Bad Request", json!({"errors": {"errors": ["Setup is not completed"]}})),
        _ => {}
    }
    let auth = req.headers.get("authorization").cloned().unwrap_or_default();
    if (req.method.as_str(), req.path.as_str()) == ("POST", "/uaa/oauth/token") {
        let f = form(&req.body);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let ok = match get("grant_type") {
            Some("password") => auth == format!("Basic {}", b64("opsman:")) && get("username") == Some(&spec.user.0) && get("password") == Some(&spec.user.1),
            Some("client_credentials") => auth == format!("Basic {}", b64(&format!("{}:{}", spec.client.0, spec.client.1))),
            _ => return unexpected("unknown grant"),
        };
        if !ok {
            return json("401 Unauthorized", json!({"error": "unauthorized", "error_description": "Bad credentials"}));
        }
        let mut st = state.lock().unwrap();
        let token = format!("om-token-{}", st.tokens.len());
        st.tokens.push((token.clone(), Instant::now()));
        return json("200 OK", json!({"access_token": token, "token_type": "bearer", "expires_in": st.token_life.1, "scope": "opsman.admin", "jti": "x"}));
    }
    if !authorized(state, req) {
        return json("401 Unauthorized", json!({"error": "invalid_token", "error_description": "Invalid access token"}));
    }
    let credential = |kind: &str, value: Value| json("200 OK", json!({"credential": {"type": kind, "value": value}}));
    let not_found = || json("404 Not Found", json!({"errors": {"credential": ["not found"]}}));
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/v0/deployed/products") => json(
            "200 OK",
            Value::Array(spec.products.iter().map(|(t, g)| json!({"installation_name": g, "guid": g, "type": t, "product_version": "4.0.1"})).collect()),
        ),
        ("GET", p) if p.starts_with("/api/v0/deployed/products/") && p.ends_with("/static_ips") => {
            let guid = &p["/api/v0/deployed/products/".len()..p.len() - "/static_ips".len()];
            match spec.products.iter().find(|(_, g)| g == guid) {
                Some((t, _)) if t == "p-bosh" => json("200 OK", json!([{"name": "director", "ips": [spec.director_ip]}])),
                Some(_) => json("200 OK", json!([])),
                None => json("404 Not Found", json!({"errors": {"product": ["not found"]}})),
            }
        }
        ("GET", "/api/v0/deployed/director/credentials/uaa_bbr_client_credentials") => match &spec.bbr_client {
            Some((id, secret)) => credential("simple_credentials", json!({"identity": id, "password": secret})),
            None => not_found(),
        },
        ("GET", "/api/v0/deployed/director/credentials/bbr_ssh_credentials") => {
            credential("rsa_pkey_credentials", json!({"private_key_pem": spec.bbr_ssh_key, "public_key_pem": "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----"}))
        }
        ("GET", "/api/v0/deployed/director/manifest") => json(
            "200 OK",
            json!({"name": "p-bosh", "jobs": [{"name": "bosh", "properties": {
                "uaa": {"clients": {"ops_manager": {"secret": spec.ops_manager_secret}}},
                "director": {"address": spec.director_ip, "config_server": {"ca_cert": spec.cas.last().map(|c| c.0.clone())}}}}]}),
        ),
        ("GET", "/api/v0/certificate_authorities") => json(
            "200 OK",
            json!({"certificate_authorities": spec.cas.iter().enumerate().map(|(i, (pem, active))| json!({
                "guid": format!("ca-{i}"), "issuer": "Pivotal", "created_on": "2026-01-01T00:00:00Z",
                "expires_on": "2030-01-01T00:00:00Z", "active": active, "cert_pem": pem})).collect::<Vec<_>>()}),
        ),
        ("GET", "/api/v0/installations") => json(
            "200 OK",
            json!({"installations": spec.installations.iter().map(|(id, status, user)| json!({
                "id": id, "user_name": user, "status": status, "started_at": "2026-12-06T20:00:00.000Z",
                "finished_at": if status == "running" { Value::Null } else { json!("2026-12-06T20:30:00.000Z") },
                "additions": [], "deletions": [], "updates": []})).collect::<Vec<_>>()}),
        ),
        _ => unexpected("not an endpoint of the double"),
    }
}

/// `/login/ensure_availability`: where a browser would be sent.
fn availability(spec: &Mutex<Spec>, state: &Mutex<State>, url: &str) -> Response {
    let redirect = |to: &str| ("302 Found", vec![("Location".to_string(), format!("{url}{to}"))], String::new());
    let mut sp = spec.lock().unwrap();
    if sp.configured {
        return redirect("/auth/cloudfoundry");
    }
    let mut st = state.lock().unwrap();
    match st.importing {
        None => redirect("/setup"),
        Some(0) => {
            sp.configured = true;
            st.importing = None;
            redirect("/auth/cloudfoundry")
        }
        Some(n) => {
            st.importing = Some(n - 1);
            ("200 OK", vec![("Content-Type".into(), "text/html".into())], "<html><body>Waiting for authentication system to start...</body></html>".into())
        }
    }
}

/// `POST /api/v0/installation_asset_collection` on a fresh Ops Manager.
fn import(spec: &Mutex<Spec>, state: &Mutex<State>, req: &Request) -> Response {
    let refuse = |what: &str, why: &str| json("422 Unprocessable Entity", json!({"errors": {what: [why]}}));
    let Some(form) = &req.form else { return refuse("installation", "expected a multipart/form-data upload") };
    let mut st = state.lock().unwrap();
    if form.cut {
        st.cut_uploads += 1;
        return refuse("installation", "the upload ended early");
    }
    if st.importing.is_some() {
        return refuse("installation", "an import is under way");
    }
    let Some(file) = form.files.iter().find(|f| f.field == "installation[file]") else { return refuse("installation", "no installation[file] part") };
    let passphrase = form.fields.iter().find(|(k, _)| k == "passphrase").map(|(_, v)| v.as_str());
    let sp = spec.lock().unwrap();
    if passphrase != Some(sp.passphrase.as_str()) {
        return json("422 Unprocessable Entity", json!({"errors": {"errors": ["Decryption passphrase is incorrect: the installation cannot be decrypted with it"]}}));
    }
    if !file.head.starts_with(b"PK\x03\x04") {
        return refuse("installation", "the installation file is not a zip");
    }
    st.imports.push(Import { filename: file.filename.clone(), size: file.size, sha256: file.sha256.clone() });
    st.importing = Some(sp.import_polls);
    json("200 OK", json!({}))
}

/// The request carries a token the double issued that has not expired.
fn authorized(state: &Mutex<State>, req: &Request) -> bool {
    let auth = req.headers.get("authorization").cloned().unwrap_or_default();
    let st = state.lock().unwrap();
    let life = st.token_life.0;
    auth.strip_prefix("Bearer ").is_some_and(|t| st.tokens.iter().any(|(k, at)| k == t && at.elapsed() < life))
}

/// The bytes of the export's one entry: the same for the same size, so a test can hash them.
pub fn export_data(size: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    (0..size).step_by(64 * 1024).map(move |at| {
        let n = (at + 64 * 1024).min(size) - at;
        let mut chunk = Vec::with_capacity(n + 8);
        while chunk.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        chunk.truncate(n);
        chunk
    })
}

fn crc32(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const ZIP_NAME: &[u8] = b"installation.json";

/// The length of [`write_zip`]'s zip: local header, data, data descriptor, central
/// directory entry, end record.
pub fn zip_len(size: usize) -> usize {
    30 + ZIP_NAME.len() + size + 16 + 46 + ZIP_NAME.len() + 22
}

/// The zip's bytes, whole (for small sizes): what a client should have received.
pub fn zip_bytes(size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    write_zip(&mut v, size, None).unwrap();
    v
}

/// `installation.zip` as Ops Manager sends it, streamed: one stored entry whose CRC and
/// sizes follow its data (a data descriptor), then the central directory and its end
/// record. With `cut_after`, fails after that many bytes, as a dropped connection.
fn write_zip(w: &mut dyn std::io::Write, size: usize, cut_after: Option<usize>) -> std::io::Result<()> {
    let name = ZIP_NAME;
    let mut out: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut send = |w: &mut dyn std::io::Write, bytes: &[u8]| -> std::io::Result<()> {
        if let Some(cut) = cut_after
            && sent + bytes.len() > cut
        {
            w.write_all(&bytes[..cut - sent])?;
            w.flush()?;
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "cut on purpose"));
        }
        sent += bytes.len();
        w.write_all(bytes)
    };
    let le16 = |v: u16| v.to_le_bytes();
    let le32 = |v: u32| v.to_le_bytes();
    // Local file header: version 20, flag 8 (data descriptor), stored.
    for part in [&le32(0x0403_4b50)[..], &le16(20), &le16(8), &le16(0), &le16(0), &le16(0), &le32(0), &le32(0), &le32(0), &le16(name.len() as u16), &le16(0), name] {
        out.extend_from_slice(part);
    }
    send(w, &out)?;
    let header_len = out.len();
    let mut crc = 0u32;
    // Large chunks for a fast test; still many chunks for a large export.
    let mut buf = Vec::with_capacity(1 << 20);
    for chunk in export_data(size) {
        crc = crc32(crc, &chunk);
        buf.extend_from_slice(&chunk);
        if buf.len() >= 1 << 20 {
            send(w, &buf)?;
            buf.clear();
        }
    }
    send(w, &buf)?;
    out.clear();
    for part in [&le32(0x0807_4b50)[..], &le32(crc), &le32(size as u32), &le32(size as u32)] {
        out.extend_from_slice(part);
    }
    let cd_offset = header_len + size + out.len();
    let cd_start = out.len();
    for part in [
        &le32(0x0201_4b50)[..], &le16(20), &le16(20), &le16(8), &le16(0), &le16(0), &le16(0), &le32(crc), &le32(size as u32),
        &le32(size as u32), &le16(name.len() as u16), &le16(0), &le16(0), &le16(0), &le16(0), &le32(0), &le32(0), name,
    ] {
        out.extend_from_slice(part);
    }
    let cd_len = out.len() - cd_start;
    for part in [&le32(0x0605_4b50)[..], &le16(0), &le16(0), &le16(1), &le16(1), &le32(cd_len as u32), &le32(cd_offset as u32), &le16(0)] {
        out.extend_from_slice(part);
    }
    send(w, &out)?;
    w.flush()
}
