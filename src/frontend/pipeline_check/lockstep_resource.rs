//! The checks `validate-pipeline` makes of a `lockstep` resource, with what its binaries
//! accept: the `source:` through the configuration parser, and the `params` and
//! `get_params` of its steps through `in`'s and `out`'s keys and actions. A typo fails at
//! validation, not at the first run after it.

use super::{is_var, vars_in, vars_in_value};
use crate::frontend::concourse::{IN_PARAMS, OUT_PARAMS};
use serde_json::{Map, Value};

/// A lockstep resource's `source:` through the parser `check`, `in` and `out` use. With the
/// vars (`-l`), the whole configuration, interpolated as Concourse interpolates a source
/// (structured values); without them, its top-level keys (a `compresion:` typo).
pub(super) fn source_errors(name: &str, source: &Value, vars: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    let top = crate::config::SECTIONS.iter().find(|(s, _)| *s == "source").map(|(_, k)| *k).unwrap_or_default();
    if let Some(vars) = vars {
        let filled = interpolate(source, vars);
        if vars_in_value(&filled).is_empty() {
            // The parser names the section itself (`source: ...`, `store: ...`).
            if let Err(e) = crate::config::Config::from_value(&filled) {
                errors.push(format!("resource '{name}': {e:#}"));
            }
            return errors;
        }
    }
    if let Some(o) = source.as_object() {
        for k in o.keys().filter(|k| !top.contains(&k.as_str())) {
            errors.push(format!("resource '{name}': source: unknown key `{k}`; allowed keys: {}", top.join(", ")));
        }
    }
    errors
}

/// Concourse's set-time interpolation of `-l` vars: a string that is one `((var))` becomes
/// the var's value (any type); a var inside a longer string is replaced as text.
pub(super) fn interpolate(v: &Value, vars: &Value) -> Value {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if let Some(name) = t.strip_prefix("((").and_then(|r| r.strip_suffix("))")).filter(|n| !n.contains("((")) {
                if let Some(x) = vars.get(name.trim()) {
                    return x.clone();
                }
            }
            let mut out = s.clone();
            for name in vars_in(s) {
                if let Some(x) = vars.get(&name) {
                    let text = x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string());
                    out = out.replace(&format!("(({name}))"), &text);
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| interpolate(x, vars)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), interpolate(x, vars))).collect()),
        other => other.clone(),
    }
}

/// A lockstep resource's `params` and `get_params`, with the keys and values `in` and
/// `out` accept, so a typo fails here and not at run time (after the first backup).
pub(super) fn params_errors(kind: &str, obj: &Map<String, Value>, here: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut keys = |field: &str, allowed: &[&str]| {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for k in m.keys().filter(|k| !allowed.contains(&k.as_str())) {
                errors.push(format!("{here}: {field}: unknown key `{k}` for a lockstep resource; allowed: {}", allowed.join(", ")));
            }
        }
    };
    if kind == "get" {
        keys("params", IN_PARAMS);
        return errors;
    }
    keys("params", OUT_PARAMS);
    keys("get_params", IN_PARAMS);
    let params = obj.get("params").and_then(Value::as_object);
    let action = params.and_then(|p| p.get("action"));
    match action {
        None => {}
        Some(v) if is_var(v) => {}
        Some(Value::String(a)) if ["backup", "prune"].contains(&a.as_str()) => {}
        Some(Value::String(a)) if a == "restore" => {
            if params.and_then(|p| p.get("artifact")).is_none() {
                errors.push(format!(
                    "{here}: action: restore needs artifact (the input holding what a get fetched, or a version's name)"
                ));
            }
        }
        Some(other) => errors.push(format!("{here}: params.action must be backup, restore or prune, not {other}")),
    }
    errors
}
