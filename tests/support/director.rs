//! A protocol double of a BOSH director and its UAA, over real TLS (a CA and a server
//! certificate for 127.0.0.1 made with `openssl`), for `lockstep deployment`.
//!
//! Endpoints, as bbr uses them: `GET /info` (no auth; UAA at `/uaa` or basic auth),
//! `POST /uaa/oauth/token` (client credentials, HTTP basic), `GET /deployments/:d/vms?format=full`
//! and `POST /deployments/:d/ssh` (both redirect to a task), `GET /tasks/:id` (answers
//! `processing` once before the final state; reading the output earlier is a 400),
//! `GET /tasks/:id/output?type=result`, `GET /deployments/:d` (the manifest). Every other
//! request, and every request without a valid token / basic credentials, is recorded as
//! unexpected. [`Director::calls`] is the strict log, in order.
//!
//! `ssh setup` really creates the user on the machine running the fleet (`useradd`, a
//! sudoers drop-in as a stemcell's `bosh_sshers` group gives) and authorizes the public
//! key in the fleet's `authorized_keys`; `ssh cleanup` removes the key, the sudoers file and
//! the user (`userdel -f`). Deviation from BOSH: the fleet's sshd instances share one
//! `/etc/passwd` and one `AuthorizedKeysFile`, so the user and key are valid on every VM of
//! the fleet, not only on the VMs of the group set up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use super::https::{b64, json, Https, Request, Response};

#[derive(Clone, Debug)]
pub struct VmSpec {
    pub group: String,
    pub index: u64,
    pub id: String,
    /// What `ssh setup` returns as `ip` (here `ip:port`, as bbr's own mock does).
    pub address: String,
    /// `ssh-ed25519 AAAA...`
    pub host_key_line: String,
    pub bootstrap: bool,
}

#[derive(Clone, Debug)]
pub struct DeploymentSpec {
    pub name: String,
    pub manifest: String,
    pub vms: Vec<VmSpec>,
}

#[derive(Clone, Debug)]
pub enum AuthMode {
    Uaa { client: String, secret: String },
    Basic { user: String, password: String },
}

struct Task {
    polls: u32,
    state: &'static str,
    result: String,
    output: String,
    description: String,
}

#[derive(Default)]
struct State {
    deployments: BTreeMap<String, DeploymentSpec>,
    tasks: HashMap<u64, Task>,
    next_task: u64,
    calls: Vec<String>,
    unexpected: Vec<String>,
    /// Issued tokens and when.
    tokens: HashMap<String, std::time::Instant>,
    /// How long a token is accepted, and the `expires_in` UAA announces (which a real
    /// UAA keeps to; tests also make it lie, as a revoked token would).
    token_life: (std::time::Duration, u64),
    /// Requests refused because their token had expired.
    expired_refusals: usize,
    /// VM ids whose `ssh setup` reports a failure.
    failing_setup: HashSet<String>,
    /// Deployments whose VM-listing task ends in `error`.
    failing_vms_task: HashSet<String>,
    /// Users created and not yet cleaned up: user -> authorized_keys line.
    users: BTreeMap<String, String>,
    /// Every user ever created.
    created: Vec<String>,
    /// Users removed by `ssh cleanup`.
    cleaned: Vec<String>,
}

pub struct Director {
    pub url: String,
    pub ca_path: PathBuf,
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    authorized_keys: PathBuf,
    _https: Arc<Https>,
}

impl Director {
    /// Starts the double. `authorized_keys` is the fleet's shared `AuthorizedKeysFile`.
    pub fn start(auth: AuthMode, deployments: Vec<DeploymentSpec>, authorized_keys: PathBuf) -> Director {
        let mut st = State { next_task: 1, token_life: (std::time::Duration::from_secs(3600), 3600), ..State::default() };
        for dep in deployments {
            st.deployments.insert(dep.name.clone(), dep);
        }
        let state = Arc::new(Mutex::new(st));
        let (st, keys) = (state.clone(), authorized_keys.clone());
        let https = Https::start("lockstep-director-", "lockstep test director CA", move |url| {
            let server = Server { url: url.to_string(), auth, state: st, authorized_keys: keys };
            Arc::new(move |req: &Request| server.handle(req))
        });
        Director { url: https.url.clone(), ca_path: https.ca_path.clone(), ca_pem: https.ca_pem.clone(), state, authorized_keys, _https: Arc::new(https) }
    }

