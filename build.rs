//! Stamps the commit into `bottle-init --version`: `BOTTLE_INIT_COMMIT` ("<short hash> <date>")
//! comes from the environment when set (the Dockerfile resolves it from the build context's
//! .git in a side stage), else from `git` when building from a clone; without either the
//! version line carries no commit.
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["--no-optional-locks"])
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BOTTLE_INIT_COMMIT");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let from_env = std::env::var("BOTTLE_INIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let commit = from_env.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs. Only
        // paths that exist (cargo treats a missing one as always changed).
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        watch.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
        for p in watch {
            if let Some(path) = git(dir, &["rev-parse", "--git-path", &p]) {
                let path = dir.join(path);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
        git(dir, &["log", "-1", "--format=%h %cs"])
    });
    if let Some(c) = commit.filter(|c| c.chars().all(|ch| ch.is_ascii_graphic() || ch == ' ')) {
        println!("cargo:rustc-env=BOTTLE_INIT_COMMIT={c}");
    }
}
