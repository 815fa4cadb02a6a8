//! CORS: a page on an allowed origin may call the API (preflight and request); any
//! other origin gets no `Access-Control-Allow-Origin`, and none is allowed by default.

use reqwest::{Method, Response};
use serde_json::json;

use crate::helpers::{AppOptions, Backend, TestApp, spawn_app, spawn_app_with};

const ALLOWED: &str = "https://ops.example.com";
const OTHER: &str = "https://evil.example.net";

async fn preflight(app: &TestApp, origin: &str) -> Response {
    app.http
        .request(Method::OPTIONS, format!("{}/graphql", app.address))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn query_from(app: &TestApp, origin: &str) -> Response {
    app.http
        .post(format!("{}/graphql", app.address))
        .header("origin", origin)
        .bearer_auth(&app.api_key)
        .json(&json!({ "query": "{ accounts { nodes { id } } }" }))
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowed_origins_may_call_the_api_and_others_may_not() {
    let options = AppOptions {
        cors_allowed_origins: vec![ALLOWED.to_owned(), "http://localhost:3000".to_owned()],
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Sqlite, options).await else {
        return;
    };

    let response = preflight(&app, ALLOWED).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let methods = header(&response, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let headers = header(&response, "access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    // A long poll from another origin.
    assert!(
        headers.contains("if-none-match") && headers.contains("prefer"),
        "{headers}"
    );
    assert!(header(&response, "x-request-id").is_some());

    let response = query_from(&app, ALLOWED).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    // A browser page may read the request id, to quote it in a support ticket.
    let exposed = header(&response, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    // And the ETag and Preference-Applied a long-polling page needs.
    assert!(
        exposed.contains("etag") && exposed.contains("preference-applied"),
        "{exposed}"
    );

    for origin in [
        OTHER,
        "https://ops.example.com.evil.net",
        "http://ops.example.com",
    ] {
        let response = preflight(&app, origin).await;
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        let response = query_from(&app, origin).await;
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_origin_is_allowed_by_default() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    for origin in [ALLOWED, OTHER] {
        let response = preflight(&app, origin).await;
        assert_eq!(header(&response, "access-control-allow-origin"), None);
        let response = query_from(&app, origin).await;
        assert_eq!(
            response.status(),
            200,
            "the server still answers; the browser hides it"
        );
        assert_eq!(header(&response, "access-control-allow-origin"), None);
    }
}
