//! Measures the time of one argon2id hash and one verification with the service's default
//! parameters on this machine. Run with `cargo run --release -p accounts-command --example
//! argon2_cost`.

use std::time::Instant;

use accounts_command::password::{HashingConfig, PasswordHasherPool};
use secrecy::SecretString;

const ROUNDS: u32 = 40;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = HashingConfig {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
        max_concurrent: 1,
    };
    let pool = PasswordHasherPool::new(&config)?;
    let password = SecretString::from("Correct-Horse-9-battery");

    let started = Instant::now();
    let mut hash = String::new();
    for _ in 0..ROUNDS {
        hash = pool.hash(password.clone()).await?;
    }
    let hash_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(ROUNDS);

    let started = Instant::now();
    for _ in 0..ROUNDS {
        pool.verify(password.clone(), Some(hash.clone())).await?;
    }
    let verify_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(ROUNDS);

    println!("argon2id m={} KiB t={} p={}: hash {hash_ms:.1} ms, verify {verify_ms:.1} ms ({ROUNDS} rounds, one at a time)",
        config.memory_kib, config.iterations, config.parallelism);
    Ok(())
}
