//! Holdout splits for offline evaluation: a global temporal cutoff (`temporal:0.2` holds out the
//! latest 20 % of interactions) or leave-last-interaction-out per user (`last`).

use std::str::FromStr;

use crate::dataset::Event;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Holdout {
    /// Hold out the latest `fraction` of events by a single time cutoff.
    Temporal(f64),
    /// Hold out each user's last interaction (users with at least two).
    LeaveLastOut,
}

impl FromStr for Holdout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "last" || s == "leave-last-out" {
            return Ok(Holdout::LeaveLastOut);
        }
        let frac = s.strip_prefix("temporal:").ok_or_else(|| {
            format!("holdout {s:?}: expected temporal:FRACTION (e.g. temporal:0.2) or last")
        })?;
        let f: f64 = frac
            .parse()
            .map_err(|_| format!("holdout {s:?}: {frac:?} is not a number"))?;
        if !(f > 0.0 && f < 1.0) {
            return Err(format!("holdout {s:?}: fraction must be between 0 and 1"));
        }
        Ok(Holdout::Temporal(f))
    }
}

impl std::fmt::Display for Holdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holdout::Temporal(x) => write!(f, "temporal:{x}"),
            Holdout::LeaveLastOut => write!(f, "last"),
        }
    }
}

pub struct Split {
    pub train: Vec<Event>,
    pub test: Vec<Event>,
    /// Training data ends here (exclusive): "now" for every model built on `train`.
    pub cutoff: i64,
}

/// Splits time-sorted events.
pub fn split(events: &[Event], holdout: Holdout, n_users: usize) -> Split {
    match holdout {
        Holdout::Temporal(frac) => {
            let n = events.len();
            let k = ((n as f64) * (1.0 - frac)).floor() as usize;
            let k = k.min(n.saturating_sub(1));
            let cutoff = events.get(k).map(|e| e.ts).unwrap_or(0);
            // Everything at or after the cutoff second is test, so no second is split in two.
            let train: Vec<Event> = events.iter().copied().filter(|e| e.ts < cutoff).collect();
            let test: Vec<Event> = events.iter().copied().filter(|e| e.ts >= cutoff).collect();
            Split {
                train,
                test,
                cutoff,
            }
        }
        Holdout::LeaveLastOut => {
            let mut count = vec![0u32; n_users];
            for e in events {
                count[e.user as usize] += 1;
            }
            let mut last: Vec<Option<usize>> = vec![None; n_users];
            for (i, e) in events.iter().enumerate() {
                if count[e.user as usize] >= 2 {
                    last[e.user as usize] = Some(i);
                }
            }
            let mut is_test = vec![false; events.len()];
            for i in last.into_iter().flatten() {
                is_test[i] = true;
            }
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for (e, t) in events.iter().zip(is_test) {
                if t {
                    test.push(*e)
                } else {
                    train.push(*e)
                }
            }
            let cutoff = events.last().map(|e| e.ts + 1).unwrap_or(0);
            Split {
                train,
                test,
                cutoff,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_splits() {
        assert_eq!(
            "temporal:0.2".parse::<Holdout>().unwrap(),
            Holdout::Temporal(0.2)
        );
        assert!("temporal:2".parse::<Holdout>().is_err());
        assert!("random".parse::<Holdout>().is_err());
        let ev: Vec<Event> = (0..10)
            .map(|i| Event {
                user: i % 2,
                item: i,
                ts: i as i64,
                weight: 1.0,
            })
            .collect();
        let s = split(&ev, Holdout::Temporal(0.2), 2);
        assert_eq!((s.train.len(), s.test.len(), s.cutoff), (8, 2, 8));
        let s = split(&ev, Holdout::LeaveLastOut, 2);
        assert_eq!(
            s.test.iter().map(|e| e.item).collect::<Vec<_>>(),
            vec![8, 9]
        );
    }
}
