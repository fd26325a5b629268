//! Environment -> validated configuration. Every variable bottle-init reads is read here,
//! from the one snapshot `scrub` took of the environment: [`Common`] (both modes: the log
//! filter and the run directory) and [`Config`] (`run`: the credential, the child user, the
//! upstream, the listener, the grace period and the egress mode).
//!
//! Pure: no system calls, no file reads (the token file and CA file are read later by main,
//! after `PR_SET_DUMPABLE=0`, and checked against the child user), so every rule is
//! unit-tested.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::egress::mode::{
    ALLOW_HOSTS_ENV, AllowList, AllowListError, EGRESS_ENV, EgressConfig, EgressMode,
    HOST_NETWORK_ENV, ModeError,
};
use crate::logging::Format;
use crate::scrub::EnvSnapshot;
use crate::secret::{self, CredentialKind, Secret};
use crate::user::{self, UserSpec};

pub const ENV_OAUTH: &str = "CLAUDE_CODE_OAUTH_TOKEN";
pub const ENV_API_KEY: &str = "ANTHROPIC_API_KEY";
pub const ENV_AUTH_TOKEN: &str = "ANTHROPIC_AUTH_TOKEN";
pub const ENV_TOKEN_FILE: &str = "BOTTLE_TOKEN_FILE";
pub const ENV_API_KEY_FILE: &str = "BOTTLE_API_KEY_FILE";
pub const ENV_INSECURE_SECRET_FILE: &str = "BOTTLE_INSECURE_SECRET_FILE";
pub const ENV_INSECURE_LISTEN: &str = "BOTTLE_INSECURE_LISTEN";
pub const ENV_USER: &str = "BOTTLE_USER";
pub const ENV_UPSTREAM: &str = "BOTTLE_UPSTREAM";
pub const ENV_UPSTREAM_CA: &str = "BOTTLE_UPSTREAM_CA";
pub const ENV_LISTEN: &str = "BOTTLE_LISTEN";
pub const ENV_GRACE: &str = "BOTTLE_GRACE";
pub const ENV_LOG: &str = "BOTTLE_LOG";
pub const ENV_RUN_DIR: &str = "BOTTLE_RUN_DIR";
pub const ENV_MAX_REQUESTS_PER_MINUTE: &str = "BOTTLE_MAX_REQUESTS_PER_MINUTE";
pub const ENV_MAX_TOKENS: &str = "BOTTLE_MAX_TOKENS";
pub const ENV_LOG_FORMAT: &str = "BOTTLE_LOG_FORMAT";

/// The four credential sources, in the order messages list them.
pub const CREDENTIAL_VARS: [&str; 4] = [ENV_OAUTH, ENV_API_KEY, ENV_TOKEN_FILE, ENV_API_KEY_FILE];

/// Variables whose values are credentials: captured into [`Secret`]s, wiped from the
/// environment block, never passed to the child. `ANTHROPIC_AUTH_TOKEN` is not an accepted
/// source, but it is a credential, so it is wiped too.
pub const SECRET_VARS: [&str; 3] = [ENV_OAUTH, ENV_API_KEY, ENV_AUTH_TOKEN];

pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
/// Where PID 1 publishes its run record for `bottle-init exec`.
pub const DEFAULT_RUN_DIR: &str = "/run/bottle-init";
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Upper bound accepted for `BOTTLE_GRACE` (catches typos such as milliseconds).
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Where requests go: always `https://host[:port]`; the client's Host header never changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Parses `BOTTLE_UPSTREAM`: `https://host[:port]` with an optional trailing `/`.
    /// Anything else (http, a path, user info, query) is refused with a message for a human.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("BOTTLE_UPSTREAM must start with https:// (got {url:?})"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "BOTTLE_UPSTREAM must be https://host[:port] with no path, query or user (got {url:?})"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("BOTTLE_UPSTREAM has an invalid port {p:?} (got {url:?})")
                })?;
                (h, port)
            }
            _ => (rest, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("BOTTLE_UPSTREAM has no host (got {url:?})"));
        }
        Ok(Upstream {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// What both modes read first; never fails, so the logger exists before any error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// `BOTTLE_LOG` (unset, or not UTF-8: the default filter).
    pub log: Option<String>,
    /// `BOTTLE_RUN_DIR`, as given (made absolute by the run record, which is not pure).
    pub run_dir: PathBuf,
    /// `BOTTLE_LOG_FORMAT`; an unknown value logs in the human format here (the refusal,
    /// exit 78, comes from [`Config::from_env`] in that format).
    pub log_format: Format,
}

impl Common {
    pub fn from_env(env: &EnvSnapshot) -> Common {
        use std::os::unix::ffi::OsStrExt;
        let run_dir = match env.get(ENV_RUN_DIR).filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(std::ffi::OsStr::from_bytes(v)),
            None => PathBuf::from(DEFAULT_RUN_DIR),
        };
        Common {
            log: text(env, ENV_LOG).ok().flatten().map(str::to_string),
            run_dir,
            log_format: Format::parse(text(env, ENV_LOG_FORMAT).ok().flatten()).unwrap_or_default(),
        }
    }
}

