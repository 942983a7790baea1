//! File descriptors: every connection is one, so the open-file limit decides how many
//! connections a node can hold, and `max_connections` defaults to what it leaves room for.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What "unlimited" is taken as (Linux refuses an infinite `RLIMIT_NOFILE` anyway).
const UNLIMITED: u64 = 1 << 20;

/// Raises the soft open-file limit to the hard one, as Go's runtime does: a soft limit of 1024
/// is a distribution default for programs that use `select`, not a decision about this server.
/// Returns the soft limit in force afterwards.
pub fn raise_open_file_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(UNLIMITED);
    let soft = limit.current.unwrap_or(UNLIMITED);
    if soft < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    soft
}

/// The soft open-file limit.
pub fn open_file_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(UNLIMITED)
}

/// File descriptors kept out of `max_connections` for everything else: Redis connections, the
/// listener, refusals being answered, logs. 1 % of the limit, between 32 and 1024.
pub fn headroom(nofile: u64) -> u64 {
    (nofile / 100).clamp(32, 1024)
}

/// Connections accepted beyond `max_connections` for plain requests (publishes, health checks,
/// metrics), so a node full of streams still answers them: 1/64 of it, between 8 and 256.
pub fn reserve(max_connections: usize) -> usize {
    (max_connections / 64).clamp(8, 256)
}

/// The default `max_connections`: the open-file limit minus [`headroom`], minus the
/// [`reserve`] on top of it.
pub fn derived_max_connections(nofile: u64) -> usize {
    let usable = nofile.saturating_sub(headroom(nofile)) as usize;
    usable.saturating_sub(reserve(usable)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_and_its_reserve_fit_the_limit() {
        for nofile in (64u64..5000).chain([20_000, 65_536, 1 << 20]) {
            let max = derived_max_connections(nofile);
            let total = (max + reserve(max)) as u64 + headroom(nofile);
            assert!(
                total <= nofile,
                "{nofile}: {max} + reserve + headroom = {total}"
            );
            if nofile >= 1024 {
                assert!(
                    max as u64 * 10 >= nofile * 8,
                    "{nofile}: {max} leaves too much unused"
                );
            }
        }
        // A node with the 20,000 files of these machines holds the 19,000 idle connections the
        // benchmarks open.
        assert!(derived_max_connections(20_000) > 19_000);
    }
}
