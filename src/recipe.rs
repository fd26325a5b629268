//! The one child recipe: what every command bottle-init starts gets, whether it is PID 1's
//! child or a command `bottle-init exec` runs in the same container. [`ChildSpec`] is the
//! whole of it (who the command runs as, which placeholder credential, how it reaches the
//! proxy, which egress mode holds it); PID 1 builds one and publishes it in the run record,
//! `exec` reads it back, and both turn it into the [`Prepared`] child with
//! [`ChildSpec::prepare`]. Pure: no system call.
//!
//! The environment rules ([`child_env`]), for every mode:
//! - drop every credential variable (`CLAUDE_CODE_OAUTH_TOKEN`, `ANTHROPIC_API_KEY`,
//!   `ANTHROPIC_AUTH_TOKEN`), `ANTHROPIC_BASE_URL` and every `BOTTLE_*`;
//! - `HOME`, `USER`, `LOGNAME`, `SHELL` from the passwd entry (a uid without one keeps the
//!   parent's, except `HOME`, which main sets to its private home); `PATH` defaulted;
//! - unless the user set them: `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` (telemetry and
//!   update checks bypass the proxy), `CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL=1`
//!   (interactive claude otherwise clones its plugin marketplace from GitHub over ssh) and
//!   `ENABLE_TOOL_SEARCH=auto` (claude turns it off behind a custom base URL; this proxy
//!   forwards every block unchanged) (shared/facts/claude-code-client.md);
//! - the session secret as the placeholder: `CLAUDE_CODE_OAUTH_TOKEN` for an OAuth token (claude
//!   then behaves as an OAuth client), `ANTHROPIC_AUTH_TOKEN` for an API key (no approval
//!   prompt);
//! - `open`: `ANTHROPIC_BASE_URL=http://PROXY`;
//! - `api-only`: `ANTHROPIC_UNIX_SOCKET=<socket>` with `ANTHROPIC_BASE_URL=http://localhost`
//!   (together they make claude speak plain HTTP over the socket); every proxy variable
//!   removed, since there is no IP route to use one;
//! - `allowlist`: `ANTHROPIC_BASE_URL=http://PROXY`, `HTTPS_PROXY`/`HTTP_PROXY` (both cases) at
//!   the proxy for CONNECT, `NO_PROXY` covering the proxy so API calls stay direct;
//!   `ALL_PROXY` removed (some clients would prefer it).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::child::{self, ChildTerminal, PrepareError, Prepared, lookup};
use crate::config::{ENV_API_KEY, ENV_AUTH_TOKEN, ENV_OAUTH};
use crate::egress::mode::EgressMode;
use crate::egress::seccomp::{self, Filter, Policy};
use crate::fdlimit::NoFile;
use crate::privilege::DropPlan;
use crate::secret::{CredentialKind, Secret};
use crate::user::ChildUser;

/// An environment as `(name, value)` pairs, in order.
pub type Env = Vec<(Vec<u8>, Vec<u8>)>;

/// Everything a command started in this container gets.
#[derive(Debug)]
pub struct ChildSpec {
    pub user: ChildUser,
    /// Decides which variable carries the placeholder.
    pub kind: CredentialKind,
    /// The per-run session secret (the placeholder credential).
    pub session: Secret,
    /// The proxy's TCP address as the child dials it (a wildcard listener via loopback).
    pub proxy: SocketAddr,
    pub egress: EgressMode,
    /// `api-only`: the API's Unix socket.
    pub api_socket: Option<PathBuf>,
}

impl ChildSpec {
    /// `ANTHROPIC_BASE_URL` outside `api-only`: the proxy over TCP.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// The filter the child installs as its last step before `execve`: none in `open`.
    pub fn seccomp(&self) -> Option<Filter> {
        match self.egress {
            EgressMode::Open => None,
            EgressMode::ApiOnly => seccomp::for_policy(Policy::ApiOnly),
            EgressMode::Allowlist => seccomp::for_policy(Policy::Allowlist),
        }
    }

