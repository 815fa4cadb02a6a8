//! Re-checks the invariants of the ledger from its stored rows alone.
//!
//! Used by tests after concurrent runs and by `payments-ledger verify`. Each check is
//! one SQL statement that returns only offending rows, so a healthy ledger of any size
//! costs a few scans and returns nothing.

use std::fmt;

use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement};
use uuid::Uuid;

use crate::ids::{AccountId, LedgerEntryId, PaymentId};

/// One broken invariant, with the ids needed to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

const SIGNED_AMOUNT: &str =
    "CASE e.direction WHEN 'CREDIT' THEN e.amount_minor ELSE -e.amount_minor END";

/// What the `subject` column of a check names.
#[derive(Clone, Copy)]
enum Subject {
    Currency,
    Account,
    Payment,
    LedgerEntry,
}

/// Each check: the invariant's name, what it reports, and a query returning per
/// offending row a `subject` (an id, or a currency code) and a text `detail`. Written
/// in the SQL both SQLite and PostgreSQL accept.
fn checks() -> Vec<(&'static str, Subject, String)> {
    vec![
        (
            "money is conserved per currency",
            Subject::Currency,
            format!(
                "SELECT e.currency AS subject, 'entries sum to ' || CAST(SUM({SIGNED_AMOUNT}) AS TEXT) AS detail \
                 FROM ledger_entries e GROUP BY e.currency HAVING SUM({SIGNED_AMOUNT}) <> 0"
            ),
        ),
        (
            "balance equals the sum of entries and version their count",
            Subject::Account,
            format!(
                "SELECT a.id AS subject, 'balance ' || CAST(a.balance_minor AS TEXT) \
                 || ' version ' || CAST(a.version AS TEXT) || ', entries sum ' \
                 || CAST(COALESCE(SUM({SIGNED_AMOUNT}), 0) AS TEXT) || ' count ' || CAST(COUNT(e.id) AS TEXT) \
                 || ' highest version ' || CAST(COALESCE(MAX(e.account_version), 0) AS TEXT) AS detail \
                 FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id \
                 GROUP BY a.id, a.balance_minor, a.version \
                 HAVING a.balance_minor <> COALESCE(SUM({SIGNED_AMOUNT}), 0) \
                 OR a.version <> COUNT(e.id) OR a.version <> COALESCE(MAX(e.account_version), 0)"
            ),
        ),
        (
            "each entry's balance_after follows from the one before",
            Subject::LedgerEntry,
            format!(
                "SELECT id AS subject, 'balance_after ' || CAST(balance_after_minor AS TEXT) \
                 || ' does not follow ' || CAST(balance_before AS TEXT) AS detail FROM ( \
                   SELECT e.id, e.balance_after_minor, {SIGNED_AMOUNT} AS signed_amount, \
                   LAG(e.balance_after_minor, 1, 0) OVER (PARTITION BY e.account_id ORDER BY e.account_version) AS balance_before \
                   FROM ledger_entries e) chained \
                 WHERE balance_after_minor <> balance_before + signed_amount"
            ),
        ),
        (
            "no account breaks its balance rule",
            Subject::Account,
            "SELECT id AS subject, balance_rule || ' account has balance ' \
             || CAST(balance_minor AS TEXT) AS detail FROM accounts \
             WHERE (balance_rule = 'NON_NEGATIVE' AND balance_minor < 0) \
             OR (balance_rule = 'CREDIT_LIMIT' AND balance_minor < -credit_limit_minor)"
                .to_owned(),
        ),
        (
            "a posted payment has one debit and one credit of its amount; a declined one none",
            Subject::Payment,
            "SELECT p.id AS subject, p.status || ' payment has ' \
             || CAST(COUNT(e.id) AS TEXT) || ' matching entries' AS detail \
             FROM payments p LEFT JOIN ledger_entries e ON e.payment_id = p.id AND e.amount_minor = p.amount_minor \
             AND e.currency = p.currency AND ( \
               (e.direction = 'DEBIT' AND e.account_id = p.from_account_id) \
               OR (e.direction = 'CREDIT' AND e.account_id = p.to_account_id)) \
             GROUP BY p.id, p.status \
             HAVING (p.status = 'POSTED' AND COUNT(e.id) <> 2) OR (p.status = 'DECLINED' AND COUNT(e.id) <> 0)"
                .to_owned(),
        ),
        (
            "every entry belongs to a posted payment of its client",
            Subject::LedgerEntry,
            "SELECT e.id AS subject, 'entry of a ' || p.status || ' payment' AS detail \
             FROM ledger_entries e JOIN payments p ON p.id = e.payment_id \
             WHERE p.status <> 'POSTED' OR e.client_id <> p.client_id \
             OR (SELECT COUNT(*) FROM ledger_entries o WHERE o.payment_id = e.payment_id) <> 2"
                .to_owned(),
        ),
        (
            "a payment's entries sit at its place in the feeds (one transaction wrote them)",
            Subject::LedgerEntry,
            "SELECT e.id AS subject, 'entry feed_seq ' || CAST(e.feed_seq AS TEXT) \
             || ', its payment''s ' || CAST(p.feed_seq AS TEXT) AS detail \
             FROM ledger_entries e JOIN payments p ON p.id = e.payment_id \
             WHERE e.feed_seq <> p.feed_seq"
                .to_owned(),
        ),
        (
            "each (client, idempotency key) produced at most one effect",
            Subject::Payment,
            "SELECT p.id AS subject, 'payment is not the recorded effect of its idempotency key' AS detail \
             FROM payments p LEFT JOIN idempotency_keys k \
             ON k.client_id = p.client_id AND k.idempotency_key = p.idempotency_key AND k.resource_id = p.id \
             WHERE k.resource_id IS NULL"
                .to_owned(),
        ),
    ]
}

