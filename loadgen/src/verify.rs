//! The loadgen's verifier: what every acknowledgement promised, checked after the run
//! through the API (so it works against any server), plus the database audit when
//! loadgen may read the database.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use rust_decimal::Decimal;
use serde_json::json;

use super::{Shared, lock};

/// Ids in one aliased query.
const CHUNK: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AccountState {
    balance: Decimal,
    /// Read only with `--lifecycle` (servers from before holds have no such field).
    pub(super) pending: Decimal,
    version: i64,
    rule: String,
    credit_limit: Option<Decimal>,
}

fn decimal(value: &serde_json::Value) -> anyhow::Result<Decimal> {
    let text = value.as_str().context("a decimal string")?;
    Decimal::from_str(text).with_context(|| format!("decimal {text:?}"))
}

/// Every account's balance, read STRONG.
pub(super) async fn strong_balances(
    shared: &Shared,
) -> anyhow::Result<HashMap<String, AccountState>> {
    let mut states = HashMap::new();
    let pending = if shared.options.lifecycle > 0.0 || shared.options.hold_and_capture {
        "pending"
    } else {
        ""
    };
    for chunk in shared.accounts.chunks(CHUNK) {
        let fields: String = chunk
            .iter()
            .enumerate()
            .map(|(index, id)| {
                format!(
                    "a{index}: account(id: {id}) {{ balanceRule creditLimit balance(consistency: STRONG) {{ amount version {pending} }} }} ",
                    id = serde_json::to_string(id).unwrap_or_default()
                )
            })
            .collect();
        let response = shared
            .graphql_patiently(&format!("{{ {fields} }}"), json!({}))
            .await?;
        for (index, id) in chunk.iter().enumerate() {
            let account = &response["data"][format!("a{index}")];
            let balance = &account["balance"];
            let state = AccountState {
                balance: decimal(&balance["amount"])
                    .with_context(|| format!("account {id}: {response}"))?,
                pending: decimal(&balance["pending"]).unwrap_or_default(),
                version: balance["version"].as_i64().context("a version")?,
                rule: account["balanceRule"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                credit_limit: account["creditLimit"]
                    .as_str()
                    .and_then(|text| Decimal::from_str(text).ok()),
            };
            states.insert(id.clone(), state);
        }
    }
    Ok(states)
}

/// What a poller following each account's `ledgerEntries` cursor saw: per account,
/// (version, signed amount) in the order received.
pub(super) type EntriesSeen = HashMap<String, Vec<(i64, Decimal)>>;

pub(super) async fn poll_entries(shared: Arc<Shared>) -> anyhow::Result<EntriesSeen> {
    const PAGE: &str = "query($id: ID!, $after: String) { ledgerEntries(accountId: $id, first: 100, after: $after) {
      nodes { accountVersion direction amount } pageInfo { endCursor } } }";
    let mut seen: EntriesSeen = HashMap::new();
    let mut cursors: HashMap<String, Option<String>> = HashMap::new();
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed);
        let mut received = 0;
        for account in &shared.accounts {
            loop {
                let after = cursors.get(account).cloned().flatten();
                let response = shared
                    .graphql_patiently(PAGE, json!({ "id": account, "after": after }))
                    .await?;
                let page = &response["data"]["ledgerEntries"];
                let nodes = page["nodes"]
                    .as_array()
                    .with_context(|| format!("ledgerEntries: {response}"))?;
                for node in nodes {
                    let amount = decimal(&node["amount"])?;
                    let signed = if node["direction"] == "DEBIT" {
                        -amount
                    } else {
                        amount
                    };
                    seen.entry(account.clone()).or_default().push((
                        node["accountVersion"].as_i64().context("a version")?,
                        signed,
                    ));
                }
                received += nodes.len();
                if let Some(cursor) = page["pageInfo"]["endCursor"].as_str() {
                    cursors.insert(account.clone(), Some(cursor.to_owned()));
                }
                if nodes.len() < 100 {
                    break;
                }
            }
        }
        // After the run, one more full round that finds nothing new ends the poll.
        if stopping && received == 0 {
            return Ok(seen);
        }
        if !stopping {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const PAYMENT_FEED: &str = "query($after: String, $last: Int, $first: Int) {
  payments(first: $first, last: $last, after: $after) { nodes { id } pageInfo { endCursor } } }";

/// How long the payment feed may take, after the run, to list every acknowledged
/// payment: PostgreSQL lists a transaction's rows once no older one is still running.
const FEED_SETTLE_MAX: Duration = Duration::from_secs(30);

/// The payment feed's current end: the run's payments all come after it.
pub(super) async fn payment_feed_end(shared: &Shared) -> anyhow::Result<Option<String>> {
    let response = shared
        .graphql_patiently(PAYMENT_FEED, json!({ "last": 1 }))
        .await?;
    Ok(response["data"]["payments"]["pageInfo"]["endCursor"]
        .as_str()
        .map(str::to_owned))
}

