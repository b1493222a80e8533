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

/// The arguments of a restart: for `train`, the value of `--resume X` / `--resume=X` becomes
/// `latest`, or `--resume latest` is appended; any other subcommand is started as it was.
pub(crate) fn resume_args(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    let Some(sub) = subcommand_index(args).filter(|&i| args[i] == "train") else { return out };
    let mut found = false;
    let mut i = sub + 1;
    while i < out.len() {
        if out[i] == "--" {
            break;
        }
        if out[i] == "--resume" {
            found = true;
            if i + 1 < out.len() {
                out[i + 1] = "latest".to_owned();
            } else {
                out.push("latest".to_owned());
            }
            i += 2;
            continue;
        }
        if out[i].starts_with("--resume=") {
            found = true;
            out[i] = "--resume=latest".to_owned();
        }
        i += 1;
    }
    if !found {
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
        assert_eq!(resume_args(&args("train --resume foo --steps 9")), args("train --resume latest --steps 9"));
        assert_eq!(resume_args(&args("train --resume=runs/x/step-1")), args("train --resume=latest"));
        assert_eq!(resume_args(&args("train --resume")), args("train --resume latest"));
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
