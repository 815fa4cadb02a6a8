//! `--groups`: atomic payment groups (`createPayments`) under duplicates and races, and
//! what the verifier checks of them afterwards.
//!
//! A group chains 2 to 4 payments through the run's accounts (a → b → c …), each
//! passing on what the one before brought; a fifth of them ask one leg for far more
//! than any account holds, so the whole group must be declined. A group is sent once or
//! raced by two or three senders with one key (`--race-rate`), and acknowledged ones
//! are resent later (`--duplicate-rate`): each must answer the same group.

use std::collections::HashMap;

use ledger_client::error_code;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::{Shared, lock};

const CREATE_PAYMENTS: &str = "mutation($input: CreatePaymentsInput!) {
  createPayments(input: $input) {
    replayed group { id } payments { id status declineReason } } }";

/// What one acknowledgement of a group said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AckGroup {
    id: String,
    payments: Vec<String>,
    declined: bool,
}

/// A group request: its key and `createPayments` input.
#[derive(Debug, Clone)]
pub(super) struct GroupRequest {
    key: String,
    input: Value,
    legs: usize,
}

/// What the run acknowledged about groups, by key.
#[derive(Default)]
pub(super) struct Tracked {
    groups: HashMap<String, AckGroup>,
}

impl Tracked {
    /// The payments of every acknowledged group.
    pub(super) fn payment_ids(&self) -> impl Iterator<Item = &String> {
        self.groups.values().flat_map(|group| &group.payments)
    }
}

/// Checks one answer's payments: all moved, or all declined with exactly one for its
/// own reason. Returns whether they were declined, or what is wrong.
fn judge(payments: &[Value], legs: usize) -> Result<bool, String> {
    if payments.len() != legs {
        return Err(format!("{} payments for {legs} legs", payments.len()));
    }
    let declined: Vec<&Value> = payments
        .iter()
        .filter(|payment| payment["status"] == "DECLINED")
        .collect();
    let own_reason = declined
        .iter()
        .filter(|payment| payment["declineReason"] != "LINKED_PAYMENT_FAILED")
        .count();
    match (declined.len(), own_reason) {
        (0, _) => Ok(false),
        (count, 1) if count == legs => Ok(true),
        _ => Err(format!(
            "{} of {legs} declined, {own_reason} for their own reason",
            declined.len()
        )),
    }
}

impl Shared {
    /// One group flow; see the module's comment.
    pub(super) async fn group(&self, rng: &mut StdRng, run: &str, sequence: u64) {
        let payers = &self.accounts[1..];
        let legs = rng.random_range(2..=4);
        let start = rng.random_range(0..payers.len());
        let cents = rng.random_range(1..=2_000);
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let impossible = rng.random_bool(0.2).then(|| rng.random_range(0..legs));
        let payments: Vec<Value> = (0..legs)
            .map(|leg| {
                let amount = match impossible {
                    Some(culprit) if culprit == leg => "999999999.00".to_owned(),
                    _ => amount.clone(),
                };
                json!({
                    "fromAccountId": payers[(start + leg) % payers.len()],
                    "toAccountId": payers[(start + leg + 1) % payers.len()],
                    "amount": amount,
                    "currency": self.options.currency,
                })
            })
            .collect();
        let key = format!("{run}-group-{sequence}");
        let request = GroupRequest {
            input: json!({ "idempotencyKey": key, "payments": payments }),
            key,
            legs,
        };
        let senders = if rng.random_bool(self.options.race_rate.clamp(0.0, 1.0)) {
            rng.random_range(2..=3)
        } else {
            1
        };
        let answers =
            futures::future::join_all((0..senders).map(|_| self.send_group(&request))).await;
        if answers.iter().any(Option::is_some) {
            let mut queue = lock(&self.group_queue);
            if queue.len() < super::RESEND_QUEUE_MAX {
                queue.push_back(request);
            }
        }
    }

    /// A resend of an acknowledged group: it must replay the same group.
    pub(super) async fn resend_group(&self, request: &GroupRequest) {
        if let Some(false) = self.send_group(request).await {
            self.violation(format!("group key {} made a second group", request.key));
        }
    }

