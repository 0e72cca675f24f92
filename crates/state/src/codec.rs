//! Framing: header, sections, checksums, and the primitive readers/writers section codecs use.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crc32fast::Hasher;

pub const MAGIC: &[u8; 8] = b"KEMARIST";
/// Version of the framing written. A reader accepts only versions it knows: this one, and version 1 (no
/// architecture in the header; every such stream is of a RISC-V machine).
pub const FORMAT_VERSION: u32 = 2;
/// Magic, version, architecture, section count.
const HEADER_LEN: usize = 20;
/// Version 1's header: no architecture.
const HEADER_LEN_V1: usize = 16;

/// The architecture of the machine a stream describes, in the header: a stream is only ever applied to a
/// machine of its own architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    #[default]
    Riscv64,
    X86_64,
}

impl Arch {
    /// How streams and HELLOs name the architecture.
    pub fn tag(self) -> [u8; 4] {
        match self {
            Arch::Riscv64 => *b"RV64",
            Arch::X86_64 => *b"X64_",
        }
    }

    pub fn from_tag(tag: [u8; 4]) -> Option<Arch> {
        [Arch::Riscv64, Arch::X86_64].into_iter().find(|a| a.tag() == tag)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Riscv64 => "riscv64",
            Arch::X86_64 => "x86-64",
        })
    }
}
const SECTION_HEADER_LEN: usize = 10;
/// No stream has more sections than this (enough for every page of the largest machine: 64 GiB in 4 MiB
/// sections, and the rest).
pub const MAX_SECTIONS: u32 = 1 << 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a kemari state stream (bad magic)")]
    BadMagic,
    #[error("state format version {0} is not supported (this kemari reads versions 1 to {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("unknown machine architecture {0:?} in the state header")]
    UnknownArch(String),
    #[error("the state is of a {saved} machine, this one is {ours}")]
    WrongArch { saved: Arch, ours: Arch },
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

impl Encoder {
    /// A stream of a machine of `arch`, with room for `bytes` of sections.
    pub fn new(arch: Arch, bytes: usize) -> Encoder {
        Encoder::reusing(Vec::new(), arch, bytes)
    }

    /// Writes into `out` (cleared; its allocation reused: no fresh pages to fault in for every batch).
    pub fn reusing(mut out: Vec<u8>, arch: Arch, bytes: usize) -> Encoder {
        out.clear();
        out.reserve(HEADER_LEN + bytes + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&arch.tag());
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
        self.out[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&self.count.to_le_bytes());
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
    arch: Arch,
    sections: Vec<([u8; 4], u16, Cow<'a, [u8]>)>,
}

impl StateFile<'static> {
    /// An empty stream of a machine of `arch`.
    pub fn new(arch: Arch) -> StateFile<'static> {
        StateFile { arch, sections: Vec::new() }
    }
}

impl<'a> StateFile<'a> {
    /// The architecture of the machine the stream describes.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Fails unless the stream describes a machine of `ours`.
    pub fn expect_arch(&self, ours: Arch) -> Result<(), StateError> {
        match self.arch {
            saved if saved == ours => Ok(()),
            saved => Err(StateError::WrongArch { saved, ours }),
        }
    }

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
        let mut e = Encoder::new(self.arch, self.sections.iter().map(|s| s.2.len() + 14).sum());
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
        let truncated = |_| StateError::Truncated("in the header".into());
        let version = r.u32().map_err(truncated)?;
        let (arch, header_len) = match version {
            1 => (Arch::Riscv64, HEADER_LEN_V1),
            FORMAT_VERSION => {
                let tag: [u8; 4] = r.raw(4).map_err(truncated)?.try_into().expect("4 bytes");
                let arch = Arch::from_tag(tag).ok_or_else(|| StateError::UnknownArch(tag_name(&tag)))?;
                (arch, HEADER_LEN)
            }
            v => return Err(StateError::UnsupportedVersion(v)),
        };
        let count = r.u32().map_err(truncated)?;
        if count > MAX_SECTIONS {
            return Err(StateError::TooManySections(count));
        }
        let caps: BTreeMap<[u8; 4], u32> = known.iter().map(|s| (s.tag, s.cap)).collect();
        let mut pos = header_len;
        let mut sections = Vec::with_capacity(count as usize);
        let mut stream = Hasher::new();
        stream.update(&bytes[..header_len]);
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
        Ok(StateFile { arch, sections })
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
        let mut e = Encoder::new(Arch::Riscv64, 0);
        e.push(&TINY, &[0; 5]);
        assert_eq!(e.finish(), Err(StateError::TooLong { tag: "TINY".into(), len: 5, cap: 4 }));
        let mut e = Encoder::new(Arch::Riscv64, 0);
        for _ in 0..=MAX_SECTIONS {
            e.push(&TINY, &[]);
        }
        assert_eq!(e.finish(), Err(StateError::TooManySections(MAX_SECTIONS + 1)));
    }

    /// A version 1 stream (no architecture in the header) reads as a RISC-V machine's; a stream names its
    /// architecture, and an unknown one is refused by name.
    #[test]
    fn the_header_names_the_architecture_and_version_1_streams_still_read() {
        let mut e = Encoder::new(Arch::X86_64, 0);
        e.push(&TINY, &[7]);
        let v2 = e.finish().unwrap();
        let f = StateFile::decode(&v2, &[TINY]).unwrap();
        assert_eq!(f.arch(), Arch::X86_64);
        assert_eq!(
            f.expect_arch(Arch::Riscv64),
            Err(StateError::WrongArch { saved: Arch::X86_64, ours: Arch::Riscv64 })
        );
        assert_eq!(f.encode(), v2, "encode keeps the architecture");

        let with_trailer = |mut body: Vec<u8>| {
            body.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            body
        };
        let body = &v2[..v2.len() - 4];
        let mut v1 = body[..8].to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&body[16..]);
        let v1 = with_trailer(v1);
        let f = StateFile::decode(&v1, &[TINY]).unwrap();
        assert_eq!((f.arch(), f.one(&TINY).unwrap()), (Arch::Riscv64, &[7u8][..]));

        let mut unknown = body.to_vec();
        unknown[12..16].copy_from_slice(b"Z80?");
        assert_eq!(StateFile::decode(&with_trailer(unknown), &[TINY]), Err(StateError::UnknownArch("Z80?".into())));
    }

    /// As many sections as the format allows are written and read back.
    #[test]
    fn a_stream_of_the_most_sections_reads_back() {
        let mut e = Encoder::new(Arch::Riscv64, 0);
        for _ in 0..MAX_SECTIONS {
            e.push(&TINY, &[1, 2]);
        }
        let bytes = e.finish().unwrap();
        let f = StateFile::decode(&bytes, &[TINY]).unwrap();
        assert_eq!(f.all(&TINY).unwrap().len(), MAX_SECTIONS as usize);
    }
}
