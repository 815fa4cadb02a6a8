//! `createPaymentBatch`: many independent payments in one request, each under its own
//! idempotency key and with its own outcome, committed through group commit as one unit
//! (one batch, decided in the order given), so a thousand payments cost a few
//! statements instead of a thousand requests.
//!
//! Each item is judged exactly as `createPayment` would judge it alone: a key seen
//! before replays or says IDEMPOTENCY_KEY_REUSED, a refusal is that item's own error,
//! a decline is an outcome. What is done once for all items instead of per item: the
//! key look-ups after the batch, and reading back what replays answer.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::batch::{Job, Work};
use super::keyed::KeyedRequest;
use super::write::WriteError;
use super::{Created, Ledger, payment_outcome};
use crate::entity::payment;
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint, IdempotencyKey, Operation};
use crate::ids::{ClientId, PaymentId};
use crate::ledger::lifecycle;
use crate::ledger::requests::NewPayment;
use crate::metrics::PaymentOutcome;

/// One item's answer: the payment (made now or replayed), or its own error.
pub type ItemOutcome = AppResult<Created<payment::Model>>;

/// A request's items as planned: each one's key (none if it did not parse) and step,
/// and the jobs queued for the batch, in order.
struct Plan {
    keyed: Vec<Option<KeyedRequest>>,
    steps: Vec<Step>,
    jobs: Vec<Job>,
}

/// Where an item's answer comes from.
enum Step {
    /// Known before anything ran (it did not parse, or its key names another input).
    Answered(ItemOutcome),
    /// A key this instance remembers with this input: replay the payment it names.
    Replay(Uuid),
    /// The same key as the earlier item `first`; `same_input` if the inputs match.
    SameKeyAs { first: usize, same_input: bool },
    /// Went into the batch; the batch answers its jobs in order.
    Queued,
    /// What the batch (or the refusal before it) said, still to be judged against the
    /// key's record.
    Written(Result<payment::Model, WriteError>),
}

