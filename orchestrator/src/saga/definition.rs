//! The static shape of a saga: which steps run, in which order, who runs them and how hard
//! to try.
//!
//! Definitions are `'static` data rather than trait objects so that the transition function
//! stays one generic piece of code: adding a saga kind means adding data, never a new branch
//! in the state machine.

use platform::contract::Role;
use std::time::Duration;

/// A saga kind: a name and its steps, run in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    /// Stable identifier, stored with every saga instance; never rename a deployed one.
    pub name: &'static str,
    /// Which shape of the flow this is. A saga records the version it started on and
    /// finishes on it; a shape once used is never changed, a new one is a new version.
    pub version: u32,
    pub steps: &'static [Step],
}

impl Definition {
    pub fn step(&self, index: usize) -> Option<&'static Step> {
        self.steps.get(index)
    }

    /// The rules a definition's timings must keep, given how long a lost consumer member
    /// can hold a partition (`platform::kafka::LOST_MEMBER_COST`): an attempt timeout
    /// shorter than its deadline (else no re-send ever happens), and deadlines longer than
    /// a lost member (else a process that died, and was replaced by another, makes sagas
    /// compensate whose steps did nothing wrong). Every fault is listed.
    pub fn check_timings(&self, lost_member: Duration) -> Result<(), Vec<String>> {
        let mut faults = Vec::new();
        for step in self.steps {
            let at = format!("{}.{}", self.name, step.name);
            if step.attempt_timeout >= step.deadline {
                faults.push(format!(
                    "{at}: attempt timeout {:?} is not shorter than its deadline {:?}",
                    step.attempt_timeout, step.deadline
                ));
            }
            // A compensation attempt past its deadline only costs an attempt of a generous
            // budget, and a short one re-sends a lost compensation sooner: no rule for it.
            if step.deadline <= lost_member {
                faults.push(format!(
                    "{at}: deadline {:?} is not longer than what a lost consumer member \
                     costs ({lost_member:?})",
                    step.deadline
                ));
            }
        }
        if faults.is_empty() {
            Ok(())
        } else {
            Err(faults)
        }
    }
}

/// One forward action and, optionally, the action that undoes it.
///
/// A step without a compensation is still *fenced* before the saga compensates past it
/// while its outcome is unknown: a fence command makes the participant refuse the original
/// for ever, or report that it already took effect. In that case the step is a pivot that
/// cannot be undone, and the saga goes forward instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    /// The participant role that executes both the command and the compensation.
    pub role: Role,
    pub command: &'static str,
    /// `None` means the effect cannot be undone: a step that succeeded is skipped during
    /// compensation, and one whose outcome is unknown is fenced (see above). It should be the
    /// last step that can fail for business reasons.
    pub compensation: Option<&'static str>,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
    /// Covers every forward attempt together: a step that is still failing when it passes is
    /// given up on, so a saga cannot sit on one step forever.
    pub deadline: Duration,
    /// Start-to-close timeout of one forward attempt: when no reply came within it, the same
    /// command (same command id) is sent again, because the command or its reply may have
    /// been lost with a broker or a worker. The participant's inbox makes the re-send
    /// harmless. Only the step `deadline` or the retry budget makes the saga compensate.
    pub attempt_timeout: Duration,
    /// Covers one compensation attempt: compensations must eventually succeed, so each attempt
    /// gets a fresh window and only the attempt budget bounds the total.
    pub compensation_deadline: Duration,
}

impl Step {
    /// A step with the project's default retry budgets and deadlines.
    pub const fn new(
        name: &'static str,
        role: Role,
        command: &'static str,
        compensation: Option<&'static str>,
    ) -> Step {
        Step {
            name,
            role,
            command,
            compensation,
            retry: RetryPolicy::FORWARD,
            compensation_retry: RetryPolicy::COMPENSATION,
            // Longer than what a lost consumer member costs (60 s): see `check_timings`.
            deadline: Duration::from_secs(90),
            attempt_timeout: Duration::from_secs(5),
            compensation_deadline: Duration::from_secs(30),
        }
    }
}

/// How many attempts an action gets and how long to wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; 0 is treated as 1 because the first attempt always
    /// happens.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub multiplier: u32,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Forward steps fail fast: a business failure is better reported than hidden behind
    /// long retries.
    pub const FORWARD: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
        multiplier: 2,
        max_backoff: Duration::from_secs(5),
    };

    /// Compensations try much longer: giving up means a human has to step in.
    pub const COMPENSATION: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        initial_backoff: Duration::from_millis(500),
        multiplier: 2,
        max_backoff: Duration::from_secs(30),
    };

    pub fn allows_another_attempt(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts.max(1)
    }

    /// Delay before the attempt that follows failed attempt number `attempt` (1-based).
    ///
    /// The ceiling is `initial_backoff * multiplier^(attempt-1)`, capped at `max_backoff`.
    /// "Equal jitter": the result lies in `[ceiling/2, ceiling)`, so retries of many sagas
    /// that failed together spread out, yet none retries immediately. `jitter` is supplied by
    /// the caller (randomness is an input of the pure core) and is clamped into `[0, 1]`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self
            .multiplier
            .checked_pow(attempt.saturating_sub(1))
            .and_then(|factor| self.initial_backoff.checked_mul(factor))
            .map_or(self.max_backoff, |uncapped| uncapped.min(self.max_backoff));
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = ceiling / 2;
        half + half.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_from_half_the_ceiling() {
        let policy = RetryPolicy::FORWARD;
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(600));
    }

    #[test]
    fn backoff_is_capped_even_for_huge_attempt_numbers() {
        let policy = RetryPolicy::COMPENSATION;
        assert_eq!(policy.backoff(7, 0.0), Duration::from_secs(15));
        assert_eq!(policy.backoff(u32::MAX, 0.0), Duration::from_secs(15));
        assert_eq!(policy.backoff(u32::MAX, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn the_built_in_definitions_outlast_a_lost_member_and_a_shorter_deadline_is_refused() {
        let lost = platform::kafka::LOST_MEMBER_COST;
        for definition in crate::saga::definitions::ALL {
            assert_eq!(
                definition.check_timings(lost),
                Ok(()),
                "{}",
                definition.name
            );
        }
        const STEPS: &[Step] = &[Step {
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(30),
            ..Step::new("pay", Role::Payment, "payment.charge", None)
        }];
        let hasty = Definition {
            name: "hasty",
            version: 1,
            steps: STEPS,
        };
        let faults = hasty.check_timings(lost).unwrap_err();
        assert_eq!(faults.len(), 2, "{faults:?}");
        assert!(
            faults[0].contains("hasty.pay: attempt timeout"),
            "{faults:?}"
        );
        assert!(faults[1].contains("lost consumer member"), "{faults:?}");
    }

    #[test]
    fn backoff_tolerates_out_of_range_jitter() {
        let policy = RetryPolicy::FORWARD;
        assert_eq!(policy.backoff(1, f64::NAN), Duration::from_millis(100));
        assert_eq!(policy.backoff(1, -3.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(1, 7.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn zero_max_attempts_still_allows_the_first_attempt() {
        let policy = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::FORWARD
        };
        assert!(policy.allows_another_attempt(0));
        assert!(!policy.allows_another_attempt(1));
    }
}
