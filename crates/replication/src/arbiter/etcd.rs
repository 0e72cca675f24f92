//! The etcd arbiter (`--arbiter etcd:HOST:PORT[,HOST:PORT...][/PREFIX]`): the same lease and fence as the file
//! arbiter, kept in an etcd cluster, for hosts that share no storage. Plain http to the members; the prefix
//! (default [`DEFAULT_PREFIX`]) belongs to one protected VM.
//!
//! # Records
//! - `PREFIX/fence`: `{"owner": NODE, "fence": N}`, on no lease: the fence outlives every holder.
//! - `PREFIX/holder`: the same record, attached to the holder's etcd lease: it exists exactly while that lease
//!   lives, and goes when the lease expires (holder dead, stopped or cut off) or is revoked ([`Arbiter::release`]).
//!
//! Every change is one transaction that compares before it writes both keys:
//! - acquire and take over: the fence key's `mod_revision` is the one we read AND the holder key does not exist
//!   → both records name us with fence N+1, the holder key on a fresh lease. So a node takes over only when the
//!   holder's lease is gone, and only from the fence it read ([`Arbiter::take_over`] also needs that fence to be
//!   the one it replicated, else [`TakeOver::Stale`]).
//! - bump the fence: the holder key is on our lease AND the fence key's `mod_revision` is the one we read.
//! - hold again after our own lease lapsed at etcd while nobody took over: as acquire, with our fence number.
//!
//! # Time: TTL, confirmation window, margin
//! `T` is `--heartbeat-timeout-ms`. We ask for a lease of `max(1 s, 2T)` rounded up to whole seconds (etcd's unit;
//! a member grants at least 1.5 election timeouts). [`Arbiter::renew`] notes `t0` on our monotonic clock, then
//! sends one keep-alive of our lease and one linearizable read of both keys together. When the keep-alive was
//! answered and the read shows the holder key on our lease, we are confirmed: [`Arbiter::check`] passes until
//! `t0 + min(T, TTL/2)`.
//!
//! Why that is safe: the etcd leader answered the keep-alive after `t0`, and etcd never revokes a lease earlier
//! than its TTL after the last keep-alive it answered (a new leader extends every lease by an election timeout
//! when it takes office). While our lease lives, the holder key exists and no other node's transaction can
//! succeed. So no other node can be active before `t0 + TTL`, while `check` stops at `t0 + TTL/2` at the latest:
//! a node cut off from the etcd majority stops releasing at least `TTL/2` (≥ T) before anyone may take over.
//! That margin absorbs different clock rates and a passing `check` followed by a slow release.
//!
//! Why `check` reads nothing from etcd: the primary renews every heartbeat (shorter than `T`), so the
//! confirmation it relies on is at most `T` old; a read per release would add a network round trip to every
//! release and would still not close the window between the check and the release (below). A key deleted by
//! hand is noticed at the next renewal.
//!
//! Every etcd call has a timeout of `T/2` (at least 20 ms); the next call after a failure goes to the next
//! endpoint, and calls fail at once (without I/O) for one timeout after a failure, so a node cut off from etcd
//! does not stall its guest on every round. Members without a leader refuse at once (`hasleader` metadata).
//!
//! # Answers
//! Only [`ArbiterError::Fenced`] (the fence record names another node or fence and the holder key is not on our
//! lease) and [`ArbiterError::NotHeld`] are final. An unreachable cluster, a lost quorum, a timeout
//! ([`ArbiterError::Unreachable`]), a lost compare-and-swap ([`ArbiterError::Raced`]), a record we did not write
//! ([`ArbiterError::BadRecord`]) and a lapsed confirmation ([`ArbiterError::Expired`]) mean "not now".
//! A transaction whose answer timed out may still have committed: the lease granted for it is remembered, and
//! when its holder key shows up, that was our own win (or our own fence bump), not another node's.
//!
//! # What the fence does not protect against (honest limits)
//! - Check-then-release is not atomic, as with the file arbiter: the outputs' destinations (a tap, a disk)
//!   do not check the fence. A node that passed `check` and is then stopped for longer than the margin (at least
//!   `TTL/2`) before its release can release one batch after another node took over. Network duplicates are
//!   harmless; a shared disk would need a target that rejects writes carrying an old fence.
//! - A node cut off from the etcd majority holds its outputs even while its secondary still acknowledges: safe,
//!   not live (its guest runs on, its outputs wait). If it loses its secondary too, the secondary takes over
//!   once the lease expired.
//! - No fast death detection (the file arbiter's `flock`): a SIGKILLed primary is replaced only when its lease
//!   expires at etcd, `TTL` after its last keep-alive plus etcd's expiry sweep (up to half a second).
//! - Dropping the arbiter behaves like dying (the lease stays until it expires); a clean stop calls `release`.
//! - No TLS or authentication to etcd yet.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

