//! The control API: line-delimited JSON over a Unix socket.
//!
//! One request per line, one reply per line:
//!
//! ```text
//! → {"op":"status"}                     ← {"ok":true,"paused":false,"harts":2,"memory_mib":256,"instret":123}
//! → {"op":"pause"}                      ← {"ok":true}
//! → {"op":"snapshot","dir":"/srv/snap"} ← {"ok":true,"bytes":12345678,"millis":80}
//! → {"op":"resume"}                     ← {"ok":true}
//! → {"op":"migrate","to":"10.0.0.2:7000","downtime_ms":50}
//!                                       ← {"ok":true,"rounds":3,"bytes":..,"total_millis":..,"downtime_micros":..}
//!                                         (answered once the receiver took over; this VM then exits)
//! → {"op":"status"} on a protected VM adds  "role":"primary","protection":"protected","fence":3,
//!                                         "checkpoints":812,"effects_held":0,"pause_us":{"last":..,"p50":..,
//!                                         "p99":..,"max":..},"pages_last":..,"bytes_last":..,...
//! → {"op":"metrics"}                    ← {"ok":true,"text":"# TYPE kemari_checkpoints gauge\n..."} (Prometheus)
//! → {"op":"bogus"}                      ← {"ok":false,"error":"unknown variant `bogus`, ..."}
//! ```
//!
//! Requests are served by the machine loop between slices, so the machine is quiesced for each. Later
//! issues extend the same API (migration, protection, metrics).
//!
//! The socket is the VM's remote control, so only its owner may use it: it is created with mode 0600 whatever
//! the umask, and it only ever replaces a stale socket (one nobody listens on), never a file or a live API.
//! At most [`MAX_CONNECTIONS`] clients are served at once (each holds a thread); one more gets
//! `{"ok":false,"error":"too many control connections"}` and is closed, and a client idle for
//! [`IDLE_TIMEOUT`] between requests is closed so that it does not hold its slot forever.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kemari_runtime::control::{Reply, Request};
use kemari_runtime::Event;
use serde::{Deserialize, Serialize};

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a connection may wait between requests (or take to read an answer). Waiting for the machine's
/// answer is not limited: a migration request is answered only when the migration ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The whole answer to a connection beyond [`MAX_CONNECTIONS`].
const TOO_MANY: &[u8] = b"{\"ok\":false,\"error\":\"too many control connections\"}\n";

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Wire {
    Pause,
    Resume,
    Status,
    /// The status as Prometheus text exposition.
    Metrics,
    Snapshot {
        dir: PathBuf,
    },
    Migrate {
        to: String,
        #[serde(default = "default_downtime_ms")]
        downtime_ms: u64,
    },
}

/// Default live-migration downtime budget.
pub const DEFAULT_DOWNTIME_MS: u64 = 50;

fn default_downtime_ms() -> u64 {
    DEFAULT_DOWNTIME_MS
}

