//! The config most tests run the balancer with, built rather than written
//! out again: one listener `web` on 127.0.0.1:0, one route to upstream
//! `app`, and `app`'s servers. A test adds only what it is about.

use std::fmt::{Display, Write as _};

/// A config under construction; [`Config::toml`] renders it as
///
/// ```toml
/// [global]            # only when some global line was given
/// ...
/// [[listeners]]
/// name = "web"
/// listen = "127.0.0.1:0"
/// ...
/// [[routes]]
/// upstream = "app"
/// ...
/// [upstreams.app]
/// ...
/// servers = [ { address = "..." }, ... ]
/// ...                 # whole sections: health checks, rate limits, more routes
/// ```
///
/// Each method appends lines to its section, so it may be called again.
#[derive(Debug, Clone, Default)]
pub struct Config {
    global: String,
    listener: String,
    route: String,
    upstream: String,
    servers: Vec<String>,
    sections: String,
}

impl Config {
    /// Listener `web` → one route → upstream `app`, no servers yet.
    pub fn new() -> Config {
        Config::default()
    }

    /// Listener `web` → one route → upstream `app` with `servers`.
    pub fn app<A: Display>(servers: &[A]) -> Config {
        servers
            .iter()
            .fold(Config::new(), |config, address| config.server(address, ""))
    }

    /// One more server of `app`, with its `options` (`weight = 2`,
    /// `backup = true`) or none.
    pub fn server(mut self, address: impl Display, options: &str) -> Config {
        let mut server = format!("{{ address = \"{address}\"");
        if !options.is_empty() {
            let _ = write!(server, ", {options}");
        }
        server.push_str(" }");
        self.servers.push(server);
        self
    }

    /// Lines of `[global]`, e.g. `workers = 1`.
    pub fn global(self, lines: &str) -> Config {
        self.add(|config| &mut config.global, lines)
    }

    /// Lines of listener `web`, e.g. `max_body_size = "2G"`; a
    /// `[listeners.tls]` table may follow them.
    pub fn listener(self, lines: &str) -> Config {
        self.add(|config| &mut config.listener, lines)
    }

    /// Lines of the route to `app`, e.g. `read_timeout = "30s"`.
    pub fn route(self, lines: &str) -> Config {
        self.add(|config| &mut config.route, lines)
    }

    /// Lines of `[upstreams.app]` before its servers, e.g. `max_fails = 0`.
    pub fn upstream(self, lines: &str) -> Config {
        self.add(|config| &mut config.upstream, lines)
    }

    /// Whole sections after the upstream, e.g. `[upstreams.app.health_check]`
    /// or `[rate_limits.x]` with their lines.
    pub fn sections(self, toml: &str) -> Config {
        self.add(|config| &mut config.sections, toml)
    }

    pub fn toml(&self) -> String {
        let mut toml = String::new();
        if !self.global.is_empty() {
            toml.push_str("[global]\n");
            toml.push_str(&self.global);
        }
        toml.push_str("[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n");
        toml.push_str(&self.listener);
        toml.push_str("[[routes]]\nupstream = \"app\"\n");
        toml.push_str(&self.route);
        toml.push_str("[upstreams.app]\n");
        toml.push_str(&self.upstream);
        let _ = writeln!(toml, "servers = [ {} ]", self.servers.join(", "));
        toml.push_str(&self.sections);
        toml
    }

    /// `lines` at the end of the section `section` picks, one a line, their
    /// indentation dropped (they come from indented raw strings).
    fn add(mut self, section: impl FnOnce(&mut Config) -> &mut String, lines: &str) -> Config {
        let section = section(&mut self);
        for line in lines.trim().lines() {
            section.push_str(line.trim());
            section.push('\n');
        }
        self
    }
}
