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
//! older table of the same name), then lists the table back as JSON (`nft -j`, parsed by
//! [`super::json`]) and checks that it holds exactly these two chains and these rules, in
//! order, each compared field by field: no text matching, so no nft version's spelling (a
//! protocol printed by number where the image has no /etc/protocols) can make a changed
//! rule pass or a right one fail. The image needs the `nftables` package and the container
//! `--cap-add NET_ADMIN`; PID 1 drops the capability before the child starts. The rules stay
//! for the container's life: nothing tears them down, so nothing can leave a half-open state.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use super::json::{self, Json};

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

/// One rule: its match and verdict as written for `nft -f`, its unique comment, and the same
/// rule as the statements `nft -j` lists.
struct Rule {
    chain: &'static str,
    matches: String,
    verdict: &'static str,
    comment: String,
    listed: Vec<Stmt>,
}

/// A statement of a listed rule, as the check compares it.
#[derive(Debug, PartialEq)]
enum Stmt {
    /// `meta skuid UID`.
    Skuid(u32),
    /// `ip daddr A` / `ip6 daddr A`.
    Daddr(IpAddr),
    /// `tcp dport P`.
    TcpDport(u16),
    /// `meta l4proto tcp`.
    L4protoTcp,
    Jump(&'static str),
    Accept,
    RejectTcpReset,
    Drop,
}

/// The two chains: the output hook at priority `raw` (-300) with policy accept, and the
/// child's regular chain.
const OUTPUT: &str = "output";
const CHILD: &str = "child_egress";
const RAW_PRIORITY: i64 = -300;

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
            chain: OUTPUT,
            matches: format!("meta skuid {uid}"),
            verdict: "jump child_egress",
            comment: format!("{TAG}: uid {uid} egress is restricted"),
            listed: vec![Stmt::Skuid(uid), Stmt::Jump(CHILD)],
        }];
        for a in &self.proxy {
            let (fam, ip) = match a.ip() {
                IpAddr::V4(ip) => ("ip", ip.to_string()),
                IpAddr::V6(ip) => ("ip6", ip.to_string()),
            };
            rules.push(Rule {
                chain: CHILD,
                matches: format!("{fam} daddr {ip} tcp dport {}", a.port()),
                verdict: "accept",
                comment: format!("{TAG}: proxy {a}"),
                listed: vec![Stmt::Daddr(a.ip()), Stmt::TcpDport(a.port()), Stmt::Accept],
            });
        }
        // TCP gets a reset, so connect() fails at once with ECONNREFUSED (a dropped SYN
        // would leave it retrying for minutes); everything else is dropped, which makes
        // sendto() fail at once with EPERM.
        rules.push(Rule {
            chain: CHILD,
            matches: "meta l4proto tcp".into(),
            verdict: "reject with tcp reset",
            comment: format!("{TAG}: uid {uid} TCP elsewhere is refused"),
            listed: vec![Stmt::L4protoTcp, Stmt::RejectTcpReset],
        });
        rules.push(Rule {
            chain: CHILD,
            matches: String::new(),
            verdict: "drop",
            comment: format!("{TAG}: uid {uid} may reach nothing else"),
            listed: vec![Stmt::Drop],
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

    /// Checks `nft -j list table inet bottle_init`: the table holds exactly the output hook
    /// chain (filter, priority raw, policy accept) and the child's chain, and each chain
    /// exactly its rules in order (comment and every statement compared), nothing else.
    pub fn verify_json(&self, listing: &str) -> Result<(), NftError> {
        let bad = |what: String| NftError::VerifyFailed { missing: what };
        let doc = json::parse(listing).map_err(|e| bad(format!("a readable listing ({e})")))?;
        let items = doc
            .get("nftables")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("the \"nftables\" list".into()))?;
        let ours = |o: &Json| {
            o.get("family").and_then(Json::as_str) == Some("inet")
                && o.get("table").and_then(Json::as_str) == Some(TABLE)
        };
        let (mut chains, mut listed) = (Vec::new(), Vec::new());
        let mut table = false;
        for item in items {
            match item.single() {
                Some(("metainfo", _)) => {}
                Some(("table", t)) => {
                    table |= t.get("family").and_then(Json::as_str) == Some("inet")
                        && t.get("name").and_then(Json::as_str) == Some(TABLE);
                }
                Some(("chain", c)) if ours(c) => chains.push(c),
                Some(("rule", r)) if ours(r) => listed.push(r),
                _ => {
                    return Err(bad(format!(
                        "nothing but the table, its two chains and its rules (found {})",
                        one_line(&format!("{item:?}"))
                    )));
                }
            }
        }
        if !table {
            return Err(bad(format!("the table inet {TABLE}")));
        }
        let chain = |name: &str| {
            chains
                .iter()
                .find(|c| c.get("name").and_then(Json::as_str) == Some(name))
        };
        let output = chain(OUTPUT).ok_or_else(|| bad("the output hook chain".into()))?;
        let hooked = output.get("type").and_then(Json::as_str) == Some("filter")
            && output.get("hook").and_then(Json::as_str) == Some("output")
            && output.get("prio").and_then(Json::as_int) == Some(RAW_PRIORITY)
            && output.get("policy").and_then(Json::as_str) == Some("accept");
        if !hooked {
            return Err(bad(
                "the output hook chain (type filter hook output priority raw; policy accept)"
                    .into(),
            ));
        }
        let child = chain(CHILD).ok_or_else(|| bad(format!("the chain {CHILD}")))?;
        if child.get("hook").is_some() || chains.len() != 2 {
            return Err(bad(format!(
                "exactly the chains {OUTPUT} and {CHILD}, {CHILD} without a hook"
            )));
        }
        for name in [OUTPUT, CHILD] {
            let want: Vec<Rule> = self
                .rules()
                .into_iter()
                .filter(|r| r.chain == name)
                .collect();
            let got: Vec<&&Json> = listed
                .iter()
                .filter(|r| r.get("chain").and_then(Json::as_str) == Some(name))
                .collect();
            for (i, w) in want.iter().enumerate() {
                let same = got.get(i).is_some_and(|r| {
                    r.get("comment").and_then(Json::as_str) == Some(w.comment.as_str())
                        && r.get("expr")
                            .and_then(Json::as_array)
                            .and_then(statements)
                            .as_ref()
                            == Some(&w.listed)
                });
                if !same {
                    return Err(bad(format!(
                        "rule {:?} ({} {}) at position {} of chain {name}",
                        w.comment,
                        w.matches,
                        w.verdict,
                        i + 1
                    )));
                }
            }
            if got.len() != want.len() {
                return Err(bad(format!(
                    "nothing else in chain {name} ({} rules listed, {} installed)",
                    got.len(),
                    want.len()
                )));
            }
        }
        Ok(())
    }
}

