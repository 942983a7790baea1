//! Process limits: the loadtest holds one file descriptor per connection.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Raises the soft open-files limit to the hard limit; returns the limit now in force.
pub fn raise_nofile() -> Option<u64> {
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            eprintln!("warning: cannot raise the open-files limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}
