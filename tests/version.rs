//! `bottle-init --version` names the commit it was built from (build.rs reads git when cargo
//! builds from a clone). Runs the binary cargo built for this test run.

mod support;

use std::process::Command;

use support::git_head;

#[test]
fn version_names_the_head_commit() {
    let o = Command::new(support::bin())
        .arg("--version")
        .output()
        .expect("run bottle-init --version");
    assert!(o.status.success(), "{o:?}");
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let pkg = format!("bottle-init {}", env!("CARGO_PKG_VERSION"));
    match git_head() {
        Some(head) => assert_eq!(line, format!("{pkg} ({head})")),
        // A source tarball without git: the plain version, and CI always builds a clone.
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI builds from a clone, but git cannot read HEAD"
            );
            assert_eq!(line, pkg);
        }
    }
}