use super::{check_node, now_unix_ms, Arbiter, ArbiterError, Lease, TakeOver};

/// Prefix of the keys when the spec names none.
pub const DEFAULT_PREFIX: &str = "/kemari";
/// No call waits less than this for an answer.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(20);

/// What both keys hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    owner: String,
    fence: u64,
}

/// Both keys, read at one revision.
#[derive(Debug)]
struct Stored {
    /// The fence record; None when it was never written.
    record: Option<Record>,
    /// The fence key's `mod_revision` (0 when missing: etcd compares a missing key's revisions as 0).
    rev: i64,
    /// The holder record and the lease it is attached to; None while no lease holds it.
    holder: Option<(Record, i64)>,
}

impl Stored {
    fn fence(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.fence)
    }
}

#[derive(Clone, Copy, Debug)]
struct Held {
    fence: u64,
    /// Our etcd lease, holding the holder key.
    lease: i64,
    /// The fence key's `mod_revision` when we last read or wrote it.
    rev: i64,
    /// `check` passes before this instant (monotonic), set by each confirmation.
    deadline: Instant,
    /// How long one confirmation is valid: `min(T, TTL/2)`.
    window: Duration,
}

/// A lease granted for an acquire or takeover whose transaction's answer we have not seen.
#[derive(Clone, Copy, Debug)]
struct Pending {
    lease: i64,
    granted_at: Instant,
    window: Duration,
}

/// See the module doc.
pub struct EtcdArbiter {
    node: String,
    endpoints: Vec<String>,
    /// One client per endpoint, each on its own connection; `current` is the one in use.
    clients: Vec<Client>,
    current: usize,
    fence_key: String,
    holder_key: String,
    /// T: the longest a confirmation is trusted.
    window: Duration,
    /// Asked-for lease TTL in whole seconds.
    ttl_secs: i64,
    call_timeout: Duration,
    /// After a failed call: until when further calls fail at once, and why.
    quiet: Option<(Instant, String)>,
    held: Option<Held>,
    pending: Option<Pending>,
    /// Who took the lease from us, for `Fenced` answers without I/O.
    lost_to: Option<(String, u64)>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for EtcdArbiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdArbiter")
            .field("node", &self.node)
            .field("endpoints", &self.endpoints)
            .field("fence_key", &self.fence_key)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// Splits `HOST:PORT[,HOST:PORT...][/PREFIX]` into endpoints and the key prefix.
fn parse_spec(spec: &str) -> Result<(Vec<String>, String), ArbiterError> {
    let bad = |why: String| {
        ArbiterError::BadSpec(format!(
            "etcd:{spec}: {why}; expected etcd:HOST:PORT[,HOST:PORT...][/PREFIX], as in \
             etcd:10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/kemari/vm1"
        ))
    };
    if spec.contains("://") {
        return Err(bad("endpoints are HOST:PORT without a scheme (plain http)".into()));
    }
    let (list, prefix) = match spec.split_once('/') {
        Some((list, path)) => (list, format!("/{}", path.trim_end_matches('/'))),
        None => (spec, DEFAULT_PREFIX.to_string()),
    };
    if prefix == "/" || prefix.contains("//") || prefix.chars().any(char::is_control) {
        return Err(bad(format!("bad key prefix {prefix:?}")));
    }
    let mut endpoints = Vec::new();
    for ep in list.split(',') {
        match ep.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                endpoints.push(ep.to_string())
            }
            _ => return Err(bad(format!("{ep:?} is not HOST:PORT"))),
        }
    }
    Ok((endpoints, prefix))
}

fn encode(record: &Record) -> String {
    // A struct of a string and a number always serialises.
    serde_json::to_string(record).unwrap_or_default()
}

