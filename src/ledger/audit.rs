//! Re-checks the invariants of the ledger from its stored rows alone.
//!
//! Used by tests after concurrent runs and by `payments-ledger verify`. Each check is
//! one SQL statement that returns only offending rows, so a healthy ledger of any size
//! costs a few scans and returns nothing.

use std::fmt;

use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement};
use uuid::Uuid;

use crate::ids::{AccountId, LedgerEntryId, PaymentGroupId, PaymentId};

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

/// What payment `p` posted: its amount if stored POSTED, its captured amount if it is a
/// captured hold, NULL otherwise.
const POSTED_AMOUNT: &str = "CASE p.status WHEN 'POSTED' THEN p.amount_minor \
     WHEN 'PENDING' THEN (SELECT s.amount_minor FROM payment_settlements s \
                          WHERE s.payment_id = p.id AND s.kind = 'CAPTURE') END";

/// Stands for the audit's "now" in a check; bound as a parameter when it runs.
const NOW: &str = ":now";

/// What the `subject` column of a check names.
#[derive(Clone, Copy)]
enum Subject {
    Currency,
    Account,
    Payment,
    LedgerEntry,
    PaymentGroup,
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
            "an account's entries never go back in time",
            Subject::LedgerEntry,
            "SELECT id AS subject, 'created ' || CAST(created_at AS TEXT) \
             || ' before the entry ahead of it, created ' || CAST(created_before AS TEXT) AS detail FROM ( \
               SELECT e.id, e.created_at, \
               LAG(e.created_at) OVER (PARTITION BY e.account_id ORDER BY e.account_version) AS created_before \
               FROM ledger_entries e) chained \
             WHERE created_at < created_before"
                .to_owned(),
        ),
        (
            "a CLOSED account holds nothing",
            Subject::Account,
            "SELECT id AS subject, 'CLOSED with balance ' || CAST(balance_minor AS TEXT) \
             || ' and ' || CAST(pending_minor AS TEXT) || ' pending' AS detail \
             FROM accounts WHERE status = 'CLOSED' AND (balance_minor <> 0 OR pending_minor <> 0)"
                .to_owned(),
        ),
        (
            "an account's settings are what its last recorded change made them",
            Subject::Account,
            "SELECT a.id AS subject, 'status ' || a.status || ' after ' || CAST(a.change_seq AS TEXT) \
             || ' changes, ' || CAST((SELECT COUNT(*) FROM account_changes c WHERE c.account_id = a.id) AS TEXT) \
             || ' recorded' AS detail \
             FROM accounts a \
             WHERE a.change_seq <> (SELECT COUNT(*) FROM account_changes c WHERE c.account_id = a.id) \
             OR (a.change_seq = 0 AND a.status <> 'ACTIVE') \
             OR (a.change_seq > 0 AND NOT EXISTS (SELECT 1 FROM account_changes c \
                 WHERE c.account_id = a.id AND c.change_seq = a.change_seq AND c.client_id = a.client_id \
                 AND c.new_status = a.status \
                 AND (c.new_credit_limit_minor = a.credit_limit_minor \
                      OR (c.new_credit_limit_minor IS NULL AND a.credit_limit_minor IS NULL)) \
                 AND (c.new_external_ref = a.external_ref \
                      OR (c.new_external_ref IS NULL AND a.external_ref IS NULL))))"
                .to_owned(),
        ),
        (
            "a metadata pair belongs to a payment of its client that has metadata",
            Subject::Payment,
            "SELECT m.payment_id AS subject, 'pair ' || m.key || ' of a payment ' \
             || CASE WHEN p.id IS NULL THEN 'that does not exist' \
                     WHEN p.metadata IS NULL THEN 'without metadata' \
                     ELSE 'of another client' END AS detail \
             FROM payment_metadata m LEFT JOIN payments p ON p.id = m.payment_id \
             WHERE p.id IS NULL OR p.metadata IS NULL OR p.client_id <> m.client_id"
                .to_owned(),
        ),
        (
            "no account breaks its balance rule, with pending held",
            Subject::Account,
            "SELECT id AS subject, balance_rule || ' account has balance ' \
             || CAST(balance_minor AS TEXT) || ' with ' || CAST(pending_minor AS TEXT) \
             || ' pending' AS detail FROM accounts \
             WHERE pending_minor < 0 \
             OR (balance_rule = 'NON_NEGATIVE' AND balance_minor - pending_minor < 0) \
             OR (balance_rule = 'CREDIT_LIMIT' AND balance_minor - pending_minor < -credit_limit_minor)"
                .to_owned(),
        ),
        (
            "a payment that posted has one debit and one credit of what it posted; any other none",
            Subject::Payment,
            format!(
                "SELECT p.id AS subject, p.status || ' payment has ' \
                 || CAST(COUNT(e.id) AS TEXT) || ' matching of ' \
                 || CAST((SELECT COUNT(*) FROM ledger_entries a WHERE a.payment_id = p.id) AS TEXT) \
                 || ' entries' AS detail \
                 FROM payments p LEFT JOIN ledger_entries e ON e.payment_id = p.id \
                 AND e.amount_minor = ({POSTED_AMOUNT}) \
                 AND e.currency = p.currency AND e.client_id = p.client_id AND ( \
                   (e.direction = 'DEBIT' AND e.account_id = p.from_account_id) \
                   OR (e.direction = 'CREDIT' AND e.account_id = p.to_account_id)) \
                 GROUP BY p.id, p.status \
                 HAVING COUNT(e.id) <> CASE WHEN ({POSTED_AMOUNT}) IS NULL THEN 0 ELSE 2 END \
                 OR (SELECT COUNT(*) FROM ledger_entries a WHERE a.payment_id = p.id) <> COUNT(e.id)"
            ),
        ),
        (
            // On PostgreSQL the double-entry guard checks this, not a foreign key.
            "an entry is on an account and of a payment that exist",
            Subject::LedgerEntry,
            "SELECT e.id AS subject, CASE WHEN a.id IS NULL THEN 'its account does not exist' \
             ELSE 'its payment does not exist' END AS detail \
             FROM ledger_entries e LEFT JOIN accounts a ON a.id = e.account_id \
             LEFT JOIN payments p ON p.id = e.payment_id \
             WHERE a.id IS NULL OR p.id IS NULL"
                .to_owned(),
        ),
        (
            "a payment's entries sit at its place in the feeds (one transaction wrote them)",
            Subject::LedgerEntry,
            "SELECT e.id AS subject, 'entry feed_seq ' || CAST(e.feed_seq AS TEXT) \
             || ', its payment''s ' || CAST(p.feed_seq AS TEXT) AS detail \
             FROM ledger_entries e JOIN payments p ON p.id = e.payment_id \
             WHERE p.status = 'POSTED' AND e.feed_seq <> p.feed_seq"
                .to_owned(),
        ),
        (
            "a hold is settled at most once, by a settlement of its client within its amount",
            Subject::Payment,
            "SELECT p.id AS subject, CAST(COUNT(s.id) AS TEXT) || ' settlements of a ' \
             || p.status || ' payment' AS detail \
             FROM payment_settlements s JOIN payments p ON p.id = s.payment_id \
             GROUP BY p.id, p.status, p.client_id, p.amount_minor \
             HAVING COUNT(s.id) > 1 OR p.status <> 'PENDING' \
             OR SUM(CASE WHEN s.client_id <> p.client_id OR s.amount_minor > p.amount_minor \
                         THEN 1 ELSE 0 END) > 0"
                .to_owned(),
        ),
        (
            "an account's pending is the sum of its live holds",
            Subject::Account,
            "SELECT a.id AS subject, 'pending ' || CAST(a.pending_minor AS TEXT) \
             || ', live holds ' || CAST(COALESCE(SUM(h.amount_minor), 0) AS TEXT) AS detail \
             FROM accounts a LEFT JOIN live_holds h ON h.account_id = a.id \
             GROUP BY a.id, a.pending_minor \
             HAVING a.pending_minor <> COALESCE(SUM(h.amount_minor), 0)"
                .to_owned(),
        ),
        (
            "a live hold is an unsettled PENDING payment's, as it was placed",
            Subject::Payment,
            "SELECT h.payment_id AS subject, 'a live hold that does not match its payment' AS detail \
             FROM live_holds h LEFT JOIN payments p ON p.id = h.payment_id \
             WHERE p.id IS NULL OR p.status <> 'PENDING' OR p.from_account_id <> h.account_id \
             OR p.amount_minor <> h.amount_minor OR p.hold_expires_at <> h.expires_at \
             OR p.client_id <> h.client_id \
             OR (SELECT COUNT(*) FROM payment_settlements s WHERE s.payment_id = p.id) > 0"
                .to_owned(),
        ),
        (
            "an unsettled hold that has not expired is live",
            Subject::Payment,
            format!(
                "SELECT p.id AS subject, 'a PENDING payment neither settled, expired nor held' AS detail \
                 FROM payments p \
                 WHERE p.status = 'PENDING' AND p.hold_expires_at > {NOW} \
                 AND (SELECT COUNT(*) FROM payment_settlements s WHERE s.payment_id = p.id) = 0 \
                 AND (SELECT COUNT(*) FROM live_holds h WHERE h.payment_id = p.id) = 0"
            ),
        ),
        (
            "a refund gives back part of what its payment posted, the other way",
            Subject::Payment,
            format!(
                "SELECT p.id AS subject, 'refunds posted ' \
                 || CAST((SELECT COALESCE(SUM(r.amount_minor), 0) FROM payments r \
                          WHERE r.refund_of = p.id AND r.status = 'POSTED') AS TEXT) \
                 || ' of ' || CAST(COALESCE(({POSTED_AMOUNT}), 0) AS TEXT) AS detail \
                 FROM payments p \
                 WHERE p.id IN (SELECT refund_of FROM payments WHERE refund_of IS NOT NULL) \
                 AND (p.refund_of IS NOT NULL \
                   OR (SELECT COALESCE(SUM(r.amount_minor), 0) FROM payments r \
                       WHERE r.refund_of = p.id AND r.status = 'POSTED') > COALESCE(({POSTED_AMOUNT}), 0) \
                   OR (SELECT COUNT(*) FROM payments r WHERE r.refund_of = p.id \
                       AND (r.from_account_id <> p.to_account_id OR r.to_account_id <> p.from_account_id \
                            OR r.currency <> p.currency OR r.client_id <> p.client_id)) > 0)"
            ),
        ),
        (
            "each settlement is the recorded effect of its idempotency key",
            Subject::Payment,
            "SELECT s.payment_id AS subject, 'a settlement without its idempotency key' AS detail \
             FROM payment_settlements s LEFT JOIN idempotency_keys k \
             ON k.client_id = s.client_id AND k.resource_id = s.id \
             WHERE k.resource_id IS NULL"
                .to_owned(),
        ),
        (
            "each (client, idempotency key) produced at most one effect",
            Subject::Payment,
            "SELECT p.id AS subject, 'payment is not the recorded effect of its idempotency key' AS detail \
             FROM payments p LEFT JOIN idempotency_keys k \
             ON k.client_id = p.client_id AND k.idempotency_key = p.idempotency_key \
             AND k.resource_id = COALESCE(p.group_id, p.id) \
             WHERE k.resource_id IS NULL"
                .to_owned(),
        ),
        (
            "each (client, idempotency key) produced at most one effect",
            Subject::PaymentGroup,
            "SELECT g.id AS subject, 'group is not the recorded effect of its idempotency key' AS detail \
             FROM payment_groups g LEFT JOIN idempotency_keys k \
             ON k.client_id = g.client_id AND k.idempotency_key = g.idempotency_key AND k.resource_id = g.id \
             WHERE k.resource_id IS NULL"
                .to_owned(),
        ),
        (
            "a group's payments are all there, in order, and all declined or none",
            Subject::PaymentGroup,
            "SELECT g.id AS subject, CAST(COUNT(p.id) AS TEXT) || ' of ' || CAST(g.payment_count AS TEXT) \
             || ' payments, ' || CAST(SUM(CASE WHEN p.status = 'DECLINED' THEN 1 ELSE 0 END) AS TEXT) \
             || ' declined, ' || CAST(SUM(CASE WHEN p.decline_reason <> 'LINKED_PAYMENT_FAILED' THEN 1 ELSE 0 END) AS TEXT) \
             || ' for their own reason' AS detail \
             FROM payment_groups g LEFT JOIN payments p ON p.group_id = g.id \
             GROUP BY g.id, g.payment_count \
             HAVING COUNT(p.id) <> g.payment_count \
             OR COUNT(DISTINCT p.group_index) <> g.payment_count \
             OR MIN(p.group_index) <> 0 OR MAX(p.group_index) <> g.payment_count - 1 \
             OR SUM(CASE WHEN p.client_id <> g.client_id OR p.idempotency_key <> g.idempotency_key \
                         THEN 1 ELSE 0 END) > 0 \
             OR SUM(CASE WHEN p.status = 'DECLINED' THEN 1 ELSE 0 END) NOT IN (0, g.payment_count) \
             OR (SUM(CASE WHEN p.status = 'DECLINED' THEN 1 ELSE 0 END) = g.payment_count \
                 AND SUM(CASE WHEN p.decline_reason <> 'LINKED_PAYMENT_FAILED' THEN 1 ELSE 0 END) <> 1)"
                .to_owned(),
        ),
        (
            "a payment of a group names a group of its client",
            Subject::Payment,
            "SELECT p.id AS subject, 'payment names a group that does not exist or is another client''s' AS detail \
             FROM payments p LEFT JOIN payment_groups g ON g.id = p.group_id \
             WHERE p.group_id IS NOT NULL AND (g.id IS NULL OR g.client_id <> p.client_id)"
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
        Subject::PaymentGroup => format!("payment group {}", PaymentGroupId(id(row)?)),
    })
}

