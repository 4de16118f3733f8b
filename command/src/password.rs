//! Password hashing with argon2id on a bounded blocking pool.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use anyhow::{anyhow, Context};
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
    /// Working memory of finished hashes, at most one buffer per permit, for the next hash
    /// to reuse.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
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
            memory: Arc::default(),
        })
    }

    /// Returns the argon2id PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let params = self.params.clone();
        self.run(move |memory| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            phc_hash(memory, &params, password.expose_secret().as_bytes(), salt)
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
        self.run(move |memory| {
            let known = stored.is_some();
            let stored = match stored {
                Some(stored) => stored,
                None => dummy_hash(memory, &params)?.to_owned(),
            };
            let matches = phc_matches(memory, password.expose_secret().as_bytes(), &stored)?;
            Ok(known && matches)
        })
        .await
    }

    /// Runs `work` on the blocking pool once a permit is free, with a reused memory buffer.
    ///
    /// Each hash needs `memory_kib` of working memory. Allocated afresh per hash, it stays
    /// in the glibc arena of whichever blocking thread ran the hash, so the process grows
    /// with every arena used. One buffer per permit bounds it.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher pool closed")?;
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let span = tracing::Span::current();
        let (result, memory) = tokio::task::spawn_blocking(move || {
            let result = span.in_scope(|| work(&mut memory));
            (result, memory)
        })
        .await
        .context("password hashing task failed")?;
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(memory);
        result
    }
}

/// Computes the argon2 output of `password` into `output` in `memory`, which grows to the
/// block count of `params` if it is smaller.
fn fill_output(
    memory: &mut Vec<Block>,
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    output: &mut [u8],
) -> Result<(), argon2::Error> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    argon2.hash_password_into_with_memory(password, salt, output, &mut memory[..blocks])
}

/// Returns the argon2id PHC string of `password` with `salt`, computed in `memory`.
fn phc_hash(
    memory: &mut Vec<Block>,
    params: &Params,
    password: &[u8],
    salt: SaltString,
) -> anyhow::Result<String> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|error| anyhow!("failed to decode the salt: {error}"))?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(output_len, |output| {
        fill_output(memory, &argon2, params, password, salt_bytes, output)
            .map_err(argon2::password_hash::Error::from)
    })
    .map_err(|error| anyhow!("failed to hash password: {error}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)
            .map_err(|error| anyhow!("failed to encode argon2 parameters: {error}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Tells whether `password` matches the stored PHC string, with the algorithm, version
/// and parameters stored in it. The outputs are compared in constant time.
fn phc_matches(memory: &mut Vec<Block>, password: &[u8], stored: &str) -> anyhow::Result<bool> {
    let invalid =
        |error: argon2::password_hash::Error| anyhow!("stored password hash is invalid: {error}");
    let parsed = PasswordHash::new(stored).map_err(invalid)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(anyhow!(
            "stored password hash is invalid: it has no salt or no output"
        ));
    };
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(invalid)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|error| invalid(error.into()))?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(invalid)?;
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(invalid)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = Output::init_with(expected.len(), |output| {
        fill_output(memory, &argon2, &params, password, salt_bytes, output)
            .map_err(argon2::password_hash::Error::from)
    })
    .map_err(invalid)?;
    Ok(expected == computed)
}

/// Returns a hash of a random password with the configured cost, computed once.
fn dummy_hash(memory: &mut Vec<Block>, params: &Params) -> anyhow::Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let password = uuid::Uuid::new_v4().to_string();
    let hash = phc_hash(memory, params, password.as_bytes(), salt)
        .context("failed to compute dummy hash")?;
    Ok(DUMMY.get_or_init(|| hash))
}

#[cfg(test)]
mod tests {
    use argon2::PasswordHasher;

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

    #[test]
    fn phc_hash_matches_the_argon2_crate() {
        let params = Params::new(1024, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let expected = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password(b"Correct-Horse-9", salt.as_salt())
            .unwrap()
            .to_string();
        let mut memory = Vec::new();
        let hash = phc_hash(&mut memory, &params, b"Correct-Horse-9", salt).unwrap();
        assert_eq!(hash, expected);
    }

    #[test]
    fn stored_parameters_decide_the_check() {
        // An argon2i hash with more memory than the buffer has: the buffer grows.
        let params = Params::new(2048, 2, 1, None).unwrap();
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let stored = Argon2::new(Algorithm::Argon2i, Version::V0x10, params.clone())
            .hash_password(b"Correct-Horse-9", salt.as_salt())
            .unwrap()
            .to_string();
        let mut memory = vec![Block::default(); 1024];
        assert!(phc_matches(&mut memory, b"Correct-Horse-9", &stored).unwrap());
        assert_eq!(memory.len(), params.block_count());
        assert!(!phc_matches(&mut memory, b"Correct-Horse-8", &stored).unwrap());
    }

    #[test]
    fn malformed_stored_hash_is_an_error() {
        let mut memory = Vec::new();
        let error = phc_matches(&mut memory, b"x", "$argon2id$v=19$m=1024").unwrap_err();
        assert!(error
            .to_string()
            .contains("stored password hash is invalid"));
    }

    #[tokio::test]
    async fn memory_is_kept_for_each_permit() {
        let pool = cheap();
        let hashes = (0..8).map(|round| pool.hash(SecretString::from(format!("Password-{round}"))));
        futures::future::try_join_all(hashes).await.unwrap();
        let buffers = pool.memory.lock().unwrap();
        assert!(!buffers.is_empty());
        assert!(buffers.len() <= 2, "{} buffers", buffers.len());
        assert!(buffers.iter().all(|buffer| buffer.len() == 1024));
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
