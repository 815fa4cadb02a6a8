//! Clients (tenants) and their API keys.
//!
//! A key is 40 random alphanumeric characters behind a `lk_` prefix, shown once at
//! creation. Only its SHA-256 is stored: the key carries ~238 bits of entropy, so a
//! fast hash is as safe as a slow one and keeps authentication to one indexed lookup.
//! A client may hold several keys (to rotate them); a revoked key stops working on
//! every instance within `API_KEY_CACHE_SECONDS`.

use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::entity::{api_key, client};
use crate::error::{AppError, AppResult};
use crate::ids::ClientId;

const API_KEY_PREFIX: &str = "lk_";
const API_KEY_RANDOM_CHARS: usize = 40;
const CLIENT_NAME_LENGTH_MAX: usize = 200;
/// Keys remembered per instance, valid and unknown each: a bound on memory whatever
/// keys callers make up.
const REMEMBERED_KEYS_CAPACITY: u64 = 10_000;

/// Who is calling, as far as the request's `Authorization` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No header: the schema may be explored, no data read.
    Anonymous,
    /// A header that names no client.
    InvalidKey,
    Client(ClientId),
}

impl Caller {
    /// The tenant every data field is scoped to.
    pub fn client(self) -> AppResult<ClientId> {
        match self {
            Self::Client(client) => Ok(client),
            Self::Anonymous => Err(AppError::Unauthenticated(
                "missing API key: send the header 'Authorization: Bearer <api key>'",
            )),
            Self::InvalidKey => Err(AppError::Unauthenticated("invalid API key")),
        }
    }
}

/// A newly created client and the only copy of its key.
pub struct NewClient {
    pub id: ClientId,
    pub key: NewKey,
    /// The key itself (`key.api_key`), kept under its old name for callers.
    pub api_key: String,
}

/// A new API key: its id (to list and revoke it) and the only copy of the key.
pub struct NewKey {
    pub id: Uuid,
    pub api_key: String,
}

/// The SHA-256 of a key, as stored.
fn hash_api_key(api_key: &str) -> [u8; 32] {
    Sha256::digest(api_key.as_bytes()).into()
}

fn generate_key() -> (String, String) {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(API_KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    let api_key = format!("{API_KEY_PREFIX}{random}");
    let hash = hex::encode(hash_api_key(&api_key));
    (api_key, hash)
}

pub async fn create_client(db: &DatabaseConnection, name: &str) -> AppResult<NewClient> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > CLIENT_NAME_LENGTH_MAX {
        return Err(AppError::bad_input(format!(
            "client name must be 1 to {CLIENT_NAME_LENGTH_MAX} characters"
        )));
    }
    let (api_key, hash) = generate_key();
    let id = ClientId(Uuid::now_v7());
    let created_at = crate::entity::stored_now();
    let transaction = db.begin().await?;
    client::Entity::insert(client::ActiveModel {
        id: Set(id.0),
        name: Set(name.to_owned()),
        // The key the client was created with; authentication reads `api_keys`.
        api_key_hash: Set(hash.clone()),
        created_at: Set(created_at),
    })
    .exec_without_returning(&transaction)
    .await?;
    let key = insert_key(&transaction, id, api_key.clone(), hash).await?;
    transaction.commit().await?;
    Ok(NewClient { id, key, api_key })
}

async fn insert_key(
    connection: &impl sea_orm::ConnectionTrait,
    client: ClientId,
    api_key: String,
    hash: String,
) -> AppResult<NewKey> {
    let id = Uuid::now_v7();
    api_key::Entity::insert(api_key::ActiveModel {
        id: Set(id),
        client_id: Set(client.0),
        key_hash: Set(hash),
        created_at: Set(crate::entity::stored_now()),
        revoked_at: Set(None),
    })
    .exec_without_returning(connection)
    .await?;
    Ok(NewKey { id, api_key })
}

/// Gives `client` one more key; its other keys keep working.
pub async fn add_key(db: &DatabaseConnection, client: ClientId) -> AppResult<NewKey> {
    let transaction = db.begin().await?;
    if client::Entity::find_by_id(client.0)
        .one(&transaction)
        .await?
        .is_none()
    {
        return Err(AppError::not_found(format!(
            "client {} not found",
            client.0
        )));
    }
    let (api_key, hash) = generate_key();
    let key = insert_key(&transaction, client, api_key, hash).await?;
    transaction.commit().await?;
    Ok(key)
}

