//! # lockstep
//!
//! Consistent, BBR-compatible backups of BOSH deployments.
//!
//! The crate is one library with thin binaries. Its shape, from the inside out:
//!
//! - [`model`] and [`lock_order`] are pure: instances, jobs, the seven BBR scripts, job
//!   metadata, and the Kahn levels that say which jobs lock before which.
//! - [`orchestrate`] is bbr's workflows (backup, restore, pre-backup-check, the
//!   cleanups) written as straight-line async functions over three traits at the edges:
//!   [`target::Target`] finds instances, [`instance::Instance`] runs BBR operations on
//!   one, [`store::Store`] holds artifacts. It emits [`events::Event`]s and never prints.
//! - [`instance::ShellInstance`] implements the BBR operations as quoted shell commands
//!   over a [`transport::Transport`] (local directories here; SSH elsewhere).
//! - [`artifact`] is the format: bbr's layout and `metadata`, the streaming tar hasher
//!   that checksums every file while the bytes pass, and the `lockstep.json` commit marker
//!   written last.
//! - [`report`] turns events into log lines for a Concourse log and the timings table;
//!   [`cli`] is the `lockstep` command.
//!
//! The data path of a backup reads each byte once: the instance's `tar -c` stdout flows
//! through the tar hasher into a store object, and the checksums computed on the way are
//! compared with the instance's own before the object is committed.

pub mod artifact;
pub mod bosh;
pub mod cli;
pub mod concourse;
pub mod config;
pub mod connect_proxy;
pub mod codec;
pub mod demo;
pub mod events;
pub mod hosts;
pub mod instance;
pub mod lock_order;
pub mod metered;
pub mod model;
pub mod orchestrate;
pub mod pipeline_check;
pub mod remote_sums;
pub mod report;
pub mod retention;
pub mod service;
pub mod shell;
pub mod store;
pub mod target;
pub mod testkit;
pub mod transport;

/// Called first by every binary. Multipart part buffers (16 MiB) come from mmap and go back
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
