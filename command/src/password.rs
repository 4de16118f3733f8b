//! Password hashing with argon2id on a bounded blocking pool.

use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// argon2id cost parameters. The defaults are OWASP's minimum for argon2id:
/// 19 MiB of memory, 2 passes, 1 lane.
#[derive(Clone, Debug, clap::Args)]
pub struct HashingConfig {
    /// argon2id memory cost in KiB.
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub memory_kib: u32,
    /// argon2id passes over memory.
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub iterations: u32,
    /// argon2id lanes.
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub parallelism: u32,
    /// Hashes computed at once; more wait, so a burst of sign-ins cannot starve the server.
    #[arg(long, env = "ARGON2_MAX_CONCURRENT", default_value_t = 2)]
    pub max_concurrent: usize,
}

/// Hashes and verifies passwords off the async runtime.
#[derive(Clone)]
pub struct PasswordHasherPool {
    params: Params,
    permits: Arc<Semaphore>,
}

impl PasswordHasherPool {
    pub fn new(config: &HashingConfig) -> anyhow::Result<Self> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|error| anyhow!("invalid argon2 parameters: {error}"))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        })
    }

    /// Returns the argon2id PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let params = self.params.clone();
        self.run(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| anyhow!("failed to hash password: {error}"))
        })
        .await
    }

    /// Checks `password` against a stored PHC string, using the parameters stored in it.
    /// With no stored hash it checks against a dummy hash of the same cost, so that the
    /// time taken does not tell whether an account exists.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> anyhow::Result<bool> {
        let params = self.params.clone();
        self.run(move || {
            let known = stored.is_some();
            let stored = match stored {
                Some(stored) => stored,
                None => dummy_hash(&params)?.to_owned(),
            };
            let parsed = PasswordHash::new(&stored)
                .map_err(|error| anyhow!("stored password hash is invalid: {error}"))?;
            let matches = Argon2::default()
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok();
            Ok(known && matches)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher pool closed")?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .context("password hashing task failed")?
    }
}

/// Returns a hash of a random password with the configured cost, computed once.
fn dummy_hash(params: &Params) -> anyhow::Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let password = uuid::Uuid::new_v4().to_string();
    let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| anyhow!("failed to compute dummy hash: {error}"))?
        .to_string();
    Ok(DUMMY.get_or_init(|| hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasherPool {
        PasswordHasherPool::new(&HashingConfig {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hash_verifies_and_is_argon2id() {
        let pool = cheap();
        let hash = pool
            .hash(SecretString::from("Correct-Horse-9"))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(pool
            .verify(SecretString::from("Correct-Horse-9"), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!pool
            .verify(SecretString::from("wrong"), Some(hash))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn unknown_account_never_verifies() {
        let pool = cheap();
        assert!(!pool
            .verify(SecretString::from("anything"), None)
            .await
            .unwrap());
    }
}
