//! Load generator and benchmarks of the account settings services.

mod baseline;
mod generate;
mod load;
mod replay;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use accounts_platform::KafkaConfig;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use load::{Load, Mix, Op, Sample};
use report::{Figure, Percentiles, Series, Span, Target};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Measures the account settings services beside baselines taken in the same run.
#[derive(Parser)]
#[command(name = "accounts-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Load the running services, measure the baselines and the log replays, and write
    /// results.json, results.md and latency.svg.
    Run(Box<RunArgs>),
    /// Write a synthetic event log of registrations and profile updates to Kafka.
    GenerateLog {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[arg(long, default_value_t = 50_000)]
        accounts: u64,
        /// Events per account, the registration included.
        #[arg(long, default_value_t = EVENTS_PER_ACCOUNT)]
        events_per_account: u64,
        /// Accounts whose events interleave in the log.
        #[arg(long, default_value_t = 1_000)]
        group: u64,
    },
}

const EVENTS_PER_ACCOUNT: u64 = 20;

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the command service.
    #[arg(long, env = "COMMAND_ADDR", default_value = "127.0.0.1:8080")]
    command_addr: String,
    /// Address of the query service.
    #[arg(long, env = "QUERY_ADDR", default_value = "127.0.0.1:8081")]
    query_addr: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Partitions of the generated log, as many as the services use.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 12)]
    partitions: i32,
    /// A PostgreSQL database whose user may create databases. The run creates a database
    /// for the baselines and the rebuild, and drops it at the end.
    #[arg(
        long,
        env = "BENCH_ADMIN_DATABASE_URL",
        default_value = "postgres://accounts:accounts@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    admin_database_url: String,
    /// Length of each load phase, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Length of each baseline, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    baseline_seconds: u64,
    /// Concurrent clients of the closed-loop phases and the baselines.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: u64,
    /// Accounts the load registers and uses.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    accounts: u64,
    /// Loopback source addresses (127.0.1.1 and up) the simulated users come from.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=250))]
    source_addresses: u64,
    /// Events of the generated log that the rebuild and the takeover read. 0 skips both.
    #[arg(long, default_value_t = 1_000_000)]
    log_events: u64,
    /// Seconds of the dashboard mix sent before the measured phases and left out of the
    /// figures, so that the broker's JIT compiler and the caches are warm.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_seconds: u64,
    /// Skip the HTTP load and measure only the baselines and the log.
    #[arg(long)]
    skip_load: bool,
    /// Folder of the outputs.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Processes whose memory the run reports, as NAME=PID, separated by ','. Their
    /// resident memory is read from /proc before and after the load phases.
    #[arg(long = "process", env = "BENCH_PROCESSES", value_delimiter = ',', value_parser = parse_process)]
    processes: Vec<(String, u32)>,
    /// Lines about the set-up to print above the table, such as versions, separated by
    /// '|'.
    #[arg(long = "context", env = "BENCH_CONTEXT", value_delimiter = '|')]
    context: Vec<String>,
}

/// Runs the subcommand of `cli`.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        CliCommand::Run(args) => run(*args).await,
        CliCommand::GenerateLog {
            kafka,
            accounts,
            events_per_account,
            group,
        } => {
            accounts_platform::kafka::create_topics(&kafka)
                .await
                .context("failed to create the topics")?;
            let shape = generate::LogShape {
                accounts,
                events_per_account,
                group,
                partitions: kafka.partitions,
            };
            let (brokers, prefix, writing) = (
                kafka.brokers.clone(),
                kafka.topic_prefix.clone(),
                shape.clone(),
            );
            let elapsed = tokio::task::spawn_blocking(move || {
                generate::write_log(&brokers, &prefix, &writing)
            })
            .await
            .context("the log writer panicked")??;
            println!(
                "wrote {} events to {} in {:.1} s ({:.0} events/s)",
                shape.events(),
                kafka.topics().events,
                elapsed.as_secs_f64(),
                shape.events() as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
            );
            Ok(())
        }
    }
}

fn step(message: &str) {
    eprintln!("accounts-bench: {message}");
}

/// A stretch of load and the requests it sent.
struct Phase {
    name: &'static str,
    samples: Vec<Sample>,
    from: Duration,
    to: Duration,
}

