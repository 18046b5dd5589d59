//! Trying again after a failure that may pass (a lost connection, a
//! timeout, a server error), with a wait that doubles each time.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};
use crate::Observer;

/// How many times, and how patiently, to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first wait; it doubles with every retry.
    pub first_wait: Duration,
    /// The longest wait.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    /// Five retries, waiting 1, 2, 4, 8 and 16 seconds.
    fn default() -> Self {
        Self {
            retries: 5,
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails for good, or the retries
    /// run out; tells `observer` about each retry. `what` names the thing
    /// being fetched.
    pub fn run<T>(
        &self,
        what: &str,
        observer: &dyn Observer,
        attempt: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run_until(None, what, observer, attempt)
    }

    /// As [`RetryPolicy::run`], but no retry starts that could not begin
    /// before `deadline`: what must arrive within a deadline gets it once
    /// over all its tries, not once per try.
    pub fn run_until<T>(
        &self,
        deadline: Option<Instant>,
        what: &str,
        observer: &dyn Observer,
        mut attempt: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut wait = self.first_wait;
        let mut tries = 0;
        loop {
            let too_late = |wait| deadline.is_some_and(|d| Instant::now() + wait >= d);
            match attempt() {
                Err(error)
                    if error.kind() == ErrorKind::RetryLater
                        && tries < self.retries
                        && !too_late(wait) =>
                {
                    tries += 1;
                    observer.notice(&format!(
                        "{error}; retrying {what} in {:.1}s ({tries} of {})",
                        wait.as_secs_f64(),
                        self.retries
                    ));
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(self.max_wait);
                }
                Err(error) if error.kind() == ErrorKind::RetryLater && tries > 0 => {
                    return Err(error.after_retries(tries));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Silent;

    fn quick(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            first_wait: Duration::from_millis(1),
            max_wait: Duration::from_millis(2),
        }
    }

    fn unavailable() -> Error {
        Error::Unavailable {
            location: "x".into(),
            reason: "the server answered 503".into(),
        }
    }

    #[test]
    fn transient_failures_are_retried_until_success() {
        let mut calls = 0;
        let result = quick(3).run("x", &Silent, || {
            calls += 1;
            if calls < 3 {
                Err(unavailable())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 3);
    }

    #[test]
    fn retries_run_out_and_say_so() {
        let err = quick(2)
            .run("x", &Silent, || Err::<(), _>(unavailable()))
            .unwrap_err();
        assert!(err.to_string().contains("gave up after 2 retries"), "{err}");
        assert_eq!(err.kind(), ErrorKind::RetryLater);
    }

    #[test]
    fn no_retry_starts_past_the_deadline() {
        let mut calls = 0;
        let deadline = Instant::now() + Duration::from_millis(50);
        let err = quick(100)
            .run_until(Some(deadline), "x", &Silent, || {
                calls += 1;
                std::thread::sleep(Duration::from_millis(20));
                Err::<(), _>(unavailable())
            })
            .unwrap_err();
        assert!((2..=3).contains(&calls), "{calls} calls");
        assert!(err.to_string().contains("gave up after"), "{err}");
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let mut calls = 0;
        let err = quick(5)
            .run("x", &Silent, || {
                calls += 1;
                Err::<(), _>(Error::NotFound {
                    location: "x".into(),
                    detail: "HTTP 404".into(),
                })
            })
            .unwrap_err();
        assert_eq!((calls, err.kind()), (1, ErrorKind::NotFound));
    }
}
