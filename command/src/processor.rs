//! Decider workers: the single writer of each event-topic partition.
//!
//! Workers form a consumer group on the command topic. The owner of command partition p is
//! the only writer of event partition p, and it writes through a transactional producer
//! whose `transactional.id` is fixed per partition (`<prefix>accounts-decider-<p>`):
//!
//! 1. On assignment, the new owner calls `init_transactions` with that id. The broker then
//!    fences the previous owner's producer and aborts its open transaction, so a stalled
//!    or crashed owner can never commit again. KIP-447 group-metadata fencing would also
//!    reject the zombie's commit, but its open transaction would block read_committed
//!    readers until it timed out. A fixed id per partition aborts it at once.
//! 2. It then reads the committed command offset and rebuilds every aggregate of the
//!    partition from event partition p with read_committed, up to the end of the log.
//! 3. For each batch of commands it runs `decide` and, in one Kafka transaction, appends
//!    the events, the replies and the consumed command offsets. If the transaction fails,
//!    nothing of it is visible and the worker restarts from the committed offsets.
//!
//! A command id seen before (an `Idempotency-Key` retry) gets its first outcome and appends
//! nothing. Outcomes of accepted commands are rebuilt from the events' command ids.
//! Outcomes of rejected commands are kept in memory only, so after a takeover a retry of a
//! rejected command is decided again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accounts_events::envelope::{record_hash, Decoded};
use accounts_events::{
    AccountState, AggregateId, EmailClaimState, EventMeta, RecordedEvent, WorkspaceState,
};
use accounts_platform::kafka::{client_config, EndOfPartitionIsExpected};
use accounts_platform::{KafkaConfig, Position};
use anyhow::{anyhow, bail, Context as _};
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::decider::{account_of, decide, Answer, EventTarget, Rejection, Target};
use crate::wire::{Command, CommandEnvelope, Outcome, Reply};

/// Most commands decided in one transaction.
const MAX_BATCH: usize = 500;
/// How long a batch waits for more commands once it has one.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Outcomes remembered per partition for idempotent retries.
const MAX_REMEMBERED_OUTCOMES: usize = 200_000;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the decider workers.
#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    pub kafka: KafkaConfig,
    /// The CloudEvents `source` of the events written.
    pub source: String,
}

/// Stops a worker, or makes it die at a chosen point to test takeovers.
#[derive(Debug, Default)]
pub struct WorkerControl {
    stop: AtomicBool,
    crash_before_commit: AtomicBool,
    batches_committed: AtomicU64,
}

impl WorkerControl {
    /// Asks the worker to finish its current batch and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Makes the worker stop dead after it has written a batch's events and replies but
    /// before it commits them, leaving its transaction open as a crashed process would.
    pub fn crash_before_next_commit(&self) {
        self.crash_before_commit.store(true, Ordering::SeqCst);
    }

    /// Returns how many transactions the worker committed.
    pub fn batches_committed(&self) -> u64 {
        self.batches_committed.load(Ordering::SeqCst)
    }
}

/// Returns the transactional id of the writer of event partition `partition`. It is the
/// same for every owner of the partition, so each new owner fences the one before.
pub fn transactional_id(topic_prefix: &str, partition: i32) -> String {
    format!("{topic_prefix}accounts-decider-{partition}")
}

/// Starts a worker on its own thread. It restarts itself after failures until stopped.
pub fn spawn_worker(
    config: ProcessorConfig,
    control: Arc<WorkerControl>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("decider".to_owned())
        .spawn(move || supervise(&config, &control))
}

