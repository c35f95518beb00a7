//! A lean HTTP/1.1 client for queue long-polls (`ingest.poll_client = "http1"`, the default).
//!
//! A long-poll spends nearly all its life waiting for the server, and over HTTP/1.1 every
//! waiting poll holds a connection of its own. A general-purpose client keeps per connection a
//! read buffer, a write buffer, a request channel and a connection task while it waits (about
//! 45 KB with reqwest/hyper, measured at 10,000 tenants); this one keeps the socket alone: the
//! request is written, the buffer dropped, and nothing is allocated until the socket turns
//! readable (over TLS, rustls's own state stays, and the first read goes into a 256-byte array
//! of the future). Each poller keeps its connection between polls ([`Connection`]); one the
//! server closed, that holds stray bytes, or that sat idle too long is replaced, and a request
//! is sent a second time only when its kept connection failed within a second of the write.
//!
//! Why not hyper's own low-level client (`hyper::client::conn::http1`: a connection future the
//! poller owns, no pool): it was built with the same surface and semantics and measured beside
//! this one (2026-12-06, `xapi-load --tenants 10000 --idle 60`, two runs each on a loaded
//! 2-core machine): 50.2–51.2 KB of engine RSS per idle queue tenant against 23.1–23.5 KB here,
//! CPU 3.7–4.2 % against 3.1–3.5 % of a core. It is smaller in code (260 lines against 433, tests
//! and comments aside), but 27 KB more per tenant (≈ 275 MB at 10,000) is far beyond the 2 KB
//! that would have bought it: hyper allocates an 8 KB write buffer at the handshake and reserves
//! its read buffer before every read, also while a poll waits.
//!
//! What it reads: a status line and headers (`httparse`), then a body delimited by
//! `Content-Length`, chunked transfer coding, or the end of the connection. Nothing else is
//! asked of it: one `GET` with a bearer token, no redirects, no compression.
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest body accepted (a poll answer holds at most a few hundred messages).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Headers parsed, at most.
const MAX_HEADERS: usize = 64;
/// Read granularity once the answer has started.
const READ_CHUNK: usize = 8 * 1024;
/// A kept connection that fails this soon after the request was written was closed by the
/// server before it saw the request: the request is sent once more on a new connection. One
/// that fails later may have been taken (a poll dequeues messages), and is not resent.
const RESEND_WITHIN: Duration = Duration::from_secs(1);

/// The client: how to connect. Cheap to clone.
#[derive(Clone)]
pub struct Http1Polls {
    tls: TlsConnector,
    connect_timeout: Duration,
    /// A kept connection idle longer than this is not reused (servers close idle connections
    /// after a few seconds; a request written into one just closed is lost).
    idle_timeout: Duration,
    user_agent: &'static str,
}

/// One poller's connection between polls.
#[derive(Default)]
pub struct Connection {
    kept: Mutex<Option<Kept>>,
}

struct Kept {
    stream: Stream,
    authority: String,
    idle_since: Instant,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing of an answer arrived: connect error, reset, closed before answering.
    #[error("{0}")]
    Transport(String),
    /// An answer arrived but is not HTTP/1.1 as we read it, or it broke off.
    #[error("{0}")]
    Protocol(String),
}

impl Error {
    /// No HTTP answer at all.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport(_))
    }
}