impl Phase {
    fn seconds(&self) -> f64 {
        (self.to - self.from).as_secs_f64().max(f64::EPSILON)
    }

    fn of(&self, op: Op) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |sample| sample.op == op)
    }

    /// Returns the successful requests of `op` per second.
    fn throughput(&self, op: Option<Op>) -> f64 {
        let ok = self
            .samples
            .iter()
            .filter(|sample| sample.ok && op.is_none_or(|op| sample.op == op))
            .count();
        ok as f64 / self.seconds()
    }

    fn errors(&self) -> usize {
        self.samples.iter().filter(|sample| !sample.ok).count()
    }

    fn latency(&self, op: Op) -> Percentiles {
        Percentiles::of(self.of(op).map(|sample| sample.latency))
    }

    fn lag(&self) -> Percentiles {
        Percentiles::of(self.of(Op::UpdateProfile).filter_map(|sample| sample.lag))
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let command_url = format!("http://{}", args.command_addr);
    let query_url = format!("http://{}", args.query_addr);
    for (name, url) in [
        ("accounts-command", &command_url),
        ("accounts-query", &query_url),
    ] {
        let ready = reqwest::get(format!("{url}/readyz")).await;
        if !ready.is_ok_and(|response| response.status().is_success()) {
            bail!("{name} at {url} is not ready; start the stack with deploy/local/up");
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let length = Duration::from_secs(args.seconds);
    let baseline_length = Duration::from_secs(args.baseline_seconds);
    let clients = usize::try_from(args.clients)?;

    let before_load = resident_memory(&args.processes);
    let (phases, open_rate, accounts) = if args.skip_load {
        (Vec::new(), 0.0, 0)
    } else {
        drive_load(&args, &command_url, &query_url, clients, length).await?
    };
    let after_load = resident_memory(&args.processes);

    let database = format!("accounts_bench_{stamp}");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.admin_database_url)
        .await
        .context("failed to connect to the admin database")?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .context("failed to create the bench database")?;
    let url = database_url(&args.admin_database_url, &database)?;
    let measured = measure_machine(&args, &stamp, &url, clients, baseline_length).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin)
        .await;
    let machine = measured?;

    let at_end = resident_memory(&args.processes);
    let mut figures = figures(&phases, open_rate, &machine);
    figures.extend(memory_figures(&before_load, &after_load, &at_end));
    let mut context = vec![
        format!("run {stamp}, {} s of warm-up, {} s per load phase, {} s per baseline, {clients} closed-loop clients, {} accounts from {} source addresses", args.warmup_seconds, args.seconds, args.baseline_seconds, accounts, args.source_addresses),
        format!("mixed phases: {}% profile updates, {}% sign-ins, {}% session lists, {}% profile reads; the open loop runs at half the closed mixed throughput", Mix::DASHBOARD.update_profile, Mix::DASHBOARD.sign_in, Mix::DASHBOARD.list_sessions, Mix::DASHBOARD.read_profile),
        format!("{} cores, {}, {}", std::thread::available_parallelism().map_or(0, usize::from), memory(), machine.postgres_version),
    ];
    context.extend(args.context.iter().cloned());
    let table = report::markdown(&figures, &context);
    report::write_json(&args.out.join("results.json"), &figures)?;
    std::fs::write(args.out.join("results.md"), &table)?;
    let (series, spans) = chart_lines(&phases);
    report::chart(&args.out.join("latency.svg"), &series, &spans)?;
    println!("{table}");
    step(&format!(
        "wrote {0}/results.json, {0}/results.md and {0}/latency.svg",
        args.out.display()
    ));
    Ok(())
}

