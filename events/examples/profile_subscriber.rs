//! Keeps a local copy of every public profile current from `profiles.public.v1`, as a
//! workspace service would, and prints each change.
//!
//! ```sh
//! cargo run -p accounts-events --features kafka --example profile_subscriber -- \
//!     [--brokers 127.0.0.1:9092] [--topic profiles.public.v1] [--snapshot FILE]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use accounts_events::subscriber::ProfileSubscriber;
use clap::Parser;

/// Follows profiles.public.v1 from its first record and prints each changed profile as a
/// JSON line.
#[derive(Parser)]
#[command(name = "profile_subscriber")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic, with the stack's TOPIC_PREFIX in front when it has one.
    #[arg(long, default_value = "profiles.public.v1")]
    topic: String,
    /// Also write the whole copy as JSON to this file after each change.
    #[arg(long)]
    snapshot: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut subscriber = ProfileSubscriber::new(&args.brokers, &args.topic)
        .map_err(|error| format!("cannot follow {} on {}: {error}", args.topic, args.brokers))?;
    eprintln!(
        "following {} on {}; stop with Ctrl-C",
        args.topic, args.brokers
    );
    loop {
        let changed = subscriber.poll(Duration::from_millis(500))?;
        for profile in &changed {
            println!("{}", serde_json::to_string(profile)?);
        }
        if let (false, Some(path)) = (changed.is_empty(), &args.snapshot) {
            let mut all: Vec<_> = subscriber.profiles().iter().collect();
            all.sort_by_key(|profile| profile.account_id);
            std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
        }
    }
}
