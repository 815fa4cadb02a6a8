//! HTTP: GraphQL over HTTP at `/graphql`, GraphiQL at `/`, the dashboard at
//! `/dashboard` (pages and files in `assets`), health at `/healthz` and `/readyz`,
//! and CORS for the origins configured.
//!
//! Requests are read by async-graphql-axum's extractors, with a rejection of ours
//! (`Unreadable`) so that every failure, including a malformed body, answers in the
//! GraphQL error shape with an `extensions.code`. What stays hand-written is the
//! HTTP around them: the Content-Type check before a body is read, refusing
//! mutations over GET, the batch bound, and the answer (status per GraphQL over HTTP,
//! `application/graphql-response+json` when asked for, refusals with Retry-After).
//! Every response carries an `x-request-id` (the caller's, or a new one) and every log
//! line of the request carries it too.

mod conditional;
mod extract;

pub use conditional::WAIT_SECONDS_MAX;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::parser::types::OperationType;
use async_graphql::{BatchResponse, Request as GraphQLRequestBody, ServerError};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use self::conditional::Condition;
use self::extract::{Operation, Operations};
use crate::admission::{self, Admission, Refusal};
use crate::assets;
use crate::auth::{Authenticator, Caller};
use crate::cache::Caches;
use crate::changes::{ClientChanges, ParkRefusal, Wake};
use crate::config::{Config, Introspection};
use crate::documents::{Documents, Registration};
use crate::error::AppError;
use crate::graphql::budget::DocumentWeight;
use crate::graphql::{AppSchema, ParsedQueries, RequestScope};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, RequestLabels};

/// Larger bodies are refused before they are read, unless the caller is a client:
/// see `client_body_bytes_max`.
pub const REQUEST_BODY_BYTES_MAX: usize = 256 * 1024;
/// What a client's body may grow by per payment `createPaymentBatch` may carry, so a
/// full batch fits (a payment with a 64-character key, a description and a few
/// metadata pairs is about 500 bytes).
pub const BODY_BYTES_PER_BATCH_PAYMENT: usize = 1024;

/// The largest body a client (a caller with a valid API key) may send: the common
/// limit plus room for a full `createPaymentBatch` (1.25 MiB by default). Callers
/// without a key keep `REQUEST_BODY_BYTES_MAX`; the body is read only after the key is
/// checked.
pub fn client_body_bytes_max(config: &Config) -> usize {
    REQUEST_BODY_BYTES_MAX
        + usize::from(config.database.payment_batch_max) * BODY_BYTES_PER_BATCH_PAYMENT
}
/// Operations in one batched request.
pub const BATCH_LENGTH_MAX: usize = 16;
/// A GET carries its query in the URI; longer documents belong in a POST body.
pub const URI_BYTES_MAX: usize = 32 * 1024;
/// All request headers together (names and values).
pub const HEADER_BYTES_MAX: usize = 32 * 1024;

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub ledger: Ledger,
    pub authenticator: Authenticator,
    pub schema: AppSchema,
    /// The schema for documents that passed validation before
    /// (`graphql::build_schema_for_validated_documents`).
    pub schema_for_validated: AppSchema,
    pub metrics: Arc<Metrics>,
    pub caches: Arc<Caches>,
    pub parsed_queries: Arc<ParsedQueries>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub admission: Arc<Admission>,
    /// Persisted and trusted documents.
    pub documents: Arc<Documents>,
    /// What wakes parked long polls; closed when shutdown begins.
    pub changes: Arc<ClientChanges>,
}

pub fn router(state: AppState) -> Router {
    // Shared by every request: one reference count instead of one per field.
    let state = Arc::new(state);
    let cors = cors_layer(&state.config.server.cors_allowed_origins);
    let routes = Router::new()
        .route("/", get(assets::graphiql))
        .route("/dashboard", get(assets::dashboard))
        .route("/assets/{*path}", get(assets::file))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // One ServiceBuilder per `Router::layer`: axum boxes every route once per
        // `layer` call, and each box costs a clone and a drop on every request.
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    record_latency,
                ))
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    limits_in_graphql_shape,
                ))
                .layer(middleware::from_fn_with_state(state.clone(), time_limit))
                .layer(RequestBodyLimitLayer::new(client_body_bytes_max(
                    &state.config,
                ))),
        )
        .with_state(state);
    with_request_ids_and_cors(routes, cors)
}

