//! The sample pipelines (with their example vars) and task files checked against an
//! independent reading of Concourse's schema: the pydantic models of the PyPI package
//! `ol-concourse` 0.5.3, driven by `ci/concourse_models.py` (which says what it checks and
//! which gaps of the package it tolerates).

mod s3_support;

use s3_support::{missing, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

fn python() -> Option<PathBuf> {
    let python = repo_root().join("ci/.venv/bin/python");
    let ok = Command::new(&python).args(["-c", "import ol_concourse.lib.models.pipeline, yaml"]).output().is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        missing("the Python package ol-concourse in ci/.venv");
        None
    }
}

/// The `.yml` files of a directory of the repository, sorted; pipelines/ without the vars.
fn yml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml") && !p.to_string_lossy().ends_with("-vars.example.yml"))
        .collect();
    files.sort();
    files
}

fn run(python: &Path, args: &[PathBuf]) -> (Output, String) {
    let out = Command::new(python).arg(repo_root().join("ci/concourse_models.py")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// The counts of the success line "ol-concourse: N pipelines, M jobs, K steps, T task files: 0 problems".
fn counts(text: &str) -> Vec<u64> {
    let line = text.lines().find(|l| l.starts_with("ol-concourse: ")).unwrap_or_else(|| panic!("no summary line:\n{text}"));
    line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

#[test]
fn every_sample_pipeline_and_task_file_loads_into_ol_concourse_models() {
    let Some(python) = python() else { return };
    let pipelines = yml_files("pipelines");
    let tasks = yml_files("tasks");
    assert!(!pipelines.is_empty() && !tasks.is_empty());
    let (out, text) = run(&python, &[pipelines.clone(), tasks.clone()].concat());
    assert!(out.status.success(), "ol-concourse's models reject the samples:\n{text}");
    let n = counts(&text);
    assert_eq!(n.len(), 5, "{text}");
    let (p, jobs, steps, t, problems) = (n[0], n[1], n[2], n[3], n[4]);
    assert_eq!((p, t, problems), (pipelines.len() as u64, tasks.len() as u64, 0), "{text}");
    assert!(jobs > 0 && steps > jobs, "{text}");
}

#[test]
fn the_check_names_a_deliberate_mistake() {
    let Some(python) = python() else { return };
    let tmp = TempDir::new().unwrap();
    let original = std::fs::read_to_string(repo_root().join("pipelines/backup.yml")).unwrap();
    assert!(original.contains("trigger: true") && original.contains("serial: true") && original.contains("check_every: 1h"));
    // A typo in a step key (in a get nested in in_parallel, which ol-concourse's untyped
    // Job.plan alone would let through), a wrong type, and a typo in a resource key (the
    // package's Resource allows extra keys).
    let broken = original
        .replacen("trigger: true", "tigger: true", 1)
        .replacen("serial: true", "serial: yes-please", 1)
        .replacen("check_every: 1h", "chek_every: 1h", 1);
    let pipeline = tmp.path().join("backup.yml");
    std::fs::write(&pipeline, broken).unwrap();
    let (out, text) = run(&python, &["--vars".into(), repo_root().join("pipelines/backup-vars.example.yml"), pipeline.clone()]);
    assert!(!out.status.success(), "the broken pipeline passed:\n{text}");
    let file = pipeline.display().to_string();
    for (path, what) in [
        ("jobs[0](backup).plan[0](in_parallel).in_parallel[0](get schedule).tigger", "unknown key 'tigger'"),
        ("jobs[0](backup).serial", "valid boolean"),
        ("resources[2](backup).chek_every", "unknown key 'chek_every'"),
    ] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{file}: {path}: ")) && l.contains(what)), "expected {path}: {what} in:\n{text}");
    }
    assert!(text.contains(": 3 problems"), "{text}");

    // Without its vars, every ((var)) is reported unresolved.
    std::fs::write(&pipeline, &original).unwrap();
    let (out, text) = run(&python, &[pipeline]);
    assert!(!out.status.success() && text.contains("unresolved var ((worker_tags))"), "{text}");
}
