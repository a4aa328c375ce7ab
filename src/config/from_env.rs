//! `{from_env: NAME}`: a configuration value taken from an environment variable.
//!
//! Why: a Concourse task's params are strings. A map param (`LOCKSTEP_CONFIG: {...}`) is
//! turned into one JSON string when the pipeline is set, and a credential manager's vars
//! (CredHub, Vault) are substituted into that string as text when the build runs: a
//! multi-line PEM or age identity then breaks the JSON, and a list var cannot be
//! substituted at all (concourse/concourse `vars/template.go`). A param that is exactly one
//! `((var))` keeps its value whole. So the tasks take each secret (and each list) as a param
//! of its own, and the configuration names the param:
//!
//! ```yaml
//! store: {bucket: backups, secret_access_key: {from_env: LOCKSTEP_S3_SECRET_ACCESS_KEY}}
//! ```
//!
//! The variable's text is used as it is (a PEM keeps its line breaks), except where the key
//! takes a list or a map (`instances`, `replicas`, `recipients`, `retention`, ...): there the
//! text is read as JSON or YAML, which is what Concourse makes of a list var.
//!
//! Resolving happens before the configuration is parsed, so every parser downstream sees
//! plain values. Errors name the key and the variable, never the value.

use anyhow::{anyhow, bail};
use serde_json::Value;

/// The key that marks a reference.
pub const KEY: &str = "from_env";

/// The params every task file declares (empty) for its configuration to name: the
/// conventional names, so a pipeline step can set them without Concourse's "defined in
/// pipeline but missing from task file" warning, and `fly execute` fills them from the
/// operator's environment.
pub const TASK_PARAMS: &[&str] = &[
    "LOCKSTEP_SSH_PRIVATE_KEY",
    "LOCKSTEP_INSTANCES",
    "LOCKSTEP_S3_ACCESS_KEY_ID",
    "LOCKSTEP_S3_SECRET_ACCESS_KEY",
    "LOCKSTEP_REPLICA_S3_ACCESS_KEY_ID",
    "LOCKSTEP_REPLICA_S3_SECRET_ACCESS_KEY",
    "LOCKSTEP_AGE_IDENTITY",
    "LOCKSTEP_RETENTION",
    "LOCKSTEP_BOSH_CLIENT_SECRET",
    "LOCKSTEP_BOSH_CA_CERT",
    "LOCKSTEP_ALL_PROXY_PRIVATE_KEY",
];

/// Keys (as dotted paths, `[]` for a list's elements) whose values are lists or maps: a
/// reference there is read as JSON or YAML. Everywhere else its text is taken verbatim.
const STRUCTURED: &[&str] = &[
    "target",
    "target.hosts",
    "target.hosts.instances",
    "target.hosts.instances[]",
    "target.director",
    "target.deployment",
    "target.local",
    "target.local.instances",
    "store",
    "store.replicas",
    "store.replicas[]",
    "encryption",
    "encryption.recipients",
    "retention",
    "ssh",
    "opsman",
    "opsman.products",
];

/// Where references are resolved from.
pub enum Env<'a> {
    /// A process's environment (the tasks, `lockstep run`).
    Lookup(&'a dyn Fn(&str) -> Option<String>),
    /// None: the Concourse resource's `source:`, whose container environment the pipeline
    /// does not set; a reference there is a mistake worth a clear message.
    Refused,
}

/// Whether the key at `path` (dotted, `[]` for list elements) takes a list or a map.
pub fn takes_structure(path: &str) -> bool {
    STRUCTURED.contains(&path)
}

/// Every well-formed `{from_env: NAME}` in `v`: (the key's path, NAME).
pub fn references(v: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        if let Ok(Some(name)) = reference(v, at) {
            out.push((at.to_string(), name));
            return;
        }
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| walk(x, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, out)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, &format!("{at}[]"), out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// Replaces every `{from_env: NAME}` in `v`.
pub fn resolve(v: &Value, env: &Env) -> anyhow::Result<Value> {
    walk(v, "", env)
}

/// `Some(NAME)` when `v` is a reference; an error when it looks like one but is malformed.
fn reference(v: &Value, at: &str) -> anyhow::Result<Option<String>> {
    let Value::Object(m) = v else { return Ok(None) };
    let Some(name) = m.get(KEY) else { return Ok(None) };
    if m.len() != 1 {
        bail!("{}: a `{KEY}` reference takes no other keys (found: {})", shown(at), m.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    let Value::String(name) = name else {
        bail!("{}: `{KEY}` takes the name of an environment variable, e.g. {{{KEY}: LOCKSTEP_S3_SECRET_ACCESS_KEY}}", shown(at));
    };
    let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        bail!("{}: `{KEY}: {name}` is not an environment variable name (letters, digits and _)", shown(at));
    }
    Ok(Some(name.clone()))
}

fn shown(at: &str) -> &str {
    if at.is_empty() { "the configuration" } else { at }
}

fn walk(v: &Value, at: &str, env: &Env) -> anyhow::Result<Value> {
    if let Some(name) = reference(v, at)? {
        return fetch(&name, at, env);
    }
    Ok(match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                out.insert(k.clone(), walk(x, &path, env)?);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, &format!("{at}[]"), env)).collect::<anyhow::Result<_>>()?),
        other => other.clone(),
    })
}

