//! Command line: a faithful parse of argv, no system calls. No option takes a secret
//! (`/proc/PID/cmdline` is world-readable); configuration comes from the environment.

use std::ffi::OsString;

pub const DEFAULT_COMMAND: &str = "claude";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// PID 1: proxy, child, init loop.
    Run,
    /// `bottle-init exec`: join a running bottle-init (for `docker exec`).
    Exec,
    /// `bottle-init check`: prove the running bottle-init's isolation.
    Check,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Cli {
    Help,
    Version,
    Start {
        mode: Mode,
        command: Vec<OsString>,
    },
    /// `bottle-init check [--json] [--probe HOST:PORT]`. `probe` is the text as given (an
    /// empty one when `--probe` had no value); `crate::check` parses it.
    Check {
        json: bool,
        probe: Option<String>,
    },
    /// Internal: `bottle-init check --child MODE PROBE`, the probe half of `check`, which
    /// `check` itself runs as the child user (see `crate::check::probe`).
    CheckChild {
        mode: String,
        probe: String,
    },
    /// `bottle-init status [--json]`: what the running PID 1 has served.
    Status {
        json: bool,
    },
}

/// An unknown option, with the text to show.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown option {:?}; see `bottle-init --help` (put `--` before a command that starts with `-`)",
            self.0
        )
    }
}

pub const HELP: &str = "\
bottle-init: PID 1 for Claude Code containers. Holds the upstream credential in a root process
that the command cannot read, serves it through a local proxy, and runs the command as an
unprivileged user with a per-run placeholder credential.

