//! The GraphQL schema: types, roots, loaders, limits, and the per-request scope.

pub mod loaders;
pub mod mutation;
pub mod paging;
pub mod query;
pub mod scalars;
pub mod types;

use async_graphql::dataloader::DataLoader;
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Context, EmptySubscription, Schema};

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::ids::ClientId;
use crate::ledger::Ledger;
use loaders::LedgerLoader;
use mutation::Mutation;
use query::Query;

pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// Deep enough for GraphiQL's introspection query (about 15), shallow enough that the
/// account -> entries -> payment -> account cycle cannot be walked far.
pub const QUERY_DEPTH_MAX: usize = 16;
/// Fields weighted by page size; a standard introspection query costs about 250.
pub const QUERY_COMPLEXITY_MAX: usize = 5_000;

pub fn build_schema() -> AppSchema {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(QUERY_DEPTH_MAX)
        .limit_complexity(QUERY_COMPLEXITY_MAX)
        .limit_directives(16)
        .finish()
}

/// The SDL of the schema, as checked in to `schema.graphql`.
pub fn sdl() -> String {
    build_schema().sdl()
}

/// How long a DataLoader collects keys before it loads them. Sibling fields register
/// their keys in one poll, well within this; cache hits skip the loader altogether.
const LOADER_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_micros(200);

/// Parsed documents of recent query texts. Dashboards poll the same few queries all
/// day; parsing each anew was a tenth of a cached balance read.
pub struct ParsedQueries(moka::sync::Cache<String, ExecutableDocument>);

impl Default for ParsedQueries {
    fn default() -> Self {
        Self(moka::sync::Cache::new(PARSED_QUERIES_MAX))
    }
}

/// Distinct query texts remembered, and the longest one worth remembering.
const PARSED_QUERIES_MAX: u64 = 1_000;
const PARSED_QUERY_LENGTH_MAX: usize = 16 * 1024;

impl ParsedQueries {
    /// Gives `request` its parsed document from the cache, or parses it and remembers
    /// it. A query that does not parse is left for execution to report.
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > PARSED_QUERY_LENGTH_MAX {
            return;
        }
        if let Some(document) = self.0.get(&request.query) {
            request.set_parsed_query(document);
            return;
        }
        if let Ok(document) = request.parsed_query() {
            let document = document.clone();
            self.0.insert(request.query.clone(), document);
        }
    }
}

/// What a resolver may use for an authenticated request.
pub struct RequestScope {
    pub client: ClientId,
    pub ledger: Ledger,
    pub loader: DataLoader<LedgerLoader>,
}

impl RequestScope {
    pub fn new(ledger: Ledger, client: ClientId) -> Self {
        let loader = DataLoader::new(
            LedgerLoader {
                ledger: ledger.clone(),
                client,
            },
            tokio::spawn,
        )
        .delay(LOADER_BATCH_WINDOW);
        Self {
            client,
            ledger,
            loader,
        }
    }
}

/// The scope of the calling client, or UNAUTHENTICATED. Every data field starts here.
pub fn scope<'a>(ctx: &Context<'a>) -> AppResult<&'a RequestScope> {
    if let Some(scope) = ctx.data_opt::<RequestScope>() {
        return Ok(scope);
    }
    let caller = ctx
        .data_opt::<Caller>()
        .copied()
        .unwrap_or(Caller::Anonymous);
    match caller.client() {
        Err(error) => Err(error),
        Ok(_) => Err(AppError::internal(anyhow::anyhow!(
            "authenticated request without a scope"
        ))),
    }
}
