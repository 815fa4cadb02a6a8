//! Polling without subscriptions: conditional GETs (ETag, If-None-Match, 304), long
//! polls (`Prefer: wait=N`) woken by commits here and on other instances, their bounds
//! and shutdown, persisted queries (APQ v1) and trusted documents.

use std::time::{Duration, Instant};

use payments_ledger::config::DocumentPolicy;
use payments_ledger::documents::{DASHBOARD_DOCUMENT, sha256_hex};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{AppOptions, Backend, TestApp, spawn_app, spawn_app_with};
use crate::on_both_backends;

const LATEST: &str = "query Latest { payments(last: 3) { nodes { id amount } } }";

/// An answer to a GET: status, headers, body.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
    took: Duration,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn etag(&self) -> String {
        self.header("etag").expect("an ETag").to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("JSON: {}", self.body))
    }

    fn code(&self) -> Option<String> {
        self.json()["errors"][0]["extensions"]["code"]
            .as_str()
            .map(str::to_owned)
    }
}

/// GETs `/graphql` at `address` with `parameters` and `headers`, as `key`.
async fn get(
    address: &str,
    key: Option<&str>,
    parameters: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Got {
    let mut request = reqwest::Client::new()
        .get(format!("{address}/graphql"))
        .query(parameters);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("a body");
    Got {
        status,
        headers,
        body,
        took: started.elapsed(),
    }
}

/// Sends a long poll of `query` at `address` as `key`, holding `etag`, and asks to wait
/// (`wait` is the `Prefer` value); its answer comes from the returned task.
fn spawn_poll(
    address: &str,
    key: &str,
    query: &'static str,
    etag: &str,
    wait: &'static str,
) -> tokio::task::JoinHandle<Got> {
    let (address, key, etag) = (address.to_owned(), key.to_owned(), etag.to_owned());
    tokio::spawn(async move {
        get(
            &address,
            Some(&key),
            &[("query", query)],
            &[("if-none-match", &etag), ("prefer", wait)],
        )
        .await
    })
}

/// A document named by its APQ hash alone, over GET.
async fn get_by_hash(app: &TestApp, address: &str, hash: &str, headers: &[(&str, &str)]) -> Got {
    get(
        address,
        Some(&app.api_key),
        &[("extensions", &apq(hash))],
        headers,
    )
    .await
}

async fn latest(app: &TestApp, address: &str, headers: &[(&str, &str)]) -> Got {
    get(address, Some(&app.api_key), &[("query", LATEST)], headers).await
}

/// Pays 1.00 from a fresh funded pair, returns the payment's id.
async fn pay(app: &TestApp, address: &str, pair: &(String, String)) -> String {
    let response = app
        .pay_until_final_at(
            address,
            &Uuid::new_v4().to_string(),
            &pair.0,
            &pair.1,
            "1.00",
            "USD",
        )
        .await;
    response["data"]["createPayment"]["payment"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("paid: {response}"))
        .to_owned()
}

async fn pair(app: &TestApp) -> (String, String) {
    (
        app.create_account("USD", "UNBOUNDED", None).await,
        app.create_account("USD", "NON_NEGATIVE", None).await,
    )
}

async fn conditional_gets_answer_304_only_to_the_same_client(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let pair = pair(&app).await;
    pay(&app, &app.address, &pair).await;

    let first = latest(&app, &app.address, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let etag = first.etag();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    assert_eq!(first.header("cache-control"), Some("private, no-cache"));
    assert!(
        first
            .header("vary")
            .is_some_and(|vary| vary.contains("Authorization")),
        "{:?}",
        first.headers
    );
    assert_eq!(first.header("preference-applied"), None);

    // The same answer again: 304, no body, the same tag.
    let again = latest(&app, &app.address, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.etag(), etag);
    assert_eq!(again.header("cache-control"), Some("private, no-cache"));

    // Another client holding that tag gets its own answer in full.
    let other_key = app.other_client_key().await;
    let other = get(
        &app.address,
        Some(&other_key),
        &[("query", LATEST)],
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_ne!(other.etag(), etag);
    assert_eq!(other.json()["data"]["payments"]["nodes"], json!([]));

    // A change: the old tag no longer matches (once the feed lists it: on PostgreSQL
    // another test's transaction may hold it back a moment, docs/consistency.md).
    let paid = pay(&app, &app.address, &pair).await;
    app.settle_feeds().await;
    let changed = latest(&app, &app.address, &[("if-none-match", &etag)]).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.etag(), etag);
    assert!(changed.body.contains(&paid), "{}", changed.body);

    // Mutations are never answered from a tag, nor run over GET.
    let mutation = "mutation { createAccount(input: {idempotencyKey: \"k\", currency: \"USD\", balanceRule: UNBOUNDED}) { account { id } } }";
    let refused = get(
        &app.address,
        Some(&app.api_key),
        &[("query", mutation)],
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("POST"));
    // POST answers carry no tag.
    let posted = app
        .http
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&app.api_key)
        .header("if-none-match", changed.etag())
        .json(&json!({ "query": LATEST }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert!(posted.headers().get("etag").is_none());
}

async fn a_long_poll_waits_for_a_change(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let pair = pair(&app).await;
    let etag = latest(&app, &app.address, &[]).await.etag();

    // Nothing changes: after the wait, 304 saying the wait was applied.
    let idle = latest(
        &app,
        &app.address,
        &[("if-none-match", &etag), ("prefer", "wait=1")],
    )
    .await;
    assert_eq!(idle.status, 304);
    assert_eq!(idle.header("preference-applied"), Some("wait=1"));
    assert!(idle.took >= Duration::from_millis(900), "{:?}", idle.took);

    // A payment while it waits: answered with it, long before its 30 s.
    let poll = spawn_poll(&app.address, &app.api_key, LATEST, &etag, "wait=30");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paid = pay(&app, &app.address, &pair).await;
    let woken = poll.await.unwrap();
    assert_eq!(woken.status, 200, "{}", woken.body);
    assert!(woken.body.contains(&paid), "{}", woken.body);
    assert_eq!(woken.header("preference-applied"), Some("wait=30"));
    assert!(woken.took < Duration::from_secs(20), "{:?}", woken.took);
    eprintln!("long poll answered {:?} after it was sent", woken.took);

    // A wait past the cap is granted the cap.
    let woken_etag = woken.etag();
    let capped_headers = [
        ("if-none-match", woken_etag.as_str()),
        ("prefer", "wait=100000"),
    ];
    let capped = latest(&app, &app.address, &capped_headers);
    let pay_soon = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pay(&app, &app.address, &pair).await
    };
    let (capped, _) = tokio::join!(capped, pay_soon);
    assert_eq!(capped.status, 200);
    assert_eq!(
        capped.header("preference-applied"),
        Some(format!("wait={}", payments_ledger::http::WAIT_SECONDS_MAX).as_str())
    );

    // An account created, or changed, wakes it too.
    let etag = capped.etag();
    let accounts = "{ accounts(first: 50) { nodes { id externalRef } } }";
    let before = get(
        &app.address,
        Some(&app.api_key),
        &[("query", accounts)],
        &[],
    )
    .await;
    let poll = spawn_poll(
        &app.address,
        &app.api_key,
        accounts,
        &before.etag(),
        "wait=30",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = app.create_account("EUR", "UNBOUNDED", None).await;
    let woken = poll.await.unwrap();
    assert_eq!(woken.status, 200);
    assert!(woken.body.contains(&created), "{}", woken.body);
    assert_ne!(etag, woken.etag());
}

/// A payment committed on one instance wakes a poll parked on another, through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_on_another_instance_wakes_a_parked_poll() {
    let options = AppOptions {
        redis: true,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let other = app.spawn_replica().await;
    let pair = pair(&app).await;
    let etag = latest(&app, &other.address, &[]).await.etag();
    let mut took = Vec::new();
    for _ in 0..5 {
        let etag_now = latest(&app, &other.address, &[]).await.etag();
        let poll = spawn_poll(&other.address, &app.api_key, LATEST, &etag_now, "wait=30");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let committed = Instant::now();
        let paid = pay(&app, &app.address, &pair).await;
        let woken = poll.await.unwrap();
        assert_eq!(woken.status, 200, "{}", woken.body);
        assert!(woken.body.contains(&paid), "{}", woken.body);
        took.push(committed.elapsed());
    }
    assert_ne!(etag, latest(&app, &other.address, &[]).await.etag());
    eprintln!("cross-instance wakes, from the payment's request to the poll's answer: {took:?}");
    assert!(took.iter().all(|took| *took < Duration::from_secs(20)));
}

/// Without Redis nothing carries a wake between instances; a poll parked on the other
/// one still looks again when its wait ends, and answers the change, not 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_a_poll_elsewhere_answers_the_change_when_its_wait_ends() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let other = app.spawn_replica().await;
    let pair = pair(&app).await;
    let etag = latest(&app, &other.address, &[]).await.etag();
    let poll = spawn_poll(&other.address, &app.api_key, LATEST, &etag, "wait=5");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paid = pay(&app, &app.address, &pair).await;
    // The feed lists the payment long before the wait ends, unless another test's
    // transaction holds it back (docs/consistency.md), when a 304 would be right: the
    // test waits for the feed here, well inside the poll's 5 s.
    app.settle_feeds().await;
    let answered = poll.await.unwrap();
    assert_eq!(answered.status, 200, "{}", answered.body);
    assert!(answered.body.contains(&paid));
}

/// Parked polls are bounded per client and per instance (429 RETRY_LATER with a
/// hint), hold no database connection and no admission permit: the client parking
/// the most still pays, and queries still run on a read pool of two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_polls_are_bounded_and_hold_nothing_a_payment_needs() {
    let options = AppOptions {
        long_polls_per_client_max: Some(40),
        long_polls_max: Some(50),
        max_connections: Some(2),
        client_concurrent_requests_max: Some(8),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Sqlite, options).await else {
        return;
    };
    let pair = pair(&app).await;
    let etag = latest(&app, &app.address, &[]).await.etag();
    let parked = PARKED;
    let (polls, refused) = park_one_by_one(&app, &app.api_key, &etag, "wait=20", 60).await;
    assert_eq!(
        (polls.len(), refused.len()),
        (40, 20),
        "60 polls, 40 may park"
    );
    for answer in &refused {
        assert_eq!(answer.status, 429, "{}", answer.body);
        assert_eq!(answer.code().as_deref(), Some("RETRY_LATER"));
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
    // Another client parks in what is left of the instance's bound, then no more.
    let other_key = app.other_client_key().await;
    let other_etag = get(&app.address, Some(&other_key), &[("query", LATEST)], &[])
        .await
        .etag();
    let (others, others_refused) =
        park_one_by_one(&app, &other_key, &other_etag, "wait=3", 11).await;
    assert_eq!(
        (others.len(), others_refused.len()),
        (10, 1),
        "the instance holds 50"
    );
    assert_eq!(others_refused[0].status, 429);

    // 50 parked on a pool of two connections and a limit of 8 requests per client: the
    // parking client still reads and pays.
    let read = latest(&app, &app.address, &[]).await;
    assert_eq!(read.status, 200);
    let paid = pay(&app, &app.address, &pair).await;
    // Which wakes every poll of that client with the payment.
    for poll in polls {
        let answer = poll.await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(answer.body.contains(&paid));
    }
    for poll in others {
        assert_eq!(poll.await.unwrap().status, 304);
    }
    assert_eq!(app.metric(parked).await, 0.0);
}

const PARKED: &str = "ledger_long_polls_parked";

/// Parks `count` polls of `key`, one at a time, each until it parked (at once they
/// would meet the limit of requests running per client before the bound on parked
/// polls); returns those parked and the answers of those refused.
async fn park_one_by_one(
    app: &TestApp,
    key: &str,
    etag: &str,
    wait: &'static str,
    count: usize,
) -> (Vec<tokio::task::JoinHandle<Got>>, Vec<Got>) {
    let (mut polls, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let before = app.metric(PARKED).await;
        let poll = spawn_poll(&app.address, key, LATEST, etag, wait);
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if poll.is_finished() {
                refused.push(poll.await.unwrap());
                break;
            }
            if app.metric(PARKED).await > before {
                polls.push(poll);
                break;
            }
        }
    }
    (polls, refused)
}

/// Hostile: one client sends 1 000 long polls at once. No more than its 256 park, the
/// rest are refused with RETRY_LATER at once, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_parking_a_thousand_gets_its_bound_and_no_more() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let etag = latest(&app, &app.address, &[]).await.etag();
    let http = reqwest::Client::new();
    let polls: Vec<_> = (0..1000)
        .map(|_| {
            let request = http
                .get(format!("{}/graphql", app.address))
                .query(&[("query", LATEST)])
                .bearer_auth(&app.api_key)
                .header("if-none-match", &etag)
                .header("prefer", "wait=3");
            tokio::spawn(async move {
                request
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
            })
        })
        .collect();
    let mut most_parked = 0.0_f64;
    let other_key = app.other_client_key().await;
    for _ in 0..10 {
        most_parked = most_parked.max(app.metric(PARKED).await);
        let other = get(&app.address, Some(&other_key), &[("query", LATEST)], &[]).await;
        assert_eq!(other.status, 200, "{}", other.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = std::collections::BTreeMap::new();
    for poll in polls {
        let status = poll.await.unwrap().expect("every poll is answered");
        *statuses.entry(status).or_insert(0) += 1;
    }
    eprintln!("1 000 polls of one client: {statuses:?}, at most {most_parked} parked at once");
    assert!(most_parked <= 256.0, "{most_parked}");
    assert!(most_parked > 0.0);
    assert_eq!(
        statuses.keys().copied().collect::<Vec<u16>>(),
        [304, 429],
        "parked polls answer 304 after their wait, the rest 429"
    );
    assert_eq!(app.metric(PARKED).await, 0.0);
}

/// Shutdown answers parked polls at once instead of waiting out their waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_parked_polls_at_once() {
    use payments_ledger::startup::Drain;
    use payments_ledger::{Application, Config, auth};
    payments_ledger::telemetry::init();
    let database = crate::helpers::TestDatabase::sqlite();
    let mut config = Config::for_database(database.url.clone());
    config.server.shutdown_drain_seconds = 1;
    let application = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", application.port());
    let client = auth::create_client(application.database(), "polls")
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<Drain>();
    let server =
        tokio::spawn(application.run_until(async move { stopped.await.unwrap_or(Drain::No) }));
    let key = client.api_key.clone();
    let etag = get(&address, Some(&key), &[("query", LATEST)], &[])
        .await
        .etag();
    let polls: Vec<_> = (0..20)
        .map(|_| spawn_poll(&address, &key, LATEST, &etag, "wait=60"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(polls.iter().all(|poll| !poll.is_finished()));
    let stopping = Instant::now();
    stop.send(Drain::Yes).unwrap();
    for poll in polls {
        let answer = poll.await.unwrap();
        assert_eq!(answer.status, 304);
    }
    // While draining, a poll is answered at once, without the preference applied.
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops without waiting out the polls")
        .unwrap()
        .unwrap();
    eprintln!(
        "20 parked polls answered and the server stopped {:?} after the signal",
        stopping.elapsed()
    );
}

fn apq(hash: &str) -> String {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } }).to_string()
}

