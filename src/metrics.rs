//! Prometheus metrics, one registry per application instance (so tests that run several
//! instances in one process read each instance's own numbers). Served at `/metrics` in
//! the OpenMetrics text format, which Prometheus scrapes natively.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// An enum of label values, written in Prometheus' lower case.
macro_rules! label_values {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(match self {
                    $(Self::$variant => $text),+
                })
            }
        }
    };
}

label_values!(CacheName {
    Balance => "balance",
    Account => "account",
    Payment => "payment",
    PaymentEntries => "payment_entries",
    Settlement => "settlement",
    Entry => "entry",
    IdempotencyKey => "idempotency_key",
});
label_values!(CacheLevel { L1 => "l1", L2 => "l2" });
label_values!(CacheResult { Hit => "hit", Miss => "miss" });
label_values!(PaymentOutcome {
    Posted => "posted",
    Held => "held",
    Declined => "declined",
    Replayed => "replayed",
    Rejected => "rejected",
});

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: CacheName,
    pub level: CacheLevel,
    pub result: CacheResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PaymentLabels {
    pub outcome: PaymentOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

/// Where a read that may lag went: a replica's `host:port`, or `primary`. Replicas are
/// the operator's fixed list, so the values are few.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedByLabels {
    pub served_by: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of a fixed set (`RequestLabels::method_of`): a label must never take a value
    /// a caller chose, or each made-up value adds a series to every scrape.
    pub method: &'static str,
    pub path: &'static str,
    pub status: u16,
}

