//! # lockstep
//!
//! Consistent, BBR-compatible backups of BOSH deployments.
//!
//! The crate is one library with thin binaries (`src/bin`). Its shape, from the inside out,
//! is the shape of its tree:
//!
//! - [`model`] and [`lock_order`] are pure: instances, jobs, the seven BBR scripts, job
//!   metadata, and the Kahn levels that say which jobs lock before which.
//! - [`orchestrate`] is bbr's workflows (backup, restore, pre-backup-check, the
//!   cleanups) written as straight-line async functions over three traits at the edges:
//!   [`target::Target`] finds instances, [`instance::Instance`] runs BBR operations on
//!   one, [`store::Store`] holds artifacts. It emits [`events::Event`]s and never prints.
//! - Each edge is a folder with its trait and implementations: [`target`] (local
//!   directories, SSH hosts, the director over SSH, a deployment through the director
//!   API), [`instance`] (the operations as quoted shell commands over a
//!   [`transport::Transport`]: local or SSH), [`store`] (a directory in bbr's layout, S3,
//!   replicas, with the codecs on the stream).
//! - [`artifact`] is the format: bbr's layout and `metadata`, the streaming tar hasher
//!   that checksums every file while the bytes pass, and the `lockstep.json` commit marker
//!   written last.
//! - [`config`] and [`service`] turn one configuration vocabulary into targets, stores and
//!   codecs, and compose the operations the front ends share; [`retention`] plans prunes.
//! - [`frontend`] sits above all of it: the `lockstep` command, the Concourse resource,
//!   the reporter that turns events into log lines, the pipeline validator, the demo.
//!   Nothing in the library imports it (`tests/architecture.rs` checks the direction).
//!
//! The data path of a backup reads each byte once: the instance's `tar -c` stdout flows
//! through the tar hasher into a store object, and the checksums computed on the way are
//! compared with the instance's own before the object is committed.

// The domain: pure types and rules.
pub mod lock_order;
pub mod model;
pub mod open_files;
pub mod unique;

// The workflows, and the events they emit instead of printing.
pub mod events;
pub mod orchestrate;

// The edges the workflows are written against (traits), with their implementations.
pub mod artifact;
pub mod instance;
pub mod store;
pub mod target;
pub mod transport;

// Policy and composition over the edges.
pub mod config;
pub mod retention;
pub mod service;

// The front ends: the CLI, the Concourse resource, reporting, the validator, the demo.
pub mod frontend;

/// Called first by every binary. Multipart part buffers (8 MiB) come from mmap and go back
/// to the system when freed; otherwise glibc's growing mmap threshold keeps freed parts in
/// per-thread arenas and the process's RSS creeps far above what it holds. (musl, used for
/// the image's static binaries, always returns large blocks.)
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's threshold; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_string())
}

/// Called first by every binary, after [`tune_allocator`]. A panic (a bug here, or in a
/// dependency fed input it did not expect) is reported as one `error:` line that says
/// what happened and where, instead of a Rust backtrace in an operator's build log;
/// `RUST_BACKTRACE=1` still adds the backtrace for a bug report.
///
/// Inside a run a panic does not end it: the orchestration catches it around each
/// operation ([`orchestrate::caught`]) and goes on to unlock and clean up.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = panic_message(info.payload());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: lockstep hit an internal error ({what}{at}); this is a bug: please report it with this line");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
}
