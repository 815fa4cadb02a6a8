//! Clients (tenants) and their API keys.
//!
//! A key is 40 random alphanumeric characters behind a `lk_` prefix, shown once at
//! creation. Only its SHA-256 is stored: the key carries ~238 bits of entropy, so a
//! fast hash is as safe as a slow one and keeps authentication to one indexed lookup.

use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::entity::client;
use crate::error::{AppError, AppResult};
use crate::ids::ClientId;

const API_KEY_PREFIX: &str = "lk_";
const API_KEY_RANDOM_CHARS: usize = 40;
const CLIENT_NAME_LENGTH_MAX: usize = 200;
/// How long a verified key is trusted without asking the database again. Keys cannot
/// be revoked yet; when they can, revocation takes effect within this bound.
const VERIFIED_KEY_TTL: Duration = Duration::from_secs(60);
const VERIFIED_KEYS_CAPACITY: u64 = 10_000;

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
    pub api_key: String,
}

fn hash_api_key(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

pub async fn create_client(db: &DatabaseConnection, name: &str) -> AppResult<NewClient> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > CLIENT_NAME_LENGTH_MAX {
        return Err(AppError::bad_input(format!(
            "client name must be 1 to {CLIENT_NAME_LENGTH_MAX} characters"
        )));
    }
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(API_KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    let api_key = format!("{API_KEY_PREFIX}{random}");
    let id = ClientId(Uuid::now_v7());
    client::Entity::insert(client::ActiveModel {
        id: Set(id.0),
        name: Set(name.to_owned()),
        api_key_hash: Set(hash_api_key(&api_key)),
        created_at: Set(crate::entity::stored_now()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(NewClient { id, api_key })
}

/// Resolves `Authorization` headers to callers, remembering recently verified keys.
#[derive(Clone)]
pub struct Authenticator {
    db: DatabaseConnection,
    verified: moka::future::Cache<String, ClientId>,
}

impl Authenticator {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            verified: moka::future::Cache::builder()
                .max_capacity(VERIFIED_KEYS_CAPACITY)
                .time_to_live(VERIFIED_KEY_TTL)
                .build(),
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
        if let Some(client) = self.verified.get(&hash).await {
            return Ok(Caller::Client(client));
        }
        let found = client::Entity::find()
            .filter(client::Column::ApiKeyHash.eq(hash.as_str()))
            .one(&self.db)
            .await?;
        Ok(match found {
            Some(row) => {
                let client = ClientId(row.id);
                self.verified.insert(hash, client).await;
                Caller::Client(client)
            }
            None => Caller::InvalidKey,
        })
    }
}
