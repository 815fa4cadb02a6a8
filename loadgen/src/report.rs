//! The loadgen's closing report.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{Shared, lock};

pub struct Report {
    pub elapsed: Duration,
    pub requests: u64,
    /// Distinct keys acknowledged: payments that exist because of this run.
    pub payments: u64,
    pub posted: u64,
    pub declined: u64,
    pub replayed: u64,
    /// Holds placed, captured and voided, and refunds posted (`--lifecycle`).
    pub held: u64,
    pub captured: u64,
    pub voided: u64,
    pub refunded: u64,
    /// Groups made whole and declined whole (`--groups`).
    pub groups_posted: u64,
    pub groups_declined: u64,
    pub reads: u64,
    pub gave_up: u64,
    pub errors: BTreeMap<String, u64>,
    pub write_latency: Histogram<u64>,
    pub read_latency: Histogram<u64>,
    pub violations: Vec<String>,
}

impl Report {
    pub(super) fn new(shared: &Shared, elapsed: Duration) -> Self {
        let counts = lock(&shared.counts);
        Self {
            elapsed,
            requests: counts.requests,
            payments: lock(&shared.acknowledged).len() as u64,
            posted: counts.posted,
            declined: counts.declined,
            replayed: counts.replayed,
            held: counts.held,
            captured: counts.captured,
            voided: counts.voided,
            refunded: counts.refunded,
            groups_posted: counts.groups_posted,
            groups_declined: counts.groups_declined,
            reads: counts.reads,
            gave_up: counts.gave_up,
            errors: counts.errors.clone(),
            write_latency: lock(&shared.write_latency).clone(),
            read_latency: lock(&shared.read_latency).clone(),
            violations: lock(&shared.violations).clone(),
        }
    }

    pub fn payments_per_second(&self) -> f64 {
        self.payments as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "requests": self.requests,
            "requests_per_second": self.requests_per_second(),
            "payments": self.payments,
            "payments_per_second": self.payments_per_second(),
            "posted": self.posted,
            "declined": self.declined,
            "replayed": self.replayed,
            "lifecycle": {
                "held": self.held,
                "captured": self.captured,
                "voided": self.voided,
                "refunded": self.refunded,
            },
            "groups": {
                "posted": self.groups_posted,
                "declined": self.groups_declined,
            },
            "reads": self.reads,
            "gave_up": self.gave_up,
            "errors": self.errors,
            "payment_latency_ms": {
                "p50": self.write_latency_ms(0.5),
                "p90": self.write_latency_ms(0.9),
                "p99": self.write_latency_ms(0.99),
                "max": self.write_latency.max() as f64 / 1000.0,
            },
            "read_latency_ms": {
                "p50": self.read_latency.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": self.read_latency.value_at_quantile(0.99) as f64 / 1000.0,
            },
            "violations": self.violations,
        })
    }

    /// A latency quantile of payment requests, in milliseconds.
    pub fn write_latency_ms(&self, quantile: f64) -> f64 {
        self.write_latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |histogram: &Histogram<u64>, quantile: f64| {
            histogram.value_at_quantile(quantile) as f64 / 1000.0
        };
        writeln!(f, "elapsed            {:.2} s", self.elapsed.as_secs_f64())?;
        writeln!(
            f,
            "requests           {} ({:.1}/s)",
            self.requests,
            self.requests_per_second()
        )?;
        writeln!(
            f,
            "payments           {} ({:.1}/s)",
            self.payments,
            self.payments_per_second()
        )?;
        writeln!(f, "  posted           {}", self.posted)?;
        writeln!(f, "  declined         {}", self.declined)?;
        writeln!(f, "  replayed         {}", self.replayed)?;
        writeln!(f, "  gave up          {}", self.gave_up)?;
        if self.held > 0 {
            writeln!(f, "  held             {}", self.held)?;
            writeln!(f, "  captured         {}", self.captured)?;
            writeln!(f, "  voided           {}", self.voided)?;
            writeln!(f, "  refunded         {}", self.refunded)?;
        }
        if self.groups_posted + self.groups_declined > 0 {
            writeln!(f, "  groups posted    {}", self.groups_posted)?;
            writeln!(f, "  groups declined  {}", self.groups_declined)?;
        }
        writeln!(f, "reads              {}", self.reads)?;
        for (code, count) in &self.errors {
            writeln!(f, "error {code:<12} {count}")?;
        }
        for (name, histogram) in [
            ("payment", &self.write_latency),
            ("read", &self.read_latency),
        ] {
            if !histogram.is_empty() {
                writeln!(
                    f,
                    "{name:<7} latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                    ms(histogram, 0.5),
                    ms(histogram, 0.9),
                    ms(histogram, 0.99),
                    histogram.max() as f64 / 1000.0
                )?;
            }
        }
        if self.violations.is_empty() {
            write!(f, "verifier           no violations")
        } else {
            writeln!(
                f,
                "verifier           {} VIOLATION(S):",
                self.violations.len()
            )?;
            for violation in &self.violations {
                writeln!(f, "  {violation}")?;
            }
            Ok(())
        }
    }
}