impl EtcdArbiter {
    /// An arbiter for `node` on the cluster named by `spec` (what follows `etcd:`), with `timeout` the heartbeat
    /// timeout (see the module doc for what follows from it). Connects lazily: an unreachable cluster shows at
    /// the first call, not here.
    pub fn new(spec: &str, node: &str, timeout: Duration) -> Result<EtcdArbiter, ArbiterError> {
        check_node(node)?;
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(86_400) {
            return Err(ArbiterError::BadSpec(format!(
                "heartbeat timeout {timeout:?} must be between 10 ms and one day"
            )));
        }
        let (endpoints, prefix) = parse_spec(spec)?;
        let ttl_secs = (2 * timeout.as_millis()).div_ceil(1000).max(1) as i64;
        let call_timeout = (timeout / 2).max(MIN_CALL_TIMEOUT);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            ArbiterError::Unreachable { what: "start", reason: format!("cannot start the etcd client runtime: {e}") }
        })?;
        let options = ConnectOptions::new()
            .with_connect_timeout(call_timeout)
            .with_timeout(call_timeout)
            .with_require_leader(true);
        let mut clients = Vec::new();
        for ep in &endpoints {
            let client = rt
                .block_on(Client::connect([ep.as_str()], Some(options.clone())))
                .map_err(|e| ArbiterError::BadSpec(format!("etcd endpoint {ep}: {e}")))?;
            clients.push(client);
        }
        Ok(EtcdArbiter {
            node: node.to_string(),
            endpoints,
            clients,
            current: 0,
            fence_key: format!("{prefix}/fence"),
            holder_key: format!("{prefix}/holder"),
            window: timeout,
            ttl_secs,
            call_timeout,
            quiet: None,
            held: None,
            pending: None,
            lost_to: None,
            rt,
        })
    }

    /// Runs one etcd call on the current endpoint within the call timeout. A failure moves to the next endpoint
    /// and makes calls fail at once for one timeout.
    fn call<T, F, Fut>(&mut self, what: &'static str, f: F) -> Result<T, ArbiterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        if let Some((until, reason)) = &self.quiet {
            if Instant::now() < *until {
                return Err(ArbiterError::Unreachable { what, reason: reason.clone() });
            }
        }
        let fut = f(self.clients[self.current].clone());
        let limit = self.call_timeout;
        // The timer must be made inside the runtime.
        let reason = match self.rt.block_on(async move { tokio::time::timeout(limit, fut).await }) {
            Ok(Ok(v)) => {
                self.quiet = None;
                return Ok(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.call_timeout),
        };
        let reason = format!("{}: {reason}", self.endpoints[self.current]);
        self.current = (self.current + 1) % self.clients.len();
        self.quiet = Some((Instant::now() + self.call_timeout, reason.clone()));
        Err(ArbiterError::Unreachable { what, reason })
    }

    fn parse(&self, key: &str, value: &[u8]) -> Result<Record, ArbiterError> {
        serde_json::from_slice(value)
            .map_err(|e| ArbiterError::BadRecord { key: key.to_string(), reason: e.to_string() })
    }

    /// Both keys at one revision (one linearizable range read from `PREFIX/fence` through `PREFIX/holder`).
    fn decode(&self, kvs: &[etcd_client::KeyValue]) -> Result<Stored, ArbiterError> {
        let mut stored = Stored { record: None, rev: 0, holder: None };
        for kv in kvs {
            if kv.key() == self.fence_key.as_bytes() {
                stored.record = Some(self.parse(&self.fence_key, kv.value())?);
                stored.rev = kv.mod_revision();
            } else if kv.key() == self.holder_key.as_bytes() {
                stored.holder = Some((self.parse(&self.holder_key, kv.value())?, kv.lease()));
            }
        }
        Ok(stored)
    }

    fn range(&self) -> (String, GetOptions) {
        let mut end = self.holder_key.clone().into_bytes();
        end.push(0);
        (self.fence_key.clone(), GetOptions::new().with_range(end))
    }

    fn read_store(&mut self) -> Result<Stored, ArbiterError> {
        let (key, opts) = self.range();
        let resp = self.call("read", |mut c| async move { c.get(key, Some(opts)).await })?;
        self.decode(resp.kvs())
    }

    /// A fresh lease: its id, and how long a confirmation made at `granted_at` lasts.
    fn grant(&mut self) -> Result<Pending, ArbiterError> {
        let granted_at = Instant::now();
        let ttl = self.ttl_secs;
        let resp = self.call("grant a lease", |mut c| async move { c.lease_grant(ttl, None).await })?;
        if resp.ttl() <= 0 || !resp.error().is_empty() {
            return Err(ArbiterError::Unreachable {
                what: "grant a lease",
                reason: format!("refused (ttl {}): {}", resp.ttl(), resp.error()),
            });
        }
        let half = Duration::from_secs(resp.ttl() as u64) / 2;
        Ok(Pending { lease: resp.id(), granted_at, window: self.window.min(half) })
    }

    /// The compare-and-swap that writes both records naming us with `fence`, the holder key on `lease`.
    /// `Ok(Some(revision))` when it applied.
    fn swap(
        &mut self,
        what: &'static str,
        when: Vec<Compare>,
        fence: u64,
        lease: i64,
    ) -> Result<Option<i64>, ArbiterError> {
        let value = encode(&Record { owner: self.node.clone(), fence });
        let txn = Txn::new().when(when).and_then([
            TxnOp::put(self.fence_key.clone(), value.clone(), None),
            TxnOp::put(self.holder_key.clone(), value, Some(PutOptions::new().with_lease(lease))),
        ]);
        let resp = self.call(what, |mut c| async move { c.txn(txn).await })?;
        Ok(resp.succeeded().then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Takes the free lease (the holder key is absent in `stored`) with `fence`. `Ok(true)` when we hold it now,
    /// `Ok(false)` when another node was faster.
    fn hold_new(&mut self, stored: &Stored, fence: u64, what: &'static str) -> Result<bool, ArbiterError> {
        let grant = self.grant()?;
        self.pending = Some(grant);
        let when = vec![
            Compare::mod_revision(self.fence_key.clone(), CompareOp::Equal, stored.rev),
            Compare::create_revision(self.holder_key.clone(), CompareOp::Equal, 0),
        ];
        // On an error the lease stays pending: the transaction may have committed (see `adopt_pending`).
        let applied = self.swap(what, when, fence, grant.lease)?;
        self.pending = None;
        let Some(rev) = applied else {
            // Best effort: a lease holding no key costs etcd little and expires by itself.
            let lease = grant.lease;
            let _ = self.call("revoke an unused lease", |mut c| async move { c.lease_revoke(lease).await });
            return Ok(false);
        };
        self.held = Some(Held {
            fence,
            lease: grant.lease,
            rev,
            deadline: grant.granted_at + grant.window,
            window: grant.window,
        });
        self.lost_to = None;
        Ok(true)
    }

    /// A transaction of ours whose answer we missed did commit when the holder key sits on its lease.
    fn adopt_pending(&mut self, stored: &Stored) -> Option<u64> {
        let p = self.pending.take()?;
        let (record, lease) = stored.holder.as_ref()?;
        if *lease != p.lease || record.owner != self.node {
            return None;
        }
        let fence = stored.fence();
        self.held =
            Some(Held { fence, lease: p.lease, rev: stored.rev, deadline: p.granted_at + p.window, window: p.window });
        self.lost_to = None;
        tracing::info!(node = %self.node, fence, "arbiter: a transaction whose answer was lost had taken the lease");
        Some(fence)
    }

    /// The stored records are someone else's now: stop being active at once.
    fn lose(&mut self, record: Option<&Record>) -> ArbiterError {
        let (owner, fence) = record.map_or((String::new(), 0), |r| (r.owner.clone(), r.fence));
        tracing::warn!(node = %self.node, %owner, fence, "arbiter: fenced, lease lost");
        self.held = None;
        self.lost_to = Some((owner.clone(), fence));
        ArbiterError::Fenced { owner, fence }
    }

    fn not_held(&self) -> ArbiterError {
        match &self.lost_to {
            Some((owner, fence)) => ArbiterError::Fenced { owner: owner.clone(), fence: *fence },
            None => ArbiterError::NotHeld { node: self.node.clone() },
        }
    }

    /// Wall-clock ms when `lease` expires, by etcd's count of its remaining seconds (0 when it is gone).
    fn expires_unix_ms(&mut self, lease: i64) -> Result<u64, ArbiterError> {
        let resp = self.call("read a lease", |mut c| async move { c.lease_time_to_live(lease, None).await })?;
        Ok(if resp.ttl() > 0 { now_unix_ms() + resp.ttl() as u64 * 1000 } else { 0 })
    }
}

impl Arbiter for EtcdArbiter {
    fn node(&self) -> &str {
        &self.node
    }

    fn acquire(&mut self) -> Result<u64, ArbiterError> {
        if let Some(held) = self.held {
            return self.renew().map(|()| self.held.map_or(held.fence, |h| h.fence));
        }
        let stored = self.read_store()?;
        if let Some(fence) = self.adopt_pending(&stored) {
            return Ok(fence);
        }
        // Another process with our node name counts as another holder, as with the file arbiter.
        if let Some((record, lease)) = &stored.holder {
            let (owner, fence, lease) = (record.owner.clone(), record.fence, *lease);
            let expires_unix_ms = self.expires_unix_ms(lease).unwrap_or(0);
            return Err(ArbiterError::Held { owner, fence, expires_unix_ms });
        }
        let fence = next_fence(&self.fence_key, stored.fence())?;
        if !self.hold_new(&stored, fence, "acquire")? {
            return Err(ArbiterError::Raced { what: "acquire" });
        }
        let previous = stored.record.map(|r| r.owner).unwrap_or_default();
        tracing::info!(node = %self.node, fence, %previous, "arbiter: acquired lease (etcd)");
        Ok(fence)
    }

    fn renew(&mut self) -> Result<(), ArbiterError> {
        let held = self.held.ok_or_else(|| self.not_held())?;
        let t0 = Instant::now();
        let (key, opts) = self.range();
        let lease = held.lease;
        // Keep-alive and read together: both leave after t0. The keep-alive's own error is kept, not the call's.
        let (alive, resp) = self.call("renew", |c| async move {
            let (mut kc, mut rc) = (c.clone(), c);
            let (alive, read) = tokio::join!(kc.lease_keep_alive(lease), rc.get(key, Some(opts)));
            Ok((alive.map(drop), read?))
        })?;
        let stored = self.decode(resp.kvs())?;
        // An earlier renewal's lost answer: it held the lease again on a new lease.
        if self.adopt_pending(&stored).is_some() {
            return Ok(());
        }
        let ours = |r: &Record| r.owner == self.node;
        match (&stored.holder, &stored.record) {
            // Our lease still holds the holder key: confirmed once the keep-alive was answered too. The fence is
            // the stored one (a bump of ours whose answer we missed may have moved it).
            (Some((_, l)), Some(record)) if *l == held.lease && ours(record) => {
                if let Err(e) = alive {
                    return Err(ArbiterError::Unreachable { what: "renew", reason: format!("keep-alive: {e}") });
                }
                self.held = Some(Held { fence: record.fence, rev: stored.rev, deadline: t0 + held.window, ..held });
                Ok(())
            }
            (Some((_, l)), _) if *l == held.lease => Err(ArbiterError::BadRecord {
                key: self.fence_key.clone(),
                reason: format!("does not name {} while the holder key is on its lease", self.node),
            }),
            // Our lease lapsed at etcd and nobody took over: hold again with the same fence.
            (None, Some(record)) if ours(record) && record.fence == held.fence => {
                tracing::warn!(node = %self.node, fence = held.fence, "arbiter: etcd lease lapsed; holding again");
                if self.hold_new(&stored, held.fence, "renew")? {
                    Ok(())
                } else {
                    Err(ArbiterError::Raced { what: "renew" })
                }
            }
            (_, None) => Err(ArbiterError::BadRecord {
                key: self.fence_key.clone(),
                reason: "missing while this node holds the lease (deleted by hand?)".into(),
            }),
            (_, Some(record)) => {
                let record = record.clone();
                Err(self.lose(Some(&record)))
            }
        }
    }

    fn check(&mut self) -> Result<(), ArbiterError> {
        let held = self.held.ok_or_else(|| self.not_held())?;
        if Instant::now() >= held.deadline {
            return Err(ArbiterError::Expired { fence: held.fence });
        }
        Ok(())
    }

    fn bump_fence(&mut self) -> Result<u64, ArbiterError> {
        // Confirmed first: go_alone releases on our answer without another check.
        self.renew()?;
        let held = self.held.ok_or_else(|| self.not_held())?;
        let fence = next_fence(&self.fence_key, held.fence)?;
        let when = vec![
            Compare::lease(self.holder_key.clone(), CompareOp::Equal, held.lease),
            Compare::mod_revision(self.fence_key.clone(), CompareOp::Equal, held.rev),
        ];
        let Some(rev) = self.swap("bump the fence", when, fence, held.lease)? else {
            return Err(ArbiterError::Raced { what: "bump the fence" });
        };
        self.held = Some(Held { fence, rev, ..held });
        tracing::info!(node = %self.node, fence, "arbiter: fence bumped (running unprotected)");
        Ok(fence)
    }

    fn take_over(&mut self, expected_fence: u64) -> Result<TakeOver, ArbiterError> {
        if let Some(held) = self.held {
            self.renew()?;
            return Ok(TakeOver::Won { fence: self.held.map_or(held.fence, |h| h.fence) });
        }
        let stored = self.read_store()?;
        if let Some(fence) = self.adopt_pending(&stored) {
            return Ok(TakeOver::Won { fence });
        }
        if stored.fence() != expected_fence {
            return Ok(TakeOver::Stale { fence: stored.fence() });
        }
        if stored.holder.is_some() {
            return Ok(TakeOver::Wait);
        }
        let fence = next_fence(&self.fence_key, expected_fence)?;
        if !self.hold_new(&stored, fence, "take over")? {
            return Ok(TakeOver::Wait);
        }
        let previous = stored.record.map(|r| r.owner).unwrap_or_default();
        tracing::info!(node = %self.node, fence, %previous, "arbiter: took over (the holder's etcd lease is gone)");
        Ok(TakeOver::Won { fence })
    }

    fn read(&mut self) -> Result<Lease, ArbiterError> {
        let stored = self.read_store()?;
        let expires_unix_ms = match &stored.holder {
            Some((_, lease)) => self.expires_unix_ms(*lease)?,
            None => 0,
        };
        let (owner, fence) = stored.record.map_or((String::new(), 0), |r| (r.owner, r.fence));
        Ok(Lease { owner, fence, expires_unix_ms, active_lock: false })
    }

    fn release(&mut self) -> Result<(), ArbiterError> {
        let Some(held) = self.held else { return Ok(()) };
        // Revoking the lease deletes the holder key; the fence record stays.
        let lease = held.lease;
        self.call("release", |mut c| async move { c.lease_revoke(lease).await })?;
        self.held = None;
        tracing::info!(node = %self.node, fence = held.fence, "arbiter: lease released (etcd)");
        Ok(())
    }
}

fn next_fence(key: &str, fence: u64) -> Result<u64, ArbiterError> {
    fence
        .checked_add(1)
        .ok_or_else(|| ArbiterError::BadRecord { key: key.to_string(), reason: "fence overflow".into() })
}

#[cfg(test)]
mod tests {
    //! Against a real etcd: one member on loopback per test, started by the test (Debian's `etcd-server`).
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    /// One etcd member on loopback with its data in a fresh directory; killed and removed on drop.
    struct Etcd {
        child: Child,
        dir: PathBuf,
        endpoint: String,
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    impl Etcd {
        fn start(tag: &str) -> Etcd {
            let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
            let dir = base.join(format!("kemari-etcd-unit-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("127.0.0.1:{client}");
            let (c, p) = (format!("http://{endpoint}"), format!("http://127.0.0.1:{peer}"));
            let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
            // Short raft timers: the smallest lease etcd then grants is 1 s.
            let child = Command::new("etcd")
                .args(["--name", "unit", "--data-dir"])
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
                .args(["--initial-cluster", &format!("unit={p}"), "--heartbeat-interval", "10"])
                .args(["--election-timeout", "100"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start etcd ({e}): the etcd arbiter tests need Debian's etcd-server")
                });
            let etcd = Etcd { child, dir, endpoint };
            let mut probe = etcd.arbiter("probe", 1000);
            let start = Instant::now();
            while let Err(e) = probe.read() {
                assert!(start.elapsed() < Duration::from_secs(30), "etcd did not come up: {e}\n{}", etcd.log());
                std::thread::sleep(Duration::from_millis(50));
            }
            etcd
        }

        fn arbiter(&self, node: &str, timeout_ms: u64) -> EtcdArbiter {
            EtcdArbiter::new(&format!("{}/test", self.endpoint), node, Duration::from_millis(timeout_ms)).unwrap()
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
        }

        fn signal(&self, sig: libc::c_int) {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
            if sig == libc::SIGSTOP {
                // kill(2) returns before every thread has stopped: wait until the process is seen stopped.
                let stat = format!("/proc/{}/stat", self.child.id());
                eventually(5, "etcd to stop", || {
                    let s = std::fs::read_to_string(&stat).ok()?;
                    let state = s.rsplit_once(") ")?.1.chars().next()?;
                    (state == 'T').then_some(())
                });
            }
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn assert_fenced(r: Result<(), ArbiterError>, owner: &str, fence: u64) {
        match r {
            Err(ArbiterError::Fenced { owner: o, fence: f }) if o == owner && f == fence => {}
            other => panic!("expected Fenced by {owner}/{fence}, got {other:?}"),
        }
    }

    /// Calls `f` until it returns Some, for at most `secs` seconds (a guard against hangs, not a timing claim).
    fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(secs), "never happened: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn spec_parsing() {
        let (eps, prefix) = parse_spec("10.0.0.1:2379,[::1]:2379,etcd-3:2379/vms/vm1/").unwrap();
        assert_eq!(
            (eps, prefix.as_str()),
            (vec!["10.0.0.1:2379".into(), "[::1]:2379".into(), "etcd-3:2379".into()], "/vms/vm1")
        );
        assert_eq!(parse_spec("h:1").unwrap().1, DEFAULT_PREFIX);
        for bad in ["", "h", "h:", ":1", "h:0", "h:70000", "h:1,", "http://h:1", "h:1/", "h:1/a//b"] {
            match parse_spec(bad) {
                Err(ArbiterError::BadSpec(m)) => assert!(m.contains("HOST:PORT"), "{m}"),
                other => panic!("{bad:?}: expected BadSpec, got {other:?}"),
            }
        }
        assert!(matches!(EtcdArbiter::new("h:1", "", Duration::from_secs(1)), Err(ArbiterError::BadSpec(_))));
        let a = super::super::from_spec("etcd:127.0.0.1:1/x", "a", Duration::from_millis(200)).unwrap();
        assert_eq!(a.node(), "a");
    }

    #[test]
    fn acquire_renew_check_held_and_release() {
        let etcd = Etcd::start("held");
        let mut a = etcd.arbiter("a", 1000);
        let mut b = etcd.arbiter("b", 1000);
        assert_eq!(a.read().unwrap(), Lease { owner: String::new(), fence: 0, expires_unix_ms: 0, active_lock: false });
        assert!(matches!(a.check(), Err(ArbiterError::NotHeld { .. })));
        assert_eq!(a.acquire().unwrap(), 1);
        a.check().unwrap();
        a.renew().unwrap();
        a.check().unwrap();
        assert_eq!(a.acquire().unwrap(), 1, "already ours: no new fence");
        match b.acquire() {
            Err(ArbiterError::Held { owner, fence: 1, expires_unix_ms }) => {
                assert_eq!(owner, "a");
                assert!(expires_unix_ms > now_unix_ms());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // The same node name in another process is another holder too.
        assert!(matches!(etcd.arbiter("a", 1000).acquire(), Err(ArbiterError::Held { .. })));
        let l = b.read().unwrap();
        assert_eq!((l.owner.as_str(), l.fence), ("a", 1));
        // Clean release: the holder key goes at once, the fence stays; the next holder bumps it.
        a.release().unwrap();
        assert!(matches!(a.check(), Err(ArbiterError::NotHeld { .. })));
        assert!(matches!(a.renew(), Err(ArbiterError::NotHeld { .. })));
        let l = b.read().unwrap();
        assert_eq!((l.owner.as_str(), l.fence, l.expires_unix_ms), ("a", 1, 0));
        assert_eq!(b.acquire().unwrap(), 2);
        b.check().unwrap();
    }

    #[test]
    fn take_over_waits_while_renewed_then_wins_after_expiry() {
        let etcd = Etcd::start("expiry");
        let timeout = 100; // lease of 1 s (the least etcd grants), confirmations valid for 100 ms
        let mut a = etcd.arbiter("a", timeout);
        let mut b = etcd.arbiter("b", timeout);
        assert_eq!(a.acquire().unwrap(), 1);
        let fence = b.read().unwrap().fence;
        // For more than two lease lifetimes the owner renews: the secondary must keep waiting, and the owner keeps
        // its one etcd lease (a lapse would show as a new one).
        let lease = a.held.unwrap().lease;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            a.renew().unwrap();
            a.check().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(b.take_over(fence).unwrap(), TakeOver::Wait);
        }
        assert_eq!(a.held.unwrap().lease, lease, "the renewals let the etcd lease lapse");
        // The owner stops renewing: its own clock stops it long before etcd lets the lease go.
        std::thread::sleep(Duration::from_millis(timeout + 20));
        assert!(matches!(a.check(), Err(ArbiterError::Expired { fence: 1 })));
        assert_eq!(b.take_over(fence).unwrap(), TakeOver::Wait, "the lease outlives the owner's window");
        let won = eventually(10, "takeover after expiry", || match b.take_over(fence).unwrap() {
            TakeOver::Wait => None,
            other => Some(other),
        });
        assert_eq!(won, TakeOver::Won { fence: 2 });
        b.check().unwrap();
        // a wakes up: fenced by renew, then by check and bump_fence without asking etcd.
        assert_fenced(a.renew(), "b", 2);
        assert_fenced(a.check(), "b", 2);
        assert_fenced(a.bump_fence().map(drop), "b", 2);
        b.renew().unwrap();
        let l = b.read().unwrap();
        assert_eq!((l.owner.as_str(), l.fence), ("b", 2));
    }

    #[test]
    fn bump_fence_makes_the_old_fence_stale() {
        let etcd = Etcd::start("stale");
        let mut a = etcd.arbiter("a", 1000);
        let mut b = etcd.arbiter("b", 1000);
        assert_eq!(a.acquire().unwrap(), 1);
        let seen = b.read().unwrap().fence;
        assert_eq!(a.bump_fence().unwrap(), 2);
        a.check().unwrap();
        a.renew().unwrap();
        assert_eq!(b.take_over(seen).unwrap(), TakeOver::Stale { fence: 2 });
        // Even with the holder gone.
        a.release().unwrap();
        assert_eq!(b.take_over(seen).unwrap(), TakeOver::Stale { fence: 2 });
        assert!(matches!(b.check(), Err(ArbiterError::NotHeld { .. })));
        // A secondary that knows the new fence may take over.
        assert_eq!(b.take_over(2).unwrap(), TakeOver::Won { fence: 3 });
        b.check().unwrap();
    }

    #[test]
    fn renew_after_the_lease_lapsed_holds_again_when_nobody_took_over() {
        let etcd = Etcd::start("lapsed");
        let mut a = etcd.arbiter("a", 1000);
        assert_eq!(a.acquire().unwrap(), 1);
        // The lease goes at etcd (as after a long pause of ours) with no one taking over.
        let lease = a.held.unwrap().lease;
        a.call("test revoke", |mut c| async move { c.lease_revoke(lease).await }).unwrap();
        a.renew().unwrap();
        a.check().unwrap();
        assert_ne!(a.held.unwrap().lease, lease);
        let l = a.read().unwrap();
        assert_eq!((l.owner.as_str(), l.fence), ("a", 1));
        assert!(l.expires_unix_ms > 0);
    }

    #[test]
    fn a_takeover_whose_answer_was_lost_is_adopted() {
        let etcd = Etcd::start("lost-answer");
        let mut b = etcd.arbiter("b", 1000);
        // b's transaction commits but its answer never arrives: the lease is still pending.
        let grant = b.grant().unwrap();
        b.pending = Some(grant);
        let when = vec![Compare::create_revision(b.holder_key.clone(), CompareOp::Equal, 0)];
        assert!(b.swap("test", when, 1, grant.lease).unwrap().is_some());
        assert_eq!(b.take_over(0).unwrap(), TakeOver::Won { fence: 1 }, "our own win, not Stale");
        b.renew().unwrap();
        b.check().unwrap();
    }

    #[test]
    fn an_unreachable_etcd_is_not_final() {
        // Nothing listens: every answer is "not now".
        let mut lonely =
            EtcdArbiter::new(&format!("127.0.0.1:{}", free_port()), "x", Duration::from_millis(200)).unwrap();
        assert!(matches!(lonely.acquire(), Err(ArbiterError::Unreachable { .. })));
        assert!(matches!(lonely.take_over(0), Err(ArbiterError::Unreachable { .. })));
        assert!(matches!(lonely.read(), Err(ArbiterError::Unreachable { .. })));

        let etcd = Etcd::start("unreachable");
        let mut a = etcd.arbiter("a", 300);
        assert_eq!(a.acquire().unwrap(), 1);
        // Frozen etcd (a partition as far as the client can tell): no answers, only timeouts.
        etcd.signal(libc::SIGSTOP);
        let renewed = a.renew();
        assert!(matches!(renewed, Err(ArbiterError::Unreachable { .. })), "{renewed:?}");
        assert!(matches!(a.renew(), Err(ArbiterError::Unreachable { .. })), "fails at once while quiet");
        eventually(5, "the confirmation window to pass", || a.check().is_err().then_some(()));
        assert!(matches!(a.check(), Err(ArbiterError::Expired { fence: 1 })));
        assert!(matches!(a.bump_fence(), Err(ArbiterError::Unreachable { .. })));
        etcd.signal(libc::SIGCONT);
        eventually(10, "renewal once etcd answers again", || a.renew().ok());
        a.check().unwrap();
        assert_eq!(a.read().unwrap().fence, 1);
    }

    /// Figures, not assertions: what a check and a renewal cost against a local etcd.
    #[test]
    fn check_and_renew_cost() {
        let etcd = Etcd::start("cost");
        let mut a = etcd.arbiter("a", 1000);
        a.acquire().unwrap();
        let t = Instant::now();
        for _ in 0..10_000 {
            a.check().unwrap();
        }
        let check = t.elapsed() / 10_000;
        let t = Instant::now();
        for _ in 0..100 {
            a.renew().unwrap();
        }
        println!("etcd arbiter: check() {check:?}, renew() {:?} per call", t.elapsed() / 100);
    }
}
