//! The benchmark harness, run for a few seconds against a test stack: every phase,
//! baseline and replay reports a figure, and the three outputs are written.

use std::collections::HashMap;
use std::path::Path;

use accounts_bench::{execute, Cli};
use clap::Parser;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{admin_database_url, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn bench_run_reports_all_figures() {
    let app = spawn_app(1).await;
    let output_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/e2e-bench")
        .join(Uuid::new_v4().simple().to_string());
    let address = |url: &str| url.trim_start_matches("http://").to_owned();
    let partitions = app.kafka.partitions.to_string();
    let output_arg = output_dir.display().to_string();
    // The test stack's services run in this process.
    let process = format!("test-stack={}", std::process::id());
    let cli = Cli::try_parse_from([
        "accounts-bench",
        "run",
        "--command-addr",
        &address(&app.command_url),
        "--query-addr",
        &address(&app.query_url),
        "--brokers",
        &app.kafka.brokers,
        "--partitions",
        &partitions,
        "--admin-database-url",
        &admin_database_url(),
        "--seconds",
        "1",
        "--baseline-seconds",
        "1",
        "--warmup-seconds",
        "0",
        "--clients",
        "4",
        "--accounts",
        "40",
        "--source-addresses",
        "20",
        "--log-events",
        "2000",
        "--out",
        &output_arg,
        "--process",
        &process,
        "--context",
        "end-to-end test",
    ])
    .unwrap();
    execute(cli).await.unwrap();

    let results: Vec<Value> =
        serde_json::from_slice(&std::fs::read(output_dir.join("results.json")).unwrap()).unwrap();
    let figures: HashMap<&str, &Value> = results
        .iter()
        .map(|figure| (figure["name"].as_str().unwrap(), figure))
        .collect();
    let value = |name: &str| {
        figures
            .get(name)
            .and_then(|figure| figure["value"].as_f64())
            .unwrap_or_else(|| panic!("{name} is missing from results.json"))
    };

    for name in [
        "baseline.kafka_transactional_produce",
        "baseline.postgres_upserts",
        "baseline.postgres_point_read",
        "baseline.argon2id_hashes",
        "update.throughput",
        "read.throughput",
        "mixed.throughput",
        "open.throughput",
        "rebuild.throughput",
        "takeover.throughput",
    ] {
        assert!(value(name) > 0.0, "{name} is {}", value(name));
    }
    for phase in ["update", "read", "mixed", "open"] {
        assert_eq!(value(&format!("{phase}.errors")), 0.0, "{phase}.errors");
    }
    for name in ["update.latency.p99", "update.lag.p99", "read.latency.p99"] {
        assert!(value(name) > 0.0, "{name} is {}", value(name));
    }
    assert!(value("update.latency.p50") <= value("update.latency.p99"));

    // Ratios are quotients of figures of the same run.
    let update = figures["update.throughput"];
    assert_eq!(
        update["baseline"].as_f64(),
        Some(value("baseline.kafka_transactional_produce"))
    );
    let ratio = update["ratio"].as_f64().unwrap();
    assert!(
        (ratio - value("update.throughput") / update["baseline"].as_f64().unwrap()).abs() < 1e-9
    );
    assert_eq!(
        figures["read.throughput"]["baseline_name"],
        "baseline.postgres_point_read"
    );

    // The replays read the whole generated log: 100 accounts of 20 events.
    assert_eq!(value("log.events"), 2000.0);
    assert_eq!(value("takeover.accounts"), 100.0);

    // Memory is read for the named process and for the harness itself.
    for name in [
        "memory.test-stack.before_load",
        "memory.test-stack.after_load",
        "memory.test-stack.peak",
        "memory.accounts-bench.peak",
    ] {
        assert!(value(name) > 0.0, "{name} is {}", value(name));
    }
    assert!(value("memory.test-stack.peak") >= value("memory.test-stack.after_load"));

    let table = std::fs::read_to_string(output_dir.join("results.md")).unwrap();
    assert!(table.contains("end-to-end test"), "{table}");
    assert!(table.contains("| update.throughput |"), "{table}");
    let chart = std::fs::read_to_string(output_dir.join("latency.svg")).unwrap();
    assert!(chart.contains("<svg"), "latency.svg is not an SVG");
    assert!(
        chart.contains("polyline") || chart.contains("<path"),
        "latency.svg has no lines"
    );

    std::fs::remove_dir_all(&output_dir).unwrap();
}
