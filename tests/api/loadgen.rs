//! The load generator against a test server, with duplicates, races, a hot account and
//! reads turned on, then its verifier (through the API and the database audit).

use std::process::Command;

use clap::Parser;
use loadgen::Options;

use crate::helpers::{Backend, TestApp, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    loadgen_with_duplicates_and_races_finds_no_violation,
    loadgen_lifecycle_mix_finds_no_violation,
    loadgen_bulk_mix_finds_no_violation
);

/// loadgen's options against `app`, with duplicates and races, its database audit on,
/// and `more` flags.
fn loadgen_options(app: &TestApp, more: &[&str]) -> Options {
    let base = [
        "loadgen",
        "--url",
        &app.address,
        "--api-key",
        &app.api_key,
        "--duplicate-rate",
        "0.2",
        "--race-rate",
        "0.05",
        "--verify-database-url",
        &app.database.url,
        "--quiet",
    ];
    Options::parse_from(base.iter().chain(more))
}

/// `loadgen_options` for 400 operations by 12 clients over 6 accounts.
fn busy_options(app: &TestApp, more: &[&str]) -> Options {
    let busy = [
        "--concurrency",
        "12",
        "--requests",
        "400",
        "--accounts",
        "6",
    ];
    let all: Vec<&str> = busy.iter().chain(more).copied().collect();
    loadgen_options(app, &all)
}

async fn loadgen_with_duplicates_and_races_finds_no_violation(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let options = busy_options(
        &app,
        &[
            "--initial-balance",
            "20.00",
            "--hot-share",
            "0.5",
            "--read-ratio",
            "0.1",
        ],
    );
    let report = loadgen::run(options).await.expect("loadgen runs");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.payments > 100, "{report}");
    assert!(
        report.posted > 0 && report.declined > 0,
        "accounts start nearly empty: {report}"
    );
    assert!(
        report.replayed > 0,
        "duplicates and races were replayed: {report}"
    );
    assert_eq!(report.gave_up, 0, "{report}");
    app.assert_ledger_sound().await;

    // A smaller run that logs what it acknowledged (the binary's exit code and JSON
    // report are tested in the loadgen crate, loadgen/tests/binary.rs).
    let log = std::env::temp_dir().join(format!(
        "ledger-acknowledged-{}.tsv",
        uuid::Uuid::new_v4().simple()
    ));
    let log_path = log.to_string_lossy().into_owned();
    let options = loadgen_options(
        &app,
        &[
            "--concurrency",
            "4",
            "--requests",
            "60",
            "--accounts",
            "3",
            "--acknowledged-log",
            &log_path,
        ],
    );
    let report = loadgen::run(options).await.expect("loadgen runs");
    assert_eq!(
        report.to_json()["violations"],
        serde_json::json!([]),
        "{report}"
    );

    // The verifier alone, from the database: the log checks out...
    let verify = |log: std::path::PathBuf| {
        let url = app.database.url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_payments-ledger"))
                .env("DATABASE_URL", url)
                .arg("verify")
                .arg("--acknowledged")
                .arg(log)
                .output()
                .expect("verify runs")
        })
    };
    let acknowledged = std::fs::read_to_string(&log).expect("loadgen wrote its log");
    assert!(acknowledged.lines().count() > 10, "{acknowledged}");
    let output = verify(log.clone()).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // ...and a claim the ledger does not back is a violation, with exit code 1.
    let (first_key, _) = acknowledged
        .lines()
        .next()
        .unwrap()
        .split_once('\t')
        .unwrap();
    let forged = format!("{acknowledged}{first_key}\tpay_0193a5b0c1d27f3e8a4b5c6d7e8f9a0b\n");
    std::fs::write(&log, forged).unwrap();
    let output = verify(log.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("VIOLATION") && stdout.contains("does not exist"),
        "{stdout}"
    );
    std::fs::remove_file(&log).ok();
}

/// Holds, captures, voids, expiries, racing refunds and groups, with duplicates and races.
async fn loadgen_lifecycle_mix_finds_no_violation(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let options = busy_options(
        &app,
        &[
            "--initial-balance",
            "200.00",
            "--hot-share",
            "0.3",
            "--lifecycle",
            "0.5",
            "--groups",
            "0.2",
        ],
    );
    let report = loadgen::run(options).await.expect("loadgen runs");
    assert!(report.violations.is_empty(), "{report}");
    for (what, count) in [
        ("held", report.held),
        ("captured", report.captured),
        ("voided", report.voided),
        ("refunded", report.refunded),
        ("made whole as a group", report.groups_posted),
        ("declined whole as a group", report.groups_declined),
    ] {
        assert!(count > 0, "the mix {what} something: {report}");
    }
    assert!(
        report.errors.contains_key("PAYMENT_NOT_PENDING"),
        "racing settlements lost: {report}"
    );
    assert_eq!(report.gave_up, 0, "{report}");
    app.assert_ledger_sound().await;
}

/// `--bulk`: batches of 25 with items and whole batches resent and batches raced, on
/// accounts that start nearly empty, so batches decline their later items.
async fn loadgen_bulk_mix_finds_no_violation(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut options = loadgen_options(
        &app,
        &[
            "--concurrency",
            "4",
            "--requests",
            "40",
            "--accounts",
            "6",
            "--initial-balance",
            "50.00",
            "--bulk",
            "25",
        ],
    );
    options.duplicate_rate = 0.3;
    options.race_rate = 0.3;
    let report = loadgen::run(options).await.expect("loadgen runs");
    assert!(report.violations.is_empty(), "{report}");
    assert!(
        report.payments > 250,
        "40 operations of 25 payments: {report}"
    );
    assert!(
        report.posted > 0 && report.declined > 0,
        "accounts start nearly empty: {report}"
    );
    assert!(
        report.replayed > 0,
        "resent items, resent batches and raced batches replayed: {report}"
    );
    assert_eq!(report.gave_up, 0, "{report}");
    app.assert_ledger_sound().await;
}
