//! One kept-alive connection, plain or TLS: send the request, read one whole response (its head,
//! then a Content-Length body, which is all the benchmark's servers send).
use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where the load goes and the request it sends, every time the same.
pub struct Target {
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    request: Vec<u8>,
}

impl Target {
    /// From `http[s]://host:port/path`, extra header lines, and (https) the CA's PEM file; the
    /// server must prove the name `localhost`, as the benchmark's certificate does.
    pub fn new(url: &str, headers: &[String], ca: Option<&str>) -> Result<Target, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(format!("--url {url:?} is not http:// or https://")),
        };
        let (address, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !address.contains(':') {
            return Err(format!("--url {url:?} names no port"));
        }
        let path = if path.is_empty() { "/" } else { path };
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n");
        for header in headers {
            if !header.contains(':') || header.contains(['\r', '\n']) {
                return Err(format!("--header {header:?} is not one 'Name: value' line"));
            }
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let tls = if tls {
            let ca = ca.ok_or("an https:// URL needs --ca")?;
            let pem = std::fs::read(ca).map_err(|e| format!("--ca {ca}: {e}"))?;
            let roots = bcs_shared::tls::roots_from_pem(&pem).map_err(|e| format!("--ca {ca} {e}"))?;
            let config = bcs_shared::tls::client_trusting(roots).with_no_client_auth();
            Some((TlsConnector::from(Arc::new(config)), ServerName::try_from("localhost").expect("a DNS name")))
        } else {
            None
        };
        Ok(Target { address: address.to_owned(), tls, request: request.into_bytes() })
    }

    pub async fn connect(&self) -> io::Result<Connection> {
        let tcp = TcpStream::connect(&self.address).await?;
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            Some((connector, name)) => Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?)),
            None => Stream::Plain(tcp),
        };
        Ok(Connection { stream, buf: Vec::with_capacity(16 * 1024), request: self.request.clone() })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl Connection {
    /// One request and its whole response: the connection again if it stays open, and the status.
    pub async fn exchange(mut self) -> io::Result<(Option<Connection>, u16)> {
        match &mut self.stream {
            Stream::Plain(s) => exchange(s, &self.request, &mut self.buf).await,
            Stream::Tls(s) => exchange(s.as_mut(), &self.request, &mut self.buf).await,
        }
        .map(|(status, open)| (open.then_some(self), status))
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// (status, whether the connection stays open)
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<(u16, bool)> {
    s.write_all(request).await?;
    buf.clear();
    let (status, head_len, body_len, open) = loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed before a whole response"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let mut body_len = None;
                let mut open = response.version == Some(1);
                for h in response.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        body_len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(bad("a chunked response (the benchmark's servers send Content-Length)".into()));
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        open = !h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let body_len = body_len.ok_or_else(|| bad(format!("a {status} response without Content-Length")))?;
                break (status, head_len, body_len, open);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(bad(format!("a malformed response head: {e}"))),
        }
    };
    let mut left = (head_len + body_len).saturating_sub(buf.len());
    while left > 0 {
        buf.clear();
        let n = s.read_buf(buf).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed inside a response body"));
        }
        left = left.saturating_sub(n);
    }
    Ok((status, open))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, headers: &[String], ca: Option<&str>) -> String {
        match Target::new(url, headers, ca) {
            Err(e) => e,
            Ok(_) => panic!("{url} {headers:?} was taken"),
        }
    }

    #[test]
    fn a_target_is_an_http_url_with_a_port_and_whole_header_lines() {
        let t = Target::new("http://127.0.0.1:8080/a/b", &["Authorization: Bearer x".into()], None).unwrap();
        assert_eq!(t.request, b"GET /a/b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer x\r\n\r\n");
        assert!(refused("ftp://127.0.0.1:1/", &[], None).contains("not http"));
        assert!(refused("http://127.0.0.1/", &[], None).contains("no port"));
        assert!(refused("http://h:1/", &["no colon".into()], None).contains("--header"));
        assert!(refused("http://h:1/", &["A: b\r\nC: d".into()], None).contains("--header"));
        assert!(refused("https://h:1/", &[], None).contains("--ca"));
    }

    /// A server answering the first request with a body sent in two parts, the second with
    /// `Connection: close`, then a chunked one (refused).
    #[tokio::test]
    async fn reads_whole_bodies_and_follows_connection_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(b"world").await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno").await.unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await.unwrap();
        });
        let target = Target::new(&format!("http://{address}/x"), &[], None).unwrap();
        let (conn, status) = target.connect().await.unwrap().exchange().await.unwrap();
        assert_eq!(status, 200);
        let (conn, status) = conn.expect("kept alive").exchange().await.unwrap();
        assert_eq!((conn.is_none(), status), (true, 404));
        let err = target.connect().await.unwrap().exchange().await.err().expect("chunked is refused");
        assert!(err.to_string().contains("chunked"), "{err}");
        server.await.unwrap();
    }
}
