//! Helpers shared by the integration tests. Each test binary uses a different subset.
#![allow(dead_code)]

pub mod fleet;
pub mod director;
pub mod https;
pub mod opsman;
pub mod platform;
pub mod stall_proxy;
pub mod owed_jobs;
