//! Environment -> validated [`Config`]. Pure: no system calls, no file reads (the token file
//! and CA file are read later by main, after `PR_SET_DUMPABLE=0`), so every rule is
//! unit-tested.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::Upstream;
use crate::scrub::EnvSnapshot;
use crate::secret::{CredentialKind, Secret};
use crate::user::{self, UserSpec};

pub const ENV_OAUTH: &str = "CLAUDE_CODE_OAUTH_TOKEN";
pub const ENV_API_KEY: &str = "ANTHROPIC_API_KEY";
pub const ENV_AUTH_TOKEN: &str = "ANTHROPIC_AUTH_TOKEN";
pub const ENV_TOKEN_FILE: &str = "BOTTLE_TOKEN_FILE";

/// Variables whose values are credentials: captured into [`Secret`]s, wiped from the
/// environment block, never passed to the child. `ANTHROPIC_AUTH_TOKEN` is not an accepted
/// source, but it is a credential, so it is wiped too.
pub const SECRET_VARS: [&str; 3] = [ENV_OAUTH, ENV_API_KEY, ENV_AUTH_TOKEN];

pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Upper bound accepted for `BOTTLE_GRACE` (catches typos such as milliseconds).
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Where the upstream credential comes from.
#[derive(Debug)]
pub enum CredentialSource {
    /// Already captured from the environment.
    Env {
        kind: CredentialKind,
        secret: Secret,
    },
    /// `BOTTLE_TOKEN_FILE`: an OAuth token, read by main after dumpable is off.
    File(PathBuf),
}

#[derive(Debug)]
pub struct Config {
    pub credential: CredentialSource,
    pub user: UserSpec,
    pub upstream: Upstream,
    pub upstream_ca: Option<PathBuf>,
    pub listen: SocketAddr,
    pub grace: Duration,
}

/// One variant per thing that can be wrong; `Display` says what and how to fix it.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    NoCredential,
    TwoCredentials(Vec<&'static str>),
    User(user::UserError),
    Upstream(String),
    Listen(String),
    Grace(String),
    NotUnicode(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoCredential => write!(
                f,
                "no credential; set exactly one of {ENV_OAUTH} (from `claude setup-token`), {ENV_API_KEY}, or {ENV_TOKEN_FILE} (path of a file holding the OAuth token)"
            ),
            ConfigError::TwoCredentials(names) => write!(
                f,
                "more than one credential is set ({}); set exactly one of {ENV_OAUTH}, {ENV_API_KEY}, {ENV_TOKEN_FILE}",
                names.join(", ")
            ),
            ConfigError::User(e) => write!(f, "{e}"),
            ConfigError::Upstream(m) => write!(f, "{m}; the default is {DEFAULT_UPSTREAM}"),
            ConfigError::Listen(v) => write!(
                f,
                "BOTTLE_LISTEN={v:?} is not an address; set it to IP:PORT such as 127.0.0.1:8080 (port 0 picks a free one), or unset it"
            ),
            ConfigError::Grace(v) => write!(
                f,
                "BOTTLE_GRACE={v:?} is not a number of seconds; set it to a value from 0 to {} (default {})",
                MAX_GRACE.as_secs(),
                DEFAULT_GRACE.as_secs()
            ),
            ConfigError::NotUnicode(name) => {
                write!(f, "{name} is not valid UTF-8; set it to plain text")
            }
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
        let token_file = nonempty(text(env, ENV_TOKEN_FILE)?).map(PathBuf::from);
        let user = user::parse_spec(text(env, "BOTTLE_USER")?).map_err(ConfigError::User)?;
        let upstream =
            Upstream::parse(nonempty(text(env, "BOTTLE_UPSTREAM")?).unwrap_or(DEFAULT_UPSTREAM))
                .map_err(ConfigError::Upstream)?;
        let upstream_ca = nonempty(text(env, "BOTTLE_UPSTREAM_CA")?).map(PathBuf::from);
        let listen = match nonempty(text(env, "BOTTLE_LISTEN")?) {
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| ConfigError::Listen(v.to_string()))?,
        };
        let grace = match nonempty(text(env, "BOTTLE_GRACE")?) {
            None => DEFAULT_GRACE,
            Some(v) => parse_grace(v)?,
        };

        let mut found: Vec<(&'static str, Option<(CredentialKind, Secret)>)> = Vec::new();
        for (name, secret) in std::mem::take(&mut env.secrets) {
            if secret.expose().iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match name.as_str() {
                ENV_OAUTH => found.push((ENV_OAUTH, Some((CredentialKind::OAuth, trim(secret))))),
                ENV_API_KEY => {
                    found.push((ENV_API_KEY, Some((CredentialKind::ApiKey, trim(secret)))))
                }
                // ANTHROPIC_AUTH_TOKEN is wiped but not a source.
                _ => {}
            }
        }
        if let Some(path) = token_file {
            found.push((ENV_TOKEN_FILE, None));
            if found.len() == 1 {
                return Ok(Config {
                    credential: CredentialSource::File(path),
                    user,
                    upstream,
                    upstream_ca,
                    listen,
                    grace,
                });
            }
        }
        // Stable order in the message regardless of environment order.
        found.sort_by_key(|(n, _)| {
            [ENV_OAUTH, ENV_API_KEY, ENV_TOKEN_FILE]
                .iter()
                .position(|x| x == n)
        });
        match found.len() {
            0 => Err(ConfigError::NoCredential),
            1 => {
                let (_, cred) = found.pop().expect("one element");
                let (kind, secret) = cred.expect("file case returned above");
                Ok(Config {
                    credential: CredentialSource::Env { kind, secret },
                    user,
                    upstream,
                    upstream_ca,
                    listen,
                    grace,
                })
            }
            _ => Err(ConfigError::TwoCredentials(
                found.iter().map(|(n, _)| *n).collect(),
            )),
        }
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

/// Strips surrounding ASCII whitespace (a token pasted with a newline) without leaving an
/// unwiped copy behind.
pub fn trim(secret: Secret) -> Secret {
    let b = secret.expose();
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    if start == 0 && end == b.len() {
        return secret;
    }
    Secret::new(b[start..end].to_vec())
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
            CredentialSource::File(p) => assert_eq!(p, PathBuf::from("/run/secrets/t")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_credential_is_refused_and_says_what_to_set() {
        for mut s in [
            snap(&[], &[]),
            snap(
                &[(ENV_TOKEN_FILE, "")],
                &[(ENV_OAUTH, ""), (ENV_API_KEY, "  ")],
            ),
        ] {
            let e = Config::from_env(&mut s).unwrap_err();
            assert_eq!(e, ConfigError::NoCredential);
            let m = e.to_string();
            assert!(
                m.contains(ENV_OAUTH) && m.contains(ENV_API_KEY) && m.contains(ENV_TOKEN_FILE),
                "{m}"
            );
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
    fn non_utf8_option_is_refused() {
        let mut s = snap(&[], &[(ENV_OAUTH, "t")]);
        s.plain.push((b"BOTTLE_USER".to_vec(), vec![0xff]));
        assert_eq!(
            Config::from_env(&mut s).unwrap_err(),
            ConfigError::NotUnicode("BOTTLE_USER")
        );
    }

    #[test]
    fn trim_removes_surrounding_whitespace_only() {
        assert_eq!(trim(Secret::new(b" \ta b\r\n".to_vec())).expose(), b"a b");
        assert_eq!(trim(Secret::new(b"ab".to_vec())).expose(), b"ab");
        assert_eq!(trim(Secret::new(b"  ".to_vec())).expose(), b"");
    }
}
