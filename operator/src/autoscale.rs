//! Queue-depth autoscaling: the pure decision, and the per-version history it needs.
//!
//! Each tick the controller sums `ferry_queue_depth` (waiting + running requests) over a version's
//! ready pods. The raw wish is `ceil(sum / targetQueueDepth)` clamped to the bounds. The count only
//! goes up when the lowest wish over `scaleUpStabilizationSeconds` is above the current count
//! (0 s: at once), and only goes down to the highest wish over `scaleDownStabilizationSeconds`.
//! The current count includes pods still starting, so a burst that outlasts a cold start does not
//! add pods again and again: the same queue asks for the same count.

use std::collections::VecDeque;

/// Bounds and windows of one version's scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub min: i32,
    pub max: i32,
    pub target_queue_depth: i32,
    pub scale_up_seconds: f64,
    pub scale_down_seconds: f64,
}

/// What was read from the version's pods this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Sum of `ferry_queue_depth` over the pods that answered.
    pub queue: u64,
    /// Whether every ready pod answered: with a partial read the count may go up, never down.
    pub complete: bool,
    /// Requests the router holds because the version has no ready pod (scale from zero).
    pub held: u64,
}

/// Past wishes of one version, `(seconds, replicas)`, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    wishes: VecDeque<(f64, i32)>,
}

/// The raw wish for a load: enough pods for the target depth each, within the bounds. Requests
/// held for a version without pods ask for at least one.
pub fn wish(load: &Load, policy: &Policy) -> i32 {
    let target = policy.target_queue_depth.max(1) as u64;
    let wanted = load.queue.div_ceil(target).max(u64::from(load.held > 0));
    (wanted.min(i32::MAX as u64) as i32).clamp(policy.min, policy.max.max(policy.min))
}

/// The replicas to run now. `current` is the Deployment's count (ready or still starting).
pub fn decide(current: i32, load: &Load, policy: &Policy, history: &mut History, now: f64) -> i32 {
    let bounded = current.clamp(policy.min, policy.max.max(policy.min));
    if history.wishes.is_empty() {
        // First look (or a restarted operator): as if the current count had been wished so far,
        // so a scale-down waits a full window.
        history.wishes.push_back((now, bounded));
    }
    let raw = wish(load, policy);
    if load.complete || raw > bounded {
        history.wishes.push_back((now, raw));
    }
    // Keep the wishes inside the longest window, and the one in effect when it began.
    let keep = policy.scale_up_seconds.max(policy.scale_down_seconds);
    while history.wishes.len() > 1 && now - history.wishes[1].0 >= keep {
        history.wishes.pop_front();
    }
    // The wishes in effect during the last `seconds` (each holds until the next one); with no
    // window, the latest.
    let within = |seconds: f64| -> Vec<i32> {
        let w = &history.wishes;
        if seconds <= 0.0 {
            return w.back().map(|(_, x)| *x).into_iter().collect();
        }
        let first = w.iter().rposition(|(t, _)| now - t >= seconds).unwrap_or(0);
        w.iter().skip(first).map(|(_, x)| *x).collect()
    };
    let up = within(policy.scale_up_seconds)
        .into_iter()
        .min()
        .unwrap_or(bounded);
    let down = within(policy.scale_down_seconds)
        .into_iter()
        .max()
        .unwrap_or(bounded);
    if up > bounded {
        up
    } else if down < bounded && load.complete {
        down
    } else {
        bounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(up: f64, down: f64) -> Policy {
        Policy {
            min: 1,
            max: 5,
            target_queue_depth: 4,
            scale_up_seconds: up,
            scale_down_seconds: down,
        }
    }

    fn load(queue: u64) -> Load {
        Load {
            queue,
            complete: true,
            held: 0,
        }
    }

    #[test]
    fn the_wish_is_the_queue_over_the_target_within_the_bounds() {
        let p = policy(0.0, 60.0);
        for (queue, want) in [(0, 1), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (1000, 5)] {
            assert_eq!(wish(&load(queue), &p), want, "queue {queue}");
        }
        let zero = Policy { min: 0, ..p };
        assert_eq!(wish(&load(0), &zero), 0);
        let held = Load {
            queue: 0,
            complete: true,
            held: 3,
        };
        assert_eq!(
            wish(&held, &zero),
            1,
            "held requests wake a version at zero"
        );
    }

    /// (seconds, queue, current replicas) → expected replicas.
    fn table(p: Policy, rows: &[(f64, u64, i32, i32)]) {
        let mut h = History::default();
        for &(t, queue, current, want) in rows {
            assert_eq!(
                decide(current, &load(queue), &p, &mut h, t),
                want,
                "at {t} s, queue {queue}, current {current}"
            );
        }
    }

    #[test]
    fn scales_up_at_once_and_down_only_after_the_window() {
        table(
            policy(0.0, 60.0),
            &[
                (0.0, 2, 1, 1),
                (5.0, 16, 1, 4),  // burst: up at once
                (10.0, 16, 4, 4), // pods starting: the same queue asks for no more
                (15.0, 20, 4, 5),
                (20.0, 0, 5, 5), // load gone: wait
                (70.0, 0, 5, 5), // the wish of 5 (15-20 s) is inside the 60 s window
                (76.0, 0, 5, 5),
                (81.0, 0, 5, 1), // window passed: down to the highest wish since, 1
            ],
        );
    }

    #[test]
    fn down_goes_to_the_highest_wish_in_the_window() {
        table(
            policy(0.0, 30.0),
            &[
                (0.0, 20, 5, 5),
                (10.0, 12, 5, 5),
                (20.0, 4, 5, 5),
                (31.0, 4, 5, 5), // the wish of 5 held until 10 s: inside the window
                (41.0, 4, 5, 3), // it left; the 10-20 s wish (3) is the highest
                (51.0, 4, 3, 1),
            ],
        );
    }

    #[test]
    fn scale_up_stabilization_needs_the_wish_to_hold() {
        table(
            policy(10.0, 60.0),
            &[
                (0.0, 0, 1, 1),
                (5.0, 16, 1, 1),  // a spike: not yet
                (10.0, 0, 1, 1),  // gone: never scaled
                (20.0, 16, 1, 1), // holds from 20 s ...
                (26.0, 16, 1, 1),
                (31.0, 16, 1, 4), // ... for 10 s
            ],
        );
    }

    #[test]
    fn a_partial_read_can_scale_up_but_never_down() {
        let p = policy(0.0, 0.0);
        let mut h = History::default();
        let partial = |queue| Load {
            queue,
            complete: false,
            held: 0,
        };
        assert_eq!(decide(3, &partial(0), &p, &mut h, 0.0), 3);
        assert_eq!(decide(3, &partial(40), &p, &mut h, 1.0), 5);
        assert_eq!(decide(5, &load(0), &p, &mut h, 2.0), 1);
    }

    #[test]
    fn the_current_count_is_brought_inside_the_bounds() {
        let p = policy(0.0, 60.0);
        let mut h = History::default();
        assert_eq!(decide(9, &load(0), &p, &mut h, 0.0), 5);
        let mut h = History::default();
        assert_eq!(decide(0, &load(0), &p, &mut h, 0.0), 1);
    }
}