#[derive(Serialize)]
struct Answer {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

fn answer(reply: Reply) -> Answer {
    let mut fields = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        fields.insert(k.to_string(), v);
    };
    match reply {
        Reply::Ok => {}
        Reply::Status { paused, cpus, memory_mib, instret, migration, protection, io_error } => {
            if let Some(name) = kemari_board::log::vm_name() {
                put("name", name.into());
            }
            if let Some(why) = io_error {
                put("io_error", why.into());
            }
            match protection {
                Some(p) => {
                    put("role", p.role.clone().into());
                    put("protection", p.state.clone().into());
                    put("peer", p.peer.clone().into());
                    put("fence", p.fence.into());
                    put("checkpoints", p.checkpoints.into());
                    put("rejected", p.rejected.into());
                    put("effects_held", p.effects_held.into());
                    put(
                        "pause_us",
                        serde_json::json!({"last": p.pause_last_us, "p50": p.pause_p50_us,
                                           "p99": p.pause_p99_us, "max": p.pause_max_us}),
                    );
                    put("pages_last", p.pages_last.into());
                    put("bytes_last", p.bytes_last.into());
                    put("pages_total", p.pages_total.into());
                    put("bytes_total", p.bytes_total.into());
                    if let Some(ms) = p.failover_ms {
                        put("failover_ms", ms.into());
                    }
                    if let Some(d) = &p.disks {
                        put(
                            "disk_comparison",
                            serde_json::json!({"compared_bytes": d.compared_bytes, "total_bytes": d.total_bytes,
                                               "differed_bytes": d.differed_bytes, "done": d.done}),
                        );
                    }
                }
                None => {
                    put("role", "standalone".into());
                    put("protection", "none".into());
                }
            }
            put("paused", paused.into());
            // Named as RISC-V does in this API's first version.
            put("harts", cpus.into());
            put("memory_mib", memory_mib.into());
            put("instret", instret.into());
            if let Some(p) = migration {
                put(
                    "migration",
                    serde_json::json!({"round": p.round, "bytes": p.bytes, "pages": p.pages,
                                       "pages_left": p.pages_left,
                                       "dirty_pages_last_round": p.dirty_pages_last_round,
                                       "dirty_rate": p.dirty_rate}),
                );
            }
        }
        Reply::Migrated { rounds, bytes, total_millis, downtime_micros } => {
            put("rounds", rounds.into());
            put("bytes", bytes.into());
            put("total_millis", total_millis.into());
            put("downtime_micros", downtime_micros.into());
        }
        Reply::Incoming { listen, refused, last_refusal, receiving_from } => {
            put("role", "incoming".into());
            put("paused", true.into());
            put("listen", listen.into());
            put("refused", refused.into());
            if let Some(why) = last_refusal {
                put("last_refusal", why.into());
            }
            if let Some(peer) = receiving_from {
                put("receiving_from", peer.into());
            }
        }
        Reply::Snapshot { bytes, millis } => {
            put("bytes", bytes.into());
            put("millis", millis.into());
        }
        Reply::Error(e) => return Answer { ok: false, error: Some(e), fields },
    }
    Answer { ok: true, error: None, fields }
}

/// The numeric status fields as Prometheus text (`kemari_<field>`, role and protection state as labels).
fn prometheus(fields: &serde_json::Map<String, serde_json::Value>) -> String {
    let label = |k: &str| fields.get(k).and_then(|v| v.as_str()).unwrap_or("none").to_string();
    let vm = kemari_board::log::vm_name().map(|n| format!("vm=\"{n}\",")).unwrap_or_default();
    let labels = format!("{{{vm}role=\"{}\",protection=\"{}\"}}", label("role"), label("protection"));
    let mut out = String::new();
    let mut emit = |name: String, v: &serde_json::Value| {
        if let Some(n) = v.as_u64().or_else(|| v.as_bool().map(u64::from)) {
            out.push_str(&format!("# TYPE {name} gauge\n{name}{labels} {n}\n"));
        }
    };
    for (k, v) in fields {
        match v {
            serde_json::Value::Object(inner) => {
                for (k2, v2) in inner {
                    emit(format!("kemari_{k}_{k2}"), v2);
                }
            }
            v => emit(format!("kemari_{k}"), v),
        }
    }
    out
}

/// How long a request waits for the machine's answer before it is answered with an error.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Requests handed to the machine whose answers are not written yet.
static ANSWERING: AtomicUsize = AtomicUsize::new(0);

/// Waits (at most `within`) until every request the machine answered has its answer written: a process that
/// ends right after answering (a finished migration) must not cut the answer off.
pub fn drain(within: Duration) {
    let deadline = Instant::now() + within;
    while ANSWERING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts serving the API on `path`, replacing only a stale socket there.
pub fn serve(path: &Path, events: Sender<Event>) -> std::io::Result<()> {
    remove_stale(path)?;
    let listener = bind_private(path)?;
    let events = Mutex::new(events);
    // Each connection's thread holds a clone: the count beyond this one is the number being served. Only this
    // thread clones it, so a count read here can only be too high (a thread ending), never too low.
    let slots = Arc::new(());
    std::thread::Builder::new().name("api".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            if Arc::strong_count(&slots) > MAX_CONNECTIONS {
                // Non-blocking: a client that does not read cannot stall the accept loop (a fresh socket's
                // buffer holds the line anyway).
                let _ = conn.set_nonblocking(true);
                let _ = (&conn).write_all(TOO_MANY);
                continue;
            }
            let slot = slots.clone();
            let tx = events.lock().expect("api sender").clone();
            // If the thread cannot start, the closure, and with it the connection and its slot, is dropped.
            let _ = std::thread::Builder::new().name("api-conn".into()).spawn(move || {
                handle(conn, tx);
                drop(slot);
            });
        }
    })?;
    Ok(())
}

