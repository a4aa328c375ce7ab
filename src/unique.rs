//! Names nobody can predict: run ids, temporary file names. A temporary name an attacker
//! can guess is one they can plant a symlink at.

/// `bytes` random bytes from getrandom(2), as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // getrandom(2) does not fail for small requests once the pool is initialised; if it
        // somehow does, mix the clock, the pid and a counter: unique, if not secret. Callers
        // that need secrecy also create with O_EXCL, so a guess can only make them fail.
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let mix = t ^ u64::from(std::process::id()).rotate_left(32) ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(48);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (mix.rotate_left(8 * (i as u32 % 8)) & 0xff) as u8;
        }
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_differ_and_have_the_length_asked_for() {
        let a = super::random_hex(8);
        assert_eq!(a.len(), 16);
        assert_ne!(a, super::random_hex(8));
    }
}
