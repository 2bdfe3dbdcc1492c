//! Which probed addresses a report carries. An address reported before stays in the reports
//! while the Endpoints still list it, until its probe has failed [`MISSES`] reports in a row:
//! bcs-api gives the cluster new credentials (a new version) whenever the reported addresses
//! change, and one lost handshake to a master that answers again a period later would
//! otherwise change them twice. An address the Endpoints drop is dropped at once (the
//! apiserver took itself out). The proxies set aside an address that fails meanwhile.
use std::collections::HashMap;

/// Reports in a row an address may fail its probe and still be reported (it is left out of
/// the one that would be the third).
pub const MISSES: u32 = 3;

#[derive(Debug, Default)]
pub struct Sticky {
    /// The addresses last reported, each with how many reports in a row its probe failed.
    reported: HashMap<String, u32>,
}

impl Sticky {
    /// The addresses to report now, sorted: the ones that `answered`, and the ones reported
    /// last time that are still `listed` and have not failed [`MISSES`] probes in a row.
    pub fn choose(&mut self, listed: &[String], answered: &[String]) -> Vec<String> {
        let mut next: HashMap<String, u32> = answered.iter().map(|a| (a.clone(), 0)).collect();
        for (address, misses) in &self.reported {
            if !next.contains_key(address) && listed.contains(address) && misses + 1 < MISSES {
                tracing::warn!(address = %address, misses = misses + 1, "apiserver address did not answer its probe; still reported");
                next.insert(address.clone(), misses + 1);
            }
        }
        self.reported = next;
        let mut out: Vec<String> = self.reported.keys().cloned().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_address_that_stops_answering_is_kept_for_two_reports_then_dropped() {
        let mut sticky = Sticky::default();
        let listed = v(&["a", "b"]);
        assert_eq!(sticky.choose(&listed, &v(&["b", "a"])), v(&["a", "b"]));
        assert_eq!(sticky.choose(&listed, &v(&["a"])), v(&["a", "b"]), "first miss: kept");
        assert_eq!(sticky.choose(&listed, &v(&["a"])), v(&["a", "b"]), "second miss: kept");
        assert_eq!(sticky.choose(&listed, &v(&["a"])), v(&["a"]), "third miss: dropped");
        assert_eq!(sticky.choose(&listed, &v(&["a"])), v(&["a"]), "not reported again until it answers");
        assert_eq!(sticky.choose(&listed, &v(&["a", "b"])), v(&["a", "b"]));
    }

    #[test]
    fn an_answer_between_misses_starts_the_count_again() {
        let mut sticky = Sticky::default();
        let listed = v(&["a", "b"]);
        sticky.choose(&listed, &v(&["a", "b"]));
        sticky.choose(&listed, &v(&["a"]));
        sticky.choose(&listed, &v(&["a"]));
        assert_eq!(sticky.choose(&listed, &v(&["a", "b"])), v(&["a", "b"]));
        assert_eq!(sticky.choose(&listed, &v(&["a"])), v(&["a", "b"]), "a first miss again");
    }

    #[test]
    fn an_address_the_endpoints_drop_or_never_answered_is_not_kept() {
        let mut sticky = Sticky::default();
        assert_eq!(sticky.choose(&v(&["a", "b"]), &v(&["a", "b"])), v(&["a", "b"]));
        assert_eq!(sticky.choose(&v(&["a"]), &v(&["a"])), v(&["a"]), "no longer listed: dropped at once");
        assert_eq!(sticky.choose(&v(&["a", "c"]), &v(&["a"])), v(&["a"]), "never answered: never reported");
    }
}
