//! kemari-transport: the link between two kemari nodes (replication, live migration), authenticated and
//! encrypted with mutual TLS 1.3.
//!
//! # Who may talk to whom
//! Every node holds a certificate signed by the CA of its cluster, naming the VM it serves as its DNS subject
//! alternative name (`<vm>.kemari`; [`make_certs`] writes such a set). A connection is accepted only when the
//! peer's certificate chains to the same CA *and* names the same VM: a node of another cluster fails the
//! chain, a node of another VM of the same cluster fails the name, a peer without a certificate fails the
//! handshake. Both checks run inside the handshake, before either side reads or writes a byte of its
//! protocol, so no guest state is read from, or sent to, anyone else. Both ends of a link may act as either
//! side (roles swap at failover), so every certificate is good for client and server authentication.
//!
//! # Two threads on one session
//! rustls has no full-duplex split, and a lock held across a blocking socket read would starve the writer
//! (a sender of checkpoints must never wait for the peer to speak). So [`split`] shares the TLS state machine
//! behind a mutex that is held only to encrypt or decrypt, never across socket I/O: the [`Reader`] reads the
//! socket unlocked and feeds the bytes in; the [`Writer`] encrypts under the lock and writes unlocked. Only
//! the writer puts records on the socket, so records keep their order; anything the reader's side made
//! rustls want to send (a key update answer) leaves with the next write, and both protocols write at least
//! every heartbeat.
//!
//! # Plaintext, on request only
//! [`Security::Plaintext`] runs the same protocols over bare TCP, for a link the operator secures otherwise
//! (or a test of the protocol itself). kemari uses it only on an explicit `--insecure-plaintext` and says so
//! loudly: anyone who reaches the port can then push a guest of their choosing or read the guest's memory.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub mod frame;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

/// Largest plaintext handed to rustls per call (its send buffer takes about this much at once).
const WRITE_CHUNK: usize = 64 << 10;
/// Socket reads on the reading side.
const READ_BUF: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    #[error("{}: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error("certificate {}: {why}", path.display())]
    Certificate { path: PathBuf, why: String },
    #[error("TLS setup: {0}")]
    Config(String),
    #[error("TLS handshake with the peer failed: {0}")]
    Handshake(String),
    #[error("making certificates: {0}")]
    Generate(String),
}

/// How a node's links are secured.
#[derive(Clone)]
pub enum Security {
    /// Mutual TLS with these credentials.
    Tls(Arc<Credentials>),
    /// Bare TCP: no authentication, no encryption.
    Plaintext,
}

/// An established link: its two halves (for one reading and one writing thread) and the socket underneath
/// (timeouts, nodelay, shutdown).
pub struct Channel {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub socket: TcpStream,
}

impl Security {
    /// The connecting side (a primary, a migration sender): the handshake, within `within`.
    pub fn connect(&self, sock: TcpStream, within: Duration) -> Result<Channel, TlsError> {
        match self {
            Security::Tls(c) => Channel::tls(c.connect(sock, within)?),
            Security::Plaintext => Channel::plain(sock),
        }
    }

    /// The accepting side (a standby, a migration receiver): the handshake, within `within`. With TLS a
    /// peer that is not of our cluster and VM is refused here, before a byte of the protocol is read.
    pub fn accept(&self, sock: TcpStream, within: Duration) -> Result<Channel, TlsError> {
        match self {
            Security::Tls(c) => Channel::tls(c.accept(sock, within)?),
            Security::Plaintext => Channel::plain(sock),
        }
    }

    /// For messages: what secures the link.
    pub fn describe(&self) -> String {
        match self {
            Security::Tls(c) => format!("mutual TLS for {}", c.vm()),
            Security::Plaintext => "plaintext (UNAUTHENTICATED, UNENCRYPTED)".into(),
        }
    }
}

impl Channel {
    fn tls((reader, writer): (Reader, Writer)) -> Result<Channel, TlsError> {
        let socket = writer.sock.try_clone().map_err(|e| TlsError::Handshake(e.to_string()))?;
        Ok(Channel { reader: Box::new(reader), writer: Box::new(writer), socket })
    }

    fn plain(sock: TcpStream) -> Result<Channel, TlsError> {
        let clone = || sock.try_clone().map_err(|e| TlsError::Handshake(e.to_string()));
        Ok(Channel { reader: Box::new(clone()?), writer: Box::new(clone()?), socket: sock })
    }
}

/// A connection taken by [`serve_introductions`]: the peer's address, and its link with what it introduced
/// itself as, or why it was refused.
pub struct Introduction<T> {
    pub peer: String,
    pub outcome: Result<(Channel, T), String>,
}