/// Follows the client's payment feed from `start`, as a dashboard does, retrying after
/// errors (the server may be restarting). Once the run stops, it reads on until every
/// acknowledged payment is listed or `FEED_SETTLE_MAX` passes. Returns the ids in the
/// order seen.
pub(super) async fn poll_payment_feed(shared: Arc<Shared>, start: Option<String>) -> Vec<String> {
    let mut seen = Vec::new();
    let mut listed = std::collections::HashSet::new();
    let mut cursor = start;
    let mut stopped_at: Option<std::time::Instant> = None;
    loop {
        let response = shared
            .graphql_patiently(PAYMENT_FEED, json!({ "first": 100, "after": cursor }))
            .await;
        let page = response
            .as_ref()
            .ok()
            .and_then(|response| response["data"]["payments"].as_object());
        let mut received = 0;
        if let Some(page) = page {
            for node in page["nodes"].as_array().into_iter().flatten() {
                if let Some(id) = node["id"].as_str() {
                    seen.push(id.to_owned());
                    listed.insert(id.to_owned());
                    received += 1;
                }
            }
            if let Some(end) = page["pageInfo"]["endCursor"].as_str() {
                cursor = Some(end.to_owned());
            }
        }
        if received == 100 {
            continue;
        }
        if shared.stop.load(Ordering::Relaxed) {
            let stopped = *stopped_at.get_or_insert_with(std::time::Instant::now);
            let all_listed = shared
                .acknowledged_payments()
                .iter()
                .all(|id| listed.contains(id));
            if all_listed || stopped.elapsed() > FEED_SETTLE_MAX {
                return seen;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn verify(
    shared: &Shared,
    initial: &HashMap<String, AccountState>,
    entries_seen: Option<EntriesSeen>,
    payments_seen: Option<Vec<String>>,
) -> anyhow::Result<()> {
    // Every acknowledged key names exactly the payment it was acknowledged with.
    let acknowledged: Vec<(String, String)> = lock(&shared.acknowledged)
        .iter()
        .map(|(key, id)| (key.clone(), id.clone()))
        .collect();
    for chunk in acknowledged.chunks(CHUNK) {
        let fields: String = chunk
            .iter()
            .enumerate()
            .map(|(index, (key, _))| {
                format!(
                    "k{index}: paymentByIdempotencyKey(idempotencyKey: {}) {{ id }} ",
                    serde_json::to_string(key).unwrap_or_default()
                )
            })
            .collect();
        let response = shared
            .graphql_patiently(&format!("{{ {fields} }}"), json!({}))
            .await?;
        for (index, (key, id)) in chunk.iter().enumerate() {
            match response["data"][format!("k{index}")]["id"].as_str() {
                Some(found) if found == id => {}
                Some(found) => shared.violation(format!(
                    "key {key} was acknowledged as {id} but names {found}"
                )),
                None => shared.violation(format!(
                    "key {key} was acknowledged as {id} but no payment has it"
                )),
            }
        }
    }

    // Balances: money stays inside the set of accounts, and no rule is broken.
    let last = strong_balances(shared).await?;
    let total = |states: &HashMap<String, AccountState>| {
        states.values().map(|state| state.balance).sum::<Decimal>()
    };
    if total(&last) != total(initial) {
        shared.violation(format!(
            "money not conserved: balances summed to {} before the run and {} after",
            total(initial),
            total(&last)
        ));
    }
    for (id, state) in &last {
        let floor = match state.rule.as_str() {
            "NON_NEGATIVE" => Some(Decimal::ZERO),
            "CREDIT_LIMIT" => state.credit_limit.map(|limit| -limit),
            _ => None,
        };
        if floor.is_some_and(|floor| state.balance - state.pending < floor) {
            shared.violation(format!(
                "account {id} ({}) has balance {} with {} pending",
                state.rule, state.balance, state.pending
            ));
        }
    }

    // The poller saw every entry exactly once, in version order, and they add up.
    if let Some(seen) = entries_seen {
        for (id, state) in &last {
            let entries = seen.get(id).map(Vec::as_slice).unwrap_or_default();
            let versions: Vec<i64> = entries.iter().map(|(version, _)| *version).collect();
            if versions != (1..=state.version).collect::<Vec<_>>() {
                shared.violation(format!(
                    "poller of account {id} saw versions {} (of {}), not each of 1..={} once",
                    summarize(&versions),
                    versions.len(),
                    state.version
                ));
                continue;
            }
            let sum: Decimal = entries.iter().map(|(_, signed)| *signed).sum();
            if sum != state.balance {
                shared.violation(format!(
                    "account {id}: entries sum to {sum}, balance is {}",
                    state.balance
                ));
            }
        }
    }

    // The payment feed listed every acknowledged payment, and nothing twice.
    if let Some(seen) = payments_seen {
        let mut times_seen: HashMap<&str, usize> = HashMap::new();
        for id in &seen {
            *times_seen.entry(id).or_default() += 1;
        }
        for (id, times) in &times_seen {
            if *times > 1 {
                shared.violation(format!("the payment feed listed {id} {times} times"));
            }
        }
        let acknowledged = shared.acknowledged_payments();
        let missed: Vec<&String> = acknowledged
            .iter()
            .filter(|id| !times_seen.contains_key(id.as_str()))
            .collect();
        if !missed.is_empty() {
            shared.violation(format!(
                "the payment feed never listed {} of {} acknowledged payments, e.g. {}",
                missed.len(),
                acknowledged.len(),
                missed[0]
            ));
        }
    }

    if let Some(url) = &shared.options.verify_database_url {
        let violations = payments_ledger::ledger::audit::audit_database(url)
            .await
            .context("cannot audit --verify-database-url")?;
        for violation in violations {
            shared.violation(format!("database audit: {violation}"));
        }
    }
    Ok(())
}

/// "1..40, 42, 41" style, short.
fn summarize(versions: &[i64]) -> String {
    let shown: Vec<String> = versions.iter().take(20).map(i64::to_string).collect();
    if versions.len() > 20 {
        format!("{} …", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