/// Registers the accounts and runs the four load phases.
async fn drive_load(
    args: &RunArgs,
    command_url: &str,
    query_url: &str,
    clients: usize,
    length: Duration,
) -> anyhow::Result<(Vec<Phase>, f64, usize)> {
    step(&format!("registering {} accounts", args.accounts));
    let load = Arc::new(
        Load::prepare(
            command_url,
            query_url,
            usize::try_from(args.accounts)?,
            usize::try_from(args.source_addresses)?,
            clients,
        )
        .await?,
    );

    if args.warmup_seconds > 0 {
        step(&format!("warming up for {} s", args.warmup_seconds));
        load.closed_loop(
            Mix::DASHBOARD,
            clients,
            Duration::from_secs(args.warmup_seconds),
        )
        .await;
    }

    let mut phases = Vec::new();
    for (name, mix) in [
        ("update", Mix::UPDATES),
        ("read", Mix::READS),
        ("mixed", Mix::DASHBOARD),
    ] {
        step(&format!(
            "closed loop '{name}' with {clients} clients for {} s",
            args.seconds
        ));
        let from = load.elapsed();
        let samples = load.closed_loop(mix, clients, length).await;
        phases.push(Phase {
            name,
            samples,
            from,
            to: load.elapsed(),
        });
    }
    let open_rate = phases.last().map_or(0.0, |mixed| mixed.throughput(None)) / 2.0;
    step(&format!(
        "open loop 'open' at {open_rate:.0} requests/s for {} s",
        args.seconds
    ));
    let from = load.elapsed();
    let samples = load
        .open_loop(Mix::DASHBOARD, open_rate, clients * 64, length)
        .await;
    phases.push(Phase {
        name: "open",
        samples,
        from,
        to: load.elapsed(),
    });

    Ok((phases, open_rate, load.account_count()))
}

/// The figures the run measured without the services.
struct Machine {
    produce: baseline::Rate,
    upserts: baseline::Rate,
    point_reads: f64,
    hashes: f64,
    log: Option<LogFigures>,
    postgres_version: String,
}

struct LogFigures {
    events: u64,
    write: f64,
    rebuild: replay::Rebuilt,
    takeover: replay::TakenOver,
}

async fn measure_machine(
    args: &RunArgs,
    stamp: &str,
    url: &str,
    clients: usize,
    length: Duration,
) -> anyhow::Result<Machine> {
    let prefix = format!("bench-{stamp}.");
    step(&format!(
        "baseline: transactional produce for {} s",
        length.as_secs()
    ));
    let produce = baseline::kafka_produce(
        &args.brokers,
        &format!("{prefix}baseline.produce"),
        args.partitions,
        clients,
        length,
    )
    .await?;

    let pool: PgPool = PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await
        .context("failed to connect to the bench database")?;
    accounts_platform::db::migrate(&pool).await?;
    let postgres_version: (String,) =
        sqlx::query_as("SELECT 'PostgreSQL ' || current_setting('server_version')")
            .fetch_one(&pool)
            .await?;
    let accounts = baseline::seed_accounts(&pool, usize::try_from(args.accounts)?).await?;
    step(&format!(
        "baseline: read-model upserts for {} s",
        length.as_secs()
    ));
    let upserts =
        baseline::postgres_upserts(&pool, &accounts, args.partitions, clients, length).await?;
    step(&format!("baseline: point reads for {} s", length.as_secs()));
    let point_reads = baseline::postgres_point_reads(&pool, &accounts, clients, length)
        .await?
        .per_second();
    step(&format!(
        "baseline: argon2id hashes for {} s",
        length.as_secs()
    ));
    let hashes = baseline::argon2_hashes(length).await?.per_second();

    let log = if args.log_events > 0 {
        let kafka = KafkaConfig {
            brokers: args.brokers.clone(),
            topic_prefix: prefix.clone(),
            partitions: args.partitions,
        };
        let measured = measure_log(&kafka, &pool, args.log_events).await;
        delete_topics(&kafka).await;
        Some(measured?)
    } else {
        None
    };
    pool.close().await;
    Ok(Machine {
        produce,
        upserts,
        point_reads,
        hashes,
        log,
        postgres_version: postgres_version.0,
    })
}