/// The statements of a listed rule, or `None` if one is not of the kinds the ruleset uses
/// (with exactly the operands it uses).
fn statements(expr: &[Json]) -> Option<Vec<Stmt>> {
    expr.iter().map(statement).collect()
}

fn statement(e: &Json) -> Option<Stmt> {
    let (kind, body) = e.single()?;
    match kind {
        "match" => {
            if body.get("op")?.as_str()? != "==" {
                return None;
            }
            let right = body.get("right")?;
            let (lkind, left) = body.get("left")?.single()?;
            match lkind {
                "meta" => match left.get("key")?.as_str()? {
                    "skuid" => Some(Stmt::Skuid(u32::try_from(right.as_int()?).ok()?)),
                    // By name, or by number where the image has no /etc/protocols.
                    "l4proto" => match right {
                        Json::Str(p) if p == "tcp" => Some(Stmt::L4protoTcp),
                        Json::Int(6) => Some(Stmt::L4protoTcp),
                        _ => None,
                    },
                    _ => None,
                },
                "payload" => {
                    let proto = left.get("protocol")?.as_str()?;
                    match (proto, left.get("field")?.as_str()?) {
                        ("ip", "daddr") | ("ip6", "daddr") => {
                            let ip: IpAddr = right.as_str()?.parse().ok()?;
                            (ip.is_ipv4() == (proto == "ip")).then_some(Stmt::Daddr(ip))
                        }
                        ("tcp", "dport") => {
                            Some(Stmt::TcpDport(u16::try_from(right.as_int()?).ok()?))
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        "jump" => (body.get("target")?.as_str()? == CHILD).then_some(Stmt::Jump(CHILD)),
        "accept" if *body == Json::Null => Some(Stmt::Accept),
        "drop" if *body == Json::Null => Some(Stmt::Drop),
        "reject" => (body.get("type")?.as_str()? == "tcp reset" && body.get("expr").is_none())
            .then_some(Stmt::RejectTcpReset),
        _ => None,
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

    /// `nft list table inet bottle_init` (text, for people and tests).
    pub fn list(&self) -> Result<String, NftError> {
        self.run("list the table", &["list", "table", "inet", TABLE], None)
    }

    /// `nft -j list table inet bottle_init`: the listing [`Ruleset::verify_json`] checks.
    pub fn list_json(&self) -> Result<String, NftError> {
        self.run(
            "list the table as JSON",
            &["-j", "list", "table", "inet", TABLE],
            None,
        )
    }

    /// Apply, then list back and verify.
    pub fn install(&self, rules: &Ruleset) -> Result<(), NftError> {
        self.apply(rules)?;
        self.verify(rules)
    }

    /// List the table back and check that it holds exactly `rules`.
    pub fn verify(&self, rules: &Ruleset) -> Result<(), NftError> {
        rules.verify_json(&self.list_json()?)
    }
}

/// Everything PID 1 does for `allowlist`: check CAP_NET_ADMIN, find nft, load, verify.
/// Runs `nft` as a subprocess, so call it before the init's `waitpid(-1)` reaper runs.
pub fn install(rules: &Ruleset) -> Result<(), NftError> {
    require_net_admin()?;
    Nft::locate()?.install(rules)
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

    /// What `nft -j list table inet bottle_init` printed for this ruleset on nftables 1.0.6.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "bottle_init", "handle": 2}}, {"chain": {"family": "inet", "table": "bottle_init", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": -300, "policy": "accept"}}, {"chain": {"family": "inet", "table": "bottle_init", "name": "child_egress", "handle": 2}}, {"rule": {"family": "inet", "table": "bottle_init", "chain": "output", "handle": 3, "comment": "bottle-init: uid 1000 egress is restricted", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": 1000}}, {"jump": {"target": "child_egress"}}]}}, {"rule": {"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 4, "comment": "bottle-init: proxy 127.0.0.1:4567", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 4567}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 5, "comment": "bottle-init: uid 1000 TCP elsewhere is refused", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"reject": {"type": "tcp reset"}}]}}, {"rule": {"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 6, "comment": "bottle-init: uid 1000 may reach nothing else", "expr": [{"drop": null}]}}]}"#;

    const PROXY_RULE: &str = r#"{"rule": {"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 4, "comment": "bottle-init: proxy 127.0.0.1:4567", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 4567}}, {"accept": null}]}}"#;
    const RESET_RULE: &str = r#"{"rule": {"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 5, "comment": "bottle-init: uid 1000 TCP elsewhere is refused", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"reject": {"type": "tcp reset"}}]}}"#;

    /// LISTED with one more item at the end of its list.
    fn appended(item: &str) -> String {
        let body = LISTED.strip_suffix("]}").unwrap();
        format!("{body}, {item}]}}")
    }

    /// LISTED with `from` replaced by `to` (which must change it).
    fn tampered(from: &str, to: &str) -> String {
        assert!(LISTED.contains(from), "{from}");
        LISTED.replacen(from, to, 1)
    }

    #[test]
    fn verify_accepts_the_listing() {
        let r = Ruleset::new(1000, &[addr("127.0.0.1:4567")]).unwrap();
        r.verify_json(LISTED).unwrap();
        // The same nft in an image without /etc/protocols (debian:bookworm-slim) prints the
        // protocol number (measured: `"right": 6`).
        r.verify_json(&tampered(r#""right": "tcp""#, r#""right": 6"#))
            .unwrap();
        // Another number is still a different rule.
        assert!(
            r.verify_json(&tampered(r#""right": "tcp""#, r#""right": 17"#))
                .is_err()
        );
        // Both proxy addresses, IPv4 and IPv6, each in its own rule.
        let both = Ruleset::new(1000, &[addr("127.0.0.1:4567"), addr("[::1]:4567")]).unwrap();
        assert!(
            both.verify_json(LISTED).is_err(),
            "the IPv6 rule is missing"
        );
        let v6 = PROXY_RULE
            .replace(r#""ip", "field""#, r#""ip6", "field""#)
            .replace(r#""127.0.0.1"}"#, r#""::1"}"#)
            .replace("proxy 127.0.0.1:4567", "proxy [::1]:4567");
        both.verify_json(&LISTED.replace(PROXY_RULE, &format!("{PROXY_RULE}, {v6}")))
            .unwrap();
    }

    #[test]
    fn verify_catches_tampering() {
        let r = Ruleset::new(1000, &[addr("127.0.0.1:4567")]).unwrap();
        let cases = [
            tampered(r#""hook": "output""#, r#""hook": "input""#),
            tampered(r#"[{"drop": null}]"#, r#"[{"accept": null}]"#),
            tampered(
                r#"{"reject": {"type": "tcp reset"}}"#,
                r#"{"accept": null}"#,
            ),
            tampered(r#""right": 1000}"#, r#""right": 1001}"#),
            tampered(r#""right": 4567}"#, r#""right": 4568}"#),
            tampered(
                r#"{"jump": {"target": "child_egress"}}"#,
                r#"{"accept": null}"#,
            ),
            // Rules out of order: the TCP reset before the proxy accept.
            LISTED.replace(
                &format!("{PROXY_RULE}, {RESET_RULE}"),
                &format!("{RESET_RULE}, {PROXY_RULE}"),
            ),
            String::new(),
            // What the text check let through: an extra rule among ours, without a comment.
            tampered(
                RESET_RULE,
                &format!(
                    r#"{{"rule": {{"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 9, "expr": [{{"accept": null}}]}}}}, {RESET_RULE}"#
                ),
            ),
            // ... or after the drop, or in the output chain.
            appended(
                r#"{"rule": {"family": "inet", "table": "bottle_init", "chain": "child_egress", "handle": 9, "expr": [{"accept": null}]}}"#,
            ),
            appended(
                r#"{"rule": {"family": "inet", "table": "bottle_init", "chain": "output", "handle": 9, "expr": [{"accept": null}]}}"#,
            ),
            tampered(r#""prio": -300"#, r#""prio": 0"#),
            tampered(r#""policy": "accept""#, r#""policy": "drop""#),
            tampered(r#""type": "filter", "#, ""),
            tampered(
                r#""op": "==", "left": {"meta": {"key": "skuid"}}"#,
                r#""op": "!=", "left": {"meta": {"key": "skuid"}}"#,
            ),
            tampered(r#""right": "127.0.0.1"}"#, r#""right": "0.0.0.0"}"#),
            tampered(
                r#"{"protocol": "ip", "field": "daddr"}"#,
                r#"{"protocol": "ip6", "field": "daddr"}"#,
            ),
            tampered(r#""key": "skuid""#, r#""key": "skgid""#),
            tampered(
                r#"{"accept": null}]"#,
                r#"{"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]"#,
            ),
            tampered(
                "bottle-init: uid 1000 may reach nothing else",
                "bottle-init: something else",
            ),
            // Another chain in the table, or the child's chain hooked.
            tampered(
                r#"{"chain": {"family": "inet", "table": "bottle_init", "name": "child_egress", "handle": 2}}"#,
                r#"{"chain": {"family": "inet", "table": "bottle_init", "name": "child_egress", "handle": 2}}, {"chain": {"family": "inet", "table": "bottle_init", "name": "more", "handle": 7}}"#,
            ),
            tampered(
                r#""name": "child_egress", "handle": 2}"#,
                r#""name": "child_egress", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}"#,
            ),
            // Another table's rules in the same listing, a set, no table at all.
            tampered(
                r#""name": "bottle_init", "handle": 2"#,
                r#""name": "other", "handle": 2"#,
            ),
            appended(
                r#"{"set": {"family": "inet", "name": "s", "table": "bottle_init", "type": "ipv4_addr", "handle": 8}}"#,
            ),
            LISTED.replace(
                r#""table": "bottle_init", "chain": "output""#,
                r#""table": "nat", "chain": "output""#,
            ),
            "{}".to_string(),
            r#"{"nftables": {}}"#.to_string(),
        ];
        for (i, listing) in cases.iter().enumerate() {
            assert_ne!(listing, LISTED, "case {i} must change something");
            // Each case is a well-formed listing (but the empty one): refused for what it says.
            assert_eq!(
                json::parse(listing).is_ok(),
                !listing.is_empty(),
                "case {i}"
            );
            let e = r.verify_json(listing).unwrap_err();
            assert!(matches!(e, NftError::VerifyFailed { .. }), "case {i}");
            assert!(e.to_string().contains("refusing to start"), "case {i}: {e}");
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
