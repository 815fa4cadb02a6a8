//! A TCP link between the server and PostgreSQL that breaks on cue, to test what the
//! server answers when its connection fails at a chosen protocol message.
//!
//! The server connects to the link's address with `sslmode=disable`, so the link can see
//! the messages it forwards. A fault is armed for the next client message that contains
//! a byte pattern (say, the simple-query message `COMMIT`) and fires once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The simple-query message a write transaction commits with (`write::commit`): `Q`, its
/// length (21), `COMMIT AND CHAIN\0`.
pub const COMMIT: &[u8] = b"Q\0\0\0\x15COMMIT AND CHAIN\0";

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Drop the connection instead of forwarding the message: it never reaches
    /// PostgreSQL.
    NeverDeliver(&'static [u8]),
    /// Forward the message, give PostgreSQL time to act on it, then drop the connection
    /// before its answer comes back.
    DropAnswerTo(&'static [u8]),
    /// Like `DropAnswerTo`, and then cut every connection and refuse new ones until
    /// `FaultyLink::heal`: the database is unreachable.
    GoDarkAfter(&'static [u8]),
}

impl Fault {
    fn pattern(self) -> &'static [u8] {
        match self {
            Self::NeverDeliver(pattern)
            | Self::DropAnswerTo(pattern)
            | Self::GoDarkAfter(pattern) => pattern,
        }
    }
}

pub struct FaultyLink {
    pub address: SocketAddr,
    state: Arc<LinkState>,
}

struct LinkState {
    armed: Mutex<Option<Fault>>,
    fired: AtomicBool,
    dark: AtomicBool,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
}

impl FaultyLink {
    /// A link to the tests' PostgreSQL server (`services`); `None` (after a SKIP line)
    /// when there is none.
    pub async fn to_test_database() -> Option<Self> {
        let Some(url) = crate::services::postgres_admin_url() else {
            crate::helpers::skip(crate::services::MISSING_POSTGRES);
            return None;
        };
        let rest = &url[url.find("://").expect("a URL") + 3..];
        let host_start = rest.find('@').map_or(0, |at| at + 1);
        let authority = rest[host_start..].split(['/', '?']).next().expect("a host");
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:5432")
        };
        let upstream = tokio::net::lookup_host(authority)
            .await
            .expect("the database host resolves")
            .next()
            .expect("an address");
        Some(Self::to(upstream).await)
    }

    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the link binds");
        let address = listener.local_addr().expect("a local address");
        let state = Arc::new(LinkState {
            armed: Mutex::new(None),
            fired: AtomicBool::new(false),
            dark: AtomicBool::new(false),
            cut: watch::channel(0).0,
        });
        let accepting = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accepting.dark.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream, Arc::clone(&accepting)));
            }
        });
        Self { address, state }
    }

    pub fn arm(&self, fault: Fault) {
        self.state.fired.store(false, Ordering::SeqCst);
        *self.state.armed.lock().unwrap() = Some(fault);
    }

    pub fn fired(&self) -> bool {
        self.state.fired.load(Ordering::SeqCst)
    }

    /// Accepts connections again after `Fault::GoDarkAfter`.
    pub fn heal(&self) {
        self.state.dark.store(false, Ordering::SeqCst);
    }
}

/// Pumps bytes both ways until either side closes, the armed fault fires on this
/// connection, or every connection is cut.
async fn forward(mut client: TcpStream, upstream: SocketAddr, state: Arc<LinkState>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut cut = state.cut.subscribe();
    let mut from_client = vec![0_u8; 64 * 1024];
    let mut from_server = vec![0_u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = cut.changed() => return,
            read = client.read(&mut from_client) => {
                let Ok(read @ 1..) = read else { return };
                let message = &from_client[..read];
                let fault = {
                    let mut armed = state.armed.lock().unwrap();
                    match *armed {
                        Some(fault) if contains(message, fault.pattern()) => armed.take(),
                        _ => None,
                    }
                };
                match fault {
                    None => {
                        if server.write_all(message).await.is_err() {
                            return;
                        }
                    }
                    Some(Fault::NeverDeliver(_)) => {
                        state.fired.store(true, Ordering::SeqCst);
                        return;
                    }
                    Some(fault @ (Fault::DropAnswerTo(_) | Fault::GoDarkAfter(_))) => {
                        let _ = server.write_all(message).await;
                        // PostgreSQL acts on the message while nobody reads its answer.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if let Fault::GoDarkAfter(_) = fault {
                            state.dark.store(true, Ordering::SeqCst);
                            state.cut.send_modify(|generation| *generation += 1);
                        }
                        state.fired.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
            read = server.read(&mut from_server) => {
                let Ok(read @ 1..) = read else { return };
                if client.write_all(&from_server[..read]).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
