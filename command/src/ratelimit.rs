//! Limits on sign-in and password-reset attempts per client IP and per account. Past a
//! limit the response is 429.
//!
//! The limits are kept in memory by each command-service process.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use accounts_platform::Problem;
use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Sign-in attempts allowed per minute.
#[derive(Clone, Debug, clap::Args)]
pub struct RateLimitConfig {
    /// Sign-in attempts per minute from one client IP address.
    #[arg(long, env = "SIGN_IN_LIMIT_PER_IP", default_value_t = 30)]
    pub sign_in_per_ip: u32,
    /// Sign-in attempts per minute for one email address.
    #[arg(long, env = "SIGN_IN_LIMIT_PER_ACCOUNT", default_value_t = 10)]
    pub sign_in_per_account: u32,
    /// Password-reset requests and confirmations per minute from one client IP address.
    #[arg(long, env = "PASSWORD_RESET_LIMIT_PER_IP", default_value_t = 20)]
    pub reset_per_ip: u32,
    /// Password-reset requests per minute for one email address.
    #[arg(long, env = "PASSWORD_RESET_LIMIT_PER_ACCOUNT", default_value_t = 5)]
    pub reset_per_account: u32,
}

/// Keyed rate limiters for one kind of attempt.
#[derive(Clone)]
pub struct AttemptLimits {
    per_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    per_account: Arc<DefaultKeyedRateLimiter<String>>,
    /// The kind of attempt counted, for the error message, such as `sign-in attempts`.
    attempts: &'static str,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl AttemptLimits {
    /// Builds the sign-in limiters.
    pub fn sign_in(config: &RateLimitConfig) -> Self {
        Self::start(
            config.sign_in_per_ip,
            config.sign_in_per_account,
            "sign-in attempts",
        )
    }

    /// Builds the password-reset limiters.
    pub fn password_reset(config: &RateLimitConfig) -> Self {
        Self::start(
            config.reset_per_ip,
            config.reset_per_account,
            "password-reset attempts",
        )
    }

    /// Builds the limiters and starts a task that removes idle keys every minute.
    fn start(per_ip: u32, per_account: u32, attempts: &'static str) -> Self {
        let limits = Self {
            per_ip: Arc::new(RateLimiter::keyed(per_minute(per_ip))),
            per_account: Arc::new(RateLimiter::keyed(per_minute(per_account))),
            attempts,
        };
        let (per_ip, per_account) = (
            Arc::downgrade(&limits.per_ip),
            Arc::downgrade(&limits.per_account),
        );
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(60));
            loop {
                interval.tick().await;
                let (Some(per_ip), Some(per_account)) = (per_ip.upgrade(), per_account.upgrade())
                else {
                    return;
                };
                per_ip.retain_recent();
                per_account.retain_recent();
            }
        });
        limits
    }

    /// Counts one attempt from `ip` alone, or returns 429 with the seconds to wait.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Problem> {
        let now = DefaultClock::default().now();
        match self.per_ip.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(self.limited(not_until.wait_time_from(now))),
        }
    }

    /// Counts one attempt for an account, or returns 429 with the seconds to wait.
    pub fn check(&self, ip: IpAddr, email_normalized: &str) -> Result<(), Problem> {
        let now = DefaultClock::default().now();
        let wait = match (
            self.per_ip.check_key(&ip),
            self.per_account.check_key(&email_normalized.to_owned()),
        ) {
            (Ok(()), Ok(())) => return Ok(()),
            (Err(not_until), _) | (_, Err(not_until)) => not_until.wait_time_from(now),
        };
        Err(self.limited(wait))
    }

    fn limited(&self, wait: Duration) -> Problem {
        metrics::counter!("rate_limited_total", "attempts" => self.attempts).increment(1);
        let seconds = wait.as_secs().max(1);
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {}; retry in {seconds} s", self.attempts),
        );
        problem = problem.with_extension("retry_after_seconds", seconds.into());
        problem.with_retry_after(seconds)
    }
}