impl RequestLabels {
    pub fn method_of(method: &axum::http::Method) -> &'static str {
        use axum::http::Method;
        match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        }
    }
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub cache_l2_errors: Counter,
    pub invalidations_sent: Counter,
    pub invalidations_received: Counter,
    pub payments: Family<PaymentLabels, Counter>,
    pub idempotent_replays: Family<OperationLabels, Counter>,
    pub write_retries: Counter,
    pub write_retries_exhausted: Counter,
    pub write_batch_payments: Histogram,
    /// Payment batches written in one statement, and those the database refused.
    pub write_one_trip_batches: Counter,
    pub write_one_trip_fallbacks: Counter,
    pub database_statements: Counter,
    /// Times a pool moved to another host of a multi-host DATABASE_URL (a failover).
    pub database_host_switches: Counter,
    /// Reads that a replica may serve, by who served them.
    pub database_replica_eligible_reads: Family<ServedByLabels, Counter>,
    /// 1 while a replica is within DATABASE_REPLICA_MAX_LAG_MS and serves reads.
    pub database_replica_serving: Family<ReplicaLabels, Gauge>,
    /// Queries run without validating again (known documents), and those of them that
    /// erred and ran again under full validation.
    pub graphql_validations_skipped: Counter,
    pub graphql_validated_reruns: Counter,
    /// Long polls parked on this instance now.
    pub long_polls_parked: Gauge,
    pub request_duration: Family<RequestLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ledger");
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by cache, level and hit or miss",
            cache_lookups.clone(),
        );
        let cache_l2_errors = Counter::default();
        registry.register(
            "cache_l2_errors",
            "Redis (L2) operations that failed or timed out; the request went on without L2",
            cache_l2_errors.clone(),
        );
        let invalidations_sent = Counter::default();
        registry.register(
            "cache_invalidations_sent",
            "Balance invalidations published to other instances",
            invalidations_sent.clone(),
        );
        let invalidations_received = Counter::default();
        registry.register(
            "cache_invalidations_received",
            "Balance invalidations received from other instances",
            invalidations_received.clone(),
        );
        let payments = Family::<PaymentLabels, Counter>::default();
        registry.register(
            "payments",
            "createPayment outcomes: posted, declined, replayed, or rejected with an error",
            payments.clone(),
        );
        let idempotent_replays = Family::<OperationLabels, Counter>::default();
        registry.register(
            "idempotent_replays",
            "Requests answered by replaying an earlier outcome of the same key",
            idempotent_replays.clone(),
        );
        let write_retries = Counter::default();
        registry.register(
            "write_retries",
            "Write transactions rerun after a serialization failure, deadlock or busy database",
            write_retries.clone(),
        );
        let write_retries_exhausted = Counter::default();
        registry.register(
            "write_retries_exhausted",
            "Writes that ran out of retries and answered RETRY_LATER",
            write_retries_exhausted.clone(),
        );
        // 1, 2, 4, … 1024 payments.
        let write_batch_payments = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "write_batch_payments",
            "Payments per write transaction (group commit): how many concurrent payments shared one commit",
            write_batch_payments.clone(),
        );
        let write_one_trip_batches = Counter::default();
        registry.register(
            "write_one_trip_batches",
            "Payment batches written in one statement and one round trip, decided on the account rows this instance last committed",
            write_one_trip_batches.clone(),
        );
        let write_one_trip_fallbacks = Counter::default();
        registry.register(
            "write_one_trip_fallbacks",
            "One-statement batches the database refused (an account moved since, a key was taken, a conflict) and that ran the long way",
            write_one_trip_fallbacks.clone(),
        );
        let long_polls_parked = Gauge::default();
        registry.register(
            "long_polls_parked",
            "Long polls (GET with If-None-Match and Prefer: wait) parked on this instance, waiting for a change",
            long_polls_parked.clone(),
        );
        let graphql_validations_skipped = Counter::default();
        registry.register(
            "graphql_validations_skipped",
            "Queries whose document passed full validation before and validates alike for any variables, run without validating again",
            graphql_validations_skipped.clone(),
        );
        let graphql_validated_reruns = Counter::default();
        registry.register(
            "graphql_validated_reruns",
            "Of those, the ones that erred and ran again under full validation, so the error is the one a first sight gives",
            graphql_validated_reruns.clone(),
        );
        let database_statements = Counter::default();
        registry.register(
            "database_statements",
            "SQL statements sent to the database",
            database_statements.clone(),
        );
        let database_host_switches = Counter::default();
        registry.register(
            "database_host_switches",
            "Times a connection pool moved to another host of DATABASE_URL (a failover)",
            database_host_switches.clone(),
        );
        let database_replica_eligible_reads = Family::<ServedByLabels, Counter>::default();
        registry.register(
            "database_replica_eligible_reads",
            "Reads a replica may serve, by who served them (a replica or the primary)",
            database_replica_eligible_reads.clone(),
        );
        let database_replica_serving = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "database_replica_serving",
            "1 while a replica is within DATABASE_REPLICA_MAX_LAG_MS of the primary and serves reads",
            database_replica_serving.clone(),
        );
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~1.6 s.
            Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            request_duration.clone(),
        );
        Self {
            registry,
            cache_lookups,
            cache_l2_errors,
            invalidations_sent,
            invalidations_received,
            payments,
            idempotent_replays,
            write_retries,
            write_retries_exhausted,
            write_batch_payments,
            write_one_trip_batches,
            write_one_trip_fallbacks,
            database_statements,
            database_host_switches,
            database_replica_eligible_reads,
            database_replica_serving,
            graphql_validations_skipped,
            long_polls_parked,
            graphql_validated_reruns,
            request_duration,
        }
    }

    pub fn cache_lookup(
        &self,
        cache: CacheName,
        level: CacheLevel,
        result: CacheResult,
        count: usize,
    ) {
        if count > 0 {
            self.cache_lookups
                .get_or_create(&CacheLabels {
                    cache,
                    level,
                    result,
                })
                .inc_by(count as u64);
        }
    }

    pub fn cache_lookup_count(
        &self,
        cache: CacheName,
        level: CacheLevel,
        result: CacheResult,
    ) -> u64 {
        self.cache_lookups
            .get_or_create(&CacheLabels {
                cache,
                level,
                result,
            })
            .get()
    }

    /// Counts a read that a replica may serve, `replica` naming the one that did.
    pub fn replica_eligible_read(&self, replica: Option<&str>) {
        self.database_replica_eligible_reads
            .get_or_create(&ServedByLabels {
                served_by: replica.unwrap_or("primary").to_owned(),
            })
            .inc();
    }

    pub fn payment(&self, outcome: PaymentOutcome) {
        self.payments
            .get_or_create(&PaymentLabels { outcome })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
