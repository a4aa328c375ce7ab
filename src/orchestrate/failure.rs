//! What went wrong, and the exit code bbr would give for it.
//!
//! bbr ORs a bit per error kind over every error of a run: 1 for anything, 4 for a lock
//! failure, 8 for an unlock failure, 16 for a cleanup failure (2 is unused).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    General,
    Lock,
    Unlock,
    Cleanup,
    /// `/var/vcap/store/bbr-backup` already existed on an instance.
    ArtifactDirExists,
    /// Copying or checksumming an artifact failed.
    Drain,
    /// A stop was requested.
    Cancelled,
}

impl FailureKind {
    pub fn exit_bits(self) -> i32 {
        match self {
            FailureKind::Lock => 4,
            FailureKind::Unlock => 8,
            FailureKind::Cleanup => 16,
            FailureKind::General | FailureKind::ArtifactDirExists | FailureKind::Drain | FailureKind::Cancelled => 1,
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(kind: FailureKind, error: anyhow::Error) -> Self {
        Failure { kind, error }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:#}` keeps the whole cause chain on one line: "outer: inner: root".
        write!(f, "{:#}", self.error)
    }
}

/// Every failure of a run, in the order they happened.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<Failure>);

impl Failures {
    pub fn push(&mut self, kind: FailureKind, error: anyhow::Error) {
        self.0.push(Failure::new(kind, error));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn has(&self, kind: FailureKind) -> bool {
        self.0.iter().any(|f| f.kind == kind)
    }
    pub fn extend(&mut self, other: Failures) {
        self.0.extend(other.0);
    }

    /// The OR of every failure's bits; 0 when there are none.
    pub fn exit_code(&self) -> i32 {
        self.0.iter().fold(0, |code, f| code | f.kind.exit_bits())
    }

    /// bbr adds advice to run a cleanup when something may be left locked or staged.
    /// (bbr looked only at the first error for one of these kinds; we look at all.)
    pub fn needs_cleanup(&self) -> bool {
        self.0.iter().any(|f| {
            matches!(
                f.kind,
                FailureKind::Unlock | FailureKind::Cleanup | FailureKind::ArtifactDirExists | FailureKind::Drain | FailureKind::Cancelled
            )
        })
    }

    /// `N error(s) occurred:` followed by each error with its causes, as bbr prints them.
    pub fn render(&self) -> String {
        let mut s = format!("{} error{} occurred:\n", self.0.len(), if self.0.len() == 1 { "" } else { "s" });
        for (i, f) in self.0.iter().enumerate() {
            s.push_str(&format!("error {}:\n{}\n", i + 1, f));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn of(kinds: &[FailureKind]) -> Failures {
        let mut f = Failures::default();
        for &k in kinds {
            f.push(k, anyhow!("x"));
        }
        f
    }

    #[test]
    fn exit_codes_are_ored_bits() {
        use FailureKind::*;
        assert_eq!(of(&[]).exit_code(), 0);
        assert_eq!(of(&[Lock]).exit_code(), 4);
        assert_eq!(of(&[Unlock]).exit_code(), 8);
        assert_eq!(of(&[Lock, Unlock]).exit_code(), 12);
        assert_eq!(of(&[General, Cleanup]).exit_code(), 17);
        assert_eq!(of(&[Cleanup]).exit_code(), 16);
        assert_eq!(of(&[Drain, Drain, ArtifactDirExists]).exit_code(), 1);
        assert_eq!(of(&[Lock, Unlock, Cleanup, General]).exit_code(), 29);
    }

    #[test]
    fn cleanup_advice_looks_at_every_error() {
        use FailureKind::*;
        assert!(!of(&[General, Lock]).needs_cleanup());
        assert!(of(&[General, Unlock]).needs_cleanup());
        assert!(of(&[Lock, ArtifactDirExists]).needs_cleanup());
    }

    #[test]
    fn render_lists_every_error_with_causes() {
        let mut f = Failures::default();
        f.push(FailureKind::Lock, anyhow!("root cause").context("lock of redis failed"));
        f.push(FailureKind::Unlock, anyhow!("boom"));
        let text = f.render();
        assert!(text.starts_with("2 errors occurred:\nerror 1:\nlock of redis failed: root cause\nerror 2:\nboom"), "{text}");
    }
}
