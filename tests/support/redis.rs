//! A real `redis-server` for tests: started on a free port of 127.0.0.1 with
//! nothing persisted, killed when dropped, and startable again on the same
//! port to play an outage and a recovery.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh redis-server gets to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(20);
const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// A running `redis-server`. Dropping it kills the process.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl RedisServer {
    /// Starts redis-server on a port the OS had free.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        RedisServer::start_on(port)
    }

    /// Starts redis-server on `port` and waits until it answers PING.
    pub fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().expect("create a temp dir for redis");
        let mut server = RedisServer { child: None, dir, port };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} redis-server failed");
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it: apt-get install redis-server \
                     (.ci/run does this)"
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers_ping() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited at start: {status}", self.port);
            }
            if started.elapsed() > READY_DEADLINE {
                panic!(
                    "redis-server on port {} not answering after {READY_DEADLINE:?}",
                    self.port
                );
            }
            std::thread::sleep(CHECK_INTERVAL); // the poll interval of a wait with a deadline
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would not die of SIGKILL any later, but be sure.
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}
