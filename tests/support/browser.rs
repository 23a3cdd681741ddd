//! A real headless Chromium driven over the DevTools protocol (one
//! WebSocket, flat sessions): navigate, evaluate JavaScript, click with real
//! mouse events, type, take screenshots. Every call has a deadline.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to start and open its DevTools endpoint (it
/// is slow on a loaded machine).
const LAUNCH_DEADLINE: Duration = Duration::from_secs(60);
/// How long one DevTools command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// How often `wait_for` re-evaluates its expression.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Where Debian's `chromium` package puts the browser (`.ci/run` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

/// One headless Chromium with one page. Dropping it kills the browser.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens a 1280×860 page.
    pub async fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: the dashboard tests need Debian's chromium (`apt-get install chromium`; .ci/run installs it)"
        );
        let profile = tempfile::tempdir().expect("create a Chromium profile dir");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));

        // Chromium announces its endpoint on stderr; keep reading after
        // that so that a full pipe never blocks it, and keep the text for
        // failure messages.
        let stderr = Arc::new(Mutex::new(String::new()));
        let (endpoint_tx, endpoint_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = endpoint_tx.send(url.trim().to_owned());
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let started = Instant::now();
        let endpoint = loop {
            match endpoint_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < LAUNCH_DEADLINE => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "chromium exited ({status}) before opening DevTools:\n{}",
                            stderr.lock().unwrap()
                        );
                    }
                }
                Err(_) => panic!(
                    "chromium opened no DevTools endpoint within {LAUNCH_DEADLINE:?}:\n{}",
                    stderr.lock().unwrap()
                ),
            }
        };
        let (socket, _) = tokio::time::timeout(COMMAND_DEADLINE, tokio_tungstenite::connect_async(endpoint.as_str()))
            .await
            .unwrap_or_else(|_| panic!("DevTools connection to {endpoint} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to DevTools at {endpoint}: {e}"));
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 0,
            stderr,
        };
        let target = browser
            .command("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = browser
            .command(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().expect("a session id").to_owned();
        browser
            .command(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    /// Sends one DevTools command (to the page once attached) and returns
    /// its result; panics on an error or when no answer comes in time.
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        match self.try_command(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    /// Like `command`, but a protocol error (such as evaluating while a page
    /// is being replaced) is returned rather than a panic.
    async fn try_command(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let exchange = async {
            self.socket
                .send(Message::text(message.to_string()))
                .await
                .unwrap_or_else(|e| panic!("{method}: cannot send: {e}"));
            loop {
                let frame = self
                    .socket
                    .next()
                    .await
                    .unwrap_or_else(|| panic!("{method}: DevTools closed the connection"))
                    .unwrap_or_else(|e| panic!("{method}: DevTools connection failed: {e}"));
                let Message::Text(text) = frame else { continue };
                let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
                // Everything else is an event or an older reply.
                if reply["id"] == json!(id) {
                    return reply;
                }
            }
        };
        let reply = tokio::time::timeout(COMMAND_DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within {COMMAND_DEADLINE:?}"));
        match reply.get("error") {
            Some(error) => Err(error.clone()),
            None => Ok(reply["result"].clone()),
        }
    }

    /// Opens `url` in the page and waits until it has loaded (Page.navigate
    /// answers once loading starts, while the old document is still there).
    pub async fn navigate(&mut self, url: &str) {
        let result = self.command("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = result.get("errorText") {
            panic!("cannot load {url}: {error}");
        }
        let url_json = serde_json::to_string(url).expect("a string serializes");
        let loaded = format!("location.href === {url_json} && document.readyState === 'complete'");
        let started = Instant::now();
        loop {
            let answer = self
                .try_command(
                    "Runtime.evaluate",
                    json!({ "expression": loaded, "returnByValue": true }),
                )
                .await;
            if matches!(&answer, Ok(result) if result["result"]["value"] == json!(true)) {
                return;
            }
            assert!(
                started.elapsed() < LAUNCH_DEADLINE,
                "{url} did not load within {LAUNCH_DEADLINE:?}; last answer {answer:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited);
    /// panics if it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Re-evaluates `expression` until it gives something other than
    /// `null`, `undefined` or `false`, and returns that; panics naming
    /// `what` (and the last value of `show`) after `deadline`.
    pub async fn wait_for(&mut self, what: &str, deadline: Duration, expression: &str, show: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression).await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            if started.elapsed() >= deadline {
                let seen = self.eval(show).await;
                panic!("timed out after {deadline:?} waiting for {what}; the page shows: {seen:#}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Clicks the middle of the element `selector` finds, with real mouse
    /// events (so a disabled or covered button does not react).
    pub async fn click(&mut self, selector: &str) {
        let selector_json = serde_json::to_string(selector).expect("a string serializes");
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return null; \
                 e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
                 return {{ x: r.x + r.width / 2, y: r.y + r.height / 2 }}; }})()"
            ))
            .await;
        assert!(!rect.is_null(), "nothing to click: no element matches {selector}");
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.command(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Focuses the element `selector` finds and types `text` into it.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let selector_json = serde_json::to_string(selector).expect("a string serializes");
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return false; e.focus(); return true; }})()"
            ))
            .await;
        assert_eq!(
            found,
            json!(true),
            "nothing to type into: no element matches {selector}"
        );
        self.command("Input.insertText", json!({ "text": text })).await;
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .command(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot data is base64");
        assert!(png.starts_with(b"\x89PNG"), "Chromium returned no PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// What Chromium has written to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
