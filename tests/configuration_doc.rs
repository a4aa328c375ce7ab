//! docs/configuration.md against the parsers: every section's table lists exactly the keys
//! the parser for that section accepts, and the page's examples parse.

use lockstep::config::{Config, SECTIONS};
use lockstep::target::Inventory;
use std::collections::BTreeSet;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap()
}

/// The first-column keys of the table after each `<!-- keys: SECTION -->` marker.
fn documented(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for part in text.split("<!-- keys: ").skip(1) {
        let (section, rest) = part.split_once(" -->").expect("a keys marker ends with -->");
        let keys = rest
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2) // header and separator
            .map(|l| l.split('|').nth(1).unwrap().trim().trim_matches('`').to_string())
            .collect();
        out.push((section.to_string(), keys));
    }
    out
}

/// The YAML block after `<!-- example: NAME -->`.
fn example(text: &str, name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = text.split(&marker).nth(1).unwrap_or_else(|| panic!("no {marker}"));
    let body = rest.split("```yaml\n").nth(1).unwrap();
    body.split("\n```").next().unwrap().to_string()
}

#[test]
fn every_section_documents_exactly_the_keys_its_parser_accepts() {
    let docs = documented(&doc());
    let mut problems = Vec::new();
    for (section, keys) in SECTIONS {
        let want: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        match docs.iter().find(|(s, _)| s == section) {
            None => problems.push(format!("section {section} is not documented (no `<!-- keys: {section} -->` table)")),
            Some((_, got)) => {
                for k in want.difference(got) {
                    problems.push(format!("{section}: `{k}` is accepted but not documented"));
                }
                for k in got.difference(&want) {
                    problems.push(format!("{section}: `{k}` is documented but the parser refuses it"));
                }
            }
        }
    }
    for (section, _) in &docs {
        if !SECTIONS.iter().any(|(s, _)| s == section) {
            problems.push(format!("the page documents a section {section} that no parser has"));
        }
    }
    assert!(problems.is_empty(), "docs/configuration.md and the parsers disagree:\n{}", problems.join("\n"));
}

#[test]
fn the_examples_parse() {
    let text = doc();
    let inv = Inventory::parse(&example(&text, "inventory")).expect("the inventory example parses");
    assert_eq!(inv.name, "cf");
    assert_eq!(inv.instances.len(), 2);
    let cfg = Config::parse(&example(&text, "config")).expect("the configuration example parses");
    assert_eq!(cfg.deployment_name(), Some("cf"));
    assert_eq!(cfg.store.describe().matches(" + ").count(), 1, "{}", cfg.store.describe());
}

#[test]
fn a_key_missing_from_a_table_is_noticed() {
    // The check itself must be able to fail: drop one documented key and compare again.
    let text = doc().replacen("| `keep_weekly` |", "| `keep_fortnightly` |", 1);
    let docs = documented(&text);
    let (_, got) = docs.iter().find(|(s, _)| s == "retention").unwrap();
    assert!(!got.contains("keep_weekly") && got.contains("keep_fortnightly"));
}