    /// The API calls in order (`GET /info`, `POST /uaa/oauth/token`, ...), task polls and
    /// task outputs excluded.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.iter().filter(|c| !c.contains(" /tasks/")).cloned().collect()
    }

    /// Every request, task polls included.
    pub fn all_calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.state.lock().unwrap().unexpected.clone()
    }

    /// Tokens issued from now on are accepted for `accepted` and announced with
    /// `expires_in: announced` seconds.
    pub fn set_token_life(&self, accepted: std::time::Duration, announced: u64) {
        self.state.lock().unwrap().token_life = (accepted, announced);
    }

    pub fn expired_refusals(&self) -> usize {
        self.state.lock().unwrap().expired_refusals
    }

    pub fn fail_setup_of(&self, vm_id: &str) {
        self.state.lock().unwrap().failing_setup.insert(vm_id.to_string());
    }

    pub fn fail_vms_task_of(&self, deployment: &str) {
        self.state.lock().unwrap().failing_vms_task.insert(deployment.to_string());
    }

    /// Users created by `ssh setup` and not removed by `ssh cleanup`.
    pub fn live_users(&self) -> Vec<String> {
        self.state.lock().unwrap().users.keys().cloned().collect()
    }

    pub fn created_users(&self) -> Vec<String> {
        self.state.lock().unwrap().created.clone()
    }

    pub fn cleaned_users(&self) -> Vec<String> {
        self.state.lock().unwrap().cleaned.clone()
    }

    /// Each task was polled until it ended (`processing` then the final state).
    pub fn every_task_polled(&self) -> bool {
        self.state.lock().unwrap().tasks.values().all(|t| t.polls >= 2)
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        // A failed test must not leave users behind.
        let users: Vec<String> = self.state.lock().map(|s| s.users.keys().cloned().collect()).unwrap_or_default();
        for u in users {
            remove_user(&u, &self.authorized_keys);
        }
    }
}

struct Server {
    url: String,
    auth: AuthMode,
    state: Arc<Mutex<State>>,
    authorized_keys: PathBuf,
}