/// Makes way for a new socket at `path`: fine if nothing is there, removes a socket nobody listens on (left by a
/// kemari that crashed), and refuses anything else.
fn remove_stale(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        found => found?,
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            ErrorKind::AlreadyExists,
            "exists and is not a socket; refusing to replace it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(ErrorKind::AddrInUse, "another process serves this socket")),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Binds a listener at `path` with mode 0600, whatever the umask. Binding at `path` and then chmod-ing would
/// leave a moment in which anyone may connect (and stay connected); the umask is process-wide. So the socket is
/// bound in a fresh 0700 directory beside `path`, where nobody else can reach it, made 0600 there, and then
/// hard-linked to `path`: unlike a rename, the link fails if anything appeared at `path` meanwhile.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = PrivateDir::new(parent)?;
    // A short name: a socket's path is limited to 107 bytes.
    let tmp = dir.0.join("s");
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::hard_link(&tmp, path)?;
    Ok(listener)
}

/// A fresh directory (mode 0700, random name) that is removed with what it holds when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(parent: &Path) -> std::io::Result<PrivateDir> {
        let mut template = parent.join(".kemari-XXXXXX").into_os_string().into_vec();
        template.push(0);
        // SAFETY: `template` is a NUL-terminated buffer we own and keep alive across the call; mkdtemp only
        // rewrites the six X before the NUL in place.
        if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        template.pop();
        Ok(PrivateDir(PathBuf::from(OsString::from_vec(template))))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn handle(conn: UnixStream, events: Sender<Event>) {
    // Bounds reading a request and writing an answer, not the wait for the machine's answer.
    if conn.set_read_timeout(Some(IDLE_TIMEOUT)).and_then(|()| conn.set_write_timeout(Some(IDLE_TIMEOUT))).is_err() {
        return;
    }
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let wire = serde_json::from_str::<Wire>(line.trim());
        let as_metrics = matches!(wire, Ok(Wire::Metrics));
        // Counted in ANSWERING from the hand-over to the machine until the answer is written.
        let answered = wire.is_ok();
        let reply = match wire {
            Err(e) => Reply::Error(format!("bad request: {e}")),
            Ok(w) => {
                let req = match w {
                    Wire::Pause => Request::Pause,
                    Wire::Resume => Request::Resume,
                    Wire::Status | Wire::Metrics => Request::Status,
                    Wire::Snapshot { dir } => Request::Snapshot { dir },
                    Wire::Migrate { to, downtime_ms } => Request::Migrate { to, downtime_ms },
                };
                let (tx, rx) = channel();
                ANSWERING.fetch_add(1, Ordering::SeqCst);
                if events.send(Event::Control(req, tx)).is_err() {
                    ANSWERING.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                match rx.recv_timeout(ANSWER_WITHIN) {
                    Ok(reply) => reply,
                    Err(RecvTimeoutError::Disconnected) => Reply::Error("the VM stopped".into()),
                    Err(RecvTimeoutError::Timeout) => Reply::Error(format!(
                        "the VM did not answer within {} s (its machine loop is held up, e.g. a primary waiting \
                         for its secondary's acknowledgements)",
                        ANSWER_WITHIN.as_secs()
                    )),
                }
            }
        };
        let mut answer = answer(reply);
        if as_metrics && answer.ok {
            let text = prometheus(&answer.fields);
            answer.fields = serde_json::Map::from_iter([("text".to_string(), text.into())]);
        }
        let mut text = serde_json::to_string(&answer).expect("serialisable");
        text.push('\n');
        let written = out.write_all(text.as_bytes());
        if answered {
            ANSWERING.fetch_sub(1, Ordering::SeqCst);
        }
        if written.is_err() {
            return;
        }
    }
}

/// Client side: sends one request line and returns the reply line.
pub fn call(path: &Path, request: &serde_json::Value) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    // The server answers within ANSWER_WITHIN, with an error if need be; this only guards against a wedged one.
    s.set_read_timeout(Some(ANSWER_WITHIN * 2))?;
    let mut line = request.to_string();
    line.push('\n');
    // A server that refuses the connection (too many clients) may answer and close before the request is
    // written: its answer is still there to read.
    let sent = s.write_all(line.as_bytes());
    let mut reply = String::new();
    match (sent, BufReader::new(s).read_line(&mut reply)) {
        (Err(e), Ok(0) | Err(_)) | (Ok(()), Err(e)) => Err(e),
        _ => Ok(reply.trim_end().to_string()),
    }
}