/// Gives every request an id and a span that carries it, then answers CORS. Outermost,
/// so every response, even a preflight, a timeout, a refused body or a 404, carries
/// the id.
fn with_request_ids_and_cors(routes: Router, cors: Option<CorsLayer>) -> Router {
    routes.layer(
        ServiceBuilder::new()
            .map_request(drop_unusable_request_id)
            .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .option_layer(cors),
    )
}

/// CORS for `origins` (already checked by `config`); none configured means no layer:
/// browsers then allow only same-origin pages, which is what the server serves.
/// Preflights are answered here, before routing, so `OPTIONS /graphql` needs no route.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            // A page of another origin long-polls like the built-in dashboard: it
            // sends If-None-Match and Prefer, and reads ETag and Preference-Applied
            // (neither is readable cross-origin unless exposed).
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                REQUEST_ID_HEADER,
                header::IF_NONE_MATCH,
                PREFER,
            ])
            .expose_headers([
                REQUEST_ID_HEADER,
                header::ETAG,
                PREFERENCE_APPLIED,
                header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The header that names a request in the logs: the caller's, or a new UUID.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// The longest caller-chosen request id kept; a longer one is replaced.
const REQUEST_ID_LENGTH_MAX: usize = 128;

/// A caller's id is kept only if it is short, visible ASCII: it is echoed in the
/// response and written into every log line of the request, so it must not bloat or
/// forge them. Anything else is dropped here and replaced by a new id.
fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= REQUEST_ID_LENGTH_MAX
            && bytes.iter().all(|byte| byte.is_ascii_graphic())
    };
    let headers = request.headers_mut();
    let mut values = headers.get_all(&REQUEST_ID_HEADER).iter();
    let unusable = match (values.next(), values.next()) {
        (Some(only), None) => !usable(only),
        (None, _) => false,
        // Two ids for one request: neither can be trusted to name it.
        (Some(_), Some(_)) => true,
    };
    if unusable {
        headers.remove(&REQUEST_ID_HEADER);
    }
    request
}

/// One span per request, carrying its id: every log line the request causes, down to
/// the ledger service, says which request it belongs to.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    // The id alone: each field is formatted for every request when INFO is on.
    tracing::info_span!("request", id = %id)
}

/// Every request gets `REQUEST_TIMEOUT_SECONDS`, and a long poll its wait on top; past
/// that it is answered 503 (TIMEOUT, shaped by `limits_in_graphql_shape`).
async fn time_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = Duration::from_secs(state.config.server.request_timeout_seconds)
        + conditional::requested_wait(request.headers()).unwrap_or_default();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Observes every request's latency in the `http_request_duration_seconds` histogram.
async fn record_latency(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = RequestLabels::method_of(request.method());
    let path = match request.uri().path() {
        "/graphql" => "/graphql",
        "/" => "/",
        "/dashboard" => "/dashboard",
        path if path.starts_with("/assets/") => "/assets",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let response = next.run(request).await;
    state
        .metrics
        .request_duration
        .get_or_create(&RequestLabels {
            method,
            path,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Prometheus scrape target (OpenMetrics text). Aggregate counts only: no tenant data.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down").into_response();
    }
    match state.ledger.connection().ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

/// A request-level error in the GraphQL response shape.
fn error_response(status: StatusCode, error: &AppError, headers: &HeaderMap) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": error.to_string(), "extensions": { "code": error.code() } }]
    });
    if let AppError::Internal(cause) = error {
        tracing::error!(error = ?cause, "internal error");
    }
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, response_content_type(headers));
    response
}

