//! The admin API's mutating calls (SPEC §4), each behind the bearer token:
//! add, remove, drain, enable and re-weight servers, and reload. Changes to
//! servers apply to the running config (next request on) and last until the
//! next reload.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use crate::config::{self, Config};
use crate::server::{Control, ReloadError};

type Answer = Response<Full<Bytes>>;

/// Answers a call under `/api/` other than the read-only ones.
pub(super) fn mutate(parts: &Parts, body: &Bytes, control: &Control) -> Answer {
    let segments: Vec<String> = parts
        .uri
        .path()
        .trim_start_matches("/api/")
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = &parts.method;
    let call = match segments.as_slice() {
        ["reload"] => Call::Reload,
        ["upstreams", name, "servers"] => Call::Add { upstream: name },
        ["upstreams", name, "servers", address] => Call::Server {
            upstream: name,
            address,
            action: None,
        },
        ["upstreams", name, "servers", address, action @ ("drain" | "enable")] => Call::Server {
            upstream: name,
            address,
            action: Some(action),
        },
        _ => return error(StatusCode::NOT_FOUND, "no such call"),
    };
    let allowed = match call {
        Call::Reload | Call::Add { .. } | Call::Server { action: Some(_), .. } => *method == Method::POST,
        Call::Server { action: None, .. } => *method == Method::DELETE || *method == Method::PATCH,
    };
    if !allowed {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed for this call");
    }
    let token = control.shared().snapshot.load().config.global.admin_token.clone();
    if let Err(denied) = authorize(parts, token.as_deref()) {
        return denied.into();
    }
    match call {
        Call::Reload => reload(control),
        Call::Add { upstream } => add_server(control, upstream, body),
        Call::Server {
            upstream,
            address,
            action: Some(action),
        } => drain(control, upstream, address, action == "drain"),
        Call::Server { upstream, address, .. } if *method == Method::DELETE => {
            remove_server(control, upstream, address)
        }
        Call::Server { upstream, address, .. } => patch_server(control, upstream, address, body),
    }
}

enum Call<'a> {
    Reload,
    Add {
        upstream: &'a str,
    },
    Server {
        upstream: &'a str,
        address: &'a str,
        action: Option<&'a str>,
    },
}

/// 401 without a bearer token, 403 with a wrong one or when no token is
/// configured at all. The comparison takes the same time wherever the
/// tokens differ.
fn authorize(parts: &Parts, token: Option<&str>) -> Result<(), Failure> {
    let Some(token) = token else {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "mutating calls are disabled: no global.admin_token is configured".into(),
        ));
    };
    let given = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match given {
        None => Err(Failure(StatusCode::UNAUTHORIZED, "missing bearer token".into())),
        Some(given) if bool::from(given.ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err(Failure(StatusCode::FORBIDDEN, "wrong bearer token".into())),
    }
}