async fn measure_log(
    kafka: &KafkaConfig,
    pool: &PgPool,
    events: u64,
) -> anyhow::Result<LogFigures> {
    accounts_platform::kafka::create_topics(kafka).await?;
    let shape = generate::LogShape {
        accounts: events.div_ceil(EVENTS_PER_ACCOUNT),
        events_per_account: EVENTS_PER_ACCOUNT,
        group: 1_000,
        partitions: kafka.partitions,
    };
    step(&format!("writing a log of {} events", shape.events()));
    let (brokers, prefix, generating) = (
        kafka.brokers.clone(),
        kafka.topic_prefix.clone(),
        shape.clone(),
    );
    let written =
        tokio::task::spawn_blocking(move || generate::write_log(&brokers, &prefix, &generating))
            .await
            .context("the log writer panicked")??;
    step("rebuilding the read models from the log");
    let rebuild = replay::rebuild_read_models(kafka, pool).await?;
    step("taking over each partition as a decider");
    let takeover = replay::take_over_partitions(kafka).await?;
    Ok(LogFigures {
        events: shape.events(),
        write: shape.events() as f64 / written.as_secs_f64().max(f64::EPSILON),
        rebuild,
        takeover,
    })
}

async fn delete_topics(kafka: &KafkaConfig) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let topics = kafka.topics();
    let names = [
        &topics.commands,
        &topics.events,
        &topics.replies,
        &topics.public_profiles,
    ];
    let names: Vec<&str> = names.iter().map(|name| name.as_str()).collect();
    if let Err(error) = admin.delete_topics(&names, &AdminOptions::new()).await {
        step(&format!(
            "could not delete the topics of {}: {error}",
            kafka.topic_prefix
        ));
    }
}

/// Replaces the database name at the end of `url`.
fn database_url(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let Some((server, _)) = base.rsplit_once('/') else {
        bail!("the admin database URL has no database name");
    };
    Ok(match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    })
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or_else(
            || "memory unknown".to_owned(),
            |kib| format!("{:.0} GiB memory", kib / 1024.0 / 1024.0),
        )
}

fn parse_process(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid process '{text}': write it as NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("invalid pid '{pid}' of process '{name}': use a number"))?;
    Ok((name.to_owned(), pid))
}

/// The resident memory of a process, in MiB.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Resident {
    current: f64,
    /// The peak since the process started (`VmHWM`).
    peak: f64,
}

impl Resident {
    /// Reads `VmRSS` and `VmHWM` from a `/proc/<pid>/status` text.
    fn parse(status: &str) -> Option<Self> {
        let mebibytes = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<f64>().ok())
                .map(|kib| kib / 1024.0)
        };
        Some(Self {
            current: mebibytes("VmRSS:")?,
            peak: mebibytes("VmHWM:")?,
        })
    }
}

/// Reads the resident memory of each process, and of this one as `accounts-bench`.
fn resident_memory(processes: &[(String, u32)]) -> BTreeMap<String, Resident> {
    let mut measured = BTreeMap::new();
    let this = ("accounts-bench".to_owned(), std::process::id());
    for (name, pid) in processes.iter().chain([&this]) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
        match status.ok().as_deref().and_then(Resident::parse) {
            Some(resident) => {
                measured.insert(name.clone(), resident);
            }
            None => step(&format!(
                "could not read the memory of {name} (pid {pid}); is it running?"
            )),
        }
    }
    measured
}

/// Returns each process's resident memory before and after the load phases, and its peak
/// at the end of the run.
fn memory_figures(
    before_load: &BTreeMap<String, Resident>,
    after_load: &BTreeMap<String, Resident>,
    at_end: &BTreeMap<String, Resident>,
) -> Vec<Figure> {
    let mut figures = Vec::new();
    for (name, end) in at_end {
        for (moment, readings) in [("before_load", before_load), ("after_load", after_load)] {
            if let Some(resident) = readings.get(name) {
                figures.push(Figure::new(
                    format!("memory.{name}.{moment}"),
                    resident.current,
                    "MiB",
                ));
            }
        }
        // The kernel refreshes VmHWM lazily, so it can read below an earlier VmRSS.
        let peak = [before_load, after_load, at_end]
            .iter()
            .filter_map(|readings| readings.get(name))
            .fold(end.peak, |peak, resident| peak.max(resident.current));
        figures.push(Figure::new(format!("memory.{name}.peak"), peak, "MiB"));
    }
    figures
}