impl Server {
    fn handle(&self, req: &Request) -> Response {
        let call = if req.query.is_empty() { format!("{} {}", req.method, req.path) } else { format!("{} {}?{}", req.method, req.path, req.query) };
        // Its position, not "the last call": requests for several deployments arrive at once.
        let call_index = {
            let mut st = self.state.lock().unwrap();
            st.calls.push(call.clone());
            st.calls.len() - 1
        };
        let unexpected = |why: &str| {
            self.state.lock().unwrap().unexpected.push(format!("{call}: {why}"));
            json("404 Not Found", serde_json::json!({"code": 70000, "description": format!("unexpected request {call}")}))
        };
        let auth_header = req.headers.get("authorization").cloned().unwrap_or_default();
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/info") => {
                let ua = match &self.auth {
                    // UAA on the host the client asked for: through a jumpbox that is a name
                    // only the jumpbox resolves (support::fleet::FLEET_ONLY_HOST).
                    AuthMode::Uaa { .. } => {
                        let base = req.headers.get("host").map(|h| format!("https://{h}")).unwrap_or_else(|| self.url.clone());
                        serde_json::json!({"type": "uaa", "options": {"url": format!("{base}/uaa")}})
                    }
                    AuthMode::Basic { .. } => serde_json::json!({"type": "basic", "options": {}}),
                };
                return json("200 OK", serde_json::json!({"name": "double", "uuid": "0000", "version": "282.0.0", "user_authentication": ua}));
            }
            ("POST", "/uaa/oauth/token") => {
                let AuthMode::Uaa { client, secret } = &self.auth else { return unexpected("no UAA") };
                if String::from_utf8_lossy(&req.body) != "grant_type=client_credentials" {
                    return unexpected("not a client-credentials grant");
                }
                if auth_header != format!("Basic {}", b64(&format!("{client}:{secret}"))) {
                    return json("401 Unauthorized", serde_json::json!({"error": "unauthorized", "error_description": "Bad credentials"}));
                }
                let mut st = self.state.lock().unwrap();
                let token = format!("token-{}-{}", st.tokens.len(), std::process::id());
                st.tokens.insert(token.clone(), std::time::Instant::now());
                let expires_in = st.token_life.1;
                return json("200 OK", serde_json::json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in}));
            }
            _ => {}
        }
        let authorized = match &self.auth {
            AuthMode::Uaa { .. } => {
                let mut st = self.state.lock().unwrap();
                let issued = auth_header.strip_prefix("Bearer ").and_then(|t| st.tokens.get(t).copied());
                if issued.is_some_and(|at| at.elapsed() >= st.token_life.0) {
                    // A token of ours that expired: UAA's answer, not a protocol error.
                    st.expired_refusals += 1;
                    return json("401 Unauthorized", serde_json::json!({"code": 600000, "description": "Token expired"}));
                }
                issued.is_some()
            }
            AuthMode::Basic { user, password } => auth_header == format!("Basic {}", b64(&format!("{user}:{password}"))),
        };
        if !authorized {
            self.state.lock().unwrap().unexpected.push(format!("{call}: unauthorized"));
            return json("401 Unauthorized", serde_json::json!({"code": 600000, "description": "Require one of the scopes: bosh.admin"}));
        }
        let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["tasks", id]) => {
                let mut st = self.state.lock().unwrap();
                let Some(t) = id.parse().ok().and_then(|id: u64| st.tasks.get_mut(&id)) else { drop(st); return unexpected("no such task") };
                t.polls += 1;
                let state = if t.polls == 1 { "processing" } else { t.state };
                let result = if state == "processing" { serde_json::Value::Null } else { t.result.clone().into() };
                json("200 OK", serde_json::json!({"id": id.parse::<u64>().unwrap(), "state": state, "description": t.description, "result": result}))
            }
            ("GET", ["tasks", id, "output"]) if req.query == "type=result" => {
                let st = self.state.lock().unwrap();
                let Some(t) = id.parse().ok().and_then(|id: u64| st.tasks.get(&id)) else { drop(st); return unexpected("no such task") };
                if t.polls < 2 {
                    drop(st);
                    self.state.lock().unwrap().unexpected.push(format!("{call}: output read before the task ended"));
                    return json("400 Bad Request", serde_json::json!({"description": "task not finished"}));
                }
                ("200 OK", vec![], t.output.clone())
            }
            ("GET", ["deployments"]) if req.query.is_empty() => {
                let st = self.state.lock().unwrap();
                let list: Vec<serde_json::Value> = st
                    .deployments
                    .values()
                    .map(|d| serde_json::json!({"name": d.name, "cloud_config": "none", "releases": [], "stemcells": [], "teams": []}))
                    .collect();
                json("200 OK", serde_json::Value::Array(list))
            }
            ("GET", ["deployments", d, "vms"]) if req.query == "format=full" => {
                let mut st = self.state.lock().unwrap();
                let Some(dep) = st.deployments.get(*d).cloned() else { return not_found(d) };
                let out: String = dep
                    .vms
                    .iter()
                    .map(|v| {
                        let ip = v.address.split(':').next().unwrap().to_string();
                        format!(
                            "{}\n",
                            serde_json::json!({"vm_cid": format!("vm-{}", v.id), "ips": [ip], "job_name": v.group, "index": v.index, "id": v.id, "bootstrap": v.bootstrap, "job_state": "running"})
                        )
                    })
                    .collect();
                let fail = st.failing_vms_task.contains(*d);
                self.task(&mut st, "retrieve vm-stats", if fail { ("error", "Timed out sending 'get_state' to instance".into(), String::new()) } else { ("done", "".into(), out) })
            }
            ("GET", ["deployments", d]) => {
                let st = self.state.lock().unwrap();
                let Some(dep) = st.deployments.get(*d) else { return not_found(d) };
                json("200 OK", serde_json::json!({"manifest": dep.manifest}))
            }
            ("POST", ["deployments", d, "ssh"]) => {
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else { return unexpected("body is not JSON") };
                let mut st = self.state.lock().unwrap();
                let Some(dep) = st.deployments.get(*d).cloned() else { return not_found(d) };
                let group = body["target"]["job"].as_str().unwrap_or_default().to_string();
                let shape_ok = body["deployment_name"] == *d
                    && body["target"]["indexes"] == serde_json::json!([])
                    && body["target"]["ids"] == serde_json::json!([])
                    && dep.vms.iter().any(|v| v.group == group);
                // The log says which command and group, for order assertions.
                let cmd = body["command"].as_str().unwrap_or_default().to_string();
                if let Some(last) = st.calls.get_mut(call_index) {
                    last.push_str(&format!(" {cmd} {group}"));
                }
                if !shape_ok {
                    drop(st);
                    return unexpected(&format!("bad ssh request {body}"));
                }
                match cmd.as_str() {
                    "setup" => {
                        let p = &body["params"];
                        let (Some(user), Some(key)) = (p["user"].as_str(), p["public_key"].as_str()) else {
                            drop(st);
                            return unexpected("setup without user/public_key");
                        };
                        if p["password"] != "" || !user.starts_with("bosh_") || user.len() != 20 {
                            drop(st);
                            return unexpected(&format!("bad setup params {p}"));
                        }
                        let mut hosts = Vec::new();
                        for v in dep.vms.iter().filter(|v| v.group == group) {
                            let ok = !st.failing_setup.contains(&v.id);
                            if ok && !st.users.contains_key(user) {
                                let line = format!("{key} {user}");
                                create_user(user, &line, &self.authorized_keys);
                                st.users.insert(user.to_string(), line);
                                st.created.push(user.to_string());
                            }
                            hosts.push(serde_json::json!({
                                "status": if ok { "success" } else { "failure" },
                                "ip": v.address, "host_public_key": v.host_key_line, "id": v.id, "index": v.index,
                                "job": v.group, "gateway_user": "", "gateway_host": "",
                            }));
                        }
                        let out = serde_json::Value::Array(hosts).to_string();
                        self.task(&mut st, "create ssh user", ("done", "".into(), out))
                    }
                    "cleanup" => {
                        let Some(re) = body["params"]["user_regex"].as_str().and_then(|r| r.strip_prefix('^')).map(str::to_string) else {
                            drop(st);
                            return unexpected("cleanup without user_regex ^...");
                        };
                        let users: Vec<String> = st.users.keys().filter(|u| u.starts_with(&re)).cloned().collect();
                        for u in users {
                            remove_user(&u, &self.authorized_keys);
                            st.users.remove(&u);
                            st.cleaned.push(u);
                        }
                        self.task(&mut st, "ssh cleanup", ("done", "".into(), String::new()))
                    }
                    _ => {
                        drop(st);
                        unexpected("unknown ssh command")
                    }
                }
            }
            _ => unexpected("no such endpoint"),
        }
    }

    fn task(&self, st: &mut State, description: &str, (state, result, output): (&'static str, String, String)) -> Response {
        let id = st.next_task;
        st.next_task += 1;
        st.tasks.insert(id, Task { polls: 0, state, result, output, description: description.to_string() });
        ("302 Found", vec![("Location".into(), format!("{}/tasks/{id}", self.url))], String::new())
    }
}

