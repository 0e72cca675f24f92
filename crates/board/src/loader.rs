//! Loading what the guest boots: a Linux `Image`, an initrd, the device tree, or a bare-metal ELF.

use std::path::Path;

use goblin::elf::{header::EM_RISCV, program_header::PT_LOAD, Elf};
use kemari_memory::GuestRam;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error("kernel {0} is truncated: {1} bytes is shorter than a Linux Image header")]
    KernelTruncated(String, usize),
    #[error("kernel {0} is an ELF file for {1}; kemari boots a RISC-V Linux Image (arch/riscv/boot/Image)")]
    KernelIsElf(String, String),
    #[error("kernel {0} is not a RISC-V Linux Image (no RSC\\x05 magic in its header)")]
    KernelBadMagic(String),
    #[error("{what} {path} needs {need} bytes at {addr:#x}, beyond guest RAM; raise --memory")]
    DoesNotFit { what: &'static str, path: String, addr: u64, need: u64 },
    #[error("firmware {0} is not an ELF file: {1}")]
    NotElf(String, String),
    #[error("firmware {0} is an ELF file for {1}, not RISC-V")]
    WrongArch(String, String),
    #[error("firmware {0} is a 32-bit ELF; kemari runs RV64")]
    Elf32(String),
    #[error("firmware {path}: segment at {addr:#x} ({size} bytes) lies outside guest RAM")]
    SegmentOutsideRam { path: String, addr: u64, size: u64 },
    #[error("firmware {0}: segment data beyond the end of the file")]
    SegmentTruncated(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read { what, path: path.display().to_string(), source })
}

/// Human name of an ELF machine number.
fn machine_name(m: u16) -> String {
    match m {
        3 => "x86".into(),
        62 => "x86-64".into(),
        40 => "ARM".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        8 => "MIPS".into(),
        21 => "PowerPC64".into(),
        other => format!("machine type {other}"),
    }
}

/// A loaded kernel: where it lies and how much RAM it claims (text, data and bss).
pub struct LoadedKernel {
    pub entry: u64,
    pub end: u64,
}

/// Loads a Linux `Image` at `RAM + 2 MiB`.
pub fn load_kernel(ram: &GuestRam, path: &Path) -> Result<LoadedKernel, LoadError> {
    let name = path.display().to_string();
    let data = read("kernel", path)?;
    if data.starts_with(b"\x7fELF") {
        let m = if data.len() >= 20 { u16::from_le_bytes([data[18], data[19]]) } else { 0 };
        return Err(LoadError::KernelIsElf(name, machine_name(m)));
    }
    if data.len() < 64 {
        return Err(LoadError::KernelTruncated(name, data.len()));
    }
    if &data[0x38..0x3c] != b"RSC\x05" {
        return Err(LoadError::KernelBadMagic(name));
    }
    let image_size = u64::from_le_bytes(data[0x10..0x18].try_into().expect("8 bytes"));
    let need = image_size.max(data.len() as u64);
    let addr = ram.base() + crate::layout::KERNEL_OFFSET;
    if ram.offset_of(addr, need).is_none() {
        return Err(LoadError::DoesNotFit { what: "kernel", path: name, addr, need });
    }
    ram.write(addr, &data).expect("range checked");
    Ok(LoadedKernel { entry: addr, end: addr + need })
}

/// Loads an initrd at `addr`; returns its end.
pub fn load_initrd(ram: &GuestRam, path: &Path, addr: u64) -> Result<u64, LoadError> {
    let data = read("initrd", path)?;
    let need = data.len() as u64;
    if ram.offset_of(addr, need).is_none() {
        return Err(LoadError::DoesNotFit { what: "initrd", path: path.display().to_string(), addr, need });
    }
    ram.write(addr, &data).expect("range checked");
    Ok(addr + need)
}

/// Reads an initrd's size without loading it (to place it).
pub fn file_size(what: &'static str, path: &Path) -> Result<u64, LoadError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|source| LoadError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A loaded bare-metal ELF.
pub struct LoadedElf {
    pub entry: u64,
    /// Address of the `tohost` symbol (HTIF), if the program has one.
    pub tohost: Option<u64>,
}

/// Loads a RISC-V ELF's `PT_LOAD` segments at their physical addresses.
pub fn load_elf(ram: &GuestRam, path: &Path) -> Result<LoadedElf, LoadError> {
    let name = path.display().to_string();
    let data = read("firmware", path)?;
    let elf = Elf::parse(&data).map_err(|e| LoadError::NotElf(name.clone(), e.to_string()))?;
    if elf.header.e_machine != EM_RISCV {
        return Err(LoadError::WrongArch(name, machine_name(elf.header.e_machine)));
    }
    if !elf.is_64 {
        return Err(LoadError::Elf32(name));
    }
    for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0) {
        if ram.offset_of(ph.p_paddr, ph.p_memsz).is_none() || ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentOutsideRam { path: name, addr: ph.p_paddr, size: ph.p_memsz });
        }
        let start = ph.p_offset as usize;
        let bytes = start
            .checked_add(ph.p_filesz as usize)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| LoadError::SegmentTruncated(name.clone()))?;
        ram.write(ph.p_paddr, bytes).expect("range checked");
        let zeros = vec![0u8; (ph.p_memsz - ph.p_filesz) as usize];
        ram.write(ph.p_paddr + ph.p_filesz, &zeros).expect("range checked");
    }
    let tohost = elf.syms.iter().find(|s| elf.strtab.get_at(s.st_name) == Some("tohost")).map(|s| s.st_value);
    Ok(LoadedElf { entry: elf.entry, tohost })
}
