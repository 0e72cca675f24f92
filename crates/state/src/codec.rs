//! Framing: header, sections, checksums, and the primitive readers/writers section codecs use.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crc32fast::Hasher;

pub const MAGIC: &[u8; 8] = b"KEMARIST";
/// Version of the framing. A reader accepts only versions it knows.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const SECTION_HEADER_LEN: usize = 10;
/// No stream has more sections than this (enough for every page of the largest machine: 64 GiB in 4 MiB
/// sections, and the rest).
pub const MAX_SECTIONS: u32 = 1 << 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a kemari state stream (bad magic)")]
    BadMagic,
    #[error("state format version {0} is not supported (this kemari reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("state stream truncated: {0}")]
    Truncated(String),
    #[error("state stream checksum mismatch over the whole stream")]
    StreamChecksum,
    #[error("section {0}: checksum mismatch")]
    SectionChecksum(String),
    #[error("section {tag}: length {len} exceeds its cap of {cap}")]
    TooLong { tag: String, len: u32, cap: u32 },
    #[error("section {tag}: version {version} is not supported")]
    SectionVersion { tag: String, version: u16 },
    #[error("{0} sections is more than the format allows")]
    TooManySections(u32),
    #[error("section {0} appears twice")]
    Duplicate(String),
    #[error("section {0} is missing")]
    Missing(String),
    #[error("{0} trailing bytes after the stream")]
    TrailingBytes(usize),
    #[error("section {tag}: {why}")]
    Invalid { tag: String, why: String },
}

/// A section type: its tag, the version written, and the largest payload accepted.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub tag: [u8; 4],
    pub version: u16,
    pub cap: u32,
}

impl Section {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.tag).into_owned()
    }
}

fn tag_name(tag: &[u8; 4]) -> String {
    tag.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

/// Writes a stream section by section into one buffer: payloads are written in place (a page goes from guest
/// memory straight into the stream), and the stream checksum is combined from the sections' checksums rather
/// than computed over every byte a second time.
pub struct Encoder {
    out: Vec<u8>,
    count: u32,
    /// Checksum of everything after the header.
    body: Hasher,
    /// The first thing written that a decoder would refuse (reported by `finish`).
    refused: Option<StateError>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::with_capacity(0)
    }
}

impl Encoder {
    pub fn with_capacity(bytes: usize) -> Encoder {
        Encoder::reusing(Vec::new(), bytes)
    }

    /// Writes into `out` (cleared; its allocation reused: no fresh pages to fault in for every batch).
    pub fn reusing(mut out: Vec<u8>, bytes: usize) -> Encoder {
        out.clear();
        out.reserve(HEADER_LEN + bytes + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // section count, set by `finish`
        Encoder { out, count: 0, body: Hasher::new(), refused: None }
    }

    /// Appends a section whose payload `fill` writes.
    pub fn section(&mut self, section: &Section, fill: impl FnOnce(&mut Writer)) {
        let start = self.out.len();
        self.out.extend_from_slice(&section.tag);
        self.out.extend_from_slice(&section.version.to_le_bytes());
        self.out.extend_from_slice(&0u32.to_le_bytes());
        let mut w = Writer(std::mem::take(&mut self.out));
        fill(&mut w);
        self.out = w.0;
        let len = self.out.len() - start - SECTION_HEADER_LEN;
        if self.refused.is_none() {
            if len > section.cap as usize {
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                self.refused = Some(StateError::TooLong { tag: section.name(), len, cap: section.cap });
            } else if self.count >= MAX_SECTIONS {
                self.refused = Some(StateError::TooManySections(self.count + 1));
            }
        }
        self.out[start + 6..start + SECTION_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        let mut h = Hasher::new();
        h.update(&self.out[start..]);
        let crc = h.clone().finalize().to_le_bytes();
        self.body.combine(&h);
        self.body.update(&crc);
        self.out.extend_from_slice(&crc);
        self.count += 1;
    }

    /// Appends a section with this payload.
    pub fn push(&mut self, section: &Section, payload: &[u8]) {
        self.section(section, |w| w.0.extend_from_slice(payload));
    }

    /// The finished stream; an error instead when it holds what a decoder would refuse (a section over its
    /// cap, more than [`MAX_SECTIONS`]): a stream that cannot be read back must not be written.
    pub fn finish(mut self) -> Result<Vec<u8>, StateError> {
        match self.refused.take() {
            Some(e) => Err(e),
            None => Ok(self.finish_unchecked()),
        }
    }

    /// The finished stream, whatever it holds.
    fn finish_unchecked(mut self) -> Vec<u8> {
        self.out[12..HEADER_LEN].copy_from_slice(&self.count.to_le_bytes());
        let mut h = Hasher::new();
        h.update(&self.out[..HEADER_LEN]);
        h.combine(&self.body);
        let crc = h.finalize();
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.out
    }
}

/// A stream's sections: built with [`StateFile::push`] and encoded, or decoded (then the payloads borrow
/// from the stream), for section codecs to parse.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StateFile<'a> {
    sections: Vec<([u8; 4], u16, Cow<'a, [u8]>)>,
}

impl StateFile<'static> {
    pub fn new() -> StateFile<'static> {
        StateFile::default()
    }
}

