//! The load generator (`loadgen`): concurrent payments with duplicate resends, same-key races,
//! client timeouts with retries that reuse the key, a hot account, reads, and (with
//! `--lifecycle`) holds that are captured, voided, raced or left to expire, and refunds
//! that race each other, and (with `--groups`) atomic payment groups, some declined
//! whole, followed by a verifier. It talks to any running server over HTTP, so it convinces anyone that
//! exactly-once holds under pressure, and measures how fast it does.

mod bulk;
mod groups;
mod lifecycle;
mod report;
mod verify;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use ledger_client::{
    AccountInput, LedgerClient, PaymentInput, TransitionInput, account_id_of, error_code,
    payment_of,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

pub use report::Report;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "Drive a payments-ledger server with payments, duplicates, races and retries, then verify the ledger"
)]
pub struct Options {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key of the client to act as.
    #[arg(long, env = "LEDGER_API_KEY")]
    pub api_key: String,
    /// Concurrent clients, each sending its next request when the last one answered.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to run, e.g. 10s, 2m (ignored when --requests is given).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many operations instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Accounts to pay between (plus one UNBOUNDED funding account).
    #[arg(long, default_value_t = 20)]
    pub accounts: usize,
    #[arg(long, default_value = "USD")]
    pub currency: String,
    /// What each new account is funded with.
    #[arg(long, default_value = "1000.00")]
    pub initial_balance: String,
    /// Share of payments that touch the hot account (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub hot_share: f64,
    /// Share of payment requests that resend an earlier, acknowledged request later
    /// (same key, same input): each must replay the same payment.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Share of new payments sent two or three times at once with one key.
    #[arg(long, default_value_t = 0.0)]
    pub race_rate: f64,
    /// A request not answered within this is abandoned and retried with the same key.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Retries per payment after a client-side timeout, a transport error, or the codes
    /// RETRY_LATER, OUTCOME_UNKNOWN, TIMEOUT and INTERNAL.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// Share of new payments that start a payment's lifecycle instead (0 to 1): a hold
    /// (some expiring within seconds) that is captured whole or in part, voided,
    /// raced by concurrent captures and voids, or left alone; and refunds of posted
    /// payments, some racing each other. Duplicates (`--duplicate-rate`) resend
    /// transitions too.
    #[arg(long, default_value_t = 0.0)]
    pub lifecycle: f64,
    /// Every new payment is a hold, captured whole as soon as it is acknowledged: the
    /// write benchmark's hold+capture row (payments/s counts pairs).
    #[arg(long)]
    pub hold_and_capture: bool,
    /// Share of new payments that are a group instead (0 to 1): 2 to 4 payments chained
    /// through the accounts with `createPayments`, a fifth of them declined whole by one
    /// impossible leg; raced (`--race-rate`) and resent (`--duplicate-rate`) like
    /// payments.
    #[arg(long, default_value_t = 0.0)]
    pub groups: f64,
    /// Send new payments N at a time with `createPaymentBatch` (1 to the server's
    /// PAYMENT_BATCH_MAX), each item under its own key: duplicates resend items inside
    /// new batches and whole batches, races send a batch two or three times at once.
    /// 0 = one `createPayment` per payment.
    #[arg(long, default_value_t = 0)]
    pub bulk: usize,
    /// Share of operations that read a balance instead of paying (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Reuse existing accounts (comma-separated ids; the first is the funding account)
    /// instead of creating new ones.
    #[arg(long, value_delimiter = ',')]
    pub reuse_accounts: Vec<String>,
    /// Write every acknowledged payment ("<key>\t<payment id>" per line) to this file as
    /// it is acknowledged (so it survives a run cut short), for
    /// `payments-ledger verify --acknowledged` to check from the database.
    #[arg(long)]
    pub acknowledged_log: Option<std::path::PathBuf>,
    /// Also run the database-level audit (`payments-ledger verify`) against this URL.
    #[arg(long)]
    pub verify_database_url: Option<String>,
    /// Do not follow the feeds (each account's ledgerEntries, the client's payments)
    /// during the run.
    #[arg(long)]
    pub no_poller: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print the report as one JSON object (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
}

const READ: &str = "query($id: ID!) { account(id: $id) { balance { amount version } } }";
const RESEND_QUEUE_MAX: usize = 10_000;

/// What the server finally said about a payment request.
enum Outcome {
    Acknowledged {
        id: String,
        status: String,
        replayed: bool,
    },
    Failed,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    reads: u64,
    posted: u64,
    declined: u64,
    replayed: u64,
    held: u64,
    captured: u64,
    voided: u64,
    refunded: u64,
    groups_posted: u64,
    groups_declined: u64,
    gave_up: u64,
    errors: BTreeMap<String, u64>,
}

struct Shared {
    options: Options,
    client: LedgerClient,
    accounts: Vec<String>,
    started: Instant,
    operations: AtomicU64,
    counts: Mutex<Counts>,
    write_latency: Mutex<Histogram<u64>>,
    read_latency: Mutex<Histogram<u64>>,
    /// The payment each acknowledged key named first.
    acknowledged: Mutex<HashMap<String, String>>,
    /// `--acknowledged-log`, opened once setup is done: each acknowledgement is written
    /// as it arrives, so the log survives a run that ends early.
    acknowledged_log: Mutex<Option<std::fs::File>>,
    resend_queue: Mutex<VecDeque<PaymentInput>>,
    /// Acknowledged captures, voids and refunds, to resend later with the same key.
    transition_queue: Mutex<VecDeque<TransitionInput>>,
    /// Holds, settlements and refunds as acknowledged, for the verifier.
    lifecycle: Mutex<lifecycle::Tracked>,
    /// Acknowledged groups, for the verifier, and those to resend.
    groups: Mutex<groups::Tracked>,
    group_queue: Mutex<VecDeque<groups::GroupRequest>>,
    /// Batches sent with `--bulk`, to resend whole.
    batch_queue: Mutex<VecDeque<Vec<PaymentInput>>>,
    violations: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A write's answer code that says "send it again with the same key": nothing
/// happened, or its outcome is unknown.
fn means_try_again(code: &str) -> bool {
    matches!(
        code,
        "RETRY_LATER" | "OUTCOME_UNKNOWN" | "TIMEOUT" | "INTERNAL"
    )
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        Ok(self.client.graphql(query, variables).await?)
    }