    /// The child, ready to fork: argv, the environment built from `parent` (the caller's
    /// credential-free variables), the drop to the user, the egress filter, and the fd limit
    /// to restore (PID 1 raised its own; `exec` did not).
    pub fn prepare(
        &self,
        command: &[OsString],
        parent: &[(Vec<u8>, Vec<u8>)],
        terminal: ChildTerminal,
        nofile: Option<NoFile>,
    ) -> Result<Prepared, PrepareError> {
        let plan = DropPlan {
            uid: self.user.uid,
            gid: self.user.gid,
            groups: self.user.groups.clone(),
        };
        let mut p = Prepared::new(command, child_env(parent, self), plan, terminal)?;
        p.seccomp = self.seccomp();
        p.nofile = nofile;
        Ok(p)
    }
}

/// Proxy variables every common HTTP client reads (curl/git/pip/npm/Bun/Go).
const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];
const ALL_PROXY_VARS: [&str; 2] = ["ALL_PROXY", "all_proxy"];
const UNIX_SOCKET_VAR: &str = "ANTHROPIC_UNIX_SOCKET";
const BASE_URL_VAR: &str = "ANTHROPIC_BASE_URL";

/// Defaults the user may override (see the module doc).
const DEFAULTS: [(&str, &str); 3] = [
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL", "1"),
    ("ENABLE_TOOL_SEARCH", "auto"),
];

/// True for variables that never reach the child from the parent in any mode.
pub fn is_stripped(name: &[u8]) -> bool {
    name.starts_with(b"BOTTLE_")
        || [ENV_OAUTH, ENV_API_KEY, ENV_AUTH_TOKEN, BASE_URL_VAR]
            .iter()
            .any(|n| n.as_bytes() == name)
}

/// Variables a locked mode sets itself or removes, so the parent's never pass.
fn replaced_by_mode(mode: EgressMode, name: &[u8]) -> bool {
    let any = |vars: &[&str]| vars.iter().any(|v| v.as_bytes() == name);
    match mode {
        EgressMode::Open => false,
        EgressMode::ApiOnly => {
            any(&PROXY_VARS)
                || any(&NO_PROXY_VARS)
                || any(&ALL_PROXY_VARS)
                || any(&[UNIX_SOCKET_VAR])
        }
        EgressMode::Allowlist => any(&PROXY_VARS) || any(&NO_PROXY_VARS) || any(&ALL_PROXY_VARS),
    }
}

/// Which variable carries the session secret for a credential kind.
pub fn session_var(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::OAuth => ENV_OAUTH,
        CredentialKind::ApiKey => ENV_AUTH_TOKEN,
    }
}

