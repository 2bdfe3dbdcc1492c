//! Live mesos-drivers (reference §5.1): the children of `/bcs/services/endpoints/mesosdriver`
//! are cluster ids; each cluster's children are its drivers' nodes. Names of 10 characters or
//! fewer are skipped; the rest are ordered by their 10-digit sequence; each node's data is
//! ServerInfo JSON, and a node that does not parse into a usable driver is left out with a
//! warning. Every read sets a watch; when any fires, everything is read again (a few dozen
//! small reads) and the result handed to the publisher, which publishes only a change.
use std::collections::BTreeMap;
use std::time::Duration;

use bcs_shared::snapshot::{MesosDriver, MesosDrivers};

use super::client::{Error, Session, Watch};
use super::{retrying, Status, MESOS_DRIVERS};
use crate::snapshot::Publisher;

/// Lets a burst of changes (several drivers starting at once) settle into one read.
const SETTLE: Duration = Duration::from_millis(20);

/// Why a node that may not be read is left out; and how often everything is read again while
/// one is (no watch tells when its access list changes).
const DENIED: &str = "its access list does not let bcs-api read it";
const REREAD_DENIED: Duration = Duration::from_secs(30);

/// Returns only when the session ended.
pub async fn run(session: &Session, publisher: &Publisher, status: &Status) {
    let mut warned: BTreeMap<String, String> = BTreeMap::new();
    // The sets last published, for a cluster whose node stops being readable: from the
    // publisher, so that a new session (after an expiry) keeps them too.
    let mut last: BTreeMap<String, Vec<MesosDriver>> =
        publisher.mesos_sets().unwrap_or_default().into_iter().map(|set| (set.cluster_id, set.drivers)).collect();
    loop {
        let Ok(Read { sets, unreadable, denied, watches }) =
            retrying("reading the mesos-drivers", || read(session)).await
        else {
            return;
        };
        let mut now_warned = BTreeMap::new();
        let mut live = Vec::with_capacity(sets.len() + unreadable.len());
        let mut drivers = 0;
        for cluster_id in unreadable {
            let path = format!("{MESOS_DRIVERS}/{cluster_id}");
            if !warned.contains_key(&path) {
                tracing::warn!(node = %path, reason = DENIED, "cannot read a mesos cluster's drivers; keeping the last known");
            }
            now_warned.insert(path, DENIED.to_owned());
            if let Some(known) = last.remove(&cluster_id) {
                drivers += known.len();
                live.push(MesosDrivers { cluster_id, drivers: known });
            }
        }
        for (cluster_id, nodes) in sets {
            let mut set = MesosDrivers { cluster_id: cluster_id.clone(), drivers: Vec::new() };
            for (node, parsed) in nodes {
                match parsed {
                    Ok(driver) if !set.drivers.contains(&driver) => set.drivers.push(driver),
                    Ok(_) => {}
                    Err(why) => {
                        let path = format!("{MESOS_DRIVERS}/{cluster_id}/{node}");
                        if warned.get(&path) != Some(&why) {
                            tracing::warn!(node = %path, reason = %why, "leaving out a mesos-driver node");
                        }
                        now_warned.insert(path, why);
                    }
                }
            }
            drivers += set.drivers.len();
            live.push(set);
        }
        warned = now_warned;
        live.sort_by(|a, b| a.cluster_id.cmp(&b.cluster_id));
        last = live.iter().map(|set| (set.cluster_id.clone(), set.drivers.clone())).collect();
        status.update(|s| {
            s.mesos_clusters = live.len();
            s.mesos_drivers = drivers;
        });
        publisher.set_mesos(live);
        // Any watch: a cluster added or removed, a driver added or removed; or the session ended.
        let mut fired = tokio::task::JoinSet::new();
        for watch in watches {
            fired.spawn(watch.fired());
        }
        // Dropping the set drops the other watches (the client then forgets them).
        let changed = tokio::select! {
            fired = fired.join_next() => fired.and_then(Result::ok).unwrap_or(false),
            _ = tokio::time::sleep(REREAD_DENIED), if denied => true,
        };
        drop(fired);
        if !changed {
            return;
        }
        tokio::time::sleep(SETTLE).await;
    }
}