/// `BOTTLE_MAX_*`: the proxy's optional limits on what the child may spend (off when `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageLimits {
    /// Requests forwarded upstream within any 60 s.
    pub requests_per_minute: Option<u64>,
    /// Input + output tokens the replies reported over the run.
    pub tokens: Option<u64>,
}

/// Where the upstream credential comes from.
#[derive(Debug)]
pub enum CredentialSource {
    /// Already captured from the environment.
    Env {
        kind: CredentialKind,
        secret: Secret,
    },
    /// `BOTTLE_TOKEN_FILE` (an OAuth token) or `BOTTLE_API_KEY_FILE` (an API key), read by
    /// main after dumpable is off and the child user is known (its permissions are checked
    /// against that user).
    File {
        var: &'static str,
        kind: CredentialKind,
        path: PathBuf,
    },
}

#[derive(Debug)]
pub struct Config {
    pub credential: CredentialSource,
    pub user: UserSpec,
    pub upstream: Upstream,
    pub upstream_ca: Option<PathBuf>,
    pub listen: SocketAddr,
    pub grace: Duration,
    /// `BOTTLE_INSECURE_SECRET_FILE=1`: read a secret file the child user can read or owns.
    pub insecure_secret_file: bool,
    /// `BOTTLE_INSECURE_LISTEN=1` was needed for (and allowed) a non-loopback `listen`.
    pub insecure_listen: bool,
    /// `BOTTLE_EGRESS`, `BOTTLE_ALLOW_HOSTS`, `BOTTLE_INSECURE_HOST_NETWORK`.
    pub egress: EgressConfig,
    /// `ANTHROPIC_AUTH_TOKEN` was set: wiped like a credential but not accepted as one (main
    /// warns).
    pub auth_token_ignored: bool,
    /// `BOTTLE_MAX_REQUESTS_PER_MINUTE`, `BOTTLE_MAX_TOKENS`.
    pub usage_limits: UsageLimits,
}