fn describe(subject: Subject, row: &QueryResult) -> Result<String, DbErr> {
    let id = |row: &QueryResult| row.try_get::<Uuid>("", "subject");
    Ok(match subject {
        Subject::Currency => format!("currency {}", row.try_get::<String>("", "subject")?),
        Subject::Account => format!("account {}", AccountId(id(row)?)),
        Subject::Payment => format!("payment {}", PaymentId(id(row)?)),
        Subject::LedgerEntry => format!("ledger entry {}", LedgerEntryId(id(row)?)),
    })
}

/// Connects to the database at `url` (without migrating it) and runs every check: the
/// audit for tools outside the server, such as loadgen's `--verify-database-url`.
pub async fn audit_database(url: &str) -> Result<Vec<Violation>, DbErr> {
    let connection = sea_orm::Database::connect(url).await?;
    let violations = find_violations(&connection).await;
    connection.close().await.ok();
    violations
}

/// Every violated invariant; empty when the ledger is sound.
pub async fn find_violations(connection: &impl ConnectionTrait) -> Result<Vec<Violation>, DbErr> {
    let backend = connection.get_database_backend();
    let mut violations = Vec::new();
    for (invariant, subject, sql) in checks() {
        let rows = connection
            .query_all_raw(Statement::from_string(backend, sql))
            .await?;
        for row in rows {
            violations.push(Violation {
                invariant,
                detail: format!(
                    "{}: {}",
                    describe(subject, &row)?,
                    row.try_get::<String>("", "detail")?
                ),
            });
        }
    }
    Ok(violations)
}

/// Checks a log of acknowledged payments ("<key>\t<payment id>" per line) against the
/// database: every acknowledged key must have exactly the payment it was acknowledged
/// with. The unique key on (client, key) makes "exactly" hold; this finds a missing or
/// different payment.
pub async fn check_acknowledged(
    connection: &impl ConnectionTrait,
    log: &str,
) -> Result<Vec<Violation>, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    use crate::entity::payment;

    const CHUNK: usize = 500;
    const INVARIANT: &str = "every acknowledged key has exactly its payment";
    let mut violations = Vec::new();
    let mut acknowledged = Vec::new();
    for (number, line) in log
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
    {
        match line
            .split_once('\t')
            .map(|(key, id)| (key, PaymentId::parse(id.trim())))
        {
            Some((key, Ok(id))) => acknowledged.push((key.to_owned(), id)),
            _ => violations.push(Violation {
                invariant: INVARIANT,
                detail: format!("line {} is not \"<key>\\t<payment id>\"", number + 1),
            }),
        }
    }
    for chunk in acknowledged.chunks(CHUNK) {
        let rows = payment::Entity::find()
            .filter(payment::Column::Id.is_in(chunk.iter().map(|(_, id)| id.0)))
            .all(connection)
            .await?;
        for (key, id) in chunk {
            match rows.iter().find(|row| row.id == id.0) {
                Some(row) if &row.idempotency_key == key => {}
                Some(row) => violations.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "payment {id} was acknowledged for key {key:?} but has key {:?}",
                        row.idempotency_key
                    ),
                }),
                None => violations.push(Violation {
                    invariant: INVARIANT,
                    detail: format!("payment {id}, acknowledged for key {key:?}, does not exist"),
                }),
            }
        }
    }
    Ok(violations)
}
