//! Named fail points: places where a crash test kills the process, as a power cut or an OOM
//! kill would, to prove that nothing is lost or repeated from there.
//!
//! Compiled in only with the `failpoints` feature (the end-to-end tests turn it on; a release
//! build has none). Then `WHATSNAP_FAILPOINTS` names the points to fire, separated by commas:
//! `ghl.post_message.after_call` aborts the process the first time it is reached,
//! `ghl.post_message.after_call@5` the fifth time. A point that fires says so on stderr, then
//! calls [`std::process::abort`]: no destructor runs, no buffer is flushed, no lock is released
//! politely.

/// Every point the outbox passes for one operation, in order.
pub const STAGES: [&str; 4] = [
    "before_intent",
    "before_call",
    "after_call",
    "after_outcome",
];

/// Passes the fail point `name`; aborts the process when `WHATSNAP_FAILPOINTS` names it.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether this build can fire fail points at all.
pub const fn enabled() -> bool {
    cfg!(feature = "failpoints")
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    /// The armed points: how many passes each still lets through.
    fn armed() -> &'static Mutex<HashMap<String, u64>> {
        static ARMED: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
        ARMED.get_or_init(|| {
            Mutex::new(parse(
                &std::env::var("WHATSNAP_FAILPOINTS").unwrap_or_default(),
            ))
        })
    }

    pub(super) fn parse(spec: &str) -> HashMap<String, u64> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|point| match point.split_once('@') {
                Some((name, nth)) => (name.to_owned(), nth.parse::<u64>().unwrap_or(1).max(1) - 1),
                None => (point.to_owned(), 0),
            })
            .collect()
    }

    pub(super) fn hit(name: &str) {
        let mut armed = armed().lock().unwrap_or_else(|e| e.into_inner());
        let Some(left) = armed.get_mut(name) else {
            return;
        };
        if *left > 0 {
            *left -= 1;
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "fail point {name} fired: aborting");
        let _ = stderr.flush();
        std::process::abort();
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_spec_names_points_and_the_pass_they_fire_on() {
            let parsed = super::parse(" a.b , c.d@3,e@0 ,");
            assert_eq!(parsed.get("a.b"), Some(&0));
            assert_eq!(parsed.get("c.d"), Some(&2));
            assert_eq!(parsed.get("e"), Some(&0));
            assert_eq!(parsed.len(), 3);
        }
    }
}