/// An answer whose head is read; the body follows with [`Response::body`].
pub struct Response<'c> {
    status: u16,
    stream: Stream,
    authority: String,
    /// Body bytes read with the head.
    buf: Vec<u8>,
    framing: Framing,
    keep_alive: bool,
    conn: &'c Connection,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Http1Polls {
    /// A client trusting the Web PKI's roots (the roots reqwest uses too).
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        user_agent: &'static str,
    ) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(roots, connect_timeout, idle_timeout, user_agent)
    }

    /// A client trusting `roots` alone (tests).
    pub fn with_roots(
        roots: rustls::RootCertStore,
        connect_timeout: Duration,
        idle_timeout: Duration,
        user_agent: &'static str,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: TlsConnector::from(Arc::new(config)),
            connect_timeout,
            idle_timeout,
            user_agent,
        }
    }

    /// `GET url` with `Authorization: Bearer <token>` on `conn` (its kept connection when it
    /// is to the same server and fresh, else a new one). Returns once the answer's head is
    /// read; a waiting request holds no buffer. A kept connection the server had closed gets
    /// the request once more on a new one (nothing of an answer had arrived).
    pub async fn get<'c>(
        &self,
        conn: &'c Connection,
        url: &url::Url,
        token: &str,
    ) -> Result<Response<'c>, Error> {
        let authority = authority(url)?;
        let kept = conn
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|k| k.authority == authority && k.idle_since.elapsed() < self.idle_timeout);
        let kept = kept.and_then(|mut k| (!k.stream.closed_or_dirty()).then_some(k));
        if let Some(k) = kept {
            let sent = Instant::now();
            match exchange(k.stream, self.request(url, &authority, token)).await {
                Ok((stream, head)) => return finish(stream, head, authority, conn),
                // The server closed the kept connection as we wrote (it may close an idle
                // connection at any time).
                Err(Error::Transport(_)) if sent.elapsed() < RESEND_WITHIN => {}
                Err(e) => return Err(e),
            }
        }
        let stream = self.connect(url, &authority).await?;
        let (stream, head) = exchange(stream, self.request(url, &authority, token)).await?;
        finish(stream, head, authority, conn)
    }

    fn request(&self, url: &url::Url, authority: &str, token: &str) -> Vec<u8> {
        let mut target = url.path().to_owned();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        format!(
            "GET {target} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
             User-Agent: {}\r\nAccept: application/json\r\n\r\n",
            self.user_agent
        )
        .into_bytes()
    }

    async fn connect(&self, url: &url::Url, authority: &str) -> Result<Stream, Error> {
        let host = url
            .host_str()
            .ok_or_else(|| Error::Transport(format!("{url}: no host")))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let connect = async {
            let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
            tcp.set_nodelay(true)?;
            if url.scheme() != "https" {
                return Ok(Stream::Plain(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                .to_owned();
            let tls = self.tls.connect(name, tcp).await?;
            Ok::<_, io::Error>(Stream::Tls(Box::new(tls)))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Error::Transport(format!("connect to {authority}: {e}"))),
            Err(_) => Err(Error::Transport(format!(
                "connect to {authority}: timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }
}

impl Response<'_> {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Reads the body to its end; the connection is kept for the next request when the
    /// server allows it.
    pub async fn body(mut self) -> Result<Vec<u8>, Error> {
        let body = match self.framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    let want = n - self.buf.len();
                    if read_more(&mut self.stream, &mut self.buf, want).await? == 0 {
                        return Err(cut_short());
                    }
                }
                // Bytes beyond the body would be read as the next answer.
                self.keep_alive &= self.buf.len() == n;
                self.buf.truncate(n);
                std::mem::take(&mut self.buf)
            }
            Framing::Chunked => {
                let (body, clean) =
                    dechunk(&mut self.stream, std::mem::take(&mut self.buf)).await?;
                self.keep_alive &= clean;
                body
            }
            Framing::UntilClose => {
                while read_more(&mut self.stream, &mut self.buf, READ_CHUNK).await? > 0 {
                    if self.buf.len() > MAX_BODY {
                        return Err(Error::Protocol("answer body too long".into()));
                    }
                }
                self.keep_alive = false;
                std::mem::take(&mut self.buf)
            }
        };
        if self.keep_alive {
            *self
                .conn
                .kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Kept {
                stream: self.stream,
                authority: self.authority,
                idle_since: Instant::now(),
            });
        }
        Ok(body)
    }
}

struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    /// Bytes after the head (the body's start).
    rest: Vec<u8>,
}

/// Writes `request` (then drops it: it holds the token), waits for the answer holding no
/// buffer, and reads its head; 1xx answers are skipped.
async fn exchange(mut stream: Stream, request: Vec<u8>) -> Result<(Stream, Head), Error> {
    stream
        .write_all(&request)
        .await
        .map_err(|e| Error::Transport(format!("sending the request: {e}")))?;
    drop(request);
    let mut buf = Vec::new();
    let first = stream
        .first_bytes(&mut buf)
        .await
        .map_err(|e| Error::Transport(format!("waiting for the answer: {e}")))?;
    if first == 0 {
        return Err(Error::Transport(
            "connection closed before an answer".into(),
        ));
    }
    loop {
        // Parse what is there before reading more (a 1xx and the answer may come together).
        while let Some(head) = parse_head(&mut buf)? {
            if !(100..200).contains(&head.status) {
                return Ok((stream, head));
            }
            buf = head.rest;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Protocol("answer head too long".into()));
        }
        if read_more(&mut stream, &mut buf, READ_CHUNK).await? == 0 {
            return Err(cut_short());
        }
    }
}

