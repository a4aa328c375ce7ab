//! The front ends: what turns the library into commands a person or Concourse runs. Each
//! decodes its input, calls [`crate::service`] or the orchestration, and renders the
//! result; nothing below this module imports from it.
//!
//! - [`cli`]: the `lockstep` command (bbr's command tree, and lockstep's own commands).
//! - [`concourse`]: the resource's `check`, `in` and `out`.
//! - [`report`]: orchestration events as log lines and the timings table.
//! - [`pipeline_check`]: `lockstep validate-pipeline`, fly's checks and more.
//! - [`demo`]: `lockstep demo`, the first run on an embedded deployment.
//! - [`signals`]: SIGTERM and SIGINT, as every front end handles them.

pub mod cli;
pub mod concourse;
pub mod demo;
pub mod pipeline_check;
pub mod report;
pub mod signals;