/// The answers of the layers that enforce limits (a refused body, a request out of
/// time) come without a body a GraphQL client can read; they are given the GraphQL
/// error shape here, like every other error.
async fn limits_in_graphql_shape(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    // Checked here, below hyper's own limits (which answer with an empty body), so
    // that a client hitting them reads why.
    let uri = request.uri();
    let uri_bytes = uri.path().len() + uri.query().map_or(0, |query| query.len() + 1);
    if uri_bytes > URI_BYTES_MAX {
        return error_response(
            StatusCode::URI_TOO_LONG,
            &AppError::bad_input(format!(
                "the URI is {uri_bytes} bytes, more than {URI_BYTES_MAX}: POST long queries"
            )),
            request.headers(),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > HEADER_BYTES_MAX {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &AppError::bad_input(format!(
                "the request headers are {header_bytes} bytes, more than {HEADER_BYTES_MAX}"
            )),
            request.headers(),
        );
    }
    // Refused here rather than by the body limit layer below, which answers without
    // reading the body, so the client may lose the answer (see `refuse_too_large`);
    // the layer still stops a body sent without a length once it is over.
    let body_bytes_max = client_body_bytes_max(&state.config);
    if extract::declares_more_than(request.headers(), body_bytes_max) {
        return extract::refuse_too_large(request, body_bytes_max).await;
    }
    // Only the Accept header is kept (a reference count), and only read if a limit hit.
    let accept = request.headers().get(header::ACCEPT).cloned();
    let response = next.run(request).await;
    // The server's own answers (a 413 naming the lower limit without a key, a 503
    // RETRY_LATER) already carry a JSON body; only the layers' bare ones are shaped.
    if response.headers().contains_key(header::CONTENT_TYPE) {
        return response;
    }
    let error = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => extract::body_too_large(body_bytes_max),
        StatusCode::SERVICE_UNAVAILABLE => AppError::Timeout,
        _ => return response,
    };
    let mut request_headers = HeaderMap::new();
    if let Some(accept) = accept {
        request_headers.insert(header::ACCEPT, accept);
    }
    error_response(response.status(), &error, &request_headers)
}

fn wants_graphql_response_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains(GRAPHQL_RESPONSE_JSON))
}

fn response_content_type(headers: &HeaderMap) -> HeaderValue {
    if wants_graphql_response_json(headers) {
        HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
    } else {
        HeaderValue::from_static("application/json; charset=utf-8")
    }
}

/// The key is checked before the body is read, so only a client may send a body over
/// `REQUEST_BODY_BYTES_MAX` (a large `createPaymentBatch`).
async fn graphql_post(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let caller = match authenticate(&state, &headers).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let body_bytes_max = match caller {
        Caller::Client(_) => client_body_bytes_max(&state.config),
        _ => REQUEST_BODY_BYTES_MAX,
    };
    let (operations, is_batch) = match extract::json_operations(request, body_bytes_max).await {
        Ok(Operations::Single(operation)) => (vec![operation], false),
        Ok(Operations::Batch(operations)) => (operations, true),
        Err(response) => return response,
    };
    if is_batch && (operations.is_empty() || operations.len() > BATCH_LENGTH_MAX) {
        return error_response(
            StatusCode::BAD_REQUEST,
            &AppError::bad_input(format!(
                "a batch holds 1 to {BATCH_LENGTH_MAX} operations, got {}",
                operations.len()
            )),
            &headers,
        );
    }
    if let Some(response) = without_document(&operations, &headers) {
        return response;
    }
    let operations = resolve_all(&state, operations).await;
    match run(&state, &headers, operations, is_batch, caller, Via::Post).await {
        Ok(answer) => answer.into_response(&headers),
        Err(response) => response,
    }
}

/// A request error for an operation that neither carries a document nor names one.
fn without_document(operations: &[Operation], headers: &HeaderMap) -> Option<Response> {
    let bare = operations.iter().any(|operation| {
        operation
            .query
            .as_deref()
            .is_none_or(|query| query.trim().is_empty())
            && operation.document_id.is_none()
            && !operation.extensions.contains_key("persistedQuery")
    });
    bare.then(|| {
        error_response(
            StatusCode::BAD_REQUEST,
            &AppError::bad_input("the request has no query"),
            headers,
        )
    })
}

/// A query over GET: conditional (`If-None-Match`) and, for a client asking to wait,
/// a long poll (`conditional`). A GET never runs a mutation: a link or an image tag
/// could send it.
async fn graphql_get(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let operation = match extract::query_string(request.uri().query()) {
        Ok(operation) => operation,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error, &headers),
    };
    drop(request);
    if let Some(response) = without_document(std::slice::from_ref(&operation), &headers) {
        return response;
    }
    // Boxed, like each run in `poll`: a parked poll's future keeps none of their state.
    let caller = match Box::pin(authenticate(&state, &headers)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let mut resolved = Box::pin(resolve_all(&state, vec![operation])).await;
    let first = resolved
        .pop()
        .unwrap_or_else(|| Err(AppError::bad_input("no operation")));
    // A parked poll keeps only what its answers need of the request's headers.
    let condition = Condition::of(&headers);
    let wait = conditional::requested_wait(&headers);
    let accept = extract::accept_only(&headers);
    drop(headers);
    poll(&state, &accept, condition, wait, first, caller).await
}