fn supervise(config: &ProcessorConfig, control: &WorkerControl) {
    let mut failures = 0_u32;
    while !control.stop.load(Ordering::SeqCst) {
        match Worker::new(config, control).and_then(|mut worker| worker.run()) {
            Ok(()) => return,
            Err(error) if error.is::<Crashed>() => {
                tracing::warn!("decider worker crashed on request");
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::error!(
                    error = format!("{error:#}"),
                    failures,
                    "decider worker failed; restarting"
                );
                std::thread::sleep(Duration::from_millis(200 * u64::from(failures.min(10))));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("worker crashed on request")]
struct Crashed;

/// Records assignment changes reported during `poll`, for the worker loop to act on.
#[derive(Default)]
struct AssignmentTracker {
    topic: String,
    changes: Mutex<Vec<AssignmentChange>>,
}

enum AssignmentChange {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

impl AssignmentTracker {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect()
    }

    fn record(&self, change: AssignmentChange) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }

    fn take(&self) -> Vec<AssignmentChange> {
        self.changes
            .lock()
            .map(|mut changes| std::mem::take(&mut *changes))
            .unwrap_or_default()
    }
}

impl ClientContext for AssignmentTracker {}

impl ConsumerContext for AssignmentTracker {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.record(AssignmentChange::Revoked(self.partitions(list)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.record(AssignmentChange::Assigned(self.partitions(list)));
        }
    }
}

/// Collects the offsets the broker assigned to produced records, by record index.
#[derive(Default)]
struct DeliveryRecorder {
    offsets: Mutex<HashMap<usize, Result<i64, KafkaError>>>,
}

impl ClientContext for DeliveryRecorder {}

impl ProducerContext for DeliveryRecorder {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, index: usize) {
        let outcome = match result {
            Ok(message) => Ok(message.offset()),
            Err((error, _)) => Err(error.clone()),
        };
        if let Ok(mut offsets) = self.offsets.lock() {
            offsets.insert(index, outcome);
        }
    }
}

/// The state a worker keeps for the aggregates of one partition.
#[derive(Default)]
struct PartitionState {
    accounts: HashMap<Uuid, AccountState>,
    claims: HashMap<String, EmailClaimState>,
    workspaces: HashMap<Uuid, WorkspaceState>,
    /// The record hash of each aggregate's last event, by aggregate key, which the next
    /// event carries as `previoushash`.
    hashes: HashMap<String, String>,
    /// The next offset after each account's or workspace's last event.
    positions: HashMap<Uuid, i64>,
    outcomes: HashMap<Uuid, Outcome>,
    /// Request digests of the remembered commands, where known.
    digests: HashMap<Uuid, String>,
    outcome_order: VecDeque<Uuid>,
}

impl PartitionState {
    fn remember(&mut self, command_id: Uuid, outcome: Outcome) {
        if self.outcomes.insert(command_id, outcome).is_none() {
            self.outcome_order.push_back(command_id);
        }
        while self.outcome_order.len() > MAX_REMEMBERED_OUTCOMES {
            if let Some(oldest) = self.outcome_order.pop_front() {
                self.outcomes.remove(&oldest);
                self.digests.remove(&oldest);
            }
        }
    }
}

struct OwnedPartition {
    producer: BaseProducer<DeliveryRecorder>,
    state: PartitionState,
    /// Commands below this offset were handled by an earlier owner.
    next_command_offset: i64,
}

struct Worker<'a> {
    config: &'a ProcessorConfig,
    control: &'a WorkerControl,
    consumer: BaseConsumer<AssignmentTracker>,
    owned: BTreeMap<i32, OwnedPartition>,
    topics: accounts_events::Topics,
    undecodable_commands: u64,
}

/// A command read from Kafka.
struct Incoming {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

impl<'a> Worker<'a> {
    fn new(config: &'a ProcessorConfig, control: &'a WorkerControl) -> anyhow::Result<Self> {
        let topics = config.kafka.topics();
        let tracker = AssignmentTracker {
            topic: topics.commands.clone(),
            changes: Mutex::default(),
        };
        let consumer: BaseConsumer<AssignmentTracker> = client_config(&config.kafka)
            .set(
                "group.id",
                format!("{}accounts-deciders", config.kafka.topic_prefix),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "10")
            .create_with_context(tracker)
            .context("failed to create the command consumer")?;
        consumer
            .subscribe(&[&topics.commands])
            .with_context(|| format!("failed to subscribe to {}", topics.commands))?;
        Ok(Self {
            config,
            control,
            consumer,
            owned: BTreeMap::new(),
            topics,
            undecodable_commands: 0,
        })
    }

    fn run(&mut self) -> anyhow::Result<()> {
        while !self.control.stop.load(Ordering::SeqCst) {
            let batch = self.poll_batch()?;
            let mut by_partition: BTreeMap<i32, Vec<Incoming>> = BTreeMap::new();
            for incoming in batch {
                by_partition
                    .entry(incoming.partition)
                    .or_default()
                    .push(incoming);
            }
            self.process_all(by_partition)?;
        }
        tracing::info!("decider worker stopped");
        Ok(())
    }

