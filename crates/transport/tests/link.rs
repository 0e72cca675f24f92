//! The link on real loopback sockets: who is let in, and what crosses the wire.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kemari_transport::{make_certs, Credentials};

const WITHIN: Duration = Duration::from_secs(10);

fn certs(tag: &str, vm: &str, nodes: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kemari-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    make_certs(&dir, vm, nodes).unwrap();
    dir
}

/// Accepts one connection on a thread and runs `serve` on the accepted side's handshake result.
fn server<T: Send + 'static>(
    creds: Credentials,
    serve: impl FnOnce(Result<(kemari_transport::Reader, kemari_transport::Writer), kemari_transport::TlsError>) -> T
        + Send
        + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        serve(creds.accept(sock, WITHIN))
    });
    (addr, t)
}

/// A proxy between the two ends that records every byte going each way.
fn recording_proxy(to: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let (down, _) = listener.accept().unwrap();
        let up = TcpStream::connect(to).unwrap();
        for (mut from, mut into) in [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)] {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || into.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = into.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, seen)
}

#[test]
fn a_pair_of_the_same_vm_talks_both_ways_at_once_and_nothing_crosses_in_plaintext() {
    let dir = certs("pair", "vm1", &["a", "b"]);
    const MARKER: &[u8] = b"KEMARI-GUEST-SECRET-MARKER";
    let bulk: Vec<u8> = MARKER.iter().copied().cycle().take(32 << 20).collect();
    let want = bulk.clone();
    // The accepting side reads the bulk stream while it writes 1000 small answers.
    let (addr, srv) = server(Credentials::load(&dir, "b").unwrap(), move |link| {
        let (mut r, mut w) = link.unwrap();
        let answers = std::thread::spawn(move || {
            for i in 0u32..1000 {
                w.write_all(&i.to_le_bytes()).unwrap();
            }
            w
        });
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).unwrap();
        assert!(got == want, "the bulk stream arrived changed");
        answers.join().unwrap()
    });
    let (via, seen) = recording_proxy(addr);
    let a = Credentials::load(&dir, "a").unwrap();
    assert_eq!(a.vm(), "vm1.kemari");
    let (mut r, mut w) = a.connect(TcpStream::connect(via).unwrap(), WITHIN).unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&bulk).unwrap();
        w
    });
    for i in 0u32..1000 {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), i);
    }
    let _keep = (writer.join().unwrap(), srv.join().unwrap());
    let wire = seen.lock().unwrap();
    assert!(wire.len() > 32 << 20, "the proxy saw the stream ({} bytes)", wire.len());
    assert!(!wire.windows(MARKER.len()).any(|w| w == MARKER), "the marker crossed the wire in plaintext");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_peer_of_another_cluster_is_refused_both_ways() {
    let ours = certs("ours", "vm1", &["a"]);
    let theirs = certs("theirs", "vm1", &["x"]);
    let (addr, srv) = server(Credentials::load(&ours, "a").unwrap(), |link| link.err().map(|e| e.to_string()));
    let client = Credentials::load(&theirs, "x").unwrap().connect(TcpStream::connect(addr).unwrap(), WITHIN);
    assert!(client.is_err(), "a client of another CA completed the handshake");
    let why = srv.join().unwrap().expect("the server refused");
    assert!(why.contains("handshake"), "{why}");
    let _ = std::fs::remove_dir_all(&ours);
    let _ = std::fs::remove_dir_all(&theirs);
}

#[test]
fn a_peer_of_another_vm_of_the_same_cluster_is_refused() {
    let dir = certs("vms", "vm1", &["a"]);
    // The same CA signs a certificate for another VM.
    kemari_transport::sign_node(&dir, "vm2", "c").unwrap();
    let (addr, srv) = server(Credentials::load(&dir, "a").unwrap(), |link| link.err().map(|e| e.to_string()));
    let c = Credentials::load(&dir, "c").unwrap();
    assert_eq!(c.vm(), "vm2.kemari");
    // c checks that the server is vm2 and refuses vm1's: the handshake fails on c's side...
    assert!(c.connect(TcpStream::connect(addr).unwrap(), WITHIN).is_err());
    // ...and vm1's server refuses c as well.
    assert!(srv.join().unwrap().is_some(), "vm1's server accepted a node of vm2");

    // A node of vm2 that does not mind talking to vm1 (a hostile one) is refused by vm1's own check.
    let (addr, srv) = server(Credentials::load(&dir, "a").unwrap(), |link| link.err().map(|e| e.to_string()));
    let mut conn = raw_client(&dir, Some("c"), "vm1.kemari");
    let mut sock = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let _ = rustls::Stream::new(&mut conn, &mut sock).write_all(b"HELLO from vm2");
    let why = srv.join().unwrap().expect("vm1's server refused the node of vm2");
    assert!(why.contains("not for VM vm1.kemari"), "{why}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain rustls client trusting the CA in `dir`, with `node`'s certificate (or none), for server `name`.
fn raw_client(dir: &std::path::Path, node: Option<&str>, name: &'static str) -> rustls::ClientConnection {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match node {
        Some(n) => {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("{n}.pem"))).unwrap().map(Result::unwrap);
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{n}.key"))).unwrap();
            cfg.with_client_auth_cert(chain.collect(), key).unwrap()
        }
        None => cfg.with_no_client_auth(),
    };
    rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(name).unwrap()).unwrap()
}

#[test]
fn a_peer_without_a_certificate_is_refused_before_anything_is_read() {
    let dir = certs("anon", "vm1", &["a"]);
    let (addr, srv) = server(Credentials::load(&dir, "a").unwrap(), |link| link.err().map(|e| e.to_string()));
    // A client that trusts our CA but has no certificate of its own.
    let mut conn = raw_client(&dir, None, "vm1.kemari");
    let mut sock = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            break;
        }
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let _ = tls.write_all(b"HELLO from nobody");
    let why = srv.join().unwrap().expect("the server refused");
    assert!(why.contains("certificate"), "{why}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plaintext_garbage_is_refused_at_the_handshake() {
    let dir = certs("garbage", "vm1", &["a"]);
    let (addr, srv) = server(Credentials::load(&dir, "a").unwrap(), |link| link.err().map(|e| e.to_string()));
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(b"KEMARIFT\x01\0\0\0 not TLS at all\r\n\r\n").unwrap();
    assert!(srv.join().unwrap().is_some(), "garbage passed the handshake");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve_introductions` hands over introduced peers and refusals, and stops taking connections (the port
/// closes) once its guard is dropped.
#[test]
fn introductions_are_served_until_the_guard_is_dropped() {
    use kemari_transport::{serve_introductions, Security};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let hello = |r: &mut dyn Read| {
        let mut b = [0u8; 5];
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        (&b == b"hello").then_some(()).ok_or_else(|| "not a hello".to_string())
    };
    let guard = serve_introductions("t", listener, Security::Plaintext, Duration::from_secs(5), 4, hello, tx).unwrap();
    TcpStream::connect(addr).unwrap().write_all(b"hello").unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap().outcome.is_ok());
    TcpStream::connect(addr).unwrap().write_all(b"nope!").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().outcome.err().as_deref(), Some("not a hello"));
    drop(guard);
    let start = std::time::Instant::now();
    while TcpStream::connect(addr).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "still accepting after the guard was dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
}
