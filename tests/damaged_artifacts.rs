//! Random damage to a committed artifact's `lockstep.json` and `metadata` (truncated,
//! bytes overwritten, replaced by random JSON or text), fed to the real binaries as an
//! operator or Concourse runs them: `lockstep list`, `lockstep verify`, the resource's
//! `check` and `in`. Whatever the damage: never a panic, and a command that fails names the
//! artifact, so the operator knows which backup is broken. And `check`'s answer for a
//! version it cannot find (pruned).

use lockstep::frontend::demo::create_deployment;
use lockstep::orchestrate::backup::{backup, BackupOptions};
use lockstep::orchestrate::Ctx;
use lockstep::events::Recorder;
use lockstep::store::local::LocalStore;
use lockstep::target::LocalTarget;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use tempfile::TempDir;

/// One committed backup of the demo deployment, made once per test binary.
struct Base {
    _dir: TempDir,
    store: PathBuf,
    name: String,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let deployed = create_deployment(&dir.path().join("dep"), true).unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        Base { name: backup_demo(&deployed, &store), store, _dir: dir }
    })
}

/// Backs the demo deployment up into the local store `store`; the artifact's name.
fn backup_demo(deployed: &[(lockstep::model::InstanceId, String)], store: &Path) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(backup(
        &Ctx::new(Arc::new(Recorder::default())),
        &LocalTarget::new("demo", deployed.to_vec()),
        &LocalStore::new(store),
        &BackupOptions::default(),
    ));
    assert!(out.failures.is_empty(), "{}", out.failures.render());
    out.artifact.expect("committed")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[derive(Debug, Clone)]
enum Damage {
    /// Keep this share (per mille) of the file.
    Truncate(u16),
    /// Overwrite bytes from this position (per mille of the length) on.
    Overwrite(u16, Vec<u8>),
    /// The whole file becomes this JSON value.
    Json(Value),
    /// The whole file becomes these bytes.
    Bytes(Vec<u8>),
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z_0-9:./ -]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("version".to_string()),
                    Just("deployment".to_string()),
                    Just("objects".to_string()),
                    Just("instances".to_string()),
                    Just("backup_activity".to_string()),
                    "[a-z_]{1,10}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u16..1000).prop_map(Damage::Truncate),
        (0u16..1000, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Damage::Overwrite(at, b)),
        json_value().prop_map(Damage::Json),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Bytes),
    ]
}

fn apply(path: &Path, d: &Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match d {
        Damage::Truncate(k) => bytes.truncate(bytes.len() * usize::from(*k) / 1000),
        Damage::Overwrite(at, b) => {
            let at = bytes.len() * usize::from(*at) / 1000;
            for (i, x) in b.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *x;
                }
            }
        }
        Damage::Json(v) => bytes = v.to_string().into_bytes(),
        Damage::Bytes(b) => bytes = b.clone(),
    }
    std::fs::write(path, bytes).unwrap();
}

