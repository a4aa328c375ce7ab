//! Local writes in a directory other users can write (`-a /tmp/backups`, `fetch -a DIR`):
//! lockstep runs as root there, so a planted symlink or directory must never make it write,
//! read or replace a file outside the artifact directory, and a failed run leaves nothing.
//! Every test plants its trap, runs the operation, and checks the target outside is
//! byte-for-byte unchanged.

use assert_cmd::Command;
use lockstep::frontend::demo::create_deployment;
use lockstep::store::local::LocalStore;
use lockstep::store::{self, Store};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

struct Trap {
    _tmp: TempDir,
    root: PathBuf,
    /// A file outside the store that the traps point at.
    victim: PathBuf,
}

const VICTIM: &str = "the victim's own content\n";

fn trap() -> Trap {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("store");
    fs::create_dir(&root).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, VICTIM).unwrap();
    Trap { root, victim, _tmp: tmp }
}

impl Trap {
    fn victim_intact(&self) {
        let m = fs::symlink_metadata(&self.victim).unwrap();
        assert!(m.is_file(), "the victim was replaced");
        assert_eq!(fs::read_to_string(&self.victim).unwrap(), VICTIM, "the victim was written through a link");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_symlink_at_an_objects_name_is_refused_not_followed_nor_replaced() {
    let t = trap();
    fs::create_dir(t.root.join("art")).unwrap();
    symlink(&t.victim, t.root.join("art/metadata")).unwrap();
    let store = LocalStore::new(&t.root);
    let err = rt().block_on(store::write_all(&store, "art/metadata", b"attacker-chosen")).unwrap_err();
    assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
    t.victim_intact();
    assert!(fs::symlink_metadata(t.root.join("art/metadata")).unwrap().file_type().is_symlink(), "the link is refused, not removed");
    // Nor read through.
    let err = rt().block_on(store::read_all(&store, "art/metadata")).unwrap_err();
    assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
}

#[test]
fn a_symlinked_artifact_directory_is_refused() {
    let t = trap();
    let elsewhere = t.victim.parent().unwrap().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, t.root.join("art")).unwrap();
    let store = LocalStore::new(&t.root);
    let err = rt().block_on(store::write_all(&store, "art/db-0-pg.tar", b"x")).unwrap_err();
    assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing was written through the link");
    let err = rt().block_on(store::read_all(&store, "art/db-0-pg.tar")).unwrap_err();
    assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
}

#[test]
fn temporary_names_cannot_be_guessed_so_a_planted_link_is_never_opened() {
    let t = trap();
    fs::create_dir(t.root.join("art")).unwrap();
    // The names an earlier lockstep used, and a guess at any fixed pattern.
    for planted in [".lockstep-partial-db-0-pg.tar", ".lockstep-partial-db-0-pg.tar-0"] {
        symlink(&t.victim, t.root.join("art").join(planted)).unwrap();
    }
    let store = LocalStore::new(&t.root);
    rt().block_on(store::write_all(&store, "art/db-0-pg.tar", b"the real tar")).unwrap();
    t.victim_intact();
    assert_eq!(fs::read(t.root.join("art/db-0-pg.tar")).unwrap(), b"the real tar");
    let rt = rt();
    let a = rt.block_on(store.create("art/a")).unwrap();
    let b = rt.block_on(store.create("art/a")).unwrap();
    let partials: Vec<String> = fs::read_dir(t.root.join("art"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".lockstep-partial-a-"))
        .collect();
    assert_eq!(partials.len(), 2, "two writers of one key, two different names: {partials:?}");
    assert!(partials.iter().all(|n| n.len() >= ".lockstep-partial-a-".len() + 16), "{partials:?}");
    drop((a, b));
}

#[test]
fn a_directory_planted_by_another_user_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test plants a directory owned by another user, which needs root (CI runs as root)");
    }
    let t = trap();
    let planted = t.root.join("art");
    fs::create_dir(&planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let store = LocalStore::new(&t.root);
    let err = rt().block_on(store::write_all(&store, "art/db-0-pg.tar", b"x")).unwrap_err();
    assert!(format!("{err:#}").contains("belongs to another user"), "{err:#}");
    assert_eq!(fs::read_dir(&planted).unwrap().count(), 0);
}

#[test]
fn an_abandoned_write_leaves_no_empty_directory() {
    let t = trap();
    let store = LocalStore::new(&t.root);
    let rt = rt();
    let w = rt.block_on(store.create("art/sub/db-0-pg.tar")).unwrap();
    rt.block_on(w.abort());
    rt.block_on(store.delete("art/sub/db-0-pg.tar")).unwrap();
    assert_eq!(fs::read_dir(&t.root).unwrap().count(), 0, "{:?}", fs::read_dir(&t.root).unwrap().collect::<Vec<_>>());
}

fn lockstep() -> Command {
    Command::cargo_bin("lockstep").unwrap()
}

/// `lockstep local --name cf` over the demo's instances under `base`.
fn local_cf(base: &Path) -> (Command, Vec<(lockstep::model::InstanceId, String)>) {
    let deployed = create_deployment(base, true).unwrap();
    let mut c = lockstep();
    c.args(["local", "--name", "cf"]);
    for (id, root) in &deployed {
        c.arg("--instance").arg(format!("{id}={root}"));
    }
    (c, deployed)
}

/// A failed fetch (the source artifact is corrupt) leaves no directory where it fetched to.
#[test]
fn a_failed_fetch_leaves_nothing_behind() {
    let tmp = TempDir::new().unwrap();
    let (mut c, _) = local_cf(&tmp.path().join("vms"));
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    c.args(["backup", "-a"]).arg(&src).assert().success();
    let name = fs::read_dir(&src).unwrap().next().unwrap().unwrap().file_name().to_string_lossy().into_owned();
    // Corrupt the last tar the metadata names, so the fetch fails after writing others.
    let mut tars: Vec<PathBuf> = fs::read_dir(src.join(&name)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "tar")).collect();
    tars.sort();
    let victim = tars.last().unwrap();
    let mut bytes = fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(victim, bytes).unwrap();

    let dest = tmp.path().join("dest");
    let o = lockstep().args(["fetch", &name, "--store"]).arg(format!("file://{}", src.display())).arg("-a").arg(&dest).output().unwrap();
    assert!(!o.status.success(), "the fetch of a corrupt artifact must fail");
    let left: Vec<_> = fs::read_dir(&dest).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed fetch left {left:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A symlink planted where the next backup's artifact directory goes is refused when it is
/// created; nothing lands in the link's target.
#[test]
fn a_local_backup_refuses_to_write_through_a_planted_artifact_directory() {
    let tmp = TempDir::new().unwrap();
    let (mut c, deployed) = local_cf(&tmp.path().join("vms"));
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    // Artifact names carry the time to the second: plant the next minute's worth.
    let now = chrono::Utc::now();
    for s in 0..60 {
        let at = now + chrono::Duration::seconds(s);
        symlink(&elsewhere, store.join(format!("cf_{}", at.format("%Y%m%dT%H%M%SZ")))).unwrap();
    }
    let o = c.args(["backup", "-a"]).arg(&store).output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{log}");
    assert!(log.contains("is a symlink") && log.contains("nothing was locked"), "{log}");
    assert!(!log.contains("pre-backup-lock"), "refused before any lock script: {log}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "written through the link: {log}");
    for (id, root) in &deployed {
        assert!(!Path::new(root).join("var/vcap/store/bbr-backup").exists(), "staging left behind on {id}: {log}");
    }
}