/// Accepts connections on `listener` (on a thread named `NAME-accept`) and makes each one's handshake and
/// reads its introduction (`introduce`, through a [`Deadline`] reader) on a thread of its own (`NAME-hello`),
/// both within `within`; hands every outcome to `out`. At most `at_once` introductions are under way; a
/// connection beyond that is closed at once. So an idle or trickling peer delays neither the receiver nor a
/// real peer: authenticate and introduce first, serve after. Accepting goes on until the returned
/// [`Introductions`] is dropped; then the port is closed.
pub fn serve_introductions<T, F>(
    name: &str,
    listener: TcpListener,
    security: Security,
    within: Duration,
    at_once: usize,
    introduce: F,
    out: mpsc::Sender<Introduction<T>>,
) -> io::Result<Introductions>
where
    T: Send + 'static,
    F: Fn(&mut dyn Read) -> Result<T, String> + Send + Sync + 'static,
{
    let hello_name = format!("{name}-hello");
    let introduce = Arc::new(introduce);
    let guard = Introductions { listener: listener.try_clone()?, stopped: Arc::new(AtomicBool::new(false)) };
    let stopped = guard.stopped.clone();
    std::thread::Builder::new().name(format!("{name}-accept")).spawn(move || {
        // Each introduction thread holds a clone; only this thread clones it.
        let busy = Arc::new(());
        for c in listener.incoming() {
            let stream = match c {
                Ok(s) => s,
                // The guard shut the socket down: done, and the port closes with `listener`.
                Err(_) if stopped.load(Ordering::SeqCst) => return,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            };
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
            if Arc::strong_count(&busy) > at_once {
                tracing::warn!("closed a connection from {peer}: {at_once} introductions under way");
                continue;
            }
            let (slot, out, security, introduce) = (busy.clone(), out.clone(), security.clone(), introduce.clone());
            let spawned = std::thread::Builder::new().name(hello_name.clone()).spawn(move || {
                let outcome = introduced(&security, stream, within, &*introduce);
                drop(slot);
                let _ = out.send(Introduction { peer, outcome });
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start an introduction thread: {e}");
            }
        }
    })?;
    Ok(guard)
}

/// Keeps a [`serve_introductions`] loop accepting; dropping it stops the loop and closes the port (a
/// receiver that got its sender, a standby that took over, must not go on taking connections).
pub struct Introductions {
    /// The same listening socket as the loop's.
    listener: TcpListener,
    stopped: Arc<AtomicBool>,
}

impl Drop for Introductions {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on a socket we own (a duplicate of the loop's); it makes the blocked accept(2)
        // in the loop return an error, which ends it.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// The handshake, then the introduction, each within `within`; the socket is left without a read timeout.
fn introduced<T>(
    security: &Security,
    stream: TcpStream,
    within: Duration,
    introduce: &dyn Fn(&mut dyn Read) -> Result<T, String>,
) -> Result<(Channel, T), String> {
    let _ = stream.set_nodelay(true);
    let mut channel = security.accept(stream, within).map_err(|e| e.to_string())?;
    let Channel { reader, writer, socket } = &mut channel;
    let hello = introduce(&mut Deadline::new(reader, socket, within)).inspect_err(|why| {
        // The peer passed the handshake: it is a node of this VM, and it learns why it is turned away.
        let _ = socket.set_write_timeout(Some(within));
        frame::refuse(writer, why);
    })?;
    channel.socket.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok((channel, hello))
}

/// Reads until a deadline for the whole exchange, not per read: a peer trickling one byte at a time cannot
/// stretch it. `socket` is the one `reader` reads from (its timeout is set before each read).
pub struct Deadline<'a> {
    reader: &'a mut dyn Read,
    socket: &'a TcpStream,
    until: Instant,
}

impl<'a> Deadline<'a> {
    pub fn new(reader: &'a mut dyn Read, socket: &'a TcpStream, within: Duration) -> Deadline<'a> {
        Deadline { reader, socket, until: Instant::now() + within }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let late = || io::Error::new(io::ErrorKind::TimedOut, "the peer did not finish in time");
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        self.socket.set_read_timeout(Some(left))?;
        match self.reader.read(buf) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Err(late()),
            other => other,
        }
    }
}

/// A node's credentials: the cluster's CA, its own certificate chain and key, and the VM its certificate
/// names (the peer must name the same).
pub struct Credentials {
    vm: String,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

/// Where [`Credentials::load`] finds a node's files in a directory.
pub fn paths(dir: &Path, node: &str) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join(format!("{node}.pem")), dir.join(format!("{node}.key")))
}

