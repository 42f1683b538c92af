//! The commit the binary is built from, embedded: a binary copied onto another machine (a GPU
//! runner) reports the code it runs, not whatever checkout it runs in.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    if let Some(c) = git(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty()) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { " (modified)" } else { "" };
        println!("cargo:rustc-env=NIBBLE_COMMIT={c}{suffix}");
    }
    // A commit or checkout moves HEAD's log; staging changes the index; an edit to a source (a
    // directory here is watched whole) can make a clean tree modified or a modified one clean.
    let sources = [
        "../engine/src",
        "../harness/src",
        "../shaders",
        "../templates",
    ];
    // Where git keeps them: in a worktree `.git` is a file and these live under the main
    // checkout's `.git/worktrees/NAME`, so `../.git/...` would name nothing and never change.
    let git_path = |p: &str| git(&["rev-parse", "--git-path", p]).unwrap_or(format!("../.git/{p}"));
    for p in [git_path("logs/HEAD"), git_path("index")]
        .into_iter()
        .chain(sources.map(String::from))
    {
        println!("cargo:rerun-if-changed={p}");
    }
}
