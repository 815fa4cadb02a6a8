//! Atomic payment groups (`createPayments`): all or nothing, decided in order, one key,
//! on both backends; every test ends by auditing the ledger from its stored rows.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_audit_finds, error_code, run, spawn_app, uuid_of};
use crate::on_both_backends;

on_both_backends!(
    a_group_moves_everything_in_order,
    a_group_whose_third_payment_breaks_a_rule_moves_nothing,
    fifty_concurrent_sends_of_one_group_key_make_one_group,
    racing_groups_conserve_money_and_rules,
    bad_groups_change_nothing,
    the_database_and_the_audit_guard_groups,
);

const GROUP_FIELDS: &str = "replayed
    group { id idempotencyKey declined metadata payments { id } }
    payments { id status declineReason amount currency groupIndex metadata
               group { id } entries { direction amount } }";

async fn create_payments(app: &TestApp, key: &str, payments: Value, metadata: Value) -> Value {
    app.graphql(
        &format!(
            "mutation($input: CreatePaymentsInput!) {{
               createPayments(input: $input) {{ {GROUP_FIELDS} }} }}"
        ),
        json!({ "input": { "idempotencyKey": key, "payments": payments, "metadata": metadata } }),
    )
    .await
}

fn leg(from: &str, to: &str, amount: &str, currency: &str) -> Value {
    json!({ "fromAccountId": from, "toAccountId": to, "amount": amount, "currency": currency })
}