fn finish<'c>(
    stream: Stream,
    head: Head,
    authority: String,
    conn: &'c Connection,
) -> Result<Response<'c>, Error> {
    Ok(Response {
        status: head.status,
        stream,
        authority,
        buf: head.rest,
        framing: head.framing,
        keep_alive: head.keep_alive,
        conn,
    })
}

/// The head at the start of `buf`, when complete.
fn parse_head(buf: &mut Vec<u8>) -> Result<Option<Head>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Protocol(format!("unreadable answer: {e}"))),
    };
    let status = r.code.unwrap_or(0);
    let mut keep_alive = r.version == Some(1);
    let mut length = None;
    // Transfer-Encoding present, and whether chunked is its final coding.
    let mut coded = false;
    let mut chunked = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| Error::Protocol("unreadable Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Protocol("conflicting Content-Length".into()));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && r.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 §6.3: a transfer coding wins over Content-Length (and both together make the
    // connection unfit for reuse); a coding other than chunked last runs to the close.
    if coded && length.is_some() {
        keep_alive = false;
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if coded {
        Framing::UntilClose
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(Error::Protocol(format!(
                "answer body of {n} bytes is too long"
            )));
        }
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let rest = buf.split_off(len);
    Ok(Some(Head {
        status,
        framing,
        keep_alive,
        rest,
    }))
}

/// Decodes a chunked body; `buf` holds what was read of it already. Also says whether the
/// body ended exactly where the bytes read did (else the connection is not reused).
async fn dechunk(stream: &mut Stream, mut buf: Vec<u8>) -> Result<(Vec<u8>, bool), Error> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        // A chunk-size line.
        let (consumed, size) = loop {
            match httparse::parse_chunk_size(&buf[at..]) {
                Ok(httparse::Status::Complete((c, s))) => break (c, s),
                Ok(httparse::Status::Partial) => {
                    if buf.len() - at > 1024 {
                        return Err(Error::Protocol("unreadable chunk size".into()));
                    }
                    if read_more(stream, &mut buf, READ_CHUNK).await? == 0 {
                        return Err(cut_short());
                    }
                }
                Err(_) => return Err(Error::Protocol("unreadable chunk size".into())),
            }
        };
        at += consumed;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s <= MAX_BODY - body.len())
            .ok_or_else(|| Error::Protocol("answer body too long".into()))?;
        if size == 0 {
            // Trailers (ignored) up to the empty line.
            loop {
                if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    let line_empty = i == 0;
                    at += i + 2;
                    if line_empty {
                        return Ok((body, at == buf.len()));
                    }
                } else if read_more(stream, &mut buf, READ_CHUNK).await? == 0 {
                    return Err(cut_short());
                } else if buf.len() - at > MAX_HEAD {
                    return Err(Error::Protocol("trailers too long".into()));
                }
            }
        }
        while buf.len() < at + size + 2 {
            let want = at + size + 2 - buf.len();
            if read_more(stream, &mut buf, want).await? == 0 {
                return Err(cut_short());
            }
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(Error::Protocol("chunk not followed by CRLF".into()));
        }
        at += size + 2;
        // Keep the buffer small: drop what is decoded.
        buf.drain(..at);
        at = 0;
    }
}

/// Reads up to `want` more bytes (at least 1 KB at a time) onto `buf`; 0 at the end.
async fn read_more(stream: &mut Stream, buf: &mut Vec<u8>, want: usize) -> Result<usize, Error> {
    buf.reserve(want.clamp(1024, READ_CHUNK));
    let r = match stream {
        Stream::Plain(s) => s.read_buf(buf).await,
        Stream::Tls(s) => s.read_buf(buf).await,
    };
    r.map_err(|e| Error::Protocol(format!("reading the answer: {e}")))
}

fn cut_short() -> Error {
    Error::Protocol("the answer broke off".into())
}