    /// Decides and commits each partition's commands in a transaction of its own, the
    /// partitions at the same time: a commit mostly waits for the broker, and partitions
    /// share no state.
    fn process_all(
        &mut self,
        mut by_partition: BTreeMap<i32, Vec<Incoming>>,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            control,
            consumer,
            owned,
            topics,
            undecodable_commands,
        } = self;
        let (config, control, consumer, topics) = (*config, *control, &*consumer, &*topics);
        let work: Vec<(i32, &mut OwnedPartition, Vec<Incoming>)> = owned
            .iter_mut()
            .filter_map(|(partition, owned)| {
                by_partition
                    .remove(partition)
                    .map(|commands| (*partition, owned, commands))
            })
            .collect();
        let results: Vec<(i32, u64, anyhow::Result<()>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .into_iter()
                .map(|(partition, owned, commands)| {
                    let handle = scope.spawn(move || {
                        let mut undecodable = 0;
                        let result = process(
                            config,
                            control,
                            consumer,
                            topics,
                            partition,
                            owned,
                            commands,
                            &mut undecodable,
                        );
                        (undecodable, result)
                    });
                    (partition, handle)
                })
                .collect();
            handles
                .into_iter()
                .map(|(partition, handle)| match handle.join() {
                    Ok((undecodable, result)) => (partition, undecodable, result),
                    Err(_) => (
                        partition,
                        0,
                        Err(anyhow!(
                            "the batch thread of partition {partition} panicked"
                        )),
                    ),
                })
                .collect()
        });
        let mut first_error = None;
        for (partition, undecodable, result) in results {
            *undecodable_commands += undecodable;
            if let Err(error) = result {
                if error.is::<Crashed>() {
                    // A crashed process leaves its transaction open, and the next owner aborts it.
                    if let Some(owned) = owned.remove(&partition) {
                        std::mem::forget(owned.producer);
                    }
                }
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Polls commands until the batch is full or the batch window has passed, applying
    /// assignment changes as they come.
    fn poll_batch(&mut self) -> anyhow::Result<Vec<Incoming>> {
        let mut batch: Vec<Incoming> = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let timeout = match deadline {
                None => Duration::from_millis(100),
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            };
            let polled = self.consumer.poll(timeout).map(|result| {
                result.map(|message| Incoming {
                    partition: message.partition(),
                    offset: message.offset(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                })
            });
            self.apply_assignment_changes(&mut batch)?;
            match polled {
                Some(Ok(incoming)) => {
                    batch.push(incoming);
                    deadline.get_or_insert_with(|| Instant::now() + BATCH_WINDOW);
                }
                Some(Err(error)) => tracing::warn!(%error, "command consumer error"),
                None if batch.is_empty() && !self.control.stop.load(Ordering::SeqCst) => continue,
                None => return Ok(batch),
            }
            if batch.len() >= MAX_BATCH
                || deadline.is_some_and(|deadline| Instant::now() >= deadline)
            {
                return Ok(batch);
            }
        }
    }

    fn apply_assignment_changes(&mut self, batch: &mut Vec<Incoming>) -> anyhow::Result<()> {
        for change in self.consumer.context().take() {
            match change {
                AssignmentChange::Revoked(partitions) => {
                    for partition in partitions {
                        self.owned.remove(&partition);
                        batch.retain(|incoming| incoming.partition != partition);
                        tracing::info!(partition, "released partition");
                    }
                }
                AssignmentChange::Assigned(partitions) => {
                    // Partitions are rebuilt in parallel: each waits mostly on the broker.
                    let this = &*self;
                    let acquired: Vec<anyhow::Result<(i32, OwnedPartition)>> =
                        std::thread::scope(|scope| {
                            let handles: Vec<_> = partitions
                                .iter()
                                .map(|partition| {
                                    scope.spawn(move || {
                                        this.acquire(*partition).map(|owned| (*partition, owned))
                                    })
                                })
                                .collect();
                            handles
                                .into_iter()
                                .map(|handle| {
                                    handle.join().unwrap_or_else(|_| {
                                        Err(anyhow!("partition rebuild thread panicked"))
                                    })
                                })
                                .collect()
                        });
                    for result in acquired {
                        let (partition, owned) = result?;
                        self.owned.insert(partition, owned);
                    }
                }
            }
        }
        Ok(())
    }

    /// Fences the previous owner, then rebuilds the partition's state.
    #[tracing::instrument(skip(self), fields(events = tracing::field::Empty))]
    fn acquire(&self, partition: i32) -> anyhow::Result<OwnedPartition> {
        let started = Instant::now();
        let producer: BaseProducer<DeliveryRecorder> = client_config(&self.config.kafka)
            .set(
                "transactional.id",
                transactional_id(&self.config.kafka.topic_prefix, partition),
            )
            .set("transaction.timeout.ms", "15000")
            .set("linger.ms", "1")
            .create_with_context(DeliveryRecorder::default())
            .context("failed to create the event producer")?;
        producer.init_transactions(KAFKA_TIMEOUT).with_context(|| {
            format!("failed to initialise transactions for partition {partition}")
        })?;

        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(&self.topics.commands, partition);
        let committed = self
            .consumer
            .committed_offsets(wanted, KAFKA_TIMEOUT)
            .with_context(|| {
                format!("failed to read the committed offset of command partition {partition}")
            })?;
        let next_command_offset = committed
            .find_partition(&self.topics.commands, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .unwrap_or(0);

        let (state, events) = rebuild(&self.config.kafka, &self.topics.events, partition)?;
        tracing::Span::current().record("events", events);
        metrics::histogram!("decider_rebuild_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(
            partition,
            events,
            next_command_offset,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "acquired partition"
        );
        Ok(OwnedPartition {
            producer,
            state,
            next_command_offset,
        })
    }
}

/// Decides a partition's commands and commits the events, the replies and the command
/// offsets in one transaction. An error of kind [`Crashed`] leaves the transaction open.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(partition, commands = commands.len()))]
fn process(
    config: &ProcessorConfig,
    control: &WorkerControl,
    consumer: &BaseConsumer<AssignmentTracker>,
    topics: &accounts_events::Topics,
    partition: i32,
    owned: &mut OwnedPartition,
    commands: Vec<Incoming>,
    undecodable: &mut u64,
) -> anyhow::Result<()> {
    let commands: Vec<Incoming> = commands
        .into_iter()
        .filter(|incoming| incoming.offset >= owned.next_command_offset)
        .collect();
    let Some(last_offset) = commands.last().map(|incoming| incoming.offset) else {
        return Ok(());
    };
    let started = Instant::now();
    owned
        .producer
        .begin_transaction()
        .context("failed to begin transaction")?;

    let result = decide_batch(config, topics, partition, owned, &commands, undecodable).and_then(
        |decided| {
            if control.crash_before_commit.load(Ordering::SeqCst) {
                return Err(anyhow!(Crashed));
            }
            let mut offsets = TopicPartitionList::new();
            offsets.add_partition_offset(
                &topics.commands,
                partition,
                Offset::Offset(last_offset + 1),
            )?;
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| anyhow!("the command consumer has no group metadata"))?;
            owned
                .producer
                .send_offsets_to_transaction(&offsets, &metadata, KAFKA_TIMEOUT)
                .context("failed to add command offsets to the transaction")?;
            drain(&owned.producer).context("failed to deliver replies")?;
            owned
                .producer
                .commit_transaction(KAFKA_TIMEOUT)
                .context("failed to commit transaction")?;
            Ok(decided)
        },
    );

    match result {
        Ok(decided) => {
            decided.apply(&mut owned.state);
            owned.next_command_offset = last_offset + 1;
            control.batches_committed.fetch_add(1, Ordering::SeqCst);
            metrics::histogram!("decider_batch_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("decider_commands_total").increment(commands.len() as u64);
            Ok(())
        }
        Err(error) if error.is::<Crashed>() => Err(error),
        Err(error) => {
            if let Err(abort) = owned.producer.abort_transaction(KAFKA_TIMEOUT) {
                tracing::warn!(error = %abort, partition, "failed to abort transaction");
            }
            Err(error.context(format!(
                "failed to process commands of partition {partition}"
            )))
        }
    }
}

/// The result of a batch, applied to the partition's state only after its commit.
#[derive(Default)]
struct Decided {
    accounts: HashMap<Uuid, AccountState>,
    claims: HashMap<String, EmailClaimState>,
    workspaces: HashMap<Uuid, WorkspaceState>,
    positions: HashMap<Uuid, i64>,
    /// The record hash of each aggregate's last event, by aggregate key.
    hashes: HashMap<String, String>,
    outcomes: Vec<(Uuid, Outcome)>,
    digests: HashMap<Uuid, String>,
}

impl Decided {
    fn apply(self, state: &mut PartitionState) {
        state.accounts.extend(self.accounts);
        state.claims.extend(self.claims);
        state.workspaces.extend(self.workspaces);
        state.hashes.extend(self.hashes);
        state.positions.extend(self.positions);
        state.digests.extend(self.digests);
        for (command_id, outcome) in self.outcomes {
            state.remember(command_id, outcome);
        }
    }

    fn account(&self, state: &PartitionState, id: Uuid) -> AccountState {
        self.accounts
            .get(&id)
            .or_else(|| state.accounts.get(&id))
            .cloned()
            .unwrap_or_default()
    }

    fn claim(&self, state: &PartitionState, address: &str) -> EmailClaimState {
        self.claims
            .get(address)
            .or_else(|| state.claims.get(address))
            .cloned()
            .unwrap_or_default()
    }

    fn last_hash(&self, state: &PartitionState, key: &str) -> Option<String> {
        self.hashes
            .get(key)
            .or_else(|| state.hashes.get(key))
            .cloned()
    }

    fn workspace(&self, state: &PartitionState, id: Uuid) -> WorkspaceState {
        self.workspaces
            .get(&id)
            .or_else(|| state.workspaces.get(&id))
            .cloned()
            .unwrap_or_default()
    }

    fn outcome(&self, state: &PartitionState, command_id: Uuid) -> Option<Outcome> {
        self.outcomes
            .iter()
            .rev()
            .find(|(id, _)| *id == command_id)
            .map(|(_, outcome)| outcome.clone())
            .or_else(|| state.outcomes.get(&command_id).cloned())
    }

    fn digest(&self, state: &PartitionState, command_id: Uuid) -> Option<String> {
        self.digests
            .get(&command_id)
            .or_else(|| state.digests.get(&command_id))
            .cloned()
    }

    fn position(&self, state: &PartitionState, account: Uuid) -> Option<i64> {
        self.positions
            .get(&account)
            .or_else(|| state.positions.get(&account))
            .copied()
    }
}

/// An accepted command whose position is known only once its events are delivered.
struct PendingReply {
    envelope: CommandEnvelope,
    outcome: Outcome,
    /// Index of the command's last event record, if it appended any.
    last_event: Option<usize>,
    /// False when a later step of a saga replies to the request.
    answer_now: bool,
}

fn decide_batch(
    config: &ProcessorConfig,
    topics: &accounts_events::Topics,
    partition: i32,
    owned: &OwnedPartition,
    commands: &[Incoming],
    undecodable: &mut u64,
) -> anyhow::Result<Decided> {
    let mut decided = Decided::default();
    let mut replies: Vec<PendingReply> = Vec::new();
    let mut record_index = 0_usize;
    let mut last_event_account: HashMap<usize, Uuid> = HashMap::new();
    let now = Utc::now();

    let mut first_in_batch: HashMap<Uuid, usize> = HashMap::new();
    for incoming in commands {
        let envelope: CommandEnvelope = match serde_json::from_slice(&incoming.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                *undecodable += 1;
                metrics::counter!("decider_undecodable_commands_total").increment(1);
                if undecodable.is_power_of_two() {
                    tracing::error!(%error, partition, offset = incoming.offset, total = *undecodable, "skipped undecodable command");
                }
                continue;
            }
        };
        // A retry in the same batch as its original gets the original's outcome. The
        // original's events are not committed yet, so the partition state lacks them.
        if let Some(first) = first_in_batch
            .get(&envelope.command_id)
            .and_then(|index| replies.get(*index))
        {
            let (mut outcome, mut last_event) = (first.outcome.clone(), first.last_event);
            if differs(
                first.envelope.request_digest.as_deref(),
                envelope.request_digest.as_deref(),
            ) {
                outcome = Outcome::Rejected {
                    rejection: Rejection::IdempotencyKeyReused,
                };
                last_event = None;
            }
            replies.push(PendingReply {
                envelope,
                outcome,
                last_event,
                answer_now: first.answer_now,
            });
            continue;
        }
        if let Some(mut outcome) = decided.outcome(&owned.state, envelope.command_id) {
            let original = decided.digest(&owned.state, envelope.command_id);
            if differs(original.as_deref(), envelope.request_digest.as_deref()) {
                outcome = Outcome::Rejected {
                    rejection: Rejection::IdempotencyKeyReused,
                };
            }
            replies.push(PendingReply {
                envelope,
                outcome,
                last_event: None,
                answer_now: true,
            });
            continue;
        }

        let aggregate = envelope.command.aggregate();
        let account_id = account_of(&envelope.command);
        let claim_key = match &aggregate {
            AggregateId::EmailClaim(address) => Some(address.clone()),
            AggregateId::Account(_) | AggregateId::Workspace(_) => None,
        };
        let workspace_id = match &aggregate {
            AggregateId::Workspace(id) => Some(*id),
            AggregateId::Account(_) | AggregateId::EmailClaim(_) => None,
        };
        let registration = matches!(envelope.command, Command::RegisterAccount { .. });
        // Commands for a claim or a workspace touch no account, except registration, which
        // creates the account in the claim's partition.
        let account_here = matches!(aggregate, AggregateId::Account(_)) || registration;
        let partitions = config.kafka.partitions;
        let addressed_here = envelope.aggregate_key == aggregate.key()
            && aggregate.partition(partitions) == partition
            && (!account_here
                || AggregateId::Account(account_id).partition(partitions) == partition);

        let account = if account_here {
            decided.account(&owned.state, account_id)
        } else {
            AccountState::default()
        };
        let claim = claim_key
            .as_deref()
            .map(|address| decided.claim(&owned.state, address));
        let workspace = workspace_id.map(|id| decided.workspace(&owned.state, id));
        let result = if !addressed_here {
            Err(Rejection::Misaddressed)
        } else {
            let target = match (&claim, &workspace, registration) {
                (Some(claim), _, true) => Target::Registration {
                    claim,
                    account: &account,
                },
                (Some(claim), _, false) => Target::Claim(claim),
                (None, Some(workspace), _) => Target::Workspace(workspace),
                (None, None, _) => Target::Account(&account),
            };
            decide(target, &envelope.command, envelope.expected_version, now)
        };

        let decision = match result {
            Ok(decision) => decision,
            Err(rejection) => {
                let outcome = Outcome::Rejected { rejection };
                decided
                    .outcomes
                    .push((envelope.command_id, outcome.clone()));
                first_in_batch.insert(envelope.command_id, replies.len());
                replies.push(PendingReply {
                    envelope,
                    outcome,
                    last_event: None,
                    answer_now: true,
                });
                continue;
            }
        };

        let mut account = account;
        let mut claim = claim.unwrap_or_default();
        let mut workspace = workspace.unwrap_or_default();
        let mut last_event = None;
        // Replies of workspace commands carry the workspace's version and position.
        let (replied_id, position_key) = match workspace_id {
            Some(id) => (id, id),
            None => (account_id, account_id),
        };
        for (target, event) in decision.events {
            let (subject_key, aggregate_type, sequence) = match (target, &claim_key, workspace_id) {
                (EventTarget::EmailClaim, Some(address), _) => (
                    AggregateId::EmailClaim(address.clone()).key(),
                    "email_claim",
                    claim.version + 1,
                ),
                (EventTarget::Workspace, _, Some(id)) => (
                    AggregateId::Workspace(id).key(),
                    "workspace",
                    workspace.version + 1,
                ),
                _ => (account_id.to_string(), "account", account.version + 1),
            };
            let recorded = RecordedEvent {
                meta: EventMeta {
                    event_id: Uuid::now_v7(),
                    source: config.source.clone(),
                    time: now,
                    subject: subject_key.clone(),
                    aggregate_type: aggregate_type.to_owned(),
                    sequence,
                    command_id: envelope.command_id,
                    correlation_id: envelope.correlation_id,
                    causation_id: envelope.command_id,
                    actor: envelope.actor.clone(),
                    request_digest: envelope.request_digest.clone(),
                    previous_hash: decided.last_hash(&owned.state, &subject_key),
                },
                event,
            };
            let payload = recorded.encode().context("failed to encode event")?;
            decided
                .hashes
                .insert(subject_key.clone(), record_hash(&payload));
            match target {
                EventTarget::EmailClaim => claim.evolve(&recorded),
                EventTarget::Account => account.evolve(&recorded),
                EventTarget::Workspace => workspace.evolve(&recorded),
            }
            send_event(
                &owned.producer,
                &topics.events,
                partition,
                &recorded,
                &payload,
                record_index,
            )?;
            if target != EventTarget::EmailClaim {
                last_event_account.insert(record_index, position_key);
                last_event = Some(record_index);
            }
            record_index += 1;
        }
        if let Some(next) = decision.next {
            send_next_step(&owned.producer, topics, partitions, &envelope, next, now)?;
        }

        tracing::debug!(
            command = envelope.command.kind(),
            command_id = %envelope.command_id,
            %account_id,
            answer = ?decision.answer,
            "decided command"
        );
        let answer_now = decision.answer != Answer::Later;
        let outcome = match decision.answer {
            Answer::Rejected(rejection) => Outcome::Rejected { rejection },
            Answer::Accepted | Answer::Later => Outcome::Accepted {
                account_id: replied_id,
                version: if workspace_id.is_some() {
                    workspace.version
                } else {
                    account.version
                },
                position: decided
                    .position(&owned.state, position_key)
                    .map(|offset| Position { partition, offset }.to_string()),
            },
        };
        if let Some(address) = claim_key {
            decided.claims.insert(address, claim);
        }
        if account_here {
            decided.accounts.insert(account_id, account);
        }
        if let Some(id) = workspace_id {
            decided.workspaces.insert(id, workspace);
        }
        if let (Some(digest), Some(_)) = (&envelope.request_digest, last_event) {
            decided.digests.insert(envelope.command_id, digest.clone());
        }
        first_in_batch.insert(envelope.command_id, replies.len());
        replies.push(PendingReply {
            envelope,
            outcome,
            last_event,
            answer_now,
        });
    }

    let offsets = wait_for_deliveries(&owned.producer, record_index)?;
    for (index, account_id) in last_event_account {
        if let Some(offset) = offsets.get(index) {
            let next = offset + 1;
            let entry = decided.positions.entry(account_id).or_insert(next);
            *entry = (*entry).max(next);
        }
    }
    for reply in replies {
        let outcome = match (reply.outcome, reply.last_event) {
            (
                Outcome::Accepted {
                    account_id,
                    version,
                    ..
                },
                Some(index),
            ) => Outcome::Accepted {
                account_id,
                version,
                position: offsets.get(index).map(|offset| {
                    Position {
                        partition,
                        offset: offset + 1,
                    }
                    .to_string()
                }),
            },
            (outcome, _) => outcome,
        };
        if reply.last_event.is_some() {
            decided
                .outcomes
                .push((reply.envelope.command_id, outcome.clone()));
        }
        if reply.answer_now {
            send_reply(&owned.producer, &topics.replies, &reply.envelope, outcome)?;
        }
    }
    Ok(decided)
}

/// Returns true when both digests are known and differ: the same command id was sent for
/// another request.
fn differs(original: Option<&str>, retry: Option<&str>) -> bool {
    matches!((original, retry), (Some(original), Some(retry)) if original != retry)
}

fn traceparent(correlation_id: Uuid, event_id: Uuid) -> String {
    let span = event_id.as_u64_pair().1;
    format!("00-{}-{span:016x}-01", correlation_id.simple())
}

/// Sends an event record whose value is `payload`, the encoding of `recorded`.
fn send_event(
    producer: &BaseProducer<DeliveryRecorder>,
    topic: &str,
    partition: i32,
    recorded: &RecordedEvent,
    payload: &[u8],
    index: usize,
) -> anyhow::Result<()> {
    let traceparent = traceparent(recorded.meta.correlation_id, recorded.meta.event_id);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some(accounts_events::CONTENT_TYPE),
        })
        .insert(Header {
            key: "traceparent",
            value: Some(&traceparent),
        });
    let record = BaseRecord::with_opaque_to(topic, index)
        .partition(partition)
        .key(&recorded.meta.subject)
        .payload(payload)
        .headers(headers);
    producer
        .send(record)
        .map_err(|(error, _)| anyhow!(error).context("failed to queue event"))
}