/// Answers a GET, holding it while its answer is the one the caller has and it asked
/// to wait. Before each look the poll's watch marks what it has seen, so a change
/// committed while the query runs wakes the wait that follows.
async fn poll(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    condition: Condition,
    wait: Option<Duration>,
    first: Resolved,
    caller: Caller,
) -> Response {
    let client = match caller {
        Caller::Client(client) => Some(client),
        _ => None,
    };
    // Waiting needs a tag to compare with, a client whose changes wake it, and a server
    // that is not shutting down (then every answer is immediate, and says so by not
    // applying the preference).
    let wait =
        wait.filter(|_| matches!(condition, Condition::Tags(_)) && !state.changes.is_closing());
    let mut watch = match (wait, client) {
        (Some(_), Some(client)) => Some(state.changes.watch(client)),
        _ => None,
    };
    let wait = wait.filter(|_| watch.is_some());
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    let again = first.as_ref().ok().map(|(operation, _)| operation.clone());
    let mut next = Some(first);
    let mut via = Via::Get;
    let mut settling = [].iter().copied();
    loop {
        if let Some(watch) = &mut watch {
            watch.mark_seen();
        }
        let resolved = match next.take() {
            Some(resolved) => resolved,
            None => Ok((again.clone().unwrap_or_default(), None)),
        };
        // Boxed, so that while the poll is parked its future holds none of a query's
        // execution state (a parked poll's memory is what bounds how many fit).
        let answer = match Box::pin(run(state, headers, vec![resolved], false, caller, via)).await {
            Ok(answer) => answer,
            Err(response) => return response,
        };
        if answer.status != StatusCode::OK {
            return answer.into_response(headers);
        }
        let who = client.map_or(*b"anonymous-caller", |client| *client.0.as_bytes());
        let etag = conditional::etag(&who, answer.body.as_bytes());
        let unchanged = condition.holds(&etag);
        let waited_out = deadline.is_none_or(|deadline| tokio::time::Instant::now() >= deadline);
        if !unchanged || waited_out || state.changes.is_closing() {
            let mut response = if unchanged {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                answer.into_response(headers)
            };
            let response_headers = response.headers_mut();
            response_headers.insert(header::ETAG, etag);
            response_headers.insert(header::CACHE_CONTROL, conditional::CACHE_CONTROL);
            response_headers.insert(header::VARY, conditional::VARY);
            if let Some(wait) = wait {
                response_headers.insert(
                    PREFERENCE_APPLIED,
                    HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
                        .unwrap_or(HeaderValue::from_static("wait")),
                );
            }
            return response;
        }
        // Not kept while parked: the next look makes a new one.
        drop(answer);
        let (Some(watch), Some(deadline)) = (&mut watch, deadline) else {
            return StatusCode::NOT_MODIFIED.into_response();
        };
        if let Err(refusal) = watch.park() {
            let message = match refusal {
                ParkRefusal::Client => {
                    "this client has as many long polls waiting as it may; retry after the hint"
                }
                ParkRefusal::Instance => {
                    "the server holds as many long polls as it may; retry after the hint"
                }
            };
            return refused(message, headers);
        }
        // A change, the end of the wait or shutdown: look again either way. After a
        // change that did not show yet, look again a few times soon: on PostgreSQL a
        // feed lists a commit only once every older transaction has ended
        // (docs/consistency.md), which may be just after the change was reported.
        let look_again = settling.next().map_or(deadline, |delay| {
            deadline.min(tokio::time::Instant::now() + delay)
        });
        match tokio::time::timeout_at(look_again, watch.next()).await {
            Ok(Wake::Changed) => settling = SETTLING_LOOKS.iter().copied(),
            Ok(Wake::Closing) | Err(_) => {}
        }
        via = Via::Wake;
    }
}

/// When a woken poll whose answer had not changed yet looks again: about 1.3 s in all.
const SETTLING_LOOKS: &[Duration] = &[
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
    Duration::from_millis(640),
];

const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
const PREFER: HeaderName = HeaderName::from_static("prefer");

/// How a run came: a GET may not run a mutation, and a long poll woken by a change
/// waits for its turn among its client's woken polls instead of being refused (one
/// change wakes all of them at once), apart from the client's request limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Post,
    Get,
    Wake,
}