impl<'a> StateFile<'a> {
    /// Adds a section (sections are written in insertion order).
    pub fn push(&mut self, section: &Section, payload: Vec<u8>) {
        self.sections.push((section.tag, section.version, Cow::Owned(payload)));
    }

    /// Payloads of every section with `section`'s tag, in stream order, checked against its cap and version.
    pub fn all(&self, section: &Section) -> Result<Vec<&[u8]>, StateError> {
        let mut out = Vec::new();
        for (tag, version, payload) in &self.sections {
            if *tag != section.tag {
                continue;
            }
            if *version != section.version {
                return Err(StateError::SectionVersion { tag: section.name(), version: *version });
            }
            out.push(&payload[..]);
        }
        Ok(out)
    }

    /// The one payload of a section that must appear exactly once.
    pub fn one(&self, section: &Section) -> Result<&[u8], StateError> {
        let all = self.all(section)?;
        match all.len() {
            0 => Err(StateError::Missing(section.name())),
            1 => Ok(all[0]),
            _ => Err(StateError::Duplicate(section.name())),
        }
    }

    /// Encodes the sections as they are, also what a decoder would refuse (tests make such streams).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(self.sections.iter().map(|s| s.2.len() + 14).sum());
        for (tag, version, payload) in &self.sections {
            // The section's own version, which may differ from what this kemari writes (tests make such
            // streams).
            e.push(&Section { tag: *tag, version: *version, cap: u32::MAX }, payload);
        }
        e.finish_unchecked()
    }

    /// Parses and checks the framing. `caps` gives the length cap of every known tag; unknown tags are
    /// rejected (a stream from a newer kemari must not be half-understood).
    pub fn decode(bytes: &'a [u8], known: &[Section]) -> Result<StateFile<'a>, StateError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(StateError::BadMagic);
        }
        let mut r = Reader::new(&bytes[8..], "header");
        let version = r.u32().map_err(|_| StateError::Truncated("in the header".into()))?;
        if version != FORMAT_VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        let count = r.u32().map_err(|_| StateError::Truncated("in the header".into()))?;
        if count > MAX_SECTIONS {
            return Err(StateError::TooManySections(count));
        }
        let caps: BTreeMap<[u8; 4], u32> = known.iter().map(|s| (s.tag, s.cap)).collect();
        let mut pos = HEADER_LEN;
        let mut sections = Vec::with_capacity(count as usize);
        let mut stream = Hasher::new();
        stream.update(&bytes[..HEADER_LEN]);
        for i in 0..count {
            let head = bytes
                .get(pos..pos + SECTION_HEADER_LEN)
                .ok_or_else(|| StateError::Truncated(format!("at the header of section {}", i + 1)))?;
            let tag: [u8; 4] = head[..4].try_into().expect("4 bytes");
            let name = tag_name(&tag);
            let version = u16::from_le_bytes([head[4], head[5]]);
            let len = u32::from_le_bytes(head[6..10].try_into().expect("4 bytes"));
            let cap = *caps
                .get(&tag)
                .ok_or_else(|| StateError::Invalid { tag: name.clone(), why: "unknown section".into() })?;
            if len > cap {
                return Err(StateError::TooLong { tag: name, len, cap });
            }
            let end = pos + SECTION_HEADER_LEN + len as usize;
            let body = bytes.get(pos..end + 4).ok_or_else(|| StateError::Truncated(format!("in section {name}")))?;
            let (framed, crc) = body.split_at(body.len() - 4);
            let mut h = Hasher::new();
            h.update(framed);
            if h.clone().finalize() != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
                return Err(StateError::SectionChecksum(name));
            }
            stream.combine(&h);
            stream.update(crc);
            sections.push((tag, version, Cow::Borrowed(&framed[SECTION_HEADER_LEN..])));
            pos = end + 4;
        }
        let trailer = bytes.get(pos..pos + 4).ok_or_else(|| StateError::Truncated("at the trailer".into()))?;
        if stream.finalize() != u32::from_le_bytes(trailer.try_into().expect("4 bytes")) {
            return Err(StateError::StreamChecksum);
        }
        if bytes.len() > pos + 4 {
            return Err(StateError::TrailingBytes(bytes.len() - pos - 4));
        }
        Ok(StateFile { sections })
    }
}

