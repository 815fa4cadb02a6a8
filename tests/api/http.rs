//! GraphQL over HTTP: methods, media types, limits, GraphiQL and health.

use serde_json::{Value, json};

use crate::helpers::{Backend, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    http_follows_graphql_over_http,
    a_known_query_answers_as_a_new_one,
    limits_really_apply,
    every_response_names_its_request
);

/// A standard GraphiQL introspection query (abridged to its deepest part).
const INTROSPECTION: &str = "query IntrospectionQuery { __schema { queryType { name } mutationType { name }
  types { ...FullType } directives { name locations args { ...InputValue } } } }
fragment FullType on __Type { kind name description
  fields(includeDeprecated: true) { name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason }
  inputFields { ...InputValue } interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason } possibleTypes { ...TypeRef } }
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }";

async fn http_follows_graphql_over_http(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let url = format!("{}/graphql", app.address);

    // The schema is public: introspection and __typename need no key.
    let response = app.graphql_as(None, INTROSPECTION, json!({})).await;
    assert!(response["errors"].is_null(), "{response}");
    assert_eq!(response["data"]["__schema"]["queryType"]["name"], "Query");
    let response = app.graphql_as(None, "{ __typename }", json!({})).await;
    assert_eq!(response, json!({ "data": { "__typename": "Query" } }));

    // GET runs queries...
    let response = app
        .http
        .get(&url)
        .query(&[("query", "{ accounts { nodes { id } } }")])
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["accounts"]["nodes"], json!([]));

    // ...but never mutations, so a link cannot move money.
    let mutation = "mutation { createAccount(input: { idempotencyKey: \"via-get\", currency: \"USD\", balanceRule: UNBOUNDED }) { account { id } } }";
    let response = app
        .http
        .get(&url)
        .query(&[("query", mutation)])
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"));
    assert_eq!(app.count("accounts").await, 0);

    // application/graphql-response+json when asked: 400 for a request that cannot run.
    let response = app
        .http
        .post(&url)
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": "{ nope }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/graphql-response+json")
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body.get("data").is_none(),
        "a request that never ran has no data entry: {body}"
    );
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"));
    // A request that ran is a 200, even when a field error nulled all of `data`.
    let response = app
        .http
        .post(&url)
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": "{ accounts { nodes { id } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.get("data"), Some(&Value::Null), "{body}");
    assert_eq!(error_code(&body), Some("UNAUTHENTICATED"));
    let response = app
        .http
        .post(&url)
        .json(&json!({ "query": "{ nope }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "application/json keeps 200");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );

    // Only JSON bodies.
    let response = app
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("{\"query\": \"{ __typename }\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // hyper's URI and header limits answer with empty bodies; the server's own, below
    // them, answer in the GraphQL error shape.
    let long_query = format!("{{ __typename }}#{}", "x".repeat(40 * 1024));
    let response = app
        .http
        .get(&url)
        .query(&[("query", long_query.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
    let mut request = app
        .http
        .post(&url)
        .json(&json!({ "query": "{ __typename }" }));
    for index in 0..40 {
        request = request.header(format!("x-filler-{index}"), "y".repeat(1024));
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");

    // Batches run in order.
    let response = app
        .http
        .post(&url)
        .bearer_auth(&app.api_key)
        .json(&json!([
            { "query": "mutation { createAccount(input: { idempotencyKey: \"b1\", currency: \"USD\", balanceRule: UNBOUNDED, externalRef: \"b1\" }) { account { id } } }" },
            { "query": "{ accountByExternalRef(externalRef: \"b1\") { currency } }" },
        ]))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body[1]["data"]["accountByExternalRef"],
        json!({ "currency": "USD" }),
        "{body}"
    );

    // GraphiQL and health.
    let page = app
        .http
        .get(&app.address)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("graphiql") || page.contains("GraphiQL"),
        "GraphiQL is served at /"
    );
    for path in ["/healthz", "/readyz"] {
        let response = app
            .http
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// A query the server has run before skips validation (`graphql::ParsedQueries`) and
/// still answers each request as on first sight: data for new variables, and for a
/// variable of the wrong type or a missing one, the same request error, not a field
/// error.
async fn a_known_query_answers_as_a_new_one(backend: Backend) {
    const BALANCE: &str =
        "query($id: ID!) { account(id: $id) { currency balance { amount version } } }";
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let dollars = app.create_account("USD", "UNBOUNDED", None).await;
    let euros = app.create_account("EUR", "UNBOUNDED", None).await;
    let url = format!("{}/graphql", app.address);
    let post = |variables: Value| {
        let request = app
            .http
            .post(&url)
            .bearer_auth(&app.api_key)
            .header("accept", "application/graphql-response+json")
            .json(&json!({ "query": BALANCE, "variables": variables }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let bad_variables = [
        json!({ "id": true }),
        json!({ "id": null }),
        json!({ "id": ["a"] }),
        json!({}),
    ];
    // Before the document has ever run: full validation. A value of the wrong type is
    // a request error (async-graphql leaves a missing variable to execution: a field
    // error, checked below to stay one).
    let mut first_sight = Vec::new();
    for variables in &bad_variables {
        let answer = post(variables.clone()).await;
        assert_eq!(error_code(&answer.1), Some("BAD_USER_INPUT"), "{answer:?}");
        if variables.get("id").is_some() {
            assert_eq!(answer.0, 400, "{answer:?}");
            assert!(answer.1.get("data").is_none(), "{answer:?}");
        }
        first_sight.push(answer);
    }
    let skipped = || app.metrics.graphql_validations_skipped.get();
    assert_eq!(skipped(), 0);

    let answer = app.graphql(BALANCE, json!({ "id": dollars })).await;
    assert_eq!(answer["data"]["account"]["currency"], "USD", "{answer}");
    assert_eq!(skipped(), 0, "the first run validates in full");
    let answer = app.graphql(BALANCE, json!({ "id": euros })).await;
    assert_eq!(answer["data"]["account"]["currency"], "EUR", "{answer}");
    assert_eq!(
        answer["data"]["account"]["balance"]["version"], 0,
        "{answer}"
    );
    assert_eq!(skipped(), 1, "a known document skips validation");

    for (variables, expected) in bad_variables.iter().zip(first_sight) {
        assert_eq!(post(variables.clone()).await, expected, "{variables}");
    }
    assert_eq!(skipped(), 1 + bad_variables.len() as u64);
    assert_eq!(
        app.metrics.graphql_validated_reruns.get(),
        bad_variables.len() as u64
    );
    // A field error is the same field error: another tenant's account is not found.
    let theirs = app
        .create_account_as(&app.other_client_key().await, "USD", "UNBOUNDED", None)
        .await;
    let (status, unknown) = post(json!({ "id": theirs })).await;
    assert_eq!(status, 200, "{unknown}");
    assert_eq!(error_code(&unknown), Some("NOT_FOUND"), "{unknown}");
    assert_eq!(
        unknown["errors"][0]["path"],
        json!(["account"]),
        "{unknown}"
    );
}

async fn limits_really_apply(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let url = format!("{}/graphql", app.address);

    // A body over the limit is refused before it is parsed: 256 KiB without a key,
    // 256 KiB plus 1 KiB per payment a createPaymentBatch may carry with one.
    let padded = |bytes: usize| json!({ "query": "{ __typename }", "variables": { "padding": "x".repeat(bytes) } });
    let anonymous = app
        .http
        .post(&url)
        .json(&padded(300 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 413);
    // Naming the limit that applies to it, not the one with a key.
    let body: Value = anonymous.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&payments_ledger::http::REQUEST_BODY_BYTES_MAX.to_string()),
        "{body}"
    );
    let within = app
        .http
        .post(&url)
        .bearer_auth(&app.api_key)
        .json(&padded(300 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(within.status(), 200, "a client may send more");
    let response = app
        .http
        .post(&url)
        .bearer_auth(&app.api_key)
        .json(&padded(1300 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // In the GraphQL error shape, like every other error.
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");

    // Too long a batch.
    let batch: Vec<Value> = (0..17)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let response = app.http.post(&url).json(&batch).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"));

    // Too deep: walking the account -> payment -> account cycle.
    let deep = "{ accounts { nodes { payments { nodes { fromAccount { payments { nodes { toAccount { payments { nodes { fromAccount { payments { nodes { toAccount { payments { nodes { id } } } } } } } } } } } } } } } } }";
    let response = app.graphql(deep, json!({})).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    assert!(response["data"].is_null());

    // Too complex: wide pages nested.
    let wide = "{ accounts(first: 100) { nodes { entries(first: 100) { nodes { payment { entries { account { id } } } } } } } }";
    let response = app.graphql(wide, json!({})).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(message.contains("complex"), "{message}");

    // While a realistic dashboard query fits.
    let dashboard = "{ accounts(first: 100) { nodes { id currency balance { amount available version } } pageInfo { endCursor } } }";
    let response = app.graphql(dashboard, json!({})).await;
    assert!(response["errors"].is_null(), "{response}");
}

/// An operator follows one request through the logs by its `x-request-id`: the caller's
/// own, or one the server makes up, on every response. (That each log line of the
/// request carries it is tested in `http.rs`'s unit tests, which capture the logs.)
async fn every_response_names_its_request(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let url = format!("{}/graphql", app.address);
    let id = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let response = app
        .http
        .post(&url)
        .header("x-request-id", "checkout-7f3a")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(id(&response).as_deref(), Some("checkout-7f3a"));

    // Refused requests too: a malformed body, a body over the limit, an unknown path.
    let malformed = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await;
    // Its own client, as in `limits_really_apply`: the server closes a connection whose
    // body it refused to read.
    let oversized = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 300 * 1024])
        .send()
        .await;
    let unknown = app
        .http
        .get(format!("{}/nowhere", app.address))
        .send()
        .await;
    let mut seen = std::collections::HashSet::new();
    for (response, status) in [(malformed, 400), (oversized, 413), (unknown, 404)] {
        let response = response.unwrap();
        assert_eq!(response.status(), status);
        let generated = id(&response).unwrap_or_else(|| panic!("{} has no id", response.status()));
        assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
        assert!(seen.insert(generated), "ids are not reused");
    }
}

/// A caller cannot grow `/metrics`: made-up HTTP methods share one `other` label.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let url = format!("{}/graphql", app.address);
    for index in 0..50 {
        let method = reqwest::Method::from_bytes(format!("BOGUS{index}").as_bytes()).unwrap();
        let response = app.http.request(method, &url).send().await.unwrap();
        assert!(response.status().is_client_error());
    }
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("BOGUS"),
        "a caller's method became a label"
    );
    assert!(metrics.contains("method=\"other\""), "{metrics}");
}

/// A body refused for its length is answered, not cut off: the server reads it (and
/// drops it) before it answers 413, so the client never sees "connection reset" where
/// the answer should be, and its connection stays usable for the next request. Both
/// limits are tried: the one for every request, and the lower one without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_body_is_answered_and_the_connection_kept() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let url = format!("{}/graphql", app.address);
    let padded = |bytes: usize| json!({ "query": "{ __typename }", "variables": { "padding": "x".repeat(bytes) } });
    // One connection: a pool of one, reused for every request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for round in 0..20 {
        for (key, bytes) in [(Some(&app.api_key), 2 * 1024 * 1024), (None, 300 * 1024)] {
            let mut request = http.post(&url).json(&padded(bytes));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|error| panic!("round {round}, {bytes} bytes: {error:?}"));
            assert_eq!(response.status(), 413, "round {round}, {bytes} bytes");
            let body: Value = response.json().await.unwrap();
            assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
            let next = http
                .post(&url)
                .json(&json!({ "query": "{ __typename }" }))
                .send()
                .await
                .unwrap_or_else(|error| panic!("round {round}, after {bytes} bytes: {error:?}"));
            assert_eq!(next.status(), 200);
        }
    }
}

/// Sends `head` and then `body` in chunks over a raw connection; answers the status
/// code and the response body.
async fn raw_request(address: &str, head: &str, chunks: &[Vec<u8>]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        // The server may answer and close before it has read everything.
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// What async-graphql-axum's extractor reads is bounded and checked like the rest: a
/// body over the limit sent without a length is refused (413) in the GraphQL shape, and
/// a multipart body is refused (415) before any of it is parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_the_extractor_would_read_are_refused_in_the_graphql_shape() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let host = app.address.trim_start_matches("http://");
    let chunk = |bytes: &[u8]| {
        let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(b"\r\n");
        framed
    };
    let mut chunks = vec![chunk(b"{\"query\": \"{ __typename }\", \"padding\": \"")];
    chunks.extend((0..40).map(|_| chunk(&[b'x'; 8 * 1024])));
    chunks.push(chunk(b"\"}"));
    chunks.push(b"0\r\n\r\n".to_vec());
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_request(&app.address, &head, &chunks).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");

    let multipart = "--x\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n\
                     {\"query\": \"{ __typename }\"}\r\n--x--\r\n";
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        multipart.len()
    );
    let (status, body) = raw_request(&app.address, &head, &[multipart.as_bytes().to_vec()]).await;
    assert_eq!(status, 415, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{body}");
}
