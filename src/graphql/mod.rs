//! The GraphQL schema: types, roots, loaders, limits, and the per-request scope.

pub mod budget;
pub mod loaders;
pub mod mutation;
pub mod paging;
pub mod query;
pub mod scalars;
pub mod types;

use std::collections::HashSet;

use async_graphql::dataloader::DataLoader;
use async_graphql::parser::types::{
    BaseType, ExecutableDocument, OperationType, Type, TypeKind, TypeSystemDefinition,
};
use async_graphql::{Context, EmptySubscription, Schema, SchemaBuilder, ValidationMode};

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

fn schema_builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(QUERY_DEPTH_MAX)
        .limit_complexity(QUERY_COMPLEXITY_MAX)
        .limit_directives(16)
}

pub fn build_schema() -> AppSchema {
    schema_builder().finish()
}

/// The same schema for documents that passed full validation before and whose
/// validation cannot depend on their variables (`KnownDocument::validated`): it still
/// computes depth and complexity (they depend on variables such as `first`), and skips
/// the rules the document already passed (async-graphql's `ValidationMode::Fast`). Full
/// validation was a third of a warm balance read's time in GraphQL.
pub fn build_schema_for_validated_documents() -> AppSchema {
    schema_builder()
        .validation_mode(ValidationMode::Fast)
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
pub struct ParsedQueries {
    documents: moka::sync::Cache<String, KnownDocument>,
    /// The schema's scalar and enum types, built-in ones included: the variable types
    /// async-graphql parses exactly as it validates them.
    value_types: HashSet<String>,
}

/// A remembered document, and whether it may skip validation from now on.
#[derive(Clone)]
struct KnownDocument {
    document: ExecutableDocument,
    validated: bool,
}

/// What the cache may hold, in estimated bytes of parsed documents.
const PARSED_QUERIES_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A parsed document takes about this many times its text's size (a 16 KiB query of
/// many aliases measured about 1.3 MB parsed).
const PARSED_BYTES_PER_QUERY_BYTE: u64 = 80;
/// Longer query texts are parsed every time, never kept.
const PARSED_QUERY_LENGTH_MAX: usize = 16 * 1024;

impl Default for ParsedQueries {
    fn default() -> Self {
        Self {
            documents: moka::sync::Cache::builder()
                .max_capacity(PARSED_QUERIES_BYTES_MAX)
                .weigher(|query: &String, _| {
                    u32::try_from(query.len() as u64 * PARSED_BYTES_PER_QUERY_BYTE)
                        .unwrap_or(u32::MAX)
                })
                .build(),
            value_types: value_types(&sdl()),
        }
    }
}

/// The scalar and enum type names of the schema `sdl` describes, and the built-in
/// scalars.
fn value_types(sdl: &str) -> HashSet<String> {
    let mut names: HashSet<String> = ["Int", "Float", "String", "Boolean", "ID"]
        .map(str::to_owned)
        .into();
    // The schema's own SDL always parses; an empty set only sends every document
    // through full validation.
    if let Ok(schema) = async_graphql::parser::parse_schema(sdl) {
        for definition in schema.definitions {
            if let TypeSystemDefinition::Type(definition) = definition
                && matches!(definition.node.kind, TypeKind::Scalar | TypeKind::Enum(_))
            {
                names.insert(definition.node.name.node.to_string());
            }
        }
    }
    names
}

/// Whether `document` (the parse of `query`) validates alike for any variables, so one
/// full validation stands for every later request with it. async-graphql's only rule
/// that reads variables checks their values against the arguments they fill; that
/// check repeats at execution, where each argument is parsed, except for arguments of
/// skipped fields (so: no directives) and input objects' unknown fields, which
/// validation refuses and parsing ignores (so: only scalar and enum variables). Only
/// queries, so a request that errs can run again under full validation
/// (`http::execute_validated`) and change nothing.
fn validates_alike_for_any_variables(
    query: &str,
    document: &ExecutableDocument,
    value_types: &HashSet<String>,
) -> bool {
    fn named(ty: &Type) -> &str {
        match &ty.base {
            BaseType::Named(name) => name.as_str(),
            BaseType::List(item) => named(item),
        }
    }
    !query.contains('@')
        && document.operations.iter().all(|(_, operation)| {
            operation.node.ty == OperationType::Query
                && operation
                    .node
                    .variable_definitions
                    .iter()
                    .all(|variable| value_types.contains(named(&variable.node.var_type.node)))
        })
}

/// A document parsed for this request, to be remembered if the request turns out to
/// deserve it (`ParsedQueries::remember`).
pub struct FreshlyParsed {
    query: String,
    document: ExecutableDocument,
}

/// What `ParsedQueries::prepare` found.
#[derive(Default)]
pub struct Prepared {
    /// A document parsed for this request, to remember if it deserves it.
    pub fresh: Option<FreshlyParsed>,
    /// The document passed full validation before and validates alike for any
    /// variables (`build_schema_for_validated_documents`).
    pub validated: bool,
}

impl ParsedQueries {
    /// Gives `request` its parsed document from the cache, or parses it and returns
    /// the new document for `remember`. A query that does not parse is left for
    /// execution to report.
    pub fn prepare(&self, request: &mut async_graphql::Request) -> Prepared {
        if request.query.len() > PARSED_QUERY_LENGTH_MAX {
            return Prepared::default();
        }
        if let Some(known) = self.documents.get(&request.query) {
            request.set_parsed_query(known.document);
            return Prepared {
                fresh: None,
                validated: known.validated && request.uploads.is_empty(),
            };
        }
        let fresh = request
            .parsed_query()
            .ok()
            .cloned()
            .map(|document| FreshlyParsed {
                query: request.query.clone(),
                document,
            });
        Prepared {
            fresh,
            validated: false,
        }
    }

    /// Keeps a document that ran for an authenticated client and produced data (so it
    /// parsed and validated).
    pub fn remember(&self, parsed: FreshlyParsed) {
        let validated =
            validates_alike_for_any_variables(&parsed.query, &parsed.document, &self.value_types);
        self.documents.insert(
            parsed.query,
            KnownDocument {
                document: parsed.document,
                validated,
            },
        );
    }

    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.documents.run_pending_tasks();
        self.documents.weighted_size()
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
            let parsed = cache
                .prepare(&mut request)
                .fresh
                .expect("a new query parses");
            cache.remember(parsed);
        }
        assert!(cache.weighted_size() <= PARSED_QUERIES_BYTES_MAX);
        assert!(cache.weighted_size() > PARSED_QUERIES_BYTES_MAX / 2);
    }

    /// Whether a document, once remembered, skips validation on its next request.
    fn validated_on_second_sight(query: &str) -> bool {
        let cache = ParsedQueries::default();
        let parsed = cache
            .prepare(&mut async_graphql::Request::new(query))
            .fresh
            .expect("the query parses");
        cache.remember(parsed);
        cache
            .prepare(&mut async_graphql::Request::new(query))
            .validated
    }

    #[test]
    fn only_documents_whose_validation_cannot_depend_on_variables_skip_it() {
        // Scalars (built-in and the schema's own) and enums, in lists or not.
        assert!(validated_on_second_sight(
            "query($id: ID!) { account(id: $id) { balance { amount version } } }"
        ));
        assert!(validated_on_second_sight(
            "query($first: Int, $after: String) { accounts(first: $first, after: $after) { nodes { id } } }"
        ));
        assert!(validated_on_second_sight("{ __typename }"));
        assert!(validated_on_second_sight(
            "query($at: DateTime!, $id: ID!) { account(id: $id) { balanceAt(time: $at) { amount } } }"
        ));
        // Mutations are never run twice.
        assert!(!validated_on_second_sight(
            "mutation($id: ID!) { updateAccount(input: { accountId: $id, idempotencyKey: \"k\" }) { account { id } } }"
        ));
        // A skipped field's arguments are validated but never parsed.
        assert!(!validated_on_second_sight(
            "query($id: ID!, $skip: Boolean!) { account(id: $id) @skip(if: $skip) { id } }"
        ));
        // Validation refuses an input object's unknown fields; parsing ignores them.
        assert!(!validated_on_second_sight(
            "query($id: ID!, $filter: MetadataFilter) { account(id: $id) { payments(metadata: $filter) { nodes { id } } } }"
        ));
        // Never for a query text too long to remember.
        let aliases: String = (0..1_000).map(|n| format!("a{n}: __typename ")).collect();
        let mut long = async_graphql::Request::new(format!("{{ {aliases} }}"));
        let prepared = ParsedQueries::default().prepare(&mut long);
        assert!(prepared.fresh.is_none() && !prepared.validated);
    }

    #[test]
    fn value_types_are_the_schemas_scalars_and_enums() {
        let types = value_types(&sdl());
        for name in [
            "ID", "Int", "String", "Boolean", "Float", "DateTime", "Decimal",
        ] {
            assert!(types.contains(name), "{name} missing from {types:?}");
        }
        assert!(types.contains("Consistency"), "{types:?}");
        assert!(!types.contains("CreatePaymentInput"));
        assert!(!types.contains("Account"));
    }
}
