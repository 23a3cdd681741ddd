//! The real `fulcrum` binary under test: started from a TOML string, its
//! log captured and read for listener addresses and readiness.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long `start` waits for the binary to log `ready`.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long to keep collecting output after the process exited.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// How often a blocking wait re-checks the child when no output arrives.
const CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// A running `fulcrum` process. Dropping it kills the process.
pub struct Fulcrum {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: Arc<Log>,
}

impl Fulcrum {
    /// Writes `toml` to a fresh temp dir, runs `fulcrum run -c` on it and
    /// waits until the binary reports every listener bound. Panics, showing
    /// the captured log, if it exits first or takes over 20 s.
    pub fn start(toml: &str) -> Fulcrum {
        let mut fulcrum = Fulcrum::spawn(toml);
        fulcrum.wait_ready(READY_DEADLINE);
        fulcrum
    }

    /// Like [`Fulcrum::start`] without waiting: for configs that should make
    /// the binary fail (follow with [`Fulcrum::wait_exit`]).
    pub fn spawn(toml: &str) -> Fulcrum {
        let dir = tempfile::tempdir().expect("create a temp dir for the config");
        let config = dir.path().join("fulcrum.toml");
        std::fs::write(&config, toml).expect("write the config");
        let arg = config.to_str().expect("temp paths are UTF-8").to_owned();
        Fulcrum::launch(dir, config, &["run", "-c", &arg])
    }

    /// Runs the binary with `args` in a fresh temp dir (its working
    /// directory, see [`Fulcrum::dir`]); no config file is written.
    pub fn spawn_args(args: &[&str]) -> Fulcrum {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let config = dir.path().join("fulcrum.toml");
        Fulcrum::launch(dir, config, args)
    }

    fn launch(dir: tempfile::TempDir, config: PathBuf, args: &[&str]) -> Fulcrum {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // Tests that watch RSS for leaks should see memory in use, not
            // mimalloc committing arena space ahead in 2 MiB steps.
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the fulcrum binary");
        let log = Arc::new(Log::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        log.collect(stdout);
        log.collect(stderr);
        Fulcrum {
            child,
            dir,
            config,
            log,
        }
    }

    /// Waits until the binary logged `ready`; panics with the log if it
    /// exits first or `deadline` passes.
    pub fn wait_ready(&mut self, deadline: Duration) {
        let started = Instant::now();
        let mut state = self.log.lock();
        loop {
            if state.ready {
                return;
            }
            drop(state);
            if let Ok(Some(status)) = self.child.try_wait() {
                self.log.drain(DRAIN_DEADLINE);
                panic!("fulcrum exited ({status}) before it was ready; log:\n{}", self.logs());
            }
            if started.elapsed() >= deadline {
                panic!("fulcrum not ready after {deadline:?}; log:\n{}", self.logs());
            }
            state = self.log.wait(CHECK_INTERVAL);
        }
    }

    /// The address listener `name` is bound to, as the binary reported it.
    pub fn addr(&self, name: &str) -> SocketAddr {
        let found = self.log.lock().listeners.get(name).copied();
        found.unwrap_or_else(|| panic!("no listener {name:?} was reported; log:\n{}", self.logs()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `sig` (`"TERM"`, `"HUP"`, `"KILL"`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args(["-s", sig, &pid]).status().expect("run kill");
        assert!(status.success(), "kill -s {sig} {pid} failed: {status}");
    }

    /// Waits for the process to exit and for its output to be collected;
    /// panics with the log if `deadline` passes first.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.log.drain(DRAIN_DEADLINE);
                    return status;
                }
                Ok(None) => {}
                Err(e) => panic!("cannot wait for fulcrum: {e}"),
            }
            if started.elapsed() >= deadline {
                panic!("fulcrum still running after {deadline:?}; log:\n{}", self.logs());
            }
            drop(self.log.wait(CHECK_INTERVAL));
        }
    }

    /// Resident memory now, in kB (`VmRSS`).
    pub fn rss_kb(&self) -> u64 {
        self.proc_status_kb("VmRSS")
    }

    /// The most resident memory the process has used so far, in kB (`VmHWM`).
    pub fn peak_rss_kb(&self) -> u64 {
        self.proc_status_kb("VmHWM")
    }

    fn proc_status_kb(&self, key: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}; log:\n{}", self.logs()));
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {path}"))
    }

    /// Everything the process wrote so far, stdout and stderr, one line each,
    /// colour codes removed.
    pub fn logs(&self) -> String {
        self.log.lock().lines.join("\n")
    }

    /// Waits until the log contains `needle`; panics with the log otherwise.
    pub async fn wait_for_log(&self, needle: &str, deadline: Duration) {
        let started = Instant::now();
        while !self.logs().contains(needle) {
            if started.elapsed() >= deadline {
                panic!("no {needle:?} in the log after {deadline:?}; log:\n{}", self.logs());
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    }

    /// The temp dir holding the config; the process's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file in one rename, so a reload never reads a
    /// half-written file.
    pub fn write_config(&self, toml: &str) {
        let staged = self.dir.path().join("fulcrum.toml.new");
        std::fs::write(&staged, toml).expect("write the new config");
        std::fs::rename(&staged, &self.config).expect("swap in the new config");
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The captured output and what was learnt from it, filled by one reader
/// thread per pipe.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    listeners: HashMap<String, SocketAddr>,
    ready: bool,
    open_pipes: usize,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `timeout` for new output.
    fn wait(&self, timeout: Duration) -> MutexGuard<'_, LogState> {
        let guard = self.lock();
        self.changed
            .wait_timeout(guard, timeout)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// Waits until every pipe reached its end, or `deadline`: a child of
    /// the process may keep a pipe open.
    fn drain(&self, deadline: Duration) {
        let started = Instant::now();
        let mut state = self.lock();
        while state.open_pipes > 0 && started.elapsed() < deadline {
            drop(state);
            state = self.wait(CHECK_INTERVAL);
        }
    }

    fn collect(self: &Arc<Self>, pipe: impl Read + Send + 'static) {
        self.lock().open_pipes += 1;
        let log = Arc::clone(self);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
                raw.clear();
                log.record(line);
            }
            log.lock().open_pipes -= 1;
            log.changed.notify_all();
        });
    }

    fn record(&self, line: String) {
        let mut state = self.lock();
        if let Some((name, addr)) = parse_listening_line(&line) {
            state.listeners.insert(name, addr);
        }
        if words(&line).any(|w| w == "ready") {
            state.ready = true;
        }
        state.lines.push(line);
        drop(state);
        self.changed.notify_all();
    }
}

/// The words of a log line, trailing punctuation dropped; `key=value`
/// fields stay whole, so `ready=false` is not the word `ready`.
fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split_whitespace()
        .map(|w| w.trim_end_matches([':', ',', '.', ';']))
}

/// `(listener, addr)` from a line like
/// `... INFO fulcrum::server: listening listener=web addr=127.0.0.1:41234`.
pub fn parse_listening_line(line: &str) -> Option<(String, SocketAddr)> {
    if !words(line).any(|w| w == "listening") {
        return None;
    }
    let name = log_field(line, "listener")?;
    let addr = log_field(line, "addr")?.parse().ok()?;
    Some((name.to_owned(), addr))
}

/// The value of field `key` in a tracing fmt line (`key=value` or
/// `key="value"`), if present.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|token| {
        let value = token.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim_matches('"'))
    })
}

/// `line` without ANSI escape sequences (colours, styles).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI sequences (`ESC [ ... final`) end at a byte in '@'..='~';
        // other escapes are two characters long.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}
