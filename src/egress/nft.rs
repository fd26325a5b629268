//! `allowlist`: nftables rules that let the child's uid send only to the proxy.
//!
//! The ruleset lives in its own table, `inet bottle_init` (IPv4 and IPv6 in one), with a chain
//! on the output hook at priority `raw` (-300): before conntrack and before Docker's NAT, so it
//! sees the destination the child asked for (Docker's resolver 127.0.0.11:53 included) and a
//! refused packet leaves no conntrack entry. Every packet whose socket belongs to the child's
//! uid (`meta skuid`) goes to a chain that accepts TCP to the proxy's loopback address:port and
//! refuses everything else, IPv4 and IPv6 alike: other TCP gets a reset (`connect` fails at
//! once with `ECONNREFUSED` instead of retrying for minutes), the rest — UDP (DNS to anywhere,
//! Docker's 127.0.0.11 included), ICMP ping sockets, anything else — is dropped, which makes
//! `sendto` fail at once with `EPERM`.
//!
//! Deliberately absent: an `established,related` accept. The proxy rule already covers both
//! directions of the one connection the child may make, and a generic established rule would
//! let the child answer anything that reaches it from outside (a published port, a peer on a
//! shared Docker network), which is a channel out.
//!
//! Installation runs the `nft` program (`nft -f -`, one atomic transaction that replaces any
//! older table of the same name), then lists the table back and checks that every rule is
//! there, in order. The image needs the `nftables` package and the container
//! `--cap-add NET_ADMIN`; PID 1 drops the capability before the child starts. The rules stay
//! for the container's life: nothing tears them down, so nothing can leave a half-open state.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Table name (family `inet`).
pub const TABLE: &str = "bottle_init";
/// Where `nft` is looked for, in order (not `$PATH`: PID 1 runs it as root).
pub const NFT_CANDIDATES: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

const TAG: &str = "bottle-init";

/// The rules for one child uid and the proxy's listening addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    child_uid: u32,
    proxy: Vec<SocketAddr>,
}

/// One rule: its match, verdict and a unique comment used to find it again in the listing.
struct Rule {
    chain: &'static str,
    matches: String,
    verdict: &'static str,
    comment: String,
}

impl Ruleset {
    /// `proxy`: every address the proxy listens on for the child (loopback only).
    pub fn new(child_uid: u32, proxy: &[SocketAddr]) -> Result<Self, NftError> {
        if child_uid == 0 {
            return Err(NftError::ChildIsRoot);
        }
        if proxy.is_empty() {
            return Err(NftError::NoProxyAddress);
        }
        if let Some(a) = proxy
            .iter()
            .find(|a| !a.ip().is_loopback() || a.port() == 0)
        {
            return Err(NftError::ProxyNotLoopback { addr: *a });
        }
        let mut proxy = proxy.to_vec();
        proxy.dedup();
        Ok(Ruleset { child_uid, proxy })
    }

    pub fn child_uid(&self) -> u32 {
        self.child_uid
    }

    fn rules(&self) -> Vec<Rule> {
        let uid = self.child_uid;
        let mut rules = vec![Rule {
            chain: "output",
            matches: format!("meta skuid {uid}"),
            verdict: "jump child_egress",
            comment: format!("{TAG}: uid {uid} egress is restricted"),
        }];
        for a in &self.proxy {
            let (fam, ip) = match a.ip() {
                IpAddr::V4(ip) => ("ip", ip.to_string()),
                IpAddr::V6(ip) => ("ip6", ip.to_string()),
            };
            rules.push(Rule {
                chain: "child_egress",
                matches: format!("{fam} daddr {ip} tcp dport {}", a.port()),
                verdict: "accept",
                comment: format!("{TAG}: proxy {a}"),
            });
        }
        // TCP gets a reset, so connect() fails at once with ECONNREFUSED (a dropped SYN
        // would leave it retrying for minutes); everything else is dropped, which makes
        // sendto() fail at once with EPERM.
        rules.push(Rule {
            chain: "child_egress",
            matches: "meta l4proto tcp".into(),
            verdict: "reject with tcp reset",
            comment: format!("{TAG}: uid {uid} TCP elsewhere is refused"),
        });
        rules.push(Rule {
            chain: "child_egress",
            matches: String::new(),
            verdict: "drop",
            comment: format!("{TAG}: uid {uid} may reach nothing else"),
        });
        rules
    }

