//! Retry policy for shard reads: which errors are worth retrying, how long to wait between
//! attempts (exponential back-off with jitter), and an injectable [`Sleeper`] so that tests
//! observe the delays instead of waiting them out.

use std::error::Error as StdError;
use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::rng::Rng;

/// How a failed read is retried.
///
/// After the k-th consecutive failure of one request (k = 1, 2, ...) the reader waits
/// `min(max_delay, base_delay · 2^(k-1))`, shortened by a random fraction of at most
/// `jitter`, then resumes from the first byte it does not have yet. A chunk gives up after
/// `max_attempts` attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure.
    pub base_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// The largest fraction (0–1) by which jitter shortens a wait; 0 disables jitter.
    pub jitter: f64,
    /// Seed of the jitter, so that delays are reproducible.
    pub seed: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            jitter: 0.5,
            seed: 0,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failure`-th consecutive failure (1-based) of the request that
    /// resumes at byte `offset`.
    pub fn delay(&self, failure: u32, offset: u64) -> Duration {
        let doublings = failure.saturating_sub(1).min(63);
        let nominal = self
            .base_delay
            .checked_mul(1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return nominal;
        }
        let u = Rng::from_key(&[self.seed, offset, u64::from(failure)]).next_f64();
        nominal.mul_f64(1.0 - jitter * u)
    }
}

/// Waits between retries. The pipeline uses [`TokioSleeper`]; tests use
/// [`RecordingSleeper`], which returns at once and remembers the delays asked for.
pub trait Sleeper: Send + Sync + Debug + 'static {
    /// A future that completes after `delay`.
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()>;
}

/// Sleeps on the tokio timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(delay).boxed()
    }
}

/// Never sleeps; records every delay it was asked for, in order.
#[derive(Debug, Default)]
pub struct RecordingSleeper {
    delays: Mutex<Vec<Duration>>,
}

impl RecordingSleeper {
    /// The delays asked for so far.
    pub fn delays(&self) -> Vec<Duration> {
        self.delays.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        self.delays.lock().unwrap_or_else(PoisonError::into_inner).push(delay);
        futures::future::ready(()).boxed()
    }
}

/// What to do about a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// HTTP 404: fail at once.
    NotFound,
    /// HTTP 401 or 403: fail at once.
    Forbidden,
    /// Connection errors, timeouts, 5xx, 408, 429, early end of stream: retry.
    Transient,
    /// Anything else (a 4xx, a changed object, a bad path): fail at once.
    Fatal,
}

/// Sorts an `object_store` error into an [`ErrorClass`].
///
/// `Generic` errors are transient when their chain holds an HTTP transport error or an
/// I/O error, or their text reports status 5xx, 408 or 429; other statuses are fatal.
pub fn classify(err: &object_store::Error) -> ErrorClass {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => ErrorClass::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorClass::Forbidden,
        E::JoinError { .. } => ErrorClass::Transient,
        E::Generic { source, .. } => classify_generic(source.as_ref()),
        _ => ErrorClass::Fatal,
    }
}

fn classify_generic(source: &(dyn StdError + 'static)) -> ErrorClass {
    let mut transport = false;
    let mut text = String::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(source);
    while let Some(e) = cur {
        transport |= e.is::<object_store::client::HttpError>() || e.is::<std::io::Error>();
        text.push_str(&e.to_string());
        text.push('\n');
        cur = e.source();
    }
    match http_status(&text) {
        Some(s) if s >= 500 || s == 408 || s == 429 => ErrorClass::Transient,
        Some(_) => ErrorClass::Fatal,
        None if transport => ErrorClass::Transient,
        None => ErrorClass::Fatal,
    }
}

/// The status in object_store's "status code: 503 Service Unavailable" messages.
fn http_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: Box<dyn StdError + Send + Sync>) -> object_store::Error {
        object_store::Error::Generic { store: "test", source }
    }

    #[test]
    fn delays_double_up_to_the_cap_without_jitter() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let ms: Vec<u128> = (1..=5).map(|k| policy.delay(k, 0).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert_eq!(policy.delay(200, 0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_shortens_by_at_most_the_fraction_and_is_reproducible() {
        let policy = RetryPolicy { jitter: 0.5, seed: 7, ..RetryPolicy::default() };
        for k in 1..=8 {
            let nominal = RetryPolicy { jitter: 0.0, ..policy.clone() }.delay(k, 3);
            let d = policy.delay(k, 3);
            assert!(d <= nominal && d >= nominal.mul_f64(0.5), "{k}: {d:?} vs {nominal:?}");
            assert_eq!(d, policy.delay(k, 3));
        }
    }

    #[test]
    fn errors_are_classified() {
        let nf = object_store::Error::NotFound { path: "p".into(), source: "x".into() };
        assert_eq!(classify(&nf), ErrorClass::NotFound);
        let denied = object_store::Error::PermissionDenied { path: "p".into(), source: "x".into() };
        assert_eq!(classify(&denied), ErrorClass::Forbidden);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify(&generic(Box::new(reset))), ErrorClass::Transient);
        let s503 = "Server returned non-2xx status code: 503 Service Unavailable: ";
        assert_eq!(classify(&generic(s503.into())), ErrorClass::Transient);
        let s400 = "Server returned non-2xx status code: 400 Bad Request: ";
        assert_eq!(classify(&generic(s400.into())), ErrorClass::Fatal);
        assert_eq!(classify(&generic("no idea".into())), ErrorClass::Fatal);
    }
}
