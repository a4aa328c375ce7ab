//! What the pipeline tests share: where the repository's files are, Concourse's `((var))`
//! interpolation (`concourse`), and a runner that runs a pipeline's jobs (`runner`).
#![allow(dead_code)]

pub mod concourse;
pub mod runner;

use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap()
}

pub fn pipeline_path(name: &str) -> PathBuf {
    repo().join("pipelines").join(format!("{name}.yml"))
}

pub fn vars_path(name: &str) -> PathBuf {
    repo().join("pipelines").join(format!("{name}-vars.example.yml"))
}

/// A pipeline parsed (anchors resolved) and interpolated with its example vars.
pub fn interpolated_pipeline(name: &str) -> Value {
    interpolate(&yaml(&read(&pipeline_path(name))), &yaml(&read(&vars_path(name))))
}

/// Concourse's interpolation with `fly -l VARS` (see [`concourse::interpolate`]); every var
/// must have a value.
pub fn interpolate(v: &Value, vars: &Value) -> Value {
    concourse::interpolate(v, vars, true).unwrap_or_else(|e| panic!("the vars file: {e}"))
}
