//! Concourse's two interpolation paths, reproduced from its source (concourse/concourse):
//!
//! - **Set time** (`fly set-pipeline -l VARS`): the whole pipeline goes through
//!   `vars/template.go`'s interpolator with the vars given (`ExpectAllKeys: false`: a var not
//!   given stays `((var))`, for the credential manager). Then ATC reads the config: a task
//!   step's `params` is an `atc.TaskEnv` (map of `CoercedString`), so a map or list param
//!   becomes one JSON string, a number its text, null "".
//! - **Build time** (`atc/exec/task_step.go`): the task file's params, overridden by the
//!   step's (`OverrideParamsConfigSource`), then the whole task config through the same
//!   interpolator with the credential manager's vars (`InterpolateTemplateConfigSource`,
//!   `ExpectAllKeys: true`), and coerced to strings again. A resource's `source:` and a step's
//!   `params` are interpolated with the same vars as structured values.
//!
//! The interpolator: a string that is exactly one `((var))` becomes the var's value, of any
//! type; a var inside a longer string is replaced by its text when it is a string or a number
//! (`fmt.Sprintf("%v")`), and anything else is "cannot interpolate non-primitive value".

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Where a var's value is looked up: `((name))`, `((name.field))`, `((source:name.field))`.
fn lookup(vars: &Value, name: &str) -> Option<Value> {
    let path = name.split_once(':').map_or(name, |(_, rest)| rest);
    let mut parts = path.split('.').map(|p| p.trim_matches('"'));
    let mut v = vars.get(parts.next()?)?;
    for field in parts {
        v = v.get(field)?;
    }
    Some(v.clone())
}

/// The names of the vars in `s`, as `interpolationRegex` finds them
/// (`\(\((([-/\.\w\pL]+\:)?[-/\.:@"\w\pL]+)\)\)`).
pub fn var_names(s: &str) -> Vec<String> {
    let ok = |c: char| c.is_alphanumeric() || "-/.:@\"_".contains(c);
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("((") {
        let after = &rest[start + 2..];
        match after.find("))") {
            Some(end) if end > 0 && after[..end].chars().all(ok) => {
                out.push(after[..end].to_string());
                rest = &after[end + 2..];
            }
            _ => rest = &rest[start + 1..],
        }
    }
    out
}

/// Go's `%T` of a value decoded from YAML/JSON, for the error message Concourse prints.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
        Value::Bool(_) => "bool",
        Value::Null => "<nil>",
        _ => "float64",
    }
}

/// `vars/template.go`'s interpolator. `expect_all`: a var without a value is an error
/// ("undefined vars"), as at build time; otherwise it stays, as at set time. Local vars
/// (`((.:name))`, set by an across step or a load_var step) are the build's own: they are
/// left for [`interpolate_locals`].
pub fn interpolate(v: &Value, vars: &Value, expect_all: bool) -> Result<Value, String> {
    interpolate_by(v, &|name| if name.starts_with(".:") { Ok(None) } else { lookup(vars, name).map(Some).ok_or(()) }, expect_all)
}

/// The local vars of a scope (`((.:name))`, `((.:name.field))`) replaced by their values, as
/// the across step does when it builds each substep from its template
/// (`ConstructAcrossSubsteps`); an undefined local var is an error.
pub fn interpolate_locals(v: &Value, locals: &Value) -> Result<Value, String> {
    interpolate_by(v, &|name| match name.strip_prefix(".:") {
        Some(local) => lookup(locals, local).map(Some).ok_or(()),
        None => Ok(None),
    }, true)
}

/// `resolve(name)`: `Ok(Some(value))`, `Ok(None)` to leave the var as it is, `Err(())` when
/// it has no value.
fn interpolate_by(v: &Value, resolve: &dyn Fn(&str) -> Result<Option<Value>, ()>, expect_all: bool) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let names = var_names(s);
            if names.len() == 1 && *s == format!("(({}))", names[0]) {
                return match resolve(&names[0]) {
                    Ok(Some(x)) => Ok(x),
                    Err(()) if expect_all => Err(format!("undefined vars: {}", names[0])),
                    Ok(None) | Err(()) => Ok(v.clone()),
                };
            }
            let mut out = s.clone();
            for name in names {
                match resolve(&name) {
                    Ok(Some(Value::String(x))) => out = out.replace(&format!("(({name}))"), &x),
                    Ok(Some(Value::Number(n))) => out = out.replace(&format!("(({name}))"), &n.to_string()),
                    Ok(Some(other)) => return Err(format!("cannot interpolate non-primitive value ({}) from var: {name}", go_type(&other))),
                    Err(()) if expect_all => return Err(format!("undefined vars: {name}")),
                    Ok(None) | Err(()) => {}
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| interpolate_by(x, resolve, expect_all)).collect::<Result<_, _>>()?),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(k.clone(), interpolate_by(x, resolve, expect_all)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// `atc.CoercedString`: a task param as the container's environment gets it.
pub fn coerce(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Applies `f` to every task step's `params` (hooks and nested steps included).
fn each_task_params(v: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            if m.contains_key("task") {
                if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut) {
                    f(p);
                }
            }
            m.values_mut().for_each(|x| each_task_params(x, f));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| each_task_params(x, f)),
        _ => {}
    }
}

/// `fly set-pipeline -l VARS`: the pipeline as ATC stores it.
pub fn set_pipeline(raw: &Value, vars: &Value) -> Result<Value, String> {
    let mut p = interpolate(raw, vars, false)?;
    each_task_params(&mut p, &mut |params| {
        for x in params.values_mut() {
            *x = Value::String(coerce(x));
        }
    });
    Ok(p)
}

/// A task's environment at build time: the task file's params overridden by the step's (as
/// stored), interpolated with the credential manager's `creds`, coerced to strings.
pub fn task_env(task_file: &Value, step_params: Option<&Value>, creds: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut params = Map::new();
    for source in [task_file.get("params"), step_params] {
        for (k, v) in source.and_then(Value::as_object).into_iter().flatten() {
            params.insert(k.clone(), Value::String(coerce(v)));
        }
    }
    let filled = interpolate(&Value::Object(params), creds, true)?;
    Ok(filled.as_object().unwrap().iter().map(|(k, v)| (k.clone(), coerce(v))).collect())
}