fn authority(url: &url::Url) -> Result<String, Error> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::Transport(format!("{url}: no host")))?;
    Ok(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

impl Stream {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    /// Waits for the answer's first bytes and puts them on `buf`; 0 when the connection
    /// closed. Over plain TCP nothing is allocated until the socket is readable; over TLS the
    /// read goes through rustls (which may hold plaintext already, or read a record without
    /// application data, such as a session ticket) into a small array of the future.
    async fn first_bytes(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut small = [0u8; 256];
        let n = match self {
            Stream::Plain(s) => loop {
                s.readable().await?;
                match s.try_read(&mut small) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Stream::Tls(s) => s.read(&mut small).await?,
        };
        buf.extend_from_slice(&small[..n]);
        Ok(n)
    }

    /// Whether a kept connection is unfit for the next request: closed by the server, or
    /// holding bytes nobody asked for (an idle-timeout 408, say). Never waits.
    fn closed_or_dirty(&mut self) -> bool {
        use futures::FutureExt;
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(s) => match s.try_read(&mut probe) {
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                Ok(_) => true,
            },
            Stream::Tls(s) => s.read(&mut probe).now_or_never().is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpListener;

    fn client() -> Http1Polls {
        Http1Polls::new(Duration::from_secs(5), Duration::from_secs(4), "test")
    }

    /// One GET, its body read.
    async fn fetch(c: &Http1Polls, conn: &Connection, url: &url::Url) -> Result<Vec<u8>, Error> {
        c.get(conn, url, "t").await?.body().await
    }

    /// Reads one request head; None at EOF.
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        Some(String::from_utf8(buf).unwrap())
    }

    /// A server answering each request on a connection with the next of `answers`; a `None`
    /// closes the connection (right after the answer before it).
    async fn serve<S, F>(
        stream: S,
        answers: Arc<Vec<Option<Vec<u8>>>>,
        next: Arc<AtomicUsize>,
        seen: F,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
        F: Fn(String),
    {
        let mut stream = stream;
        while let Some(req) = read_request(&mut stream).await {
            seen(req);
            match answers
                .get(next.fetch_add(1, Ordering::SeqCst))
                .cloned()
                .flatten()
            {
                // Take the request, hold it, then close without answering.
                Some(a) if a == HOLD => {
                    tokio::time::sleep(RESEND_WITHIN + Duration::from_millis(300)).await;
                    return;
                }
                Some(a) => {
                    // In two writes, so that the client reads across them.
                    let (x, y) = a.split_at(a.len() / 2);
                    stream.write_all(x).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    stream.write_all(y).await.unwrap();
                    stream.flush().await.unwrap();
                }
                None => return,
            }
            // A `None` next: close now, without waiting for another request.
            if answers.get(next.load(Ordering::SeqCst)) == Some(&None) {
                next.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }

    struct Server {
        url: url::Url,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn plain_server(answers: Vec<Option<&[u8]>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/queue/poll?x=1", listener.local_addr().unwrap());
        let answers: Arc<Vec<Option<Vec<u8>>>> =
            Arc::new(answers.into_iter().map(|a| a.map(<[u8]>::to_vec)).collect());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r, next) = (
            connections.clone(),
            requests.clone(),
            Arc::new(AtomicUsize::new(0)),
        );
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (answers, next, r) = (answers.clone(), next.clone(), r.clone());
                tokio::spawn(serve(s, answers, next, move |q| r.lock().unwrap().push(q)));
            }
        });
        Server {
            url: url.parse().unwrap(),
            connections,
            requests,
        }
    }

    const HOLD: &[u8] = b"HOLD";
    const JSON_LEN: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"messages\":[]}";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mes\r\na;ext=1\r\nsages\":[]}\r\n0\r\n\r\n";

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies_on_one_kept_connection() {
        let srv = plain_server(vec![
            Some(JSON_LEN),
            Some(CHUNKED),
            Some(b"HTTP/1.1 204 No Content\r\n\r\n"),
        ])
        .await;
        let (c, conn) = (client(), Connection::default());
        for _ in 0..2 {
            let r = c.get(&conn, &srv.url, "tok").await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.body().await.unwrap(), b"{\"messages\":[]}");
        }
        let r = c.get(&conn, &srv.url, "tok").await.unwrap();
        assert_eq!((r.status(), r.body().await.unwrap()), (204, vec![]));
        assert_eq!(
            srv.connections.load(Ordering::SeqCst),
            1,
            "the connection is kept"
        );
        let req = srv.requests.lock().unwrap()[0].clone();
        assert!(req.starts_with("GET /queue/poll?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nAuthorization: Bearer tok\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: {}\r\n", authority(&srv.url).unwrap())));
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_gets_the_request_again_on_a_new_one() {
        // Answer, then close the kept connection.
        let srv = plain_server(vec![Some(JSON_LEN), None, Some(JSON_LEN)]).await;
        let (c, conn) = (client(), Connection::default());
        fetch(&c, &conn, &srv.url).await.unwrap();
        let r = c.get(&conn, &srv.url, "t").await.unwrap();
        assert_eq!(r.body().await.unwrap(), b"{\"messages\":[]}");
        assert_eq!(srv.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_the_server_held_before_closing_is_not_sent_again() {
        // A poll may have dequeued messages before the connection died: no second copy.
        let srv = plain_server(vec![Some(JSON_LEN), Some(HOLD), Some(JSON_LEN)]).await;
        let (c, conn) = (client(), Connection::default());
        fetch(&c, &conn, &srv.url).await.unwrap();
        let e = c.get(&conn, &srv.url, "t").await.err().unwrap();
        assert!(e.is_transport(), "{e}");
        assert_eq!(srv.requests.lock().unwrap().len(), 2, "sent once");
        assert_eq!(srv.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_interim_answer_and_the_answer_in_one_read_are_both_parsed() {
        let srv = plain_server(vec![Some(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        )])
        .await;
        let conn = Connection::default();
        let r = client().get(&conn, &srv.url, "t").await.unwrap();
        assert_eq!((r.status(), r.body().await.unwrap()), (200, b"{}".to_vec()));
    }

    #[tokio::test]
    async fn connections_with_stray_bytes_or_ambiguous_framing_are_not_kept() {
        for answer in [
            // Bytes beyond the Content-Length.
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}XYZ"[..],
            // Bytes after the last chunk.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nXYZ",
            // Both framings (the transfer coding wins, and the connection is not reused).
            b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ] {
            let srv = plain_server(vec![Some(answer), Some(JSON_LEN)]).await;
            let (c, conn) = (client(), Connection::default());
            let body = fetch(&c, &conn, &srv.url).await.unwrap();
            assert_eq!(body, b"{}", "{}", String::from_utf8_lossy(answer));
            assert!(conn.kept.lock().unwrap().is_none(), "{}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test]
    async fn connection_close_and_unframed_bodies_are_not_kept() {
        let srv = plain_server(vec![
            Some(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"),
            Some(JSON_LEN),
        ])
        .await;
        let (c, conn) = (client(), Connection::default());
        fetch(&c, &conn, &srv.url).await.unwrap();
        assert!(conn.kept.lock().unwrap().is_none());
        fetch(&c, &conn, &srv.url).await.unwrap();
        assert_eq!(srv.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn broken_answers_are_errors_not_bodies() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
            // A chunk size that overflows (no panic, no wrap-around).
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\nxx",
        ] {
            let srv = plain_server(vec![Some(answer), None]).await;
            let (c, conn) = (client(), Connection::default());
            let e = fetch(&c, &conn, &srv.url)
                .await
                .expect_err(&String::from_utf8_lossy(answer));
            assert!(!e.is_transport(), "{e}: an answer arrived");
        }
        // Nothing listening: a transport error.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url: url::Url = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let e = client()
            .get(&Connection::default(), &url, "t")
            .await
            .err()
            .unwrap();
        assert!(e.is_transport(), "{e}");
    }

    #[tokio::test]
    async fn speaks_tls_to_a_server_it_trusts_and_refuses_one_it_does_not() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let c2 = connections.clone();
        tokio::spawn(async move {
            let answers = Arc::new(vec![Some(JSON_LEN.to_vec()), Some(CHUNKED.to_vec())]);
            let next = Arc::new(AtomicUsize::new(0));
            loop {
                let (s, _) = listener.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let (acceptor, answers, next) = (acceptor.clone(), answers.clone(), next.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        serve(tls, answers, next, |_| {}).await;
                    }
                });
            }
        });
        let url: url::Url = format!("https://localhost:{port}/poll").parse().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let c = Http1Polls::with_roots(roots, Duration::from_secs(5), Duration::from_secs(4), "t");
        let conn = Connection::default();
        for _ in 0..2 {
            let r = c.get(&conn, &url, "t").await.unwrap();
            assert_eq!(r.body().await.unwrap(), b"{\"messages\":[]}");
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the TLS connection is kept"
        );
        // The Web PKI does not know the test's certificate.
        let e = client()
            .get(&Connection::default(), &url, "t")
            .await
            .err()
            .unwrap();
        assert!(
            e.is_transport() && e.to_string().contains("certificate"),
            "{e}"
        );
    }
}