/// Appends little-endian primitives to a section payload.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
}

/// Reads little-endian primitives from a section payload; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], tag: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, tag }
    }

    pub fn invalid(&self, why: impl Into<String>) -> StateError {
        StateError::Invalid { tag: self.tag.into(), why: why.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let s = self
            .buf
            .get(self.pos..self.pos.checked_add(n).ok_or_else(|| self.invalid("length overflow"))?)
            .ok_or_else(|| self.invalid(format!("payload ends early (need {n} bytes at offset {})", self.pos)))?;
        self.pos += n;
        Ok(s)
    }

    /// The next `n` bytes as they are.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        self.take(n)
    }

    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.invalid(format!("boolean {v}"))),
        }
    }
    pub fn bytes(&mut self, cap: usize) -> Result<&'a [u8], StateError> {
        let n = self.u32()? as usize;
        if n > cap {
            return Err(self.invalid(format!("byte string of {n} bytes exceeds {cap}")));
        }
        self.take(n)
    }

    /// Fails unless the whole payload was consumed.
    pub fn finish(self) -> Result<(), StateError> {
        if self.pos != self.buf.len() {
            return Err(self.invalid(format!("{} unexpected trailing bytes", self.buf.len() - self.pos)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: Section = Section { tag: *b"TINY", version: 1, cap: 4 };

    /// The encoder refuses what the decoder would refuse, with the decoder's own error.
    #[test]
    fn the_encoder_refuses_what_the_decoder_refuses() {
        let mut e = Encoder::default();
        e.push(&TINY, &[0; 5]);
        assert_eq!(e.finish(), Err(StateError::TooLong { tag: "TINY".into(), len: 5, cap: 4 }));
        let mut e = Encoder::default();
        for _ in 0..=MAX_SECTIONS {
            e.push(&TINY, &[]);
        }
        assert_eq!(e.finish(), Err(StateError::TooManySections(MAX_SECTIONS + 1)));
    }

    /// As many sections as the format allows are written and read back.
    #[test]
    fn a_stream_of_the_most_sections_reads_back() {
        let mut e = Encoder::default();
        for _ in 0..MAX_SECTIONS {
            e.push(&TINY, &[1, 2]);
        }
        let bytes = e.finish().unwrap();
        let f = StateFile::decode(&bytes, &[TINY]).unwrap();
        assert_eq!(f.all(&TINY).unwrap().len(), MAX_SECTIONS as usize);
    }
}
