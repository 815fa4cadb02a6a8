//! `pollbench`: what polling costs a payments-ledger server, for `bench/polling.sh` and
//! `bench/writes.sh`. Each mode prints one JSON line.
//!
//! - `throughput`: closed-loop polls of the dashboard's query as fast as they are
//!   answered: `post` (the query text, as the dashboard sent it before long polls),
//!   `get` (GET by document id, a full answer each time) or `get304` (GET with the
//!   current ETag: 304s).
//! - `dashboards`: N dashboards as the built-in one polls (`long`: GET with
//!   If-None-Match and `Prefer: wait=25`, then at least 1 s after a change; `old`:
//!   a POST every 2 s), counting requests.
//! - `park`: parks N long polls spread over the given keys and holds them, printing a
//!   line once every poll is parked (for RSS sampling), until stdin closes or the
//!   time is up.
//! - `wake`: one poll parked on `--poll-url`, a payment on `--pay-url`, the time until
//!   the poll answers; repeated, p50 and p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use payments_ledger::documents::{DASHBOARD_DOCUMENT, sha256_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[derive(Parser)]
struct Options {
    #[arg(value_enum)]
    mode: Mode,
    /// The server polled (and, for `wake`, where the polls park).
    #[arg(long)]
    url: String,
    /// API keys, comma-separated; polls are spread over them.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// `throughput`: concurrent pollers; `dashboards` and `park`: how many.
    #[arg(long, default_value_t = 16)]
    count: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `throughput`: how each poll is sent.
    #[arg(long, value_enum, default_value_t = Style::Get)]
    style: Style,
    /// `wake`: where the payments are made.
    #[arg(long)]
    pay_url: Option<String>,
    /// `wake`: how many payments.
    #[arg(long, default_value_t = 200)]
    payments: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Throughput,
    Dashboards,
    Park,
    Wake,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Style {
    /// POST of the query text.
    Post,
    /// GET by document id, a full answer each time.
    Get,
    /// GET with the current ETag.
    Get304,
    /// The dashboard before long polls: POST every 2 s.
    Old,
    /// The dashboard with long polls.
    Long,
}

fn variables() -> String {
    json!({ "withChart": false, "last": 50 }).to_string()
}

struct Poller {
    http: reqwest::Client,
    url: String,
    key: String,
    get_url: String,
}

/// One answer: status, ETag, whether the wait was applied.
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    waited: bool,
    body: String,
}

impl Poller {
    fn new(http: reqwest::Client, url: &str, key: &str) -> Self {
        let document_id = format!("sha256:{}", sha256_hex(DASHBOARD_DOCUMENT));
        let query: String = [
            ("documentId", document_id.as_str()),
            ("variables", &variables()),
        ]
        .iter()
        .map(|(name, value)| format!("{name}={}", urlencode(value)))
        .collect::<Vec<_>>()
        .join("&");
        Self {
            http,
            url: url.to_owned(),
            key: key.to_owned(),
            get_url: format!("{url}/graphql?{query}"),
        }
    }

    async fn post(&self) -> anyhow::Result<Answer> {
        let body =
            json!({ "query": DASHBOARD_DOCUMENT, "variables": { "withChart": false, "last": 50 } });
        let response = self
            .http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        answer(response).await
    }

    async fn get(&self, etag: Option<&str>, wait: Option<u64>) -> anyhow::Result<Answer> {
        let mut request = self.http.get(&self.get_url).bearer_auth(&self.key);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        if let Some(wait) = wait {
            request = request.header("prefer", format!("wait={wait}"));
        }
        answer(request.send().await?).await
    }
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let waited = response.headers().contains_key("preference-applied");
    let body = response.text().await?;
    if !(status == StatusCode::OK || status == StatusCode::NOT_MODIFIED) {
        bail!("the server answered {status}: {body}");
    }
    Ok(Answer {
        status,
        etag,
        waited,
        body,
    })
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

fn milliseconds(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

async fn throughput(options: &Options) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let key = options.keys.first().context("--keys")?;
    let poller = Arc::new(Poller::new(http, &options.url, key));
    let etag = poller.get(None, None).await?.etag;
    if options.style == Style::Get304 && etag.is_none() {
        bail!("the server sends no ETag: no 304 to measure");
    }
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    for _ in 0..options.count {
        let (poller, etag, style) = (Arc::clone(&poller), etag.clone(), options.style);
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut not_modified = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let answer = match style {
                    Style::Post => poller.post().await?,
                    Style::Get304 => poller.get(etag.as_deref(), None).await?,
                    _ => poller.get(None, None).await?,
                };
                if answer.status == StatusCode::NOT_MODIFIED {
                    not_modified += 1;
                }
                latencies.record(started.elapsed().as_micros() as u64).ok();
            }
            anyhow::Ok((latencies, not_modified))
        }));
    }
    let (mut latencies, mut not_modified) = (histogram(), 0);
    for task in tasks {
        let (each, count) = task.await??;
        latencies.add(each).ok();
        not_modified += count;
    }
    Ok(json!({
        "polls": latencies.len(),
        "polls_per_second": latencies.len() as f64 / options.seconds as f64,
        "not_modified": not_modified,
        "p50_ms": milliseconds(&latencies, 0.5),
        "p99_ms": milliseconds(&latencies, 0.99),
    }))
}

