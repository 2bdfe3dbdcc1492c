//! The proxy's own TLS layer (proxy/src/tls.rs) on real loopback sockets: both ends are the
//! proxy's (server and client side), on a monoio runtime as in the proxy.
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use bcs_proxy::tls::{self, ClientTls, ServerTls};
use bcs_testkit::apiserver::certs::CertPair;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::ServerName;

/// On io_uring, or on epoll when `BCS_PROXY_DRIVER=legacy` (as scripts/test-all's second run).
fn run<F: std::future::Future>(f: F) -> F::Output {
    if std::env::var("BCS_PROXY_DRIVER").as_deref() == Ok("legacy") {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime").block_on(f)
    } else {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().expect("runtime").block_on(f)
    }
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    bcs_shared::tls::http1_client(bcs_shared::tls::roots_from_pem(ca_pem.as_bytes()).expect("CA"))
}

/// A connected pair: (what the server accepted, the client), or the two handshake results.
async fn pair(certs: &CertPair, trusted_ca: &str) -> (std::io::Result<ServerTls>, std::io::Result<ClientTls>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let server_config = certs.server_config();
    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tls::accept(tcp, server_config).await
    });
    let tcp = TcpStream::connect(address).await.expect("connect");
    let name = ServerName::try_from("kubernetes").expect("name");
    let client = tls::connect(tcp, client_config(trusted_ca), name).await;
    (server.await, client)
}