fn fetch(name: &str, at: &str, env: &Env) -> anyhow::Result<Value> {
    let lookup = match env {
        Env::Lookup(f) => f,
        Env::Refused => bail!(
            "{}: `{KEY}: {name}` works in the tasks' LOCKSTEP_CONFIG and with `lockstep run`, not in a resource's \
             source (a resource's environment is not yours to set): give the value itself, as a ((var))",
            shown(at)
        ),
    };
    let text = lookup(name).filter(|t| !t.is_empty()).ok_or_else(|| {
        anyhow!(
            "{}: the environment variable {name} ({KEY}) is not set or is empty. In a pipeline, give the task step \
             the param `{name}: ((your_var))`; with fly execute or lockstep run, export {name}",
            shown(at)
        )
    })?;
    if !STRUCTURED.contains(&at) {
        return Ok(Value::String(text));
    }
    // JSON first (what Concourse makes of a list or map var), then YAML (what an operator
    // types). The value itself stays out of the message: a list may hold keys.
    serde_json::from_str(&text)
        .or_else(|_| serde_saphyr::from_str::<Value>(&text))
        .map_err(|_| anyhow!("{at}: the environment variable {name} ({KEY}) must hold a list or map as JSON or YAML; it does not parse"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(vars: &[(&str, &str)], v: Value) -> anyhow::Result<Value> {
        let f = |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string());
        resolve(&v, &Env::Lookup(&f))
    }

    #[test]
    fn text_is_taken_verbatim_line_breaks_and_all() {
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\ndef\n-----END OPENSSH PRIVATE KEY-----\n";
        let got = with(&[("K", pem)], json!({"target": {"hosts": {"name": "cf", "private_key": {"from_env": "K"}}}})).unwrap();
        assert_eq!(got["target"]["hosts"]["private_key"], pem);
    }

    #[test]
    fn a_list_key_reads_json_or_yaml() {
        let json_list = r#"[{"group":"api","index":0}]"#;
        let got = with(&[("I", json_list)], json!({"target": {"hosts": {"instances": {"from_env": "I"}}}})).unwrap();
        assert_eq!(got["target"]["hosts"]["instances"][0]["group"], "api");
        let yaml_map = "keep_daily: 14\nkeep_weekly: 8\n";
        let got = with(&[("R", yaml_map)], json!({"retention": {"from_env": "R"}})).unwrap();
        assert_eq!(got["retention"]["keep_weekly"], 8);
        // Text that looks like a list, under a text key, stays text.
        let got = with(&[("S", "[not, a, list]")], json!({"store": {"secret_access_key": {"from_env": "S"}}})).unwrap();
        assert_eq!(got["store"]["secret_access_key"], "[not, a, list]");
    }

    #[test]
    fn references_inside_lists_resolve() {
        let got = with(&[("A", "k1"), ("B", "k2")], json!({"store": {"replicas": [{"access_key_id": {"from_env": "A"}}, {"access_key_id": {"from_env": "B"}}]}})).unwrap();
        assert_eq!(got["store"]["replicas"][1]["access_key_id"], "k2");
    }

    #[test]
    fn a_missing_or_empty_variable_names_the_key_and_the_variable() {
        for vars in [&[][..], &[("S", "")][..]] {
            let e = format!("{:#}", with(vars, json!({"store": {"secret_access_key": {"from_env": "S"}}})).unwrap_err());
            assert!(e.contains("store.secret_access_key") && e.contains("S: ((your_var))"), "{e}");
        }
    }

    #[test]
    fn malformed_references_are_refused() {
        for (v, want) in [
            (json!({"from_env": "A", "x": 1}), "takes no other keys"),
            (json!({"from_env": 3}), "name of an environment variable"),
            (json!({"from_env": "A B"}), "not an environment variable name"),
        ] {
            let e = format!("{:#}", with(&[("A", "x")], json!({"store": {"bucket": v}})).unwrap_err());
            assert!(e.contains(want) && e.contains("store.bucket"), "{e}");
        }
    }

    #[test]
    fn a_structured_value_that_does_not_parse_is_an_error_without_the_value() {
        let e = format!("{:#}", with(&[("I", "[{unclosed: SECRET")], json!({"target": {"hosts": {"instances": {"from_env": "I"}}}})).unwrap_err());
        assert!(e.contains("target.hosts.instances") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn a_resource_source_refuses_references() {
        let e = format!("{:#}", resolve(&json!({"store": {"bucket": {"from_env": "B"}}}), &Env::Refused).unwrap_err());
        assert!(e.contains("not in a resource's source") && e.contains("store.bucket"), "{e}");
    }
}
