//! [`SeqSet`]: a set of per-device counters stored as ranges.
//!
//! Acknowledged and received counters are almost always contiguous, so a fleet of 10,000
//! devices that each sent a million readings needs a few ranges per device, not ten billion
//! set entries.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of `u64` counters, stored as disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// Range start → range end (inclusive). Invariant: ranges neither overlap nor touch.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// Number of counters in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set holds no counter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `v` is in the set.
    pub fn contains(&self, v: u64) -> bool {
        self.ranges
            .range(..=v)
            .next_back()
            .is_some_and(|(_, &end)| end >= v)
    }

    /// Whether every counter of `start..=end` is in the set (`false` for an empty range).
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        start <= end
            && self
                .ranges
                .range(..=start)
                .next_back()
                .is_some_and(|(_, &e)| e >= end)
    }

    /// The counters of `start..=end` not in the set, as inclusive ranges in increasing order.
    pub fn gaps_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start > end {
            return out;
        }
        // The first counter of `start..=end` not yet accounted for.
        let mut next = start;
        let from = self
            .ranges
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        for (&s, &e) in self.ranges.range(from..=end) {
            if e < next {
                continue;
            }
            if s > next {
                out.push((next, s - 1));
            }
            match e.checked_add(1) {
                Some(n) if n <= end => next = n,
                _ => return out,
            }
        }
        out.push((next, end));
        out
    }

    /// Adds `v`; returns `false` if it was already present.
    pub fn insert(&mut self, v: u64) -> bool {
        if self.contains(v) {
            return false;
        }
        let mut start = v;
        let mut end = v;
        if let Some((&s, &e)) = self.ranges.range(..v).next_back() {
            if e.checked_add(1) == Some(v) {
                start = s;
            }
        }
        if let Some(next) = v.checked_add(1) {
            if let Some(next_end) = self.ranges.remove(&next) {
                end = next_end;
            }
        }
        self.ranges.insert(start, end);
        self.len += 1;
        true
    }

    /// Adds every counter of `start..=end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        // Ranges in practice are few; inserting one by one would be quadratic only for
        // pathological interleavings, so merge properly instead.
        if start > end {
            return;
        }
        let mut new_start = start;
        let mut new_end = end;
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            self.len -= e - s + 1;
            new_start = new_start.min(s);
            new_end = new_end.max(e);
        }
        self.ranges.insert(new_start, new_end);
        self.len += new_end - new_start + 1;
    }

    /// Removes `v`; returns `false` if it was not present.
    pub fn remove(&mut self, v: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=v).next_back() else {
            return false;
        };
        if e < v {
            return false;
        }
        self.ranges.remove(&s);
        if s < v {
            self.ranges.insert(s, v - 1);
        }
        if v < e {
            self.ranges.insert(v + 1, e);
        }
        self.len -= 1;
        true
    }

    /// Smallest counter in the set.
    pub fn first(&self) -> Option<u64> {
        self.ranges.first_key_value().map(|(&s, _)| s)
    }

    /// Largest counter in the set.
    pub fn last(&self) -> Option<u64> {
        self.ranges.last_key_value().map(|(_, &e)| e)
    }

    /// The inclusive ranges, in increasing order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Every counter, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges().flat_map(|(s, e)| s..=e)
    }

    /// The counters of `self` that are not in `other`, as inclusive ranges.
    pub fn difference_ranges(&self, other: &SeqSet) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (s, e) in self.ranges() {
            // `None` once `other` covers everything up to u64::MAX.
            let mut cur = Some(s);
            // The range of `other` starting at or before `s` may overlap too.
            let first = other
                .ranges
                .range(..=s)
                .next_back()
                .map(|(&os, _)| os)
                .unwrap_or(s);
            for (&os, &oe) in other.ranges.range(first..=e) {
                let Some(c) = cur else { break };
                if c > e {
                    break;
                }
                if oe < c {
                    continue;
                }
                if os > c {
                    out.push((c, os - 1));
                }
                cur = oe.checked_add(1);
            }
            if let Some(c) = cur {
                if c <= e {
                    out.push((c, e));
                }
            }
        }
        out
    }

    /// Number of counters of `self` that are not in `other`.
    pub fn difference_len(&self, other: &SeqSet) -> u64 {
        self.difference_ranges(other)
            .iter()
            .map(|(s, e)| e - s + 1)
            .sum()
    }
}

impl FromIterator<u64> for SeqSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> SeqSet {
        let mut s = SeqSet::new();
        for v in iter {
            s.insert(v);
        }
        s
    }
}