/// Which key to revoke: by its id, or by the key itself (one found in a log, say).
pub enum KeyRef<'a> {
    Id(Uuid),
    Key(&'a str),
}

impl<'a> KeyRef<'a> {
    /// A key if it looks like one (`lk_…`), else a key id.
    pub fn parse(text: &'a str) -> AppResult<Self> {
        if text.starts_with(API_KEY_PREFIX) {
            return Ok(Self::Key(text));
        }
        Uuid::parse_str(text).map(Self::Id).map_err(|_| {
            AppError::bad_input(format!("{text:?} is neither an API key nor a key id"))
        })
    }
}

/// Revokes a key; returns the revoked key's row, or NOT_FOUND if no unrevoked key
/// matches. Instances stop accepting it within `API_KEY_CACHE_SECONDS`.
pub async fn revoke_key(db: &DatabaseConnection, key: KeyRef<'_>) -> AppResult<api_key::Model> {
    let matching = match key {
        KeyRef::Id(id) => api_key::Column::Id.eq(id),
        KeyRef::Key(api_key) => api_key::Column::KeyHash.eq(hex::encode(hash_api_key(api_key))),
    };
    let transaction = db.begin().await?;
    let revoked = api_key::Entity::update_many()
        .col_expr(
            api_key::Column::RevokedAt,
            Expr::value(crate::entity::stored_now()),
        )
        .filter(matching)
        .filter(api_key::Column::RevokedAt.is_null())
        .exec_with_returning(&transaction)
        .await?;
    transaction.commit().await?;
    revoked
        .into_iter()
        .next()
        .ok_or_else(|| AppError::not_found("no such unrevoked key"))
}

/// A client's keys, oldest first, revoked ones included.
pub async fn list_keys(
    db: &DatabaseConnection,
    client: ClientId,
) -> AppResult<Vec<api_key::Model>> {
    Ok(api_key::Entity::find()
        .filter(api_key::Column::ClientId.eq(client.0))
        .order_by_asc(api_key::Column::CreatedAt)
        .order_by_asc(api_key::Column::Id)
        .all(db)
        .await?)
}

/// Resolves `Authorization` headers to callers, remembering what it learned about
/// each key (valid for a client, or unknown) for `API_KEY_CACHE_SECONDS`, so neither a
/// busy client nor a caller sending made-up keys costs a query per request.
#[derive(Clone)]
pub struct Authenticator {
    db: DatabaseConnection,
    /// Both `None` when `API_KEY_CACHE_SECONDS` is 0. Kept apart so that a flood of
    /// made-up keys cannot push out the keys of real clients.
    verified: Option<moka::future::Cache<[u8; 32], ClientId>>,
    unknown: Option<moka::future::Cache<[u8; 32], ()>>,
}

impl Authenticator {
    pub fn new(db: DatabaseConnection, remember_for: Duration) -> Self {
        fn cache<V: Clone + Send + Sync + 'static>(
            remember_for: Duration,
        ) -> Option<moka::future::Cache<[u8; 32], V>> {
            (!remember_for.is_zero()).then(|| {
                moka::future::Cache::builder()
                    .max_capacity(REMEMBERED_KEYS_CAPACITY)
                    .time_to_live(remember_for)
                    .build()
            })
        }
        Self {
            db,
            verified: cache(remember_for),
            unknown: cache(remember_for),
        }
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> AppResult<Caller> {
        let Some(header) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let Some(api_key) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|key| key.starts_with(API_KEY_PREFIX))
        else {
            return Ok(Caller::InvalidKey);
        };
        let hash = hash_api_key(api_key);
        if let Some(verified) = &self.verified
            && let Some(client) = verified.get(&hash).await
        {
            return Ok(Caller::Client(client));
        }
        if let Some(unknown) = &self.unknown
            && unknown.contains_key(&hash)
        {
            return Ok(Caller::InvalidKey);
        }
        let found = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(hex::encode(hash)))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?;
        Ok(match found {
            Some(row) => {
                let client = ClientId(row.client_id);
                if let Some(verified) = &self.verified {
                    verified.insert(hash, client).await;
                }
                Caller::Client(client)
            }
            None => {
                if let Some(unknown) = &self.unknown {
                    unknown.insert(hash, ()).await;
                }
                Caller::InvalidKey
            }
        })
    }
}
