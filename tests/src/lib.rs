//! Helpers for the template's own test suite: render the template the way users do, then build,
//! run and inspect what comes out.
//!
//! Every render builds into one shared target directory ([`shared_target_dir`]), so the
//! dependencies of rendered projects compile once per suite run, not once per render.

use std::{
    fs,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::LazyLock,
    time::{Duration, Instant},
};

use tempfile::TempDir;

pub mod amqp;
pub mod bench;
pub mod node;
pub mod otlp;
pub mod podman;

/// The repository: the parent of this crate.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the repository")
}

/// The one target directory every rendered project builds into:
/// `PIPEFORCE_RENDER_TARGET_DIR`, else `target/rendered` in the repository.
pub fn shared_target_dir() -> PathBuf {
    std::env::var_os("PIPEFORCE_RENDER_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("rendered"))
}

/// The template's own files, copied once: `cargo generate --path` copies the whole folder it
/// gets, and the repository holds build output that has no business in a render.
static STAGED_TEMPLATE: LazyLock<TempDir> = LazyLock::new(|| {
    let stage = tempfile::Builder::new()
        .prefix("pipeforce-template-")
        .tempdir()
        .expect("temp dir");
    for entry in ["cargo-generate.toml", "hooks", "template"] {
        copy_recursively(&repo_root().join(entry), &stage.path().join(entry));
    }
    stage
});

/// The staged copy of the template's files (see [`STAGED_TEMPLATE`]).
pub fn staged_template() -> &'static Path {
    STAGED_TEMPLATE.path()
}

fn copy_recursively(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).expect("create dir");
        for entry in fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("dir entry");
            copy_recursively(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// One `cargo generate` run, non-interactive, the way the README documents it.
#[derive(Debug, Clone)]
pub struct Render {
    name: String,
    namespace: Option<String>,
    defines: Vec<(String, String)>,
}

/// A failed render: cargo-generate's exit status and everything it printed.
#[derive(Debug)]
pub struct RenderFailure {
    pub status: ExitStatus,
    pub output: String,
}

impl Render {
    /// A render of the service `name` in the namespace `acme`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: Some("acme".to_owned()),
            defines: Vec::new(),
        }
    }

    /// Answers the namespace question with `namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Adds `-d key=value`.
    pub fn define(mut self, key: &str, value: &str) -> Self {
        self.defines.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Renders into a fresh temp dir outside any Cargo workspace.
    pub fn run(&self) -> Result<Rendered, RenderFailure> {
        let root = tempfile::Builder::new()
            .prefix("pipeforce-render-")
            .tempdir()
            .expect("temp dir");
        let mut command = Command::new("cargo");
        command
            .current_dir(root.path())
            .env("RUST_BACKTRACE", "0")
            .args(["generate", "--path"])
            .arg(staged_template())
            .args(["template", "--silent", "--vcs", "none"])
            .arg(format!("--name={}", self.name))
            .arg("--destination")
            .arg(root.path());
        if let Some(namespace) = &self.namespace {
            command.arg("-d").arg(format!("namespace={namespace}"));
        }
        for (key, value) in &self.defines {
            command.arg("-d").arg(format!("{key}={value}"));
        }
        let output = command.output().expect("cargo generate runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(RenderFailure {
                status: output.status,
                output: printed,
            });
        }
        let dir = root.path().join(&self.name);
        assert!(
            dir.is_dir(),
            "render succeeded without {}: {printed}",
            dir.display()
        );
        Ok(Rendered {
            files: relative_files(&dir),
            dir,
            name: self.name.clone(),
            _root: root,
        })
    }
}

/// A rendered project in a temp dir, removed on drop.
pub struct Rendered {
    /// The project's root folder.
    pub dir: PathBuf,
    /// The service name it was rendered with.
    pub name: String,
    /// The files cargo-generate wrote, listed before any test could add its own
    /// (fuzz corpora, JUnit reports, lockfiles of tools).
    files: Vec<PathBuf>,
    _root: TempDir,
}

impl Rendered {
    /// Runs `cargo <args>` in the project with the shared target dir.
    pub fn cargo(&self, args: &[&str]) -> Output {
        let _alone = shared_target_lock();
        run(Command::new("cargo")
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", shared_target_dir())
            .args(args))
    }

    /// The text of a file of the project.
    pub fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.dir.join(relative))
            .unwrap_or_else(|e| panic!("read {relative}: {e}"))
    }

    /// Every file the render produced, relative to the project root, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.clone()
    }

    /// The service binary in the shared target dir (after `cargo build`).
    pub fn debug_binary(&self) -> PathBuf {
        shared_target_dir().join("debug").join(&self.name)
    }
}

/// Held around every cargo run in the shared target dir, and around running what it built.
///
/// Cargo serialises builds in one target dir, but not what runs after them: every render's
/// `pipeforce` crate lands in the same files, so one project's build can replace a library
/// under another project's doctests or a test binary about to run. Never take it while
/// initialising a shared render: that may call [`Rendered::cargo`].
pub fn shared_target_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A DNS-1123 label, the rule for Kubernetes names: 1 to 63 lowercase letters, digits and
/// `-`, starting with a letter and not ending with `-`. The hooks enforce it on the answers
/// and the deploy command on the names it makes.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Every file under `root`, relative to it, sorted.
pub fn relative_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).expect("below root").to_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    files
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with everything the command printed unless it succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs a command to completion, capturing its output.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// A rendered service running as its own process, killed on drop.
pub struct ServiceProcess {
    child: Child,
    log: tempfile::NamedTempFile,
    /// `http://127.0.0.1:<port>`
    pub http: String,
}

impl ServiceProcess {
    /// Starts `binary` on a free local port with the given extra environment.
    pub fn start(binary: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = Command::new(binary);
        command
            .env("PIPEFORCE_HTTP_HOST", "127.0.0.1")
            .env("PIPEFORCE_HTTP_PORT", port.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log file"))
            .stderr(log.reopen().expect("log file"));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child,
            log,
            http: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        fs::File::open(self.log.path())
            .and_then(|mut file| file.read_to_string(&mut text))
            .expect("read log");
        text
    }

    /// Polls `path` until it answers `status`, the process exits, or `timeout` passes.
    pub async fn wait_for_status(&mut self, path: &str, status: u16, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = client.get(format!("{}{path}", self.http)).send().await
                && response.status().as_u16() == status
            {
                return;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "service exited ({exit}) while waiting for {path}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer {status} within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `path` until its JSON body satisfies `done`, and returns that body; panics with
    /// the last body after `timeout`.
    pub async fn wait_for_json(
        &self,
        path: &str,
        done: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> serde_json::Value {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let body: serde_json::Value = client
                .get(format!("{}{path}", self.http))
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
                .json()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"));
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} did not get there within {timeout:?}: {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process; panics with its logs if it has exited already.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) {
        if let Ok(Some(exit)) = self.child.try_wait() {
            panic!(
                "cannot send {signal}: the service exited ({exit}):\n{}",
                self.logs()
            );
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("send signal");
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with a deadline, for programs expected to exit by themselves. Output is
/// read while the program runs, so a chatty program cannot fill its pipes and stall.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
