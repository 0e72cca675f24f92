//! Decoding: a 32-bit instruction word (compressed ones already expanded by [`crate::rvc`]) becomes an [`Op`],
//! its kind and pre-extracted operands, so that executing it is one `match` with no field extraction.
//!
//! Integer, load/store, branch and jump instructions are decoded completely. The F/D arithmetic, the atomics
//! and the SYSTEM instructions (CSRs, `ecall`, `ebreak`, xRET, `wfi`, `sfence.vma`) keep their instruction word
//! and run through the interpreter's functions for them (`exec.rs`), which check what depends on the state
//! when they run (privilege, `mstatus.FS`, rounding modes). Anything else is [`Kind::Illegal`].

/// What an [`Op`] does. Register operands are in `rd`/`rs1`/`rs2`, the immediate (sign-extended, or the shift
/// amount) in `imm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// No effect: an ALU instruction writing x0, `fence`.
    Nop,
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    /// `fence.i`: nothing to do (stores invalidate decoded code themselves), but it ends its block.
    FenceI,
    /// F/D instructions, loads and stores included (`imm` holds the instruction word).
    Fp,
    /// AMOs, LR, SC (`imm` holds the instruction word).
    Amo,
    /// SYSTEM: CSR accesses, `ecall`, `ebreak`, xRET, `wfi`, `sfence.vma` (`imm` holds the instruction word).
    System,
    /// Raises an illegal-instruction exception with `tval` = `raw`.
    Illegal,
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub kind: Kind,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    pub imm: i32,
    /// Byte offset of the instruction from the start of its block.
    pub off: u16,
    /// Length in bytes (2 for a compressed instruction).
    pub len: u8,
    /// The bits as fetched (the 16-bit parcel of a compressed instruction): `tval` of an illegal instruction.
    pub raw: u32,
}

impl Op {
    /// An illegal instruction: the `tval` it raises is what was fetched.
    pub(crate) fn illegal(raw: u32, len: u8, off: u16) -> Op {
        Op { kind: Kind::Illegal, rd: 0, rs1: 0, rs2: 0, imm: 0, off, len, raw }
    }

    /// Whether this instruction ends its block: control transfers, everything that may change the execution
    /// context (SYSTEM, `fence.i`) and illegal instructions (which trap).
    pub(crate) fn ends_block(&self) -> bool {
        use Kind::*;
        matches!(self.kind, Jal | Jalr | Beq | Bne | Blt | Bge | Bltu | Bgeu | FenceI | System | Illegal)
    }
}

#[inline(always)]
fn sext(v: u32, bits: u32) -> i32 {
    ((v << (32 - bits)) as i32) >> (32 - bits)
}

fn imm_i(i: u32) -> i32 {
    (i as i32) >> 20
}

fn imm_s(i: u32) -> i32 {
    (((i as i32) >> 25) << 5) | ((i >> 7) & 0x1f) as i32
}

fn imm_b(i: u32) -> i32 {
    sext((((i >> 31) & 1) << 12) | (((i >> 7) & 1) << 11) | (((i >> 25) & 0x3f) << 5) | (((i >> 8) & 0xf) << 1), 13)
}

fn imm_j(i: u32) -> i32 {
    sext(
        (((i >> 31) & 1) << 20) | (((i >> 12) & 0xff) << 12) | (((i >> 20) & 1) << 11) | (((i >> 21) & 0x3ff) << 1),
        21,
    )
}