/// The child's environment (see the module doc), in a stable order: the parent's kept
/// variables in their order (passwd values substituted in place), then the additions.
pub fn child_env(parent: &[(Vec<u8>, Vec<u8>)], spec: &ChildSpec) -> Env {
    let mut out: Env = Vec::with_capacity(parent.len() + 12);
    let set = |out: &mut Env, k: &[u8], v: &[u8]| match out.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_vec(),
        None => out.push((k.to_vec(), v.to_vec())),
    };
    let push = |out: &mut Env, k: &str, v: &[u8]| out.push((k.as_bytes().to_vec(), v.to_vec()));
    for (k, v) in parent {
        if is_stripped(k) || replaced_by_mode(spec.egress, k) || out.iter().any(|(n, _)| n == k) {
            continue;
        }
        out.push((k.clone(), v.clone()));
    }
    let user = &spec.user;
    if let Some(home) = &user.home {
        set(&mut out, b"HOME", home.as_bytes());
    }
    if let Some(name) = &user.name {
        set(&mut out, b"USER", name.as_bytes());
        set(&mut out, b"LOGNAME", name.as_bytes());
    }
    if let Some(shell) = user.shell.as_ref().filter(|s| !s.is_empty()) {
        set(&mut out, b"SHELL", shell.as_bytes());
    }
    if lookup(&out, "PATH").is_none() {
        push(&mut out, "PATH", child::DEFAULT_PATH);
    }
    for (k, v) in DEFAULTS {
        if lookup(&out, k).is_none() {
            push(&mut out, k, v.as_bytes());
        }
    }
    match (spec.egress, &spec.api_socket) {
        (EgressMode::ApiOnly, Some(socket)) => {
            push(&mut out, BASE_URL_VAR, b"http://localhost");
            push(
                &mut out,
                UNIX_SOCKET_VAR,
                socket.as_os_str().as_encoded_bytes(),
            );
        }
        (EgressMode::Allowlist, _) => {
            let url = spec.base_url();
            push(&mut out, BASE_URL_VAR, url.as_bytes());
            for k in PROXY_VARS {
                push(&mut out, k, url.as_bytes());
            }
            let no_proxy = no_proxy(spec.proxy);
            for k in NO_PROXY_VARS {
                push(&mut out, k, no_proxy.as_bytes());
            }
        }
        // `open` (and an api-only spec without a socket, which the run record refuses).
        _ => push(&mut out, BASE_URL_VAR, spec.base_url().as_bytes()),
    }
    push(&mut out, session_var(spec.kind), spec.session.expose());
    out
}

