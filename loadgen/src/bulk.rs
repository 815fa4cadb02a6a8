//! `--bulk N`: new payments go out N at a time in one `createPaymentBatch`, each under
//! its own key, with the run's duplicates and races: a share of each batch's items
//! (`--duplicate-rate`) are earlier acknowledged payments sent again, a share of the
//! batches (`--race-rate`) are sent two or three times at once, and acknowledged
//! batches are resent whole later (`--duplicate-rate`). Every item's answer goes
//! through the same acknowledgement as a single payment's (one payment per key, the
//! acknowledged log), so the verifier and `payments-ledger verify --acknowledged` check
//! every acknowledged item.

use ledger_client::{PaymentInput, error_code};
use rand::Rng;
use rand::rngs::StdRng;

use super::{Outcome, RESEND_QUEUE_MAX, Shared, lock, means_try_again};

/// Batches kept for resending whole.
const BATCH_QUEUE_MAX: usize = 100;

impl Shared {
    /// One bulk operation: a resend of an earlier batch, or a new one.
    pub(super) async fn bulk(&self, rng: &mut StdRng, run: &str, sequence: u64) {
        let duplicates = self.options.duplicate_rate.clamp(0.0, 1.0);
        if rng.random_bool(duplicates) {
            let queued = lock(&self.batch_queue).pop_front();
            if let Some(batch) = queued {
                self.send_batch(&batch).await;
                return;
            }
        }
        let batch: Vec<PaymentInput> = (0..self.options.bulk)
            .map(|index| {
                let resend = rng
                    .random_bool(duplicates)
                    .then(|| lock(&self.resend_queue).pop_front())
                    .flatten();
                resend.unwrap_or_else(|| {
                    self.new_payment(rng, &format!("{run}-b{sequence}"), index as u64)
                })
            })
            .collect();
        let senders = if rng.random_bool(self.options.race_rate.clamp(0.0, 1.0)) {
            rng.random_range(2..=3)
        } else {
            1
        };
        futures::future::join_all((0..senders).map(|_| self.send_batch(&batch))).await;
        {
            let mut resends = lock(&self.resend_queue);
            for input in &batch {
                if resends.len() < RESEND_QUEUE_MAX
                    && lock(&self.acknowledged).contains_key(&input.idempotency_key)
                {
                    resends.push_back(input.clone());
                }
            }
        }
        let mut batches = lock(&self.batch_queue);
        if batches.len() < BATCH_QUEUE_MAX {
            batches.push_back(batch);
        }
    }

    /// Sends a batch until each item has an answer: the whole batch again (same keys)
    /// after a lost answer, then again only the items that answered "later"
    /// (RETRY_LATER, OUTCOME_UNKNOWN, TIMEOUT, INTERNAL), within `--retries` rounds.
    async fn send_batch(&self, batch: &[PaymentInput]) {
        let mut pending: Vec<PaymentInput> = batch.to_vec();
        for _ in 0..=self.options.retries {
            let Some(response) = self
                .send_write(|| self.client.create_payment_batch(&pending))
                .await
            else {
                return;
            };
            if error_code(&response).is_some() {
                // Refused whole: `send_write` counted the code; nothing happened.
                return;
            }
            let Some(results) = response["data"]["createPaymentBatch"]["results"]
                .as_array()
                .filter(|results| results.len() == pending.len())
            else {
                self.error("MALFORMED_RESPONSE");
                return;
            };
            let mut again = Vec::new();
            for (input, result) in pending.iter().zip(results) {
                if let Some(code) = result["error"]["code"].as_str() {
                    self.error(code);
                    if means_try_again(code) {
                        again.push(input.clone());
                    }
                    continue;
                }
                let payment = &result["payment"];
                match (payment["id"].as_str(), payment["status"].as_str()) {
                    (Some(id), Some(status)) => self.acknowledge(
                        input,
                        &Outcome::Acknowledged {
                            id: id.to_owned(),
                            status: status.to_owned(),
                            replayed: result["replayed"].as_bool().unwrap_or(false),
                        },
                    ),
                    _ => self.error("MALFORMED_RESPONSE"),
                }
            }
            if again.is_empty() {
                return;
            }
            pending = again;
        }
        lock(&self.counts).gave_up += pending.len() as u64;
    }
}