async fn persisted_queries_over_get_and_post(backend: Backend) {
    let options = AppOptions {
        redis: backend == Backend::Postgres,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let query = format!(
        "query Persisted {{ accounts(first: 2) {{ nodes {{ id }} }} # {}\n}}",
        Uuid::new_v4()
    );
    let hash = sha256_hex(&query);
    // Unknown: the error Apollo Client and urql retry on.
    let unknown = get_by_hash(&app, &app.address, &hash, &[]).await;
    assert_eq!(
        unknown.code().as_deref(),
        Some("PERSISTED_QUERY_NOT_FOUND"),
        "{}",
        unknown.body
    );
    assert_eq!(
        unknown.json()["errors"][0]["message"],
        "PersistedQueryNotFound"
    );
    let post = |body: Value, key: Option<String>| {
        let request = app
            .http
            .post(format!("{}/graphql", app.address))
            .json(&body);
        async move {
            let request = match key {
                Some(key) => request.bearer_auth(key),
                None => request,
            };
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let (_, answer) = post(
        json!({ "extensions": extensions }),
        Some(app.api_key.clone()),
    )
    .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );

    // A wrong hash for the document sent with it is refused, and registers nothing.
    let wrong = sha256_hex("{ __typename }");
    let (_, answer) = post(
        json!({ "query": query, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": wrong } } }),
        Some(app.api_key.clone()),
    )
    .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_HASH_MISMATCH",
        "{answer}"
    );
    // A caller without a key runs nothing, so registers nothing.
    let (_, answer) = post(json!({ "query": query, "extensions": extensions }), None).await;
    assert!(answer["errors"].is_array(), "{answer}");
    let still_unknown = get_by_hash(&app, &app.address, &hash, &[]).await;
    assert_eq!(
        still_unknown.code().as_deref(),
        Some("PERSISTED_QUERY_NOT_FOUND")
    );

    // The document with its hash runs and registers it; then the hash alone runs it,
    // over GET (conditional like any GET) and POST, and by documentId.
    let (status, answer) = post(
        json!({ "query": query, "extensions": extensions }),
        Some(app.api_key.clone()),
    )
    .await;
    assert_eq!(status, 200);
    assert!(answer["errors"].is_null(), "{answer}");
    let by_hash = get_by_hash(&app, &app.address, &hash, &[]).await;
    assert_eq!(by_hash.status, 200);
    assert_eq!(by_hash.json(), answer);
    let unchanged = get_by_hash(
        &app,
        &app.address,
        &hash,
        &[("if-none-match", &by_hash.etag())],
    )
    .await;
    assert_eq!(unchanged.status, 304);
    let (_, by_post) = post(
        json!({ "extensions": extensions }),
        Some(app.api_key.clone()),
    )
    .await;
    assert_eq!(by_post, answer);
    let document_id = format!("sha256:{hash}");
    let by_id = get(
        &app.address,
        Some(&app.api_key),
        &[("documentId", &document_id)],
        &[],
    )
    .await;
    assert_eq!(by_id.json(), answer);
    let (_, by_id) = post(
        json!({ "documentId": document_id }),
        Some(app.api_key.clone()),
    )
    .await;
    assert_eq!(by_id, answer);

    // Registered in Redis: another instance knows it.
    if backend == Backend::Postgres {
        let other = app.spawn_replica().await;
        let elsewhere = get_by_hash(&app, &other.address, &hash, &[]).await;
        assert_eq!(elsewhere.json(), answer);
    }

    // A persisted mutation is still a mutation: never over GET.
    let mutation = "mutation M($input: CreateAccountInput!) { createAccount(input: $input) { account { id } } }";
    let mutation_hash = sha256_hex(mutation);
    let input = json!({ "input": { "idempotencyKey": Uuid::new_v4().to_string(), "currency": "USD", "balanceRule": "UNBOUNDED" } });
    let (_, created) = post(
        json!({ "query": mutation, "variables": input, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": mutation_hash } } }),
        Some(app.api_key.clone()),
    )
    .await;
    assert!(
        created["data"]["createAccount"]["account"]["id"].is_string(),
        "{created}"
    );
    let refused = get(
        &app.address,
        Some(&app.api_key),
        &[
            ("extensions", &apq(&mutation_hash)),
            ("variables", &input.to_string()),
        ],
        &[],
    )
    .await;
    assert_eq!(refused.status, 405);

    // Malformed namings are clear request errors.
    for (parameters, code) in [
        (vec![("documentId", "md5:abc")], "BAD_USER_INPUT"),
        (
            vec![(
                "extensions",
                "{\"persistedQuery\": {\"version\": 2, \"sha256Hash\": \"x\"}}",
            )],
            "PERSISTED_QUERY_NOT_SUPPORTED",
        ),
        (
            vec![("extensions", "{\"persistedQuery\": 5}")],
            "BAD_USER_INPUT",
        ),
        (vec![("extensions", "not json")], "BAD_USER_INPUT"),
    ] {
        let answer = get(&app.address, Some(&app.api_key), &parameters, &[]).await;
        assert_eq!(
            answer.code().as_deref(),
            Some(code),
            "{parameters:?}: {}",
            answer.body
        );
    }
}

/// A manifest in Apollo's format, written for the test.
fn manifest(directory: &std::path::Path, documents: &[&str]) -> std::path::PathBuf {
    let operations: Vec<Value> = documents
        .iter()
        .enumerate()
        .map(|(index, body)| json!({ "id": sha256_hex(body), "name": format!("Op{index}"), "type": "query", "body": body }))
        .collect();
    let path = directory.join("manifest.json");
    std::fs::write(
        &path,
        json!({ "format": "apollo-persisted-query-manifest", "version": 1, "operations": operations }).to_string(),
    )
    .unwrap();
    path
}

async fn trusted_documents_only_run_what_the_manifest_holds(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let path = manifest(directory.path(), &[LATEST]);
    let options = AppOptions {
        documents: DocumentPolicy::Trusted,
        trusted_documents: Some(path),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let document_id = format!("sha256:{}", sha256_hex(LATEST));
    let by_id = get(
        &app.address,
        Some(&app.api_key),
        &[("documentId", &document_id)],
        &[],
    )
    .await;
    assert_eq!(by_id.status, 200, "{}", by_id.body);
    assert!(
        by_id.json()["data"]["payments"].is_object(),
        "{}",
        by_id.body
    );
    let by_apq = get(
        &app.address,
        Some(&app.api_key),
        &[("extensions", &apq(&sha256_hex(LATEST)))],
        &[],
    )
    .await;
    assert_eq!(by_apq.json(), by_id.json());
    // The dashboard's document ships with the server.
    let dashboard = get(
        &app.address,
        Some(&app.api_key),
        &[
            (
                "documentId",
                &format!("sha256:{}", sha256_hex(DASHBOARD_DOCUMENT)),
            ),
            ("variables", "{\"withChart\": false, \"last\": 5}"),
        ],
        &[],
    )
    .await;
    assert!(
        dashboard.json()["data"]["accounts"].is_object(),
        "{}",
        dashboard.body
    );

    // Anything else is refused, mutations included, and changes nothing.
    let accounts_before = app.count("accounts").await;
    for query in [
        "{ payments(last: 3) { nodes { id } } }",
        "mutation { createAccount(input: {idempotencyKey: \"k\", currency: \"USD\", balanceRule: UNBOUNDED}) { account { id } } }",
    ] {
        let response = app
            .http
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&app.api_key)
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "DOCUMENT_NOT_TRUSTED",
            "{answer}"
        );
        let registering = json!({ "query": query, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(query) } } });
        let answer: Value = app
            .http
            .post(format!("{}/graphql", app.address))
            .bearer_auth(&app.api_key)
            .json(&registering)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "DOCUMENT_NOT_TRUSTED",
            "{answer}"
        );
    }
    assert_eq!(app.count("accounts").await, accounts_before);
}

/// A manifest that does not check out stops the start, saying why.
#[tokio::test]
async fn a_bad_manifest_stops_the_start() {
    let directory = tempfile::tempdir().unwrap();
    let start = |path: std::path::PathBuf| async move {
        let database = crate::helpers::TestDatabase::sqlite();
        let mut config = payments_ledger::Config::for_database(database.url.clone());
        config.server.trusted_documents = Some(path);
        match payments_ledger::Application::build(config).await {
            Ok(_) => panic!("a bad manifest was accepted"),
            Err(error) => format!("{error:#}"),
        }
    };
    let wrong_hash = directory.path().join("wrong.json");
    std::fs::write(
        &wrong_hash,
        json!({ sha256_hex("{ a }"): "{ b }" }).to_string(),
    )
    .unwrap();
    let message = start(wrong_hash).await;
    assert!(
        message.contains("GRAPHQL_TRUSTED_DOCUMENTS=") && message.contains("not the SHA-256"),
        "{message}"
    );

    let malformed = directory.path().join("malformed.json");
    std::fs::write(
        &malformed,
        "{\"format\": \"apollo-persisted-query-manifest\", ",
    )
    .unwrap();
    let message = start(malformed).await;
    assert!(message.contains("not valid JSON"), "{message}");

    // A huge file is refused by its size, before it is read.
    let huge = directory.path().join("huge.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(payments_ledger::documents::MANIFEST_BYTES_MAX + 1)
        .unwrap();
    let message = start(huge).await;
    assert!(message.contains("more than"), "{message}");

    let missing = start(directory.path().join("missing.json")).await;
    assert!(missing.contains("cannot read the manifest"), "{missing}");
}

on_both_backends!(
    conditional_gets_answer_304_only_to_the_same_client,
    a_long_poll_waits_for_a_change,
    persisted_queries_over_get_and_post,
    trusted_documents_only_run_what_the_manifest_holds,
);