    /// The `nft -f` script: one transaction that creates (or replaces) the table.
    pub fn render(&self) -> String {
        let rules = self.rules();
        let chain = |name: &str| {
            rules
                .iter()
                .filter(|r| r.chain == name)
                .map(|r| {
                    let m = if r.matches.is_empty() {
                        String::new()
                    } else {
                        format!("{} ", r.matches)
                    };
                    format!("\t\t{m}{} comment \"{}\"\n", r.verdict, r.comment)
                })
                .collect::<String>()
        };
        format!(
            "# Generated by bottle-init (BOTTLE_EGRESS=allowlist): uid {uid} may reach only the proxy.\n\
             # Create-then-delete makes the transaction replace an older table instead of failing.\n\
             table inet {TABLE} {{}}\n\
             delete table inet {TABLE}\n\
             table inet {TABLE} {{\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority raw; policy accept;\n\
             {out}\
             \t}}\n\
             \tchain child_egress {{\n\
             {child}\
             \t}}\n\
             }}\n",
            uid = self.child_uid,
            out = chain("output"),
            child = chain("child_egress"),
        )
    }

    /// Check `nft list table inet bottle_init` output: the output hook exists and every rule
    /// is present, with its verdict, in order. Matches are not compared textually (nft may
    /// print them differently across versions); the unique comments find the rules.
    pub fn verify_listing(&self, listing: &str) -> Result<(), NftError> {
        let lines: Vec<&str> = listing.lines().map(str::trim).collect();
        let hook = lines
            .iter()
            .position(|l| l.starts_with("type filter hook output"))
            .ok_or_else(|| NftError::VerifyFailed {
                missing: "the output hook chain".into(),
            })?;
        let mut from = hook;
        for r in self.rules() {
            let quoted = format!("comment \"{}\"", r.comment);
            let found = lines[from..]
                .iter()
                .position(|l| l.ends_with(&quoted))
                .map(|i| i + from)
                .filter(|&i| {
                    let l = lines[i];
                    let head = numeric_protocols(l[..l.len() - quoted.len()].trim_end());
                    head.ends_with(r.verdict) && head.contains(&r.matches)
                });
            match found {
                Some(i) => from = i + 1,
                None => {
                    return Err(NftError::VerifyFailed {
                        missing: format!("rule {:?} ({} {})", r.comment, r.matches, r.verdict),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why the allowlist firewall could not be installed. Each message says what is missing.
#[derive(Debug)]
pub enum NftError {
    ChildIsRoot,
    NoProxyAddress,
    ProxyNotLoopback {
        addr: SocketAddr,
    },
    /// The calling thread lacks CAP_NET_ADMIN in its effective set.
    MissingNetAdmin,
    CapCheck {
        detail: String,
    },
    NftNotFound {
        tried: Vec<PathBuf>,
    },
    Spawn {
        program: PathBuf,
        source: io::Error,
    },
    Feed {
        source: io::Error,
    },
    Wait {
        source: io::Error,
    },
    /// nft ran but the kernel said EPERM.
    NftPermission {
        stderr: String,
    },
    /// nft ran but the kernel has no nf_tables (or lacks a needed expression).
    NftUnsupported {
        stderr: String,
    },
    NftFailed {
        action: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    VerifyFailed {
        missing: String,
    },
}

const FIX_CAP: &str = "run the container with --cap-add NET_ADMIN (needed only at start-up: bottle-init drops it before starting the child)";

impl fmt::Display for NftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pre = "BOTTLE_EGRESS=allowlist";
        match self {
            NftError::ChildIsRoot => write!(
                f,
                "{pre}: the child runs as uid 0, whose traffic cannot be told apart from the proxy's; set BOTTLE_USER to a non-root user"
            ),
            NftError::NoProxyAddress => {
                write!(f, "{pre}: internal error: no proxy address to allow")
            }
            NftError::ProxyNotLoopback { addr } => write!(
                f,
                "{pre}: the proxy listens on {addr}, which is not a loopback address with a port; set BOTTLE_LISTEN to 127.0.0.1 or [::1]"
            ),
            NftError::MissingNetAdmin => {
                write!(
                    f,
                    "{pre} needs the CAP_NET_ADMIN capability to install its nftables rules: {FIX_CAP}"
                )
            }
            NftError::CapCheck { detail } => {
                write!(
                    f,
                    "{pre}: cannot read this process's capabilities: {detail}"
                )
            }
            NftError::NftNotFound { tried } => {
                let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "{pre} needs the nft program (not found at {}): install the nftables package in the image",
                    tried.join(", ")
                )
            }
            NftError::Spawn { program, source } => {
                write!(f, "{pre}: cannot run {}: {source}", program.display())
            }
            NftError::Feed { source } => {
                write!(f, "{pre}: cannot send the ruleset to nft: {source}")
            }
            NftError::Wait { source } => write!(f, "{pre}: waiting for nft failed: {source}"),
            NftError::NftPermission { stderr } => {
                write!(
                    f,
                    "{pre}: the kernel refused the nftables rules (Operation not permitted): {FIX_CAP} [nft: {stderr}]"
                )
            }
            NftError::NftUnsupported { stderr } => write!(
                f,
                "{pre}: this kernel does not support the needed nftables features (nf_tables with meta skuid, inet family) [nft: {stderr}]"
            ),
            NftError::NftFailed {
                action,
                status,
                stderr,
            } => write!(f, "{pre}: nft failed to {action} ({status}): {stderr}"),
            NftError::VerifyFailed { missing } => write!(
                f,
                "{pre}: the nftables rules did not read back as installed: missing {missing}; refusing to start half locked"
            ),
        }
    }
}

impl std::error::Error for NftError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NftError::Spawn { source, .. }
            | NftError::Feed { source }
            | NftError::Wait { source } => Some(source),
            _ => None,
        }
    }
}

/// Whether this process runs in the host's initial network namespace, as a container started
/// with `docker run --network host` does (or bottle-init run outside any container): the
/// `allowlist` rules would then filter the child's uid on the whole host. Linux registers
/// some `net.core` sysctls for the initial namespace only (net/core/sysctl_net_core.c:
/// `netdev_max_backlog`, `dev_weight`, `message_burst`, ...), and /proc/sys/net shows the
/// namespace of the process reading it, so that file exists exactly there. `None`: /proc/sys
/// is not readable, no answer.
pub fn in_initial_netns() -> Option<bool> {
    in_initial_netns_at(Path::new("/proc/sys/net/core"))
}

/// [`in_initial_netns`] over a given `net/core` sysctl directory (for tests).
pub fn in_initial_netns_at(net_core: &Path) -> Option<bool> {
    if !net_core.join("somaxconn").exists() {
        // somaxconn exists in every namespace: without it, this is not a readable /proc/sys.
        return None;
    }
    Some(net_core.join("netdev_max_backlog").exists())
}

/// Fail early, with the clearest message, when the calling thread cannot configure netfilter.
pub fn require_net_admin() -> Result<(), NftError> {
    const CAP_NET_ADMIN: u32 = 12;
    match crate::sys::capget() {
        Ok(c) if c.effective & (1 << CAP_NET_ADMIN) != 0 => Ok(()),
        Ok(_) => Err(NftError::MissingNetAdmin),
        Err(e) => Err(NftError::CapCheck {
            detail: e.to_string(),
        }),
    }
}

/// The `nft` program.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

impl Nft {
    /// Find `nft` in [`NFT_CANDIDATES`].
    pub fn locate() -> Result<Self, NftError> {
        NFT_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Nft::at)
            .ok_or_else(|| NftError::NftNotFound {
                tried: NFT_CANDIDATES.iter().map(PathBuf::from).collect(),
            })
    }

    /// Use this program (tests; or an image that keeps nft elsewhere).
    pub fn at(program: impl Into<PathBuf>) -> Self {
        Nft {
            program: program.into(),
        }
    }

    fn run(
        &self,
        action: &'static str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, NftError> {
        // A clean environment: nft never sees the parent's variables (credentials included).
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                NftError::NftNotFound {
                    tried: vec![self.program.clone()],
                }
            } else {
                NftError::Spawn {
                    program: self.program.clone(),
                    source,
                }
            }
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // On a write error nft has exited; its status and stderr say why, below.
            let fed = pipe.write_all(text.as_bytes());
            drop(pipe);
            if let Err(source) = fed
                && source.kind() != io::ErrorKind::BrokenPipe
            {
                return Err(NftError::Feed { source });
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NftError::Wait { source })?;
        let stderr = one_line(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let lower = stderr.to_ascii_lowercase();
        Err(if lower.contains("operation not permitted") {
            NftError::NftPermission { stderr }
        } else if lower.contains("not supported") {
            NftError::NftUnsupported { stderr }
        } else {
            NftError::NftFailed {
                action,
                status: out.status,
                stderr,
            }
        })
    }

    /// Load the ruleset (one atomic transaction).
    pub fn apply(&self, rules: &Ruleset) -> Result<(), NftError> {
        self.run("load the ruleset", &["-f", "-"], Some(&rules.render()))
            .map(drop)
    }

    /// `nft list table inet bottle_init`.
    pub fn list(&self) -> Result<String, NftError> {
        self.run("list the table", &["list", "table", "inet", TABLE], None)
    }

    /// Apply, then list back and verify.
    pub fn install(&self, rules: &Ruleset) -> Result<(), NftError> {
        self.apply(rules)?;
        self.verify(rules)
    }

    /// List the table back and check that `rules` are there, in order.
    pub fn verify(&self, rules: &Ruleset) -> Result<(), NftError> {
        rules.verify_listing(&self.list()?)
    }
}

/// Everything PID 1 does for `allowlist`: check CAP_NET_ADMIN, find nft, load, verify.
/// Runs `nft` as a subprocess, so call it before the init's `waitpid(-1)` reaper runs.
pub fn install(rules: &Ruleset) -> Result<(), NftError> {
    require_net_admin()?;
    Nft::locate()?.install(rules)
}

/// nft prints a protocol by number when the image has no /etc/protocols (debian-slim):
/// `meta l4proto 6` for `meta l4proto tcp`. Compare in the named form.
fn numeric_protocols(listed: &str) -> String {
    listed.replace("meta l4proto 6 ", "meta l4proto tcp ")
}

/// nft's stderr on one line, bounded, for an error message.
fn one_line(s: &str) -> String {
    let joined: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &joined[..i]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn render_exact() {
        let r = Ruleset::new(1000, &[addr("127.0.0.1:4567"), addr("[::1]:4567")]).unwrap();
        let want = "\
table inet bottle_init {
\tchain output {
\t\ttype filter hook output priority raw; policy accept;
\t\tmeta skuid 1000 jump child_egress comment \"bottle-init: uid 1000 egress is restricted\"
\t}
\tchain child_egress {
\t\tip daddr 127.0.0.1 tcp dport 4567 accept comment \"bottle-init: proxy 127.0.0.1:4567\"
\t\tip6 daddr ::1 tcp dport 4567 accept comment \"bottle-init: proxy [::1]:4567\"
\t\tmeta l4proto tcp reject with tcp reset comment \"bottle-init: uid 1000 TCP elsewhere is refused\"
\t\tdrop comment \"bottle-init: uid 1000 may reach nothing else\"
\t}
}
";
        let text = r.render();
        assert!(text.ends_with(want), "{text}");
        assert!(text.contains("table inet bottle_init {}\ndelete table inet bottle_init\n"));
    }