Usage:
  bottle-init [OPTIONS] [--] [COMMAND [ARG...]]        run COMMAND (default: claude) as PID 1
  bottle-init exec [OPTIONS] [--] [COMMAND [ARG...]]   run COMMAND inside a running bottle-init
                                                       (for `docker exec`: own session, and on
                                                       a terminal its own pty; never use
                                                       `docker exec -u claude`, which hands
                                                       claude's uid the real token)
  bottle-init check [--json] [--probe HOST:PORT]       prove the running bottle-init's isolation
                                                       (`docker exec C /bottle-init check`): one
                                                       line per check, ✔ or ✘; exit 0 iff all
                                                       pass, 1 if one fails; --probe: the
                                                       address allowlist mode must refuse
                                                       (default 192.0.2.1:443)
  bottle-init status [--json]                          what the running PID 1 served in this
                                                       run: requests by status, tokens by kind
                                                       and model, egress decisions, open
                                                       connections (as root: `docker exec C
                                                       /bottle-init status`)
Options:
  -h, --help       print this help
  -V, --version    print the version

Environment (set exactly one credential):
  CLAUDE_CODE_OAUTH_TOKEN  OAuth token (from `claude setup-token`), sent as Authorization: Bearer
  ANTHROPIC_API_KEY        API key, sent as x-api-key
  BOTTLE_TOKEN_FILE        file holding the OAuth token (Docker/Kubernetes secrets); refused
                           if the child user owns it or can read it (make it root:root 0400)
  BOTTLE_API_KEY_FILE      file holding the API key; same rules as BOTTLE_TOKEN_FILE
  BOTTLE_INSECURE_SECRET_FILE  1: accept a secret file the child user can read or owns
  BOTTLE_USER              child user: uid[:gid] or a name from /etc/passwd (default 1000);
                           a uid with no passwd entry gets HOME=/home/uid-<UID> (0700, its own)
  BOTTLE_UPSTREAM          https://host[:port] (default https://api.anthropic.com)
  BOTTLE_UPSTREAM_CA       PEM file of extra trusted root certificates for the upstream
  BOTTLE_LISTEN            proxy address, loopback only (default 127.0.0.1:0, a free port)
  BOTTLE_INSECURE_LISTEN   1: allow a non-loopback BOTTLE_LISTEN (not in allowlist mode)
  BOTTLE_GRACE             seconds from SIGTERM to SIGKILL, for leftovers and after PID 1
                           got SIGTERM (default 5)
  BOTTLE_LOG               log filter: error, warn, info, debug, or module=level (default
                           info; warn when stderr is a terminal, so logs stay out of
                           claude's screen)
  BOTTLE_RUN_DIR           where PID 1 publishes state for `exec` (default /run/bottle-init)
  BOTTLE_EGRESS            open (default), api-only (no IP network; API over a Unix socket),
                           or allowlist (needs --cap-add NET_ADMIN; see BOTTLE_ALLOW_HOSTS)
  BOTTLE_ALLOW_HOSTS       allowlist mode: hosts the child may reach through the proxy's
                           CONNECT: name, *.suffix or IP, optional :port (443), optional /private
  BOTTLE_INSECURE_HOST_NETWORK  1: allow allowlist in the host's network namespace (--network
                           host), where its rules filter the child's uid on the whole host
  BOTTLE_MAX_REQUESTS_PER_MINUTE  at most this many requests forwarded per 60 s; more get 429
                           (default: no limit)
  BOTTLE_MAX_TOKENS        once replies reported this many input + output tokens in this run,
                           further requests get 429 (default: no limit)
  BOTTLE_LOG_FORMAT        human (default) or json (one object per line, request fields as keys)

Exit status: the command's; 128+N if it died of signal N; 127 command not found;
126 not executable; 64 usage, or a bottle-init already runs here (use `bottle-init exec`);
69 `exec`, `check` or `status` found no running bottle-init; 70 the proxy thread stopped
(the command was stopped: SIGTERM, SIGKILL after BOTTLE_GRACE); 71 system error; 77 not root /
missing capability; 78 configuration error.
";

/// The `--version` line: the package version and, when the build knew it (build.rs), the
/// commit it was built from, e.g. `bottle-init 0.1.0 (abc1234 2026-12-01)`.
pub fn version() -> String {
    version_line(env!("CARGO_PKG_VERSION"), option_env!("BOTTLE_INIT_COMMIT"))
}

fn version_line(pkg: &str, commit: Option<&str>) -> String {
    match commit {
        Some(c) if !c.is_empty() => format!("bottle-init {pkg} ({c})"),
        _ => format!("bottle-init {pkg}"),
    }
}

/// Parses the arguments after argv[0].
pub fn parse(args: &[OsString]) -> Result<Cli, UsageError> {
    if args.first().is_some_and(|a| a == "status") {
        return match args.get(1).and_then(|a| a.to_str()) {
            None if args.len() == 1 => Ok(Cli::Status { json: false }),
            Some("--json") if args.len() == 2 => Ok(Cli::Status { json: true }),
            Some("-h" | "--help") => Ok(Cli::Help),
            _ => Err(UsageError(
                args[1..]
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
        };
    }
    if args.first().is_some_and(|a| a == "check") {
        return parse_check(&args[1..]);
    }
    let (mode, rest) = match args.first() {
        Some(a) if a == "exec" => (Mode::Exec, &args[1..]),
        _ => (Mode::Run, args),
    };
    // Every option ends parsing (help, version) or is an error, so only the first argument
    // can be one; `--` ends options explicitly.
    let start = match rest.first() {
        Some(a) if a == "--" => 1,
        Some(a) => match a.to_str() {
            Some("-h") | Some("--help") => return Ok(Cli::Help),
            Some("-V") | Some("--version") => return Ok(Cli::Version),
            _ if a.as_encoded_bytes().starts_with(b"-") && a.len() > 1 => {
                return Err(UsageError(a.to_string_lossy().into_owned()));
            }
            _ => 0,
        },
        None => 0,
    };
    let mut command: Vec<OsString> = rest[start..].to_vec();
    if command.is_empty() {
        command.push(DEFAULT_COMMAND.into());
    }
    Ok(Cli::Start { mode, command })
}

/// `check`'s options (it takes no command).
fn parse_check(args: &[OsString]) -> Result<Cli, UsageError> {
    let text = |a: &OsString| a.to_string_lossy().into_owned();
    if args.first().is_some_and(|a| a == "--child") {
        return match args {
            [_, mode, probe] => Ok(Cli::CheckChild {
                mode: text(mode),
                probe: text(probe),
            }),
            _ => Err(UsageError("--child".into())),
        };
    }
    let (mut json, mut probe) = (false, None);
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.to_str() {
            Some("--json") => json = true,
            Some("-h") | Some("--help") => return Ok(Cli::Help),
            Some("--probe") => probe = Some(rest.next().map(text).unwrap_or_default()),
            Some(s) if s.starts_with("--probe=") => probe = Some(s["--probe=".len()..].into()),
            _ => return Err(UsageError(text(a))),
        }
    }
    Ok(Cli::Check { json, probe })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_takes_json_and_probe() {
        assert_eq!(
            p(&["check"]).unwrap(),
            Cli::Check {
                json: false,
                probe: None
            }
        );
        assert_eq!(
            p(&["check", "--probe", "192.0.2.2:7", "--json"]).unwrap(),
            Cli::Check {
                json: true,
                probe: Some("192.0.2.2:7".into())
            }
        );
        assert_eq!(
            p(&["check", "--probe=[2001:db8::2]:7"]).unwrap(),
            Cli::Check {
                json: false,
                probe: Some("[2001:db8::2]:7".into())
            }
        );
        // A missing value is left for check to refuse with its own message.
        assert_eq!(
            p(&["check", "--probe"]).unwrap(),
            Cli::Check {
                json: false,
                probe: Some(String::new())
            }
        );
        assert_eq!(p(&["check", "--help"]).unwrap(), Cli::Help);
        assert_eq!(
            p(&["check", "claude"]).unwrap_err(),
            UsageError("claude".into())
        );
        assert_eq!(
            p(&["check", "--child", "open", "-"]).unwrap(),
            Cli::CheckChild {
                mode: "open".into(),
                probe: "-".into()
            }
        );
        assert!(p(&["check", "--child", "open"]).is_err());
        // `exec check` and `-- check` run a command named check.
        assert_eq!(p(&["--", "check"]).unwrap(), start(Mode::Run, &["check"]));
        assert_eq!(
            p(&["exec", "check"]).unwrap(),
            start(Mode::Exec, &["check"])
        );
        assert!(HELP.contains("bottle-init check [--json] [--probe HOST:PORT]"));
    }

    fn p(args: &[&str]) -> Result<Cli, UsageError> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn start(mode: Mode, cmd: &[&str]) -> Cli {
        Cli::Start {
            mode,
            command: cmd.iter().map(OsString::from).collect(),
        }
    }

    #[test]
    fn defaults_to_claude() {
        assert_eq!(p(&[]).unwrap(), start(Mode::Run, &["claude"]));
        assert_eq!(p(&["--"]).unwrap(), start(Mode::Run, &["claude"]));
        assert_eq!(p(&["exec"]).unwrap(), start(Mode::Exec, &["claude"]));
    }

    #[test]
    fn command_args_are_verbatim() {
        assert_eq!(
            p(&["sh", "-c", "x", "--help"]).unwrap(),
            start(Mode::Run, &["sh", "-c", "x", "--help"])
        );
        assert_eq!(
            p(&["--", "-weird", "-h"]).unwrap(),
            start(Mode::Run, &["-weird", "-h"])
        );
        assert_eq!(
            p(&["exec", "--", "claude", "-p"]).unwrap(),
            start(Mode::Exec, &["claude", "-p"])
        );
        assert_eq!(p(&["--", "exec"]).unwrap(), start(Mode::Run, &["exec"]));
    }

    #[test]
    fn version_line_names_the_commit_when_known() {
        assert_eq!(
            version_line("0.1.0", Some("abc1234 2026-12-01")),
            "bottle-init 0.1.0 (abc1234 2026-12-01)"
        );
        assert_eq!(version_line("0.1.0", None), "bottle-init 0.1.0");
        assert_eq!(version_line("0.1.0", Some("")), "bottle-init 0.1.0");
    }

    #[test]
    fn help_version_and_unknown() {
        assert_eq!(p(&["--help"]).unwrap(), Cli::Help);
        assert_eq!(p(&["-h"]).unwrap(), Cli::Help);
        assert_eq!(p(&["exec", "--version"]).unwrap(), Cli::Version);
        assert_eq!(p(&["status"]).unwrap(), Cli::Status { json: false });
        assert_eq!(
            p(&["status", "--json"]).unwrap(),
            Cli::Status { json: true }
        );
        assert!(p(&["status", "--jsn"]).unwrap_err().0.contains("--jsn"));
        assert!(p(&["status", "--json", "x"]).is_err());
        assert_eq!(p(&["--", "status"]).unwrap(), start(Mode::Run, &["status"]));
        assert_eq!(p(&["-V"]).unwrap(), Cli::Version);
        let e = p(&["--token=abc"]).unwrap_err();
        assert_eq!(e, UsageError("--token=abc".into()));
        assert!(e.to_string().contains("--help"));
    }

    /// Every exit code the README's table documents is in `--help` too (and the ones added for
    /// issue 10: 70, a dead proxy thread; 64, a second init).
    #[test]
    fn help_and_readme_document_the_same_exit_codes() {
        let readme = include_str!("../README.md");
        for code in ["64", "69", "70", "71", "77", "78", "126", "127"] {
            assert!(
                readme.contains(&format!("\n| {code} "))
                    || readme.contains(&format!("| {code} /"))
                    || readme.contains(&format!("/ {code} |")),
                "README exit table lacks {code}"
            );
            let in_help = HELP
                .match_indices(&format!("{code} "))
                .any(|(i, _)| i == 0 || matches!(HELP.as_bytes()[i - 1], b' ' | b'\n' | b';'));
            assert!(in_help, "--help lacks exit code {code}");
        }
        assert!(HELP.contains("bottle-init exec") && HELP.contains("proxy thread"));
    }

    /// The variables `--help` lists and the README's configuration table must be the same set:
    /// hidden acceptance tests and users read both.
    #[test]
    fn help_and_readme_document_the_same_variables() {
        fn vars(text: &str) -> std::collections::BTreeSet<String> {
            let mut out = std::collections::BTreeSet::new();
            for line in text.lines() {
                let line = line.trim_start().trim_start_matches("| `");
                let name: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if name.starts_with("BOTTLE_") || name.ends_with("_TOKEN") || name.ends_with("_KEY")
                {
                    out.insert(name);
                }
            }
            out
        }
        let readme = include_str!("../README.md");
        let start = readme
            .find("## Configuration")
            .expect("README has a Configuration section");
        let table = &readme[start..];
        let table = &table[..table[3..].find("\n## ").map_or(table.len(), |i| i + 3)];
        let in_help = vars(HELP);
        let in_readme = vars(table);
        assert!(
            in_help.len() >= 12,
            "help lists too few variables: {in_help:?}"
        );
        assert_eq!(
            in_help, in_readme,
            "--help and README's Configuration table differ"
        );
    }
}
