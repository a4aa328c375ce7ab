//! The command line's own tests: parsing (flags in any position), the cleanup command it
//! advises, and the artifact table `list` prints.

use super::own::artifact_table;
use super::*;
use crate::artifact::marker::CommitMarker;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("lockstep").chain(args.iter().copied()))
}

#[test]
fn target_flags_work_before_or_after_the_action() {
    for args in [
        &["hosts", "--inventory", "cf.yml", "backup", "-a", "/b"][..],
        &["hosts", "backup", "--inventory", "cf.yml", "-a", "/b"][..],
        &["hosts", "backup", "-a", "/b", "--inventory", "cf.yml"][..],
    ] {
        let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Command::Hosts(h) = cli.command else { panic!("{args:?}") };
        assert_eq!(h.inventory.as_deref(), Some(std::path::Path::new("cf.yml")), "{args:?}");
        assert!(matches!(h.action, Action::Backup { artifact_path: Some(_), .. }), "{args:?}");
    }
    let cli = parse(&["local", "backup", "--instance", "api/0=/vm", "--name", "cf"]).unwrap();
    let Command::Local(l) = cli.command else { panic!() };
    assert_eq!((l.name.as_str(), l.instances.as_slice()), ("cf", &["api/0=/vm".to_string()][..]));
    let cli = parse(&["director", "pre-backup-check", "--host", "10.0.0.6", "-u", "jumpbox", "--private-key-path", "k", "--known-hosts", "kh"]).unwrap();
    let Command::Director(d) = cli.command else { panic!() };
    assert_eq!(d.host.as_deref(), Some("10.0.0.6"));
    assert_eq!(d.ssh.known_hosts.as_deref(), Some(std::path::Path::new("kh")));
}

#[test]
fn a_misplaced_flag_is_no_longer_mistaken_for_another() {
    // clap used to suggest `--min-stores` for `--instance` given after `backup`.
    let e = parse(&["local", "backup", "--instanse", "a/0=/x"]).unwrap_err().to_string();
    assert!(!e.contains("--min-stores"), "{e}");
}

#[test]
fn the_cleanup_command_is_whole_and_quoted_and_holds_no_secret() {
    let cli = parse(&[
        "hosts", "backup", "--inventory", "my dir/cf.yml", "--known-hosts", "kh", "--connect-timeout", "1m",
        "--gateway", "jb@10.0.0.5", "--gateway-private-key-path", "/keys/jb.pem",
    ])
    .unwrap();
    let Command::Hosts(h) = cli.command else { panic!() };
    assert_eq!(
        command_line::hosts(&h),
        "lockstep hosts --inventory 'my dir/cf.yml' --known-hosts kh --connect-timeout 1m --gateway jb@10.0.0.5 \
         --gateway-private-key-path /keys/jb.pem"
    );

    let cli = parse(&["deployment", "-t", "https://10.0.0.6:25555", "-u", "bbr", "-p", "s3cr3t-value", "-d", "cf", "--ca-cert", "/ca.pem", "backup"]).unwrap();
    let Command::Deployment(d) = cli.command else { panic!() };
    let line = command_line::deployment(&d, "cf");
    assert_eq!(
        line,
        "lockstep deployment --target https://10.0.0.6:25555 --username bbr --password \"$BOSH_CLIENT_SECRET\" --deployment cf --ca-cert /ca.pem"
    );
    assert!(!line.contains("s3cr3t"), "{line}");

    let cli = parse(&["local", "--name", "cf", "--instance", "api/0=/srv/vm api", "backup"]).unwrap();
    let Command::Local(l) = cli.command else { panic!() };
    assert_eq!(command_line::local(&l), "lockstep local --name cf --instance 'api/0=/srv/vm api'");
    assert_eq!(command_line::run(Some(std::path::Path::new("/etc/cf.yml"))), "lockstep run --config /etc/cf.yml");
    assert_eq!(command_line::run(None), "lockstep run");
}

#[test]
fn a_ca_given_as_pem_text_stays_out_of_the_cleanup_command() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    let cli = parse(&["deployment", "-t", "https://d", "-u", "u", "-p", "p", "-d", "cf", "--ca-cert", pem, "backup"]).unwrap();
    let Command::Deployment(d) = cli.command else { panic!() };
    assert!(!command_line::deployment(&d, "cf").contains("BEGIN"));
}

#[test]
fn list_prints_labelled_aligned_columns() {
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let marker = |finished: &str, compression: &str, encrypted: bool, lock_free: bool| {
        let mut m = CommitMarker::new("cf", "cf_x");
        m.finished_at = finished.into();
        m.compression = compression.into();
        m.encrypted = encrypted;
        m.lock_free = lock_free;
        m
    };
    let rows = vec![
        ("cf_20261130T120000Z".to_string(), marker("2026-11-30T12:00:00Z", "zstd", true, false)),
        ("cf_20261201T115900Z".to_string(), marker("2026-12-01T11:59:00Z", "none", false, true)),
    ];
    let table = artifact_table(&rows, now);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("ARTIFACT") && lines[0].contains("SIZE") && lines[0].contains("CODEC"), "{table}");
    assert!(lines[1].starts_with("cf_20261130T120000Z") && lines[1].contains("zstd+age") && lines[1].contains("1day ago"), "{table}");
    assert!(lines[2].contains("LOCK-FREE") && lines[2].contains("1m ago"), "{table}");
    // Aligned: every row's CODEC cell starts where the header's does.
    let col = lines[0].find("CODEC").unwrap();
    assert!(lines[1][col..].starts_with("zstd+age") && lines[2][col..].starts_with("none"), "{table}");
}
