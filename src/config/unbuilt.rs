//! Keys that parse but whose behaviour is not built yet. A config using one is
//! rejected rather than silently half-applied. This is the one list: when a
//! feature lands, delete its lines here.

use std::ops::Range;

use super::Sink;
use super::sections::Specs;

/// Records `<key path>: not supported yet (<what>)` for every unbuilt key in use.
pub(super) fn reject_unbuilt(specs: &Specs, sink: &mut Sink) {
    let mut reject = |span: Option<Range<usize>>, what: &str| {
        sink.error(span, format!("not supported yet ({what})"));
    };
    for l in specs.listeners.iter().map(|s| &s.spec) {
        if let Some(v) = &l.tls {
            reject(Some(v.span()), "TLS");
        }
    }
    for r in specs.routes.iter().map(|s| &s.spec) {
        if let Some(v) = &r.compress {
            reject(Some(v.span()), "compression");
        }
    }
}
