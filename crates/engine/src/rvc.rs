//! RVC ("C" standard extension) expander for RV64GC.
//!
//! [`expand`] turns a 16-bit compressed instruction into the equivalent 32-bit
//! RV64G instruction word, following the expansion table of the RISC-V
//! unprivileged spec (chapter "C" Standard Extension). The decoder then only
//! has to understand 32-bit encodings.
//!
//! RV64 specifics: funct3 `011` in quadrants 0/2 is C.LD/C.SD/C.LDSP/C.SDSP
//! (not C.FLW/C.FSW), quadrant 1 funct3 `001` is C.ADDIW (not C.JAL), and
//! shift amounts are 6 bits wide. HINT encodings expand to their (no-op)
//! base instruction; reserved encodings yield `None`.

// Major opcodes of the 32-bit forms.
const OP_LOAD: u32 = 0b000_0011;
const OP_LOAD_FP: u32 = 0b000_0111;
const OP_IMM: u32 = 0b001_0011;
const OP_IMM_32: u32 = 0b001_1011;
const OP_STORE: u32 = 0b010_0011;
const OP_STORE_FP: u32 = 0b010_0111;
const OP_REG: u32 = 0b011_0011;
const OP_LUI: u32 = 0b011_0111;
const OP_REG_32: u32 = 0b011_1011;
const OP_BRANCH: u32 = 0b110_0011;
const OP_JALR: u32 = 0b110_0111;
const OP_JAL: u32 = 0b110_1111;

const EBREAK: u32 = 0x0010_0073;

/// Register numbers that appear in expansions.
const ZERO: u32 = 0;
const RA: u32 = 1;
const SP: u32 = 2;

// ---------------------------------------------------------------------------
// Field extraction from the 16-bit form.
// ---------------------------------------------------------------------------

/// Bits `hi..=lo` of `x`, shifted down to bit 0.
const fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1 << (hi - lo + 1)) - 1)
}

/// Sign-extends the low `width` bits of `x` (result is a two's-complement bit pattern).
const fn sext(x: u32, width: u32) -> u32 {
    let sign = 1 << (width - 1);
    (x ^ sign).wrapping_sub(sign)
}

/// Full 5-bit register field at bits 11:7 (rd / rs1).
const fn rd_full(x: u32) -> u32 {
    bits(x, 11, 7)
}

/// Full 5-bit register field at bits 6:2 (rs2).
const fn rs2_full(x: u32) -> u32 {
    bits(x, 6, 2)
}

/// Compressed register (x8..x15) at bits 9:7 (rs1' / rd').
const fn r_hi(x: u32) -> u32 {
    8 + bits(x, 9, 7)
}

/// Compressed register (x8..x15) at bits 4:2 (rs2' / rd').
const fn r_lo(x: u32) -> u32 {
    8 + bits(x, 4, 2)
}

/// CI-format 6-bit signed immediate: imm[5] = bit 12, imm[4:0] = bits 6:2.
const fn ci_imm(x: u32) -> u32 {
    sext((bits(x, 12, 12) << 5) | bits(x, 6, 2), 6)
}

/// 6-bit shift amount: shamt[5] = bit 12, shamt[4:0] = bits 6:2.
const fn shamt(x: u32) -> u32 {
    (bits(x, 12, 12) << 5) | bits(x, 6, 2)
}

/// C.LW / C.SW offset: uimm[5:3] = 12:10, uimm[2] = 6, uimm[6] = 5.
const fn cl_w_imm(x: u32) -> u32 {
    (bits(x, 12, 10) << 3) | (bits(x, 6, 6) << 2) | (bits(x, 5, 5) << 6)
}

/// C.LD / C.SD / C.FLD / C.FSD offset: uimm[5:3] = 12:10, uimm[7:6] = 6:5.
const fn cl_d_imm(x: u32) -> u32 {
    (bits(x, 12, 10) << 3) | (bits(x, 6, 5) << 6)
}