fn statuses(payload: &Value) -> Vec<(String, Option<String>)> {
    payload["payments"]
        .as_array()
        .unwrap_or_else(|| panic!("a group answer: {payload}"))
        .iter()
        .map(|payment| {
            (
                payment["status"].as_str().unwrap().to_owned(),
                payment["declineReason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn a_group_moves_everything_in_order(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let customer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&customer, "100.00", "USD").await;
    let merchant = app.create_account("USD", "NON_NEGATIVE", None).await;
    let fees = app.create_account("USD", "NON_NEGATIVE", None).await;
    let fx_usd = app.create_account("USD", "UNBOUNDED", None).await;
    let fx_eur = app.create_account("EUR", "UNBOUNDED", None).await;
    let merchant_eur = app.create_account("EUR", "NON_NEGATIVE", None).await;

    // The customer's 100.00 split between merchant and fees; the merchant, empty
    // before, converts 50.00 of what the first leg gave it (through UNBOUNDED FX
    // accounts) and holds 5.00 for fees.
    let mut hold = leg(&merchant, &fees, "5.00", "USD");
    hold["pending"] = json!(true);
    let mut split = leg(&customer, &merchant, "90.00", "USD");
    split["metadata"] = json!({ "leg": "split" });
    let payments = json!([
        split,
        leg(&customer, &fees, "10.00", "USD"),
        leg(&merchant, &fx_usd, "50.00", "USD"),
        leg(&fx_eur, &merchant_eur, "45.00", "EUR"),
        hold,
    ]);
    let metadata = json!({ "order": "A-17" });
    let response = create_payments(&app, "group-1", payments.clone(), metadata.clone()).await;
    let payload = &response["data"]["createPayments"];
    assert_eq!(payload["replayed"], false, "{response}");
    assert_eq!(
        statuses(payload),
        ["POSTED", "POSTED", "POSTED", "POSTED", "PENDING"].map(|status| (status.to_owned(), None))
    );
    let group = &payload["group"];
    assert!(group["id"].as_str().unwrap().starts_with("grp_"), "{group}");
    assert_eq!(group["idempotencyKey"], "group-1");
    assert_eq!(group["declined"], false);
    assert_eq!(group["metadata"], metadata);
    for (index, payment) in payload["payments"].as_array().unwrap().iter().enumerate() {
        assert_eq!(payment["groupIndex"], index);
        assert_eq!(payment["group"]["id"], group["id"]);
        assert_eq!(group["payments"][index]["id"], payment["id"]);
    }
    assert_eq!(
        payload["payments"][0]["metadata"],
        json!({ "leg": "split" })
    );
    assert_eq!(payload["payments"][3]["currency"], "EUR");
    assert_eq!(
        payload["payments"][2]["entries"],
        json!([{ "direction": "DEBIT", "amount": "50.00" }, { "direction": "CREDIT", "amount": "50.00" }])
    );
    for (account, expected) in [
        (&customer, "0.00"),
        (&merchant, "40.00"),
        (&fees, "10.00"),
        (&fx_usd, "50.00"),
        (&fx_eur, "-45.00"),
        (&merchant_eur, "45.00"),
    ] {
        assert_eq!(app.balance(account).await.0, expected, "{account}");
    }

    // One key for the whole group: the same request replays it, another is refused.
    let again = create_payments(&app, "group-1", payments.clone(), metadata.clone()).await;
    let replayed = &again["data"]["createPayments"];
    assert_eq!(replayed["replayed"], true, "{again}");
    assert_eq!(replayed["payments"], payload["payments"]);
    assert_eq!(replayed["group"]["id"], group["id"]);
    let mut other = payments.clone();
    other[1]["amount"] = json!("9.99");
    for (payments, metadata) in [(other, metadata.clone()), (payments.clone(), Value::Null)] {
        let reused = create_payments(&app, "group-1", payments, metadata).await;
        assert_eq!(
            error_code(&reused),
            Some("IDEMPOTENCY_KEY_REUSED"),
            "{reused}"
        );
    }
    // Found again by its key, by its id, and its payment by a metadata pair (a list,
    // so once the feed has it); a group's key names no single payment.
    app.settle_feeds().await;
    let found = app
        .graphql(
            "query($key: String!, $id: ID!) {
               paymentGroupByIdempotencyKey(idempotencyKey: $key) { id payments { id } }
               paymentByIdempotencyKey(idempotencyKey: $key) { id }
               node(id: $id) { ... on PaymentGroup { idempotencyKey } }
               payments(metadata: { key: \"leg\", value: \"split\" }) { nodes { id groupIndex } }
             }",
            json!({ "key": "group-1", "id": group["id"] }),
        )
        .await;
    let data = &found["data"];
    assert_eq!(
        data["paymentGroupByIdempotencyKey"]["id"], group["id"],
        "{found}"
    );
    assert_eq!(
        data["paymentGroupByIdempotencyKey"]["payments"],
        group["payments"]
    );
    assert_eq!(data["paymentByIdempotencyKey"], Value::Null);
    assert_eq!(data["node"]["idempotencyKey"], "group-1");
    assert_eq!(
        data["payments"]["nodes"],
        json!([{ "id": payload["payments"][0]["id"], "groupIndex": 0 }])
    );
    app.assert_ledger_sound().await;
}

async fn a_group_whose_third_payment_breaks_a_rule_moves_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let card = app
        .create_account("USD", "CREDIT_LIMIT", Some("5.00"))
        .await;
    let before = [
        app.balance(&payer).await,
        app.balance(&payee).await,
        app.balance(&card).await,
    ];
    let payments = json!([
        leg(&payer, &payee, "4.00", "USD"),
        leg(&card, &payee, "5.00", "USD"),
        leg(&payer, &payee, "6.01", "USD"),
        leg(&payee, &payer, "1.00", "USD"),
    ]);
    let response = create_payments(&app, "breaks", payments.clone(), Value::Null).await;
    let payload = &response["data"]["createPayments"];
    let linked = (
        "DECLINED".to_owned(),
        Some("LINKED_PAYMENT_FAILED".to_owned()),
    );
    assert_eq!(
        statuses(payload),
        [
            linked.clone(),
            linked.clone(),
            ("DECLINED".to_owned(), Some("INSUFFICIENT_FUNDS".to_owned())),
            linked
        ],
        "{response}"
    );
    assert_eq!(payload["group"]["declined"], true);
    for payment in payload["payments"].as_array().unwrap() {
        assert_eq!(payment["entries"], json!([]), "{payment}");
    }
    let after = [
        app.balance(&payer).await,
        app.balance(&payee).await,
        app.balance(&card).await,
    ];
    assert_eq!(after, before, "nothing moved, no version changed");
    // The decline replays as it was, even once the group would fit.
    app.fund(&payer, "1.00", "USD").await;
    let again = create_payments(&app, "breaks", payments.clone(), Value::Null).await;
    assert_eq!(again["data"]["createPayments"]["replayed"], true, "{again}");
    assert_eq!(
        again["data"]["createPayments"]["payments"],
        payload["payments"]
    );
    // Under a new key it fits now and moves whole.
    let fits = create_payments(&app, "fits", payments, Value::Null).await;
    assert!(
        statuses(&fits["data"]["createPayments"])
            .iter()
            .all(|(status, _)| status == "POSTED"),
        "{fits}"
    );
    assert_eq!(app.balance(&payer).await.0, "1.99");
    assert_eq!(app.balance(&card).await.0, "-5.00");
    app.assert_ledger_sound().await;
}

async fn fifty_concurrent_sends_of_one_group_key_make_one_group(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let fees = app.create_account("USD", "NON_NEGATIVE", None).await;
    let payments = json!([
        leg(&payer, &payee, "3.00", "USD"),
        leg(&payer, &fees, "0.50", "USD"),
    ]);
    let responses = join_all(
        (0..50).map(|_| create_payments(&app, "one-group", payments.clone(), Value::Null)),
    )
    .await;
    let mut groups = std::collections::HashSet::new();
    let mut first = 0;
    for response in &responses {
        let payload = &response["data"]["createPayments"];
        match error_code(response) {
            None => {
                groups.insert(payload["group"]["id"].as_str().unwrap().to_owned());
                first += usize::from(payload["replayed"] == false);
            }
            // Busy is allowed (it changes nothing); anything else is not.
            Some("RETRY_LATER") => {}
            Some(other) => panic!("{other}: {response}"),
        }
    }
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(first, 1, "exactly one request made the group");
    assert_eq!(app.count("payment_groups").await, 1);
    assert_eq!(app.balance(&payer).await.0, "6.50");
    assert_eq!(app.balance(&payee).await.0, "3.00");
    assert_eq!(app.balance(&fees).await.0, "0.50");
    app.assert_ledger_sound().await;
}

/// Groups moving money around a ring of NON_NEGATIVE accounts at once, each passing
/// its amount along three accounts: many are declined, none half-way.
async fn racing_groups_conserve_money_and_rules(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut ring = Vec::new();
    for _ in 0..4 {
        let account = app.create_account("USD", "NON_NEGATIVE", None).await;
        app.fund(&account, "5.00", "USD").await;
        ring.push(account);
    }
    let groups = (0..40).map(|n| {
        let start = n % ring.len();
        let amount = format!("{}.00", 3 + n % 4);
        let payments: Vec<Value> = (0..3)
            .map(|step| {
                let from = &ring[(start + step) % ring.len()];
                let to = &ring[(start + step + 1) % ring.len()];
                leg(from, to, &amount, "USD")
            })
            .collect();
        let app = &app;
        async move {
            loop {
                let response =
                    create_payments(app, &format!("ring-{n}"), json!(payments), Value::Null).await;
                if error_code(&response) != Some("RETRY_LATER") {
                    return response;
                }
            }
        }
    });
    let responses = join_all(groups).await;
    let mut posted = 0;
    for response in &responses {
        let statuses = statuses(&response["data"]["createPayments"]);
        let declined = statuses
            .iter()
            .filter(|(status, _)| status == "DECLINED")
            .count();
        assert!(declined == 0 || declined == 3, "{response}");
        posted += usize::from(declined == 0);
    }
    assert!(posted > 0, "some group fits: each account starts with 5.00");
    let mut total = 0.0;
    for account in &ring {
        let balance: f64 = app.balance(account).await.0.parse().unwrap();
        assert!(balance >= 0.0, "{account} went below zero: {balance}");
        total += balance;
    }
    assert_eq!(total, 20.0, "money is conserved on the ring");
    app.assert_ledger_sound().await;
}

async fn bad_groups_change_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let euros = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let other_key = app.other_client_key().await;
    let theirs = app
        .create_account_as(&other_key, "USD", "NON_NEGATIVE", None)
        .await;
    let payments_before = app.count("payments").await;
    let good = leg(&payer, &payee, "1.00", "USD");
    let many: Vec<Value> = (0..101).map(|_| good.clone()).collect();
    let cases = [
        (json!([]), "BAD_USER_INPUT", "1 to 100 payments"),
        (json!(many), "BAD_USER_INPUT", "1 to 100 payments"),
        (
            json!([good, leg(&payer, &payee, "0.001", "USD")]),
            "BAD_USER_INPUT",
            "payments[1]",
        ),
        (
            json!([good, leg(&payer, &payer, "1.00", "USD")]),
            "BAD_USER_INPUT",
            "payments[1]",
        ),
        (
            json!([good, leg(&payer, "acc_nope", "1.00", "USD")]),
            "BAD_USER_INPUT",
            "payments[1]",
        ),
        (
            json!([good, leg(&payer, &theirs, "1.00", "USD")]),
            "NOT_FOUND",
            "not found",
        ),
        (
            json!([good, leg(&payer, &euros, "1.00", "USD")]),
            "CURRENCY_MISMATCH",
            "EUR",
        ),
    ];
    for (payments, code, message) in cases {
        let response = create_payments(&app, "bad-group", payments, Value::Null).await;
        assert_eq!(error_code(&response), Some(code), "{response}");
        let text = response["errors"][0]["message"].as_str().unwrap();
        assert!(text.contains(message), "{text:?} should say {message:?}");
    }
    let too_much = create_payments(
        &app,
        "bad-group",
        json!([good]),
        json!({ "k": "v".repeat(501) }),
    )
    .await;
    assert_eq!(error_code(&too_much), Some("BAD_USER_INPUT"), "{too_much}");
    assert_eq!(app.count("payment_groups").await, 0);
    assert_eq!(app.count("payments").await, payments_before);
    // Nothing claimed the key: the good request goes through under it.
    let response = create_payments(&app, "bad-group", json!([good]), Value::Null).await;
    assert_eq!(
        statuses(&response["data"]["createPayments"]),
        [("POSTED".to_owned(), None)]
    );
    // Another client cannot see the group.
    let group = response["data"]["createPayments"]["group"]["id"].clone();
    let hidden = app
        .graphql_as(
            Some(&other_key),
            "query($id: ID!, $key: String!) {
               nodes(ids: [$id]) { id }
               paymentGroupByIdempotencyKey(idempotencyKey: $key) { id } }",
            json!({ "id": group, "key": "bad-group" }),
        )
        .await;
    assert_eq!(hidden["data"]["nodes"], json!([null]), "{hidden}");
    assert_eq!(hidden["data"]["paymentGroupByIdempotencyKey"], Value::Null);
    app.assert_ledger_sound().await;
}

async fn the_database_and_the_audit_guard_groups(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let response = create_payments(
        &app,
        "guarded",
        json!([
            leg(&payer, &payee, "1.00", "USD"),
            leg(&payer, &payee, "2.00", "USD")
        ]),
        Value::Null,
    )
    .await;
    let first = uuid_of(
        response["data"]["createPayments"]["payments"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}")),
    );
    // A declined payment slipped into a posted group.
    let add_declined = "INSERT INTO payments (id, client_id, idempotency_key, from_account_id, \
         to_account_id, amount_minor, currency, status, decline_reason, created_at, feed_seq, \
         group_id, group_index) \
         SELECT ?, client_id, idempotency_key, from_account_id, to_account_id, amount_minor, \
         currency, 'DECLINED', 'INSUFFICIENT_FUNDS', created_at, feed_seq, group_id, 2 \
         FROM payments WHERE id = ?";
    let refused = run(&app, add_declined, &[uuid::Uuid::now_v7(), first]).await;
    assert!(refused.is_err(), "a partly declined group is refused");
    app.assert_ledger_sound().await;

    app.drop_guards().await;
    assert_eq!(
        run(&app, add_declined, &[uuid::Uuid::now_v7(), first])
            .await
            .unwrap(),
        1
    );
    assert_audit_finds(&app, "a group's payments are all there").await;
}