/// Sends the next step of a saga to the partition of its aggregate. It carries the
/// original request's reply route, so the step that finishes the saga replies to it.
/// Its command id derives from the original's, so the step is the same on every replay.
fn send_next_step(
    producer: &BaseProducer<DeliveryRecorder>,
    topics: &accounts_events::Topics,
    partitions: i32,
    original: &CommandEnvelope,
    command: Command,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let aggregate = command.aggregate();
    let envelope = CommandEnvelope {
        command_id: Uuid::new_v5(&original.command_id, command.kind().as_bytes()),
        request_id: original.request_id,
        aggregate_key: aggregate.key(),
        expected_version: None,
        reply_to: original.reply_to.clone(),
        correlation_id: original.correlation_id,
        actor: original.actor.clone(),
        issued_at: now,
        request_digest: None,
        command,
    };
    let payload = serde_json::to_vec(&envelope).context("failed to encode saga step")?;
    let key = aggregate.key();
    let record = BaseRecord::with_opaque_to(&topics.commands, usize::MAX)
        .partition(aggregate.partition(partitions))
        .key(&key)
        .payload(&payload);
    producer
        .send(record)
        .map_err(|(error, _)| anyhow!(error).context("failed to queue saga step"))
}

fn send_reply(
    producer: &BaseProducer<DeliveryRecorder>,
    topic: &str,
    envelope: &CommandEnvelope,
    outcome: Outcome,
) -> anyhow::Result<()> {
    let reply = Reply {
        request_id: envelope.request_id,
        command_id: envelope.command_id,
        outcome,
    };
    let payload = serde_json::to_vec(&reply).context("failed to encode reply")?;
    let record = BaseRecord::with_opaque_to(topic, usize::MAX)
        .partition(envelope.reply_to.partition)
        .key(&envelope.reply_to.route)
        .payload(&payload);
    producer
        .send(record)
        .map_err(|(error, _)| anyhow!(error).context("failed to queue reply"))
}