type Nodes = Vec<(String, Result<MesosDriver, String>)>;

/// What one full read found.
struct Read {
    /// Each cluster's driver nodes, parsed (or why not).
    sets: BTreeMap<String, Nodes>,
    /// Clusters whose node this session may not list.
    unreadable: Vec<String>,
    /// A node was not readable (a cluster's or a driver's): it sets no watch, so everything is
    /// read again now and then.
    denied: bool,
    /// One on every path read.
    watches: Vec<Watch>,
}

/// One full read, with a watch on every path read.
async fn read(session: &Session) -> Result<Read, Error> {
    let mut watches = Vec::new();
    let mut sets = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut denied = false;
    let clusters = match session.children(MESOS_DRIVERS).await {
        Ok((clusters, watch)) => {
            watches.push(watch);
            clusters
        }
        Err(Error::NoNode) => {
            // No driver has registered yet: wait for the path to appear.
            let (exists, watch) = session.exists(MESOS_DRIVERS).await?;
            watches.push(watch);
            if exists {
                return Err(Error::Transient(format!("{MESOS_DRIVERS} appeared while being read")));
            }
            return Ok(Read { sets, unreadable, denied: false, watches });
        }
        Err(e) => return Err(e),
    };
    for cluster in clusters {
        let path = format!("{MESOS_DRIVERS}/{cluster}");
        let mut children = match session.children(&path).await {
            Ok((children, watch)) => {
                watches.push(watch);
                children
            }
            // Removed since the list: the root's watch reports it.
            Err(Error::NoNode) => continue,
            // Another client's node: its last known drivers stay, the other clusters are read.
            Err(Error::Denied) => {
                unreadable.push(cluster);
                continue;
            }
            Err(e) => return Err(e),
        };
        children.retain(|c| c.len() > 10);
        children.sort_by(|a, b| sequence(a).cmp(sequence(b)).then_with(|| a.cmp(b)));
        let mut nodes = Vec::with_capacity(children.len());
        for child in children {
            match session.data(&format!("{path}/{child}")).await {
                Ok(data) => {
                    let parsed = super::server_info::parse_driver(&data);
                    nodes.push((child, parsed));
                }
                // The driver left between the list and the read; the cluster's watch reports it.
                Err(Error::NoNode) => continue,
                Err(Error::Denied) => {
                    denied = true;
                    nodes.push((child, Err(DENIED.to_owned())));
                }
                Err(e) => return Err(e),
            }
        }
        sets.insert(cluster, nodes);
    }
    denied |= !unreadable.is_empty();
    Ok(Read { sets, unreadable, denied, watches })
}

/// The trailing 10-digit sequence number of a sequential node's name, as bytes: a name is
/// whatever another ZooKeeper client wrote, and its last 10 bytes need not start on a
/// character boundary.
fn sequence(name: &str) -> &[u8] {
    &name.as_bytes()[name.len().saturating_sub(10)..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nodes_sort_by_their_sequence() {
        let mut names = vec!["_c_bb-10.0.0.20000000003", "_c_aa-10.0.0.10000000001", "_c_cc-10.0.0.30000000002"];
        names.sort_by(|a, b| super::sequence(a).cmp(super::sequence(b)));
        assert_eq!(names, vec!["_c_aa-10.0.0.10000000001", "_c_cc-10.0.0.30000000002", "_c_bb-10.0.0.20000000003"]);
    }

    #[test]
    fn a_name_whose_last_ten_bytes_split_a_character_sorts_without_panicking() {
        // 12 bytes: the last 10 start inside `é`.
        let mut names = ["_c_bb-10.0.0.20000000003", "xé012345678", "_c_aa-10.0.0.10000000001"];
        names.sort_by(|a, b| super::sequence(a).cmp(super::sequence(b)).then_with(|| a.cmp(b)));
        assert_eq!(names.len(), 3);
        assert_eq!(names[0], "_c_aa-10.0.0.10000000001");
    }
}