    /// Like `graphql`, for the pollers and the final checks: a transport error or an
    /// answer that means "later" (the server restarting, a limit, a timeout) is retried
    /// with the same request until an answer comes, for up to `PATIENCE`.
    async fn graphql_patiently(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        const PATIENCE: Duration = Duration::from_secs(120);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let outcome = self.graphql(query, variables.clone()).await;
            let later = match &outcome {
                Ok(response) => matches!(
                    ledger_client::error_code(response),
                    Some("RETRY_LATER" | "TIMEOUT" | "OUTCOME_UNKNOWN")
                ),
                Err(_) => true,
            };
            if !later || Instant::now() > deadline {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn error(&self, code: &str) {
        *lock(&self.counts)
            .errors
            .entry(code.to_owned())
            .or_default() += 1;
    }

    fn violation(&self, text: String) {
        lock(&self.violations).push(text);
    }

    /// Whether another operation may start.
    fn take_ticket(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let taken = self.operations.fetch_add(1, Ordering::Relaxed);
        match self.options.requests {
            Some(limit) => taken < limit,
            None => self.started.elapsed() < self.options.duration,
        }
    }

    /// Sends a write until it has an answer, retrying it (same key) after a client-side
    /// timeout, a transport error, or a code that means "nothing happened" or "outcome
    /// unknown"; every other response, an error code included, is the answer. `None`
    /// once the retries are spent.
    async fn send_write<Send, Sent>(&self, send: Send) -> Option<Value>
    where
        Send: Fn() -> Sent,
        Sent: Future<Output = Result<Value, reqwest::Error>>,
    {
        for attempt in 0..=self.options.retries {
            if attempt > 0 {
                let backoff = Duration::from_millis(10 << attempt.min(6));
                tokio::time::sleep(backoff.mul_f64(rand::random::<f64>() + 0.5)).await;
            }
            lock(&self.counts).requests += 1;
            let sent = Instant::now();
            let answer = tokio::time::timeout(self.options.timeout, send()).await;
            lock(&self.write_latency).saturating_record(sent.elapsed().as_micros() as u64);
            let response = match answer {
                Err(_) => {
                    self.error("CLIENT_TIMEOUT");
                    continue;
                }
                Ok(Err(_)) => {
                    self.error("TRANSPORT");
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            if let Some(code) = error_code(&response) {
                self.error(code);
                if means_try_again(code) {
                    continue;
                }
            }
            return Some(response);
        }
        lock(&self.counts).gave_up += 1;
        None
    }

    /// Sends one payment until it has an outcome, retrying with the same key.
    async fn pay(&self, input: &PaymentInput) -> Outcome {
        // Only id and status are checked, so the answer leaves out the details.
        let Some(response) = self
            .send_write(|| self.client.create_payment(input, false))
            .await
        else {
            return Outcome::Failed;
        };
        if error_code(&response).is_some() {
            return Outcome::Failed;
        }
        let payment = payment_of(&response);
        let (Some(id), Some(status)) = (payment["id"].as_str(), payment["status"].as_str()) else {
            self.error("MALFORMED_RESPONSE");
            return Outcome::Failed;
        };
        Outcome::Acknowledged {
            id: id.to_owned(),
            status: status.to_owned(),
            replayed: response["data"]["createPayment"]["replayed"]
                .as_bool()
                .unwrap_or(false),
        }
    }

    /// Records an acknowledgement and checks it names the key's one payment.
    fn acknowledge(&self, input: &PaymentInput, outcome: &Outcome) {
        self.acknowledge_key(&input.idempotency_key, outcome);
    }

    fn acknowledge_key(&self, key: &str, outcome: &Outcome) {
        let Outcome::Acknowledged {
            id,
            status,
            replayed,
        } = outcome
        else {
            return;
        };
        {
            let mut counts = lock(&self.counts);
            match (replayed, status.as_str()) {
                (true, _) => counts.replayed += 1,
                (false, "POSTED") => counts.posted += 1,
                (false, "PENDING") => counts.held += 1,
                (false, _) => counts.declined += 1,
            }
        }
        let mut acknowledged = lock(&self.acknowledged);
        match acknowledged.get(key) {
            Some(first) if first != id => {
                let first = first.clone();
                drop(acknowledged);
                self.violation(format!(
                    "key {key} answered with payment {first} and later with {id}"
                ));
            }
            Some(_) => {}
            None => {
                self.log_acknowledged(key, id);
                acknowledged.insert(key.to_owned(), id.clone());
            }
        }
    }

    /// Appends "<key>\t<payment id>" to `--acknowledged-log`, if any.
    fn log_acknowledged(&self, key: &str, id: &str) {
        if let Some(log) = lock(&self.acknowledged_log).as_mut() {
            use std::io::Write as _;
            if let Err(error) = writeln!(log, "{key}\t{id}") {
                self.violation(format!("cannot write the acknowledged log: {error}"));
            }
        }
    }

    /// Every payment the run acknowledged: alone (by key) or in a group.
    fn acknowledged_payments(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.acknowledged).values().cloned().collect();
        ids.extend(lock(&self.groups).payment_ids().cloned());
        ids
    }

    async fn read(&self, rng: &mut StdRng) {
        let account = &self.accounts[rng.random_range(0..self.accounts.len())];
        lock(&self.counts).requests += 1;
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            self.options.timeout,
            self.graphql(READ, json!({ "id": account })),
        )
        .await;
        lock(&self.read_latency).saturating_record(sent.elapsed().as_micros() as u64);
        lock(&self.counts).reads += 1;
        match answer {
            Err(_) => self.error("CLIENT_TIMEOUT"),
            Ok(Err(_)) => self.error("TRANSPORT"),
            Ok(Ok(response)) => {
                if let Some(code) = error_code(&response) {
                    self.error(code);
                }
            }
        }
    }

    fn new_payment(&self, rng: &mut StdRng, run: &str, sequence: u64) -> PaymentInput {
        // accounts[0] funds; accounts[1] is the hot account.
        let payers = &self.accounts[1..];
        let mut from = rng.random_range(0..payers.len());
        let mut to = (from + rng.random_range(1..payers.len())) % payers.len();
        if rng.random_bool(self.options.hot_share.clamp(0.0, 1.0)) {
            if rng.random_bool(0.5) {
                from = 0;
                to = if to == 0 { 1 } else { to };
            } else {
                to = 0;
                from = if from == 0 { 1 } else { from };
            }
        }
        let cents = rng.random_range(1..=2_000);
        PaymentInput::new(
            &format!("{run}-{sequence}"),
            &payers[from],
            &payers[to],
            &format!("{}.{:02}", cents / 100, cents % 100),
            &self.options.currency,
        )
    }

    async fn worker(self: Arc<Self>, worker: usize, run: String) {
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let mut sequence = 0_u64;
        while self.take_ticket() {
            if rng.random_bool(self.options.read_ratio.clamp(0.0, 1.0)) {
                self.read(&mut rng).await;
                continue;
            }
            if rng.random_bool(self.options.duplicate_rate.clamp(0.0, 1.0)) {
                if rng.random_bool(self.options.groups.clamp(0.0, 1.0)) {
                    let queued = lock(&self.group_queue).pop_front();
                    if let Some(request) = queued {
                        self.resend_group(&request).await;
                        continue;
                    }
                }
                if rng.random_bool(0.5) {
                    let queued = lock(&self.transition_queue).pop_front();
                    if let Some(transition) = queued {
                        self.resend_transition(&transition).await;
                        continue;
                    }
                }
                let queued = lock(&self.resend_queue).pop_front();
                if let Some(input) = queued {
                    let outcome = self.pay(&input).await;
                    self.acknowledge(&input, &outcome);
                    continue;
                }
            }
            sequence += 1;
            if self.options.hold_and_capture {
                self.hold_and_capture(&mut rng, &format!("{run}-w{worker}"), sequence)
                    .await;
                continue;
            }
            if self.options.bulk > 0 {
                self.bulk(&mut rng, &format!("{run}-w{worker}"), sequence)
                    .await;
                continue;
            }
            if rng.random_bool(self.options.groups.clamp(0.0, 1.0)) {
                self.group(&mut rng, &format!("{run}-w{worker}"), sequence)
                    .await;
                continue;
            }
            if rng.random_bool(self.options.lifecycle.clamp(0.0, 1.0)) {
                self.lifecycle(&mut rng, &format!("{run}-w{worker}"), sequence)
                    .await;
                continue;
            }
            let input = self.new_payment(&mut rng, &format!("{run}-w{worker}"), sequence);
            let senders = if rng.random_bool(self.options.race_rate.clamp(0.0, 1.0)) {
                rng.random_range(2..=3)
            } else {
                1
            };
            let outcomes = futures::future::join_all((0..senders).map(|_| self.pay(&input))).await;
            for outcome in &outcomes {
                self.acknowledge(&input, outcome);
            }
            if outcomes
                .iter()
                .any(|outcome| matches!(outcome, Outcome::Acknowledged { .. }))
            {
                let mut queue = lock(&self.resend_queue);
                if queue.len() < RESEND_QUEUE_MAX {
                    queue.push_back(input);
                }
            }
        }
    }

    fn progress_line(&self) -> String {
        let counts = lock(&self.counts);
        let seconds = self.started.elapsed().as_secs_f64();
        let errors: u64 = counts.errors.values().sum();
        let lifecycle = if self.options.lifecycle > 0.0 {
            format!(
                "  held {}  captured {}  voided {}  refunded {}",
                counts.held, counts.captured, counts.voided, counts.refunded
            )
        } else {
            String::new()
        };
        let groups = if self.options.groups > 0.0 {
            format!(
                "  groups {} (declined {})",
                counts.groups_posted, counts.groups_declined
            )
        } else {
            String::new()
        };
        format!(
            "{seconds:>6.1}s  requests {} ({:.0}/s)  posted {}  declined {}  replayed {}  reads {}  errors {}{lifecycle}{groups}",
            counts.requests,
            counts.requests as f64 / seconds.max(0.001),
            counts.posted,
            counts.declined,
            counts.replayed,
            counts.reads,
            errors
        )
    }
}

async fn create_accounts(shared: &Shared, run: &str) -> anyhow::Result<Vec<String>> {
    let options = &shared.options;
    if options.accounts < 2 {
        bail!("--accounts must be at least 2");
    }
    let mut accounts: Vec<String> = Vec::with_capacity(options.accounts + 1);
    for index in 0..=options.accounts {
        let rule = if index == 0 {
            "UNBOUNDED"
        } else {
            "NON_NEGATIVE"
        };
        let account = AccountInput::new(&format!("{run}-account-{index}"), &options.currency, rule);
        let response = shared.client.create_account(&account).await?;
        let id = account_id_of(&response)
            .with_context(|| format!("cannot create an account: {response}"))?
            .to_owned();
        if index > 0 {
            let funding = PaymentInput::new(
                &format!("{run}-fund-{index}"),
                &accounts[0],
                &id,
                &options.initial_balance,
                &options.currency,
            );
            if !matches!(shared.pay(&funding).await, Outcome::Acknowledged { .. }) {
                bail!("cannot fund account {id}");
            }
        }
        accounts.push(id);
    }
    Ok(accounts)
}

/// Runs the load, then the verifier.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency * 3)
        .build()?;
    let run_id = format!("loadgen-{}", uuid::Uuid::now_v7().simple());
    let mut shared = Shared {
        options: options.clone(),
        client: LedgerClient::with_http(http, &options.url, Some(&options.api_key)),
        accounts: Vec::new(),
        started: Instant::now(),
        operations: AtomicU64::new(0),
        counts: Mutex::default(),
        write_latency: Mutex::new(histogram()),
        read_latency: Mutex::new(histogram()),
        acknowledged: Mutex::default(),
        acknowledged_log: Mutex::default(),
        resend_queue: Mutex::default(),
        transition_queue: Mutex::default(),
        lifecycle: Mutex::default(),
        groups: Mutex::default(),
        group_queue: Mutex::default(),
        batch_queue: Mutex::default(),
        violations: Mutex::default(),
        stop: AtomicBool::new(false),
    };
    shared.accounts = if options.reuse_accounts.is_empty() {
        create_accounts(&shared, &run_id).await?
    } else if options.reuse_accounts.len() < 3 {
        bail!("--reuse-accounts needs a funding account and at least two more");
    } else {
        options.reuse_accounts.clone()
    };
    let initial = verify::strong_balances(&shared).await?;
    // Setup is not part of the measurement.
    *lock(&shared.counts) = Counts::default();
    *lock(&shared.write_latency) = histogram();
    lock(&shared.acknowledged).clear();
    if let Some(path) = &options.acknowledged_log {
        *lock(&shared.acknowledged_log) = Some(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        );
    }
    shared.started = Instant::now();
    let shared = Arc::new(shared);

    let poller =
        (!options.no_poller).then(|| tokio::spawn(verify::poll_entries(Arc::clone(&shared))));
    let feed_poller = match options.no_poller {
        true => None,
        false => {
            let start = verify::payment_feed_end(&shared).await?;
            Some(tokio::spawn(verify::poll_payment_feed(
                Arc::clone(&shared),
                start,
            )))
        }
    };
    let progress = (!options.quiet).then(|| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!("{}", shared.progress_line());
            }
        })
    });
    let workers: Vec<_> = (0..options.concurrency.max(1))
        .map(|worker| tokio::spawn(Arc::clone(&shared).worker(worker, run_id.clone())))
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = shared.started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        progress.abort();
    }
    let entries_seen = match poller {
        Some(poller) => Some(poller.await??),
        None => None,
    };
    let payments_seen = match feed_poller {
        Some(poller) => Some(poller.await?),
        None => None,
    };
    verify::verify(&shared, &initial, entries_seen, payments_seen).await?;
    lifecycle::verify(&shared).await?;
    groups::verify(&shared).await?;
    Ok(Report::new(&shared, elapsed))
}