/// Connects to the database at `url` (without migrating it) and runs every check: the
/// audit for tools outside the server, such as loadgen's `--verify-database-url`.
pub async fn audit_database(url: &str) -> Result<Vec<Violation>, DbErr> {
    // The server's own way in, so a multi-host URL works here too.
    let config = crate::config::DatabaseConfig {
        url: url.to_owned(),
        ..Default::default()
    };
    let connection = crate::db::connect(
        &config,
        2,
        &crate::metrics::Metrics::new(),
        crate::db::PoolRole::Reads,
    )
    .await
    .map_err(|error| DbErr::Custom(format!("{error:#}")))?;
    let violations = find_violations(&connection).await;
    connection.close().await.ok();
    violations
}

/// Every violated invariant; empty when the ledger is sound.
pub async fn find_violations(connection: &impl ConnectionTrait) -> Result<Vec<Violation>, DbErr> {
    let backend = connection.get_database_backend();
    let placeholder = match backend {
        sea_orm::DbBackend::Postgres => "$1",
        _ => "?",
    };
    let mut violations = Vec::new();
    for (invariant, subject, sql) in checks() {
        let statement = if sql.contains(NOW) {
            Statement::from_sql_and_values(
                backend,
                sql.replace(NOW, placeholder),
                [crate::entity::stored_now().into()],
            )
        } else {
            Statement::from_string(backend, sql)
        };
        let rows = connection.query_all_raw(statement).await?;
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
