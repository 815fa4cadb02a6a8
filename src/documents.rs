//! GraphQL documents named by hash instead of sent in full.
//!
//! - **Automatic persisted queries** (Apollo's APQ v1, spoken by Apollo Client's
//!   `PersistedQueryLink` and urql's `persistedExchange`): a request carries
//!   `extensions.persistedQuery {version: 1, sha256Hash}`. Hash alone: the document
//!   registered under it runs, or PERSISTED_QUERY_NOT_FOUND (message
//!   `PersistedQueryNotFound`, which those clients match) asks for it in full. Hash and
//!   document: the hash must be the document's, and once it ran for a client it is
//!   registered, in L1 and in Redis (bounded in both), for every instance.
//! - **Trusted documents**: a manifest loaded at start (`GRAPHQL_TRUSTED_DOCUMENTS`),
//!   named by `documentId: "sha256:<hex>"` or by the APQ hash. Under
//!   `GRAPHQL_DOCUMENTS=trusted` only those (and the built-in dashboard's) run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use async_graphql::Value;
use sha2::{Digest, Sha256};

use crate::cache::RedisL2;
use crate::config::DocumentPolicy;
use crate::error::AppError;

/// The built-in dashboard's one query: trusted under every policy, since it ships with
/// the server. `assets/dashboard.js` names it by its hash (a test keeps them equal).
pub const DASHBOARD_DOCUMENT: &str = include_str!("../assets/dashboard.graphql");

/// Documents longer than this run but are not registered: APQ is for the few documents
/// an application sends over and over, which are far smaller.
pub const REGISTERED_DOCUMENT_BYTES_MAX: usize = 16 * 1024;
/// What registered documents may hold in L1, in bytes of text.
const REGISTERED_L1_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Registered documents Redis keeps; past it the oldest registrations go first.
pub const REGISTERED_L2_DOCUMENTS_MAX: u64 = 10_000;
/// How long Redis keeps a registration that is not registered again.
const REGISTERED_L2_TTL_SECONDS: u64 = 7 * 24 * 3600;
/// A manifest larger than this is refused at start.
pub const MANIFEST_BYTES_MAX: u64 = 64 * 1024 * 1024;

pub struct Documents {
    policy: DocumentPolicy,
    /// The manifest's documents and the built-in ones, by lower-case SHA-256 hex.
    trusted: HashMap<String, Arc<str>>,
    registered: moka::future::Cache<String, Arc<str>>,
    l2: Option<Arc<RedisL2>>,
}

/// How one request named its document, as read off HTTP.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// `documentId`, as sent.
    pub document_id: Option<String>,
    /// `extensions.persistedQuery`, as sent.
    pub persisted_query: Option<Value>,
}

/// What to do once the request ran: register its document under this hash.
#[derive(Debug)]
pub struct Registration(String);

impl Documents {
    /// The documents `policy` lets run, with the manifest at `manifest` if any.
    pub fn load(
        policy: DocumentPolicy,
        manifest: Option<&Path>,
        l2: Option<Arc<RedisL2>>,
    ) -> anyhow::Result<Self> {
        let mut trusted = match manifest {
            Some(path) => read_manifest(path)
                .with_context(|| format!("GRAPHQL_TRUSTED_DOCUMENTS={}", path.display()))?,
            None if policy == DocumentPolicy::Trusted => bail!(
                "GRAPHQL_DOCUMENTS=trusted runs only the documents of a manifest: set GRAPHQL_TRUSTED_DOCUMENTS to one"
            ),
            None => HashMap::new(),
        };
        trusted.insert(
            sha256_hex(DASHBOARD_DOCUMENT),
            Arc::from(DASHBOARD_DOCUMENT),
        );
        Ok(Self {
            policy,
            trusted,
            registered: moka::future::Cache::builder()
                .max_capacity(REGISTERED_L1_BYTES_MAX)
                .weigher(|hash: &String, text: &Arc<str>| {
                    u32::try_from(hash.len() + text.len()).unwrap_or(u32::MAX)
                })
                .build(),
            l2,
        })
    }

    pub fn policy(&self) -> DocumentPolicy {
        self.policy
    }

    /// How many documents the manifest brought (the built-in ones not counted).
    pub fn trusted_count(&self) -> usize {
        self.trusted.len() - 1
    }