fn figures(phases: &[Phase], open_rate: f64, machine: &Machine) -> Vec<Figure> {
    let produce = Figure::new(
        "baseline.kafka_transactional_produce",
        machine.produce.per_second(),
        "ops/s",
    );
    let upserts = Figure::new(
        "baseline.postgres_upserts",
        machine.upserts.per_second(),
        "ops/s",
    );
    let point_reads = Figure::new("baseline.postgres_point_read", machine.point_reads, "ops/s");
    let hashes = Figure::new("baseline.argon2id_hashes", machine.hashes, "ops/s");
    let per_transaction =
        |rate: &baseline::Rate| rate.operations as f64 / rate.transactions.max(1) as f64;
    let mut figures = vec![
        produce.clone(),
        Figure::new(
            "baseline.kafka_transactional_produce.batch",
            per_transaction(&machine.produce),
            "ops/transaction",
        ),
        upserts.clone(),
        Figure::new(
            "baseline.postgres_upserts.batch",
            per_transaction(&machine.upserts),
            "ops/transaction",
        ),
        point_reads.clone(),
        hashes.clone(),
    ];
    let [update, read, mixed, open] = phases else {
        return figures;
    };

    let updates = update.throughput(Some(Op::UpdateProfile));
    figures.push(
        Figure::new("update.throughput", updates, "ops/s")
            .target(Target::RatioAtLeast { bound: 0.4 })
            .against(&produce),
    );
    figures.push(Figure::new("update.throughput_vs_upserts", updates, "ops/s").against(&upserts));
    figures.extend(update.latency(Op::UpdateProfile).figures("update.latency"));
    figures.extend(lag_figures(update, "update.lag"));
    figures.push(Figure::new(
        "update.errors",
        update.errors() as f64,
        "requests",
    ));

    figures.push(
        Figure::new(
            "read.throughput",
            read.throughput(Some(Op::ReadProfile)),
            "ops/s",
        )
        .target(Target::RatioAtLeast { bound: 0.5 })
        .against(&point_reads),
    );
    figures.extend(read.latency(Op::ReadProfile).figures("read.latency"));
    figures.push(Figure::new("read.errors", read.errors() as f64, "requests"));

    figures.push(Figure::new(
        "mixed.throughput",
        mixed.throughput(None),
        "ops/s",
    ));
    for op in Op::ALL {
        let throughput = Figure::new(
            format!("mixed.{}.throughput", op.name()),
            mixed.throughput(Some(op)),
            "ops/s",
        );
        figures.push(if op == Op::SignIn {
            throughput.against(&hashes)
        } else {
            throughput
        });
        figures.extend(
            mixed
                .latency(op)
                .figures(&format!("mixed.{}.latency", op.name())),
        );
    }
    figures.extend(lag_figures(mixed, "mixed.lag"));
    figures.push(Figure::new(
        "mixed.errors",
        mixed.errors() as f64,
        "requests",
    ));

    figures.push(Figure::new("open.offered", open_rate, "ops/s"));
    figures.push(Figure::new(
        "open.throughput",
        open.throughput(None),
        "ops/s",
    ));
    for op in Op::ALL {
        let mut latency = open
            .latency(op)
            .figures(&format!("open.{}.latency", op.name()));
        if op == Op::UpdateProfile {
            latency = latency
                .into_iter()
                .map(|figure| {
                    if figure.name.ends_with(".p99") {
                        figure.target(Target::ValueAtMost { bound: 50.0 })
                    } else {
                        figure
                    }
                })
                .collect();
        }
        figures.extend(latency);
    }
    figures.extend(lag_figures(open, "open.lag"));
    figures.push(Figure::new("open.errors", open.errors() as f64, "requests"));

    if let Some(log) = &machine.log {
        figures.push(Figure::new("log.events", log.events as f64, "events"));
        figures.push(Figure::new("log.write", log.write, "events/s"));
        figures.push(
            Figure::new(
                "rebuild.throughput",
                log.rebuild.events as f64 / log.rebuild.elapsed.as_secs_f64().max(f64::EPSILON),
                "events/s",
            )
            .target(Target::ValueAtLeast { bound: 50_000.0 }),
        );
        figures.push(Figure::new(
            "rebuild.elapsed",
            log.rebuild.elapsed.as_secs_f64(),
            "s",
        ));
        figures.push(Figure::new(
            "takeover.throughput",
            log.takeover.events as f64 / log.takeover.elapsed.as_secs_f64().max(f64::EPSILON),
            "events/s",
        ));
        figures.push(Figure::new(
            "takeover.slowest_partition",
            log.takeover.slowest.as_secs_f64(),
            "s",
        ));
        figures.push(Figure::new(
            "takeover.accounts",
            log.takeover.accounts as f64,
            "accounts",
        ));
    }
    figures
}