/// Dashboards as the built-in one polls; counts requests and changed answers.
async fn dashboards(options: &Options) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let requests = Arc::new(AtomicU64::new(0));
    let changes = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    for index in 0..options.count {
        let key = &options.keys[index % options.keys.len()];
        let poller = Poller::new(http.clone(), &options.url, key);
        let (requests, changes, style) =
            (Arc::clone(&requests), Arc::clone(&changes), options.style);
        tasks.push(tokio::spawn(async move {
            let mut etag: Option<String> = None;
            loop {
                let sent = tokio::time::timeout_at(deadline, async {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if style == Style::Old {
                        poller.post().await
                    } else {
                        poller.get(etag.as_deref(), etag.as_ref().map(|_| 25)).await
                    }
                })
                .await;
                let Ok(answer) = sent else { return };
                let Ok(answer) = answer else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let pause = if style == Style::Old {
                    Duration::from_secs(2)
                } else if answer.status == StatusCode::NOT_MODIFIED {
                    if answer.waited {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(2)
                    }
                } else {
                    changes.fetch_add(1, Ordering::Relaxed);
                    etag = answer.etag;
                    Duration::from_secs(1)
                };
                if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let requests = requests.load(Ordering::Relaxed);
    Ok(json!({
        "dashboards": options.count,
        "seconds": options.seconds,
        "requests": requests,
        "changed_answers": changes.load(Ordering::Relaxed),
        "requests_per_dashboard_minute": requests as f64 * 60.0 / options.seconds as f64 / options.count as f64,
    }))
}

/// Parks `count` polls (each on a connection of its own) and holds them.
async fn park(options: &Options) -> anyhow::Result<Value> {
    let mut etags = Vec::new();
    for key in &options.keys {
        let poller = Poller::new(reqwest::Client::new(), &options.url, key);
        etags.push(poller.get(None, None).await?.etag.context("no ETag")?);
    }
    let parked_before = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..options.count {
        let which = index % options.keys.len();
        // A client per poll: one connection each, as separate browsers would have.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let poller = Poller::new(http, &options.url, &options.keys[which]);
        let etag = etags[which].clone();
        let seconds = options.seconds;
        tasks.push(tokio::spawn(async move {
            poller.get(Some(&etag), Some(seconds)).await
        }));
        // Arriving over a few seconds (1 000 in about 2.5 s), as dashboards reconnecting
        // after a deploy do, not in one instant.
        if index % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    // Held until they end: the caller samples memory meanwhile.
    println!("{}", json!({ "parking": options.count }));
    let mut not_modified = 0;
    let mut other = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(answer) if answer.status == StatusCode::NOT_MODIFIED => not_modified += 1,
            Ok(answer) => other.push(answer.status.as_u16()),
            Err(error) => {
                eprintln!("a parked poll failed: {error:#}");
                other.push(0);
            }
        }
    }
    Ok(json!({
        "polls": options.count,
        "not_modified_after_wait": not_modified,
        "other_answers": other.len(),
        "held_seconds": parked_before.elapsed().as_secs_f64(),
    }))
}

/// One poll parked on `url`, a payment on `pay_url`, until the poll answers.
async fn wake(options: &Options) -> anyhow::Result<Value> {
    let key = options.keys.first().context("--keys")?;
    let pay_url = options.pay_url.as_deref().context("--pay-url")?;
    let payer = ledger_client::LedgerClient::new(pay_url, Some(key));
    let mut ids = Vec::new();
    for rule in ["UNBOUNDED", "UNBOUNDED"] {
        let account =
            ledger_client::AccountInput::new(&uuid::Uuid::new_v4().to_string(), "USD", rule);
        let created = payer.create_account(&account).await?;
        ids.push(
            ledger_client::account_id_of(&created)
                .context("an account")?
                .to_owned(),
        );
    }
    let poller = Arc::new(Poller::new(reqwest::Client::new(), &options.url, key));
    let (mut from_send, mut from_ack) = (histogram(), histogram());
    let mut missed = 0;
    for _ in 0..options.payments {
        let etag = poller.get(None, None).await?.etag.context("no ETag")?;
        let poll = {
            let poller = Arc::clone(&poller);
            tokio::spawn(async move {
                let answer = poller.get(Some(&etag), Some(10)).await;
                (answer, Instant::now())
            })
        };
        // Parked by now on an idle server (its first look takes a few ms).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = Instant::now();
        let payment = ledger_client::PaymentInput::new(
            &uuid::Uuid::new_v4().to_string(),
            &ids[0],
            &ids[1],
            "1.00",
            "USD",
        );
        let paid = payer.create_payment(&payment, false).await?;
        let acknowledged = Instant::now();
        if paid["errors"].is_array() {
            bail!("the payment failed: {paid}");
        }
        let (answer, answered) = poll.await?;
        let answer = answer?;
        if answer.status != StatusCode::OK || answer.body.is_empty() {
            missed += 1;
            continue;
        }
        from_send
            .record(answered.duration_since(sent).as_micros() as u64)
            .ok();
        from_ack
            .record(answered.saturating_duration_since(acknowledged).as_micros() as u64)
            .ok();
    }
    Ok(json!({
        "payments": options.payments,
        "woken": from_send.len(),
        "missed": missed,
        "from_send_p50_ms": milliseconds(&from_send, 0.5),
        "from_send_p99_ms": milliseconds(&from_send, 0.99),
        "from_ack_p50_ms": milliseconds(&from_ack, 0.5),
        "from_ack_p99_ms": milliseconds(&from_ack, 0.99),
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = Options::parse();
    let result = match options.mode {
        Mode::Throughput => throughput(&options).await,
        Mode::Dashboards => dashboards(&options).await,
        Mode::Park => park(&options).await,
        Mode::Wake => wake(&options).await,
    };
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