fn not_found(d: &str) -> Response {
    json("404 Not Found", serde_json::json!({"code": 70000, "description": format!("Deployment '{d}' doesn't exist")}))
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Creates `user` (a locked-password-free account: sshd with `UsePAM no` refuses `!`
/// accounts), gives it passwordless sudo as `bosh_sshers` has, and authorizes the key.
fn create_user(user: &str, key_line: &str, authorized_keys: &Path) {
    let mut ok = false;
    for _ in 0..20 {
        // useradd fails while another process holds /etc/passwd's lock: retry.
        if run_ok(Command::new("useradd").args(["-M", "-s", "/bin/sh", "-p", "*", user])) {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok, "useradd {user} failed");
    replace_file(Path::new(&format!("/etc/sudoers.d/lockstep-{user}")), &format!("{user} ALL=(ALL) NOPASSWD: ALL\n"), 0o440);
    let mut all = std::fs::read_to_string(authorized_keys).unwrap();
    all.push_str(key_line);
    all.push('\n');
    replace_file(authorized_keys, &all, 0o644);
}

/// Replaces `path` in one step (a temporary file renamed over it): deployments run in
/// parallel, and an sshd or sudo reading a file half rewritten for another deployment's
/// user would refuse a login that should work. (sudo skips names with a dot.)
fn replace_file(path: &Path, content: &str, mode: u32) {
    let tmp = path.with_file_name(format!("{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn remove_user(user: &str, authorized_keys: &Path) {
    if let Ok(all) = std::fs::read_to_string(authorized_keys) {
        let kept: String = all.lines().filter(|l| !l.ends_with(&format!(" {user}"))).map(|l| format!("{l}\n")).collect();
        replace_file(authorized_keys, &kept, 0o644);
    }
    let _ = std::fs::remove_file(format!("/etc/sudoers.d/lockstep-{user}"));
    for _ in 0..20 {
        if run_ok(Command::new("userdel").args(["-f", user])) || !user_exists(user) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn user_exists(user: &str) -> bool {
    std::fs::read_to_string("/etc/passwd").unwrap_or_default().lines().any(|l| l.starts_with(&format!("{user}:")))
}