/// C.ADDI4SPN: nzuimm[5:4] = 12:11, [9:6] = 10:7, [2] = 6, [3] = 5.
const fn addi4spn_imm(x: u32) -> u32 {
    (bits(x, 12, 11) << 4) | (bits(x, 10, 7) << 6) | (bits(x, 6, 6) << 2) | (bits(x, 5, 5) << 3)
}

/// C.ADDI16SP: nzimm[9] = 12, [4] = 6, [6] = 5, [8:7] = 4:3, [5] = 2.
const fn addi16sp_imm(x: u32) -> u32 {
    sext(
        (bits(x, 12, 12) << 9)
            | (bits(x, 6, 6) << 4)
            | (bits(x, 5, 5) << 6)
            | (bits(x, 4, 3) << 7)
            | (bits(x, 2, 2) << 5),
        10,
    )
}

/// C.J offset: [11|4|9:8|10|6|7|3:1|5] = bits 12:2.
const fn cj_imm(x: u32) -> u32 {
    sext(
        (bits(x, 12, 12) << 11)
            | (bits(x, 11, 11) << 4)
            | (bits(x, 10, 9) << 8)
            | (bits(x, 8, 8) << 10)
            | (bits(x, 7, 7) << 6)
            | (bits(x, 6, 6) << 7)
            | (bits(x, 5, 3) << 1)
            | (bits(x, 2, 2) << 5),
        12,
    )
}

/// C.BEQZ / C.BNEZ offset: [8|4:3] = 12:10, [7:6|2:1|5] = 6:2.
const fn cb_imm(x: u32) -> u32 {
    sext(
        (bits(x, 12, 12) << 8)
            | (bits(x, 11, 10) << 3)
            | (bits(x, 6, 5) << 6)
            | (bits(x, 4, 3) << 1)
            | (bits(x, 2, 2) << 5),
        9,
    )
}

/// C.LWSP: uimm[5] = 12, [4:2] = 6:4, [7:6] = 3:2.
const fn lwsp_imm(x: u32) -> u32 {
    (bits(x, 12, 12) << 5) | (bits(x, 6, 4) << 2) | (bits(x, 3, 2) << 6)
}

/// C.LDSP / C.FLDSP: uimm[5] = 12, [4:3] = 6:5, [8:6] = 4:2.
const fn ldsp_imm(x: u32) -> u32 {
    (bits(x, 12, 12) << 5) | (bits(x, 6, 5) << 3) | (bits(x, 4, 2) << 6)
}

/// C.SWSP: uimm[5:2] = 12:9, [7:6] = 8:7.
const fn swsp_imm(x: u32) -> u32 {
    (bits(x, 12, 9) << 2) | (bits(x, 8, 7) << 6)
}

/// C.SDSP / C.FSDSP: uimm[5:3] = 12:10, [8:6] = 9:7.
const fn sdsp_imm(x: u32) -> u32 {
    (bits(x, 12, 10) << 3) | (bits(x, 9, 7) << 6)
}

// ---------------------------------------------------------------------------
// 32-bit encoders. Immediates are passed as two's-complement bit patterns;
// each encoder scatters the relevant bits.
// ---------------------------------------------------------------------------

