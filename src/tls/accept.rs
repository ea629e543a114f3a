//! The server side of TLS on the data path: termination on `tls: true`
//! listeners and SNI peeking on `tls_passthrough` listeners.
//!
//! Termination reads the ClientHello first (rustls `LazyConfigAcceptor`), so
//! the SNI selects the SSL object's configuration (certificate, CA policy,
//! TLS versions) and later the route, from the one snapshot the connection
//! holds. Every step has a deadline; a failed handshake closes that
//! connection only.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_rustls::{server, LazyConfigAcceptor};

use super::clienthello::{self, Hello};
use super::{normalize_sni, TlsCerts};

/// The first peek of a passthrough connection: one full TLS record, which
/// holds the whole ClientHello of every common client.
const FIRST_PEEK: usize = 5 + 16 * 1024;

/// Deadline for a client's TLS handshake (and for a passthrough ClientHello).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where [`terminate`] finds the server configuration for an SNI: the
/// compiled SSL objects, or a snapshot holding them.
pub trait CertSource {
    /// The compiled SSL objects.
    fn certs(&self) -> &TlsCerts;
}

impl CertSource for TlsCerts {
    fn certs(&self) -> &TlsCerts {
        self
    }
}

impl<T: CertSource + ?Sized> CertSource for Arc<T> {
    fn certs(&self) -> &TlsCerts {
        (**self).certs()
    }
}

/// Terminate TLS: the certificate is chosen by SNI (or `fallback_sni` when
/// the client sent none). Returns the stream and the SNI used.
pub async fn terminate(
    stream: TcpStream,
    snapshot: &(impl CertSource + ?Sized),
    fallback_sni: Option<&str>,
) -> Result<(server::TlsStream<TcpStream>, String), String> {
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| format!("bad TLS ClientHello: {e}"))?;
        let sni = start
            .client_hello()
            .server_name()
            .map(normalize_sni)
            .or_else(|| fallback_sni.map(normalize_sni))
            .ok_or_else(|| "failed to find SNI".to_string())?;
        let config = snapshot
            .certs()
            .lookup(&sni)
            .ok_or_else(|| format!("failed to match any SSL certificate by SNI: {sni}"))?
            .clone();
        let tls = start
            .into_stream(config)
            .await
            .map_err(|e| format!("TLS handshake failed (sni {sni}): {e}"))?;
        if let Some(p) = snapshot.certs().policy() {
            p.count(tls.get_ref().1.handshake_kind());
        }
        Ok((tls, sni))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
}

/// Peek the ClientHello of a passthrough connection and return its SNI,
/// leaving every byte in the socket for the backend.
///
/// The ClientHello may come in several records; at most
/// [`clienthello::MAX_HELLO`] bytes are peeked, the buffer growing past one
/// record only for a client that needs it. Peeked bytes stay in the socket,
/// so its readiness stays set: a peek that shows nothing new clears
/// readiness and waits for the next event (more bytes or the peer's FIN)
/// rather than polling, and a peer that closed inside its ClientHello ends
/// the wait at once.
pub async fn peek_sni(stream: &TcpStream) -> Result<Option<String>, String> {
    let peek = async {
        let mut buf = vec![0u8; FIRST_PEEK];
        let mut seen = 0;
        loop {
            let ready = stream
                .ready(Interest::READABLE)
                .await
                .map_err(|e| format!("cannot read ClientHello: {e}"))?;
            let peeked = stream.try_io(Interest::READABLE, || {
                let (n, _) = rustix::net::recv(stream, &mut buf[..], rustix::net::RecvFlags::PEEK)?;
                if n > 0 && n == seen && !ready.is_read_closed() {
                    // Nothing new yet: clear readiness, wait for more.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let n = match peeked {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(format!("cannot read ClientHello: {e}")),
            };
            if n == 0 {
                return Err("connection closed before the ClientHello".to_string());
            }
            match clienthello::parse(&buf[..n]) {
                Hello::Done(sni) => return Ok(sni),
                Hello::Invalid(why) => return Err(why.to_string()),
                Hello::NeedMore if n == buf.len() && n < clienthello::MAX_HELLO => {
                    // The buffer is full: look further on the next round.
                    buf.resize(clienthello::MAX_HELLO, 0);
                    seen = 0;
                }
                Hello::NeedMore if n == buf.len() => {
                    return Err("ClientHello larger than the peek limit".to_string())
                }
                // Nothing new although the peer has closed: no more will come.
                Hello::NeedMore if n == seen => {
                    return Err("connection closed inside the ClientHello".to_string())
                }
                Hello::NeedMore => seen = n,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, peek)
        .await
        .map_err(|_| "no complete ClientHello in time".to_string())?
}