/// Decodes the (expanded) instruction `insn` of length `len`, fetched as `raw`, at byte offset `off` in its block.
pub(crate) fn decode(insn: u32, raw: u32, len: u8, off: u16) -> Op {
    use Kind::*;
    let rd = ((insn >> 7) & 31) as u8;
    let f3 = (insn >> 12) & 7;
    let rs1 = ((insn >> 15) & 31) as u8;
    let rs2 = ((insn >> 20) & 31) as u8;
    let f7 = insn >> 25;
    let op = |kind: Kind, imm: i32| Op { kind, rd, rs1, rs2, imm, off, len, raw };
    // An instruction whose only effect is writing rd does nothing when rd is x0.
    let alu = |kind: Kind, imm: i32| if rd == 0 { op(Nop, 0) } else { op(kind, imm) };
    let illegal = Op::illegal(raw, len, off);
    match insn & 0x7f {
        0x37 => alu(Lui, (insn & 0xffff_f000) as i32),
        0x17 => alu(Auipc, (insn & 0xffff_f000) as i32),
        0x6f => op(Jal, imm_j(insn)),
        0x67 if f3 == 0 => op(Jalr, imm_i(insn)),
        0x63 => {
            let kind = match f3 {
                0 => Beq,
                1 => Bne,
                4 => Blt,
                5 => Bge,
                6 => Bltu,
                7 => Bgeu,
                _ => return illegal,
            };
            op(kind, imm_b(insn))
        }
        0x03 => {
            let kind = match f3 {
                0 => Lb,
                1 => Lh,
                2 => Lw,
                3 => Ld,
                4 => Lbu,
                5 => Lhu,
                6 => Lwu,
                _ => return illegal,
            };
            // A load into x0 still accesses memory (and may fault).
            op(kind, imm_i(insn))
        }
        0x23 => {
            let kind = match f3 {
                0 => Sb,
                1 => Sh,
                2 => Sw,
                3 => Sd,
                _ => return illegal,
            };
            op(kind, imm_s(insn))
        }
        0x13 => {
            let shamt = ((insn >> 20) & 63) as i32;
            match f3 {
                0 => alu(Addi, imm_i(insn)),
                1 if insn >> 26 == 0 => alu(Slli, shamt),
                2 => alu(Slti, imm_i(insn)),
                3 => alu(Sltiu, imm_i(insn)),
                4 => alu(Xori, imm_i(insn)),
                5 if insn >> 26 == 0 => alu(Srli, shamt),
                5 if insn >> 26 == 0x10 => alu(Srai, shamt),
                6 => alu(Ori, imm_i(insn)),
                7 => alu(Andi, imm_i(insn)),
                _ => illegal,
            }
        }
        0x1b => {
            let shamt = ((insn >> 20) & 31) as i32;
            match (f3, f7) {
                (0, _) => alu(Addiw, imm_i(insn)),
                (1, 0) => alu(Slliw, shamt),
                (5, 0) => alu(Srliw, shamt),
                (5, 0x20) => alu(Sraiw, shamt),
                _ => illegal,
            }
        }
        0x33 => {
            let kind = match (f7, f3) {
                (0, 0) => Add,
                (0x20, 0) => Sub,
                (0, 1) => Sll,
                (0, 2) => Slt,
                (0, 3) => Sltu,
                (0, 4) => Xor,
                (0, 5) => Srl,
                (0x20, 5) => Sra,
                (0, 6) => Or,
                (0, 7) => And,
                (1, 0) => Mul,
                (1, 1) => Mulh,
                (1, 2) => Mulhsu,
                (1, 3) => Mulhu,
                (1, 4) => Div,
                (1, 5) => Divu,
                (1, 6) => Rem,
                (1, 7) => Remu,
                _ => return illegal,
            };
            alu(kind, 0)
        }
        0x3b => {
            let kind = match (f7, f3) {
                (0, 0) => Addw,
                (0x20, 0) => Subw,
                (0, 1) => Sllw,
                (0, 5) => Srlw,
                (0x20, 5) => Sraw,
                (1, 0) => Mulw,
                (1, 4) => Divw,
                (1, 5) => Divuw,
                (1, 6) => Remw,
                (1, 7) => Remuw,
                _ => return illegal,
            };
            alu(kind, 0)
        }
        // fence: one thread runs all harts in order, so memory is coherent.
        0x0f if f3 == 0 => op(Nop, 0),
        0x0f if f3 == 1 => op(FenceI, 0),
        0x73 => op(System, insn as i32),
        0x2f => op(Amo, insn as i32),
        0x07 | 0x27 | 0x43 | 0x47 | 0x4b | 0x4f | 0x53 => op(Fp, insn as i32),
        _ => illegal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_compact() {
        assert_eq!(std::mem::size_of::<Op>(), 16);
    }

    #[test]
    fn operands_are_extracted_once() {
        // addi a0, a1, -5
        let op = decode(0xffb5_8513, 0xffb5_8513, 4, 6);
        assert_eq!((op.kind, op.rd, op.rs1, op.imm, op.off, op.len), (Kind::Addi, 10, 11, -5, 6, 4));
        // beq a0, a1, -8
        let op = decode(0xfeb5_0ce3, 0xfeb5_0ce3, 4, 0);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (Kind::Beq, 10, 11, -8));
        assert!(op.ends_block());
        // sd a1, 16(sp)
        let op = decode(0x00b1_3823, 0x00b1_3823, 4, 0);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (Kind::Sd, 2, 11, 16));
        // addi x0, x0, 0 and add x0, a0, a1 do nothing.
        assert_eq!(decode(0x0000_0013, 0x0001, 2, 0).kind, Kind::Nop);
        assert_eq!(decode(0x00b5_0033, 0x00b5_0033, 4, 0).kind, Kind::Nop);
        // A reserved shift encoding is illegal, with the fetched bits as tval.
        let op = decode(0x4000_1013, 0x4000_1013, 4, 0);
        assert_eq!((op.kind, op.raw), (Kind::Illegal, 0x4000_1013));
        assert_eq!(decode(0x0000_0073, 0x0000_0073, 4, 0).kind, Kind::System);
    }
}