/// How long a woken poll waits for its client's turn.
const WOKEN_ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// An operation with its document in place, and what to register once it ran; or why
/// its document could not be found.
type Resolved = Result<(Operation, Option<Registration>), AppError>;

async fn resolve_all(state: &AppState, operations: Vec<Operation>) -> Vec<Resolved> {
    let mut resolved = Vec::with_capacity(operations.len());
    for mut operation in operations {
        let naming = operation.take_naming();
        let mut query = operation.query.take().unwrap_or_default();
        resolved.push(match state.documents.resolve(&mut query, naming).await {
            Ok(registration) => {
                operation.query = Some(query);
                Ok((operation, registration))
            }
            Err(error) => Err(error),
        });
    }
    resolved
}

/// Who is calling, from the Authorization header; a failure to tell is answered here.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or(""));
    state
        .authenticator
        .authenticate(authorization)
        .await
        .map_err(|error| {
            let status = match error {
                AppError::RetryLater => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error_response(status, &error, headers)
        })
}

/// A GraphQL answer ready to send: its status and JSON body.
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn into_response(self, headers: &HeaderMap) -> Response {
        let mut response = (self.status, self.body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, response_content_type(headers));
        response
    }
}

/// Runs `operations` one after another for `caller`; `Err` is a refusal of the whole
/// request (not admitted, or a mutation over GET).
async fn run(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    operations: Vec<Resolved>,
    is_batch: bool,
    caller: Caller,
    via: Via,
) -> Result<Answer, Response> {
    let client = match caller {
        Caller::Client(client) => Some(client),
        _ => None,
    };
    let admitted = match (via, client) {
        (Via::Wake, Some(client)) => {
            state
                .admission
                .admit_woken(client, WOKEN_ADMISSION_WAIT)
                .await
        }
        _ => state.admission.admit(client),
    };
    let _admitted = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return Err(refused(refusal_message(refusal), headers)),
    };
    let mut responses = Vec::with_capacity(operations.len());
    // One after another, so a batch's mutations run in the order the client sent them.
    for resolved in operations {
        let (operation, registration) = match resolved {
            Ok(resolved) => resolved,
            Err(error) => {
                responses.push(error_answer(&error));
                continue;
            }
        };
        // Kept only to register it once it ran: rare, so the copy is too.
        let registering = registration
            .map(|registration| (registration, operation.query.clone().unwrap_or_default()));
        let mut request = operation.into_request();
        let _parsing = match state.admission.room_to_parse(request.query.len()).await {
            Ok(parsing) => parsing,
            Err(_) if is_batch => {
                responses.push(server_busy());
                continue;
            }
            Err(refusal) => return Err(refused(refusal_message(refusal), headers)),
        };
        let prepared = state.parsed_queries.prepare(&mut request);
        // A document that does not parse is left for execution to report.
        let (weight, is_query, has_mutation) = match request.parsed_query() {
            Ok(document) => {
                let kinds = || {
                    document
                        .operations
                        .iter()
                        .map(|(_, operation)| operation.node.ty)
                };
                (
                    DocumentWeight::of(document),
                    kinds().all(|kind| kind == OperationType::Query),
                    kinds().any(|kind| kind != OperationType::Query),
                )
            }
            Err(_) => (DocumentWeight::default(), false, false),
        };
        if has_mutation && via != Via::Post {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &AppError::bad_input("mutations must be sent with POST"),
                headers,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Err(response);
        }
        let refusal = weight.refusal(client.is_some()).or_else(|| {
            (weight.schema_roots + weight.type_roots > 0 && !may_introspect(state, caller)).then(
                || match state.config.server.introspection {
                    Introspection::Off => "introspection is turned off on this server".to_owned(),
                    _ => "introspection needs an API key on this server".to_owned(),
                },
            )
        });
        if let Some(refusal) = refusal {
            let mut response =
                async_graphql::Response::from_errors(vec![ServerError::new(refusal, None)]);
            add_default_code(&mut response.errors[0]);
            responses.push(response);
            continue;
        }
        // Reads share one bound on fields in flight; a payment never waits behind them.
        let _room = if is_query {
            match state.admission.room_for(weight.fields).await {
                Ok(room) => Some(room),
                // Earlier operations of a batch may have run: only this one is refused.
                Err(_) if is_batch => {
                    responses.push(server_busy());
                    continue;
                }
                Err(refusal) => return Err(refused(refusal_message(refusal), headers)),
            }
        } else {
            None
        };
        let mut response = if prepared.validated && matches!(caller, Caller::Client(_)) {
            execute_validated(state, request, caller).await
        } else {
            state
                .schema
                .execute(with_scope(request, state, caller))
                .await
        };
        // A GET's answer is compared by its bytes (its ETag).
        if via != Via::Post {
            conditional::in_stable_order(&mut response);
        }
        let ran = response.data != async_graphql::Value::Null;
        if let Some(parsed) = prepared.fresh
            && client.is_some()
            && ran
        {
            state.parsed_queries.remember(parsed);
        }
        // Only documents that ran for a client are registered: nobody else can fill
        // the store.
        if let Some((registration, query)) = registering
            && client.is_some()
            && ran
        {
            state.documents.register(registration, &query).await;
        }
        for error in &mut response.errors {
            add_default_code(error);
        }
        responses.push(response);
    }
    answer_of(responses, is_batch, headers)
        .map_err(|error| error_response(StatusCode::INTERNAL_SERVER_ERROR, &error, headers))
}

