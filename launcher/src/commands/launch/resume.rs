//! The worker command line of a restart: `train` resumes from its latest checkpoint.

/// The global options of `clipfleet` that take a value, so that the value is not mistaken for
/// the subcommand.
const GLOBAL_OPTIONS_WITH_VALUE: [&str; 1] = ["--log-format"];

/// The index of the worker's subcommand in `args`: the first argument that is neither an option
/// nor the value of a global option.
fn subcommand_index(args: &[String]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if GLOBAL_OPTIONS_WITH_VALUE.contains(&arg) {
            i += 2;
        } else if arg.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// The arguments of a restart: `train` without `--resume` gets `--resume latest`; a `train`
/// that names a checkpoint (`--resume PATH`) keeps it, because a restarted worker
/// (`CLIPFLEET_RESTART_COUNT` > 0) resumes from the newest checkpoint of its `--output` when
/// there is one, and from PATH only when the run has not written one yet. Any other
/// subcommand is started as it was.
pub(crate) fn resume_args(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    let Some(sub) = subcommand_index(args).filter(|&i| args[i] == "train") else { return out };
    let rest = &args[sub + 1..];
    let end = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    if !rest[..end].iter().any(|a| a == "--resume" || a.starts_with("--resume=")) {
        out.push("--resume".to_owned());
        out.push("latest".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn train_gets_resume_latest() {
        assert_eq!(resume_args(&args("train --config a.toml")), args("train --config a.toml --resume latest"));
        // A named checkpoint stays: the restarted worker prefers --output's newest one itself.
        assert_eq!(resume_args(&args("train --resume foo --steps 9")), args("train --resume foo --steps 9"));
        assert_eq!(resume_args(&args("train --resume=runs/x/step-1")), args("train --resume=runs/x/step-1"));
        assert_eq!(
            resume_args(&args("--log-format json train --steps 3")),
            args("--log-format json train --steps 3 --resume latest")
        );
    }

    #[test]
    fn rewriting_is_idempotent() {
        let once = resume_args(&args("train --steps 3"));
        assert_eq!(resume_args(&once), once);
    }

    #[test]
    fn other_subcommands_are_left_alone() {
        for a in ["eval --checkpoint r", "bench train --steps 2", "--log-format train eval", ""] {
            assert_eq!(resume_args(&args(a)), args(a), "{a}");
        }
    }
}