impl Ledger {
    /// Up to `payment_batch_max` payments, each on its own: see the module's comment.
    /// Items that did not parse come in as their error and stay it. A request over the
    /// limit is refused whole before anything happens.
    #[tracing::instrument(skip_all, fields(client = %client.0, payments = items.len()))]
    pub async fn create_payment_batch(
        &self,
        client: ClientId,
        items: Vec<AppResult<NewPayment>>,
    ) -> AppResult<Vec<ItemOutcome>> {
        if items.is_empty() || items.len() > self.payment_batch_max {
            return Err(AppError::bad_input(format!(
                "a payment batch has 1 to {} payments; this one has {}",
                self.payment_batch_max,
                items.len()
            )));
        }
        let Plan { keyed, steps, jobs } = self.plan_items(client, items).await;
        let mut written = self.payments.commit_all(jobs).await.into_iter();
        let steps = steps
            .into_iter()
            .map(|step| match step {
                Step::Queued => Step::Written(written.next().unwrap_or_else(|| {
                    Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
                        "a payment batch answered fewer jobs than it was given"
                    ))))
                })),
                other => other,
            })
            .collect();
        let outcomes = self.judge_items(client, &keyed, steps).await?;
        for outcome in &outcomes {
            self.metrics.payment(match outcome {
                Ok(created) if created.replayed => PaymentOutcome::Replayed,
                Ok(created) => payment_outcome(created.value.status),
                Err(_) => PaymentOutcome::Rejected,
            });
        }
        Ok(outcomes)
    }

    /// Each item's key and step, and the jobs for the batch: an item that did not parse
    /// keeps its error, a key repeated in the request answers as its first item, a key
    /// L1 knows replays (or is IDEMPOTENCY_KEY_REUSED), anything else is queued.
    async fn plan_items(&self, client: ClientId, items: Vec<AppResult<NewPayment>>) -> Plan {
        let now = crate::entity::stored_now();
        let mut first_with_key: HashMap<IdempotencyKey, usize> = HashMap::new();
        let mut plan = Plan {
            keyed: Vec::with_capacity(items.len()),
            steps: Vec::with_capacity(items.len()),
            jobs: Vec::new(),
        };
        for (index, item) in items.into_iter().enumerate() {
            let request = match item {
                Ok(request) => request,
                Err(error) => {
                    plan.keyed.push(None);
                    plan.steps.push(Step::Answered(Err(error)));
                    continue;
                }
            };
            let this = KeyedRequest {
                client,
                key: request.idempotency_key.clone(),
                operation: Operation::CreatePayment,
                fingerprint: request.fingerprint(),
                resource_id: PaymentId::generate().0,
            };
            let step = if let Some(&first) = first_with_key.get(&this.key) {
                let same_input = plan.keyed[first]
                    .as_ref()
                    .is_some_and(|first| first.fingerprint == this.fingerprint);
                Step::SameKeyAs { first, same_input }
            } else {
                first_with_key.insert(this.key.clone(), index);
                match self.caches.known_key(client, &this.key).await {
                    Some((fingerprint, _)) if fingerprint != this.fingerprint => {
                        Step::Answered(Err(AppError::IdempotencyKeyReused))
                    }
                    Some((_, resource_id)) => Step::Replay(resource_id),
                    None => self.queue_item(&this, request, now, &mut plan.jobs),
                }
            };
            plan.keyed.push(Some(this));
            plan.steps.push(step);
        }
        plan
    }

    /// The job for an item with a new key; a hold whose expiry is refused is judged
    /// like any refusal, after the key (as for `createPayment`).
    fn queue_item(
        &self,
        keyed: &KeyedRequest,
        request: NewPayment,
        now: DateTime<Utc>,
        jobs: &mut Vec<Job>,
    ) -> Step {
        let hold_expires_at = request
            .hold
            .map(|hold| lifecycle::hold_expiry(hold.expires_at, now, self.hold_ttl))
            .transpose();
        match hold_expires_at {
            Ok(hold_expires_at) => {
                jobs.push(Job {
                    request: keyed.clone(),
                    work: Work::Pay {
                        request,
                        hold_expires_at,
                    },
                    span: tracing::Span::current(),
                });
                Step::Queued
            }
            Err(error) => Step::Written(Err(WriteError::Invalid(error))),
        }
    }

    /// Each item's outcome from its step, as `create_once` judges one request: a key
    /// another request owns, or that names an earlier request of a refused item,
    /// replays or says IDEMPOTENCY_KEY_REUSED. Those keys are looked up in one query,
    /// the payments replays answer read in one, and an item that repeats a key answers
    /// as the first did.
    async fn judge_items(
        &self,
        client: ClientId,
        keyed: &[Option<KeyedRequest>],
        steps: Vec<Step>,
    ) -> AppResult<Vec<ItemOutcome>> {
        let to_look_up: Vec<_> = steps
            .iter()
            .zip(keyed)
            .filter_map(|(step, keyed)| match step {
                Step::Written(Err(WriteError::KeyTaken | WriteError::Invalid(_))) => {
                    keyed.as_ref().map(|keyed| &keyed.key)
                }
                _ => None,
            })
            .collect();
        let records = idempotency::find_records(&self.db, client, &to_look_up).await?;
        let mut judged = Vec::with_capacity(steps.len());
        for (step, keyed) in steps.into_iter().zip(keyed) {
            let step = match (step, keyed) {
                (Step::Written(written), Some(keyed)) => {
                    self.judge(keyed, written, records.get(&keyed.key)).await
                }
                (other, _) => other,
            };
            judged.push(step);
        }
        let replayed_ids: Vec<Uuid> = judged
            .iter()
            .filter_map(|step| match step {
                Step::Replay(id) => Some(*id),
                _ => None,
            })
            .collect();
        let replayed = self.payments_by_ids(client, &replayed_ids).await?;
        let mut outcomes: Vec<ItemOutcome> = Vec::with_capacity(judged.len());
        for step in judged {
            let outcome = match step {
                Step::Answered(outcome) => outcome,
                Step::Replay(id) => {
                    self.count_replay(Operation::CreatePayment);
                    replayed
                        .get(&id)
                        .cloned()
                        .map(|value| Created {
                            value,
                            replayed: true,
                        })
                        .ok_or_else(|| {
                            AppError::internal(anyhow::anyhow!(
                                "idempotency key names {id}, which does not exist"
                            ))
                        })
                }
                Step::SameKeyAs { first, same_input } => match &outcomes[first] {
                    _ if !same_input => Err(AppError::IdempotencyKeyReused),
                    Ok(created) => {
                        self.count_replay(Operation::CreatePayment);
                        Ok(Created {
                            value: created.value.clone(),
                            replayed: true,
                        })
                    }
                    Err(error) => Err(error.clone()),
                },
                Step::Queued | Step::Written(_) => Err(AppError::internal(anyhow::anyhow!(
                    "a payment batch item was left unjudged"
                ))),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// One item's written outcome against its key's record (`record`, if there is one).
    async fn judge(
        &self,
        keyed: &KeyedRequest,
        written: Result<payment::Model, WriteError>,
        record: Option<&(Fingerprint, Uuid)>,
    ) -> Step {
        match (written, record) {
            (Ok(payment), _) => {
                self.caches
                    .remember_key(
                        keyed.client,
                        &keyed.key,
                        &keyed.fingerprint,
                        keyed.resource_id,
                    )
                    .await;
                Step::Answered(Ok(Created {
                    value: payment,
                    replayed: false,
                }))
            }
            (Err(WriteError::KeyTaken | WriteError::Invalid(_)), Some((fingerprint, _)))
                if *fingerprint != keyed.fingerprint =>
            {
                Step::Answered(Err(AppError::IdempotencyKeyReused))
            }
            (Err(WriteError::KeyTaken | WriteError::Invalid(_)), Some((fingerprint, id))) => {
                self.caches
                    .remember_key(keyed.client, &keyed.key, fingerprint, *id)
                    .await;
                if *id == keyed.resource_id {
                    // Its own earlier attempt committed; only the answer was lost.
                    return self.own_payment(keyed.client, *id).await;
                }
                Step::Replay(*id)
            }
            // The owner of the key committed, so its record should be there.
            (Err(WriteError::KeyTaken), None) => Step::Answered(Err(AppError::RetryLater)),
            (Err(WriteError::Invalid(error)), None) => Step::Answered(Err(error)),
            (Err(error), _) => Step::Answered(Err(error.into_app_error())),
        }
    }

    async fn own_payment(&self, client: ClientId, id: Uuid) -> Step {
        Step::Answered(match self.payments_by_ids(client, &[id]).await {
            Ok(mut found) => found
                .remove(&id)
                .map(|value| Created {
                    value,
                    replayed: false,
                })
                .ok_or_else(|| {
                    AppError::internal(anyhow::anyhow!("a committed payment {id} was not found"))
                }),
            Err(error) => Err(error),
        })
    }
}