/// One variant per thing that can be wrong; `Display` says what and how to fix it.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    NoCredential,
    TwoCredentials(Vec<&'static str>),
    User(user::UserError),
    Upstream(String),
    Listen(String),
    /// A non-loopback `BOTTLE_LISTEN` without `BOTTLE_INSECURE_LISTEN=1`.
    ListenNotLoopback(SocketAddr),
    Grace(String),
    /// `BOTTLE_LOG_FORMAT` is neither `human` nor `json`.
    LogFormat(String),
    /// A `BOTTLE_MAX_*` that is not a positive integer.
    Limit(&'static str, String),
    NotUnicode(&'static str),
    /// A `BOTTLE_INSECURE_*` switch with a value other than 1 (or 0/empty).
    Flag(&'static str, String),
    /// A bad `BOTTLE_EGRESS`.
    EgressMode(ModeError),
    /// A bad `BOTTLE_ALLOW_HOSTS`.
    AllowList(AllowListError),
    /// `BOTTLE_ALLOW_HOSTS` set while the mode ignores it: refusing beats running open while
    /// the user believes the list is enforced.
    AllowHostsIgnored {
        mode: EgressMode,
    },
    /// `BOTTLE_INSECURE_HOST_NETWORK=1` while the mode installs no rules.
    HostNetworkIgnored {
        mode: EgressMode,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoCredential => write!(
                f,
                "no credential; set exactly one of {ENV_OAUTH} (from `claude setup-token`), {ENV_API_KEY}, {ENV_TOKEN_FILE} (path of a file holding the OAuth token) or {ENV_API_KEY_FILE} (path of a file holding the API key)"
            ),
            ConfigError::TwoCredentials(names) => write!(
                f,
                "more than one credential is set ({}); set exactly one of {}",
                names.join(", "),
                CREDENTIAL_VARS.join(", ")
            ),
            ConfigError::User(e) => write!(f, "{e}"),
            ConfigError::Upstream(m) => write!(f, "{m}; the default is {DEFAULT_UPSTREAM}"),
            ConfigError::Listen(v) => write!(
                f,
                "BOTTLE_LISTEN={v:?} is not an address; set it to IP:PORT such as 127.0.0.1:8080 (port 0 picks a free one), or unset it"
            ),
            ConfigError::ListenNotLoopback(addr) => write!(
                f,
                "BOTTLE_LISTEN={addr} is not a loopback address: the proxy would accept the session secret from the network, and whoever learns it (every process of the child has it) could use your credential from there; listen on 127.0.0.1 (the default), or set {ENV_INSECURE_LISTEN}=1 if that network is yours alone"
            ),
            ConfigError::Flag(name, v) => {
                write!(
                    f,
                    "{name}={v:?} is not valid; set it to 1 (or leave it unset)"
                )
            }
            ConfigError::Grace(v) => write!(
                f,
                "BOTTLE_GRACE={v:?} is not a number of seconds; set it to a value from 0 to {} (default {})",
                MAX_GRACE.as_secs(),
                DEFAULT_GRACE.as_secs()
            ),
            ConfigError::LogFormat(v) => write!(
                f,
                "{ENV_LOG_FORMAT}={v:?} is not a log format; set it to human (the default) or json"
            ),
            ConfigError::Limit(name, v) => write!(
                f,
                "{name}={v:?} is not a positive integer; set it to a whole number above 0 (e.g. {}), or unset it for no limit",
                if *name == ENV_MAX_TOKENS {
                    "5000000"
                } else {
                    "60"
                }
            ),
            ConfigError::NotUnicode(name) => {
                write!(f, "{name} is not valid UTF-8; set it to plain text")
            }
            ConfigError::EgressMode(e) => e.fmt(f),
            ConfigError::AllowList(e) => e.fmt(f),
            ConfigError::AllowHostsIgnored { mode } => write!(
                f,
                "{ALLOW_HOSTS_ENV} is set but {EGRESS_ENV} is {mode}, which ignores it: \
                 set {EGRESS_ENV}=allowlist to enforce the list, or unset {ALLOW_HOSTS_ENV}"
            ),
            ConfigError::HostNetworkIgnored { mode } => write!(
                f,
                "{HOST_NETWORK_ENV} is set but {EGRESS_ENV} is {mode}, which installs no \
                 nftables rules: unset {HOST_NETWORK_ENV}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

fn text<'a>(env: &'a EnvSnapshot, name: &'static str) -> Result<Option<&'a str>, ConfigError> {
    match env.get(name) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .map(Some)
            .map_err(|_| ConfigError::NotUnicode(name)),
    }
}

/// Set and non-empty: `docker run -e VAR=` passes an empty value, which means "not set".
fn nonempty(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.trim().is_empty())
}

impl Config {
    /// Validates everything; consumes the captured secrets (the chosen one moves into the
    /// config, the others are dropped and wiped).
    pub fn from_env(env: &mut EnvSnapshot) -> Result<Config, ConfigError> {
        // Egress first: a typo in the lockdown is the error that matters most.
        let egress = egress(env)?;
        let token_file = nonempty(text(env, ENV_TOKEN_FILE)?).map(PathBuf::from);
        let key_file = nonempty(text(env, ENV_API_KEY_FILE)?).map(PathBuf::from);
        let insecure_secret_file = flag(env, ENV_INSECURE_SECRET_FILE)?;
        let insecure_listen = flag(env, ENV_INSECURE_LISTEN)?;
        let user = user::parse_spec(text(env, ENV_USER)?).map_err(ConfigError::User)?;
        let upstream =
            Upstream::parse(nonempty(text(env, ENV_UPSTREAM)?).unwrap_or(DEFAULT_UPSTREAM))
                .map_err(ConfigError::Upstream)?;
        let upstream_ca = nonempty(text(env, ENV_UPSTREAM_CA)?).map(PathBuf::from);
        let listen = match nonempty(text(env, ENV_LISTEN)?) {
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| ConfigError::Listen(v.to_string()))?,
        };
        if !is_loopback(listen) && !insecure_listen {
            return Err(ConfigError::ListenNotLoopback(listen));
        }
        let grace = match nonempty(text(env, ENV_GRACE)?) {
            None => DEFAULT_GRACE,
            Some(v) => parse_grace(v)?,
        };
        let log_format = text(env, ENV_LOG_FORMAT)?;
        Format::parse(log_format)
            .map_err(|()| ConfigError::LogFormat(log_format.unwrap_or_default().to_string()))?;
        let usage_limits = UsageLimits {
            requests_per_minute: limit(env, ENV_MAX_REQUESTS_PER_MINUTE)?,
            tokens: limit(env, ENV_MAX_TOKENS)?,
        };

        let auth_token_ignored = env
            .secrets
            .iter()
            .any(|(n, v)| n == ENV_AUTH_TOKEN && !v.is_empty());
        let mut found: Vec<(&'static str, CredentialKind, Source)> = Vec::new();
        for (name, secret) in std::mem::take(&mut env.secrets) {
            if secret.expose().iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match name.as_str() {
                ENV_OAUTH => found.push((
                    ENV_OAUTH,
                    CredentialKind::OAuth,
                    Source::Env(secret::trim(secret)),
                )),
                ENV_API_KEY => found.push((
                    ENV_API_KEY,
                    CredentialKind::ApiKey,
                    Source::Env(secret::trim(secret)),
                )),
                // ANTHROPIC_AUTH_TOKEN is wiped but not a source.
                _ => {}
            }
        }
        for (var, kind, path) in [
            (ENV_TOKEN_FILE, CredentialKind::OAuth, token_file),
            (ENV_API_KEY_FILE, CredentialKind::ApiKey, key_file),
        ] {
            if let Some(path) = path {
                found.push((var, kind, Source::File(path)));
            }
        }
        // Stable order in the message regardless of environment order.
        found.sort_by_key(|(n, _, _)| CREDENTIAL_VARS.iter().position(|x| x == n));
        if found.len() > 1 {
            return Err(ConfigError::TwoCredentials(
                found.iter().map(|(n, _, _)| *n).collect(),
            ));
        }
        let Some((var, kind, source)) = found.pop() else {
            return Err(ConfigError::NoCredential);
        };
        let credential = match source {
            Source::Env(secret) => CredentialSource::Env { kind, secret },
            Source::File(path) => CredentialSource::File { var, kind, path },
        };
        Ok(Config {
            credential,
            user,
            upstream,
            upstream_ca,
            listen,
            grace,
            insecure_secret_file,
            insecure_listen: insecure_listen && !is_loopback(listen),
            egress,
            auth_token_ignored,
            usage_limits,
        })
    }
}

/// `BOTTLE_EGRESS`, `BOTTLE_ALLOW_HOSTS` (only with `allowlist`) and
/// `BOTTLE_INSECURE_HOST_NETWORK` (only with `allowlist`). An unknown mode is an error, so a
/// typo never silently runs unlocked.
fn egress(env: &EnvSnapshot) -> Result<EgressConfig, ConfigError> {
    let utf8 = |name, err: ConfigError| match env.get(name) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v).map(Some).map_err(|_| err),
    };
    let mode = utf8(EGRESS_ENV, ConfigError::EgressMode(ModeError::NotUtf8))?;
    let mode = EgressMode::parse(mode).map_err(ConfigError::EgressMode)?;
    let hosts = utf8(
        ALLOW_HOSTS_ENV,
        ConfigError::AllowList(AllowListError::NotUtf8),
    )?;
    let allow = match (mode, hosts) {
        (EgressMode::Allowlist, Some(v)) => AllowList::parse(v).map_err(ConfigError::AllowList)?,
        (_, Some(v)) if !v.trim().is_empty() => {
            return Err(ConfigError::AllowHostsIgnored { mode });
        }
        _ => AllowList::default(),
    };
    let host_network_ok = flag(env, HOST_NETWORK_ENV)?;
    if host_network_ok && mode != EgressMode::Allowlist {
        return Err(ConfigError::HostNetworkIgnored { mode });
    }
    Ok(EgressConfig {
        mode,
        allow,
        host_network_ok,
    })
}

/// A credential before it is known to be the only one.
enum Source {
    Env(Secret),
    File(PathBuf),
}

/// Loopback only: 127.0.0.0/8, ::1 and the IPv4-mapped form of 127.0.0.0/8.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// A `BOTTLE_INSECURE_*` switch: `1` on; unset, empty or `0` off; anything else refused.
fn flag(env: &EnvSnapshot, name: &'static str) -> Result<bool, ConfigError> {
    match text(env, name)?.map(str::trim) {
        None | Some("") | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(ConfigError::Flag(name, v.to_string())),
    }
}

/// A `BOTTLE_MAX_*` limit: unset or empty is no limit; otherwise ASCII digits (surrounding
/// spaces allowed) for a value from 1 to u64::MAX. `0`, signs, fractions and units refuse,
/// so a typo never silently runs without the limit the user asked for.
fn limit(env: &EnvSnapshot, name: &'static str) -> Result<Option<u64>, ConfigError> {
    let Some(v) = nonempty(text(env, name)?) else {
        return Ok(None);
    };
    let t = v.trim();
    match t.parse::<u64>() {
        Ok(n) if n > 0 && t.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(ConfigError::Limit(name, v.to_string())),
    }
}

/// Seconds, fractional allowed ("2.5").
pub fn parse_grace(v: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = v
        .trim()
        .parse()
        .map_err(|_| ConfigError::Grace(v.to_string()))?;
    if !secs.is_finite() || secs < 0.0 || secs > MAX_GRACE.as_secs_f64() {
        return Err(ConfigError::Grace(v.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(plain: &[(&str, &str)], secrets: &[(&str, &str)]) -> EnvSnapshot {
        EnvSnapshot {
            plain: plain
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn oauth_token_alone_is_accepted_with_defaults() {
        let c = Config::from_env(&mut snap(
            &[("PATH", "/bin")],
            &[(ENV_OAUTH, "sk-ant-oat01-x\n")],
        ))
        .unwrap();
        match c.credential {
            CredentialSource::Env { kind, secret } => {
                assert_eq!(kind, CredentialKind::OAuth);
                assert_eq!(secret.expose(), b"sk-ant-oat01-x");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.user, UserSpec::Default);
        assert_eq!(
            c.upstream,
            Upstream {
                host: "api.anthropic.com".into(),
                port: 443
            }
        );
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.grace, Duration::from_secs(5));
        assert!(
            c.grace < Duration::from_secs(10),
            "must end before docker stop's SIGKILL"
        );
        assert_eq!(c.upstream_ca, None);
    }

    #[test]
    fn api_key_alone_is_accepted() {
        let c = Config::from_env(&mut snap(&[], &[(ENV_API_KEY, "sk-ant-api03-y")])).unwrap();
        assert!(matches!(
            c.credential,
            CredentialSource::Env {
                kind: CredentialKind::ApiKey,
                ..
            }
        ));
    }

    #[test]
    fn token_file_alone_is_accepted() {
        let c = Config::from_env(&mut snap(&[(ENV_TOKEN_FILE, "/run/secrets/t")], &[])).unwrap();
        match c.credential {
            CredentialSource::File { var, kind, path } => {
                assert_eq!(var, ENV_TOKEN_FILE);
                assert_eq!(kind, CredentialKind::OAuth);
                assert_eq!(path, PathBuf::from("/run/secrets/t"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!c.insecure_secret_file);
        let c = Config::from_env(&mut snap(
            &[
                (ENV_API_KEY_FILE, "/run/secrets/k"),
                (ENV_INSECURE_SECRET_FILE, "1"),
            ],
            &[],
        ))
        .unwrap();
        match c.credential {
            CredentialSource::File { var, kind, path } => {
                assert_eq!(var, ENV_API_KEY_FILE);
                assert_eq!(kind, CredentialKind::ApiKey);
                assert_eq!(path, PathBuf::from("/run/secrets/k"));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.insecure_secret_file);
    }

    #[test]
    fn no_credential_is_refused_and_says_what_to_set() {
        for mut s in [
            snap(&[], &[]),
            snap(
                &[(ENV_TOKEN_FILE, ""), (ENV_API_KEY_FILE, " ")],
                &[(ENV_OAUTH, ""), (ENV_API_KEY, "  ")],
            ),
        ] {
            let e = Config::from_env(&mut s).unwrap_err();
            assert_eq!(e, ConfigError::NoCredential);
            let m = e.to_string();
            for v in CREDENTIAL_VARS {
                assert!(m.contains(v), "{v}: {m}");
            }
        }
    }

    #[test]
    fn auth_token_is_not_a_source() {
        let e = Config::from_env(&mut snap(&[], &[(ENV_AUTH_TOKEN, "x")])).unwrap_err();
        assert_eq!(e, ConfigError::NoCredential);
    }

    #[test]
    fn two_credentials_are_refused_naming_both_and_not_the_values() {
        let cases = [
            snap(&[], &[(ENV_API_KEY, "valueB"), (ENV_OAUTH, "valueA")]),
            snap(&[(ENV_TOKEN_FILE, "/f")], &[(ENV_OAUTH, "valueA")]),
            snap(&[(ENV_TOKEN_FILE, "/f")], &[(ENV_API_KEY, "valueB")]),
            snap(&[(ENV_API_KEY_FILE, "/f")], &[(ENV_OAUTH, "valueA")]),
            snap(&[(ENV_API_KEY_FILE, "/f"), (ENV_TOKEN_FILE, "/g")], &[]),
        ];
        for mut s in cases {
            let e = Config::from_env(&mut s).unwrap_err();
            let m = e.to_string();
            assert!(
                matches!(e, ConfigError::TwoCredentials(ref n) if n.len() == 2),
                "{m}"
            );
            assert!(!m.contains("valueA") && !m.contains("valueB"), "{m}");
        }
        let e =
            Config::from_env(&mut snap(&[], &[(ENV_API_KEY, "b"), (ENV_OAUTH, "a")])).unwrap_err();
        assert_eq!(e, ConfigError::TwoCredentials(vec![ENV_OAUTH, ENV_API_KEY]));
        let e = Config::from_env(&mut snap(
            &[(ENV_API_KEY_FILE, "/f"), (ENV_TOKEN_FILE, "/g")],
            &[(ENV_API_KEY, "b"), (ENV_OAUTH, "a")],
        ))
        .unwrap_err();
        assert_eq!(e, ConfigError::TwoCredentials(CREDENTIAL_VARS.to_vec()));
    }

    #[test]
    fn non_loopback_listen_is_refused_unless_insecure_listen() {
        for addr in [
            "0.0.0.0:8080",
            "[::]:0",
            "192.168.1.5:80",
            "10.0.0.1:0",
            "[fe80::1]:1",
        ] {
            let e = Config::from_env(&mut snap(&[("BOTTLE_LISTEN", addr)], &[(ENV_OAUTH, "t")]))
                .unwrap_err();
            assert!(
                matches!(e, ConfigError::ListenNotLoopback(_)),
                "{addr}: {e}"
            );
            let m = e.to_string();
            assert!(
                m.contains("not a loopback address")
                    && m.contains("network")
                    && m.contains("BOTTLE_INSECURE_LISTEN=1"),
                "{m}"
            );
            let c = Config::from_env(&mut snap(
                &[("BOTTLE_LISTEN", addr), (ENV_INSECURE_LISTEN, "1")],
                &[(ENV_OAUTH, "t")],
            ))
            .unwrap();
            assert!(c.insecure_listen, "{addr}");
        }
        for addr in [
            "127.0.0.1:0",
            "127.8.9.10:5",
            "[::1]:0",
            "[::ffff:127.0.0.1]:0",
        ] {
            let c = Config::from_env(&mut snap(&[("BOTTLE_LISTEN", addr)], &[(ENV_OAUTH, "t")]))
                .unwrap();
            assert!(!c.insecure_listen, "{addr}");
        }
    }

    #[test]
    fn insecure_switches_take_only_1() {
        for name in [ENV_INSECURE_LISTEN, ENV_INSECURE_SECRET_FILE] {
            for v in ["yes", "true", "2"] {
                let e = Config::from_env(&mut snap(&[(name, v)], &[(ENV_OAUTH, "t")])).unwrap_err();
                assert_eq!(e, ConfigError::Flag(name, v.to_string()));
                assert!(e.to_string().contains(name), "{e}");
            }
            for v in ["0", ""] {
                Config::from_env(&mut snap(&[(name, v)], &[(ENV_OAUTH, "t")])).unwrap();
            }
        }
    }

    #[test]
    fn options_are_parsed() {
        let c = Config::from_env(&mut snap(
            &[
                ("BOTTLE_USER", "node"),
                ("BOTTLE_UPSTREAM", "https://mock.test:8443"),
                ("BOTTLE_UPSTREAM_CA", "/ca.pem"),
                ("BOTTLE_LISTEN", "127.0.0.1:9999"),
                ("BOTTLE_GRACE", "0.5"),
            ],
            &[(ENV_OAUTH, "t")],
        ))
        .unwrap();
        assert_eq!(
            c.user,
            UserSpec::Name {
                name: "node".into(),
                gid: None
            }
        );
        assert_eq!(
            c.upstream,
            Upstream {
                host: "mock.test".into(),
                port: 8443
            }
        );
        assert_eq!(c.upstream_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.grace, Duration::from_millis(500));
    }

    #[test]
    fn bad_options_are_refused_with_the_variable_named() {
        let cases: [(&str, &str, &str); 6] = [
            ("BOTTLE_USER", "a b", "BOTTLE_USER"),
            ("BOTTLE_USER", "0", "BOTTLE_USER"),
            ("BOTTLE_UPSTREAM", "http://x", "BOTTLE_UPSTREAM"),
            ("BOTTLE_LISTEN", "localhost", "BOTTLE_LISTEN"),
            ("BOTTLE_GRACE", "-1", "BOTTLE_GRACE"),
            ("BOTTLE_GRACE", "soon", "BOTTLE_GRACE"),
        ];
        for (k, v, name) in cases {
            let e = Config::from_env(&mut snap(&[(k, v)], &[(ENV_OAUTH, "t")])).unwrap_err();
            assert!(e.to_string().contains(name), "{k}={v}: {e}");
        }
    }

    #[test]
    fn log_format_is_human_or_json() {
        for (v, want) in [
            ("json", Format::Json),
            (" JSON ", Format::Json),
            ("human", Format::Human),
            ("", Format::Human),
        ] {
            let s = snap(&[(ENV_LOG_FORMAT, v)], &[(ENV_OAUTH, "t")]);
            assert_eq!(Common::from_env(&s).log_format, want, "{v:?}");
            Config::from_env(&mut snap(&[(ENV_LOG_FORMAT, v)], &[(ENV_OAUTH, "t")])).unwrap();
        }
        assert_eq!(Common::from_env(&snap(&[], &[])).log_format, Format::Human);
        for v in ["text", "jsonl", "yes"] {
            let s = snap(&[(ENV_LOG_FORMAT, v)], &[(ENV_OAUTH, "t")]);
            assert_eq!(
                Common::from_env(&s).log_format,
                Format::Human,
                "lenient for the error line"
            );
            let e = Config::from_env(&mut snap(&[(ENV_LOG_FORMAT, v)], &[(ENV_OAUTH, "t")]))
                .unwrap_err();
            assert_eq!(e, ConfigError::LogFormat(v.to_string()));
            assert!(
                e.to_string().contains("BOTTLE_LOG_FORMAT") && e.to_string().contains("json"),
                "{e}"
            );
        }
    }

    /// Issue 12: the limits are off by default; a positive integer sets one; anything else
    /// (zero, a sign, a fraction, a unit, too large for u64) refuses with the variable named.
    #[test]
    fn usage_limits_take_only_positive_integers() {
        let c = Config::from_env(&mut snap(&[], &[(ENV_OAUTH, "t")])).unwrap();
        assert_eq!(c.usage_limits, UsageLimits::default());
        let c = Config::from_env(&mut snap(
            &[
                (ENV_MAX_REQUESTS_PER_MINUTE, " 30 "),
                (ENV_MAX_TOKENS, "18446744073709551615"),
            ],
            &[(ENV_OAUTH, "t")],
        ))
        .unwrap();
        assert_eq!(c.usage_limits.requests_per_minute, Some(30));
        assert_eq!(c.usage_limits.tokens, Some(u64::MAX));
        let c = Config::from_env(&mut snap(&[(ENV_MAX_TOKENS, "")], &[(ENV_OAUTH, "t")])).unwrap();
        assert_eq!(c.usage_limits.tokens, None, "empty counts as unset");
        for name in [ENV_MAX_REQUESTS_PER_MINUTE, ENV_MAX_TOKENS] {
            for v in [
                "0",
                "-5",
                "+5",
                "1.5",
                "1e6",
                "10k",
                "abc",
                "18446744073709551616",
                "00",
            ] {
                let e = Config::from_env(&mut snap(&[(name, v)], &[(ENV_OAUTH, "t")])).unwrap_err();
                assert_eq!(e, ConfigError::Limit(name, v.to_string()));
                let m = e.to_string();
                assert!(m.contains(name) && m.contains("positive integer"), "{m}");
                assert!(!m.contains('\n'), "{m}");
            }
        }
    }

    #[test]
    fn non_utf8_option_is_refused() {
        let mut s = snap(&[], &[(ENV_OAUTH, "t")]);
        s.plain.push((b"BOTTLE_USER".to_vec(), vec![0xff]));
        assert_eq!(
            Config::from_env(&mut s).unwrap_err(),
            ConfigError::NotUnicode("BOTTLE_USER")
        );
    }

    /// The egress variables, as `Config::from_env` reads them (with a credential set).
    fn egress_of(vars: &[(&str, &str)]) -> Result<EgressConfig, ConfigError> {
        Config::from_env(&mut snap(vars, &[(ENV_OAUTH, "t")])).map(|c| c.egress)
    }

    #[test]
    fn egress_combinations() {
        let cfg = |m: Option<&str>, h: Option<&str>| {
            let mut vars = Vec::new();
            if let Some(m) = m {
                vars.push((EGRESS_ENV, m));
            }
            if let Some(h) = h {
                vars.push((ALLOW_HOSTS_ENV, h));
            }
            egress_of(&vars)
        };
        assert_eq!(cfg(None, None).unwrap().mode, EgressMode::Open);
        assert_eq!(
            cfg(Some("api-only"), Some(" ")).unwrap().mode,
            EgressMode::ApiOnly
        );
        let c = cfg(Some("allowlist"), Some("a.com b.com:8443")).unwrap();
        assert_eq!(c.allow.entries().len(), 2);
        assert!(cfg(Some("allowlist"), None).unwrap().allow.is_empty());
        for m in [None, Some("open"), Some("api-only")] {
            let e = cfg(m, Some("a.com")).unwrap_err();
            assert!(matches!(e, ConfigError::AllowHostsIgnored { .. }), "{e}");
            assert!(e.to_string().contains("BOTTLE_EGRESS=allowlist"), "{e}");
        }
        assert!(matches!(
            cfg(Some("closed"), None),
            Err(ConfigError::EgressMode(_))
        ));
        assert!(matches!(
            cfg(Some("allowlist"), Some("10.0.0.1")),
            Err(ConfigError::AllowList(_))
        ));
        // The egress error wins over every other one (a typo in the lockdown matters most).
        let e = Config::from_env(&mut snap(&[(EGRESS_ENV, "closed")], &[])).unwrap_err();
        assert!(matches!(e, ConfigError::EgressMode(_)), "{e}");
        let mut s = snap(&[], &[(ENV_OAUTH, "t")]);
        s.plain.push((EGRESS_ENV.as_bytes().to_vec(), vec![0xff]));
        assert_eq!(
            Config::from_env(&mut s).unwrap_err(),
            ConfigError::EgressMode(ModeError::NotUtf8)
        );
    }

    #[test]
    fn host_network_opt_in() {
        let allow = (EGRESS_ENV, "allowlist");
        assert!(!egress_of(&[allow]).unwrap().host_network_ok);
        assert!(
            egress_of(&[allow, (HOST_NETWORK_ENV, "1")])
                .unwrap()
                .host_network_ok
        );
        assert!(
            !egress_of(&[allow, (HOST_NETWORK_ENV, "0")])
                .unwrap()
                .host_network_ok
        );
        assert!(
            !egress_of(&[allow, (HOST_NETWORK_ENV, "")])
                .unwrap()
                .host_network_ok
        );
        let e = egress_of(&[allow, (HOST_NETWORK_ENV, "yes")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("BOTTLE_INSECURE_HOST_NETWORK=\"yes\""),
            "{e}"
        );
        for mode in ["open", "api-only"] {
            let e = egress_of(&[(EGRESS_ENV, mode), (HOST_NETWORK_ENV, "1")]).unwrap_err();
            assert_eq!(
                e,
                ConfigError::HostNetworkIgnored {
                    mode: EgressMode::parse(Some(mode)).unwrap()
                }
            );
        }
    }

    #[test]
    fn common_settings_never_fail() {
        let c = Common::from_env(&snap(&[], &[]));
        assert_eq!(c.log, None);
        assert_eq!(c.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
        let c = Common::from_env(&snap(&[(ENV_RUN_DIR, "")], &[]));
        assert_eq!(c.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
        let mut s = snap(&[(ENV_RUN_DIR, "/tmp/r"), (ENV_LOG, "debug")], &[]);
        assert_eq!(
            Common::from_env(&s),
            Common {
                log: Some("debug".into()),
                run_dir: "/tmp/r".into(),
                log_format: Format::Human,
            }
        );
        s.plain.push((ENV_LOG.as_bytes().to_vec(), vec![0xff]));
        s.plain
            .retain(|(k, v)| k != ENV_LOG.as_bytes() || v == &[0xff]);
        assert_eq!(Common::from_env(&s).log, None);
    }

    #[test]
    fn auth_token_is_noted_not_used() {
        let c =
            Config::from_env(&mut snap(&[], &[(ENV_OAUTH, "t"), (ENV_AUTH_TOKEN, "x")])).unwrap();
        assert!(c.auth_token_ignored);
        let c = Config::from_env(&mut snap(&[], &[(ENV_OAUTH, "t")])).unwrap();
        assert!(!c.auth_token_ignored);
    }

    #[test]
    fn upstream_parse() {
        let u = |s: &str| Upstream::parse(s);
        assert_eq!(
            u("https://api.anthropic.com").unwrap(),
            Upstream {
                host: "api.anthropic.com".into(),
                port: 443
            }
        );
        assert_eq!(
            u("https://API.example:8443/").unwrap(),
            Upstream {
                host: "api.example".into(),
                port: 8443
            }
        );
        assert_eq!(
            u("https://[::1]:9").unwrap(),
            Upstream {
                host: "::1".into(),
                port: 9
            }
        );
        for bad in [
            "http://x",
            "https://",
            "https://x/v1",
            "https://u@x",
            "https://x:0",
            "https://x:99999",
            "x",
        ] {
            assert!(u(bad).is_err(), "{bad} accepted");
        }
    }
}