    /// Puts the document `naming` names into `query`, or checks the one sent against
    /// it, and refuses what the policy does not let run. `Ok(Some(_))`: register the
    /// document once it ran.
    pub async fn resolve(
        &self,
        query: &mut String,
        naming: Naming,
    ) -> Result<Option<Registration>, AppError> {
        let hash = named_hash(&naming)?;
        let Some(hash) = hash else {
            if self.policy == DocumentPolicy::Trusted
                && !query.is_empty()
                && !self.trusted.contains_key(&sha256_hex(query))
            {
                return Err(not_trusted());
            }
            return Ok(None);
        };
        if !query.is_empty() {
            if sha256_hex(query) != hash {
                return Err(AppError::PersistedQueryHashMismatch);
            }
            if self.trusted.contains_key(&hash) {
                return Ok(None);
            }
            if self.policy == DocumentPolicy::Trusted {
                return Err(not_trusted());
            }
            return Ok(Some(Registration(hash)));
        }
        if let Some(text) = self.trusted.get(&hash) {
            text.as_ref().clone_into(query);
            return Ok(None);
        }
        if self.policy == DocumentPolicy::Trusted {
            return Err(not_trusted());
        }
        match self.registered(&hash).await {
            Some(text) => {
                text.as_ref().clone_into(query);
                Ok(None)
            }
            None => Err(AppError::PersistedQueryNotFound),
        }
    }

    async fn registered(&self, hash: &str) -> Option<Arc<str>> {
        if let Some(text) = self.registered.get(hash).await {
            return Some(text);
        }
        let text: Arc<str> = Arc::from(self.l2.as_ref()?.get_document(hash).await?);
        // Redis holds what any instance registered: the hash is checked again here, so
        // a key written by anything else cannot make a hash run another document.
        if sha256_hex(&text) != hash {
            return None;
        }
        self.registered
            .insert(hash.to_owned(), Arc::clone(&text))
            .await;
        Some(text)
    }

    /// Registers a document that ran for a client under its hash, in L1 and Redis.
    pub async fn register(&self, registration: Registration, query: &str) {
        if query.len() > REGISTERED_DOCUMENT_BYTES_MAX
            || self.registered.contains_key(&registration.0)
        {
            return;
        }
        if let Some(l2) = &self.l2 {
            l2.put_document(
                &registration.0,
                query,
                REGISTERED_L2_TTL_SECONDS,
                REGISTERED_L2_DOCUMENTS_MAX,
            )
            .await;
        }
        self.registered
            .insert(registration.0, Arc::from(query))
            .await;
    }
}

