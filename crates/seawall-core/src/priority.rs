//! Request priorities: P0 (critical: login, checkout), P1 (normal, the default) and P2
//! (sheddable: recommendations, analytics). A route gives a request its priority and the client's
//! tier may move it a class up or down; bulkhead queues serve waiters by it and overload control
//! sheds by it.

use std::fmt;
use std::str::FromStr;

/// A request's priority class; `P0` is the most important. Ordered so that `P0 < P1 < P2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Critical: served first, shed last.
    P0,
    /// Normal.
    #[default]
    P1,
    /// Sheddable: served last, shed first.
    P2,
}

impl Priority {
    /// All classes, most important first.
    pub const ALL: [Priority; 3] = [Priority::P0, Priority::P1, Priority::P2];

    /// 0 for P0, 1 for P1, 2 for P2.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class `by` steps less important (negative: more important), kept within P0..=P2.
    pub fn shifted(self, by: i8) -> Priority {
        let index = (self as i8).saturating_add(by).clamp(0, 2);
        Priority::ALL[index as usize]
    }

    /// "P0", "P1" or "P2".
    pub fn as_str(self) -> &'static str {
        ["P0", "P1", "P2"][self.index()]
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = ();
    fn from_str(s: &str) -> Result<Priority, ()> {
        Priority::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s)).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_parse_and_shift_within_bounds() {
        assert!(Priority::P0 < Priority::P1 && Priority::P1 < Priority::P2);
        assert_eq!("p2".parse(), Ok(Priority::P2));
        assert_eq!("P3".parse::<Priority>(), Err(()));
        assert_eq!(Priority::P1.shifted(-1), Priority::P0);
        assert_eq!(Priority::P0.shifted(-1), Priority::P0);
        assert_eq!(Priority::P1.shifted(5), Priority::P2);
        assert_eq!(Priority::default(), Priority::P1);
    }
}
