//! Quoting for POSIX shells. Everything that reaches a remote shell goes through here:
//! bbr interpolated paths and environment values unquoted, so a space or a `;` in a value
//! changed the command.

/// Quote one word so that `sh` reads it back byte for byte.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return word.to_string();
    }
    // Inside single quotes nothing is special except the quote itself, which we end,
    // escape and reopen: ' -> '\''
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Quote every word and join them with spaces.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

/// Is `name` usable as an environment variable name (so it needs no quoting)?
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sh_echo(words: &[String]) -> Vec<u8> {
        let script = format!("printf '%s\\0' {}", join(words));
        std::process::Command::new("sh").arg("-c").arg(script).output().unwrap().stdout
    }

    #[test]
    fn plain_words_stay_plain() {
        assert_eq!(quote("/var/vcap/jobs/x"), "/var/vcap/jobs/x");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("BBR_VERSION"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A;rm"));
    }

    proptest! {
        #[test]
        fn the_shell_reads_back_what_we_quoted(words in proptest::collection::vec("[^\\x00]{0,20}", 1..5)) {
            let mut expected = Vec::new();
            for w in &words { expected.extend_from_slice(w.as_bytes()); expected.push(0); }
            prop_assert_eq!(sh_echo(&words), expected);
        }
    }
}
