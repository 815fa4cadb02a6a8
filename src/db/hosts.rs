//! libpq's multi-host connection URLs, which the PostgreSQL driver underneath does not
//! read: `postgres://user@h1:5432,h2:5433/ledger?target_session_attrs=read-write` names
//! several servers, and `target_session_attrs` which of them a session may use. The
//! server connects to the first listed host that qualifies and follows the role when it
//! moves (`follow`); this module is the pure part: the URL taken apart into one ordinary
//! URL per host, and the rule that says whether a server qualifies.

use std::fmt;

/// libpq's `target_session_attrs`: which server a session may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// The first host that answers (libpq's default).
    Any,
    /// A server whose sessions default to read-write: the primary, unless it was made
    /// read-only by `default_transaction_read_only`.
    ReadWrite,
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in recovery.
    Standby,
    /// A standby if one answers, else any server.
    PreferStandby,
}

/// What a probe learned of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    pub in_recovery: bool,
    pub read_only: bool,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, HostListError> {
        Ok(match value {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            other => return Err(HostListError::SessionAttrs(other.to_owned())),
        })
    }

    /// Whether a session may use a server in `role` on the first pass over the hosts.
    /// `PreferStandby` takes any server on a second pass (`accepts_on_second_pass`).
    pub fn accepts(self, role: ServerRole) -> bool {
        match self {
            Self::Any => true,
            Self::ReadWrite => !role.read_only,
            Self::ReadOnly => role.read_only,
            Self::Primary => !role.in_recovery,
            Self::Standby | Self::PreferStandby => role.in_recovery,
        }
    }

    pub fn accepts_on_second_pass(self) -> bool {
        self == Self::PreferStandby
    }

    /// Whether a session only writes where this names: a server picked under `Any`
    /// may be a standby, where every write fails.
    pub fn guarantees_writable(self) -> bool {
        matches!(self, Self::ReadWrite | Self::Primary)
    }
}

impl fmt::Display for SessionAttrs {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        })
    }
}

/// A PostgreSQL URL taken apart: one single-host URL per listed host, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostList {
    /// Each host's URL: the original with one host and without `target_session_attrs`.
    pub urls: Vec<String>,
    /// `host:port` of each, for logs (no credentials).
    pub labels: Vec<String>,
    pub session_attrs: SessionAttrs,
}

impl HostList {
    /// A URL used as it is (SQLite's).
    pub fn single(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
            labels: vec![String::new()],
            session_attrs: SessionAttrs::Any,
        }
    }

    /// Whether there is anything to choose or follow: more than one host, or a role
    /// the one host must have.
    pub fn needs_following(&self) -> bool {
        self.urls.len() > 1 || self.session_attrs != SessionAttrs::Any
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostListError {
    SessionAttrs(String),
    EmptyHost(String),
}

impl fmt::Display for HostListError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SessionAttrs(value) => write!(
                formatter,
                "target_session_attrs={value} is not one of any, read-write, read-only, primary, standby, prefer-standby"
            ),
            Self::EmptyHost(list) => {
                write!(formatter, "the host list {list:?} has an empty entry")
            }
        }
    }
}

impl std::error::Error for HostListError {}