/// The HTTP answer to `responses`. GraphQL over HTTP, under
/// application/graphql-response+json: a request that could not run at all (parse or
/// validation failure) has no `data` entry and is a 400; a request that ran is a 200,
/// even when a field error left `data` null. application/json keeps the legacy shape:
/// always 200, `data` always present.
fn answer_of(
    mut responses: Vec<async_graphql::Response>,
    is_batch: bool,
    headers: &HeaderMap,
) -> Result<Answer, AppError> {
    let graphql_response_json = wants_graphql_response_json(headers);
    let status = if graphql_response_json && !is_batch && responses.iter().any(never_ran) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = if graphql_response_json && responses.iter().any(never_ran) {
        let shaped: Vec<serde_json::Value> = responses
            .iter()
            .map(|response| {
                let mut json = serde_json::to_value(response).unwrap_or_default();
                if never_ran(response)
                    && let Some(object) = json.as_object_mut()
                {
                    object.remove("data");
                }
                json
            })
            .collect();
        if is_batch {
            serde_json::to_string(&shaped)
        } else {
            serde_json::to_string(&shaped.into_iter().next().unwrap_or_default())
        }
    } else if is_batch {
        serde_json::to_string(&BatchResponse::Batch(responses))
    } else {
        serde_json::to_string(&BatchResponse::Single(responses.pop().unwrap_or_default()))
    };
    body.map(|body| Answer { status, body })
        .map_err(AppError::internal)
}

/// A request error of ours as one operation's answer: nothing ran.
fn error_answer(error: &AppError) -> async_graphql::Response {
    let mut server_error = ServerError::new(error.to_string(), None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", error.code());
    server_error.extensions = Some(extensions);
    async_graphql::Response::from_errors(vec![server_error])
}

/// Runs a query that passed full validation before and validates alike for any
/// variables (`graphql::ParsedQueries::prepare`) without validating it again. A request
/// that errs runs again under full validation, so every error answer is exactly the one
/// a first sight of the document gives (a variable of the wrong type is a request
/// error, not a field error); it is a query, so running it twice changes nothing.
async fn execute_validated(
    state: &AppState,
    request: GraphQLRequestBody,
    caller: Caller,
) -> async_graphql::Response {
    let mut again =
        GraphQLRequestBody::new(request.query.clone()).variables(request.variables.clone());
    again.operation_name.clone_from(&request.operation_name);
    again.extensions.clone_from(&request.extensions);
    state.metrics.graphql_validations_skipped.inc();
    let response = state
        .schema_for_validated
        .execute(with_scope(request, state, caller))
        .await;
    if response.errors.is_empty() {
        return response;
    }
    state.metrics.graphql_validated_reruns.inc();
    // Parsed again from the cache: the document is still there or parses anew.
    let _ = state.parsed_queries.prepare(&mut again);
    state.schema.execute(with_scope(again, state, caller)).await
}

/// Whether a response is a request error (the document did not parse or validate, or
/// a limit refused it): nothing ran, so no error has a field path.
fn never_ran(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty())
}

