//! Open files. A run keeps one SSH connection (one socket) open to every instance from
//! discovery to the end, so about a thousand instances reach the usual soft limit of 1,024
//! open files: the run would fail midway, perhaps with the platform locked, on EMFILE.
//! Every binary raises its soft limit to the hard limit at start ([`raise_soft_limit`]),
//! and discovery refuses a deployment that still does not fit ([`check`]), before any
//! script runs.

/// Files a run needs besides one per instance: the store's connections or files (one or
/// two per transfer in flight), the log, the runtime's own.
const RESERVE: u64 = 64;

/// Raises the soft limit on open files to the hard limit; returns (soft, hard) after.
pub fn raise_soft_limit() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (u64::MAX, u64::MAX);
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

/// How many open files a run over `instances` instances, `in_flight` operations at a
/// time, needs at most.
pub fn needed(instances: usize, in_flight: usize) -> u64 {
    instances as u64 + 2 * in_flight.min(instances) as u64 + RESERVE
}

/// Refuses a run that cannot fit in the open-file limit, saying what to do.
pub fn check(instances: usize, in_flight: usize) -> anyhow::Result<()> {
    let (soft, hard) = raise_soft_limit();
    check_against(instances, in_flight, soft, hard)
}

fn check_against(instances: usize, in_flight: usize, soft: u64, hard: u64) -> anyhow::Result<()> {
    let need = needed(instances, in_flight);
    if need > soft {
        anyhow::bail!(
            "the deployment has {instances} instances: lockstep keeps a connection open to each and needs up to {need} open files, \
             but this process may open only {soft} (hard limit {hard}); nothing was run. Raise the limit (`ulimit -n {need}`, \
             or the container's nofile limit) and run again"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_that_fits_passes_and_one_that_does_not_is_told_what_to_raise() {
        assert!(check_against(900, 8, 1024, 1024).is_ok());
        let e = check_against(1000, 8, 1024, 1024).unwrap_err().to_string();
        assert!(e.contains("1000 instances") && e.contains("ulimit -n 1080") && e.contains("only 1024"), "{e}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = raise_soft_limit();
        assert_eq!(soft, hard);
    }
}
