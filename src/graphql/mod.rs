//! The GraphQL schema: types, roots, loaders, limits, and the per-request scope.

pub mod budget;
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
/// day; parsing each anew was a tenth of a cached balance read. Only documents that
/// ran for an authenticated client are remembered, and entries are weighed by size, so
/// neither anonymous traffic nor a stream of distinct large queries can grow it past
/// its budget.
pub struct ParsedQueries(moka::sync::Cache<String, ExecutableDocument>);

/// What the cache may hold, in estimated bytes of parsed documents.
const PARSED_QUERIES_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A parsed document takes about this many times its text's size (a 16 KiB query of
/// many aliases measured about 1.3 MB parsed).
const PARSED_BYTES_PER_QUERY_BYTE: u64 = 80;
/// Longer query texts are parsed every time, never kept.
const PARSED_QUERY_LENGTH_MAX: usize = 16 * 1024;

impl Default for ParsedQueries {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(PARSED_QUERIES_BYTES_MAX)
                .weigher(|query: &String, _| {
                    u32::try_from(query.len() as u64 * PARSED_BYTES_PER_QUERY_BYTE)
                        .unwrap_or(u32::MAX)
                })
                .build(),
        )
    }
}

/// A document parsed for this request, to be remembered if the request turns out to
/// deserve it (`ParsedQueries::remember`).
pub struct FreshlyParsed {
    query: String,
    document: ExecutableDocument,
}

impl ParsedQueries {
    /// Gives `request` its parsed document from the cache, or parses it and returns
    /// the new document for `remember`. A query that does not parse is left for
    /// execution to report.
    pub fn prepare(&self, request: &mut async_graphql::Request) -> Option<FreshlyParsed> {
        if request.query.len() > PARSED_QUERY_LENGTH_MAX {
            return None;
        }
        if let Some(document) = self.0.get(&request.query) {
            request.set_parsed_query(document);
            return None;
        }
        let document = request.parsed_query().ok()?.clone();
        Some(FreshlyParsed {
            query: request.query.clone(),
            document,
        })
    }

    /// Keeps a document that ran for an authenticated client and produced data (so it
    /// parsed and validated).
    pub fn remember(&self, parsed: FreshlyParsed) {
        self.0.insert(parsed.query, parsed.document);
    }

    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.0.run_pending_tasks();
        self.0.weighted_size()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_documents_stay_within_their_byte_budget() {
        let cache = ParsedQueries::default();
        // 2 000 distinct 2 KiB queries: 2 000 × 2 KiB × 80 = 320 MiB if all were kept.
        for index in 0..2_000 {
            let aliases: String = (0..100)
                .map(|alias| format!("a{alias}: __typename "))
                .collect();
            let mut request =
                async_graphql::Request::new(format!("{{ n{index}: __typename {aliases} }}"));
            let parsed = cache.prepare(&mut request).expect("a new query parses");
            cache.remember(parsed);
        }
        assert!(cache.weighted_size() <= PARSED_QUERIES_BYTES_MAX);
        assert!(cache.weighted_size() > PARSED_QUERIES_BYTES_MAX / 2);
    }
}