/// A request not admitted: nothing happened; HTTP 429 with `Retry-After`, and the same
/// hint in `extensions.retryAfterMs`.
fn refused(message: &str, headers: &HeaderMap) -> Response {
    let body =
        serde_json::json!({ "errors": [{ "message": message, "extensions": retry_hint() }] });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, response_content_type(headers));
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(admission::RETRY_AFTER.as_secs().max(1)),
    );
    response
}

fn refusal_message(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::ClientBusy => "too many requests of this client are running; retry after the hint",
        Refusal::ServerBusy => SERVER_BUSY,
    }
}

const SERVER_BUSY: &str = "the server is at its bound of queries in flight; retry after the hint";

/// One operation of a batch refused for want of room; the others keep their answers.
fn server_busy() -> async_graphql::Response {
    let mut error = ServerError::new(SERVER_BUSY, None);
    error.extensions = Some(retry_hint());
    async_graphql::Response::from_errors(vec![error])
}

/// `extensions` of a refusal: RETRY_LATER and when to retry.
fn retry_hint() -> async_graphql::ErrorExtensionValues {
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", AppError::RetryLater.code());
    extensions.set(
        "retryAfterMs",
        u64::try_from(admission::RETRY_AFTER.as_millis()).unwrap_or(u64::MAX),
    );
    extensions
}

/// Whether `GRAPHQL_INTROSPECTION` lets `caller` introspect.
fn may_introspect(state: &AppState, caller: Caller) -> bool {
    match state.config.server.introspection {
        Introspection::Public => true,
        Introspection::Authenticated => matches!(caller, Caller::Client(_)),
        Introspection::Off => false,
    }
}

fn with_scope(request: GraphQLRequestBody, state: &AppState, caller: Caller) -> GraphQLRequestBody {
    // Refused with a message before this; disabled here too, for whatever the
    // document check does not see.
    let request = if may_introspect(state, caller) {
        request
    } else {
        request.disable_introspection()
    };
    let request = request.data(caller);
    match caller {
        Caller::Client(client) => request
            .data(RequestScope::new(state.ledger.clone(), client))
            .data(Arc::clone(&state.admission)),
        _ => request,
    }
}

/// Errors raised by async-graphql itself (syntax, unknown fields, wrong variable types,
/// limits) describe the client's request; ours always carry a code already.
fn add_default_code(error: &mut ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", "BAD_USER_INPUT");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn lines_with(&self, text: &str) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|line| line.contains(text))
                .map(str::to_owned)
                .collect()
        }
    }

    // One thread, so the test's log subscriber sees the server's tasks too.
    #[tokio::test(flavor = "current_thread")]
    async fn every_response_and_log_line_carries_the_request_id() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let routes = Router::new().route(
            "/",
            get(|| async {
                tracing::info!("handled here");
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, with_request_ids_and_cors(routes, None)).await
        });
        let http = reqwest::Client::new();
        let request_id = |response: &reqwest::Response| {
            response
                .headers()
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };

        // The caller's id comes back and names the request's log line.
        let response = http
            .get(&url)
            .header("x-request-id", "order-42-try-1")
            .send()
            .await
            .unwrap();
        assert_eq!(request_id(&response).as_deref(), Some("order-42-try-1"));
        let lines = logs.lines_with("order-42-try-1");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("handled here"), "{lines:?}");

        // Without one, a new id, in the response and the log line; a 404 has one too.
        let response = http.get(&url).send().await.unwrap();
        let id = request_id(&response).expect("a generated id");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        let lines = logs.lines_with(&id);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("handled here"), "{lines:?}");
        let response = http.get(format!("{url}/nowhere")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(request_id(&response).is_some());

        // An id too long or not plain ASCII is replaced, never echoed.
        for unusable in [
            "x".repeat(REQUEST_ID_LENGTH_MAX + 1),
            "two words".to_owned(),
        ] {
            let response = http
                .get(&url)
                .header("x-request-id", &unusable)
                .send()
                .await
                .unwrap();
            let id = request_id(&response).expect("a replacement id");
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
            assert!(logs.lines_with(&unusable).is_empty());
        }
        // Two ids for one request: neither is echoed.
        let response = http
            .get(&url)
            .header("x-request-id", "first-id")
            .header("x-request-id", "second-id")
            .send()
            .await
            .unwrap();
        let id = request_id(&response).expect("a replacement id");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert!(logs.lines_with("first-id").is_empty());
    }
}
