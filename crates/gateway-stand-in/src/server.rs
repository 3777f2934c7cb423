//! Serving: an accept loop that closes its listener while connections are to be refused
//! (and binds the same address again after), plain or TLS connections, and per
//! connection a way to drop it from a handler and to see that the client has gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::{Fault, State};

/// What a handler knows of its connection.
#[derive(Clone)]
pub(crate) struct Connection {
    /// A second handle on the socket, only to peek at it: reading nothing at all means
    /// the client closed it.
    peer: Arc<std::net::TcpStream>,
    /// Drops the connection, without an answer.
    kill: Arc<Notify>,
}

impl Connection {
    /// Completes once the client has closed the connection.
    pub async fn closed(&self) {
        let mut byte = [0u8; 1];
        loop {
            match self.peer.peek(&mut byte) {
                Ok(0) => return,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Drops the connection now, whatever is in flight on it.
    pub fn drop_it(&self) {
        self.kill.notify_one();
    }
}

/// Accepts connections until the task is dropped. While the fault is
/// [`Fault::Refuse`], nothing listens on `addr`.
pub(crate) async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<crate::tls::ServerTls>,
    state: Arc<State>,
) {
    let router = crate::handlers::router(state.clone());
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
    let mut faults = state.fault.subscribe();
    let mut listener = Some(listener);
    loop {
        let refusing = matches!(*faults.borrow_and_update(), Fault::Refuse);
        if refusing {
            listener = None;
            if faults.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(open) = listener.as_ref() else {
            match TcpListener::bind(addr).await {
                Ok(bound) => listener = Some(bound),
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "stand-in gateway: binding again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            changed = faults.changed() => if changed.is_err() { return },
            accepted = open.accept() => {
                if let Ok((stream, _)) = accepted {
                    let down = state.fault.subscribe();
                    tokio::spawn(connection(stream, acceptor.clone(), router.clone(), down));
                }
            }
        }
    }
}

/// Serves one connection until it ends, a handler drops it, or connections are to be
/// refused (a gateway that is down keeps no connection open either).
async fn connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    mut faults: tokio::sync::watch::Receiver<Fault>,
) {
    let refused = async move {
        let _ = faults.wait_for(|f| matches!(f, Fault::Refuse)).await;
    };
    tokio::select! {
        () = serve_connection(stream, tls, router) => {}
        () = refused => {}
    }
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
) {
    let Some((stream, peer)) = with_peer(stream) else {
        return;
    };
    let kill = Arc::new(Notify::new());
    let connection = Connection {
        peer: Arc::new(peer),
        kill: kill.clone(),
    };
    let service = TowerToHyperService::new(router.layer(Extension(connection)));
    let http = hyper::server::conn::http1::Builder::new();
    match tls {
        None => {
            let serving = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = serving => {}
                () = kill.notified() => {}
            }
        }
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let serving = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = serving => {}
                () = kill.notified() => {}
            }
        }
    }
}

/// The stream, and a second handle on its socket for peeking.
fn with_peer(stream: TcpStream) -> Option<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std().ok()?;
    let peer = std_stream.try_clone().ok()?;
    let stream = TcpStream::from_std(std_stream).ok()?;
    Some((stream, peer))
}
