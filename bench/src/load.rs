//! The HTTP load: accounts made through the API, then closed-loop and open-loop phases.
//!
//! In a closed loop each client sends its next request when the last one returned. In an
//! open loop requests start at a fixed rate whatever the latency. Latency counts from the
//! planned start, so a stall shows in the figures instead of slowing the load.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// A kind of request the load sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    UpdateProfile,
    SignIn,
    ListSessions,
    ReadProfile,
}

impl Op {
    pub const ALL: [Op; 4] = [
        Op::UpdateProfile,
        Op::SignIn,
        Op::ListSessions,
        Op::ReadProfile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::UpdateProfile => "update_profile",
            Op::SignIn => "sign_in",
            Op::ListSessions => "list_sessions",
            Op::ReadProfile => "read_profile",
        }
    }
}

/// The share of each request kind in a phase, in percent.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub update_profile: u32,
    pub sign_in: u32,
    pub list_sessions: u32,
    pub read_profile: u32,
}

impl Mix {
    pub const UPDATES: Mix = Mix {
        update_profile: 100,
        sign_in: 0,
        list_sessions: 0,
        read_profile: 0,
    };
    pub const READS: Mix = Mix {
        update_profile: 0,
        sign_in: 0,
        list_sessions: 0,
        read_profile: 100,
    };
    /// Mostly profile updates, some sign-ins, session lists and profile reads.
    pub const DASHBOARD: Mix = Mix {
        update_profile: 75,
        sign_in: 5,
        list_sessions: 10,
        read_profile: 10,
    };

    fn pick(self, rng: &mut impl Rng) -> Op {
        let total = self.update_profile + self.sign_in + self.list_sessions + self.read_profile;
        let mut roll = rng.gen_range(0..total.max(1));
        for (op, share) in [
            (Op::UpdateProfile, self.update_profile),
            (Op::SignIn, self.sign_in),
            (Op::ListSessions, self.list_sessions),
            (Op::ReadProfile, self.read_profile),
        ] {
            if roll < share {
                return op;
            }
            roll -= share;
        }
        Op::ReadProfile
    }
}

/// One request of the load.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub op: Op,
    /// When the request was planned to start, since the load began.
    pub at: Duration,
    pub latency: Duration,
    pub ok: bool,
    /// For commands: from the decider's reply until the read models showed the events, as
    /// the command service's `Server-Timing` header reports it.
    pub lag: Option<Duration>,
}

struct Account {
    email: String,
    token: String,
    /// The index of the HTTP client, and so of the source address, this account uses.
    client: usize,
}

/// The accounts and HTTP clients of a run.
pub struct Load {
    command_url: String,
    query_url: String,
    clients: Vec<Client>,
    accounts: Vec<Account>,
    password: String,
    started: Instant,
}

/// Returns the loopback source address of HTTP client `index`. Sign-in is limited per
/// client address, so the simulated users come from many addresses, as real users do.
fn source_address(index: usize) -> IpAddr {
    let index = u8::try_from(index % 250).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, index + 1))
}

impl Load {
    /// Registers `accounts` accounts through the command service and signs each in once.
    pub async fn prepare(
        command_url: &str,
        query_url: &str,
        accounts: usize,
        source_addresses: usize,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let clients = (0..source_addresses.max(1))
            .map(|index| {
                Client::builder()
                    .local_address(source_address(index))
                    .timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(8)
                    .build()
                    .context("failed to build an HTTP client")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let password = format!("Quartz-{run} correct horse battery 9!");
        let mut load = Self {
            command_url: command_url.trim_end_matches('/').to_owned(),
            query_url: query_url.trim_end_matches('/').to_owned(),
            clients,
            accounts: Vec::with_capacity(accounts),
            password,
            started: Instant::now(),
        };
        let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..accounts {
            let client = load.clients[index % load.clients.len()].clone();
            let email = format!("bench-{}-{index}@example.com", &run[..12]);
            let password = load.password.clone();
            let command_url = load.command_url.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await?;
                let registered = client
                    .post(format!("{command_url}/v1/accounts"))
                    .json(&json!({"email": email, "password": password, "name": "Load Tester"}))
                    .send()
                    .await?;
                if registered.status() != StatusCode::CREATED {
                    bail!(
                        "registering {email} returned {}: {}",
                        registered.status(),
                        registered.text().await.unwrap_or_default()
                    );
                }
                let token = sign_in(&client, &command_url, &email, &password).await?;
                anyhow::Ok(Account {
                    email,
                    token,
                    client: index % source_addresses.max(1),
                })
            });
        }
        while let Some(account) = tasks.join_next().await {
            load.accounts
                .push(account.context("a registration task failed")??);
        }
        load.started = Instant::now();
        Ok(load)
    }

