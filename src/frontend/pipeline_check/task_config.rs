//! The checks `validate-pipeline` makes of a lockstep configuration given to a task as a map
//! param (`LOCKSTEP_CONFIG`, `DRILL_CONFIG`).
//!
//! Why: Concourse turns a map param into one JSON string when the pipeline is set, and a
//! credential manager's vars are pasted into that string as text when the build runs
//! (concourse/concourse `vars/template.go`). A secret written as a `((var))` inside the map
//! works with `fly -l` and breaks with CredHub or Vault as soon as it spans lines; a list
//! var cannot be pasted at all. The tasks therefore take each secret as a param of its own,
//! named in the map as `{from_env: NAME}`, and these checks keep a pipeline to that.

use super::{vars_in, vars_in_value};
use crate::config::{from_env, Config};
use serde_json::{Map, Value};

/// The task params that hold a lockstep configuration.
const CONFIG_PARAMS: &[&str] = &["LOCKSTEP_CONFIG", "DRILL_CONFIG"];

/// Keys whose values are secrets wherever they appear in a configuration.
const SECRET_KEYS: &[&str] = &["private_key", "access_key_id", "secret_access_key", "session_token", "identity", "client_secret", "ca_cert"];

/// (errors, warnings) for a task step's `params`. With the vars (`-l`), each configuration is
/// also resolved as the task will resolve it, from the step's params interpolated and
/// coerced to strings as Concourse passes them, and parsed.
pub(super) fn problems(params: &Map<String, Value>, here: &str, vars: Option<&Value>) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for key in CONFIG_PARAMS {
        let Some(config) = params.get(*key).filter(|v| v.is_object()) else { continue };
        for (at, name) in from_env::references(config) {
            let set = params.get(&name).is_some_and(|v| !v.is_null() && v != "");
            if !set {
                errors.push(format!("{here}: {key}.{at} is {{from_env: {name}}}, which the step's params do not set: add `{name}: ((your_var))`"));
            }
        }
        inline_vars(config, "", &mut |at, last| {
            if from_env::takes_structure(at) {
                warnings.push(format!(
                    "{here}: {key}.{at} is a ((var)) inside a map param: it works with fly -l, but with vars from CredHub or \
                     Vault Concourse cannot paste a list or map into it (\"cannot interpolate non-primitive value\"); write \
                     {{from_env: NAME}} and give the step `NAME: ((var))`"
                ));
            } else if SECRET_KEYS.contains(&last) {
                warnings.push(format!(
                    "{here}: {key}.{at} is a secret ((var)) inside a map param: it works with fly -l, but a credential \
                     manager's value is pasted into its JSON as text, which breaks a multi-line or quoted value; write {{from_env: NAME}} and give the step `NAME: ((var))`"
                ));
            }
        });
        if let Some(vars) = vars {
            if let Some(e) = resolve_and_parse(key, params, vars) {
                errors.push(format!("{here}: {e}"));
            }
        }
    }
    (errors, warnings)
}

/// Calls `f(path, last key)` for every string holding a `((var))`.
fn inline_vars(v: &Value, at: &str, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) if !vars_in(s).is_empty() => f(at, at.rsplit(['.', '[']).next().unwrap_or(at)),
        Value::Object(m) => m.iter().for_each(|(k, x)| inline_vars(x, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, f)),
        Value::Array(a) => a.iter().for_each(|x| inline_vars(x, &format!("{at}[]"), f)),
        _ => {}
    }
}

/// The configuration as the task reads it with `-l` vars: `None` when it parses (or when
/// some var is left to a credential manager, which only the build can resolve).
fn resolve_and_parse(key: &str, params: &Map<String, Value>, vars: &Value) -> Option<String> {
    let filled = super::lockstep_resource::interpolate(&Value::Object(params.clone()), vars);
    if !vars_in_value(&filled).is_empty() {
        return None;
    }
    let env = |name: &str| match filled.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        // A list or map param reaches the task as JSON (atc.TaskEnv).
        other => Some(other.to_string()),
    };
    let text = filled.get(key)?.to_string();
    Config::parse_with_env(&text, &env).err().map(|e| format!("{key}: {e:#}"))
}