fn reload(control: &Control) -> Answer {
    match control.reload() {
        Ok(summary) => reply(
            StatusCode::OK,
            serde_json::json!({ "status": "reloaded", "summary": summary }),
        ),
        Err(ReloadError::Invalid(errors)) => reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "error": "invalid config; the running config is unchanged",
                "errors": errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        Err(other) => error(StatusCode::BAD_REQUEST, &other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServer {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    max_requests: Option<u32>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerPatch {
    weight: u32,
}

fn add_server(control: &Control, upstream: &str, body: &Bytes) -> Answer {
    let new: NewServer = match parse(body) {
        Ok(n) => n,
        Err(failure) => return failure.into(),
    };
    let address = match config::parse_server_address(&new.address) {
        Ok(a) => a,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if new.weight == 0 {
        return error(StatusCode::BAD_REQUEST, "weight must be at least 1");
    }
    if new.max_requests == Some(0) {
        return error(StatusCode::BAD_REQUEST, "max_requests must be at least 1");
    }
    let result: Result<(), Failure> = control.edit(|config| {
        let u = find_upstream(config, upstream)?;
        if u.servers.iter().any(|s| s.address == address) {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!("upstream `{upstream}` already has server {address}"),
            ));
        }
        u.servers.push(config::Server {
            address: address.clone(),
            weight: new.weight,
            backup: new.backup,
            max_requests: new.max_requests,
        });
        Ok(())
    });
    if let Err(failure) = result {
        return failure.into();
    }
    tracing::info!(upstream, server = %address, weight = new.weight, "server added through the admin API");
    server_answer(control, StatusCode::CREATED, upstream, &address)
}

fn remove_server(control: &Control, upstream: &str, address: &str) -> Answer {
    let result: Result<(), Failure> = control.edit(|config| {
        let u = find_upstream(config, upstream)?;
        let index = find_server(u, address)?;
        if u.servers.len() == 1 {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!("{address} is the last server of upstream `{upstream}`; drain it instead"),
            ));
        }
        u.servers.remove(index);
        Ok(())
    });
    if let Err(failure) = result {
        return failure.into();
    }
    tracing::info!(upstream, server = %address, "server removed through the admin API; its requests in flight finish");
    reply(
        StatusCode::OK,
        serde_json::json!({ "removed": address, "upstream": upstream }),
    )
}

fn patch_server(control: &Control, upstream: &str, address: &str, body: &Bytes) -> Answer {
    let patch: ServerPatch = match parse(body) {
        Ok(p) => p,
        Err(failure) => return failure.into(),
    };
    if patch.weight == 0 {
        return error(StatusCode::BAD_REQUEST, "weight must be at least 1");
    }
    let result: Result<(), Failure> = control.edit(|config| {
        let u = find_upstream(config, upstream)?;
        let index = find_server(u, address)?;
        u.servers[index].weight = patch.weight;
        Ok(())
    });
    if let Err(failure) = result {
        return failure.into();
    }
    tracing::info!(upstream, server = %address, weight = patch.weight, "weight changed through the admin API");
    server_answer(control, StatusCode::OK, upstream, address)
}

fn drain(control: &Control, upstream: &str, address: &str, drained: bool) -> Answer {
    let snapshot = control.shared().snapshot.load();
    let Some(pool) = snapshot.upstreams.iter().find(|u| u.name == upstream) else {
        return error(StatusCode::NOT_FOUND, &format!("no upstream `{upstream}`"));
    };
    let Some(server) = pool.server(address) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("upstream `{upstream}` has no server {address}"),
        );
    };
    server.set_drained(drained);
    let verb = if drained { "drained" } else { "enabled" };
    tracing::info!(upstream, server = %address, "server {verb} through the admin API");
    server_answer(control, StatusCode::OK, upstream, address)
}

fn find_upstream<'c>(config: &'c mut Config, name: &str) -> Result<&'c mut config::Upstream, Failure> {
    config
        .upstreams
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no upstream `{name}`")))
}

fn find_server(upstream: &config::Upstream, address: &str) -> Result<usize, Failure> {
    upstream
        .servers
        .iter()
        .position(|s| s.address == address)
        .ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                format!("upstream `{}` has no server {address}", upstream.name),
            )
        })
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// A call that failed: its status and what to tell the caller.
struct Failure(StatusCode, String);

impl From<Failure> for Answer {
    fn from(Failure(status, message): Failure) -> Answer {
        let mut answer = error(status, &message);
        if status == StatusCode::UNAUTHORIZED {
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"fulcrum admin\""),
            );
        }
        answer
    }
}

/// The server as `GET /api/upstreams` shows it.
fn server_answer(control: &Control, status: StatusCode, upstream: &str, address: &str) -> Answer {
    let snapshot = control.shared().snapshot.load();
    let server = snapshot
        .upstreams
        .iter()
        .find(|u| u.name == upstream)
        .and_then(|u| u.server(address));
    match server {
        Some(s) => reply(status, super::server_json(s, crate::upstream::health::now_ms())),
        None => error(StatusCode::NOT_FOUND, "server not found"),
    }
}

pub(super) fn error(status: StatusCode, message: &str) -> Answer {
    reply(status, serde_json::json!({ "error": message }))
}

fn reply(status: StatusCode, value: serde_json::Value) -> Answer {
    let mut answer = super::json(value);
    *answer.status_mut() = status;
    answer
}
