//! The architecture, checked: the dependency direction the docs promise (the core knows
//! nothing of SSH, S3 or the front ends), a doc line atop every module, no file whose
//! non-test code outgrows 800 lines, and docs that only name files that exist.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the crate root, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(root()).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The code of a file before its `#[cfg(test)]` module, without comments: what it uses.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Files under `under` whose code names any of `forbidden`, with what they named.
fn offenders(under: &str, forbidden: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in rust_files(Path::new(under)) {
        let code = code_of(&f);
        for word in forbidden {
            if code.contains(word) {
                out.push(format!("{} uses {word}", f.display()));
            }
        }
    }
    out
}

#[test]
fn the_library_never_imports_its_front_ends() {
    let mut bad = Vec::new();
    for dir in ["src/artifact", "src/instance", "src/orchestrate", "src/store", "src/target", "src/transport"] {
        bad.extend(offenders(dir, &["crate::frontend"]));
    }
    for file in ["src/config.rs", "src/events.rs", "src/lock_order.rs", "src/model.rs", "src/retention.rs", "src/service.rs"] {
        if code_of(Path::new(file)).contains("crate::frontend") {
            bad.push(format!("{file} uses crate::frontend"));
        }
    }
    assert!(bad.is_empty(), "the library must not depend on the CLI or the resource:\n{}", bad.join("\n"));
}

#[test]
fn the_orchestration_knows_nothing_of_ssh_s3_or_http() {
    let bad = offenders(
        "src/orchestrate",
        &["transport::ssh", "store::s3", "target::bosh", "target::hosts", "russh", "object_store", "reqwest", "config::"],
    );
    assert!(bad.is_empty(), "the workflows are written against the traits only:\n{}", bad.join("\n"));
}

#[test]
fn the_edges_do_not_reach_up() {
    // A transport carries commands; it knows neither BBR nor the workflows.
    let mut bad = offenders("src/transport", &["crate::instance", "crate::target", "crate::orchestrate", "crate::store"]);
    // A store holds bytes; which objects make an artifact is the artifact module's business.
    bad.extend(offenders("src/store", &["crate::orchestrate", "crate::target", "crate::instance", "crate::transport"]));
    // The domain is pure.
    for file in ["src/model.rs", "src/lock_order.rs"] {
        let code = code_of(Path::new(file));
        for word in ["crate::transport", "crate::store", "crate::target", "crate::instance", "crate::orchestrate", "tokio::"] {
            if code.contains(word) {
                bad.push(format!("{file} uses {word}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_module_opens_with_a_doc_line() {
    let bare: Vec<String> = rust_files(Path::new("src"))
        .into_iter()
        .filter(|f| !std::fs::read_to_string(root().join(f)).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(bare.is_empty(), "modules without a `//!` doc line saying what they are for: {bare:?}");
}

#[test]
fn no_file_holds_more_than_800_lines_of_non_test_code() {
    let big: Vec<String> = rust_files(Path::new("src"))
        .into_iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(root().join(&f)).unwrap();
            let n = text.split("\n#[cfg(test)]").next().unwrap_or_default().lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(big.is_empty(), "split these by concern: {big:?}");
}

#[test]
fn docs_name_only_source_files_that_exist() {
    let mut missing = Vec::new();
    let mut docs: Vec<PathBuf> = vec![root().join("README.md"), root().join("src/lib.rs")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        docs.push(e.unwrap().path());
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (i, _) in text.match_indices("src/") {
            // Only paths: `src/` at the start of a word (not `demo-src/`).
            if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() || i > 0 && b"-_".contains(&text.as_bytes()[i - 1]) {
                continue;
            }
            let path: String =
                text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || "/_.-".contains(*c)).collect();
            let path = path.trim_end_matches(['.', '-']);
            if path.ends_with(".rs") || path.ends_with('/') {
                if !root().join(path).exists() {
                    missing.push(format!("{} names {path}", doc.display()));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
