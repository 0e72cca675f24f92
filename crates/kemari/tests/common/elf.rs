//! Writes minimal ELF64 executables for bare-metal tests: one PT_LOAD segment at 0x8000_0000 holding the code,
//! and a symbol table with `tohost` at 0x8000_1000 (the HTIF mailbox).

pub const LOAD_ADDR: u64 = 0x8000_0000;
pub const TOHOST: u64 = 0x8000_1000;
pub const EM_RISCV: u16 = 243;
pub const EM_X86_64: u16 = 62;

fn push16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Builds an ELF whose code is `words` (32-bit instructions) for machine `machine`.
pub fn build(machine: u16, words: &[u32]) -> Vec<u8> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    build_image(machine, &bytes)
}

/// Builds an ELF loading `image` at 0x8000_0000 (the bytes at 0x1000..0x1008, `tohost`, must be zero).
pub fn build_image(machine: u16, image: &[u8]) -> Vec<u8> {
    const SEG_OFF: u64 = 0x1000;
    let mut seg = image.to_vec();
    seg.resize(seg.len().max(0x1008), 0);
    assert!(seg[0x1000..0x1008].iter().all(|&b| b == 0), "image overlaps tohost");
    let strtab = b"\0tohost\0".to_vec();
    let shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0".to_vec();
    // Symbols: the null symbol, then tohost (global object, absolute).
    let mut symtab = vec![0u8; 24];
    push32(&mut symtab, 1); // st_name
    symtab.push(0x11); // STB_GLOBAL | STT_OBJECT
    symtab.push(0);
    push16(&mut symtab, 0xfff1); // SHN_ABS
    push64(&mut symtab, TOHOST);
    push64(&mut symtab, 8);

    let symtab_off = SEG_OFF + seg.len() as u64;
    let strtab_off = symtab_off + symtab.len() as u64;
    let shstrtab_off = strtab_off + strtab.len() as u64;
    let sh_off = (shstrtab_off + shstrtab.len() as u64).next_multiple_of(8);

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    push16(&mut f, 2); // ET_EXEC
    push16(&mut f, machine);
    push32(&mut f, 1);
    push64(&mut f, LOAD_ADDR); // entry
    push64(&mut f, 64); // phoff
    push64(&mut f, sh_off);
    push32(&mut f, 0); // flags
    push16(&mut f, 64);
    push16(&mut f, 56);
    push16(&mut f, 1);
    push16(&mut f, 64);
    push16(&mut f, 4); // shnum
    push16(&mut f, 3); // shstrndx
                       // Program header.
    push32(&mut f, 1); // PT_LOAD
    push32(&mut f, 7); // RWX
    push64(&mut f, SEG_OFF);
    push64(&mut f, LOAD_ADDR);
    push64(&mut f, LOAD_ADDR);
    push64(&mut f, seg.len() as u64);
    push64(&mut f, seg.len() as u64);
    push64(&mut f, 0x1000);
    f.resize(SEG_OFF as usize, 0);
    f.extend_from_slice(&seg);
    f.extend_from_slice(&symtab);
    f.extend_from_slice(&strtab);
    f.extend_from_slice(&shstrtab);
    f.resize(sh_off as usize, 0);
    // Section headers: null, .symtab, .strtab, .shstrtab.
    f.extend_from_slice(&[0u8; 64]);
    section(&mut f, 1, 2, symtab_off, symtab.len() as u64, 2, 1, 24);
    section(&mut f, 9, 3, strtab_off, strtab.len() as u64, 0, 0, 0);
    section(&mut f, 17, 3, shstrtab_off, shstrtab.len() as u64, 0, 0, 0);
    f
}

#[allow(clippy::too_many_arguments)]
fn section(f: &mut Vec<u8>, name: u32, kind: u32, off: u64, size: u64, link: u32, info: u32, entsize: u64) {
    push32(f, name);
    push32(f, kind);
    push64(f, 0); // flags
    push64(f, 0); // addr
    push64(f, off);
    push64(f, size);
    push32(f, link);
    push32(f, info);
    push64(f, 8);
    push64(f, entsize);
}

/// A program that stores `value` to `tohost` and spins.
pub fn tohost_program(value: u32) -> Vec<u32> {
    vec![
        0x0000_1297,                     // auipc t0, 1        (t0 = 0x8000_1000)
        (value << 20) | (6 << 7) | 0x13, // addi t1, x0, value
        0x0062_b023,                     // sd t1, 0(t0)
        0x0000_006f,                     // j .
    ]
}
