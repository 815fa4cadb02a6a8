//! `--lifecycle`: holds and refunds under duplicates and races, and what the verifier
//! checks of them afterwards.
//!
//! A flow places a hold (a quarter expire within seconds), then captures it whole or in
//! part, voids it, races two or three captures and voids with different keys against
//! it, or leaves it alone; a posted payment or captured hold is then sometimes refunded,
//! by one refund or by two or three racing ones. Every transition is retried with its
//! key like a payment, and acknowledged ones are resent later (`--duplicate-rate`).

use std::collections::HashMap;
use std::str::FromStr;

use ledger_client::{TransitionInput, TransitionKind, error_code};
use rand::Rng;
use rand::rngs::StdRng;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{Outcome, Shared, lock};

/// A hold this run placed.
#[derive(Debug, Clone)]
struct Hold {
    from: String,
    amount: Decimal,
    /// Set for the holds that expire within seconds.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An acknowledged settlement: which key settled the hold, how, and what it posted.
#[derive(Debug, Clone)]
struct Settled {
    key: String,
    kind: TransitionKind,
    posted: Option<Decimal>,
}

/// What the run acknowledged about lifecycles.
#[derive(Default)]
pub(super) struct Tracked {
    holds: HashMap<String, Hold>,
    settled: HashMap<String, Settled>,
    /// Holds with a transition whose outcome never came: any state may be theirs.
    unknown: std::collections::HashSet<String>,
    /// Refunds acknowledged POSTED, by refunded payment: (refund id, amount).
    refunds: HashMap<String, Vec<(String, Decimal)>>,
    /// What each refunded payment posted, as acknowledged.
    posted: HashMap<String, Decimal>,
}

/// What the server finally said about a transition.
enum Answer {
    Done { payment: Value, replayed: bool },
    Refused(String),
    GaveUp,
}

fn decimal(value: &Value) -> Option<Decimal> {
    value.as_str().and_then(|text| Decimal::from_str(text).ok())
}

fn cents(amount: Decimal) -> i64 {
    (amount * Decimal::from(100))
        .trunc()
        .try_into()
        .unwrap_or(0)
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

impl Shared {
    /// One lifecycle flow; see the module's comment.
    pub(super) async fn lifecycle(&self, rng: &mut StdRng, run: &str, sequence: u64) {
        let mut input = self.new_payment(rng, run, sequence);
        let key = input.idempotency_key.clone();
        let pending = rng.random_bool(0.7);
        let short = pending && rng.random_bool(0.25);
        let expires_at = short.then(|| {
            chrono::Utc::now() + chrono::Duration::milliseconds(rng.random_range(800..3000))
        });
        input.pending = pending;
        input.hold_expires_at = expires_at.map(|at| at.to_rfc3339());
        let outcome = self.pay(&input).await;
        self.acknowledge(&input, &outcome);
        let Outcome::Acknowledged { id, status, .. } = outcome else {
            return;
        };
        let amount = Decimal::from_str(&input.amount).unwrap_or_default();
        match status.as_str() {
            "PENDING" => {
                lock(&self.lifecycle).holds.insert(
                    id.clone(),
                    Hold {
                        from: input.from_account_id.clone(),
                        amount,
                        expires_at,
                    },
                );
                let captured = self.settle(rng, &key, &id, amount, short).await;
                if let Some(posted) = captured
                    && rng.random_bool(0.4)
                {
                    self.refund(rng, &key, &id, posted).await;
                }
            }
            "POSTED" if rng.random_bool(0.3) => {
                self.refund(rng, &key, &id, amount).await;
            }
            _ => {}
        }
    }

    /// A hold, then its capture whole (`--hold-and-capture`).
    pub(super) async fn hold_and_capture(&self, rng: &mut StdRng, run: &str, sequence: u64) {
        let mut input = self.new_payment(rng, run, sequence);
        input.pending = true;
        let outcome = self.pay(&input).await;
        self.acknowledge(&input, &outcome);
        let Outcome::Acknowledged { id, status, .. } = outcome else {
            return;
        };
        if status != "PENDING" {
            return;
        }
        let amount = Decimal::from_str(&input.amount).unwrap_or_default();
        lock(&self.lifecycle).holds.insert(
            id.clone(),
            Hold {
                from: input.from_account_id.clone(),
                amount,
                expires_at: None,
            },
        );
        let capture = TransitionInput {
            kind: TransitionKind::Capture,
            idempotency_key: format!("{}-capture", input.idempotency_key),
            payment_id: id,
            amount: None,
        };
        let answer = self.send_transition(&capture).await;
        self.record_settlement(&capture, &answer, amount);
    }

    /// Settles a hold (or not); returns what a capture posted.
    async fn settle(
        &self,
        rng: &mut StdRng,
        key: &str,
        hold: &str,
        amount: Decimal,
        short: bool,
    ) -> Option<Decimal> {
        let transition = |kind, suffix: &str, amount: Option<String>| TransitionInput {
            kind,
            idempotency_key: format!("{key}-{suffix}"),
            payment_id: hold.to_owned(),
            amount,
        };
        let choice = rng.random_range(0..100);
        let part = money(rng.random_range(1..=cents(amount).max(1)));
        let attempts: Vec<TransitionInput> = match choice {
            // A short hold is mostly left to expire.
            _ if short && choice < 70 => Vec::new(),
            0..35 => vec![transition(TransitionKind::Capture, "capture", None)],
            35..55 => vec![transition(TransitionKind::Capture, "capture", Some(part))],
            55..75 => vec![transition(TransitionKind::Void, "void", None)],
            75..92 => (0..rng.random_range(2..=3))
                .map(|racer| {
                    if racer % 2 == 0 {
                        transition(TransitionKind::Capture, &format!("race{racer}"), None)
                    } else {
                        transition(TransitionKind::Void, &format!("race{racer}"), None)
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let answers = futures::future::join_all(
            attempts
                .iter()
                .map(|transition| self.send_transition(transition)),
        )
        .await;
        let mut captured = None;
        for (transition, answer) in attempts.iter().zip(answers) {
            if let Some(posted) = self.record_settlement(transition, &answer, amount) {
                captured = Some(posted);
            }
        }
        captured
    }

    /// Refunds `posted` of `payment`: once, all or part, or two or three refunds of 60 %
    /// each racing, of which at most one fits.
    async fn refund(&self, rng: &mut StdRng, key: &str, payment: &str, posted: Decimal) {
        lock(&self.lifecycle)
            .posted
            .insert(payment.to_owned(), posted);
        let racers = if rng.random_bool(0.4) {
            rng.random_range(2..=3)
        } else {
            1
        };
        let share = if racers > 1 || rng.random_bool(0.5) {
            Some(money((cents(posted) * 6 / 10).max(1)))
        } else {
            None
        };
        let refunds: Vec<TransitionInput> = (0..racers)
            .map(|racer| TransitionInput {
                kind: TransitionKind::Refund,
                idempotency_key: format!("{key}-refund{racer}"),
                payment_id: payment.to_owned(),
                amount: share.clone(),
            })
            .collect();
        let answers =
            futures::future::join_all(refunds.iter().map(|refund| self.send_transition(refund)))
                .await;
        for (refund, answer) in refunds.iter().zip(answers) {
            self.record_refund(refund, &answer);
        }
    }

    /// A resend of an acknowledged transition: it must replay what it did.
    pub(super) async fn resend_transition(&self, transition: &TransitionInput) {
        let answer = self.send_transition(transition).await;
        match (&transition.kind, &answer) {
            (
                _,
                Answer::Done {
                    replayed: false, ..
                },
            ) => self.violation(format!(
                "{} key {} did its work twice",
                transition.kind.mutation(),
                transition.idempotency_key
            )),
            (TransitionKind::Refund, _) => self.record_refund(transition, &answer),
            _ => {
                let held = lock(&self.lifecycle)
                    .holds
                    .get(&transition.payment_id)
                    .map(|hold| hold.amount)
                    .unwrap_or_default();
                self.record_settlement(transition, &answer, held);
            }
        }
    }

    /// Sends a transition until it has an answer, retrying with its key.
    async fn send_transition(&self, transition: &TransitionInput) -> Answer {
        let Some(response) = self.send_write(|| self.client.transition(transition)).await else {
            return Answer::GaveUp;
        };
        if let Some(code) = error_code(&response) {
            return Answer::Refused(code.to_owned());
        }
        let payload = &response["data"][transition.kind.mutation()];
        Answer::Done {
            payment: payload["payment"].clone(),
            replayed: payload["replayed"].as_bool().unwrap_or(false),
        }
    }

    /// Records a capture's or void's answer; returns what an acknowledged capture posted.
    fn record_settlement(
        &self,
        transition: &TransitionInput,
        answer: &Answer,
        held: Decimal,
    ) -> Option<Decimal> {
        let hold = &transition.payment_id;
        match answer {
            Answer::GaveUp => {
                lock(&self.lifecycle).unknown.insert(hold.clone());
                None
            }
            Answer::Refused(code) => {
                if code != "PAYMENT_NOT_PENDING" {
                    self.violation(format!(
                        "{} of hold {hold} was refused with {code}",
                        transition.kind.mutation()
                    ));
                }
                None
            }
            Answer::Done { payment, replayed } => {
                let posted = match transition.kind {
                    TransitionKind::Capture => Some(
                        transition
                            .amount
                            .as_deref()
                            .and_then(|amount| Decimal::from_str(amount).ok())
                            .unwrap_or(held),
                    ),
                    _ => None,
                };
                let expected = if posted.is_some() { "POSTED" } else { "VOIDED" };
                if payment["status"] != expected {
                    self.violation(format!(
                        "{} key {} answered {payment}",
                        transition.kind.mutation(),
                        transition.idempotency_key
                    ));
                }
                let mut tracked = lock(&self.lifecycle);
                match tracked.settled.get(hold) {
                    Some(first) if first.key != transition.idempotency_key => {
                        let first = first.key.clone();
                        drop(tracked);
                        self.violation(format!(
                            "hold {hold} was settled by key {first} and again by {}",
                            transition.idempotency_key
                        ));
                        return None;
                    }
                    Some(_) => {}
                    None => {
                        tracked.settled.insert(
                            hold.clone(),
                            Settled {
                                key: transition.idempotency_key.clone(),
                                kind: transition.kind,
                                posted,
                            },
                        );
                        drop(tracked);
                        let mut counts = lock(&self.counts);
                        match transition.kind {
                            TransitionKind::Capture => counts.captured += 1,
                            _ => counts.voided += 1,
                        }
                    }
                }
                if !replayed {
                    self.queue_resend(transition);
                }
                posted
            }
        }
    }

    fn record_refund(&self, refund: &TransitionInput, answer: &Answer) {
        match answer {
            Answer::GaveUp => {
                lock(&self.lifecycle)
                    .unknown
                    .insert(refund.payment_id.clone());
            }
            Answer::Refused(code) => {
                if code != "REFUND_EXCEEDS_PAYMENT" {
                    self.violation(format!(
                        "refund of {} was refused with {code}",
                        refund.payment_id
                    ));
                }
            }
            Answer::Done { payment, replayed } => {
                let (Some(id), Some(amount)) =
                    (payment["id"].as_str(), decimal(&payment["amount"]))
                else {
                    self.violation(format!("a refund answered {payment}"));
                    return;
                };
                // A refund is a payment: its key names it like any other's.
                let status = payment["status"].as_str().unwrap_or_default().to_owned();
                self.acknowledge_key(
                    &refund.idempotency_key,
                    &Outcome::Acknowledged {
                        id: id.to_owned(),
                        status: status.clone(),
                        replayed: *replayed,
                    },
                );
                if status == "POSTED" && !replayed {
                    lock(&self.counts).refunded += 1;
                    let mut tracked = lock(&self.lifecycle);
                    let refunds = tracked
                        .refunds
                        .entry(refund.payment_id.clone())
                        .or_default();
                    if !refunds.iter().any(|(known, _)| known == id) {
                        refunds.push((id.to_owned(), amount));
                    }
                }
                if !replayed {
                    self.queue_resend(refund);
                }
            }
        }
    }

    fn queue_resend(&self, transition: &TransitionInput) {
        let mut queue = lock(&self.transition_queue);
        if queue.len() < super::RESEND_QUEUE_MAX {
            queue.push_back(transition.clone());
        }
    }
}

const PAYMENT_STATE: &str = "status postedAmount refundedAmount holdExpiresAt";

/// After the run: each hold reads what its acknowledged settlement (or its expiry) made
/// it, no payment's refunds exceed what it posted, and each account's pending is the
/// sum of its holds still PENDING, within its balance rule.
pub(super) async fn verify(shared: &Shared) -> anyhow::Result<()> {
    if shared.options.lifecycle <= 0.0 && !shared.options.hold_and_capture {
        return Ok(());
    }
    let (holds, settled, unknown, refunds, posted) = {
        let tracked = lock(&shared.lifecycle);
        (
            tracked.holds.clone(),
            tracked.settled.clone(),
            tracked.unknown.clone(),
            tracked.refunds.clone(),
            tracked.posted.clone(),
        )
    };
    // Before anything is read: a hold expired by now must read EXPIRED below.
    let before_reads = chrono::Utc::now();
    let mut ids: Vec<&String> = holds.keys().chain(posted.keys()).collect();
    ids.sort();
    ids.dedup();
    let mut states: HashMap<String, Value> = HashMap::new();
    for chunk in ids.chunks(50) {
        let fields: String = chunk
            .iter()
            .enumerate()
            .map(|(index, id)| {
                format!(
                    "p{index}: payment(id: {}) {{ {PAYMENT_STATE} }} ",
                    serde_json::to_string(id).unwrap_or_default()
                )
            })
            .collect();
        let response = shared
            .graphql_patiently(&format!("{{ {fields} }}"), json!({}))
            .await?;
        for (index, id) in chunk.iter().enumerate() {
            let state = response["data"][format!("p{index}")].clone();
            anyhow::ensure!(state.is_object(), "payment {id}: {response}");
            states.insert((*id).clone(), state);
        }
    }
    // Holds that read PENDING, by payer: all of them, and those that will not expire
    // before the balances below are read (a hold may expire between the two reads).
    let mut pending_by_account: HashMap<String, (Decimal, Decimal)> = HashMap::new();
    let balances_read_by = chrono::Utc::now() + chrono::Duration::seconds(60);
    for (id, hold) in &holds {
        let state = &states[id];
        let status = state["status"].as_str().unwrap_or_default();
        if status == "PENDING" {
            let (at_least, at_most) = pending_by_account.entry(hold.from.clone()).or_default();
            *at_most += hold.amount;
            if hold.expires_at.is_none_or(|at| at > balances_read_by) {
                *at_least += hold.amount;
            }
        }
        if unknown.contains(id) {
            continue;
        }
        let expected: &[&str] = match settled.get(id) {
            Some(Settled {
                kind: TransitionKind::Capture,
                ..
            }) => &["POSTED"],
            Some(_) => &["VOIDED"],
            None => match hold.expires_at {
                Some(at) if at <= before_reads => &["EXPIRED"],
                // A race whose every racer lost cannot leave it settled.
                _ => &["PENDING", "EXPIRED"],
            },
        };
        if !expected.contains(&status) {
            shared.violation(format!("hold {id} reads {status}, expected {expected:?}"));
        }
        if let Some(Settled {
            posted: Some(amount),
            ..
        }) = settled.get(id)
            && decimal(&state["postedAmount"]) != Some(*amount)
        {
            shared.violation(format!(
                "hold {id} captured {amount} but reads postedAmount {}",
                state["postedAmount"]
            ));
        }
    }
    for (id, amount) in &posted {
        let state = &states[id];
        let (Some(posted_now), Some(refunded)) = (
            decimal(&state["postedAmount"]),
            decimal(&state["refundedAmount"]),
        ) else {
            shared.violation(format!("payment {id} reads {state}"));
            continue;
        };
        let acknowledged: Decimal = refunds
            .get(id)
            .map(|list| list.iter().map(|(_, amount)| *amount).sum())
            .unwrap_or_default();
        if refunded > posted_now || acknowledged > refunded || posted_now != *amount {
            shared.violation(format!(
                "payment {id} posted {posted_now} (acknowledged {amount}) but refunded {refunded} \
                 ({acknowledged} acknowledged)"
            ));
        }
    }
    // Pending per account: only when every hold on the accounts is this run's.
    if shared.options.reuse_accounts.is_empty() && unknown.is_empty() {
        let balances = super::verify::strong_balances(shared).await?;
        for (account, state) in &balances {
            let (at_least, at_most) = pending_by_account.get(account).copied().unwrap_or_default();
            if state.pending < at_least || state.pending > at_most {
                shared.violation(format!(
                    "account {account} has {} pending; its PENDING holds add up to {at_least} \
                     (those that cannot have expired since) to {at_most}",
                    state.pending
                ));
            }
        }
    }
    let holds_left = pending_by_account
        .values()
        .filter(|(_, at_most)| !at_most.is_zero())
        .count();
    if !shared.options.quiet {
        eprintln!(
            "lifecycle: {} holds, {} settled, {} refunded payments, {holds_left} accounts with holds left",
            holds.len(),
            settled.len(),
            refunds.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_and_money_round_trip() {
        assert_eq!(cents(Decimal::from_str("12.34").unwrap()), 1234);
        assert_eq!(money(1234), "12.34");
        assert_eq!(money(5), "0.05");
    }
}