/// Formats ranges compactly, e.g. `{1..=5, 7, 9..=12}`.
pub fn fmt_ranges(ranges: &[(u64, u64)], max: usize) -> String {
    let mut out = String::from("{");
    for (i, (s, e)) in ranges.iter().enumerate() {
        if i == max {
            out.push_str(&format!(", … {} more ranges", ranges.len() - max));
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        if s == e {
            out.push_str(&s.to_string());
        } else {
            out.push_str(&format!("{s}..={e}"));
        }
    }
    out.push('}');
    out
}

impl fmt::Debug for SeqSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<_> = self.ranges().collect();
        f.write_str(&fmt_ranges(&ranges, 20))
    }
}

/// Serialized as a list of `[start, end]` pairs.
impl Serialize for SeqSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ranges().map(|(s, e)| [s, e]))
    }
}

impl<'de> Deserialize<'de> for SeqSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SeqSet, D::Error> {
        let pairs: Vec<[u64; 2]> = Vec::deserialize(deserializer)?;
        let mut set = SeqSet::new();
        for [s, e] in pairs {
            set.insert_range(s, e);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn inserts_merge_into_ranges() {
        let mut s = SeqSet::new();
        for v in [5, 1, 3, 2, 4, 10, 9, 12] {
            assert!(s.insert(v));
        }
        assert!(!s.insert(3));
        assert_eq!(
            s.ranges().collect::<Vec<_>>(),
            vec![(1, 5), (9, 10), (12, 12)]
        );
        assert_eq!(s.len(), 8);
        assert!(s.contains(10) && !s.contains(11) && !s.contains(0));
        assert!(s.remove(3));
        assert_eq!(
            s.ranges().collect::<Vec<_>>(),
            vec![(1, 2), (4, 5), (9, 10), (12, 12)]
        );
        assert_eq!(s.len(), 7);
    }

    #[test]
    fn behaves_like_a_btreeset() {
        // A small deterministic pseudo-random walk.
        let mut x: u64 = 12345;
        let mut a = SeqSet::new();
        let mut b = BTreeSet::new();
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) % 300;
            match (x >> 20) % 4 {
                0 => assert_eq!(a.remove(v), b.remove(&v)),
                1 => {
                    let e = v + (x >> 40) % 7;
                    a.insert_range(v, e);
                    b.extend(v..=e);
                }
                _ => assert_eq!(a.insert(v), b.insert(v)),
            }
            assert_eq!(a.len(), b.len() as u64);
        }
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            b.iter().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn difference_lists_what_is_missing() {
        let acked: SeqSet = (1..=20).collect();
        let seen: SeqSet = (1..=20).filter(|v| ![3, 4, 10, 20].contains(v)).collect();
        assert_eq!(
            acked.difference_ranges(&seen),
            vec![(3, 4), (10, 10), (20, 20)]
        );
        assert_eq!(acked.difference_len(&seen), 4);
        assert!(seen.difference_ranges(&acked).is_empty());
        assert_eq!(acked.difference_len(&SeqSet::new()), 20);
    }

    #[test]
    fn contains_range_needs_every_counter_in_one_range() {
        let s: SeqSet = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert!(s.contains_range(1, 3) && s.contains_range(2, 2) && s.contains_range(9, 10));
        assert!(!s.contains_range(3, 7) && !s.contains_range(8, 9) && !s.contains_range(10, 11));
        assert!(!s.contains_range(3, 2), "an empty range is not held");
    }

    #[test]
    fn gaps_in_lists_what_a_range_lacks() {
        let s: SeqSet = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(s.gaps_in(1, 10), vec![(4, 6), (8, 8)]);
        assert_eq!(s.gaps_in(2, 12), vec![(4, 6), (8, 8), (11, 12)]);
        assert_eq!(s.gaps_in(0, 1), vec![(0, 0)]);
        assert_eq!(s.gaps_in(5, 5), vec![(5, 5)]);
        assert!(s.gaps_in(9, 10).is_empty() && s.gaps_in(2, 1).is_empty());
        assert_eq!(SeqSet::new().gaps_in(3, 4), vec![(3, 4)]);
    }

    #[test]
    fn round_trips_through_json() {
        let s: SeqSet = [1, 2, 3, 7, 9, 10].into_iter().collect();
        let j = serde_json::to_string(&s).expect("serialize");
        assert_eq!(j, "[[1,3],[7,7],[9,10]]");
        let back: SeqSet = serde_json::from_str(&j).expect("deserialize");
        assert_eq!(back, s);
    }
}
