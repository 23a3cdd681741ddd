//! `split`: which of a route's upstreams takes a request. A client whose
//! affinity cookie names a server of one of them (that can take the request)
//! stays with that upstream, so a canary user stays on the canary; everyone
//! else is split by weight, request by request.

use http::Request;

use super::key;
use crate::config::SplitTarget;
use crate::server::Snapshot;

/// The index in `targets` of the upstream for this request.
pub(super) fn choose<B>(targets: &[SplitTarget], snapshot: &Snapshot, req: &Request<B>) -> usize {
    for (i, t) in targets.iter().enumerate() {
        let upstream = snapshot.upstream(t.upstream);
        let pinned = upstream
            .sticky
            .as_ref()
            .and_then(|sticky| key::cookie(req, &sticky.cookie))
            .is_some_and(|token| upstream.sticky_server(token).is_some());
        if pinned && t.weight > 0 {
            return i;
        }
    }
    weighted(targets, fastrand::u64(..))
}

/// The target that `roll` (uniform over u64) falls on, each getting a share
/// of the range proportional to its weight.
fn weighted(targets: &[SplitTarget], roll: u64) -> usize {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return 0;
    }
    let mut point = roll % total;
    for (i, t) in targets.iter().enumerate() {
        let w = u64::from(t.weight);
        if point < w {
            return i;
        }
        point -= w;
    }
    targets.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamId;

    fn targets(weights: &[u32]) -> Vec<SplitTarget> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| SplitTarget {
                upstream: UpstreamId(i),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn every_roll_lands_by_weight_and_zero_weights_get_nothing() {
        let t = targets(&[90, 0, 10]);
        let mut counts = [0; 3];
        for roll in 0..100u64 {
            counts[weighted(&t, roll)] += 1;
        }
        assert_eq!(counts, [90, 0, 10]);
    }

    proptest::proptest! {
        #[test]
        fn a_pick_is_never_a_zero_weight_target(weights in proptest::collection::vec(0u32..5, 1..6), roll: u64) {
            proptest::prop_assume!(weights.iter().any(|w| *w > 0));
            let t = targets(&weights);
            proptest::prop_assert!(t[weighted(&t, roll)].weight > 0);
        }
    }
}
