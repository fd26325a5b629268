//! A private home for a child uid without a passwd entry (issue 9: `BOTTLE_USER=$(id -u):$(id -g)`
//! for a host uid left HOME=/root and interactive claude on a blank screen). The real binary,
//! as root in a private mount namespace whose /home is a fresh directory of the test's; the
//! attacks are what another uid could have left there. Under CI=true missing root fails.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use support::init::*;

/// No passwd entry for this uid in the test world (only 0, 1000 and 1001 exist).
const UID: u32 = 4242;
const ATTACKER: u32 = 2000;

/// The world plus a root-owned 0755 directory that the run sees as /home.
fn world_with_homes() -> (World, PathBuf) {
    let w = World::new();
    let homes = w.path().join("homes");
    std::fs::create_dir(&homes).unwrap();
    std::fs::set_permissions(&homes, std::fs::Permissions::from_mode(0o755)).unwrap();
    (w, homes)
}

/// Runs `sh -c script` as uid:gid 4242 (no passwd entry), with an OAuth token.
fn run_as_uid(w: &World, homes: &Path, script: &str) -> Finished {
    let token = token();
    let o = run(
        w,
        Opts::new(false, &["sh", "-c", script])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &token)
            .env("BOTTLE_USER", &format!("{UID}:{UID}"))
            .env("HOMES", homes.to_str().unwrap()),
    );
    o.assert_no_secret(&token);
    o
}

const REPORT: &str = "echo \"HOME=$HOME\"; id -u; stat -c 'mode=%u:%g:%a' \"$HOME\"; \
                      echo written > \"$HOME/probe\" && echo writable; cat \"$HOME/.claude.json\"";

#[test]
fn passwd_less_uid_gets_a_private_writable_home_with_onboarding() {
    if !require_root() {
        return;
    }
    let (w, homes) = world_with_homes();
    let o = run_as_uid(&w, &homes, REPORT);
    o.assert_code(0);
    let out = o.out();
    assert!(out.contains("HOME=/home/uid-4242\n"), "{}", o.describe());
    assert!(
        out.contains("4242\nmode=4242:4242:700\nwritable\n"),
        "{}",
        o.describe()
    );
    assert!(out.contains("hasCompletedOnboarding"), "{}", o.describe());
    let meta = std::fs::metadata(homes.join("uid-4242")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (UID, UID, 0o700)
    );
    // A second run (a volume on /home kept it) uses the same home and keeps what is in it.
    let o = run_as_uid(&w, &homes, "cat \"$HOME/probe\"");
    o.assert_code(0);
    assert_eq!(o.out(), "written\n", "{}", o.describe());
}

#[test]
fn an_empty_root_owned_home_is_handed_over_but_root_files_are_not() {
    if !require_root() {
        return;
    }
    // Docker's mount point of a fresh named volume on /home/uid-4242: root-owned and empty.
    let (w, homes) = world_with_homes();
    let home = homes.join("uid-4242");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_as_uid(&w, &homes, REPORT);
    o.assert_code(0);
    assert!(
        o.out().contains("mode=4242:4242:700\nwritable\n"),
        "{}",
        o.describe()
    );
    // Root's directory with something in it is not given away.
    let (w, homes) = world_with_homes();
    let home = homes.join("uid-4242");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("root-file"), "root's").unwrap();
    let o = run_as_uid(&w, &homes, REPORT);
    o.assert_code(78);
    assert!(
        o.err().contains("belongs to uid 0 and is not empty"),
        "{}",
        o.describe()
    );
    assert_eq!(std::fs::metadata(&home).unwrap().uid(), 0);
}

#[test]
fn a_symlink_planted_by_another_uid_is_refused_never_followed() {
    if !require_root() {
        return;
    }
    let (w, homes) = world_with_homes();
    // The attacker points the home at a directory it wants uid 4242 (or root) to write into.
    let target = w.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = homes.join("uid-4242");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let o = run_as_uid(&w, &homes, "echo ran");
    o.assert_code(78);
    assert!(
        !o.out().contains("ran"),
        "the command ran: {}",
        o.describe()
    );
    let err = o.err();
    assert!(
        err.starts_with("bottle-init: error: ")
            && err.contains("/home/uid-4242")
            && err.contains("symlink")
            && err.lines().count() == 1,
        "{}",
        o.describe()
    );
    // Nothing happened through the link.
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755));
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_home_owned_by_another_uid_is_refused_and_left_alone() {
    if !require_root() {
        return;
    }
    let (w, homes) = world_with_homes();
    let home = homes.join("uid-4242");
    std::fs::create_dir(&home).unwrap();
    chown(&home, ATTACKER, ATTACKER);
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = run_as_uid(&w, &homes, "echo ran");
    o.assert_code(78);
    assert!(!o.out().contains("ran"), "{}", o.describe());
    assert!(
        o.err().contains("belongs to uid 2000") && o.err().contains("chown 4242:4242"),
        "{}",
        o.describe()
    );
    let meta = std::fs::metadata(&home).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (ATTACKER, 0o777));
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0);
}

#[test]
fn a_parent_other_users_can_write_is_refused() {
    if !require_root() {
        return;
    }
    for (owner, mode) in [(0, 0o1777), (ATTACKER, 0o755)] {
        let (w, homes) = world_with_homes();
        chown(&homes, owner, owner);
        std::fs::set_permissions(&homes, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = run_as_uid(&w, &homes, "echo ran");
        o.assert_code(78);
        assert!(!o.out().contains("ran"), "{}", o.describe());
        assert!(
            o.err().contains("can be changed by users other than root"),
            "{}",
            o.describe()
        );
        assert!(
            !homes.join("uid-4242").exists(),
            "a home was made in an unsafe parent"
        );
    }
}

#[test]
fn users_with_a_passwd_entry_keep_their_home() {
    if !require_root() {
        return;
    }
    let (w, homes) = world_with_homes();
    let o = run(
        &w,
        Opts::new(false, &["sh", "-c", "echo \"HOME=$HOME\""])
            .env("CLAUDE_CODE_OAUTH_TOKEN", &token())
            .env("HOMES", homes.to_str().unwrap()),
    );
    o.assert_code(0);
    assert_eq!(
        o.out(),
        format!("HOME={}\n", w.home().display()),
        "{}",
        o.describe()
    );
    assert_eq!(std::fs::read_dir(&homes).unwrap().count(), 0);
}