    /// Sends requests of `mix` from `clients` concurrent clients for `length`, each client
    /// waiting for its last response before it sends the next request.
    pub async fn closed_loop(
        self: &Arc<Self>,
        mix: Mix,
        clients: usize,
        length: Duration,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + length;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients.max(1) {
            let load = self.clone();
            tasks.spawn(async move {
                let mut samples = Vec::new();
                let mut rng = rand::rngs::StdRng::from_entropy();
                while Instant::now() < deadline {
                    let op = mix.pick(&mut rng);
                    let account = rng.gen_range(0..load.accounts.len());
                    let planned = Instant::now();
                    samples.push(load.send(op, account, planned).await);
                }
                samples
            });
        }
        let mut samples = Vec::new();
        while let Some(Ok(mut part)) = tasks.join_next().await {
            samples.append(&mut part);
        }
        samples
    }

    /// Starts requests of `mix` at `rate` per second for `length`, at most `in_flight` at
    /// once. The others wait, and their wait counts in their latency.
    pub async fn open_loop(
        self: &Arc<Self>,
        mix: Mix,
        rate: f64,
        in_flight: usize,
        length: Duration,
    ) -> Vec<Sample> {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let begin = Instant::now();
        let total = (length.as_secs_f64() * rate.max(1.0)) as u64;
        let semaphore = Arc::new(Semaphore::new(in_flight.max(1)));
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..total {
            let planned = begin + interval.mul_f64(index as f64);
            tokio::time::sleep_until(planned.into()).await;
            let op = mix.pick(&mut rng);
            let account = rng.gen_range(0..self.accounts.len());
            let load = self.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await.ok()?;
                Some(load.send(op, account, planned).await)
            });
        }
        let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        while let Some(sample) = tasks.join_next().await {
            if let Ok(Some(sample)) = sample {
                samples.push(sample);
            }
        }
        samples
    }

    async fn send(&self, op: Op, index: usize, planned: Instant) -> Sample {
        let account = &self.accounts[index];
        let client = &self.clients[account.client];
        let result = match op {
            Op::UpdateProfile => {
                let name = format!("Bench {index} {}", rand::random::<u32>());
                client
                    .patch(format!("{}/v1/profile", self.command_url))
                    .bearer_auth(&account.token)
                    .json(&json!({"name": name}))
                    .send()
                    .await
            }
            Op::SignIn => {
                client
                    .post(format!("{}/v1/sessions", self.command_url))
                    .json(&json!({"email": account.email, "password": self.password}))
                    .send()
                    .await
            }
            Op::ListSessions => {
                client
                    .get(format!("{}/v1/sessions", self.query_url))
                    .bearer_auth(&account.token)
                    .send()
                    .await
            }
            Op::ReadProfile => {
                client
                    .get(format!("{}/v1/profile", self.query_url))
                    .bearer_auth(&account.token)
                    .send()
                    .await
            }
        };
        let (ok, lag) = match result {
            Ok(response) => {
                // A 202 means the read models did not show the command in time, which counts
                // as a failed request.
                let ok =
                    response.status().is_success() && response.status() != StatusCode::ACCEPTED;
                let lag = response
                    .headers()
                    .get("server-timing")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| timing(value, "project"));
                // Reading the body is part of the request.
                let ok = response.bytes().await.is_ok() && ok;
                (ok, lag)
            }
            Err(_) => (false, None),
        };
        Sample {
            op,
            at: planned.saturating_duration_since(self.started),
            latency: planned.elapsed(),
            ok,
            lag,
        }
    }

    /// Returns the time since the accounts were ready, which sample times count from.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }
}

async fn sign_in(
    client: &Client,
    command_url: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{command_url}/v1/sessions"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match body["token"].as_str() {
        Some(token) if status == StatusCode::CREATED => Ok(token.to_owned()),
        _ => bail!("signing in {email} returned {status}: {body}"),
    }
}

/// Reads the duration of metric `name` from a `Server-Timing` value.
pub fn timing(header: &str, name: &str) -> Option<Duration> {
    header.split(',').find_map(|metric| {
        let mut parts = metric.trim().split(';');
        if parts.next()? != name {
            return None;
        }
        parts
            .find_map(|parameter| parameter.trim().strip_prefix("dur="))
            .and_then(|millis| millis.parse::<f64>().ok())
            .filter(|millis| millis.is_finite() && *millis >= 0.0)
            .map(|millis| Duration::from_secs_f64(millis / 1e3))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_reads_the_named_metric() {
        let header = "decide;dur=12.500, project;dur=3.250";
        assert_eq!(
            timing(header, "decide"),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(
            timing(header, "project"),
            Some(Duration::from_micros(3_250))
        );
        assert_eq!(timing(header, "other"), None);
        assert_eq!(timing("project;desc=x", "project"), None);
        assert_eq!(timing("project;dur=-1", "project"), None);
    }

    #[test]
    fn mix_picks_only_kinds_with_a_share() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!((0..1000).all(|_| Mix::UPDATES.pick(&mut rng) == Op::UpdateProfile));
        let picked: std::collections::HashSet<Op> =
            (0..10_000).map(|_| Mix::DASHBOARD.pick(&mut rng)).collect();
        assert_eq!(picked.len(), 4);
    }

    #[test]
    fn source_addresses_stay_in_loopback() {
        for index in [0, 1, 249, 250, 10_000] {
            assert!(source_address(index).is_loopback());
        }
    }
}
