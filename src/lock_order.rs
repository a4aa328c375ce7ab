//! Lock ordering: Kahn levels over every job on every instance.
//!
//! A job A whose metadata says `backup_should_be_locked_before: [{job_name: B, release: R}]`
//! is locked before every job named B (of release R, when releases are known) on any
//! instance. Jobs in one level have no constraint between them and are locked in
//! parallel; the next level starts when the previous one has finished. Unlock runs the
//! same levels reversed. Constraints that name jobs which do not exist are ignored, as
//! bbr does since v1.2.3.

use crate::model::{Direction, InstanceId, Job};

/// A node of the ordering graph: one job on one instance.
pub type JobRef<'a> = (&'a InstanceId, &'a Job);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job locking dependency graph is cyclic: {}", .jobs.join(", "))]
pub struct CycleError {
    /// The jobs that could not be ordered, as `<job> on <group>/<index>`.
    pub jobs: Vec<String>,
}

/// Does the specifier (job name + release) select this job?
fn selects(name: &str, release: &str, job: &Job) -> bool {
    job.name == name
        && match &job.release {
            Some(r) => r == release,
            // Without a manifest we do not know releases; match by name (bbr's director mode).
            None => true,
        }
}

/// Returns the levels as indices into `jobs`, in lock order. Order within a level follows
/// the input order, so the result is deterministic.
pub fn levels(jobs: &[JobRef<'_>], dir: Direction) -> Result<Vec<Vec<usize>>, CycleError> {
    let n = jobs.len();
    // successors[a] = jobs that must be locked after a.
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (a, (_, job)) in jobs.iter().enumerate() {
        for spec in dir.constraints(&job.metadata) {
            for (b, (_, other)) in jobs.iter().enumerate() {
                if a != b && selects(&spec.job_name, &spec.release, other) && !successors[a].contains(&b)
                {
                    successors[a].push(b);
                    indegree[b] += 1;
                }
            }
        }
    }
    let mut done = vec![false; n];
    let mut remaining = n;
    let mut out = Vec::new();
    while remaining > 0 {
        let level: Vec<usize> = (0..n).filter(|&i| !done[i] && indegree[i] == 0).collect();
        if level.is_empty() {
            let jobs = (0..n)
                .filter(|&i| !done[i])
                .map(|i| format!("{} on {}", jobs[i].1.name, jobs[i].0))
                .collect();
            return Err(CycleError { jobs });
        }
        for &i in &level {
            done[i] = true;
            remaining -= 1;
            for &s in &successors[i] {
                indegree[s] -= 1;
            }
        }
        out.push(level);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobMetadata, LockBefore, ScriptKind};

    fn job(name: &str, release: Option<&str>, before: &[(&str, &str)]) -> Job {
        Job {
            name: name.into(),
            release: release.map(str::to_string),
            scripts: [ScriptKind::PreBackupLock].into_iter().collect(),
            metadata: JobMetadata {
                backup_should_be_locked_before: before
                    .iter()
                    .map(|(j, r)| LockBefore { job_name: j.to_string(), release: r.to_string() })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(input: &[(InstanceId, Job)], lv: &[Vec<usize>]) -> Vec<Vec<String>> {
        lv.iter()
            .map(|l| l.iter().map(|&i| format!("{}@{}", input[i].1.name, input[i].0)).collect())
            .collect()
    }

    fn run(input: &[(InstanceId, Job)]) -> Result<Vec<Vec<String>>, CycleError> {
        let refs: Vec<JobRef<'_>> = input.iter().map(|(i, j)| (i, j)).collect();
        levels(&refs, Direction::Backup).map(|l| names(input, &l))
    }

    fn id(g: &str) -> InstanceId {
        InstanceId::new(g, "0")
    }

    #[test]
    fn no_jobs_gives_no_levels() {
        assert_eq!(run(&[]).unwrap(), Vec::<Vec<String>>::new());
    }

    #[test]
    fn independent_jobs_share_one_level() {
        let input = vec![(id("a"), job("x", None, &[])), (id("b"), job("y", None, &[]))];
        assert_eq!(run(&input).unwrap(), vec![vec!["x@a/0", "y@b/0"]]);
    }

    #[test]
    fn a_dependency_makes_two_levels() {
        let input = vec![(id("db"), job("db", None, &[])), (id("api"), job("api", None, &[("db", "r")]))];
        assert_eq!(run(&input).unwrap(), vec![vec!["api@api/0"], vec!["db@db/0"]]);
    }

    #[test]
    fn dependency_on_missing_job_is_ignored() {
        let input = vec![(id("api"), job("api", None, &[("nope", "r")]))];
        assert_eq!(run(&input).unwrap(), vec![vec!["api@api/0"]]);
    }

    #[test]
    fn chain_and_multiple_instances() {
        // api (2 instances) before worker (2 instances) before db.
        let input = vec![
            (InstanceId::new("api", "0"), job("api", None, &[("worker", "r")])),
            (InstanceId::new("api", "1"), job("api", None, &[("worker", "r")])),
            (InstanceId::new("w", "0"), job("worker", None, &[("db", "r")])),
            (InstanceId::new("w", "1"), job("worker", None, &[("db", "r")])),
            (InstanceId::new("db", "0"), job("db", None, &[])),
        ];
        assert_eq!(
            run(&input).unwrap(),
            vec![vec!["api@api/0", "api@api/1"], vec!["worker@w/0", "worker@w/1"], vec!["db@db/0"]]
        );
    }

    #[test]
    fn double_dependency_waits_for_both() {
        let input = vec![
            (id("a"), job("a", None, &[("c", "r")])),
            (id("b"), job("b", None, &[("c", "r")])),
            (id("c"), job("c", None, &[])),
        ];
        assert_eq!(run(&input).unwrap(), vec![vec!["a@a/0", "b@b/0"], vec!["c@c/0"]]);
    }

    #[test]
    fn release_must_match_when_known() {
        let input = vec![
            (id("a"), job("a", Some("rel-a"), &[("db", "right")])),
            (id("b"), job("db", Some("wrong"), &[])),
            (id("c"), job("db", Some("right"), &[])),
        ];
        assert_eq!(run(&input).unwrap(), vec![vec!["a@a/0", "db@b/0"], vec!["db@c/0"]]);
    }

    #[test]
    fn cycles_are_rejected_and_named() {
        let input = vec![
            (id("a"), job("a", None, &[("b", "r")])),
            (id("b"), job("b", None, &[("a", "r")])),
            (id("c"), job("c", None, &[])),
        ];
        let err = run(&input).unwrap_err();
        assert_eq!(err.jobs, vec!["a on a/0", "b on b/0"]);
        assert!(err.to_string().starts_with("job locking dependency graph is cyclic"));
    }

    #[test]
    fn self_dependency_is_not_a_cycle_within_one_job() {
        // A job naming itself matches other instances of itself, never its own node.
        let input = vec![(id("a"), job("a", None, &[("a", "r")]))];
        assert_eq!(run(&input).unwrap(), vec![vec!["a@a/0"]]);
    }
}
