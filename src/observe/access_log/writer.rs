//! The writer thread: takes batches off the queue, writes them through a
//! buffer, and flushes whenever the queue runs dry. A file is opened to
//! append (created if missing) and reopened on `SIGHUP`, so logrotate can
//! move it away and signal.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::{Batch, Inner};

/// Bytes gathered before a write(2), unless the queue runs dry first.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Where lines go.
#[derive(Debug)]
pub(super) enum Target {
    Stdout(io::Stdout),
    File { path: PathBuf, file: File },
}

impl Target {
    /// Opens `path` to append, creating it if missing.
    pub(super) fn open_file(path: &Path) -> io::Result<Target> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Target::File {
            path: path.to_path_buf(),
            file,
        })
    }
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Target::Stdout(out) => out.write(buf),
            Target::File { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Target::Stdout(out) => out.flush(),
            Target::File { file, .. } => file.flush(),
        }
    }
}

/// Starts the writer thread; it runs until `Inner::closing` is notified,
/// then writes what is queued and stops, dropping `done`.
pub(super) fn spawn(
    target: Target,
    rx: mpsc::Receiver<Batch>,
    inner: Arc<Inner>,
    done: std::sync::mpsc::Sender<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fulcrum-access-log".into())
        .spawn(move || {
            // Dropped when the thread ends, however it ends.
            let _done = done;
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "cannot start the access log writer; access log lines are dropped");
                    return;
                }
            };
            let mut writer = Writer {
                out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, target),
                inner,
                failing: false,
            };
            runtime.block_on(writer.run(rx));
        })
}

struct Writer {
    out: BufWriter<Target>,
    inner: Arc<Inner>,
    /// The last write failed: logged once, until a write succeeds again.
    failing: bool,
}

impl Writer {
    async fn run(&mut self, mut rx: mpsc::Receiver<Batch>) {
        let mut hangup = match self.out.get_ref() {
            Target::File { .. } => match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGHUP; the access log will not be reopened");
                    None
                }
            },
            Target::Stdout(_) => None,
        };
        let inner = self.inner.clone();
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    self.write(batch);
                    while let Ok(batch) = rx.try_recv() {
                        self.write(batch);
                    }
                    self.flush();
                }
                () = hangup_received(&mut hangup) => self.reopen(),
                () = inner.closing.notified() => break,
            }
        }
        rx.close();
        while let Ok(batch) = rx.try_recv() {
            self.write(batch);
        }
        self.flush();
    }

    fn write(&mut self, batch: Batch) {
        self.inner.queued_bytes.fetch_sub(batch.buf.len(), Ordering::Relaxed);
        let written = self.out.write_all(&batch.buf);
        self.settle(written, batch.lines);
    }

    fn flush(&mut self) {
        let flushed = self.out.flush();
        self.settle(flushed, 0);
    }

    /// Counts lines lost to a failed write and logs failure transitions.
    fn settle(&mut self, result: io::Result<()>, lines: u64) {
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("access log writes succeed again");
            }
            Ok(()) => {}
            Err(error) => {
                self.inner.dropped.fetch_add(lines, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::error!(%error, "cannot write the access log; lines are dropped until it works again");
                }
            }
        }
    }

    /// Opens the file anew at its path (after logrotate moved it); on
    /// failure keeps writing to the old one.
    fn reopen(&mut self) {
        self.flush();
        let Target::File { path, .. } = self.out.get_ref() else {
            return;
        };
        let path = path.clone();
        match Target::open_file(&path) {
            Ok(target) => {
                // Flushed above: nothing is lost with the old buffer.
                let _ = std::mem::replace(&mut self.out, BufWriter::with_capacity(WRITE_BUFFER_BYTES, target));
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot reopen the access log; still writing to the old file");
            }
        }
    }
}

async fn hangup_received(hangup: &mut Option<Signal>) {
    match hangup {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
