//! Test upstreams on loopback: echo servers that can announce a name,
//! count connections, and stop when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// What a backend does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Echo every byte back.
    Echo,
    /// Write `<name>\n` at once (server speaks first), then echo.
    Greet,
    /// Read to EOF, then answer `got <n> bytes` and close.
    CountThenReply,
    /// Read a little, then reset the connection.
    Reset,
}

/// A running backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Start on 127.0.0.1 with an ephemeral port.
    pub async fn start(name: &str, mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(listener, name, mode)
    }

    /// Start on `addr` (e.g. another loopback address with a given port).
    pub async fn start_on(addr: SocketAddr, name: &str, mode: Mode) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        Self::serve(listener, name, mode)
    }

    fn serve(listener: TcpListener, name: &str, mode: Mode) -> Backend {
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_one(s, name.clone(), mode));
            }
        });
        Backend {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve_one(mut s: TcpStream, name: String, mode: Mode) {
    let mut buf = vec![0u8; 64 * 1024];
    match mode {
        Mode::Greet => {
            if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                return;
            }
        }
        Mode::CountThenReply => {
            let mut n = 0usize;
            while let Ok(k) = s.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                n += k;
            }
            let _ = s.write_all(format!("got {n} bytes").as_bytes()).await;
            return;
        }
        Mode::Reset => {
            let _ = s.read(&mut buf).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            return;
        }
        Mode::Echo => {}
    }
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP port on loopback where connects hang (the accept queue is full and
/// never drained), for connect-timeout tests.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        sock.listen(0).expect("listen");
        let listener: std::net::TcpListener = sock.into();
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        // Fill the queue: once full, further SYNs are dropped and connects hang.
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        BlackHole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// Connect to `to` from the loopback address `from` (for remote_addr tests).
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from}:0").parse().expect("from"))
        .expect("bind source");
    tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Read one `\n`-terminated line (without the newline), bounded in time.
pub async fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("read timed out")
            .expect("read");
        if n == 0 || b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when the proxy closed the connection without sending anything.
pub async fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("connection neither closed nor answered within 5s"),
    }
}

/// Send `msg` and read the same number of bytes back.
pub async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write");
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .expect("echo");
    got
}
