//! The pages the server serves, in a real headless Chromium (Debian's `chromium` and
//! `chromedriver`, driven over WebDriver): GraphiQL renders and runs a query once a key
//! is set, and the dashboard shows a payment made after it loaded. The browser cannot
//! resolve any host but 127.0.0.1, so a page that needed a CDN would fail here.
//!
//! Without chromedriver on the machine these tests print SKIP, unless
//! `LEDGER_TEST_REQUIRE_BROWSER` is set (as `.ci/run` sets it), when they fail.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, Backend, TestApp, skip, spawn_app, spawn_app_with};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const PATIENCE: Duration = Duration::from_secs(30);

/// A chromedriver process and one browser session on it. `close` ends the session,
/// which makes chromedriver quit the browser; on every other path (a failing test
/// included) dropping the driver kills its whole process group.
struct Browser {
    client: Client,
    _driver: Driver,
}

impl Browser {
    async fn close(self) {
        if let Err(error) = self.client.clone().close().await {
            eprintln!("the WebDriver session did not end cleanly: {error}");
        }
    }
}

/// chromedriver, leading its own process group (`process_group(0)`): dropping it kills
/// the group, so the browser it started and that browser's helpers go with it.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMEDRIVER).exists() {
        if std::env::var_os("LEDGER_TEST_REQUIRE_BROWSER").is_some() {
            panic!("{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver");
        }
        skip("chromedriver is not installed (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1000",
                // Offline, as users run it: no host but this machine resolves.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        }),
    );
    let address = format!("http://127.0.0.1:{port}");
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(capabilities);
    for _ in 0..100 {
        match builder.connect(&address).await {
            Ok(client) => {
                return Some(Browser {
                    client,
                    _driver: driver,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("chromedriver did not accept a session at {address}");
}

/// Runs `script` (a function body returning a value) until it returns something truthy.
async fn wait_until(client: &Client, what: &str, script: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = client
            .execute(script, Vec::new())
            .await
            .expect("the script runs");
        let truthy = match &value {
            Value::Null | Value::Bool(false) => false,
            Value::String(text) => !text.is_empty(),
            _ => true,
        };
        if truthy {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            let text = client
                .execute("return document.body.innerText", Vec::new())
                .await
                .unwrap_or_default();
            panic!("timed out waiting for {what}; the page says: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until GraphiQL has rendered its editor.
async fn graphiql_rendered(client: &Client) {
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(".graphiql-execute-button"))
        .await
        .expect("GraphiQL renders");
}

async fn click(client: &Client, selector: &str) {
    client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("{selector}: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("clicking {selector}: {error}"));
}

/// Presses GraphiQL's run button and returns the result pane's text once it contains
/// `expected`.
async fn run_query_until(client: &Client, expected: &str) -> String {
    click(client, ".graphiql-execute-button").await;
    let script = format!(
        "const text = document.querySelector('.result-window')?.innerText || '';
         return text.includes({expected:?}) ? text : null"
    );
    let result = wait_until(client, &format!("{expected:?} in the result"), &script).await;
    result.as_str().unwrap().to_owned()
}

/// Every file the page loaded came from the server itself.
async fn assert_loaded_only_from(client: &Client, app: &TestApp) {
    let loaded = client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)
               .concat([location.href])",
            Vec::new(),
        )
        .await
        .expect("resource timings");
    let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
    assert!(loaded.len() > 1, "{loaded:?}");
    for url in loaded {
        assert!(
            url.starts_with(&format!("{}/", app.address)),
            "loaded from elsewhere: {url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graphiql_renders_and_runs_a_query_once_a_key_is_set() {
    let Some(browser) = browser().await else {
        return;
    };
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let client = &browser.client;
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&account, "12.34", "USD").await;

    client.goto(&format!("{}/", app.address)).await.unwrap();
    graphiql_rendered(client).await;
    assert_loaded_only_from(client, &app).await;
    let query_text = wait_until(
        client,
        "the default query",
        "return document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror.getValue()",
    )
    .await;
    assert!(
        query_text.as_str().unwrap().contains("Authorization"),
        "the page says how to set the key: {query_text}"
    );

    // No header is preset: the first run meets the server's own message.
    let result = run_query_until(client, "API key").await;
    assert!(result.contains("missing API key"), "{result}");
    assert!(!result.contains("invalid API key"), "{result}");

    // The user pastes their key into the Headers editor and runs the query again.
    let headers = json!({ "Authorization": format!("Bearer {}", app.api_key) }).to_string();
    client
        .execute(
            "const editor = document.querySelector(
               '.graphiql-editor-tool[aria-label=Headers] .graphiql-editor:not(.hidden) .CodeMirror');
             editor.CodeMirror.setValue(arguments[0]);
             return true",
            vec![json!(headers)],
        )
        .await
        .expect("the headers editor takes the key");
    let result = run_query_until(client, "12.34").await;
    assert!(result.contains("POSTED"), "{result}");
    assert!(!result.contains("API key"), "{result}");
    save_screenshot(client, "graphiql").await;
    let url = client.current_url().await.unwrap();
    assert!(!url.as_str().contains(&app.api_key));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_payment_made_after_it_loaded() {
    let Some(browser) = browser().await else {
        return;
    };
    // Redis carries the news of a payment on one instance to the dashboard's poll
    // parked on the other.
    let options = AppOptions {
        redis: true,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Sqlite, options).await else {
        return;
    };
    let client = &browser.client;
    let funding = app.create_account("EUR", "UNBOUNDED", None).await;
    let mut named = ledger_client::AccountInput::new("customer", "EUR", "NON_NEGATIVE");
    named.external_ref = Some("customer-42".to_owned());
    let created = app.client.create_account(&named).await.unwrap();
    let customer = ledger_client::account_id_of(&created)
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    app.fund(&customer, "5.00", "EUR").await;

    client
        .goto(&format!("{}/dashboard", app.address))
        .await
        .unwrap();
    let label = client
        .find(Locator::Css("label[for=api-key]"))
        .await
        .expect("the key input is labelled");
    assert_eq!(label.text().await.unwrap(), "API key");
    client
        .find(Locator::Id("api-key"))
        .await
        .unwrap()
        .send_keys(&app.api_key)
        .await
        .unwrap();
    click(client, "#connect button[type=submit]").await;
    wait_until(
        client,
        "the first refresh",
        "return document.getElementById('status').textContent.startsWith('Live')",
    )
    .await;
    assert_loaded_only_from(client, &app).await;
    let stored = client
        .execute(
            "return sessionStorage.length === 1 && location.href",
            Vec::new(),
        )
        .await
        .unwrap();
    let url = stored.as_str().expect("the key is kept in sessionStorage");
    assert!(!url.contains(&app.api_key), "the key is never in the URL");

    // Idle, the dashboard's refresh waits at the server: few requests a minute.
    let requests_sent = || async {
        let sent = client
            .execute(
                "return Number(document.getElementById('status').dataset.requests || 0)",
                Vec::new(),
            )
            .await
            .unwrap();
        sent.as_u64().unwrap()
    };
    let replica = app.spawn_replica().await;
    // Let it reach the long poll of its second answer before measuring idleness.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_from = requests_sent().await;
    let idle_for = Duration::from_secs(12);
    tokio::time::sleep(idle_for).await;
    let idle_requests = requests_sent().await - idle_from;
    eprintln!(
        "idle dashboard: {idle_requests} requests in {idle_for:?} ({:.1} a minute)",
        idle_requests as f64 * 60.0 / idle_for.as_secs_f64()
    );
    // At most 6 a minute; with its 25 s wait a parked refresh spans the whole window.
    assert!(idle_requests <= 1, "{idle_requests} requests while idle");

    // A payment made now, through another instance, shows up live: the time from just
    // before it is sent to its row appearing, both on the browser's clock.
    client
        .execute(
            "window.rowSeenAt = {};
             new MutationObserver(() => {
               for (const row of document.querySelectorAll('#payments tr[data-payment-id]')) {
                 window.rowSeenAt[row.dataset.paymentId] ??= Date.now();
               }
             }).observe(document.getElementById('payments'), { childList: true, subtree: true });
             return true",
            Vec::new(),
        )
        .await
        .unwrap();
    let sent_at = client
        .execute("return Date.now()", Vec::new())
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    let response = app
        .pay_at(
            &replica.address,
            "after-load",
            &customer,
            &funding,
            "1.25",
            "EUR",
        )
        .await;
    let payment = response["data"]["createPayment"]["payment"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"))
        .to_owned();
    let row = wait_until(
        client,
        "the new payment's row",
        &format!(
            "const row = document.querySelector('#payments tr[data-payment-id=\"{payment}\"]');
             return row && row.innerText"
        ),
    )
    .await;
    let seen_at = client
        .execute(&format!("return window.rowSeenAt[{payment:?}]"), Vec::new())
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    let latency = seen_at - sent_at;
    eprintln!("payment on another instance to its row on the dashboard: {latency:.0} ms");
    // Woken by the payment, not found by the parked refresh's end 25 s on.
    assert!(latency < 10_000.0, "{latency} ms");
    // People know accounts by their external references.
    assert!(row.as_str().unwrap().contains("customer-42 → "), "{row}");
    assert!(row.as_str().unwrap().contains("1.25 EUR"), "{row}");

    // Balances and totals follow: the customer holds 5.00 - 1.25.
    wait_until(
        client,
        "the customer's new balance",
        &format!(
            "const row = document.querySelector('#accounts tr[data-account-id=\"{customer}\"]');
             return row && row.innerText.includes('3.75 EUR')"
        ),
    )
    .await;
    let totals = wait_until(
        client,
        "the EUR totals",
        "const row = document.querySelector('#totals tr[data-currency=EUR]');
         return row && row.innerText",
    )
    .await;
    assert!(totals.as_str().unwrap().contains("3.75"), "{totals}");

    // Choosing the account draws its balance over time from its entries.
    click(
        client,
        &format!("#accounts tr[data-account-id=\"{customer}\"]"),
    )
    .await;
    let range = wait_until(
        client,
        "the balance chart",
        "return document.querySelector('#chart polyline') &&
                document.getElementById('chart-range').textContent",
    )
    .await;
    assert!(range.as_str().unwrap().starts_with("2 entries"), "{range}");
    save_screenshot(client, "dashboard").await;
    browser.close().await;
}

/// With `LEDGER_TEST_SCREENSHOTS=<dir>`, keeps a PNG of the page for a person to look at.
async fn save_screenshot(client: &Client, name: &str) {
    if let Some(directory) = std::env::var_os("LEDGER_TEST_SCREENSHOTS") {
        let png = client.screenshot().await.expect("a screenshot");
        std::fs::write(
            std::path::Path::new(&directory).join(format!("{name}.png")),
            png,
        )
        .expect("the screenshot is written");
    }
}

/// Under `GRAPHQL_DOCUMENTS=trusted` the GraphiQL page says that typed queries are
/// refused, and a typed query is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graphiql_says_when_only_trusted_documents_run() {
    let Some(browser) = browser().await else {
        return;
    };
    let directory = tempfile::tempdir().unwrap();
    let manifest = directory.path().join("persisted-documents.json");
    let trusted = "{ accounts(first: 1) { nodes { id } } }";
    std::fs::write(
        &manifest,
        json!({ payments_ledger::documents::sha256_hex(trusted): trusted }).to_string(),
    )
    .unwrap();
    let options = AppOptions {
        documents: payments_ledger::config::DocumentPolicy::Trusted,
        trusted_documents: Some(manifest),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Sqlite, options).await else {
        return;
    };
    let client = &browser.client;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    let notice = wait_until(
        client,
        "the trusted-documents notice",
        "return document.getElementById('trusted-only')?.textContent",
    )
    .await;
    assert!(
        notice
            .as_str()
            .unwrap()
            .contains("GRAPHQL_DOCUMENTS=trusted"),
        "{notice}"
    );
    graphiql_rendered(client).await;
    let result = run_query_until(client, "DOCUMENT_NOT_TRUSTED").await;
    assert!(result.contains("not in its manifest"), "{result}");
    save_screenshot(client, "graphiql-trusted").await;
    browser.close().await;
}