const fn r_type(opcode: u32, funct3: u32, funct7: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (funct7 << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | opcode
}

const fn i_type(opcode: u32, funct3: u32, rd: u32, rs1: u32, imm: u32) -> u32 {
    ((imm & 0xfff) << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | opcode
}

const fn s_type(opcode: u32, funct3: u32, rs1: u32, rs2: u32, imm: u32) -> u32 {
    (bits(imm, 11, 5) << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | (bits(imm, 4, 0) << 7) | opcode
}

const fn b_type(funct3: u32, rs1: u32, rs2: u32, imm: u32) -> u32 {
    (bits(imm, 12, 12) << 31)
        | (bits(imm, 10, 5) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (funct3 << 12)
        | (bits(imm, 4, 1) << 8)
        | (bits(imm, 11, 11) << 7)
        | OP_BRANCH
}

/// `imm` is the full value whose bits 31:12 land in the instruction.
const fn u_type(opcode: u32, rd: u32, imm: u32) -> u32 {
    (imm & 0xffff_f000) | (rd << 7) | opcode
}

const fn j_type(rd: u32, imm: u32) -> u32 {
    (bits(imm, 20, 20) << 31)
        | (bits(imm, 10, 1) << 21)
        | (bits(imm, 11, 11) << 20)
        | (bits(imm, 19, 12) << 12)
        | (rd << 7)
        | OP_JAL
}

/// Expands a 16-bit compressed instruction into the equivalent 32-bit RV64G instruction word.
/// Returns None for illegal / reserved encodings (the caller raises an illegal-instruction exception).
#[must_use]
pub fn expand(insn: u16) -> Option<u32> {
    let x = u32::from(insn);
    let word = match (x & 0b11, x >> 13) {
        // ----- Quadrant 0 -----
        // C.ADDI4SPN -> addi rd', x2, nzuimm (nzuimm = 0 reserved; covers 0x0000).
        (0b00, 0b000) => {
            let imm = addi4spn_imm(x);
            if imm == 0 {
                return None;
            }
            i_type(OP_IMM, 0b000, r_lo(x), SP, imm)
        }
        // C.FLD -> fld rd', uimm(rs1')
        (0b00, 0b001) => i_type(OP_LOAD_FP, 0b011, r_lo(x), r_hi(x), cl_d_imm(x)),
        // C.LW -> lw rd', uimm(rs1')
        (0b00, 0b010) => i_type(OP_LOAD, 0b010, r_lo(x), r_hi(x), cl_w_imm(x)),
        // C.LD -> ld rd', uimm(rs1')
        (0b00, 0b011) => i_type(OP_LOAD, 0b011, r_lo(x), r_hi(x), cl_d_imm(x)),
        // C.FSD -> fsd rs2', uimm(rs1')
        (0b00, 0b101) => s_type(OP_STORE_FP, 0b011, r_hi(x), r_lo(x), cl_d_imm(x)),
        // C.SW -> sw rs2', uimm(rs1')
        (0b00, 0b110) => s_type(OP_STORE, 0b010, r_hi(x), r_lo(x), cl_w_imm(x)),
        // C.SD -> sd rs2', uimm(rs1')
        (0b00, 0b111) => s_type(OP_STORE, 0b011, r_hi(x), r_lo(x), cl_d_imm(x)),
        // funct3 100 is reserved.

        // ----- Quadrant 1 -----
        // C.NOP / C.ADDI -> addi rd, rd, imm (rd = 0 or imm = 0: HINT)
        (0b01, 0b000) => i_type(OP_IMM, 0b000, rd_full(x), rd_full(x), ci_imm(x)),
        // C.ADDIW -> addiw rd, rd, imm (rd = 0 reserved)
        (0b01, 0b001) => {
            let rd = rd_full(x);
            if rd == ZERO {
                return None;
            }
            i_type(OP_IMM_32, 0b000, rd, rd, ci_imm(x))
        }
        // C.LI -> addi rd, x0, imm (rd = 0: HINT)
        (0b01, 0b010) => i_type(OP_IMM, 0b000, rd_full(x), ZERO, ci_imm(x)),
        // C.ADDI16SP (rd = 2) / C.LUI (other rd; rd = 0: HINT). Zero immediate reserved.
        (0b01, 0b011) => {
            let rd = rd_full(x);
            if rd == SP {
                let imm = addi16sp_imm(x);
                if imm == 0 {
                    return None;
                }
                i_type(OP_IMM, 0b000, SP, SP, imm)
            } else {
                let imm = ci_imm(x);
                if imm == 0 {
                    return None;
                }
                u_type(OP_LUI, rd, imm << 12)
            }
        }
        // C.SRLI / C.SRAI / C.ANDI / register-register ALU ops on rd'.
        (0b01, 0b100) => {
            let rd = r_hi(x);
            match bits(x, 11, 10) {
                0b00 => i_type(OP_IMM, 0b101, rd, rd, shamt(x)),
                0b01 => i_type(OP_IMM, 0b101, rd, rd, 0x400 | shamt(x)),
                0b10 => i_type(OP_IMM, 0b111, rd, rd, ci_imm(x)),
                _ => {
                    let rs2 = r_lo(x);
                    match (bits(x, 12, 12), bits(x, 6, 5)) {
                        // sub
                        (0, 0b00) => r_type(OP_REG, 0b000, 0b010_0000, rd, rd, rs2),
                        // xor
                        (0, 0b01) => r_type(OP_REG, 0b100, 0, rd, rd, rs2),
                        // or
                        (0, 0b10) => r_type(OP_REG, 0b110, 0, rd, rd, rs2),
                        // and
                        (0, _) => r_type(OP_REG, 0b111, 0, rd, rd, rs2),
                        // subw
                        (_, 0b00) => r_type(OP_REG_32, 0b000, 0b010_0000, rd, rd, rs2),
                        // addw
                        (_, 0b01) => r_type(OP_REG_32, 0b000, 0, rd, rd, rs2),
                        // bit 12 = 1 with funct2 10/11: reserved
                        _ => return None,
                    }
                }
            }
        }
        // C.J -> jal x0, offset
        (0b01, 0b101) => j_type(ZERO, cj_imm(x)),
        // C.BEQZ -> beq rs1', x0, offset
        (0b01, 0b110) => b_type(0b000, r_hi(x), ZERO, cb_imm(x)),
        // C.BNEZ -> bne rs1', x0, offset
        (0b01, 0b111) => b_type(0b001, r_hi(x), ZERO, cb_imm(x)),

        // ----- Quadrant 2 -----
        // C.SLLI -> slli rd, rd, shamt (rd = 0 or shamt = 0: HINT)
        (0b10, 0b000) => i_type(OP_IMM, 0b001, rd_full(x), rd_full(x), shamt(x)),
        // C.FLDSP -> fld rd, uimm(x2)
        (0b10, 0b001) => i_type(OP_LOAD_FP, 0b011, rd_full(x), SP, ldsp_imm(x)),
        // C.LWSP -> lw rd, uimm(x2) (rd = 0 reserved)
        (0b10, 0b010) => {
            let rd = rd_full(x);
            if rd == ZERO {
                return None;
            }
            i_type(OP_LOAD, 0b010, rd, SP, lwsp_imm(x))
        }
        // C.LDSP -> ld rd, uimm(x2) (rd = 0 reserved)
        (0b10, 0b011) => {
            let rd = rd_full(x);
            if rd == ZERO {
                return None;
            }
            i_type(OP_LOAD, 0b011, rd, SP, ldsp_imm(x))
        }
        // C.JR / C.MV / C.EBREAK / C.JALR / C.ADD
        (0b10, 0b100) => {
            let (rd, rs2) = (rd_full(x), rs2_full(x));
            match (bits(x, 12, 12), rd, rs2) {
                // C.JR rs1 = 0: reserved
                (0, ZERO, ZERO) => return None,
                // C.JR
                (0, _, ZERO) => i_type(OP_JALR, 0b000, ZERO, rd, 0),
                // C.MV
                (0, _, _) => r_type(OP_REG, 0b000, 0, rd, ZERO, rs2),
                // C.EBREAK
                (_, ZERO, ZERO) => EBREAK,
                // C.JALR
                (_, _, ZERO) => i_type(OP_JALR, 0b000, RA, rd, 0),
                // C.ADD
                (_, _, _) => r_type(OP_REG, 0b000, 0, rd, rd, rs2),
            }
        }
        // C.FSDSP -> fsd rs2, uimm(x2)
        (0b10, 0b101) => s_type(OP_STORE_FP, 0b011, SP, rs2_full(x), sdsp_imm(x)),
        // C.SWSP -> sw rs2, uimm(x2)
        (0b10, 0b110) => s_type(OP_STORE, 0b010, SP, rs2_full(x), swsp_imm(x)),
        // C.SDSP -> sd rs2, uimm(x2)
        (0b10, 0b111) => s_type(OP_STORE, 0b011, SP, rs2_full(x), sdsp_imm(x)),

        // Quadrant 0 funct3 100 (reserved) and 32-bit encodings (low bits 11).
        _ => return None,
    };
    Some(word)
}

#[cfg(test)]
mod tests {
    use super::expand;

    /// (compressed halfword, expected 32-bit expansion). Both columns were produced by
    /// GNU as 2.40 (`riscv64-linux-gnu-as -march=rv64gc`, expansions under
    /// `.option norvc`) from the mnemonic in the comment, and checked after linking.
    /// Branch/jump operands are PC-relative offsets.
    const ASSEMBLED: &[(u16, u32)] = &[
        (0x0048, 0x0041_0513), // c.addi4spn a0, sp, 4
        (0x1fe0, 0x3fc1_0413), // c.addi4spn s0, sp, 1020
        (0x003c, 0x0081_0793), // c.addi4spn a5, sp, 8
        (0x2188, 0x0005_b507), // c.fld fa0, 0(a1)
        (0x3fe4, 0x0f87_b487), // c.fld fs1, 248(a5)
        (0x4188, 0x0005_a503), // c.lw a0, 0(a1)
        (0x5e64, 0x07c6_2483), // c.lw s1, 124(a2)
        (0x403c, 0x0404_2783), // c.lw a5, 64(s0)
        (0x7f74, 0x0f87_3683), // c.ld a3, 248(a4)
        (0x6480, 0x0084_b403), // c.ld s0, 8(s1)
        (0xa2d0, 0x08c6_b027), // c.fsd fa2, 128(a3)
        (0xdff8, 0x06e7_ae23), // c.sw a4, 124(a5)
        (0xc0c0, 0x0084_a223), // c.sw s0, 4(s1)
        (0xfc70, 0x0ec4_3c23), // c.sd a2, 248(s0)
        (0xe90c, 0x00b5_3823), // c.sd a1, 16(a0)
        (0x0001, 0x0000_0013), // c.nop
        (0x1141, 0xff01_0113), // c.addi sp, -16
        (0x057d, 0x01f5_0513), // c.addi a0, 31
        (0x1f81, 0xfe0f_8f93), // c.addi t6, -32
        (0x357d, 0xfff5_051b), // c.addiw a0, -1
        (0x20fd, 0x01f0_809b), // c.addiw ra, 31
        (0x2281, 0x0002_829b), // c.addiw t0, 0
        (0x5501, 0xfe00_0513), // c.li a0, -32
        (0x4dc5, 0x0110_0d93), // c.li s11, 17
        (0x7101, 0xe001_0113), // c.addi16sp sp, -512
        (0x617d, 0x1f01_0113), // c.addi16sp sp, 496
        (0x6141, 0x0101_0113), // c.addi16sp sp, 16
        (0x7501, 0xfffe_0537), // c.lui a0, 0xfffe0
        (0x637d, 0x0001_f337), // c.lui t1, 0x1f
        (0x797d, 0xffff_f937), // c.lui s2, 0xfffff
        (0x6085, 0x0000_10b7), // c.lui ra, 1
        (0x8105, 0x0015_5513), // c.srli a0, 1
        (0x907d, 0x03f4_5413), // c.srli s0, 63
        (0x9781, 0x4207_d793), // c.srai a5, 32
        (0x849d, 0x4074_d493), // c.srai s1, 7
        (0x9981, 0xfe05_f593), // c.andi a1, -32
        (0x8a7d, 0x01f6_7613), // c.andi a2, 31
        (0x8c1d, 0x40f4_0433), // c.sub s0, a5
        (0x8d2d, 0x00b5_4533), // c.xor a0, a1
        (0x8e45, 0x0096_6633), // c.or a2, s1
        (0x8ef9, 0x00e6_f6b3), // c.and a3, a4
        (0x9f01, 0x4087_073b), // c.subw a4, s0
        (0x9fa9, 0x00a7_87bb), // c.addw a5, a0
        (0xb001, 0x801f_f06f), // c.j .-2048
        (0xaffd, 0x7fe0_006f), // c.j .+2046
        (0xa009, 0x0020_006f), // c.j .+2
        (0xbffd, 0xffff_f06f), // c.j .-2
        (0xab91, 0x5540_006f), // c.j .+0x554
        (0xa46d, 0x2aa0_006f), // c.j .+0x2aa
        (0xd101, 0xf005_00e3), // c.beqz a0, .-256
        (0xcc7d, 0x0e04_0f63), // c.beqz s0, .+254
        (0xfffd, 0xfe07_9fe3), // c.bnez a5, .-2
        (0xe4cd, 0x0a04_9563), // c.bnez s1, .+0xaa
        (0xea31, 0x0406_1a63), // c.bnez a2, .+0x54
        (0x0506, 0x0015_1513), // c.slli a0, 1
        (0x1ffe, 0x03ff_9f93), // c.slli t6, 63
        (0x1082, 0x0200_9093), // c.slli ra, 32
        (0x357e, 0x1f81_3507), // c.fldsp fa0, 504(sp)
        (0x2002, 0x0001_3007), // c.fldsp ft0, 0(sp)
        (0x50fe, 0x0fc1_2083), // c.lwsp ra, 252(sp)
        (0x4512, 0x0041_2503), // c.lwsp a0, 4(sp)
        (0x70fe, 0x1f81_3083), // c.ldsp ra, 504(sp)
        (0x6422, 0x0081_3403), // c.ldsp s0, 8(sp)
        (0x8082, 0x0000_8067), // c.jr ra
        (0x8f82, 0x000f_8067), // c.jr t6
        (0x852e, 0x00b0_0533), // c.mv a0, a1
        (0x8dfe, 0x01f0_0db3), // c.mv s11, t6
        (0x9002, 0x0010_0073), // c.ebreak
        (0x9782, 0x0007_80e7), // c.jalr a5
        (0x9082, 0x0000_80e7), // c.jalr ra
        (0x952e, 0x00b5_0533), // c.add a0, a1
        (0x9f8a, 0x002f_8fb3), // c.add t6, sp
        (0xbfa2, 0x1e81_3c27), // c.fsdsp fs0, 504(sp)
        (0xa47e, 0x01f1_3427), // c.fsdsp ft11, 8(sp)
        (0xdf86, 0x0e11_2e23), // c.swsp ra, 252(sp)
        (0xc02a, 0x00a1_2023), // c.swsp a0, 0(sp)
        (0xff86, 0x1e11_3c23), // c.sdsp ra, 504(sp)
        (0xec26, 0x0091_3c23), // c.sdsp s1, 24(sp)
        (0x43c0, 0x0047_a403), // c.lw x8, 4(x15)
        (0x8c1d, 0x40f4_0433), // c.sub x8, x15
        (0xc401, 0x0004_0463), // c.beqz x8, .+8
        (0x4344, 0x0047_2483), // c.lw x9, 4(x14)
        (0x8c99, 0x40e4_84b3), // c.sub x9, x14
        (0xc481, 0x0004_8463), // c.beqz x9, .+8
        (0x42c8, 0x0046_a503), // c.lw x10, 4(x13)
        (0x8d15, 0x40d5_0533), // c.sub x10, x13
        (0xc501, 0x0005_0463), // c.beqz x10, .+8
        (0x424c, 0x0046_2583), // c.lw x11, 4(x12)
        (0x8d91, 0x40c5_85b3), // c.sub x11, x12
        (0xc581, 0x0005_8463), // c.beqz x11, .+8
        (0x41d0, 0x0045_a603), // c.lw x12, 4(x11)
        (0x8e0d, 0x40b6_0633), // c.sub x12, x11
        (0xc601, 0x0006_0463), // c.beqz x12, .+8
        (0x4154, 0x0045_2683), // c.lw x13, 4(x10)
        (0x8e89, 0x40a6_86b3), // c.sub x13, x10
        (0xc681, 0x0006_8463), // c.beqz x13, .+8
        (0x40d8, 0x0044_a703), // c.lw x14, 4(x9)
        (0x8f05, 0x4097_0733), // c.sub x14, x9
        (0xc701, 0x0007_0463), // c.beqz x14, .+8
        (0x405c, 0x0044_2783), // c.lw x15, 4(x8)
        (0x8f81, 0x4087_87b3), // c.sub x15, x8
        (0xc781, 0x0007_8463), // c.beqz x15, .+8
    ];

    /// HINT encodings (spec: legal, no architectural effect) expand to their base form.
    /// Halfwords from objdump 2.40 disassembly, words from GNU as.
    const HINTS: &[(u16, u32)] = &[
        (0x0001, 0x0000_0013), // c.nop = addi x0, x0, 0
        (0x0015, 0x0050_0013), // c.addi x0, 5
        (0x0101, 0x0001_0113), // c.addi sp, 0
        (0x4005, 0x0010_0013), // c.li x0, 1
        (0x6005, 0x0000_1037), // c.lui x0, 1
        (0x802a, 0x00a0_0033), // c.mv x0, a0
        (0x902a, 0x00a0_0033), // c.add x0, a0
        (0x0006, 0x0010_1013), // c.slli x0, 1
        (0x0082, 0x0000_9093), // c.slli64 ra (shamt 0)
        (0x8001, 0x0004_5413), // c.srli64 s0 (shamt 0)
        (0x8401, 0x4004_5413), // c.srai64 s0 (shamt 0)
    ];

    /// Reserved / illegal halfwords (objdump 2.40 shows all but 0x6101 as `.2byte`;
    /// binutils accepts `c.addi16sp sp, 0`, the spec reserves it).
    const RESERVED: &[u16] = &[
        0x0000, // all-zero halfword (c.unimp)
        0x0004, // c.addi4spn x9, sp, 0: nzuimm = 0
        0x001c, // c.addi4spn x15, sp, 0
        0x8000, // quadrant 0, funct3 100
        0x9ffc, // quadrant 0, funct3 100, all other bits set
        0x2001, // c.addiw x0, 0
        0x3005, // c.addiw x0, -31
        0x6101, // c.addi16sp sp, 0
        0x6001, // c.lui x0, 0
        0x6501, // c.lui a0, 0
        0x6f81, // c.lui t6, 0
        0x9c41, // CA bit12=1 funct2=10
        0x9c61, // CA bit12=1 funct2=11
        0x9fc1, // CA bit12=1 funct2=10, rd'=x15
        0x9ffd, // CA bit12=1 funct2=11, rd'=rs2'=x15
        0x4002, // c.lwsp x0, 0(sp)
        0x507e, // c.lwsp x0, 252(sp)
        0x6002, // c.ldsp x0, 0(sp)
        0x707e, // c.ldsp x0, 504(sp)
        0x8002, // c.jr x0
    ];

    fn check(table: &[(u16, u32)]) {
        for &(half, word) in table {
            assert_eq!(expand(half), Some(word), "expand({half:#06x}) = {:#010x?}, want {word:#010x}", expand(half));
        }
    }

    #[test]
    fn assembled_table() {
        assert!(ASSEMBLED.len() >= 40);
        check(ASSEMBLED);
    }

    #[test]
    fn hints_expand_to_base_form() {
        check(HINTS);
    }

    #[test]
    fn reserved_encodings_are_none() {
        for &half in RESERVED {
            assert_eq!(expand(half), None, "expand({half:#06x}) should be None");
        }
    }

    #[test]
    fn zero_halfword_is_illegal() {
        assert_eq!(expand(0), None);
    }

    #[test]
    fn uncompressed_low_bits_are_none() {
        for half in [0x0003u16, 0x0013, 0x8067, 0xffff, 0x7ffb] {
            assert_eq!(expand(half), None, "{half:#06x}");
        }
    }

    #[test]
    fn immediate_extremes() {
        // Sign-extension at the negative ends (from GNU as, see ASSEMBLED).
        assert_eq!(expand(0xb001), Some(0x801f_f06f)); // c.j -2048
        assert_eq!(expand(0x7101), Some(0xe001_0113)); // c.addi16sp sp, -512
        assert_eq!(expand(0x7501), Some(0xfffe_0537)); // c.lui a0, 0xfffe0 (-32 << 12)
        assert_eq!(expand(0xd101), Some(0xf005_00e3)); // c.beqz a0, -256
        assert_eq!(expand(0x1141), Some(0xff01_0113)); // c.addi sp, -16
        assert_eq!(expand(0x5501), Some(0xfe00_0513)); // c.li a0, -32
    }

    #[test]
    fn compressed_register_fields() {
        // Every x8..x15 value in both the rs1'/rd' (bits 9:7) and rs2'/rd' (bits 4:2) fields.
        for r in 0..8u16 {
            // c.lw x(8+r), 0(x(8+(7-r)))
            let half = 0x4000 | ((7 - r) << 7) | (r << 2);
            let word = expand(half).unwrap();
            assert_eq!((word >> 7) & 31, u32::from(8 + r), "rd' in {half:#06x}");
            assert_eq!((word >> 15) & 31, u32::from(8 + 7 - r), "rs1' in {half:#06x}");
            // c.and x(8+r), x(8+(7-r))
            let half = 0x8c61 | (r << 7) | ((7 - r) << 2);
            let word = expand(half).unwrap();
            assert_eq!((word >> 7) & 31, u32::from(8 + r), "rd' in {half:#06x}");
            assert_eq!((word >> 15) & 31, u32::from(8 + r), "rs1' in {half:#06x}");
            assert_eq!((word >> 20) & 31, u32::from(8 + 7 - r), "rs2' in {half:#06x}");
        }
    }

    #[test]
    fn all_halfwords_consistent() {
        let mut legal = 0u32;
        for half in 0..=u16::MAX {
            let Some(word) = expand(half) else { continue };
            legal += 1;
            assert!(half & 3 != 3, "{half:#06x}");
            assert_eq!(word & 3, 3, "expand({half:#06x}) = {word:#010x}");
            assert_ne!(word & 0x1c, 0x1c, "expand({half:#06x}) is not a 32-bit form");
        }
        // 3 * 16384 compressed halfwords minus the reserved ones (counted from the spec).
        assert_eq!(legal, 49152 - RESERVED_COUNT);
    }

    /// Reserved halfwords among the 49152 with low bits != 11:
    /// addi4spn nzuimm=0 (8), q0 funct3=100 (2048), c.addiw rd=0 (64),
    /// c.addi16sp 0 (1), c.lui imm=0 with rd!=2 (31), CA reserved (2 * 64),
    /// c.lwsp rd=0 (64), c.ldsp rd=0 (64), c.jr x0 (1).
    const RESERVED_COUNT: u32 = 8 + 2048 + 64 + 1 + 31 + 128 + 64 + 64 + 1;
}
