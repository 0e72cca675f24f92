//! The one message framing of both kemari protocols (replication and live migration), on a [`crate::Channel`].
//!
//! ```text
//!  message   kind u8 │ length u64 LE │ payload (length bytes)
//!  HELLO     first message of a session, from the side that connected:
//!            magic [4] │ version u32 LE │ what the protocol introduces (shape, node, ...)
//!  REFUSE    kind 0xFF, payload a UTF-8 reason: the answer to a session (or a message) a node will not take,
//!            sent before it closes the connection, so that the other side can say why
//! ```
//!
//! Each protocol has its own magic and message kinds (below [`REFUSE`]) and a *version window*: the oldest and
//! the newest version it speaks. A receiver accepts a HELLO whose version lies in its window, and answers one
//! outside it with a REFUSE naming both; so a pair is upgraded receiving side first (a standby, a migration
//! target), whose window still holds the old version.
//!
//! Everything read is untrusted: a length above what the reader allows for the message is refused before a
//! byte of it is read, and memory grows only as bytes arrive, so a header that claims gigabytes costs
//! nothing until they come.

use std::io::{self, Read, Write};
use std::ops::RangeInclusive;

/// The kind of a refusal, in every protocol.
pub const REFUSE: u8 = 0xff;
/// Longest refusal reason sent or read.
pub const MAX_REASON: usize = 1024;
/// Memory reserved for a message before its bytes arrive (it grows as they do).
const RESERVE_AHEAD: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the peer")]
    Closed,
    #[error("message of {len} bytes is too large (at most {max} here)")]
    TooLarge { len: u64, max: u64 },
    #[error("connection closed inside a message of {0} bytes")]
    Truncated(u64),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Messages up to this size are written in one piece.
const ONE_WRITE: usize = 4096;

/// Writes one message made of `parts` (sent back to back, so a large state needs no extra copy). A small one
/// (an ACK, a heartbeat, an input) goes in one write: on an unbuffered TLS link each write is a record of its
/// own and, with TCP_NODELAY, at least one segment.
pub fn send(w: &mut (impl Write + ?Sized), kind: u8, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(len as u64).to_le_bytes());
    if len <= ONE_WRITE {
        let mut msg = Vec::with_capacity(head.len() + len);
        msg.extend_from_slice(&head);
        parts.iter().for_each(|p| msg.extend_from_slice(p));
        w.write_all(&msg)?;
    } else {
        w.write_all(&head)?;
        for p in parts {
            w.write_all(p)?;
        }
    }
    w.flush()
}

/// Tells the peer why its session (or message) is refused; errors are ignored (the connection closes next
/// anyway, and a peer that went away needs no reason).
pub fn refuse(w: &mut (impl Write + ?Sized), why: &str) {
    let mut end = why.len().min(MAX_REASON);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let _ = send(w, REFUSE, &[&why.as_bytes()[..end]]);
}

/// Reads one message of at most `max` bytes into `payload` (reused: no allocation per message). Returns its
/// kind; a REFUSE comes back as [`FrameError::Refused`] with the peer's reason.
pub fn receive_into(r: &mut (impl Read + ?Sized), payload: &mut Vec<u8>, max: u64) -> Result<u8, FrameError> {
    let mut head = [0u8; 9];
    if let Err(e) = r.read_exact(&mut head) {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof { FrameError::Closed } else { e.into() });
    }
    let kind = head[0];
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    let max = if kind == REFUSE { MAX_REASON as u64 } else { max };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    payload.clear();
    payload.reserve(len.min(RESERVE_AHEAD) as usize);
    let got = r.take(len).read_to_end(payload)?;
    if got as u64 != len {
        return Err(FrameError::Truncated(len));
    }
    if kind == REFUSE {
        return Err(FrameError::Refused(String::from_utf8_lossy(payload).into_owned()));
    }
    Ok(kind)
}

/// Reads one message of at most `max` bytes: its kind and payload.
pub fn receive(r: &mut (impl Read + ?Sized), max: u64) -> Result<(u8, Vec<u8>), FrameError> {
    let mut payload = Vec::new();
    let kind = receive_into(r, &mut payload, max)?;
    Ok((kind, payload))
}

/// A protocol's HELLO preamble: its magic and the versions it speaks.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// Names the protocol in errors ("replication", "migration").
    pub name: &'static str,
    pub magic: [u8; 4],
    /// The oldest and the newest version this kemari speaks; it sends the newest.
    pub versions: RangeInclusive<u32>,
}

impl Protocol {
    /// The preamble a HELLO starts with.
    pub fn preamble(&self) -> Vec<u8> {
        let mut v = self.magic.to_vec();
        v.extend_from_slice(&self.versions.end().to_le_bytes());
        v
    }

