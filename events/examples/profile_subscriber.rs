//! Keeps a local copy of every public profile current from `profiles.public.v1`, as a
//! workspace service would, and prints each change.
//!
//! ```sh
//! cargo run -p accounts-events --features kafka --example profile_subscriber -- \
//!     [--brokers 127.0.0.1:9092] [--topic profiles.public.v1] [--partitions 12] [--snapshot FILE]
//! ```
//!
//! With `--snapshot FILE` it also writes the whole copy as JSON to FILE after each change.

use std::time::Duration;

use accounts_events::subscriber::ProfileSubscriber;

fn argument(name: &str, default: &str) -> String {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|index| arguments.get(index + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = argument("--brokers", "127.0.0.1:9092");
    let topic = argument("--topic", "profiles.public.v1");
    let partitions: i32 = argument("--partitions", "12").parse()?;
    let snapshot = argument("--snapshot", "");
    let mut subscriber = ProfileSubscriber::new(&brokers, &topic, partitions)?;
    eprintln!("following {topic} on {brokers}; stop with Ctrl-C");
    loop {
        let changed = subscriber.poll(Duration::from_millis(500))?;
        for profile in &changed {
            println!("{}", serde_json::to_string(profile)?);
        }
        if !changed.is_empty() && !snapshot.is_empty() {
            let mut all: Vec<_> = subscriber.profiles().iter().collect();
            all.sort_by_key(|profile| profile.account_id);
            std::fs::write(&snapshot, serde_json::to_vec_pretty(&all)?)?;
        }
    }
}