/// Takes a `postgres://` or `postgresql://` URL apart. A URL with one host and no
/// `target_session_attrs` comes back as itself.
pub fn parse(url: &str) -> Result<HostList, HostListError> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let mut session_attrs = None;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|query| query.split('&')) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                session_attrs = Some(SessionAttrs::parse(value)?)
            }
            _ if pair.is_empty() => {}
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let host_entries: Vec<&str> = hosts.split(',').collect();
    if host_entries.len() > 1 && host_entries.iter().any(|host| host.is_empty()) {
        return Err(HostListError::EmptyHost(hosts.to_owned()));
    }
    let urls = host_entries
        .iter()
        .map(|host| format!("{scheme}://{userinfo}{host}{path}{query}"))
        .collect();
    let labels = host_entries
        .iter()
        .map(|host| match host {
            &"" => "(default host)".to_owned(),
            host if host.ends_with(']') || !host.contains(':') => format!("{host}:5432"),
            host => (*host).to_owned(),
        })
        .collect();
    Ok(HostList {
        urls,
        labels,
        session_attrs: session_attrs.unwrap_or(SessionAttrs::Any),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_without_attributes_is_the_url_itself() {
        let url = "postgres://ledger:secret@db:5432/ledger?sslmode=disable";
        let hosts = parse(url).unwrap();
        assert_eq!(hosts.urls, vec![url.to_owned()]);
        assert_eq!(hosts.labels, vec!["db:5432".to_owned()]);
        assert!(!hosts.needs_following());
    }

    #[test]
    fn several_hosts_become_one_url_each_in_order_without_the_attribute() {
        let hosts = parse(
            "postgresql://ledger:pw@h1:5432,h2:5433,[::1]:5434,h4/db?sslmode=disable&target_session_attrs=read-write&application_name=x",
        )
        .unwrap();
        assert_eq!(
            hosts.urls,
            vec![
                "postgresql://ledger:pw@h1:5432/db?sslmode=disable&application_name=x",
                "postgresql://ledger:pw@h2:5433/db?sslmode=disable&application_name=x",
                "postgresql://ledger:pw@[::1]:5434/db?sslmode=disable&application_name=x",
                "postgresql://ledger:pw@h4/db?sslmode=disable&application_name=x",
            ]
        );
        assert_eq!(
            hosts.labels,
            vec!["h1:5432", "h2:5433", "[::1]:5434", "h4:5432"]
        );
        assert_eq!(hosts.session_attrs, SessionAttrs::ReadWrite);
        assert!(hosts.needs_following());
    }

    #[test]
    fn a_password_with_an_at_sign_and_no_path_still_splits() {
        let hosts = parse("postgres://u:p@ss@a:1,b:2?target_session_attrs=primary").unwrap();
        assert_eq!(
            hosts.urls,
            vec!["postgres://u:p@ss@a:1", "postgres://u:p@ss@b:2"]
        );
        assert_eq!(hosts.session_attrs, SessionAttrs::Primary);
    }

    #[test]
    fn one_host_with_a_required_role_is_followed() {
        let hosts = parse("postgres://a:1/db?target_session_attrs=read-write").unwrap();
        assert_eq!(hosts.urls, vec!["postgres://a:1/db"]);
        assert!(hosts.needs_following());
    }

    #[test]
    fn bad_lists_are_refused_with_what_is_wrong() {
        assert_eq!(
            parse("postgres://a:1,b:2/db?target_session_attrs=leader"),
            Err(HostListError::SessionAttrs("leader".to_owned()))
        );
        assert!(matches!(
            parse("postgres://a:1,,b:2/db"),
            Err(HostListError::EmptyHost(_))
        ));
    }

    #[test]
    fn each_attribute_takes_the_servers_libpq_takes() {
        let primary = ServerRole {
            in_recovery: false,
            read_only: false,
        };
        let read_only_primary = ServerRole {
            in_recovery: false,
            read_only: true,
        };
        let standby = ServerRole {
            in_recovery: true,
            read_only: true,
        };
        let table = [
            (SessionAttrs::Any, [true, true, true]),
            (SessionAttrs::ReadWrite, [true, false, false]),
            (SessionAttrs::ReadOnly, [false, true, true]),
            (SessionAttrs::Primary, [true, true, false]),
            (SessionAttrs::Standby, [false, false, true]),
            (SessionAttrs::PreferStandby, [false, false, true]),
        ];
        for (attrs, expected) in table {
            let got = [primary, read_only_primary, standby].map(|role| attrs.accepts(role));
            assert_eq!(got, expected, "{attrs}");
        }
        assert!(SessionAttrs::PreferStandby.accepts_on_second_pass());
        assert!(!SessionAttrs::Standby.accepts_on_second_pass());
        assert!(SessionAttrs::ReadWrite.guarantees_writable());
        assert!(!SessionAttrs::Any.guarantees_writable());
    }
}