    /// Checks a HELLO's preamble; returns the version the peer speaks and the rest of the HELLO. The error is
    /// the reason to send back in a REFUSE.
    pub fn accept<'a>(&self, hello: &'a [u8]) -> Result<(u32, Cursor<'a>), String> {
        let mut c = Cursor::new(hello);
        if c.take(4) != Some(&self.magic[..]) {
            return Err(format!("not a kemari {} session (bad magic)", self.name));
        }
        let version = c.u32().ok_or_else(|| format!("truncated {} HELLO", self.name))?;
        if !self.versions.contains(&version) {
            let (oldest, newest) = (self.versions.start(), self.versions.end());
            let upgrade = if version > *newest { "this node" } else { "the other node" };
            return Err(format!(
                "{} protocol version {version}, this kemari speaks {oldest} to {newest}: upgrade {upgrade}",
                self.name
            ));
        }
        Ok((version, c))
    }
}

/// Reads little-endian fields from an untrusted payload; `None` when it is too short.
#[derive(Debug)]
pub struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor(bytes)
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// What is left unread.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes made to it.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_small_message_is_one_write_a_large_one_is_not_copied() {
        let mut w = Writes::default();
        send(&mut w, 4, &[&7u64.to_le_bytes()]).unwrap();
        assert_eq!(w.0, [17], "an ACK must leave as one TLS record and one segment");
        let big = vec![0u8; ONE_WRITE + 1];
        let mut w = Writes::default();
        send(&mut w, 2, &[&7u64.to_le_bytes(), &big]).unwrap();
        assert_eq!(w.0, [9, 8, ONE_WRITE + 1]);
    }

    #[test]
    fn messages_round_trip_and_bad_lengths_are_refused_unread() {
        let mut buf = Vec::new();
        send(&mut buf, 5, &[&7u64.to_le_bytes(), b"state"]).unwrap();
        let (kind, payload) = receive(&mut buf.as_slice(), 64).unwrap();
        assert_eq!((kind, &payload[..8], &payload[8..]), (5, &7u64.to_le_bytes()[..], &b"state"[..]));
        assert!(matches!(receive(&mut buf.as_slice(), 12), Err(FrameError::TooLarge { len: 13, max: 12 })));
        assert!(matches!(receive(&mut &buf[..5], 64), Err(FrameError::Closed)));
        assert!(matches!(receive(&mut &buf[..12], 64), Err(FrameError::Truncated(13))));
        // A header that claims more than arrives costs only what arrived.
        let mut short = vec![5];
        short.extend_from_slice(&(4u64 << 30).to_le_bytes());
        short.extend_from_slice(b"abc");
        assert!(matches!(receive(&mut short.as_slice(), u64::MAX), Err(FrameError::Truncated(_))));
    }

    #[test]
    fn a_refusal_carries_its_reason_and_is_capped() {
        let mut buf = Vec::new();
        refuse(&mut buf, "disk 0 is 1 byte here");
        match receive(&mut buf.as_slice(), 0) {
            Err(FrameError::Refused(why)) => assert_eq!(why, "disk 0 is 1 byte here"),
            other => panic!("{other:?}"),
        }
        let mut buf = Vec::new();
        refuse(&mut buf, &"é".repeat(MAX_REASON));
        let Err(FrameError::Refused(why)) = receive(&mut buf.as_slice(), 0) else { panic!() };
        assert!(why.len() <= MAX_REASON && why.chars().all(|c| c == 'é'));
        // A REFUSE longer than any reason is not read.
        let mut huge = vec![REFUSE];
        huge.extend_from_slice(&(MAX_REASON as u64 + 1).to_le_bytes());
        assert!(matches!(receive(&mut huge.as_slice(), u64::MAX), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn a_hello_is_accepted_only_within_the_version_window() {
        let ours = Protocol { name: "test", magic: *b"TEST", versions: 2..=3 };
        let mut hello = ours.preamble();
        hello.push(9);
        let (version, rest) = ours.accept(&hello).unwrap();
        assert_eq!((version, rest.rest()), (3, &[9u8][..]));
        let older = Protocol { versions: 1..=2, ..ours.clone() };
        assert_eq!(ours.accept(&older.preamble()).unwrap().0, 2, "an older peer inside the window");
        let newer = Protocol { versions: 1..=4, ..ours.clone() };
        let why = ours.accept(&newer.preamble()).unwrap_err();
        assert!(why.contains("version 4, this kemari speaks 2 to 3: upgrade this node"), "{why}");
        let oldest = Protocol { versions: 1..=1, ..ours.clone() };
        assert!(ours.accept(&oldest.preamble()).unwrap_err().contains("upgrade the other node"));
        assert!(ours.accept(b"XXXX\x03\0\0\0").unwrap_err().contains("bad magic"));
        assert!(ours.accept(b"TEST\x03").unwrap_err().contains("truncated"));
    }
}
