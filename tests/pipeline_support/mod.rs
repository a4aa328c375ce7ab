//! What the pipeline tests share: where the repository's files are, and Concourse's
//! `((var))` interpolation as `fly set-pipeline -l VARS` does it.
#![allow(dead_code)]

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

/// Concourse's interpolation with `fly -l VARS`: a string that is one `((var))` takes the
/// var's value (any YAML), a var inside a longer string its text; `((var.field))` reads a
/// field.
pub fn interpolate(v: &Value, vars: &Value) -> Value {
    fn lookup(vars: &Value, name: &str) -> Value {
        let mut parts = name.trim().split('.');
        let mut v = &vars[parts.next().unwrap()];
        for f in parts {
            v = &v[f];
        }
        assert!(!v.is_null(), "(({name})) has no value in the vars file");
        v.clone()
    }
    match v {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with("((") && t.ends_with("))") && t.matches("((").count() == 1 {
                return lookup(vars, &t[2..t.len() - 2]);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("((") {
                let end = rest[start..].find("))").unwrap() + start;
                out.push_str(&rest[..start]);
                match lookup(vars, &rest[start + 2..end]) {
                    Value::String(x) => out.push_str(&x),
                    other => out.push_str(&other.to_string()),
                }
                rest = &rest[end + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| interpolate(x, vars)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), interpolate(x, vars))).collect()),
        other => other.clone(),
    }
}

