//! The child's environment. Pure: the parent's (already credential-free) variables in, the
//! child's `NAME=value` list out.
//!
//! Rules (issue 2): drop every credential variable and every `BOTTLE_*`; add
//! `ANTHROPIC_BASE_URL` (the proxy) and the session secret as the placeholder credential;
//! take `HOME`, `USER`, `LOGNAME`, `SHELL` from the passwd entry; default
//! `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`, `ENABLE_TOOL_SEARCH=auto` and
//! `CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL=1` (interactive claude otherwise
//! clones the plugin marketplace from GitHub over ssh, bypassing the proxy; see
//! shared/facts/claude-code-client.md).

use crate::config::{ENV_API_KEY, ENV_AUTH_TOKEN, ENV_OAUTH};
use crate::secret::CredentialKind;
use crate::user::ChildUser;

/// `PATH` for the child (and for finding its command) when the parent has none.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// True for variables that never reach the child from the parent.
pub fn is_stripped(name: &[u8]) -> bool {
    name.starts_with(b"BOTTLE_")
        || [ENV_OAUTH, ENV_API_KEY, ENV_AUTH_TOKEN, "ANTHROPIC_BASE_URL"]
            .iter()
            .any(|n| n.as_bytes() == name)
}

/// Which variable carries the session secret for a credential kind (see
/// shared/facts/claude-code-client.md: OAuth placeholder keeps claude's OAuth behaviour;
/// ANTHROPIC_AUTH_TOKEN avoids the API-key approval prompt).
pub fn session_var(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::OAuth => ENV_OAUTH,
        CredentialKind::ApiKey => ENV_AUTH_TOKEN,
    }
}

/// Builds the child's environment as `(name, value)` pairs, in a stable order: the parent's
/// kept variables in their order (with passwd values substituted in place), then additions.
pub fn child_env(
    parent: &[(Vec<u8>, Vec<u8>)],
    user: &ChildUser,
    base_url: &str,
    kind: CredentialKind,
    session: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(parent.len() + 8);
    let set = |out: &mut Vec<(Vec<u8>, Vec<u8>)>, k: &[u8], v: &[u8]| match out
        .iter_mut()
        .find(|(n, _)| n == k)
    {
        Some(slot) => slot.1 = v.to_vec(),
        None => out.push((k.to_vec(), v.to_vec())),
    };
    for (k, v) in parent {
        if is_stripped(k) || out.iter().any(|(n, _)| n == k) {
            continue;
        }
        out.push((k.clone(), v.clone()));
    }
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
    if !out.iter().any(|(n, _)| n == b"PATH") {
        out.push((b"PATH".to_vec(), DEFAULT_PATH.to_vec()));
    }
    for (k, v) in [
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL", "1"),
        ("ENABLE_TOOL_SEARCH", "auto"),
    ] {
        if !out.iter().any(|(n, _)| n == k.as_bytes()) {
            out.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
    }
    set(&mut out, b"ANTHROPIC_BASE_URL", base_url.as_bytes());
    set(&mut out, session_var(kind).as_bytes(), session);
    out
}

/// The value of `name` in an environment list.
pub fn lookup<'a>(env: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    env.iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
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

    fn env(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn get<'a>(e: &'a [(Vec<u8>, Vec<u8>)], k: &str) -> Option<&'a str> {
        lookup(e, k).map(|v| std::str::from_utf8(v).unwrap())
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
        let e = child_env(
            &parent,
            &user(),
            "http://127.0.0.1:4242",
            CredentialKind::OAuth,
            b"bottle-abc",
        );
        let all: Vec<u8> = e
            .iter()
            .flat_map(|(k, v)| [k.as_slice(), b"=", v, b"\n"].concat())
            .collect();
        let all = String::from_utf8(all).unwrap();
        for bad in ["leak1", "leak2", "leak3", "evil", "BOTTLE_", "/root"] {
            assert!(!all.contains(bad), "{bad} in {all}");
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
        let names: Vec<&[u8]> = e.iter().map(|(k, _)| k.as_slice()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "duplicate names");
    }

    #[test]
    fn api_key_mode_uses_auth_token_placeholder() {
        let e = child_env(
            &env(&[]),
            &user(),
            "http://127.0.0.1:1",
            CredentialKind::ApiKey,
            b"bottle-s",
        );
        assert_eq!(get(&e, "ANTHROPIC_AUTH_TOKEN"), Some("bottle-s"));
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
        let e = child_env(&parent, &user(), "u", CredentialKind::OAuth, b"s");
        assert_eq!(
            get(&e, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"),
            Some("0")
        );
        assert_eq!(get(&e, "ENABLE_TOOL_SEARCH"), Some("false"));
        assert_eq!(
            get(&e, "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"),
            Some("0")
        );
    }

    #[test]
    fn without_passwd_entry_parent_values_stay_and_path_defaults() {
        let u = ChildUser {
            uid: 4242,
            gid: 4242,
            groups: vec![4242],
            name: None,
            home: None,
            shell: None,
        };
        let e = child_env(
            &env(&[("HOME", "/tmp")]),
            &u,
            "u",
            CredentialKind::OAuth,
            b"s",
        );
        assert_eq!(get(&e, "HOME"), Some("/tmp"));
        assert_eq!(lookup(&e, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get(&e, "USER"), None);
    }
}