/// ring: it builds with a C compiler alone (aws-lc-rs, rustls's preferred provider, brings a larger C build);
/// its TLS 1.3 AES-GCM suites are what we need. rustls marks it deprecated for lacking post-quantum key
/// exchange, which a link inside one cluster can do without for now.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// Reads `ca.pem`, `NODE.pem` and `NODE.key` from `dir`.
    pub fn load(dir: &Path, node: &str) -> Result<Credentials, TlsError> {
        let (ca_path, cert_path, key_path) = paths(dir, node);
        let pem = |path: &Path, why: String| TlsError::Pem { path: path.to_path_buf(), why };
        let read =
            |path: &Path| std::fs::read(path).map_err(|source| TlsError::File { path: path.to_path_buf(), source });
        let ca_pem = read(&ca_path)?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            let c = c.map_err(|e| pem(&ca_path, e.to_string()))?;
            roots.add(c).map_err(|e| TlsError::Certificate { path: ca_path.clone(), why: e.to_string() })?;
        }
        if roots.is_empty() {
            return Err(pem(&ca_path, "no certificate in it".into()));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&cert_path)?)
            .collect::<Result<_, _>>()
            .map_err(|e| pem(&cert_path, e.to_string()))?;
        let Some(leaf) = chain.first() else { return Err(pem(&cert_path, "no certificate in it".into())) };
        let vm = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::Certificate { path: cert_path.clone(), why: e.to_string() })?
            .valid_dns_names()
            .next()
            .map(str::to_string)
            .ok_or_else(|| TlsError::Certificate {
                path: cert_path.clone(),
                why: "names no VM (no DNS name)".into(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| pem(&key_path, e.to_string()))?;
        Credentials::new(roots, chain, key, vm)
    }

    fn new(
        roots: RootCertStore,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        vm: String,
    ) -> Result<Credentials, TlsError> {
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        // One long-lived connection per session: no resumption tickets.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        Ok(Credentials { vm, client: Arc::new(client), server: Arc::new(server) })
    }

    /// The VM this node's certificate names.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The connecting side's handshake (the primary, a migration sender), within `within`.
    pub fn connect(&self, sock: TcpStream, within: Duration) -> Result<(Reader, Writer), TlsError> {
        let name = ServerName::try_from(self.vm.clone()).map_err(|e| TlsError::Config(e.to_string()))?;
        let conn = ClientConnection::new(self.client.clone(), name).map_err(|e| TlsError::Config(e.to_string()))?;
        handshake(conn.into(), sock, within, None)
    }

    /// The accepting side's handshake (a standby, a migration receiver), within `within`: the client's
    /// certificate must chain to our CA (checked by rustls) and name our VM (checked here, before anything
    /// of the protocol is read).
    pub fn accept(&self, sock: TcpStream, within: Duration) -> Result<(Reader, Writer), TlsError> {
        let conn = ServerConnection::new(self.server.clone()).map_err(|e| TlsError::Config(e.to_string()))?;
        handshake(conn.into(), sock, within, Some(&self.vm))
    }
}

fn handshake(
    mut conn: Connection,
    mut sock: TcpStream,
    within: Duration,
    client_must_name: Option<&str>,
) -> Result<(Reader, Writer), TlsError> {
    let failed = |e: io::Error| TlsError::Handshake(e.to_string());
    sock.set_read_timeout(Some(within)).map_err(failed)?;
    sock.set_write_timeout(Some(within)).map_err(failed)?;
    let deadline = Instant::now() + within;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TlsError::Handshake("the peer did not complete it in time".into()));
        }
        // The whole handshake within `within`, however the peer spreads its bytes.
        sock.set_read_timeout(Some(left)).map_err(failed)?;
        conn.complete_io(&mut sock).map_err(failed)?;
    }
    // Flush what the handshake left to send (the client's Finished).
    while conn.wants_write() {
        conn.write_tls(&mut sock).map_err(failed)?;
    }
    if let Some(vm) = client_must_name {
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| TlsError::Handshake("the peer presented no certificate".into()))?;
        let name = ServerName::try_from(vm.to_string()).map_err(|e| TlsError::Config(e.to_string()))?;
        webpki::EndEntityCert::try_from(leaf)
            .and_then(|c| c.verify_is_valid_for_subject_name(&name))
            .map_err(|_| TlsError::Handshake(format!("the peer's certificate is not for VM {vm}")))?;
    }
    sock.set_read_timeout(None).map_err(failed)?;
    sock.set_write_timeout(None).map_err(failed)?;
    split(conn, sock).map_err(failed)
}

