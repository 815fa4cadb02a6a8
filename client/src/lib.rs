//! A small GraphQL-over-HTTP client for the payments ledger: the one place outside the
//! server where its mutations are written down. The integration tests, the read
//! benchmark and `loadgen` all speak to a server through it.

use serde_json::{Value, json};

/// `createPayment`. With `$details: false` the answer carries only what a load
/// generator checks (`replayed`, the payment's id and status), which keeps responses
/// small under load; by default it carries the amounts and both entries too.
/// `createPaymentBatch`: each payment's own result, in order (ids and statuses only).
pub const CREATE_PAYMENT_BATCH: &str =
    "mutation CreatePaymentBatch($input: CreatePaymentBatchInput!) {
  createPaymentBatch(input: $input) {
    results { replayed payment { id status } error { code message } }
  }
}";

pub const CREATE_PAYMENT: &str =
    "mutation CreatePayment($input: CreatePaymentInput!, $details: Boolean! = true) {
  createPayment(input: $input) {
    replayed
    payment {
      id status
      ... @include(if: $details) {
        declineReason amount currency
        entries { direction amount balanceAfter accountVersion account { id } }
      }
    }
  }
}";

/// `createAccount`, answering the new (or replayed) account's id.
pub const CREATE_ACCOUNT: &str = "mutation CreateAccount($input: CreateAccountInput!) {
  createAccount(input: $input) { replayed account { id } }
}";

/// A payment to send: the fields of `CreatePaymentInput`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentInput {
    pub idempotency_key: String,
    pub from_account_id: String,
    pub to_account_id: String,
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
    /// A hold instead of a payment.
    pub pending: bool,
    /// RFC 3339; only with `pending`.
    pub hold_expires_at: Option<String>,
}

impl PaymentInput {
    pub fn new(key: &str, from: &str, to: &str, amount: &str, currency: &str) -> Self {
        Self {
            idempotency_key: key.to_owned(),
            from_account_id: from.to_owned(),
            to_account_id: to.to_owned(),
            amount: amount.to_owned(),
            currency: currency.to_owned(),
            description: None,
            pending: false,
            hold_expires_at: None,
        }
    }

    /// The variables of `CREATE_PAYMENT`. The hold fields go only with holds, so a
    /// plain payment is understood by servers from before holds existed too (the
    /// benchmarks run a baseline build).
    pub fn variables(&self, details: bool) -> Value {
        let mut input = json!({
            "idempotencyKey": self.idempotency_key,
            "fromAccountId": self.from_account_id,
            "toAccountId": self.to_account_id,
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
        });
        if self.pending {
            input["pending"] = json!(true);
            input["holdExpiresAt"] = json!(self.hold_expires_at);
        }
        json!({ "details": details, "input": input })
    }
}

/// What a transition does to an earlier payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    Capture,
    Void,
    Refund,
}

impl TransitionKind {
    /// The mutation's field name.
    pub fn mutation(self) -> &'static str {
        match self {
            Self::Capture => "capturePayment",
            Self::Void => "voidPayment",
            Self::Refund => "refundPayment",
        }
    }

    fn input_type(self) -> &'static str {
        match self {
            Self::Capture => "CapturePaymentInput",
            Self::Void => "VoidPaymentInput",
            Self::Refund => "RefundPaymentInput",
        }
    }
}

/// `capturePayment`, `voidPayment` or `refundPayment` on `payment_id`; `amount` for
/// captures and refunds (all when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionInput {
    pub kind: TransitionKind,
    pub idempotency_key: String,
    pub payment_id: String,
    pub amount: Option<String>,
}

impl TransitionInput {
    pub fn query(&self) -> String {
        format!(
            "mutation($input: {}!) {{ {}(input: $input) {{ replayed payment {{ id status amount postedAmount }} }} }}",
            self.kind.input_type(),
            self.kind.mutation()
        )
    }

    pub fn variables(&self) -> Value {
        let mut input = json!({
            "idempotencyKey": self.idempotency_key,
            "paymentId": self.payment_id,
        });
        if self.kind != TransitionKind::Void {
            input["amount"] = json!(self.amount);
        }
        json!({ "input": input })
    }
}

/// An account to create: the fields of `CreateAccountInput`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInput {
    pub idempotency_key: String,
    pub currency: String,
    pub balance_rule: String,
    pub credit_limit: Option<String>,
    pub external_ref: Option<String>,
}

