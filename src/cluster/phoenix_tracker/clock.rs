//! Causal contexts compared as `Phoenix.Tracker.Clock` compares them (phoenix_pubsub 2.1.3),
//! and the clockset a replica keeps between two gap checks: the contexts heard that no other
//! heard context covers. A replica left in it after the node adds its own context knows
//! something the node does not, and is asked for a transfer.

use super::wire::{Clocks, Context, Replica};

/// Whether `a` covers `b`: never when `a` names fewer replicas (Phoenix's rule: a context that
/// knows more replicas is never dominated by a smaller one), else `a ≥ b` on each of `b`'s.
pub fn dominates(a: &Context, b: &Context) -> bool {
    a.len() >= b.len() && b.iter().all(|(r, &n)| a.get(r).copied().unwrap_or(0) >= n)
}

/// The pointwise maximum of two contexts.
pub fn upper_bound(a: &Context, b: &Context) -> Context {
    let mut out = a.clone();
    for (r, &n) in b {
        let e = out.entry(r.clone()).or_insert(n);
        *e = (*e).max(n);
    }
    out
}

/// The contexts heard since the last gap check that no other covers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClockSet(Vec<Clocks>);

impl ClockSet {
    /// Adds a replica's context, keeping only the ones not covered by another (an empty
    /// context tells nothing and is ignored).
    pub fn append(&mut self, (from, ctx): Clocks) {
        if ctx.is_empty() {
            return;
        }
        let all = self
            .0
            .iter()
            .fold(Context::new(), |acc, (_, c)| upper_bound(&acc, c));
        if dominates(&ctx, &all) {
            self.0 = vec![(from, ctx)];
        } else if dominates(&all, &ctx) {
            // Nothing new.
        } else {
            let mut insert = false;
            self.0.retain(|(_, c)| {
                if dominates(&ctx, c) {
                    insert = true;
                    false
                } else {
                    insert |= !dominates(c, &ctx);
                    true
                }
            });
            if insert {
                self.0.push((from, ctx));
            }
        }
    }

    /// The replicas whose contexts are left.
    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        self.0.iter().map(|(r, _)| r)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> Replica {
        Replica::new(name, 1)
    }

    fn ctx(pairs: &[(&str, u64)]) -> Context {
        pairs.iter().map(|&(n, c)| (r(n), c)).collect()
    }

    #[test]
    fn a_context_naming_more_replicas_is_never_dominated() {
        assert!(dominates(&ctx(&[("a", 2), ("b", 1)]), &ctx(&[("a", 2)])));
        assert!(!dominates(&ctx(&[("a", 9)]), &ctx(&[("a", 1), ("b", 0)])));
        assert!(!dominates(&ctx(&[("a", 1), ("b", 0)]), &ctx(&[("a", 2)])));
        assert!(dominates(&ctx(&[]), &ctx(&[])));
    }

    #[test]
    fn the_set_keeps_the_contexts_nobody_covers() {
        let mut set = ClockSet::default();
        set.append((r("a"), ctx(&[("a", 1), ("b", 0)])));
        set.append((r("x"), ctx(&[])));
        // Equal covers, and comes first in Phoenix's test: the newer one replaces it.
        set.append((r("b"), ctx(&[("a", 1), ("b", 0)])));
        assert_eq!(set.replicas().collect::<Vec<_>>(), [&r("b")]);
        // Covered by what is there: nothing changes.
        set.append((r("a"), ctx(&[("a", 1)])));
        assert_eq!(set.replicas().collect::<Vec<_>>(), [&r("b")]);
        // Covers all: replaces all.
        set.append((r("b"), ctx(&[("a", 1), ("b", 3)])));
        assert_eq!(set.replicas().collect::<Vec<_>>(), [&r("b")]);
        // Concurrent: both kept.
        set.append((r("c"), ctx(&[("a", 2), ("b", 0)])));
        assert_eq!(set.replicas().collect::<Vec<_>>(), [&r("b"), &r("c")]);
        // Covers c only, but not b: c goes, d comes in.
        set.append((r("d"), ctx(&[("a", 3), ("b", 2)])));
        assert_eq!(set.replicas().collect::<Vec<_>>(), [&r("b"), &r("d")]);
        set.clear();
        assert_eq!(set.replicas().count(), 0);
    }
}