/// Returns the lag percentiles, with the p99 held to 100 ms.
fn lag_figures(phase: &Phase, prefix: &str) -> Vec<Figure> {
    phase
        .lag()
        .figures(prefix)
        .into_iter()
        .map(|figure| {
            if figure.name.ends_with(".p99") {
                figure.target(Target::ValueAtMost { bound: 100.0 })
            } else {
                figure
            }
        })
        .collect()
}

/// Returns the per-second p50 and p99 of profile updates and of reads over the whole load.
fn chart_lines(phases: &[Phase]) -> (Vec<Series>, Vec<Span>) {
    let mut commands: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    let mut reads: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    // Time counts from the first measured phase, after the warm-up.
    let origin = phases.first().map_or(Duration::ZERO, |phase| phase.from);
    for sample in phases.iter().flat_map(|phase| &phase.samples) {
        let second = sample.at.saturating_sub(origin).as_secs();
        match sample.op {
            Op::UpdateProfile => commands.entry(second).or_default().push(sample.latency),
            Op::ListSessions | Op::ReadProfile => {
                reads.entry(second).or_default().push(sample.latency)
            }
            // Sign-ins wait for argon2 and would hide the updates' line.
            Op::SignIn => {}
        }
    }
    let line = |label: &str,
                buckets: &BTreeMap<u64, Vec<Duration>>,
                pick: fn(&Percentiles) -> f64| Series {
        label: label.to_owned(),
        points: buckets
            .iter()
            .map(|(second, latencies)| {
                (
                    *second as f64 + 0.5,
                    pick(&Percentiles::of(latencies.iter().copied())),
                )
            })
            .collect(),
    };
    let series = vec![
        line("profile updates p50", &commands, |p| p.p50),
        line("profile updates p99", &commands, |p| p.p99),
        line("reads p50 (profile, sessions)", &reads, |p| p.p50),
        line("reads p99 (profile, sessions)", &reads, |p| p.p99),
    ];
    let spans = phases
        .iter()
        .map(|phase| Span {
            label: phase.name.to_owned(),
            from: phase.from.saturating_sub(origin).as_secs_f64(),
            to: phase.to.saturating_sub(origin).as_secs_f64(),
        })
        .collect();
    (series, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_name() {
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1:5432/postgres", "bench").unwrap(),
            "postgres://u:p@127.0.0.1:5432/bench"
        );
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1/postgres?sslmode=disable", "bench").unwrap(),
            "postgres://u:p@127.0.0.1/bench?sslmode=disable"
        );
    }

    #[test]
    fn resident_memory_parses_proc_status() {
        let status = "Name:\taccounts-comman\nVmHWM:\t  2019272 kB\nVmRSS:\t   204800 kB\n";
        assert_eq!(
            Resident::parse(status),
            Some(Resident {
                current: 200.0,
                peak: 2019272.0 / 1024.0
            })
        );
        assert_eq!(Resident::parse("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn peak_is_at_least_every_reading() {
        let reading = |current, peak| {
            BTreeMap::from([("accounts-query".to_owned(), Resident { current, peak })])
        };
        let figures = memory_figures(
            &reading(12.0, 12.0),
            &reading(31.4, 31.2),
            &reading(30.0, 31.2),
        );
        let peak = figures
            .iter()
            .find(|figure| figure.name == "memory.accounts-query.peak")
            .unwrap();
        assert_eq!(peak.value, 31.4);
        assert_eq!(figures.len(), 3);
    }

    #[test]
    fn process_is_name_equals_pid() {
        assert_eq!(
            parse_process("accounts-query=4242"),
            Ok(("accounts-query".to_owned(), 4242))
        );
        assert!(parse_process("accounts-query")
            .unwrap_err()
            .contains("NAME=PID"));
        assert!(parse_process("kafka=x")
            .unwrap_err()
            .contains("use a number"));
    }
}