impl AccountInput {
    pub fn new(key: &str, currency: &str, balance_rule: &str) -> Self {
        Self {
            idempotency_key: key.to_owned(),
            currency: currency.to_owned(),
            balance_rule: balance_rule.to_owned(),
            credit_limit: None,
            external_ref: None,
        }
    }

    pub fn variables(&self) -> Value {
        json!({ "input": {
            "idempotencyKey": self.idempotency_key,
            "currency": self.currency,
            "balanceRule": self.balance_rule,
            "creditLimit": self.credit_limit,
            "externalRef": self.external_ref,
        }})
    }
}

/// One server (its base URL, e.g. `http://127.0.0.1:8080`) and one API key, over a
/// pooled HTTP client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl LedgerClient {
    pub fn new(base_url: &str, api_key: Option<&str>) -> Self {
        Self::with_http(reqwest::Client::new(), base_url, api_key)
    }

    /// Over a caller-built HTTP client (pool sizes, timeouts).
    pub fn with_http(http: reqwest::Client, base_url: &str, api_key: Option<&str>) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.map(str::to_owned),
        }
    }

    /// The same key against another instance, sharing the connection pool.
    pub fn at(&self, base_url: &str) -> Self {
        Self::with_http(self.http.clone(), base_url, self.api_key.as_deref())
    }

    /// The same server as another client, or anonymously with `None`.
    pub fn with_key(&self, api_key: Option<&str>) -> Self {
        Self::with_http(self.http.clone(), &self.base_url, api_key)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs one operation to `/graphql` and returns the whole JSON response, errors
    /// included: a GraphQL error is an answer, only transport failures are `Err`.
    pub async fn graphql(&self, query: &str, variables: Value) -> Result<Value, reqwest::Error> {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.base_url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(api_key) = &self.api_key {
            request = request.bearer_auth(api_key);
        }
        request.send().await?.json().await
    }

    /// Sends `createPayment`; see `CREATE_PAYMENT` for what `details` selects.
    pub async fn create_payment(
        &self,
        payment: &PaymentInput,
        details: bool,
    ) -> Result<Value, reqwest::Error> {
        self.graphql(CREATE_PAYMENT, payment.variables(details))
            .await
    }

    /// Sends independent payments in one `createPaymentBatch`.
    pub async fn create_payment_batch(
        &self,
        payments: &[PaymentInput],
    ) -> Result<Value, reqwest::Error> {
        let inputs: Vec<Value> = payments
            .iter()
            .map(|payment| payment.variables(false)["input"].take())
            .collect();
        self.graphql(
            CREATE_PAYMENT_BATCH,
            json!({ "input": { "payments": inputs } }),
        )
        .await
    }

    /// Sends a capture, void or refund.
    pub async fn transition(&self, transition: &TransitionInput) -> Result<Value, reqwest::Error> {
        self.graphql(&transition.query(), transition.variables())
            .await
    }

    pub async fn create_account(&self, account: &AccountInput) -> Result<Value, reqwest::Error> {
        self.graphql(CREATE_ACCOUNT, account.variables()).await
    }
}

/// `extensions.code` of a response's first error, if any.
pub fn error_code(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["code"].as_str()
}

/// The payment of a `createPayment` answer.
pub fn payment_of(response: &Value) -> &Value {
    &response["data"]["createPayment"]["payment"]
}

/// The account id of a `createAccount` answer.
pub fn account_id_of(response: &Value) -> Option<&str> {
    response["data"]["createAccount"]["account"]["id"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_carry_every_input_field() {
        let mut payment = PaymentInput::new("k", "acc_a", "acc_b", "1.00", "USD");
        payment.description = Some("rent".to_owned());
        assert_eq!(
            payment.variables(false),
            json!({ "details": false, "input": {
                "idempotencyKey": "k", "fromAccountId": "acc_a", "toAccountId": "acc_b",
                "amount": "1.00", "currency": "USD", "description": "rent",
            }})
        );
        payment.pending = true;
        assert_eq!(payment.variables(false)["input"]["pending"], true);
        assert_eq!(
            payment.variables(false)["input"]["holdExpiresAt"],
            Value::Null
        );
        let account = AccountInput::new("k", "EUR", "NON_NEGATIVE");
        assert_eq!(account.variables()["input"]["creditLimit"], Value::Null);
        assert_eq!(account.variables()["input"]["balanceRule"], "NON_NEGATIVE");
    }

    #[test]
    fn base_urls_lose_their_trailing_slash() {
        assert_eq!(
            LedgerClient::new("http://127.0.0.1:8080/", None).base_url(),
            "http://127.0.0.1:8080"
        );
    }
}