/// `NO_PROXY` for `allowlist`: the proxy's host first, then the usual loopback names.
fn no_proxy(proxy: SocketAddr) -> String {
    let host = match proxy {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut hosts = vec![host.as_str()];
    for h in ["localhost", "127.0.0.1", "::1"] {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> ChildUser {
        ChildUser {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            name: Some("node".into()),
            home: Some("/home/node".into()),
            shell: Some("/bin/bash".into()),
        }
    }

    fn spec(kind: CredentialKind, proxy: &str, egress: EgressMode) -> ChildSpec {
        ChildSpec {
            user: user(),
            kind,
            session: Secret::new(b"bottle-abc".to_vec()),
            proxy: proxy.parse().unwrap(),
            egress,
            api_socket: (egress == EgressMode::ApiOnly)
                .then(|| "/run/bottle-init-api/api.sock".into()),
        }
    }

    fn open(kind: CredentialKind) -> ChildSpec {
        spec(kind, "127.0.0.1:4242", EgressMode::Open)
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn get<'a>(e: &'a [(Vec<u8>, Vec<u8>)], k: &str) -> Option<&'a str> {
        lookup(e, k).map(|v| std::str::from_utf8(v).unwrap())
    }

    /// Every value of `k` (a name must appear once).
    fn all<'a>(e: &'a [(Vec<u8>, Vec<u8>)], k: &str) -> Vec<&'a str> {
        e.iter()
            .filter(|(n, _)| n == k.as_bytes())
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
            .collect()
    }

    fn assert_unique_names(e: &Env) {
        let names: Vec<&[u8]> = e.iter().map(|(k, _)| k.as_slice()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "duplicate names");
    }

    #[test]
    fn strips_credentials_and_bottle_vars_and_adds_the_proxy() {
        let parent = env(&[
            ("PATH", "/usr/bin"),
            ("TERM", "xterm"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "leak1"),
            ("ANTHROPIC_API_KEY", "leak2"),
            ("ANTHROPIC_AUTH_TOKEN", "leak3"),
            ("ANTHROPIC_BASE_URL", "http://evil"),
            ("BOTTLE_TOKEN_FILE", "/run/secrets/t"),
            ("BOTTLE_USER", "node"),
            ("HOME", "/root"),
            ("USER", "root"),
        ]);
        let e = child_env(&parent, &open(CredentialKind::OAuth));
        let text: Vec<u8> = e
            .iter()
            .flat_map(|(k, v)| [k.as_slice(), b"=", v, b"\n"].concat())
            .collect();
        let text = String::from_utf8(text).unwrap();
        for bad in ["leak1", "leak2", "leak3", "evil", "BOTTLE_", "/root"] {
            assert!(!text.contains(bad), "{bad} in {text}");
        }
        assert_eq!(get(&e, "CLAUDE_CODE_OAUTH_TOKEN"), Some("bottle-abc"));
        assert_eq!(get(&e, "ANTHROPIC_AUTH_TOKEN"), None);
        assert_eq!(get(&e, "ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:4242"));
        assert_eq!(get(&e, "HOME"), Some("/home/node"));
        assert_eq!(get(&e, "USER"), Some("node"));
        assert_eq!(get(&e, "LOGNAME"), Some("node"));
        assert_eq!(get(&e, "SHELL"), Some("/bin/bash"));
        assert_eq!(get(&e, "PATH"), Some("/usr/bin"));
        assert_eq!(get(&e, "TERM"), Some("xterm"));
        assert_eq!(
            get(&e, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"),
            Some("1")
        );
        assert_eq!(
            get(&e, "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"),
            Some("1")
        );
        assert_eq!(get(&e, "ENABLE_TOOL_SEARCH"), Some("auto"));
        assert_unique_names(&e);
    }

    #[test]
    fn api_key_mode_uses_auth_token_placeholder() {
        let e = child_env(&env(&[]), &open(CredentialKind::ApiKey));
        assert_eq!(get(&e, "ANTHROPIC_AUTH_TOKEN"), Some("bottle-abc"));
        assert_eq!(get(&e, "CLAUDE_CODE_OAUTH_TOKEN"), None);
        assert_eq!(get(&e, "ANTHROPIC_API_KEY"), None);
    }

    #[test]
    fn user_choices_are_kept() {
        let parent = env(&[
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "0"),
            ("CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL", "0"),
            ("ENABLE_TOOL_SEARCH", "false"),
        ]);
        for mode in [EgressMode::Open, EgressMode::ApiOnly, EgressMode::Allowlist] {
            let e = child_env(&parent, &spec(CredentialKind::OAuth, "127.0.0.1:1", mode));
            assert_eq!(
                all(&e, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"),
                ["0"],
                "{mode}"
            );
            assert_eq!(all(&e, "ENABLE_TOOL_SEARCH"), ["false"], "{mode}");
            assert_eq!(
                all(&e, "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"),
                ["0"],
                "{mode}"
            );
        }
    }

    #[test]
    fn without_passwd_entry_parent_values_stay_and_path_defaults() {
        let mut s = open(CredentialKind::OAuth);
        s.user = ChildUser {
            uid: 4242,
            gid: 4242,
            groups: vec![4242],
            name: None,
            home: None,
            shell: None,
        };
        let e = child_env(&env(&[("HOME", "/tmp")]), &s);
        assert_eq!(get(&e, "HOME"), Some("/tmp"));
        assert_eq!(lookup(&e, "PATH"), Some(child::DEFAULT_PATH));
        assert_eq!(get(&e, "USER"), None);
    }

    #[test]
    fn api_only_speaks_over_the_unix_socket_with_no_proxy_variables() {
        let parent = env(&[
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:1"),
            ("ANTHROPIC_UNIX_SOCKET", "/tmp/evil.sock"),
            ("HTTPS_PROXY", "http://evil"),
            ("https_proxy", "http://evil"),
            ("HTTP_PROXY", "http://evil"),
            ("NO_PROXY", "*"),
            ("ALL_PROXY", "socks5://evil"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "0"),
        ]);
        let s = spec(CredentialKind::OAuth, "127.0.0.1:1", EgressMode::ApiOnly);
        let e = child_env(&parent, &s);
        assert_eq!(all(&e, "ANTHROPIC_BASE_URL"), ["http://localhost"]);
        assert_eq!(
            all(&e, "ANTHROPIC_UNIX_SOCKET"),
            ["/run/bottle-init-api/api.sock"]
        );
        for k in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            assert!(all(&e, k).is_empty(), "{k}");
        }
        // The user's own choice is kept.
        assert_eq!(all(&e, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), ["0"]);
        assert_eq!(
            all(&e, "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"),
            ["1"]
        );
        assert_eq!(all(&e, "CLAUDE_CODE_OAUTH_TOKEN"), ["bottle-abc"]);
        assert_unique_names(&e);
        assert_eq!(s.seccomp().map(|f| f.policy), Some(Policy::ApiOnly));
    }

    #[test]
    fn allowlist_points_the_proxy_variables_at_the_proxy() {
        let parent = env(&[
            ("HTTPS_PROXY", "http://evil"),
            ("ALL_PROXY", "socks5://evil"),
            ("all_proxy", "socks5://evil"),
        ]);
        let s = spec(
            CredentialKind::OAuth,
            "127.0.0.1:4321",
            EgressMode::Allowlist,
        );
        let e = child_env(&parent, &s);
        for k in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            assert_eq!(all(&e, k), ["http://127.0.0.1:4321"], "{k}");
        }
        for k in ["NO_PROXY", "no_proxy"] {
            assert_eq!(all(&e, k), ["127.0.0.1,localhost,::1"], "{k}");
        }
        assert!(all(&e, "ALL_PROXY").is_empty() && all(&e, "all_proxy").is_empty());
        assert_eq!(all(&e, "ANTHROPIC_BASE_URL"), ["http://127.0.0.1:4321"]);
        assert_eq!(all(&e, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), ["1"]);
        assert_unique_names(&e);
        assert_eq!(s.seccomp().map(|f| f.policy), Some(Policy::Allowlist));
        let s6 = spec(CredentialKind::OAuth, "[::1]:4321", EgressMode::Allowlist);
        let e = child_env(&[], &s6);
        assert_eq!(all(&e, "HTTPS_PROXY"), ["http://[::1]:4321"]);
        assert_eq!(all(&e, "NO_PROXY"), ["[::1],localhost,127.0.0.1,::1"]);
    }

    #[test]
    fn open_adds_no_egress_variables_and_has_no_filter() {
        let parent = env(&[
            ("A", "b"),
            ("HTTPS_PROXY", "http://corp-proxy"),
            ("ANTHROPIC_UNIX_SOCKET", "/x.sock"),
        ]);
        let s = open(CredentialKind::OAuth);
        let e = child_env(&parent, &s);
        // The user's proxy settings pass unchanged; nothing egress-specific is added.
        assert_eq!(all(&e, "HTTPS_PROXY"), ["http://corp-proxy"]);
        assert_eq!(all(&e, "ANTHROPIC_UNIX_SOCKET"), ["/x.sock"]);
        for k in ["HTTP_PROXY", "NO_PROXY", "no_proxy"] {
            assert!(all(&e, k).is_empty(), "{k}");
        }
        assert_eq!(all(&e, "A"), ["b"]);
        assert!(s.seccomp().is_none());
    }

    #[test]
    fn prepare_builds_the_drop_plan_filter_and_limit_from_the_spec() {
        let s = spec(CredentialKind::OAuth, "127.0.0.1:1", EgressMode::Allowlist);
        let nofile = NoFile {
            soft: 1024,
            hard: 4096,
        };
        let p = s
            .prepare(&["sh".into()], &[], ChildTerminal::Group, Some(nofile))
            .unwrap();
        assert_eq!((p.plan.uid, p.plan.gid), (1000, 1000));
        assert_eq!(p.plan.groups, vec![1000]);
        assert_eq!(p.seccomp.map(|f| f.policy), Some(Policy::Allowlist));
        assert_eq!(p.nofile, Some(nofile));
        assert_eq!(p.command, "sh");
    }
}
