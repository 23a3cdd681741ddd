//! Keys that parse but whose behaviour is not built yet. A config using one is
//! rejected rather than silently half-applied; each line here goes away when
//! its feature lands.

use super::Sink;
use super::schema::{GlobalSpec, ListenerSpec, RouteSpec};

fn reject(sink: &mut Sink, span: Option<std::ops::Range<usize>>, what: &str) {
    sink.error(span, format!("{what} is not supported yet"));
}

pub(super) fn global(g: &GlobalSpec, sink: &mut Sink) {
    if let Some(v) = &g.admin_token {
        reject(sink, Some(v.span()), "`admin_token` (the admin API's mutating calls)");
    }
    if let Some(v) = &g.access_log
        && v.get_ref() != "off"
    {
        reject(sink, Some(v.span()), "the access log (only `access_log = \"off\"`)");
    }
    if let Some(v) = &g.access_log_format {
        reject(sink, Some(v.span()), "`access_log_format`");
    }
}

pub(super) fn listener(l: &ListenerSpec, span: Option<std::ops::Range<usize>>, sink: &mut Sink) {
    if l.tls.is_some() {
        reject(sink, span, "TLS (`tls`)");
    }
    if let Some(v) = &l.max_connections_per_ip
        && *v.get_ref() != 0
    {
        reject(sink, Some(v.span()), "`max_connections_per_ip`");
    }
    if let Some(v) = &l.proxy_protocol
        && *v.get_ref()
    {
        reject(sink, Some(v.span()), "the PROXY protocol (`proxy_protocol = true`)");
    }
}

pub(super) fn route(r: &RouteSpec, sink: &mut Sink) {
    if let Some(v) = &r.split {
        reject(sink, Some(v.span()), "`split`");
    }
    if let Some(v) = &r.rate_limit {
        reject(sink, Some(v.span()), "`rate_limit`");
    }
    if let Some(v) = &r.compress {
        reject(sink, Some(v.span()), "`compress`");
    }
}

pub(super) fn rate_limit(span: Option<std::ops::Range<usize>>, sink: &mut Sink) {
    reject(sink, span, "rate limits (`[rate_limits.*]`)");
}

pub(super) fn redis(span: Option<std::ops::Range<usize>>, sink: &mut Sink) {
    reject(sink, span, "`[redis]`");
}