/// Waits until every queued record is delivered, serving delivery reports without the
/// 100 ms steps of `BaseProducer::flush`.
fn drain(producer: &BaseProducer<DeliveryRecorder>) -> anyhow::Result<()> {
    accounts_platform::kafka::deliver_queued(producer, KAFKA_TIMEOUT)
}

/// Delivers the queued records and returns the offsets of the event records `0..count`.
fn wait_for_deliveries(
    producer: &BaseProducer<DeliveryRecorder>,
    count: usize,
) -> anyhow::Result<Vec<i64>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    drain(producer).context("failed to deliver events")?;
    let mut delivered = producer
        .context()
        .offsets
        .lock()
        .map_err(|_| anyhow!("delivery recorder lock poisoned"))?;
    let mut offsets = Vec::with_capacity(count);
    for index in 0..count {
        match delivered.remove(&index) {
            Some(Ok(offset)) => offsets.push(offset),
            Some(Err(error)) => bail!("event {index} of the batch was not delivered: {error}"),
            None => bail!("event {index} of the batch has no delivery report"),
        }
    }
    delivered.clear();
    Ok(offsets)
}

/// The state a takeover rebuilt of one partition, in counts.
#[derive(Clone, Copy, Debug)]
pub struct Replayed {
    pub events: u64,
    pub accounts: usize,
}

