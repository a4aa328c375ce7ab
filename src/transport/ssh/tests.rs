//! Unit tests of the SSH transport's parsing and policies (the real sshd is in tests/).

use super::*;
use super::channel::*;
use super::gateway::*;
use super::keyring::*;

#[test]
fn addresses() {
    assert_eq!(parse_address("10.0.0.5", 22).unwrap(), ("10.0.0.5".into(), 22));
    assert_eq!(parse_address("10.0.0.5:2222", 22).unwrap(), ("10.0.0.5".into(), 2222));
    assert_eq!(parse_address("director.example.com:22", 22).unwrap(), ("director.example.com".into(), 22));
    assert_eq!(parse_address("[::1]:2200", 22).unwrap(), ("::1".into(), 2200));
    assert_eq!(parse_address("::1", 22).unwrap(), ("::1".into(), 22));
    for bad in ["", ":22", "h:0", "h:70000", "h:x", "a b", "u@h", "[::1", "[::1]x", "h/1"] {
        let err = parse_address(bad, 22).unwrap_err().to_string();
        assert!(err.contains("expected HOST or HOST:PORT"), "{bad}: {err}");
    }
}

#[test]
fn public_key_lines() {
    let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ some comment";
    let k = parse_public_key_line(line).unwrap();
    assert_eq!(k.algorithm().as_str(), "ssh-ed25519");
    assert!(parse_public_key_line("AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ").is_ok());
    assert!(parse_public_key_line("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ").is_err());
    assert!(parse_public_key_line("ssh-ed25519 !!!").is_err());
    assert!(parse_public_key_line("").is_err());
}

#[test]
fn bosh_all_proxy_forms() {
    let p = parse_bosh_all_proxy("socks5://localhost:1080", None, HostKeyPolicy::Insecure).unwrap();
    assert!(matches!(p, Proxy::Socks5 { ref host, port: 1080 } if host == "localhost"));
    let e = parse_bosh_all_proxy("http://x:1", None, HostKeyPolicy::Insecure).unwrap_err();
    assert!(e.to_string().contains("unsupported scheme"), "{e}");
    let e = parse_bosh_all_proxy("ssh+socks5://jb@10.0.0.1:22", None, HostKeyPolicy::Insecure).unwrap_err();
    assert!(e.to_string().contains("private-key"), "{e}");
    let e = parse_bosh_all_proxy("ssh+socks5://jb@10.0.0.1:22?private-key=/nonexistent/key", None, HostKeyPolicy::Insecure)
        .unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/key"), "{e:#}");
    let e = parse_bosh_all_proxy("ssh+socks5://jb@10.0.0.1:22?foo=1", None, HostKeyPolicy::Insecure).unwrap_err();
    assert!(e.to_string().contains("unknown parameter \"foo\""), "{e}");
    let e = parse_bosh_all_proxy("socks5://u:pw@h:1", None, HostKeyPolicy::Insecure).unwrap_err();
    assert!(!e.to_string().contains("pw"), "{e}");
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("/tmp/a%20b"), "/tmp/a b");
    assert_eq!(percent_decode("/tmp/%zz%"), "/tmp/%zz%");
}

#[test]
fn stderr_is_capped_keeping_both_ends() {
    let mut b = CappedBuf::default();
    b.push(b"first line\n");
    for _ in 0..300 {
        b.push(&[b'x'; 8192]);
    }
    b.push(b"\nlast line\n");
    let v = b.into_vec();
    assert!(v.len() < STDERR_LIMIT + 100);
    assert!(v.starts_with(b"first line\n"));
    assert!(v.ends_with(b"last line\n"));
    assert!(String::from_utf8_lossy(&v).contains("bytes of stderr omitted"));
}

#[test]
fn secrets_stay_out_of_debug() {
    assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(<redacted>)");
    assert_eq!(format!("{:?}", KeySource::Pem("-----BEGIN".into())), "Pem(<redacted>)");
}
