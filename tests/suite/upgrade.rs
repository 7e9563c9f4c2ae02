//! Upgrading a generated service to a later template revision with the project's own
//! `scripts/upgrade-template.sh`.
//!
//! Each test makes a throw-away Git repository of the template (its revisions are commits
//! made here), generates a project from one revision as a user does, edits it as a user
//! would, and upgrades. The projects are Git checkouts, so `git status` shows what an
//! upgrade changed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;
use template_tests::{Output, run, shared_target_dir, shared_target_lock, staged_template};

/// Runs git in `dir` as a throw-away identity and returns what it printed.
fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args))
    .assert_success(&format!("git {}", args.join(" ")))
    .stdout
    .trim()
    .to_owned()
}

/// Replaces the one occurrence of `from` in `file` with `to`.
fn replace(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(
        text.matches(from).count(),
        1,
        "{} holds {from:?} exactly once",
        file.display()
    );
    fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// Appends `text` to `file`.
fn append(file: &Path, text: &str) {
    let mut all = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    all.push_str(text);
    fs::write(file, all).unwrap();
}

/// A Git repository holding the template's files, as its own repository does.
struct TemplateRepo {
    dir: TempDir,
}

impl TemplateRepo {
    /// The template as it is now, committed as the first revision.
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pipeforce-template-repo-")
            .tempdir()
            .unwrap();
        for entry in ["cargo-generate.toml", "hooks", "template"] {
            run(Command::new("cp")
                .arg("-R")
                .arg(staged_template().join(entry))
                .arg(dir.path()))
            .assert_success("copy the template");
        }
        git(dir.path(), &["init", "-q"]);
        let repo = Self { dir };
        repo.commit("the template");
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file of the rendered tree, `template/<relative>`.
    fn file(&self, relative: &str) -> PathBuf {
        self.path().join("template").join(relative)
    }

    /// Commits every change and returns the new revision.
    fn commit(&self, message: &str) -> String {
        git(self.path(), &["add", "-A"]);
        git(self.path(), &["commit", "-qm", message]);
        git(self.path(), &["rev-parse", "HEAD"])
    }
}

/// A project generated from a [`TemplateRepo`] and kept in Git by its team.
struct Project {
    dir: PathBuf,
    _root: TempDir,
}

impl Project {
    /// `cargo generate` from the template's current files, as the README shows, with extra
    /// `-d` answers; then the first commit.
    fn generate(template: &TemplateRepo, name: &str, defines: &[String]) -> Self {
        let root = tempfile::Builder::new()
            .prefix("pipeforce-upgrade-")
            .tempdir()
            .unwrap();
        let mut command = Command::new("cargo");
        command
            .env("RUST_BACKTRACE", "0")
            .args(["generate", "--path"])
            .arg(template.path())
            .args(["template", "--silent", "--vcs", "none", "--name", name])
            .args(["-d", "namespace=acme"]);
        for define in defines {
            command.args(["-d", define]);
        }
        run(command.arg("--destination").arg(root.path())).assert_success("cargo generate");
        let project = Self {
            dir: root.path().join(name),
            _root: root,
        };
        git(&project.dir, &["init", "-q"]);
        project.commit("generated");
        project
    }

    fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.file(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
    }

    fn commit(&self, message: &str) {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-qm", message]);
    }

    /// What `git status` lists as changed since the last commit.
    fn changes(&self) -> String {
        git(&self.dir, &["status", "--porcelain"])
    }

    /// `scripts/upgrade-template.sh <args>`.
    fn upgrade(&self, args: &[&str]) -> Output {
        run(Command::new(self.file("scripts/upgrade-template.sh"))
            .current_dir(&self.dir)
            .args(args))
    }

    /// `cargo <args>` in the shared target dir of the suite's renders.
    fn cargo(&self, args: &[&str]) -> Output {
        let _alone = shared_target_lock();
        run(Command::new("cargo")
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", shared_target_dir())
            .args(args))
    }
}

fn revision(rev: &str) -> String {
    format!("template_revision={rev}")
}

fn source(template: &TemplateRepo) -> String {
    format!("template_source={}", template.path().display())
}

#[test]
fn an_upgrade_brings_the_template_s_changes_and_keeps_the_user_s() {
    // Arrange: a project generated from the first revision, then edited by its team.
    let template = TemplateRepo::new();
    let first = git(template.path(), &["rev-parse", "HEAD"]);
    let project = Project::generate(&template, "upgraded", &[revision(&first)]);
    let service_edit = "\n// The team's own line: the upgrade must leave it alone.\n";
    append(&project.file("src/service/hello.rs"), service_edit);
    let service_before = project.read("src/service/hello.rs");
    append(
        &project.file("Cargo.toml"),
        "\n[package.metadata.team]\nowner = \"payments\"\n",
    );
    append(
        &project.file("Dockerfile"),
        "LABEL org.opencontainers.image.vendor=\"Acme\"\n",
    );
    project.commit("the team's edits");

    // ... and a new template revision: a framework fix, and changes elsewhere in the two files.
    append(
        &template.file("crates/pipeforce/src/lib.rs"),
        "\n/// Only in the second template revision.\npub const SECOND_REVISION: bool = true;\n",
    );
    replace(
        &template.file("Cargo.toml"),
        "[package]\n",
        "[package]\nhomepage = \"https://pipeforce.io\"\n",
    );
    replace(
        &template.file("Dockerfile"),
        "# syntax=docker/dockerfile:1\n",
        "# syntax=docker/dockerfile:1\n# Second template revision.\n",
    );
    let second = template.commit("a framework fix");

    // Act
    let output = project.upgrade(&["--path", template.path().to_str().unwrap()]);

    // Assert: both sides' changes are in, the user's code is as it was.
    output.assert_success("upgrade-template.sh");
    let summary = &output.stdout;
    for line in [
        "Updated from the template:\n  crates/pipeforce/src/lib.rs\n",
        "Merged cleanly:\n  Cargo.toml\n  Dockerfile\n",
        "1 updated, 2 merged cleanly, 0 with conflicts.",
    ] {
        assert!(summary.contains(line), "{line:?} in:\n{summary}");
    }
    assert!(
        project
            .read("crates/pipeforce/src/lib.rs")
            .contains("SECOND_REVISION")
    );
    let manifest = project.read("Cargo.toml");
    assert!(
        manifest.contains("homepage = \"https://pipeforce.io\""),
        "{manifest}"
    );
    assert!(manifest.contains("owner = \"payments\""), "{manifest}");
    let dockerfile = project.read("Dockerfile");
    assert!(
        dockerfile.contains("# Second template revision."),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("image.vendor=\"Acme\""), "{dockerfile}");
    assert_eq!(project.read("src/service/hello.rs"), service_before);
    let record = project.read(".pipeforce-template.toml");
    assert!(
        record.contains(&format!("revision = \"{second}\"")),
        "{record}"
    );

    // The result builds with its refreshed lock file and passes its tests, including one the
    // team writes against the framework fix.
    fs::write(
        project.file("tests/upgraded.rs"),
        "#[test]\nfn the_framework_fix_arrived() {\n    assert!(pipeforce::SECOND_REVISION);\n}\n",
    )
    .unwrap();
    project
        .cargo(&["test", "--locked"])
        .assert_success("cargo test --locked of the upgraded project");
}

#[test]
fn upgrading_to_the_recorded_revision_changes_nothing() {
    let template = TemplateRepo::new();
    let first = git(template.path(), &["rev-parse", "HEAD"]);
    let project = Project::generate(
        &template,
        "unchanged",
        &[revision(&first), source(&template)],
    );
    append(&project.file("Dockerfile"), "LABEL team=\"payments\"\n");
    // Even an edit in the framework stays until a new revision replaces the file.
    append(
        &project.file("crates/pipeforce/src/lib.rs"),
        "\n// A local experiment.\n",
    );
    project.commit("the team's edits");

    let output = project.upgrade(&[]);

    output.assert_success("upgrade-template.sh");
    assert!(
        output.stdout.contains(&format!(
            "already at {} ({}): nothing to upgrade.",
            &first[..12],
            template.path().display()
        )),
        "{}",
        output.stdout
    );
    assert_eq!(project.changes(), "", "{}", output.stdout);
}

#[test]
fn conflicting_edits_leave_markers_and_fail_the_upgrade() {
    let template = TemplateRepo::new();
    let first = git(template.path(), &["rev-parse", "HEAD"]);
    let project = Project::generate(&template, "conflicted", &[revision(&first)]);
    let syntax = "# syntax=docker/dockerfile:1\n";
    replace(
        &project.file("Dockerfile"),
        syntax,
        "# syntax=docker/dockerfile:1.7\n",
    );
    project.commit("the team's pin");
    replace(
        &template.file("Dockerfile"),
        syntax,
        "# syntax=docker/dockerfile:1.10\n",
    );
    template.commit("a newer Dockerfile syntax");

    let output = project.upgrade(&["--path", template.path().to_str().unwrap()]);

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output
            .stdout
            .contains("Merged with conflicts (markers in place):\n  Dockerfile\n"),
        "{}",
        output.stdout
    );
    let dockerfile = project.read("Dockerfile");
    for marker in [
        "<<<<<<< Dockerfile (this project)\n# syntax=docker/dockerfile:1.7\n=======\n",
        "# syntax=docker/dockerfile:1.10\n>>>>>>> Dockerfile (template ",
    ] {
        assert!(dockerfile.contains(marker), "{marker:?} in:\n{dockerfile}");
    }
}

#[test]
fn a_project_that_does_not_record_its_revision_is_upgraded_once_told() {
    let template = TemplateRepo::new();
    let first = git(template.path(), &["rev-parse", "HEAD"]);
    let project = Project::generate(&template, "unrecorded", &[]);
    let path = template.path().to_str().unwrap();

    let refused = project.upgrade(&["--path", path]);

    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("pass --from <commit>"),
        "{refused:?}"
    );
    assert_eq!(project.changes(), "");

    let output = project.upgrade(&["--path", path, "--from", &first[..10]]);

    output.assert_success("upgrade-template.sh --from");
    let record = project.read(".pipeforce-template.toml");
    assert!(
        record.contains(&format!("revision = \"{first}\"")),
        "{record}"
    );
    assert!(record.contains(&format!("source = \"{path}\"")), "{record}");
}