/// The session's state machine, shared by the two halves.
struct Session {
    conn: Mutex<Connection>,
    sock: TcpStream,
}

/// The reading half: plaintext from the peer.
pub struct Reader {
    session: Arc<Session>,
    sock: TcpStream,
    raw: Vec<u8>,
    /// `raw[fed..got]` came from the socket and is not yet in rustls (it takes a bounded amount at once).
    fed: usize,
    got: usize,
}

/// The writing half: plaintext to the peer. The only half that writes to the socket.
pub struct Writer {
    session: Arc<Session>,
    sock: TcpStream,
    out: Vec<u8>,
}

fn split(conn: Connection, sock: TcpStream) -> io::Result<(Reader, Writer)> {
    let session = Arc::new(Session { conn: Mutex::new(conn), sock: sock.try_clone()? });
    let reader = Reader { session: session.clone(), sock: sock.try_clone()?, raw: vec![0; READ_BUF], fed: 0, got: 0 };
    Ok((reader, Writer { session, sock, out: Vec::new() }))
}

impl Reader {
    /// The socket underneath (timeouts, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl Writer {
    /// The socket underneath (nodelay, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic elsewhere with the lock held leaves a session no one should trust: fail its I/O.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.session.lock();
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.fed < self.got {
                    // No plaintext is buffered now, so rustls takes more records.
                    self.fed += conn.read_tls(&mut &self.raw[self.fed..self.got])?;
                    conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            // Nothing buffered: read the socket without the lock, so the writer goes on meanwhile.
            let n = self.sock.read(&mut self.raw)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection"));
            }
            (self.fed, self.got) = (0, n);
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = {
            let mut conn = self.session.lock();
            let n = conn.writer().write(&buf[..buf.len().min(WRITE_CHUNK)])?;
            while conn.wants_write() {
                conn.write_tls(&mut self.out)?;
            }
            n
        };
        let sent = self.sock.write_all(&self.out);
        self.out.clear();
        sent.map(|()| n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// A cluster's certificates for a small setup or a test: `ca.pem` (and `ca.key`, to make more later) plus
/// `NODE.pem` and `NODE.key` for each node, each naming `vm` (written `<vm>.kemari` if it has no dot).
/// Keys are written 0600.
pub fn make_certs(dir: &Path, vm: &str, nodes: &[&str]) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let name = vm_name(vm)?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::File { path: dir.to_path_buf(), source })?;
    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca.distinguished_name.push(DnType::CommonName, "kemari cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;
    write(dir, "ca.pem", ca_cert.pem(), false)?;
    write(dir, "ca.key", ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);
    for node in nodes {
        sign(dir, &issuer, &name, node)?;
    }
    Ok(())
}

/// Another node's certificate, for `vm`, signed by the CA whose `ca.pem` and `ca.key` are in `dir`.
pub fn sign_node(dir: &Path, vm: &str, node: &str) -> Result<(), TlsError> {
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let name = vm_name(vm)?;
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| TlsError::File { path, source })
    };
    let key = rcgen::KeyPair::from_pem(&read("ca.key")?).map_err(generate)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem")?, key).map_err(generate)?;
    sign(dir, &issuer, &name, node)
}

/// `vm` as the DNS name certificates carry (`<vm>.kemari` when it has no dot).
fn vm_name(vm: &str) -> Result<String, TlsError> {
    let name = if vm.contains('.') { vm.to_string() } else { format!("{vm}.kemari") };
    ServerName::try_from(name.clone()).map_err(|_| TlsError::Generate(format!("{vm:?} is not a valid VM name")))?;
    Ok(name)
}

fn sign<S: rcgen::SigningKey>(
    dir: &Path,
    issuer: &rcgen::Issuer<'_, S>,
    name: &str,
    node: &str,
) -> Result<(), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(TlsError::Generate(format!("node name {node:?} must be letters, digits, - or _")));
    }
    let key = KeyPair::generate().map_err(generate)?;
    let mut p = CertificateParams::new(vec![name.to_string()]).map_err(generate)?;
    p.distinguished_name.push(DnType::CommonName, format!("{node} of {name}"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, issuer).map_err(generate)?;
    write(dir, &format!("{node}.pem"), cert.pem(), false)?;
    write(dir, &format!("{node}.key"), key.serialize_pem(), true)
}

/// Writes `text` to `dir/file`; a secret (a key) 0600.
fn write(dir: &Path, file: &str, text: String, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(file);
    let err = |source| TlsError::File { path: path.clone(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}
