//! The server can run as a PostgreSQL role that cannot switch the ledger's guards off:
//! the tables belong to an owner role that ran the migrations, and the server's role,
//! granted by `payments-ledger grant-app-role`, can pay but not disable a trigger,
//! change an account's identity or skip the guards (docs/operations.md, "Database
//! roles").

use ledger_client::{LedgerClient, PaymentInput};
use payments_ledger::config::Migrations;
use payments_ledger::{Application, Config, auth};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use uuid::Uuid;

use crate::helpers::{TestDatabase, account_pair, assert_pays, run_as_admin};

/// Two login roles of this test's own, dropped (after its database) when it ends.
struct Roles {
    admin_url: String,
    owner: String,
    app: String,
}

impl Roles {
    async fn create(admin_url: &str) -> Self {
        let suffix = Uuid::new_v4().simple().to_string();
        let roles = Self {
            admin_url: admin_url.to_owned(),
            owner: format!("ledger_owner_{suffix}"),
            app: format!("ledger_app_{suffix}"),
        };
        let admin = Database::connect(admin_url).await.unwrap();
        for role in [&roles.owner, &roles.app] {
            admin
                .execute_unprepared(&format!("CREATE ROLE {role} LOGIN"))
                .await
                .unwrap();
        }
        admin.close().await.ok();
        roles
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        run_as_admin(
            &self.admin_url,
            [&self.owner, &self.app]
                .map(|role| format!("DROP ROLE IF EXISTS {role}"))
                .to_vec(),
        );
    }
}

/// `url` logging in as `role`.
fn as_role(url: &str, role: &str) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let host_start = url[scheme_end..]
        .find('@')
        .map_or(scheme_end, |at| scheme_end + at + 1);
    format!("{}{role}@{}", &url[..scheme_end], &url[host_start..])
}

async fn refused(db: &DatabaseConnection, statement: &str) -> String {
    db.execute_unprepared(statement)
        .await
        .expect_err(statement)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_runs_as_a_role_that_cannot_disable_the_guards() {
    let Some(admin_url) = crate::services::postgres_admin_url() else {
        crate::helpers::skip(crate::services::MISSING_POSTGRES);
        return;
    };
    // Declared first, dropped last: the database goes before the roles owning it.
    let roles = Roles::create(&admin_url).await;
    let database = TestDatabase::postgres_empty().await.unwrap();
    let admin = Database::connect(&database.url).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {} OWNER TO {}",
            database
                .url
                .rsplit('/')
                .next()
                .unwrap()
                .split('?')
                .next()
                .unwrap(),
            roles.owner
        ))
        .await
        .unwrap();
    admin.close().await.ok();
    let owner_url = as_role(&database.url, &roles.owner);
    let app_url = as_role(&database.url, &roles.app);

    let mut config = Config::for_database(app_url.clone());
    config.database.migrations = Migrations::Check;
    let error = Application::build(config.clone())
        .await
        .err()
        .expect("a server refuses to start while migrations are pending")
        .to_string();
    assert!(
        error.contains("cannot read") || error.contains("pending"),
        "{error}"
    );

    let owner = Database::connect(&owner_url).await.unwrap();
    payments_ledger::db::migrate(&owner).await.unwrap();
    payments_ledger::db::grant_app_role(&owner, &roles.app)
        .await
        .unwrap();
    assert!(
        payments_ledger::db::grant_app_role(&owner, "x; DROP TABLE accounts")
            .await
            .is_err(),
        "a role name is an identifier, never SQL"
    );

    let application = Application::build(config).await.expect("the server starts");
    let address = format!("http://127.0.0.1:{}", application.port());
    let app_db = application.database().clone();
    tokio::spawn(application.run_until_stopped());
    let client = auth::create_client(&app_db, "role test").await.unwrap();
    let api = LedgerClient::new(&address, Some(&client.api_key));
    let (from, to) = account_pair(&api, "EUR").await;
    assert_pays(
        &api,
        &PaymentInput::new("as-app-role", &from, &to, "9.99", "EUR"),
    )
    .await;

    for statement in [
        "ALTER TABLE accounts DISABLE TRIGGER ALL",
        "DROP TRIGGER accounts_move_with_entries ON accounts",
        "SET session_replication_role = replica",
    ] {
        let error = refused(&app_db, statement).await;
        assert!(
            error.contains("must be owner") || error.contains("permission denied"),
            "{statement}: {error}"
        );
    }
    let error = refused(&app_db, "UPDATE accounts SET currency = 'USD'").await;
    assert!(error.contains("permission denied"), "{error}");
    let error = refused(&app_db, "DELETE FROM ledger_entries").await;
    assert!(error.contains("permission denied"), "{error}");
    let error = refused(
        &app_db,
        "UPDATE accounts SET balance_minor = balance_minor + 1",
    )
    .await;
    assert!(error.contains("ledger guard"), "{error}");
    owner.close().await.ok();
}