/// A pair whose handshakes both succeeded (the server trusts its own CA).
async fn connected(certs: &CertPair) -> (ServerTls, ClientTls) {
    let (server, client) = pair(certs, &certs.ca_pem).await;
    (server.expect("server handshake"), client.expect("client handshake"))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Reads until end of stream with reads of `size` bytes; the bytes, and how it ended.
async fn read_to_end<R: AsyncReadRent>(from: &mut R, size: usize) -> (Vec<u8>, std::io::Result<()>) {
    let mut all = Vec::new();
    loop {
        let (r, buf) = from.read(Vec::with_capacity(size)).await;
        match r {
            Ok(0) => return (all, Ok(())),
            Ok(_) => all.extend_from_slice(&buf),
            Err(e) => return (all, Err(e)),
        }
    }
}

#[test]
fn three_mebibytes_each_way_arrive_intact_through_split_halves() {
    run(async {
        let certs = CertPair::generate("tls-test-ca");
        let (server, client) = connected(&certs).await;
        // The server echoes through its split halves, reading in odd small pieces; the client
        // reads 64 KiB at a time while 1 MiB writes arrive, which fills rustls' plaintext
        // buffer and leaves ciphertext over between reads.
        let echo = monoio::spawn(async move {
            let (mut read, mut write) = server.into_split();
            loop {
                let (r, buf) = read.read(Vec::with_capacity(1000)).await;
                match r {
                    Ok(0) => break,
                    Ok(_) => {
                        let (w, _) = write.write_all(buf).await;
                        w.expect("echo write");
                    }
                    Err(e) => panic!("echo read: {e}"),
                }
            }
            write.shutdown().await.expect("server close_notify");
        });
        let sent = pattern(3 * 1024 * 1024);
        let (mut read, mut write) = client.into_split();
        let to_send = sent.clone();
        let writer = monoio::spawn(async move {
            // Writes of 1 MiB: each is encrypted whole and sent in one call.
            for part in to_send.chunks(1024 * 1024) {
                let (w, _) = write.write_all(part.to_vec()).await;
                w.expect("client write");
            }
            write.shutdown().await.expect("client close_notify");
        });
        let (received, end) = read_to_end(&mut read, 64 * 1024).await;
        end.expect("a clean end (close_notify)");
        writer.await;
        echo.await;
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the echoed bytes differ from those sent");
    })
}

#[test]
fn close_notify_reads_as_the_end_and_a_bare_tcp_close_as_an_error() {
    run(async {
        let certs = CertPair::generate("tls-test-ca");
        // Clean: data, then close_notify.
        let (mut server, mut client) = connected(&certs).await;
        let (w, _) = server.write_all(b"last words".to_vec()).await;
        w.expect("write");
        server.shutdown().await.expect("shutdown");
        let (data, end) = read_to_end(&mut client, 4096).await;
        assert_eq!(data, b"last words");
        end.expect("close_notify is a clean end");

        // Unclean: data, then the socket closes without close_notify (a truncation attack
        // looks the same): the data arrives, then an error, never a clean end.
        let (mut server, mut client) = connected(&certs).await;
        let (w, _) = server.write_all(b"cut".to_vec()).await;
        w.expect("write");
        drop(server);
        let (data, end) = read_to_end(&mut client, 4096).await;
        assert_eq!(data, b"cut");
        assert_eq!(end.expect_err("a bare close is not a clean end").kind(), ErrorKind::UnexpectedEof);
    })
}

#[test]
fn an_untrusted_certificate_fails_both_handshakes() {
    run(async {
        let certs = CertPair::generate("tls-test-ca");
        let other = CertPair::generate("some-other-ca");
        let (server, client) = pair(&certs, &other.ca_pem).await;
        let error = client.err().expect("the client refuses a certificate its CA did not sign");
        assert_eq!(error.kind(), ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        // The client told the server why (an alert), so the server's handshake fails too.
        let error = server.err().expect("the server's handshake fails");
        assert!(error.to_string().contains("alert"), "{error}");
    })
}

#[test]
fn readable_waits_for_data_without_taking_it() {
    run(async {
        let certs = CertPair::generate("tls-test-ca");
        let (mut server, mut client) = connected(&certs).await;
        // Nothing sent yet: not readable (TLS 1.3 session tickets, sent after the handshake,
        // are no data and must not count).
        let idle = monoio::time::timeout(Duration::from_millis(200), client.readable()).await;
        assert!(idle.is_err(), "readable with nothing sent");
        let (w, _) = server.write_all(b"event".to_vec()).await;
        w.expect("write");
        monoio::time::timeout(Duration::from_secs(10), client.readable())
            .await
            .expect("readable once data was sent")
            .expect("no error");
        // Waiting took nothing: the read gets it all.
        let (r, buf) = client.read(Vec::with_capacity(64)).await;
        assert_eq!(r.expect("read"), 5);
        assert_eq!(buf, b"event");
    })
}

#[test]
fn a_corrupted_record_fails_readable_and_the_next_read_at_once() {
    run(async {
        use std::io::Write;
        use std::os::fd::{AsRawFd, FromRawFd};
        let certs = CertPair::generate("tls-test-ca");
        let (server, mut client) = connected(&certs).await;
        // An application-data record whose tag cannot verify, written past the server's TLS.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend([0x5a; 32]);
        // SAFETY: borrows the server's descriptor without taking it over (ManuallyDrop).
        let mut raw = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(server.as_raw_fd()) });
        raw.write_all(&record).expect("raw write");
        let ready = monoio::time::timeout(Duration::from_secs(10), client.readable()).await.expect("readable answers");
        let error = ready.expect_err("a record that does not decrypt is an error, not data");
        assert_eq!(error.kind(), ErrorKind::InvalidData, "{error}");
        // The session is broken: the read fails too, at once, instead of waiting on the socket.
        let (read, _) = monoio::time::timeout(Duration::from_secs(5), client.read(Vec::with_capacity(64)))
            .await
            .expect("the read fails without waiting for more bytes");
        assert_eq!(read.expect_err("a failed session reads as an error").kind(), ErrorKind::InvalidData);
        drop(server);
    })
}

#[test]
fn readable_answers_for_close_notify_and_for_a_bare_close() {
    run(async {
        let certs = CertPair::generate("tls-test-ca");
        let (mut server, mut client) = connected(&certs).await;
        server.shutdown().await.expect("close_notify");
        monoio::time::timeout(Duration::from_secs(10), client.readable()).await.expect("readable").expect("no error");
        let (read, _) = client.read(Vec::with_capacity(64)).await;
        assert_eq!(read.expect("a clean end"), 0);

        let (server, mut client) = connected(&certs).await;
        drop(server);
        monoio::time::timeout(Duration::from_secs(10), client.readable()).await.expect("readable").expect("no error");
        let (read, _) = client.read(Vec::with_capacity(64)).await;
        assert_eq!(read.expect_err("a cut is not a clean end").kind(), ErrorKind::UnexpectedEof);
    })
}