    /// Sends a group until it has an answer, checks and records it; returns whether it
    /// was a replay, `None` without an acknowledgement.
    async fn send_group(&self, request: &GroupRequest) -> Option<bool> {
        let response = self
            .send_write(|| {
                self.client
                    .graphql(CREATE_PAYMENTS, json!({ "input": request.input }))
            })
            .await?;
        if let Some(code) = error_code(&response) {
            self.violation(format!("group {} was refused with {code}", request.key));
            return None;
        }
        let payload = &response["data"]["createPayments"];
        let payments = payload["payments"].as_array().cloned().unwrap_or_default();
        let declined = match judge(&payments, request.legs) {
            Ok(declined) => declined,
            Err(wrong) => {
                self.violation(format!("group {} answered {wrong}: {payload}", request.key));
                return None;
            }
        };
        let acknowledged = AckGroup {
            id: payload["group"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            payments: payments
                .iter()
                .filter_map(|payment| payment["id"].as_str().map(str::to_owned))
                .collect(),
            declined,
        };
        let replayed = payload["replayed"].as_bool().unwrap_or(false);
        self.record_group(&request.key, acknowledged, replayed);
        Some(replayed)
    }

    fn record_group(&self, key: &str, acknowledged: AckGroup, replayed: bool) {
        {
            let mut counts = lock(&self.counts);
            match (replayed, acknowledged.declined) {
                (true, _) => counts.replayed += 1,
                (false, false) => counts.groups_posted += 1,
                (false, true) => counts.groups_declined += 1,
            }
        }
        let mut tracked = lock(&self.groups);
        match tracked.groups.get(key) {
            Some(first) if *first != acknowledged => {
                let first = first.clone();
                drop(tracked);
                self.violation(format!(
                    "group key {key} answered {first:?} and later {acknowledged:?}"
                ));
            }
            Some(_) => {}
            None => {
                for payment in &acknowledged.payments {
                    self.log_acknowledged(key, payment);
                }
                tracked.groups.insert(key.to_owned(), acknowledged);
            }
        }
    }
}

/// After the run: every acknowledged group key still names its group, with the same
/// payments, all moved or all declined.
pub(super) async fn verify(shared: &Shared) -> anyhow::Result<()> {
    let groups: Vec<(String, AckGroup)> = lock(&shared.groups)
        .groups
        .iter()
        .map(|(key, group)| (key.clone(), group.clone()))
        .collect();
    for chunk in groups.chunks(50) {
        let fields: String = chunk
            .iter()
            .enumerate()
            .map(|(index, (key, _))| {
                format!(
                    "g{index}: paymentGroupByIdempotencyKey(idempotencyKey: {}) {{
                       id payments {{ id status declineReason }} }} ",
                    serde_json::to_string(key).unwrap_or_default()
                )
            })
            .collect();
        let response = shared
            .graphql_patiently(&format!("{{ {fields} }}"), json!({}))
            .await?;
        for (index, (key, acknowledged)) in chunk.iter().enumerate() {
            let found = &response["data"][format!("g{index}")];
            let payments = found["payments"].as_array().cloned().unwrap_or_default();
            let ids: Vec<&str> = payments
                .iter()
                .filter_map(|payment| payment["id"].as_str())
                .collect();
            let judged = judge(&payments, acknowledged.payments.len());
            if found["id"] != acknowledged.id.as_str()
                || ids != acknowledged.payments
                || judged != Ok(acknowledged.declined)
            {
                shared.violation(format!(
                    "group key {key} was acknowledged as {acknowledged:?} but reads {found} ({judged:?})"
                ));
            }
        }
    }
    if !shared.options.quiet && !groups.is_empty() {
        let declined = groups.iter().filter(|(_, group)| group.declined).count();
        eprintln!(
            "groups: {} acknowledged, {declined} declined whole",
            groups.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: &str, reason: Option<&str>) -> Value {
        json!({ "status": status, "declineReason": reason })
    }

    #[test]
    fn a_group_is_judged_whole() {
        let posted = [payment("POSTED", None), payment("POSTED", None)];
        assert_eq!(judge(&posted, 2), Ok(false));
        let declined = [
            payment("DECLINED", Some("LINKED_PAYMENT_FAILED")),
            payment("DECLINED", Some("INSUFFICIENT_FUNDS")),
        ];
        assert_eq!(judge(&declined, 2), Ok(true));
        let half = [
            payment("POSTED", None),
            payment("DECLINED", Some("INSUFFICIENT_FUNDS")),
        ];
        assert!(judge(&half, 2).is_err());
        let no_culprit = [
            payment("DECLINED", Some("LINKED_PAYMENT_FAILED")),
            payment("DECLINED", Some("LINKED_PAYMENT_FAILED")),
        ];
        assert!(judge(&no_culprit, 2).is_err());
        assert!(judge(&posted, 3).is_err());
    }
}