fn run(bin: &str, args: &[&str], stdin: Option<&Value>) -> Output {
    let mut c = Command::new(bin);
    c.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(v) = stdin {
        input.write_all(v.to_string().as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// No panic; a failure names the artifact.
fn judge(what: &str, o: &Output, name: &str) -> Result<(), TestCaseError> {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    prop_assert_ne!(o.status.code(), Some(101), "{} panicked: {}", what, text);
    prop_assert!(!text.contains("panicked") && !text.contains("internal error"), "{} hit a bug: {}", what, text);
    prop_assert!(o.status.code().is_some(), "{} died of a signal: {}", what, text);
    if !o.status.success() {
        prop_assert!(text.contains(name), "{} failed without naming {}: {}", what, name, text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_records_never_panic_and_failures_name_the_artifact(in_marker in any::<bool>(), d in damage()) {
        let base = base();
        let tmp = TempDir::new().unwrap();
        let store = tmp.path().join("store");
        copy_tree(&base.store, &store);
        let file = if in_marker { "lockstep.json" } else { "metadata" };
        apply(&store.join(&base.name).join(file), &d);
        let store_arg = store.to_str().unwrap();
        let url = format!("file://{store_arg}");
        let lockstep = env!("CARGO_BIN_EXE_lockstep");

        judge("list", &run(lockstep, &["list", "-a", store_arg], None), &base.name)?;
        judge("verify", &run(lockstep, &["verify", "--store", &url, &base.name], None), &base.name)?;
        let source = json!({"store": {"path": store_arg}, "target": {"local": {"name": "demo", "instances": {}}}});
        let o = run(env!("CARGO_BIN_EXE_check"), &[], Some(&json!({"source": source})));
        judge("check", &o, &base.name)?;
        if o.status.success() {
            let out: Value = serde_json::from_slice(&o.stdout).map_err(|e| TestCaseError::fail(format!("check stdout is not JSON: {e}")))?;
            prop_assert!(out.is_array());
        }
        let dest = tmp.path().join("got");
        let request = json!({"source": source, "version": {"artifact": base.name}});
        judge("in", &run(env!("CARGO_BIN_EXE_in"), &[dest.to_str().unwrap()], Some(&request)), &base.name)?;
    }
}

/// The judge above only bites if the commands work on an intact artifact and fail on a
/// damaged one: check both ends once.
#[test]
fn an_intact_artifact_passes_and_a_half_record_fails_by_name() {
    let base = base();
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    copy_tree(&base.store, &store);
    let store_arg = store.to_str().unwrap();
    let url = format!("file://{store_arg}");
    let lockstep = env!("CARGO_BIN_EXE_lockstep");
    let source = json!({"store": {"path": store_arg}, "target": {"local": {"name": "demo", "instances": {}}}});
    let o = run(lockstep, &["verify", "--store", &url, &base.name], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(env!("CARGO_BIN_EXE_check"), &[], Some(&json!({"source": source})));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out, json!([{"artifact": base.name}]), "{}", String::from_utf8_lossy(&o.stderr));
    let dest = tmp.path().join("got");
    let o = run(env!("CARGO_BIN_EXE_in"), &[dest.to_str().unwrap()], Some(&json!({"source": source, "version": {"artifact": base.name}})));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What a get wrote is readable by a task that does not run as root.
    let mut stack = vec![dest.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            use std::os::unix::fs::PermissionsExt;
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if e.file_type().unwrap().is_dir() {
                assert_eq!(mode, 0o755, "{}", e.path().display());
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o644, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files >= 4, "the get wrote {files} file(s)");

    for file in ["lockstep.json", "metadata"] {
        let tmp = TempDir::new().unwrap();
        let store = tmp.path().join("store");
        copy_tree(&base.store, &store);
        apply(&store.join(&base.name).join(file), &Damage::Truncate(500));
        let url = format!("file://{}", store.display());
        let o = run(lockstep, &["verify", "--store", &url, &base.name], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(&base.name), "{file}: {err}");
        // `list` reads only the commit records (one request per artifact, not two); a
        // damaged `metadata` is `verify`'s and `in`'s to find.
        if file == "lockstep.json" {
            let o = run(lockstep, &["list", "-a", store.to_str().unwrap()], None);
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(!o.status.success() && text.contains(&base.name), "{file}: list: {text}");
        }
        let o = run(env!("CARGO_BIN_EXE_in"), &[tmp.path().join("got").to_str().unwrap()], Some(&json!({"source": {"store": {"path": store}, "target": {"local": {"name": "demo", "instances": {}}}}, "version": {"artifact": base.name}})));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(&base.name), "{file}: in: {err}");
    }
}

/// `check` given a version it cannot find (pruned) returns only the newest, as Concourse's
/// resource contract asks; given one it has, that one and every newer one, oldest first.
#[test]
fn check_from_a_pruned_version_gives_only_the_newest() {
    let base = base();
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    copy_tree(&base.store, &store);
    // Two more backups of the same deployment, a second apart (names are per second).
    let deployed = create_deployment(&tmp.path().join("dep"), true).unwrap();
    let mut names = vec![base.name.clone()];
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        names.push(backup_demo(&deployed, &store));
    }
    let source = json!({"store": {"path": store}, "target": {"local": {"name": "demo", "instances": {}}}});
    let check = |version: Option<&str>| -> Value {
        let mut request = json!({"source": source});
        if let Some(v) = version {
            request["version"] = json!({"artifact": v});
        }
        let o = run(env!("CARGO_BIN_EXE_check"), &[], Some(&request));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert_eq!(check(Some(&names[1])), json!([{"artifact": names[1]}, {"artifact": names[2]}]));
    // names[0] pruned by hand: an older, unknown version gives only the newest.
    std::fs::remove_dir_all(store.join(&names[0])).unwrap();
    assert_eq!(check(Some(&names[0])), json!([{"artifact": names[2]}]));
    assert_eq!(check(None), json!([{"artifact": names[2]}]));
}