fn not_trusted() -> AppError {
    AppError::DocumentNotTrusted
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A SHA-256 as clients write it: 64 hex digits, either case.
fn parse_hash(text: &str) -> Option<String> {
    (text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// The hash a request names its document by, if it names one; both ways at once must
/// agree.
fn named_hash(naming: &Naming) -> Result<Option<String>, AppError> {
    let by_id = match &naming.document_id {
        None => None,
        Some(id) => Some(
            id.strip_prefix("sha256:")
                .and_then(parse_hash)
                .ok_or_else(|| {
                    AppError::bad_input(format!(
                        "documentId {:?} is not of the form \"sha256:<64 hex digits>\"",
                        truncated(id)
                    ))
                })?,
        ),
    };
    let by_apq = match &naming.persisted_query {
        None => None,
        Some(extension) => Some(apq_hash(extension)?),
    };
    match (by_id, by_apq) {
        (Some(id), Some(apq)) if id != apq => Err(AppError::bad_input(
            "documentId and extensions.persistedQuery.sha256Hash name different documents",
        )),
        (id, apq) => Ok(id.or(apq)),
    }
}

/// `{version: 1, sha256Hash: "<hex>"}`.
fn apq_hash(extension: &Value) -> Result<String, AppError> {
    let Value::Object(fields) = extension else {
        return Err(AppError::bad_input(
            "extensions.persistedQuery must be an object {version: 1, sha256Hash}",
        ));
    };
    match fields.get("version") {
        Some(Value::Number(version)) if version.as_u64() == Some(1) => {}
        _ => return Err(AppError::PersistedQueryNotSupported),
    }
    match fields.get("sha256Hash") {
        Some(Value::String(hash)) => parse_hash(hash).ok_or_else(|| {
            AppError::bad_input(format!(
                "extensions.persistedQuery.sha256Hash {:?} is not 64 hex digits",
                truncated(hash)
            ))
        }),
        _ => Err(AppError::bad_input(
            "extensions.persistedQuery needs sha256Hash, the document's SHA-256 in hex",
        )),
    }
}

/// At most 80 characters of what a caller sent, for a message.
fn truncated(text: &str) -> &str {
    text.char_indices()
        .nth(80)
        .map_or(text, |(index, _)| &text[..index])
}

/// Reads a manifest in either format, checking every hash against its document and
/// that every document parses.
fn read_manifest(path: &Path) -> anyhow::Result<HashMap<String, Arc<str>>> {
    let size = std::fs::metadata(path)
        .context("cannot read the manifest")?
        .len();
    if size > MANIFEST_BYTES_MAX {
        bail!("the manifest is {size} bytes, more than {MANIFEST_BYTES_MAX}");
    }
    let text = std::fs::read_to_string(path).context("cannot read the manifest")?;
    parse_manifest(&text)
}

#[derive(serde::Deserialize)]
struct ApolloManifest {
    format: String,
    version: u64,
    operations: Vec<ApolloOperation>,
}

#[derive(serde::Deserialize)]
struct ApolloOperation {
    id: String,
    name: Option<String>,
    body: String,
}

fn parse_manifest(text: &str) -> anyhow::Result<HashMap<String, Arc<str>>> {
    let json: serde_json::Value =
        serde_json::from_str(text).context("the manifest is not valid JSON")?;
    let Some(object) = json.as_object() else {
        bail!(
            "the manifest must be a JSON object: {{\"<sha256>\": \"<document>\"}} or Apollo's persisted-query manifest"
        );
    };
    let entries: Vec<(String, String, String)> = if object.contains_key("format") {
        let manifest: ApolloManifest =
            serde_json::from_value(json).context("not an Apollo persisted-query manifest")?;
        if manifest.format != "apollo-persisted-query-manifest" || manifest.version != 1 {
            bail!(
                "format {:?} version {}: only \"apollo-persisted-query-manifest\" version 1 is read",
                manifest.format,
                manifest.version
            );
        }
        manifest
            .operations
            .into_iter()
            .enumerate()
            .map(|(index, operation)| {
                let place = match &operation.name {
                    Some(name) => format!("operations[{index}] ({name})"),
                    None => format!("operations[{index}]"),
                };
                (place, operation.id, operation.body)
            })
            .collect()
    } else {
        let map: HashMap<String, String> = serde_json::from_value(json)
            .context("every value of a {\"<sha256>\": \"<document>\"} manifest must be a string")?;
        map.into_iter()
            .map(|(hash, document)| (format!("entry {hash:?}"), hash, document))
            .collect()
    };
    if entries.is_empty() {
        bail!("the manifest holds no documents");
    }
    let mut documents = HashMap::with_capacity(entries.len());
    for (place, id, document) in entries {
        let id = id.strip_prefix("sha256:").unwrap_or(&id);
        let Some(hash) = parse_hash(id) else {
            let hint = if id.len() == 40 {
                " (a SHA-1: generate it with SHA-256, e.g. graphql-codegen's persistedDocuments.hashAlgorithm: 'sha256')"
            } else {
                ""
            };
            bail!(
                "{}: {:?} is not a SHA-256 in hex{hint}",
                truncated(&place),
                truncated(id)
            );
        };
        let actual = sha256_hex(&document);
        if actual != hash {
            bail!(
                "{}: the hash is not the SHA-256 of its document ({actual})",
                truncated(&place)
            );
        }
        if let Err(error) = async_graphql::parser::parse_query(&document) {
            bail!(
                "{}: the document does not parse: {error}",
                truncated(&place)
            );
        }
        documents.insert(hash, Arc::from(document));
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &str = "query Accounts { accounts(first: 5) { nodes { id } } }";

    fn apq(hash: &str) -> Naming {
        let mut fields = async_graphql::indexmap::IndexMap::new();
        fields.insert(async_graphql::Name::new("version"), Value::from(1));
        fields.insert(async_graphql::Name::new("sha256Hash"), Value::from(hash));
        Naming {
            document_id: None,
            persisted_query: Some(Value::Object(fields)),
        }
    }

    fn by_id(hash: &str) -> Naming {
        Naming {
            document_id: Some(format!("sha256:{hash}")),
            persisted_query: None,
        }
    }

    fn manifest_with(query: &str) -> String {
        serde_json::json!({ sha256_hex(query): query }).to_string()
    }

    fn documents(policy: DocumentPolicy, manifest: Option<&str>) -> Documents {
        let mut documents = Documents::load(DocumentPolicy::Any, None, None).unwrap();
        documents.policy = policy;
        if let Some(manifest) = manifest {
            documents.trusted.extend(parse_manifest(manifest).unwrap());
        }
        documents
    }

    #[tokio::test]
    async fn apq_registers_then_runs_by_hash() {
        let documents = documents(DocumentPolicy::Any, None);
        let hash = sha256_hex(QUERY);
        let mut query = String::new();
        let unknown = documents.resolve(&mut query, apq(&hash)).await;
        assert!(matches!(unknown, Err(AppError::PersistedQueryNotFound)));
        assert_eq!(
            AppError::PersistedQueryNotFound.to_string(),
            "PersistedQueryNotFound"
        );

        let mut query = QUERY.to_owned();
        let registration = documents.resolve(&mut query, apq(&hash)).await.unwrap();
        documents.register(registration.unwrap(), &query).await;
        let mut query = String::new();
        assert!(documents.resolve(&mut query, apq(&hash)).await.is_ok());
        assert_eq!(query, QUERY);
        // documentId names the same document.
        let mut query = String::new();
        assert!(documents.resolve(&mut query, by_id(&hash)).await.is_ok());
        assert_eq!(query, QUERY);
    }

    #[tokio::test]
    async fn a_hash_that_is_not_its_documents_is_refused() {
        let documents = documents(DocumentPolicy::Any, None);
        let mut query = QUERY.to_owned();
        let wrong = sha256_hex("{ __typename }");
        let refused = documents.resolve(&mut query, apq(&wrong)).await;
        assert!(matches!(refused, Err(AppError::PersistedQueryHashMismatch)));
        let mut query = String::new();
        let malformed = documents.resolve(&mut query, by_id("abc")).await;
        assert!(matches!(malformed, Err(AppError::BadUserInput(_))));
        let mut query = String::new();
        let both = Naming {
            document_id: Some(format!("sha256:{}", sha256_hex("a"))),
            ..apq(&sha256_hex("b"))
        };
        assert!(matches!(
            documents.resolve(&mut query, both).await,
            Err(AppError::BadUserInput(_))
        ));
        let mut version_two = apq(&sha256_hex(QUERY));
        if let Some(Value::Object(fields)) = &mut version_two.persisted_query {
            fields.insert(async_graphql::Name::new("version"), Value::from(2));
        }
        assert!(matches!(
            documents.resolve(&mut String::new(), version_two).await,
            Err(AppError::PersistedQueryNotSupported)
        ));
    }

    #[tokio::test]
    async fn trusted_policy_runs_only_the_manifest() {
        let documents = documents(DocumentPolicy::Trusted, Some(&manifest_with(QUERY)));
        let hash = sha256_hex(QUERY);
        let mut query = String::new();
        documents.resolve(&mut query, by_id(&hash)).await.unwrap();
        assert_eq!(query, QUERY);
        // The same text sent in full is trusted too; anything else is not.
        let mut query = QUERY.to_owned();
        assert!(
            documents
                .resolve(&mut query, Naming::default())
                .await
                .is_ok()
        );
        for other in ["{ __typename }", "mutation { __typename }"] {
            let mut query = other.to_owned();
            let refused = documents.resolve(&mut query, Naming::default()).await;
            assert!(
                matches!(refused, Err(AppError::DocumentNotTrusted)),
                "{other}"
            );
            let mut query = other.to_owned();
            let refused = documents.resolve(&mut query, apq(&sha256_hex(other))).await;
            assert!(
                matches!(refused, Err(AppError::DocumentNotTrusted)),
                "{other}"
            );
        }
        // The dashboard ships with the server: trusted under every policy.
        let mut query = String::new();
        documents
            .resolve(&mut query, by_id(&sha256_hex(DASHBOARD_DOCUMENT)))
            .await
            .unwrap();
        assert_eq!(query, DASHBOARD_DOCUMENT);
    }

    #[test]
    fn manifests_in_both_formats_are_checked() {
        let codegen = parse_manifest(&manifest_with(QUERY)).unwrap();
        assert_eq!(codegen.len(), 1);
        let apollo = serde_json::json!({
            "format": "apollo-persisted-query-manifest",
            "version": 1,
            "operations": [{ "id": sha256_hex(QUERY), "name": "Accounts", "type": "query", "body": QUERY }]
        });
        let apollo = parse_manifest(&apollo.to_string()).unwrap();
        assert_eq!(apollo, codegen);

        let refused = |manifest: serde_json::Value| {
            format!("{:#}", parse_manifest(&manifest.to_string()).unwrap_err())
        };
        let wrong_hash = refused(serde_json::json!({ sha256_hex("other"): QUERY }));
        assert!(wrong_hash.contains("not the SHA-256"), "{wrong_hash}");
        let sha1 = refused(serde_json::json!({ "a".repeat(40): QUERY }));
        assert!(sha1.contains("hashAlgorithm"), "{sha1}");
        let unparsable = refused(serde_json::json!({ sha256_hex("{ oops"): "{ oops" }));
        assert!(unparsable.contains("does not parse"), "{unparsable}");
        let empty = refused(serde_json::json!({}));
        assert!(empty.contains("no documents"), "{empty}");
        let version = refused(serde_json::json!({
            "format": "apollo-persisted-query-manifest", "version": 2, "operations": []
        }));
        assert!(version.contains("version 1"), "{version}");
        let not_strings = refused(serde_json::json!({ sha256_hex(QUERY): 5 }));
        assert!(not_strings.contains("must be a string"), "{not_strings}");
        assert!(parse_manifest("[1, 2").is_err());
    }
}
