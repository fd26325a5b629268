//! The child user: `BOTTLE_USER` resolved against /etc/passwd and /etc/group.
//!
//! Parsing is pure (text in, values out) so it is unit-tested without touching the system;
//! we do not use NSS (`getpwnam`) because the static musl build has none and containers have
//! plain files.

use std::fmt;

/// The default child uid when `BOTTLE_USER` is unset (the `node` user of node images, the
/// first user of most distributions).
pub const DEFAULT_UID: u32 = 1000;

/// One /etc/passwd line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One /etc/group line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Who the child runs as, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, primary gid included, no duplicates.
    pub groups: Vec<u32>,
    /// From the passwd entry, when there is one.
    pub name: Option<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
}

/// What `BOTTLE_USER` asked for, before lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserSpec {
    Default,
    Ids { uid: u32, gid: Option<u32> },
    Name { name: String, gid: Option<u32> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserError {
    /// The text is not `uid[:gid]` or `name[:gid]`.
    Syntax(String),
    /// No passwd entry with that name.
    UnknownName(String),
    /// Running the child as root would hand it the credential's protection.
    Root,
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::Syntax(s) => write!(
                f,
                "BOTTLE_USER={s:?} is not valid; set it to uid[:gid] (e.g. 1000:1000) or a user name from /etc/passwd"
            ),
            UserError::UnknownName(n) => write!(
                f,
                "BOTTLE_USER={n:?} is not in /etc/passwd; create the user in the image or give a numeric uid[:gid]"
            ),
            UserError::Root => write!(
                f,
                "BOTTLE_USER resolves to uid 0 or gid 0; the child must not be root: set BOTTLE_USER to an unprivileged user such as 1000"
            ),
        }
    }
}

/// Parses `BOTTLE_USER` (unset or empty means the default).
pub fn parse_spec(text: Option<&str>) -> Result<UserSpec, UserError> {
    let text = match text.map(str::trim) {
        None | Some("") => return Ok(UserSpec::Default),
        Some(t) => t,
    };
    let bad = || UserError::Syntax(text.to_string());
    let (user, gid) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g.parse::<u32>().map_err(|_| bad())?)),
        None => (text, None),
    };
    if user.is_empty() {
        return Err(bad());
    }
    if user.bytes().all(|b| b.is_ascii_digit()) {
        let uid = user.parse::<u32>().map_err(|_| bad())?;
        if uid == 0 || gid == Some(0) {
            return Err(UserError::Root);
        }
        return Ok(UserSpec::Ids { uid, gid });
    }
    if user.contains(|c: char| c.is_whitespace() || c == '/' || c.is_control()) {
        return Err(bad());
    }
    Ok(UserSpec::Name {
        name: user.to_string(),
        gid,
    })
}

/// Parses /etc/passwd text; malformed lines are skipped (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves a spec against parsed passwd and group entries.
pub fn resolve(
    spec: &UserSpec,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ChildUser, UserError> {
    let (entry, uid, gid_override) = match spec {
        UserSpec::Default => (
            passwd.iter().find(|e| e.uid == DEFAULT_UID),
            DEFAULT_UID,
            None,
        ),
        UserSpec::Ids { uid, gid } => (passwd.iter().find(|e| e.uid == *uid), *uid, *gid),
        UserSpec::Name { name, gid } => {
            let e = passwd
                .iter()
                .find(|e| &e.name == name)
                .ok_or_else(|| UserError::UnknownName(name.clone()))?;
            (Some(e), e.uid, *gid)
        }
    };
    // Without a passwd entry the primary group defaults to the uid, the usual convention.
    let gid = gid_override.or(entry.map(|e| e.gid)).unwrap_or(uid);
    if uid == 0 || gid == 0 {
        return Err(UserError::Root);
    }
    let mut supplementary = vec![gid];
    if let Some(e) = entry {
        for g in groups {
            if g.members.iter().any(|m| m == &e.name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    // A supplementary group 0 would let the child read root-group files: refuse it too.
    if supplementary.contains(&0) {
        return Err(UserError::Root);
    }
    Ok(ChildUser {
        uid,
        gid,
        groups: supplementary,
        name: entry.map(|e| e.name.clone()),
        home: entry.map(|e| e.home.clone()),
        shell: entry.map(|e| e.shell.clone()),
    })
}

/// Reads /etc/passwd and /etc/group (missing files count as empty) and resolves `spec`.
pub fn lookup(spec: &UserSpec) -> Result<ChildUser, UserError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &parse_passwd(&passwd), &parse_group(&group))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
# comment\n\
broken line\n\
node:x:1000:1000::/home/node:/bin/bash\n\
dev:x:1001:100:Dev:/home/dev:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nusers:x:100:\nnode:x:1000:\ndocker:x:999:node,dev\nvideo:x:44:dev\nbad\n";

    fn r(spec: Option<&str>) -> Result<ChildUser, UserError> {
        resolve(
            &parse_spec(spec)?,
            &parse_passwd(PASSWD),
            &parse_group(GROUP),
        )
    }

    #[test]
    fn parse_skips_malformed_lines() {
        assert_eq!(parse_passwd(PASSWD).len(), 3);
        assert_eq!(parse_group(GROUP).len(), 5);
        assert_eq!(parse_group(GROUP)[3].members, vec!["node", "dev"]);
    }

    #[test]
    fn default_is_uid_1000_with_its_entry_and_groups() {
        let u = r(None).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 999]);
        assert_eq!(u.name.as_deref(), Some("node"));
        assert_eq!(u.home.as_deref(), Some("/home/node"));
        assert_eq!(u.shell.as_deref(), Some("/bin/bash"));
        assert_eq!(r(Some("")).unwrap(), u);
    }

    #[test]
    fn by_name_and_by_ids() {
        let u = r(Some("dev")).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups.clone()),
            (1001, 100, vec![100, 999, 44])
        );
        let u = r(Some("dev:1234")).unwrap();
        assert_eq!((u.uid, u.gid), (1001, 1234));
        let u = r(Some("1001")).unwrap();
        assert_eq!((u.uid, u.gid), (1001, 100));
        let u = r(Some("4242")).unwrap();
        assert_eq!(
            (
                u.uid,
                u.gid,
                u.groups.clone(),
                u.name.clone(),
                u.home.clone()
            ),
            (4242, 4242, vec![4242], None, None)
        );
        let u = r(Some("4242:77")).unwrap();
        assert_eq!((u.uid, u.gid, u.groups), (4242, 77, vec![77]));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            r(Some("nobody-here")),
            Err(UserError::UnknownName("nobody-here".into()))
        );
        assert_eq!(r(Some("root")), Err(UserError::Root));
        assert_eq!(r(Some("0")), Err(UserError::Root));
        assert_eq!(r(Some("1000:0")), Err(UserError::Root));
        for bad in [":1", "1000:", "1000:x", "a b", "99999999999", "../x"] {
            assert!(matches!(r(Some(bad)), Err(UserError::Syntax(_))), "{bad}");
        }
        assert!(UserError::Root.to_string().contains("BOTTLE_USER"));
    }
}