    #[test]
    fn refuses_bad_inputs() {
        let p = [addr("127.0.0.1:1")];
        assert!(matches!(Ruleset::new(0, &p), Err(NftError::ChildIsRoot)));
        assert!(matches!(
            Ruleset::new(1000, &[]),
            Err(NftError::NoProxyAddress)
        ));
        for bad in ["0.0.0.0:80", "192.0.2.1:80", "[::]:80", "127.0.0.1:0"] {
            let e = Ruleset::new(1000, &[addr(bad)]).unwrap_err();
            assert!(matches!(e, NftError::ProxyNotLoopback { .. }), "{bad}");
            assert!(e.to_string().contains("BOTTLE_LISTEN"));
        }
    }

    /// What `nft list table` printed for this ruleset on nftables 1.0.6.
    const LISTED: &str = "table inet bottle_init {
	chain output {
		type filter hook output priority raw; policy accept;
		meta skuid 1000 jump child_egress comment \"bottle-init: uid 1000 egress is restricted\"
	}

	chain child_egress {
		ip daddr 127.0.0.1 tcp dport 4567 accept comment \"bottle-init: proxy 127.0.0.1:4567\"
		meta l4proto tcp reject with tcp reset comment \"bottle-init: uid 1000 TCP elsewhere is refused\"
		drop comment \"bottle-init: uid 1000 may reach nothing else\"
	}
}
";

    #[test]
    fn verify_accepts_the_listing() {
        let r = Ruleset::new(1000, &[addr("127.0.0.1:4567")]).unwrap();
        r.verify_listing(LISTED).unwrap();
        // The same nft in an image without /etc/protocols (debian:bookworm-slim) prints the
        // protocol number; found by the Docker test.
        r.verify_listing(&LISTED.replace("l4proto tcp", "l4proto 6"))
            .unwrap();
        // Another number is still a different rule.
        assert!(
            r.verify_listing(&LISTED.replace("l4proto tcp", "l4proto 17"))
                .is_err()
        );
    }

    #[test]
    fn verify_catches_tampering() {
        let r = Ruleset::new(1000, &[addr("127.0.0.1:4567")]).unwrap();
        let cases = [
            LISTED.replace("hook output", "hook input"),
            LISTED.replace("\t\tdrop comment", "\t\taccept comment"),
            LISTED.replace("reject with tcp reset", "accept"),
            LISTED.replace("skuid 1000", "skuid 1001"),
            LISTED.replace("dport 4567", "dport 4568"),
            LISTED.replace("jump child_egress", "accept"),
            // Rules out of order: the TCP reset before the proxy accept.
            {
                let proxy = "\t\tip daddr 127.0.0.1 tcp dport 4567 accept comment \"bottle-init: proxy 127.0.0.1:4567\"\n";
                let reset = "\t\tmeta l4proto tcp reject with tcp reset comment \"bottle-init: uid 1000 TCP elsewhere is refused\"\n";
                LISTED.replace(&format!("{proxy}{reset}"), &format!("{reset}{proxy}"))
            },
            String::new(),
        ];
        for (i, listing) in cases.iter().enumerate() {
            assert_ne!(listing, LISTED, "case {i} must change something");
            let e = r.verify_listing(listing).unwrap_err();
            assert!(matches!(e, NftError::VerifyFailed { .. }), "case {i}");
            assert!(e.to_string().contains("refusing to start"), "{e}");
        }
    }

    #[test]
    fn messages_name_the_fix() {
        assert!(
            NftError::MissingNetAdmin
                .to_string()
                .contains("--cap-add NET_ADMIN")
        );
        let e = NftError::NftNotFound {
            tried: vec!["/usr/sbin/nft".into()],
        };
        assert!(e.to_string().contains("nftables package"), "{e}");
        assert!(NftError::ChildIsRoot.to_string().contains("BOTTLE_USER"));
    }

    #[test]
    fn one_line_bounds() {
        assert_eq!(one_line("a\n  b\tc\n"), "a b c");
        assert_eq!(one_line(&"x".repeat(1000)).len(), 403);
    }

    #[test]
    fn initial_netns_detection_reads_the_init_only_sysctl() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(in_initial_netns_at(d.path()), None, "no /proc/sys");
        std::fs::write(d.path().join("somaxconn"), "4096\n").unwrap();
        assert_eq!(in_initial_netns_at(d.path()), Some(false));
        std::fs::write(d.path().join("netdev_max_backlog"), "1000\n").unwrap();
        assert_eq!(in_initial_netns_at(d.path()), Some(true));
    }
}