/// Rebuilds one partition's decider state from the event log, as a worker does when it
/// takes the partition over, and drops it.
pub fn replay_partition(kafka: &KafkaConfig, partition: i32) -> anyhow::Result<Replayed> {
    let (state, events) = rebuild(kafka, &kafka.topics().events, partition)?;
    Ok(Replayed {
        events,
        accounts: state.accounts.len(),
    })
}

/// Reads event partition `partition` from the start with read_committed and folds it into
/// the state of every aggregate in it. Returns the state and the number of events read.
fn rebuild(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(PartitionState, u64)> {
    let reader: BaseConsumer<EndOfPartitionIsExpected> = client_config(kafka)
        .set(
            "group.id",
            format!("{}accounts-decider-rebuild", kafka.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(EndOfPartitionIsExpected)
        .context("failed to create the rebuild consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader
        .assign(&assignment)
        .context("failed to assign the event partition")?;

    let mut state = PartitionState::default();
    let mut count = 0_u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if Instant::now() > deadline {
            bail!("rebuilding partition {partition} took longer than 10 minutes");
        }
        match reader.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => {
                return Err(anyhow!(error).context("failed to read the event partition"))
            }
            Some(Ok(message)) => {
                count += 1;
                let payload = message.payload().unwrap_or_default();
                match RecordedEvent::decode(payload) {
                    Ok(Decoded::Event(recorded)) => {
                        state
                            .hashes
                            .insert(recorded.meta.subject.clone(), record_hash(payload));
                        fold(&mut state, &recorded, partition, message.offset())
                    }
                    Ok(Decoded::Unknown { event_type, .. }) => {
                        metrics::counter!("decider_unknown_events_total").increment(1);
                        tracing::debug!(
                            event_type,
                            offset = message.offset(),
                            "skipped event of unknown type"
                        );
                    }
                    Err(error) => {
                        metrics::counter!("decider_undecodable_events_total").increment(1);
                        tracing::error!(%error, partition, offset = message.offset(), "skipped undecodable event");
                    }
                }
            }
        }
    }
    Ok((state, count))
}

fn fold(state: &mut PartitionState, recorded: &RecordedEvent, partition: i32, offset: i64) {
    let Some(aggregate) = AggregateId::parse(&recorded.meta.subject) else {
        tracing::error!(
            subject = recorded.meta.subject,
            offset,
            "skipped event with an invalid subject"
        );
        return;
    };
    match aggregate {
        AggregateId::Account(account_id) => {
            let account = state.accounts.entry(account_id).or_default();
            if recorded.meta.sequence != account.version + 1 {
                tracing::error!(%account_id, offset, sequence = recorded.meta.sequence, version = account.version, "event sequence is not contiguous");
            }
            account.evolve(recorded);
            let version = account.version;
            if let Some(digest) = &recorded.meta.request_digest {
                state
                    .digests
                    .insert(recorded.meta.command_id, digest.clone());
            }
            state.positions.insert(account_id, offset + 1);
            state.remember(
                recorded.meta.command_id,
                Outcome::Accepted {
                    account_id,
                    version,
                    position: Some(
                        Position {
                            partition,
                            offset: offset + 1,
                        }
                        .to_string(),
                    ),
                },
            );
        }
        AggregateId::EmailClaim(address) => {
            state.claims.entry(address).or_default().evolve(recorded);
        }
        AggregateId::Workspace(workspace_id) => {
            let workspace = state.workspaces.entry(workspace_id).or_default();
            workspace.evolve(recorded);
            let version = workspace.version;
            state.positions.insert(workspace_id, offset + 1);
            state.remember(
                recorded.meta.command_id,
                Outcome::Accepted {
                    account_id: workspace_id,
                    version,
                    position: Some(
                        Position {
                            partition,
                            offset: offset + 1,
                        }
                        .to_string(),
                    ),
                },
            );
        }
    }
}
