//! IEEE-754 binary32/binary64 arithmetic with the exact semantics of the RISC-V "F" and "D" extensions.
//!
//! Every function takes and returns raw bit patterns and reports the RISC-V `fflags` bits it raised
//! ([`flags`]). Results follow RISC-V rather than generic IEEE choices: every NaN result is the canonical
//! NaN, signaling-NaN inputs raise NV, `fma(inf, 0, qNaN)` raises NV, min/max are IEEE 754-2019
//! minimumNumber/maximumNumber, float→integer conversions saturate. NaN boxing is the caller's business.
//!
//! Three implementations, tried in order:
//!
//! 1. **Fast paths** (`fast`, any host, RNE/RTZ/RDN/RUP): the native round-to-nearest operation plus an
//!    exact error term: Fast2Sum for add/sub, an FMA residual for f64 mul/div/sqrt, exact binary64
//!    arithmetic for binary32 ops (binary32 FMA via round-to-odd). The error's sign gives NX and the
//!    one-ulp correction for the directed modes. They only answer when that is provably exact (finite,
//!    not near the subnormal range, no zero-sign subtleties) and otherwise fall through. No FP-environment
//!    access, so they cost a few ns.
//! 2. **SSE + MXCSR** (x86_64, the four IEEE modes): x86 has all four directed roundings in hardware and,
//!    like RISC-V, detects tininess after rounding, so its flags map 1:1 (IE→NV, ZE→DZ, OE→OF, UE→UF,
//!    PE→NX; DE ignored). Each operation is one `asm!` block: load an MXCSR with the wanted rounding
//!    control, all exceptions masked, flags clear and DAZ/FTZ off; run the scalar instruction; read the
//!    flags; load the default control word Rust code runs under. A single block keeps the compiler from
//!    constant-folding the operation or moving other FP code into the modified environment. f64 FMA
//!    always comes here (`vfmadd231sd`, when CPUID reports FMA3). NaN results are canonicalized afterwards.
//! 3. **Exact software** (`soft`): operands are unpacked to integer significands, the exact result is
//!    formed in a `u128` (exactly for mul and conversions; for add/fma/div/sqrt rounded to odd with at
//!    least p+2 significant bits, i.e. inexactness jammed into the last bit, which provably rounds
//!    correctly in every mode afterwards), and one routine rounds it in any of the five modes with
//!    tininess after rounding, overflow and all flags.
//!
//! **RMM** (round to nearest, ties to max magnitude) has no SSE encoding, so it always uses `soft`, as do
//! non-x86_64 hosts after the fast paths, and FMA on x86 CPUs without FMA3. The tests cross-check the
//! public functions and the raw SSE path against `soft` bit for bit (result and flags) in the four shared
//! modes, check RMM on constructed exact ties and against independent oracles, and check RNE against
//! Rust's native operators.
//!
//! Like all Rust code, this assumes the default FP environment (round to nearest, exceptions masked,
//! no DAZ/FTZ). Conversions to integers, min/max, comparisons and classification are integer code.

/// RISC-V rounding modes (the `rm` field / frm values 0..=4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// RNE: round to nearest, ties to even.
    NearestEven = 0,
    /// RTZ: round towards zero.
    TowardZero = 1,
    /// RDN: round down (towards -inf).
    Down = 2,
    /// RUP: round up (towards +inf).
    Up = 3,
    /// RMM: round to nearest, ties to max magnitude.
    NearestMaxMagnitude = 4,
}

impl Rounding {
    /// Decodes an `rm`/`frm` value. 5 and 6 are reserved and 7 (dynamic) must be resolved by the caller,
    /// so all three give `None`.
    #[inline]
    pub fn from_bits(rm: u32) -> Option<Rounding> {
        match rm {
            0 => Some(Rounding::NearestEven),
            1 => Some(Rounding::TowardZero),
            2 => Some(Rounding::Down),
            3 => Some(Rounding::Up),
            4 => Some(Rounding::NearestMaxMagnitude),
            _ => None,
        }
    }
}

/// RISC-V `fflags` bits.
pub mod flags {
    /// Inexact.
    pub const NX: u32 = 1;
    /// Underflow (tiny after rounding and inexact).
    pub const UF: u32 = 2;
    /// Overflow.
    pub const OF: u32 = 4;
    /// Divide by zero.
    pub const DZ: u32 = 8;
    /// Invalid operation.
    pub const NV: u32 = 16;
}

use flags::{DZ, NV, NX, OF, UF};

/// The RISC-V canonical single-precision NaN.
pub const F32_CANONICAL_NAN: u32 = 0x7fc0_0000;
/// The RISC-V canonical double-precision NaN.
pub const F64_CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// Description of a binary interchange format; values are carried in the low bits of a `u64`.
#[derive(Clone, Copy)]
struct Fmt {
    exp_bits: u32,
    frac_bits: u32,
}

const F32: Fmt = Fmt { exp_bits: 8, frac_bits: 23 };
const F64: Fmt = Fmt { exp_bits: 11, frac_bits: 52 };

impl Fmt {
    #[inline(always)]
    const fn sign_bit(self) -> u64 {
        1 << (self.exp_bits + self.frac_bits)
    }
    #[inline(always)]
    const fn mag_mask(self) -> u64 {
        self.sign_bit() - 1
    }
    #[inline(always)]
    const fn inf(self) -> u64 {
        ((1 << self.exp_bits) - 1) << self.frac_bits
    }
    #[inline(always)]
    const fn max_finite(self) -> u64 {
        self.inf() - 1
    }
    #[inline(always)]
    const fn frac_mask(self) -> u64 {
        (1 << self.frac_bits) - 1
    }
    #[inline(always)]
    const fn quiet_bit(self) -> u64 {
        1 << (self.frac_bits - 1)
    }
    #[inline(always)]
    const fn canonical_nan(self) -> u64 {
        self.inf() | self.quiet_bit()
    }
    #[inline(always)]
    const fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }
    /// Exponent of the smallest normal number.
    #[inline(always)]
    const fn emin(self) -> i32 {
        1 - self.bias()
    }
    /// Exponent of the largest finite number.
    #[inline(always)]
    const fn emax(self) -> i32 {
        self.bias()
    }
    /// Precision in bits, including the implicit bit.
    #[inline(always)]
    const fn prec(self) -> i32 {
        self.frac_bits as i32 + 1
    }
    #[inline(always)]
    const fn signed_zero(self, negative: bool) -> u64 {
        if negative {
            self.sign_bit()
        } else {
            0
        }
    }
    #[inline(always)]
    const fn is_nan(self, x: u64) -> bool {
        x & self.mag_mask() > self.inf()
    }
    #[inline(always)]
    const fn is_snan(self, x: u64) -> bool {
        self.is_nan(x) && x & self.quiet_bit() == 0
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    const fn is_inf(self, x: u64) -> bool {
        x & self.mag_mask() == self.inf()
    }
    #[inline(always)]
    const fn is_zero(self, x: u64) -> bool {
        x & self.mag_mask() == 0
    }
    /// Maps a non-NaN value onto an unsigned key with the same order (-0 sorts below +0).
    #[inline(always)]
    const fn order_key(self, x: u64) -> u64 {
        if x & self.sign_bit() != 0 {
            !x & (self.sign_bit() | self.mag_mask())
        } else {
            x | self.sign_bit()
        }
    }
}

// ------------------------------------------------------------------------------------------------------
// Software implementation (all five rounding modes).
// ------------------------------------------------------------------------------------------------------

mod soft {
    use super::Rounding::{self, Down, NearestEven, NearestMaxMagnitude, TowardZero, Up};
    use super::{Fmt, DZ, NV, NX, OF, UF};
    use core::cmp::Ordering;

    #[derive(Clone, Copy)]
    enum Kind {
        Nan,
        Inf,
        Zero,
        /// value = sig * 2^exp, sig != 0
        Finite {
            exp: i32,
            sig: u64,
        },
    }

    /// A finite non-zero value `(-1)^sign * sig * 2^exp`. When produced by an inexact step, `sig` is
    /// rounded to odd (sticky bit jammed into bit 0) and has at least p+2 significant bits.
    #[derive(Clone, Copy)]
    struct Num {
        sign: bool,
        exp: i32,
        sig: u128,
    }

    #[inline]
    fn unpack(f: Fmt, x: u64) -> (bool, Kind) {
        let sign = x & f.sign_bit() != 0;
        let max_be = (1i32 << f.exp_bits) - 1;
        let be = ((x >> f.frac_bits) as i32) & max_be;
        let frac = x & f.frac_mask();
        let kind = if be == max_be {
            if frac == 0 {
                Kind::Inf
            } else {
                Kind::Nan
            }
        } else if be == 0 {
            if frac == 0 {
                Kind::Zero
            } else {
                Kind::Finite { exp: f.emin() - f.frac_bits as i32, sig: frac }
            }
        } else {
            Kind::Finite { exp: be - f.bias() - f.frac_bits as i32, sig: frac | 1 << f.frac_bits }
        };
        (sign, kind)
    }

    #[inline]
    fn shift_right_jam(x: u128, d: u32) -> u128 {
        if d == 0 {
            x
        } else if d >= 128 {
            (x != 0) as u128
        } else {
            (x >> d) | ((x << (128 - d)) != 0) as u128
        }
    }

    /// Drops the low `shift` (>= 1) bits of `sig` rounding in mode `rm` (`sign` is the sign of the value).
    /// Returns the rounded quotient and whether any dropped bit was set.
    #[inline]
    fn round_shift(sig: u128, shift: u32, sign: bool, rm: Rounding) -> (u128, bool) {
        let (q, half, inexact) = if shift > 128 {
            (0, Ordering::Less, sig != 0)
        } else if shift == 128 {
            (0, sig.cmp(&(1u128 << 127)), sig != 0)
        } else {
            let rem = sig & ((1u128 << shift) - 1);
            (sig >> shift, rem.cmp(&(1u128 << (shift - 1))), rem != 0)
        };
        let up = match rm {
            NearestEven => half == Ordering::Greater || (half == Ordering::Equal && q & 1 == 1),
            NearestMaxMagnitude => half != Ordering::Less,
            TowardZero => false,
            Down => sign && inexact,
            Up => !sign && inexact,
        };
        (q + up as u128, inexact)
    }

    /// Result of an overflow in mode `rm`: infinity or the largest finite number.
    #[inline]
    fn overflow_value(f: Fmt, sign: bool, rm: Rounding) -> u64 {
        let to_inf = match rm {
            NearestEven | NearestMaxMagnitude => true,
            TowardZero => false,
            Down => sign,
            Up => !sign,
        };
        f.signed_zero(sign) | if to_inf { f.inf() } else { f.max_finite() }
    }

    /// Rounds `n` (non-zero) to format `f` in mode `rm`, computing NX, UF (tininess after rounding), OF.
    fn round_pack(f: Fmt, n: Num, rm: Rounding) -> (u64, u32) {
        debug_assert!(n.sig != 0);
        let p = f.prec();
        let emin = f.emin();
        let nbits = 128 - n.sig.leading_zeros() as i32;
        // Exponent of the leading bit of the exact value.
        let top = n.exp + nbits - 1;
        // Exponent of the last kept bit: p bits for normal results, the subnormal grid below emin.
        let mut lsb = top.max(emin) - (p - 1);
        let shift = lsb - n.exp;
        let (mut m, inexact) =
            if shift <= 0 { (n.sig << (-shift) as u32, false) } else { round_shift(n.sig, shift as u32, n.sign, rm) };
        if m >> p != 0 {
            // Rounded up to 2^p: renormalise (the dropped bit is zero).
            m >>= 1;
            lsb += 1;
        }
        let mut fl = if inexact { NX } else { 0 };
        let sign_bits = f.signed_zero(n.sign);
        let bits = if m >> (p - 1) != 0 {
            let e = lsb + p - 1;
            if e > f.emax() {
                return (overflow_value(f, n.sign, rm), OF | NX);
            }
            sign_bits | ((e + f.bias()) as u64) << f.frac_bits | (m as u64 & f.frac_mask())
        } else {
            // Subnormal or zero; `lsb` is the subnormal grid here.
            sign_bits | m as u64
        };
        if inexact && top < emin {
            // Tiny iff rounding to p bits with an unbounded exponent stays below 2^emin.
            let tiny = top < emin - 1 || {
                let sh = nbits - p;
                sh <= 0 || round_shift(n.sig, sh as u32, n.sign, rm).0 >> p == 0
            };
            if tiny {
                fl |= UF;
            }
        }
        (bits, fl)
    }

    /// Exact (or rounded-to-odd) sum of two non-zero values whose significands have at most 106 bits.
    fn add_core(f: Fmt, a: Num, b: Num, rm: Rounding) -> (u64, u32) {
        // Put both leading bits at position 125: every significand then has >= 20 trailing zeros, so
        // the larger operand is even at bit 0 and a jammed smaller operand makes the sum rounded to odd.
        let norm = |n: Num| {
            let s = n.sig.leading_zeros() - 2;
            Num { sign: n.sign, exp: n.exp - s as i32, sig: n.sig << s }
        };
        let (mut x, mut y) = (norm(a), norm(b));
        if x.exp < y.exp {
            core::mem::swap(&mut x, &mut y);
        }
        // Exponent gaps are bounded by a few thousand, so the cast is lossless.
        y.sig = shift_right_jam(y.sig, (x.exp - y.exp) as u32);
        let (sign, sig) = if x.sign == y.sign {
            (x.sign, x.sig + y.sig)
        } else if x.sig > y.sig {
            (x.sign, x.sig - y.sig)
        } else if y.sig > x.sig {
            (y.sign, y.sig - x.sig)
        } else {
            // Exact cancellation: +0, or -0 when rounding down.
            return (f.signed_zero(rm == Down), 0);
        };
        round_pack(f, Num { sign, exp: x.exp, sig }, rm)
    }

    #[inline]
    fn nan_result(f: Fmt, invalid: bool) -> (u64, u32) {
        (f.canonical_nan(), if invalid { NV } else { 0 })
    }

    pub(super) fn add(f: Fmt, a: u64, b: u64, rm: Rounding) -> (u64, u32) {
        let (sa, ka) = unpack(f, a);
        let (sb, kb) = unpack(f, b);
        match (ka, kb) {
            (Kind::Nan, _) | (_, Kind::Nan) => nan_result(f, f.is_snan(a) || f.is_snan(b)),
            (Kind::Inf, Kind::Inf) if sa != sb => nan_result(f, true),
            (Kind::Inf, _) => (a, 0),
            (_, Kind::Inf) => (b, 0),
            (Kind::Zero, Kind::Zero) => (f.signed_zero(if sa == sb { sa } else { rm == Down }), 0),
            (Kind::Zero, _) => (b, 0),
            (_, Kind::Zero) => (a, 0),
            (Kind::Finite { exp: ea, sig: ma }, Kind::Finite { exp: eb, sig: mb }) => {
                add_core(f, Num { sign: sa, exp: ea, sig: ma as u128 }, Num { sign: sb, exp: eb, sig: mb as u128 }, rm)
            }
        }
    }

    pub(super) fn sub(f: Fmt, a: u64, b: u64, rm: Rounding) -> (u64, u32) {
        add(f, a, b ^ f.sign_bit(), rm)
    }

    pub(super) fn mul(f: Fmt, a: u64, b: u64, rm: Rounding) -> (u64, u32) {
        let (sa, ka) = unpack(f, a);
        let (sb, kb) = unpack(f, b);
        let sign = sa != sb;
        match (ka, kb) {
            (Kind::Nan, _) | (_, Kind::Nan) => nan_result(f, f.is_snan(a) || f.is_snan(b)),
            (Kind::Inf, Kind::Zero) | (Kind::Zero, Kind::Inf) => nan_result(f, true),
            (Kind::Inf, _) | (_, Kind::Inf) => (f.signed_zero(sign) | f.inf(), 0),
            (Kind::Zero, _) | (_, Kind::Zero) => (f.signed_zero(sign), 0),
            (Kind::Finite { exp: ea, sig: ma }, Kind::Finite { exp: eb, sig: mb }) => {
                round_pack(f, Num { sign, exp: ea + eb, sig: ma as u128 * mb as u128 }, rm)
            }
        }
    }

    pub(super) fn div(f: Fmt, a: u64, b: u64, rm: Rounding) -> (u64, u32) {
        let (sa, ka) = unpack(f, a);
        let (sb, kb) = unpack(f, b);
        let sign = sa != sb;
        match (ka, kb) {
            (Kind::Nan, _) | (_, Kind::Nan) => nan_result(f, f.is_snan(a) || f.is_snan(b)),
            (Kind::Inf, Kind::Inf) | (Kind::Zero, Kind::Zero) => nan_result(f, true),
            (Kind::Inf, _) => (f.signed_zero(sign) | f.inf(), 0),
            (_, Kind::Inf) | (Kind::Zero, _) => (f.signed_zero(sign), 0),
            (_, Kind::Zero) => (f.signed_zero(sign) | f.inf(), DZ),
            (Kind::Finite { exp: ea, sig: ma }, Kind::Finite { exp: eb, sig: mb }) => {
                // Dividend leading bit at 127, divisor leading bit at 63: quotient has 64 or 65 bits.
                let sa_ = ma.leading_zeros() as i32 + 64;
                let sb_ = mb.leading_zeros() as i32;
                let num = (ma as u128) << sa_;
                let den = (mb as u128) << sb_;
                let q = num / den;
                let sticky = !num.is_multiple_of(den) as u128;
                let exp = (ea - sa_) - (eb - sb_);
                round_pack(f, Num { sign, exp, sig: q | sticky }, rm)
            }
        }
    }

    /// floor(sqrt(s)) for s < 2^126.
    fn isqrt(s: u128) -> u128 {
        // Float estimate (relative error ~2^-52), one Newton step, then exact correction.
        let mut r = (s as f64).sqrt() as u128;
        if r > 0 {
            r = (r + s / r) / 2;
        }
        while r * r > s {
            r -= 1;
        }
        while (r + 1) * (r + 1) <= s {
            r += 1;
        }
        r
    }

    pub(super) fn sqrt(f: Fmt, a: u64, rm: Rounding) -> (u64, u32) {
        let (sign, k) = unpack(f, a);
        match k {
            Kind::Nan => nan_result(f, f.is_snan(a)),
            Kind::Zero => (a, 0),
            _ if sign => nan_result(f, true),
            Kind::Inf => (a, 0),
            Kind::Finite { exp, sig } => {
                // Leading bit at 124 or 123 so that the remaining exponent is even; the root has 62 or 63
                // bits, well over the p+2 needed for the jammed sticky bit.
                let mut sh = sig.leading_zeros() as i32 + 61;
                if (exp - sh) & 1 != 0 {
                    sh -= 1;
                }
                let s = (sig as u128) << sh;
                let r = isqrt(s);
                let sticky = (r * r != s) as u128;
                round_pack(f, Num { sign: false, exp: (exp - sh) / 2, sig: r | sticky }, rm)
            }
        }
    }

    pub(super) fn mul_add(f: Fmt, a: u64, b: u64, c: u64, rm: Rounding) -> (u64, u32) {
        let (sa, ka) = unpack(f, a);
        let (sb, kb) = unpack(f, b);
        let (sc, kc) = unpack(f, c);
        let inf_times_zero = matches!((ka, kb), (Kind::Inf, Kind::Zero) | (Kind::Zero, Kind::Inf));
        if matches!(ka, Kind::Nan) || matches!(kb, Kind::Nan) || matches!(kc, Kind::Nan) {
            let snan = f.is_snan(a) || f.is_snan(b) || f.is_snan(c);
            return nan_result(f, snan || inf_times_zero);
        }
        if inf_times_zero {
            return nan_result(f, true);
        }
        let sp = sa != sb;
        match (ka, kb, kc) {
            (Kind::Inf, _, _) | (_, Kind::Inf, _) => {
                if matches!(kc, Kind::Inf) && sc != sp {
                    nan_result(f, true)
                } else {
                    (f.signed_zero(sp) | f.inf(), 0)
                }
            }
            (_, _, Kind::Inf) => (c, 0),
            (Kind::Zero, _, Kind::Zero) | (_, Kind::Zero, Kind::Zero) => {
                (f.signed_zero(if sp == sc { sc } else { rm == Down }), 0)
            }
            (Kind::Zero, _, _) | (_, Kind::Zero, _) => (c, 0),
            (Kind::Finite { exp: ea, sig: ma }, Kind::Finite { exp: eb, sig: mb }, kc) => {
                let p = Num { sign: sp, exp: ea + eb, sig: ma as u128 * mb as u128 };
                match kc {
                    Kind::Finite { exp: ec, sig: mc } => add_core(f, p, Num { sign: sc, exp: ec, sig: mc as u128 }, rm),
                    _ => round_pack(f, p, rm),
                }
            }
            _ => unreachable!("NaN and infinite cases handled above"),
        }
    }

    /// Float → integer of `width` (32 or 64) bits; returns the value as RV64 writes it to a register
    /// (32-bit results sign-extended, also for the unsigned forms). The range check is on the rounded
    /// value; out-of-range and NaN inputs saturate with NV only.
    #[inline]
    pub(super) fn to_int(f: Fmt, a: u64, rm: Rounding, width: u32, signed: bool) -> (u64, u32) {
        let neg = a & f.sign_bit() != 0;
        let mag = a & f.mag_mask();
        let max_pos = if signed { (1u64 << (width - 1)) - 1 } else { u64::MAX >> (64 - width) };
        let max_neg = if signed { 1u64 << (width - 1) } else { 0 };
        let finish = |v: u64, fl: u32| (if width == 32 { v as i32 as i64 as u64 } else { v }, fl);
        if mag > f.inf() {
            return finish(max_pos, NV); // NaN
        }
        let be = (mag >> f.frac_bits) as i32;
        let e = be.max(1) - f.bias(); // unbiased exponent (of the leading bit for normal numbers)
        if e >= 64 {
            // At least 2^64 in magnitude (or infinite): out of range for every destination.
            return finish(if neg { max_neg.wrapping_neg() } else { max_pos }, NV);
        }
        let (m, inexact) = {
            let sig = (mag & f.frac_mask()) | if be != 0 { 1 << f.frac_bits } else { 0 };
            let exp = e - f.frac_bits as i32; // value = sig * 2^exp
            if exp >= 0 {
                (sig << exp, false)
            } else {
                let sh = exp.unsigned_abs();
                let (q, rem, half) = if sh >= 64 {
                    (0, sig, 1u64 << 63) // sig < 2^53: below half
                } else {
                    (sig >> sh, sig & ((1u64 << sh) - 1), 1u64 << (sh - 1))
                };
                // Branch-free choice of the increment, indexed by `rm` (this is on the hot path).
                let nz = rem != 0;
                let up = [
                    rem > half || (rem == half && q & 1 == 1), // RNE
                    false,                                     // RTZ
                    neg && nz,                                 // RDN
                    !neg && nz,                                // RUP
                    rem >= half,                               // RMM
                ][rm as usize];
                (q + up as u64, nz)
            }
        };
        if neg {
            if m > max_neg {
                return finish(max_neg.wrapping_neg(), NV);
            }
            finish(m.wrapping_neg(), if inexact { NX } else { 0 })
        } else {
            if m > max_pos {
                return finish(max_pos, NV);
            }
            finish(m, if inexact { NX } else { 0 })
        }
    }

    /// Integer (given as sign and magnitude) → float.
    pub(super) fn from_int(f: Fmt, negative: bool, mag: u64, rm: Rounding) -> (u64, u32) {
        if mag == 0 {
            return (0, 0);
        }
        round_pack(f, Num { sign: negative, exp: 0, sig: mag as u128 }, rm)
    }

    /// Format conversion (exact when narrowing is not needed).
    pub(super) fn convert(from: Fmt, to: Fmt, a: u64, rm: Rounding) -> (u64, u32) {
        let (sign, k) = unpack(from, a);
        match k {
            Kind::Nan => nan_result(to, from.is_snan(a)),
            Kind::Inf => (to.signed_zero(sign) | to.inf(), 0),
            Kind::Zero => (to.signed_zero(sign), 0),
            Kind::Finite { exp, sig } => round_pack(to, Num { sign, exp, sig: sig as u128 }, rm),
        }
    }
}

// ------------------------------------------------------------------------------------------------------
// x86_64 SSE implementation (RNE, RTZ, RDN, RUP).
// ------------------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod hw {
    use super::Rounding;
    use super::{DZ, NV, NX, OF, UF};
    use core::arch::asm;

    /// MXCSR images indexed by `Rounding as usize` (RMM excluded): all exceptions masked (bits 7..=12),
    /// flags clear, DAZ (bit 6) and FTZ (bit 15) off, RC (bits 13..=14) = 00 nearest, 11 toward zero,
    /// 01 down, 10 up.
    const CSR: [u32; 4] = [0x1f80, 0x7f80, 0x3f80, 0x5f80];

    /// The MXCSR every block leaves behind: the control state Rust code requires and LLVM assumes
    /// (round to nearest, all exceptions masked, DAZ/FTZ off) with the sticky flags clear. Loading this
    /// constant instead of saving and restoring the caller's MXCSR avoids a second `stmxcsr`, which
    /// has to wait for in-flight FP operations and dominates the cost (measured ~5 ns on AMD Zen).
    /// The only thing lost is the caller's sticky flags, which Rust code never reads.
    const RUST_DEFAULT: u32 = 0x1f80;

    const fn flag_map() -> [u8; 64] {
        let mut t = [0u8; 64];
        let mut m = 0;
        while m < 64 {
            let mut f = 0;
            if m & 0x01 != 0 {
                f |= NV; // IE
            }
            if m & 0x04 != 0 {
                f |= DZ; // ZE
            }
            if m & 0x08 != 0 {
                f |= OF; // OE
            }
            if m & 0x10 != 0 {
                f |= UF; // UE
            }
            if m & 0x20 != 0 {
                f |= NX; // PE
            }
            // DE (0x02) is ignored.
            t[m] = f as u8;
            m += 1;
        }
        t
    }

    /// MXCSR exception flags (bits 0..=5) → RISC-V fflags.
    static FLAG_MAP: [u8; 64] = flag_map();

    #[inline(always)]
    fn csr(rm: Rounding) -> u32 {
        debug_assert!(rm != Rounding::NearestMaxMagnitude);
        CSR[rm as usize & 3]
    }

    #[inline(always)]
    fn fflags(mxcsr: u32) -> u32 {
        FLAG_MAP[(mxcsr & 0x3f) as usize] as u32
    }

    /// Whether the CPU (and OS) support FMA3.
    #[inline(always)]
    pub(super) fn has_fma() -> bool {
        std::arch::is_x86_feature_detected!("fma")
    }

    macro_rules! binop {
        ($name:ident, $ty:ty, $insn:literal) => {
            /// One SSE scalar instruction under `rm`; returns the raw result and the fflags raised.
            #[inline(always)]
            pub(super) fn $name(a: $ty, b: $ty, rm: Rounding) -> ($ty, u32) {
                let mut x = a;
                // env[0]: MXCSR to run with, then the flags read back; env[1]: MXCSR to leave behind.
                let mut env = [csr(rm), RUST_DEFAULT];
                // SAFETY: the block only touches `env` (a live local array of two u32s, addressed through
                // a valid pointer) and the listed xmm registers. It ends by loading the FP control state
                // Rust code requires (see `RUST_DEFAULT`), so nothing outside the block observes the change.
                unsafe {
                    asm!(
                        "ldmxcsr [{env}]",
                        concat!($insn, " {x}, {y}"),
                        "stmxcsr [{env}]",
                        "ldmxcsr [{env} + 4]",
                        env = in(reg) env.as_mut_ptr(),
                        x = inout(xmm_reg) x,
                        y = in(xmm_reg) b,
                        options(nostack, preserves_flags),
                    );
                }
                (x, fflags(env[0]))
            }
        };
    }

    binop!(add32, u32, "addss");
    binop!(sub32, u32, "subss");
    binop!(mul32, u32, "mulss");
    binop!(div32, u32, "divss");
    binop!(sqrt32, u32, "sqrtss");
    binop!(add64, u64, "addsd");
    binop!(sub64, u64, "subsd");
    binop!(mul64, u64, "mulsd");
    binop!(div64, u64, "divsd");
    binop!(sqrt64, u64, "sqrtsd");
    // cvtsd2ss writes only the low 32 bits of the destination; the caller truncates.
    binop!(cvt64to32, u64, "cvtsd2ss");

    macro_rules! fmaop {
        ($name:ident, $ty:ty, $insn:literal) => {
            /// `a * b + c` with one rounding under `rm`. Only call when [`has_fma`] is true.
            #[inline(always)]
            pub(super) fn $name(a: $ty, b: $ty, c: $ty, rm: Rounding) -> ($ty, u32) {
                debug_assert!(has_fma());
                let mut x = c;
                let mut env = [csr(rm), RUST_DEFAULT];
                // SAFETY: as for `binop!`: only `env` and the listed xmm registers are touched and the
                // block ends in the default FP control state. The VEX-encoded FMA instruction is only
                // reached after the caller checked `has_fma()` (CPUID + OS AVX state), so it is supported.
                unsafe {
                    asm!(
                        "ldmxcsr [{env}]",
                        concat!($insn, " {x}, {y}, {z}"),
                        "stmxcsr [{env}]",
                        "ldmxcsr [{env} + 4]",
                        env = in(reg) env.as_mut_ptr(),
                        x = inout(xmm_reg) x,
                        y = in(xmm_reg) a,
                        z = in(xmm_reg) b,
                        options(nostack, preserves_flags),
                    );
                }
                (x, fflags(env[0]))
            }
        };
    }

    fmaop!(fma32, u32, "vfmadd231ss");
    fmaop!(fma64, u64, "vfmadd231sd");

    /// `x * y + z` rounded once under the current (Rust default, round-to-nearest) MXCSR, for exact
    /// residuals in the fast paths. Only call when [`has_fma`] is true.
    #[inline(always)]
    pub(super) fn fma_default_env(x: f64, y: f64, z: f64) -> f64 {
        debug_assert!(has_fma());
        let mut acc = z;
        // SAFETY: a register-only FMA instruction; the caller checked `has_fma()` (CPUID + OS AVX
        // state), so the VEX encoding is supported. No memory or MXCSR state is touched.
        unsafe {
            asm!(
                "vfmadd231sd {acc}, {x}, {y}",
                acc = inout(xmm_reg) acc,
                x = in(xmm_reg) x,
                y = in(xmm_reg) y,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }
}

// ------------------------------------------------------------------------------------------------------
// Fast paths: native (round-to-nearest-even) arithmetic plus an exact error term, no MXCSR access.
// ------------------------------------------------------------------------------------------------------

/// Cases the fast paths cannot decide exactly (non-finite operands or results, results that may be tiny
/// or need zero-sign rules) return `None` and go to the slow path. Only called with the four IEEE modes.
/// Relies on the Rust default FP environment (round to nearest, no DAZ/FTZ), which all Rust code assumes.
mod fast {
    use super::Rounding::{self, Down};
    use super::{Fmt, F32, F64, NX, OF};

    /// Turns the correctly rounded-to-nearest `r` (finite, non-zero, not within an ulp of the subnormal
    /// range) into the result of mode `rm`, given that the exact value differs from `r` and lies above
    /// (`above`) or below it.
    #[inline(always)]
    fn inexact(f: Fmt, r: u64, above: bool, rm: Rounding) -> (u64, u32) {
        let neg = r & f.sign_bit() != 0;
        // The only possible correction is one ulp towards the exact value. Whether to take it is a
        // constant bit table indexed by (rm, above, neg), which keeps this branch- and memory-free:
        // RTZ when |exact| < |r| (above == neg), RDN when below, RUP when above; never for RNE/RMM.
        const MOVE: u32 = 0b1001 << 4 | 0b0011 << 8 | 0b1100 << 12;
        let take = (MOVE >> ((rm as u32) * 4 + (above as u32) * 2 + neg as u32)) & 1;
        // On the bit pattern, +1 grows the magnitude by one ulp and -1 shrinks it.
        let towards_exact = if above != neg { 1 } else { u64::MAX };
        let step = towards_exact & (take as u64).wrapping_neg();
        let r = r.wrapping_add(step) & (f.sign_bit() | f.mag_mask());
        // Stepping away from zero past the largest finite number is an overflow.
        (r, if r & f.mag_mask() == f.inf() { OF | NX } else { NX })
    }

    macro_rules! add {
        ($name:ident, $ft:ty, $ut:ty, $fmt:expr) => {
            /// Sum via Fast2Sum: the error of a finite sum is exact, and sums are never tiny and inexact.
            #[inline(always)]
            pub(super) fn $name(a: $ut, b: $ut, rm: Rounding) -> Option<($ut, u32)> {
                let (x, y) = (<$ft>::from_bits(a), <$ft>::from_bits(b));
                let s = x + y;
                if !s.is_finite() {
                    return None;
                }
                let (big, small) = if x.abs() >= y.abs() { (x, y) } else { (y, x) };
                let err = small - (s - big);
                if err != 0.0 {
                    let (r, fl) = inexact($fmt, s.to_bits() as u64, err > 0.0, rm);
                    return Some((r as $ut, fl));
                }
                if s == 0.0 && rm == Down && (a | b) != 0 {
                    // Exact zero sum of operands that are not both +0: -0 when rounding down.
                    return Some(((-0.0 as $ft).to_bits(), 0));
                }
                Some((s.to_bits(), 0))
            }
        };
    }
    add!(add32, f32, u32, F32);
    add!(add64, f64, u64, F64);

    /// `x * y + z` rounded once to nearest, when the host does it cheaply.
    #[inline(always)]
    fn fused(x: f64, y: f64, z: f64) -> Option<f64> {
        #[cfg(target_arch = "x86_64")]
        {
            if super::hw::has_fma() {
                Some(super::hw::fma_default_env(x, y, z))
            } else {
                None
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Some(x.mul_add(y, z))
        }
    }

    /// 2^-960: above this, residuals of products, quotients and square roots are exactly representable
    /// and results cannot be tiny.
    const SAFE64: u64 = 63 << 52;
    const INF64: u64 = 0x7ff0_0000_0000_0000;
    const MAG64: u64 = !(1 << 63);

    /// Exact ±0 product of finite operands.
    #[inline(always)]
    fn zero_product(x: f64, y: f64, p: f64) -> Option<(u64, u32)> {
        if p == 0.0 && (x == 0.0 || y == 0.0) && x.is_finite() && y.is_finite() {
            Some((p.to_bits(), 0))
        } else {
            None
        }
    }

    #[inline(always)]
    pub(super) fn mul64(a: u64, b: u64, rm: Rounding) -> Option<(u64, u32)> {
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let p = x * y;
        let m = p.to_bits() & MAG64;
        if m > SAFE64 && m < INF64 {
            let err = fused(x, y, -p)?;
            if err == 0.0 {
                return Some((p.to_bits(), 0));
            }
            return Some(inexact(F64, p.to_bits(), err > 0.0, rm));
        }
        zero_product(x, y, p)
    }

    #[inline(always)]
    pub(super) fn div64(a: u64, b: u64, rm: Rounding) -> Option<(u64, u32)> {
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let q = x / y;
        let m = q.to_bits() & MAG64;
        if m > SAFE64 && m < INF64 && a & MAG64 > SAFE64 {
            let rem = fused(-q, y, x)?; // x - q*y, exact
            if rem == 0.0 {
                return Some((q.to_bits(), 0));
            }
            return Some(inexact(F64, q.to_bits(), (rem > 0.0) == (y > 0.0), rm));
        }
        if x == 0.0 && y != 0.0 && y.is_finite() {
            return Some((q.to_bits(), 0));
        }
        None
    }

    #[inline(always)]
    pub(super) fn sqrt64(a: u64, rm: Rounding) -> Option<(u64, u32)> {
        let x = f64::from_bits(a);
        if a > SAFE64 && a < INF64 {
            let r = x.sqrt();
            let rem = fused(-r, r, x)?; // x - r*r, exact
            if rem == 0.0 {
                return Some((r.to_bits(), 0));
            }
            return Some(inexact(F64, r.to_bits(), rem > 0.0, rm));
        }
        if x == 0.0 {
            return Some((a, 0));
        }
        None
    }

    const MIN_NORMAL32: u32 = 0x0080_0000;
    const INF32: u32 = 0x7f80_0000;
    const MAG32: u32 = !(1 << 31);

    /// `r` (the nearest-even f32 of an exact value known exactly or rounded-to-odd as the f64 `v`)
    /// completed to mode `rm`; `None` if the result may be tiny, overflowed, or is zero.
    #[inline(always)]
    fn finish32(r: f32, v: f64, rm: Rounding) -> Option<(u32, u32)> {
        let m = r.to_bits() & MAG32;
        if m <= MIN_NORMAL32 || m >= INF32 {
            return None;
        }
        let r64 = r as f64;
        if r64 == v {
            return Some((r.to_bits(), 0));
        }
        let (bits, fl) = inexact(F32, r.to_bits() as u64, v > r64, rm);
        Some((bits as u32, fl))
    }

    // binary32 operands are computed exactly (or exactly enough) in binary64.

    #[inline(always)]
    pub(super) fn mul32(a: u32, b: u32, rm: Rounding) -> Option<(u32, u32)> {
        let (x, y) = (f32::from_bits(a) as f64, f32::from_bits(b) as f64);
        let p = x * y; // exact: 24x24 bits, far from binary64 limits
        let r = p as f32;
        if let Some(res) = finish32(r, p, rm) {
            return Some(res);
        }
        zero_product(x, y, p).map(|_| (r.to_bits(), 0))
    }

    #[inline(always)]
    pub(super) fn div32(a: u32, b: u32, rm: Rounding) -> Option<(u32, u32)> {
        let (xf, yf) = (f32::from_bits(a), f32::from_bits(b));
        let q = xf / yf;
        let m = q.to_bits() & MAG32;
        if m > MIN_NORMAL32 && m < INF32 {
            let (x, y, q64) = (xf as f64, yf as f64, q as f64);
            let rem = x - q64 * y; // q*y exact (48 bits); the subtraction is exact (Sterbenz)
            if rem == 0.0 {
                return Some((q.to_bits(), 0));
            }
            let (bits, fl) = inexact(F32, q.to_bits() as u64, (rem > 0.0) == (y > 0.0), rm);
            return Some((bits as u32, fl));
        }
        if xf == 0.0 && yf != 0.0 && yf.is_finite() {
            return Some((q.to_bits(), 0));
        }
        None
    }

    #[inline(always)]
    pub(super) fn sqrt32(a: u32, rm: Rounding) -> Option<(u32, u32)> {
        let xf = f32::from_bits(a);
        if a > 0 && a < INF32 {
            let r = xf.sqrt();
            let r64 = r as f64;
            let rem = xf as f64 - r64 * r64; // exact
            if rem == 0.0 {
                return Some((r.to_bits(), 0));
            }
            let (bits, fl) = inexact(F32, r.to_bits() as u64, rem > 0.0, rm);
            return Some((bits as u32, fl));
        }
        if xf == 0.0 {
            return Some((a, 0));
        }
        None
    }

    /// binary32 FMA without an FMA instruction: the product is exact in binary64, 2Sum makes the sum
    /// exact as s + e, and rounding s to odd keeps enough information for a correct final rounding.
    #[inline(always)]
    pub(super) fn fma32(a: u32, b: u32, c: u32, rm: Rounding) -> Option<(u32, u32)> {
        let (x, y, z) = (f32::from_bits(a) as f64, f32::from_bits(b) as f64, f32::from_bits(c) as f64);
        let p = x * y;
        let s = p + z;
        if !s.is_finite() {
            return None;
        }
        let bb = s - p;
        let e = (p - (s - bb)) + (z - bb);
        let mut v = s;
        if e != 0.0 && s.to_bits() & 1 == 0 {
            // Round to odd: step to the neighbour of s on the side of the exact value.
            let away = (e > 0.0) == (s > 0.0);
            v = f64::from_bits(if away { s.to_bits() + 1 } else { s.to_bits() - 1 });
        }
        finish32(v as f32, v, rm)
    }

    #[inline(always)]
    pub(super) fn narrow(a: u64, rm: Rounding) -> Option<(u32, u32)> {
        let x = f64::from_bits(a);
        let r = x as f32;
        if let Some(res) = finish32(r, x, rm) {
            return Some(res);
        }
        // Zeros and infinities convert exactly.
        if x == 0.0 || x.is_infinite() {
            return Some((r.to_bits(), 0));
        }
        None
    }
}

// ------------------------------------------------------------------------------------------------------
// Public API.
// ------------------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn canon32((x, fl): (u32, u32)) -> (u32, u32) {
    if x & 0x7fff_ffff > 0x7f80_0000 {
        (F32_CANONICAL_NAN, fl)
    } else {
        (x, fl)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn canon64((x, fl): (u64, u32)) -> (u64, u32) {
    if x & 0x7fff_ffff_ffff_ffff > 0x7ff0_0000_0000_0000 {
        (F64_CANONICAL_NAN, fl)
    } else {
        (x, fl)
    }
}

/// Narrows a software result computed on `u64` bit patterns to binary32.
#[inline(always)]
fn to32((x, fl): (u64, u32)) -> (u32, u32) {
    (x as u32, fl)
}

/// Runs `$fast` (an `Option`) for the four IEEE modes; otherwise the SSE slow path `$hw` (x86_64, not RMM)
/// or the software implementation `$soft`.
macro_rules! dispatch {
    ($rm:expr, fast: $fast:expr, hw: $hw:expr, soft: $soft:expr $(,)?) => {{
        let rm: Rounding = $rm;
        if rm != Rounding::NearestMaxMagnitude {
            if let Some(r) = $fast {
                return r;
            }
            #[cfg(target_arch = "x86_64")]
            {
                return $hw;
            }
        }
        $soft
    }};
}

/// Single-precision `a + b`.
#[inline]
pub fn f32_add(a: u32, b: u32, rm: Rounding) -> (u32, u32) {
    dispatch!(
        rm,
        fast: fast::add32(a, b, rm),
        hw: canon32(hw::add32(a, b, rm)),
        soft: to32(soft::add(F32, a as u64, b as u64, rm)),
    )
}

/// Single-precision `a - b`.
#[inline]
pub fn f32_sub(a: u32, b: u32, rm: Rounding) -> (u32, u32) {
    dispatch!(
        rm,
        fast: fast::add32(a, b ^ (1 << 31), rm),
        hw: canon32(hw::sub32(a, b, rm)),
        soft: to32(soft::sub(F32, a as u64, b as u64, rm)),
    )
}

/// Single-precision `a * b`.
#[inline]
pub fn f32_mul(a: u32, b: u32, rm: Rounding) -> (u32, u32) {
    dispatch!(
        rm,
        fast: fast::mul32(a, b, rm),
        hw: canon32(hw::mul32(a, b, rm)),
        soft: to32(soft::mul(F32, a as u64, b as u64, rm)),
    )
}

/// Single-precision `a / b`.
#[inline]
pub fn f32_div(a: u32, b: u32, rm: Rounding) -> (u32, u32) {
    dispatch!(
        rm,
        fast: fast::div32(a, b, rm),
        hw: canon32(hw::div32(a, b, rm)),
        soft: to32(soft::div(F32, a as u64, b as u64, rm)),
    )
}

/// Single-precision square root.
#[inline]
pub fn f32_sqrt(a: u32, rm: Rounding) -> (u32, u32) {
    dispatch!(
        rm,
        fast: fast::sqrt32(a, rm),
        hw: canon32(hw::sqrt32(a, a, rm)),
        soft: to32(soft::sqrt(F32, a as u64, rm)),
    )
}

/// Double-precision `a + b`.
#[inline]
pub fn f64_add(a: u64, b: u64, rm: Rounding) -> (u64, u32) {
    dispatch!(
        rm,
        fast: fast::add64(a, b, rm),
        hw: canon64(hw::add64(a, b, rm)),
        soft: soft::add(F64, a, b, rm),
    )
}

/// Double-precision `a - b`.
#[inline]
pub fn f64_sub(a: u64, b: u64, rm: Rounding) -> (u64, u32) {
    dispatch!(
        rm,
        fast: fast::add64(a, b ^ (1 << 63), rm),
        hw: canon64(hw::sub64(a, b, rm)),
        soft: soft::sub(F64, a, b, rm),
    )
}

/// Double-precision `a * b`.
#[inline]
pub fn f64_mul(a: u64, b: u64, rm: Rounding) -> (u64, u32) {
    dispatch!(
        rm,
        fast: fast::mul64(a, b, rm),
        hw: canon64(hw::mul64(a, b, rm)),
        soft: soft::mul(F64, a, b, rm),
    )
}

/// Double-precision `a / b`.
#[inline]
pub fn f64_div(a: u64, b: u64, rm: Rounding) -> (u64, u32) {
    dispatch!(
        rm,
        fast: fast::div64(a, b, rm),
        hw: canon64(hw::div64(a, b, rm)),
        soft: soft::div(F64, a, b, rm),
    )
}

/// Double-precision square root.
#[inline]
pub fn f64_sqrt(a: u64, rm: Rounding) -> (u64, u32) {
    dispatch!(
        rm,
        fast: fast::sqrt64(a, rm),
        hw: canon64(hw::sqrt64(a, a, rm)),
        soft: soft::sqrt(F64, a, rm),
    )
}

/// NV for `inf * 0` (RISC-V raises it even when the addend is a quiet NaN).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn fma_inf_zero(f: Fmt, a: u64, b: u64) -> u32 {
    if (f.is_inf(a) && f.is_zero(b)) || (f.is_zero(a) && f.is_inf(b)) {
        NV
    } else {
        0
    }
}

/// SSE FMA with RISC-V NaN rules, if the CPU has FMA3.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hw_fma32(a: u32, b: u32, c: u32, rm: Rounding) -> Option<(u32, u32)> {
    if !hw::has_fma() {
        return None;
    }
    let (r, fl) = hw::fma32(a, b, c, rm);
    if F32.is_nan(r as u64) {
        return Some((F32_CANONICAL_NAN, fl | fma_inf_zero(F32, a as u64, b as u64)));
    }
    Some((r, fl))
}

/// SSE FMA with RISC-V NaN rules, if the CPU has FMA3.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hw_fma64(a: u64, b: u64, c: u64, rm: Rounding) -> Option<(u64, u32)> {
    if !hw::has_fma() {
        return None;
    }
    let (r, fl) = hw::fma64(a, b, c, rm);
    if F64.is_nan(r) {
        return Some((F64_CANONICAL_NAN, fl | fma_inf_zero(F64, a, b)));
    }
    Some((r, fl))
}

/// Single-precision `a * b + c` with a single rounding (the caller pre-negates for FMSUB/FNMSUB/FNMADD).
#[inline]
pub fn f32_mul_add(a: u32, b: u32, c: u32, rm: Rounding) -> (u32, u32) {
    if rm != Rounding::NearestMaxMagnitude {
        if let Some(r) = fast::fma32(a, b, c, rm) {
            return r;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(r) = hw_fma32(a, b, c, rm) {
                return r;
            }
        }
    }
    to32(soft::mul_add(F32, a as u64, b as u64, c as u64, rm))
}

/// Double-precision `a * b + c` with a single rounding (the caller pre-negates for FMSUB/FNMSUB/FNMADD).
#[inline]
pub fn f64_mul_add(a: u64, b: u64, c: u64, rm: Rounding) -> (u64, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        if rm != Rounding::NearestMaxMagnitude {
            if let Some(r) = hw_fma64(a, b, c, rm) {
                return r;
            }
        }
    }
    soft::mul_add(F64, a, b, c, rm)
}

#[inline(always)]
fn min_max(f: Fmt, a: u64, b: u64, want_max: bool) -> (u64, u32) {
    let fl = if f.is_snan(a) || f.is_snan(b) { NV } else { 0 };
    let r = match (f.is_nan(a), f.is_nan(b)) {
        (true, true) => f.canonical_nan(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if (f.order_key(a) < f.order_key(b)) != want_max {
                a
            } else {
                b
            }
        }
    };
    (r, fl)
}

/// fmin.s: IEEE 754-2019 minimumNumber (-0 < +0; NaN operands are ignored unless both are NaN).
#[inline]
pub fn f32_min(a: u32, b: u32) -> (u32, u32) {
    let (r, fl) = min_max(F32, a as u64, b as u64, false);
    (r as u32, fl)
}

/// fmax.s: IEEE 754-2019 maximumNumber.
#[inline]
pub fn f32_max(a: u32, b: u32) -> (u32, u32) {
    let (r, fl) = min_max(F32, a as u64, b as u64, true);
    (r as u32, fl)
}

/// fmin.d: IEEE 754-2019 minimumNumber.
#[inline]
pub fn f64_min(a: u64, b: u64) -> (u64, u32) {
    min_max(F64, a, b, false)
}

/// fmax.d: IEEE 754-2019 maximumNumber.
#[inline]
pub fn f64_max(a: u64, b: u64) -> (u64, u32) {
    min_max(F64, a, b, true)
}

/// Ordered comparison of two non-NaN values: `Less`, `Equal` (incl. -0 == +0) or `Greater`.
#[inline(always)]
fn compare(f: Fmt, a: u64, b: u64) -> core::cmp::Ordering {
    if f.is_zero(a) && f.is_zero(b) {
        core::cmp::Ordering::Equal
    } else {
        f.order_key(a).cmp(&f.order_key(b))
    }
}

#[inline(always)]
fn feq(f: Fmt, a: u64, b: u64) -> (bool, u32) {
    if f.is_nan(a) || f.is_nan(b) {
        (false, if f.is_snan(a) || f.is_snan(b) { NV } else { 0 })
    } else {
        (compare(f, a, b).is_eq(), 0)
    }
}

#[inline(always)]
fn flt(f: Fmt, a: u64, b: u64, or_equal: bool) -> (bool, u32) {
    if f.is_nan(a) || f.is_nan(b) {
        (false, NV)
    } else {
        let c = compare(f, a, b);
        (c.is_lt() || (or_equal && c.is_eq()), 0)
    }
}

/// feq.s (quiet: NV only for signaling NaNs).
#[inline]
pub fn f32_eq(a: u32, b: u32) -> (bool, u32) {
    feq(F32, a as u64, b as u64)
}
/// flt.s (signaling: NV for any NaN).
#[inline]
pub fn f32_lt(a: u32, b: u32) -> (bool, u32) {
    flt(F32, a as u64, b as u64, false)
}
/// fle.s (signaling: NV for any NaN).
#[inline]
pub fn f32_le(a: u32, b: u32) -> (bool, u32) {
    flt(F32, a as u64, b as u64, true)
}
/// feq.d (quiet: NV only for signaling NaNs).
#[inline]
pub fn f64_eq(a: u64, b: u64) -> (bool, u32) {
    feq(F64, a, b)
}
/// flt.d (signaling: NV for any NaN).
#[inline]
pub fn f64_lt(a: u64, b: u64) -> (bool, u32) {
    flt(F64, a, b, false)
}
/// fle.d (signaling: NV for any NaN).
#[inline]
pub fn f64_le(a: u64, b: u64) -> (bool, u32) {
    flt(F64, a, b, true)
}

#[inline(always)]
fn classify(f: Fmt, a: u64) -> u64 {
    let neg = a & f.sign_bit() != 0;
    let mag = a & f.mag_mask();
    let bit = if mag > f.inf() {
        if a & f.quiet_bit() != 0 {
            9
        } else {
            8
        }
    } else {
        let pos_class = if mag == f.inf() {
            3 // infinity
        } else if mag >> f.frac_bits != 0 {
            2 // normal
        } else if mag != 0 {
            1 // subnormal
        } else {
            0 // zero
        };
        if neg {
            3 - pos_class
        } else {
            4 + pos_class
        }
    };
    1 << bit
}

/// fclass.s: the 10-bit class mask (bit 0 -inf … bit 7 +inf, bit 8 sNaN, bit 9 qNaN).
#[inline]
pub fn f32_classify(a: u32) -> u64 {
    classify(F32, a as u64)
}

/// fclass.d: the 10-bit class mask.
#[inline]
pub fn f64_classify(a: u64) -> u64 {
    classify(F64, a)
}

macro_rules! to_int {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $fmt:expr, $width:expr, $signed:expr) => {
        $(#[$doc])*
        #[inline]
        pub fn $name(a: $ty, rm: Rounding) -> (u64, u32) {
            soft::to_int($fmt, a as u64, rm, $width, $signed)
        }
    };
}

to_int!(
    /// fcvt.w.s (result sign-extended to 64 bits; saturating, NV when out of range or NaN).
    f32_to_i32, u32, F32, 32, true
);
to_int!(
    /// fcvt.wu.s (the 32-bit result is sign-extended to 64 bits, as RV64 writes it).
    f32_to_u32, u32, F32, 32, false
);
to_int!(
    /// fcvt.l.s.
    f32_to_i64, u32, F32, 64, true
);
to_int!(
    /// fcvt.lu.s.
    f32_to_u64, u32, F32, 64, false
);
to_int!(
    /// fcvt.w.d (result sign-extended to 64 bits).
    f64_to_i32, u64, F64, 32, true
);
to_int!(
    /// fcvt.wu.d (the 32-bit result is sign-extended to 64 bits).
    f64_to_u32, u64, F64, 32, false
);
to_int!(
    /// fcvt.l.d.
    f64_to_i64, u64, F64, 64, true
);
to_int!(
    /// fcvt.lu.d.
    f64_to_u64, u64, F64, 64, false
);

/// fcvt.s.w.
#[inline]
pub fn i32_to_f32(a: i32, rm: Rounding) -> (u32, u32) {
    if a.unsigned_abs() <= 1 << 24 {
        return ((a as f32).to_bits(), 0); // exact
    }
    let (r, fl) = soft::from_int(F32, a < 0, a.unsigned_abs() as u64, rm);
    (r as u32, fl)
}

/// fcvt.s.wu.
#[inline]
pub fn u32_to_f32(a: u32, rm: Rounding) -> (u32, u32) {
    if a <= 1 << 24 {
        return ((a as f32).to_bits(), 0);
    }
    let (r, fl) = soft::from_int(F32, false, a as u64, rm);
    (r as u32, fl)
}

/// fcvt.s.l.
#[inline]
pub fn i64_to_f32(a: i64, rm: Rounding) -> (u32, u32) {
    if a.unsigned_abs() <= 1 << 24 {
        return ((a as f32).to_bits(), 0);
    }
    let (r, fl) = soft::from_int(F32, a < 0, a.unsigned_abs(), rm);
    (r as u32, fl)
}

/// fcvt.s.lu.
#[inline]
pub fn u64_to_f32(a: u64, rm: Rounding) -> (u32, u32) {
    if a <= 1 << 24 {
        return ((a as f32).to_bits(), 0);
    }
    let (r, fl) = soft::from_int(F32, false, a, rm);
    (r as u32, fl)
}

/// fcvt.d.w (always exact).
#[inline]
pub fn i32_to_f64(a: i32, _rm: Rounding) -> (u64, u32) {
    ((a as f64).to_bits(), 0)
}

/// fcvt.d.wu (always exact).
#[inline]
pub fn u32_to_f64(a: u32, _rm: Rounding) -> (u64, u32) {
    ((a as f64).to_bits(), 0)
}

/// fcvt.d.l.
#[inline]
pub fn i64_to_f64(a: i64, rm: Rounding) -> (u64, u32) {
    if a.unsigned_abs() <= 1 << 53 {
        return ((a as f64).to_bits(), 0);
    }
    soft::from_int(F64, a < 0, a.unsigned_abs(), rm)
}

/// fcvt.d.lu.
#[inline]
pub fn u64_to_f64(a: u64, rm: Rounding) -> (u64, u32) {
    if a <= 1 << 53 {
        return ((a as f64).to_bits(), 0);
    }
    soft::from_int(F64, false, a, rm)
}

/// fcvt.d.s: exact; NaN → canonical NaN (NV if signaling).
#[inline]
pub fn f32_to_f64(a: u32) -> (u64, u32) {
    if F32.is_nan(a as u64) {
        let fl = if F32.is_snan(a as u64) { NV } else { 0 };
        return (F64_CANONICAL_NAN, fl);
    }
    // Widening a non-NaN value is exact.
    ((f32::from_bits(a) as f64).to_bits(), 0)
}

/// fcvt.s.d.
#[inline]
pub fn f64_to_f32(a: u64, rm: Rounding) -> (u32, u32) {
    dispatch!(
        rm,
        fast: fast::narrow(a, rm),
        hw: canon32(to32(hw::cvt64to32(0, a, rm))),
        soft: to32(soft::convert(F64, F32, a, rm)),
    )
}

#[cfg(test)]
mod tests {
    use super::Rounding::{Down, NearestEven as Rne, NearestMaxMagnitude as Rmm, TowardZero as Rtz, Up};
    use super::*;

    const ALL: [Rounding; 5] = [Rne, Rtz, Down, Up, Rmm];
    #[cfg(target_arch = "x86_64")]
    const SHARED: [Rounding; 4] = [Rne, Rtz, Down, Up];

    const D_MAX: u64 = 0x7fef_ffff_ffff_ffff;
    const D_INF: u64 = 0x7ff0_0000_0000_0000;
    const D_MIN_NORMAL: u64 = 0x0010_0000_0000_0000;
    const D_MAX_SUB: u64 = 0x000f_ffff_ffff_ffff;
    const D_QNAN: u64 = 0xfff8_0000_0000_1234; // negative quiet NaN with a payload
    const D_QNAN2: u64 = 0x7ff8_dead_0000_0000;
    const D_SNAN: u64 = 0x7ff0_0000_0000_0001;
    const D_SNAN2: u64 = 0xfff4_0000_0000_0000;
    const D_NEG: u64 = 1 << 63;

    const S_MAX: u32 = 0x7f7f_ffff;
    const S_INF: u32 = 0x7f80_0000;
    const S_MIN_NORMAL: u32 = 0x0080_0000;
    const S_MAX_SUB: u32 = 0x007f_ffff;
    const S_QNAN: u32 = 0xffc0_1234;
    const S_QNAN2: u32 = 0x7fc0_dead;
    const S_SNAN: u32 = 0x7f80_0001;
    const S_SNAN2: u32 = 0xffa0_0000;
    const S_NEG: u32 = 1 << 31;

    fn d(x: f64) -> u64 {
        x.to_bits()
    }
    fn s(x: f32) -> u32 {
        x.to_bits()
    }
    /// 2^e as f64, exact over the whole range including subnormals.
    fn p2(e: i32) -> f64 {
        assert!((-1074..=1023).contains(&e));
        if e >= -1022 {
            f64::from_bits(((e + 1023) as u64) << 52)
        } else {
            f64::from_bits(1 << (e + 1074))
        }
    }

    #[track_caller]
    fn expect<T: Copy + PartialEq + core::fmt::LowerHex>(got: (T, u32), want: (T, u32), ctx: &str) {
        assert!(
            got == want,
            "{ctx}: got ({:#x}, fflags {:#x}), want ({:#x}, fflags {:#x})",
            got.0,
            got.1,
            want.0,
            want.1
        );
    }

    /// xorshift64 (deterministic).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bit(&mut self) -> bool {
            self.next() & 1 != 0
        }
    }

    /// Random operand biased towards the interesting parts of format `f`.
    fn gen(r: &mut Rng, f: Fmt) -> u64 {
        let sign = if r.bit() { f.sign_bit() } else { 0 };
        let max_be = (1u64 << f.exp_bits) - 1;
        let p = f.prec() as u64;
        match r.below(16) {
            0..=3 => r.next() & (f.sign_bit() | f.mag_mask()),
            4 => {
                let specials = [
                    0,
                    f.inf(),
                    f.canonical_nan(),
                    f.inf() | 1,
                    f.inf() | f.quiet_bit() | 5,
                    1,
                    f.frac_mask(),
                    1 << f.frac_bits,
                    f.max_finite(),
                    (f.bias() as u64) << f.frac_bits,
                ];
                sign | specials[r.below(specials.len() as u64) as usize]
            }
            _ => {
                let be = match r.below(6) {
                    0 => r.below(max_be),
                    1 => r.below(p + 3),
                    2 => max_be - 1 - r.below(p + 3),
                    _ => f.bias() as u64 - 30 + r.below(60),
                };
                let fm = f.frac_mask();
                let frac = match r.below(5) {
                    0 | 1 => r.next() & fm,
                    2 => r.next() & fm & !((1u64 << r.below(f.frac_bits as u64)) - 1),
                    3 => fm ^ (r.next() & 0xff),
                    _ => r.next() & 0xff,
                };
                sign | be << f.frac_bits | frac
            }
        }
    }

    /// A value close to `a` (similar exponent, random low bits), to exercise cancellation and ties.
    fn near(r: &mut Rng, f: Fmt, a: u64) -> u64 {
        let max_be = (1i64 << f.exp_bits) - 1;
        let be = ((a >> f.frac_bits) & max_be as u64) as i64;
        if be == max_be {
            return gen(r, f);
        }
        let nbe = (be + r.below(2 * f.prec() as u64 + 7) as i64 - f.prec() as i64 - 3).clamp(0, max_be - 1);
        let sign = if r.bit() { f.sign_bit() } else { 0 };
        let frac = (a & f.frac_mask()) ^ (r.next() & ((1u64 << r.below(f.frac_bits as u64 + 1)) - 1));
        sign | (nbe as u64) << f.frac_bits | frac
    }

    /// An operand `b` such that `a * b` or `a / b` lands near one of the thresholds that matter: the
    /// fast-path guards, the subnormal range, overflow.
    fn scaled_for(r: &mut Rng, f: Fmt, a: u64) -> u64 {
        let max_be = (1i64 << f.exp_bits) - 1;
        let bias = f.bias() as i64;
        let targets: &[i64] = if f.exp_bits == 8 {
            &[-126, -127, -149, -150, 127, 128, 0]
        } else {
            &[-960, -961, -1022, -1023, -1074, 1023, 1024, 0]
        };
        let t = targets[r.below(targets.len() as u64) as usize] + r.below(3) as i64 - 1;
        let ea = ((a >> f.frac_bits) as i64 & max_be) - bias;
        let eb = if r.bit() { t - ea } else { ea - t };
        let be = (eb + bias).clamp(0, max_be - 1) as u64;
        let sign = if r.bit() { f.sign_bit() } else { 0 };
        sign | be << f.frac_bits | (r.next() & f.frac_mask())
    }

    fn triple(r: &mut Rng, f: Fmt) -> (u64, u64, u64) {
        let a = gen(r, f);
        let b = match r.below(6) {
            0 | 1 => near(r, f, a),
            2 => scaled_for(r, f, a),
            _ => gen(r, f),
        };
        let c = match r.below(4) {
            0 => near(r, f, a),
            1 => {
                // c close to -(a*b): heavy cancellation in fma.
                let prod = if f.exp_bits == 8 {
                    (f32::from_bits(a as u32) * f32::from_bits(b as u32)).to_bits() as u64
                } else {
                    (f64::from_bits(a) * f64::from_bits(b)).to_bits()
                };
                near(r, f, prod ^ f.sign_bit())
            }
            _ => gen(r, f),
        };
        (a, b, c)
    }

    // ------------------------------------------------------------------ basic / rounding modes

    #[test]
    fn rounding_from_bits() {
        for (i, m) in ALL.iter().enumerate() {
            assert_eq!(Rounding::from_bits(i as u32), Some(*m));
            assert_eq!(*m as u32, i as u32);
        }
        for rm in 5..=8 {
            assert_eq!(Rounding::from_bits(rm), None);
        }
    }

    #[test]
    fn one_plus_tiny_in_every_mode() {
        let one = d(1.0);
        let (above, below) = (one + 1, one - 1);
        let t = d(p2(-60));
        let add = [one, one, one, above, one];
        let sub = [one, below, below, one, one];
        let neg_sub = [one, one, above, one, one];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_add(one, t, rm), (add[i], NX), &format!("1+2^-60 {rm:?}"));
            expect(f64_add(t, one, rm), (add[i], NX), &format!("2^-60+1 {rm:?}"));
            expect(f64_mul_add(one, one, t, rm), (add[i], NX), &format!("fma 1*1+2^-60 {rm:?}"));
            expect(f64_sub(one, t, rm), (sub[i], NX), &format!("1-2^-60 {rm:?}"));
            expect(f64_sub(one | D_NEG, t, rm), (neg_sub[i] | D_NEG, NX), &format!("-1-2^-60 {rm:?}"));
        }
        let one = s(1.0);
        let (above, below) = (one + 1, one - 1);
        let t = s(2f32.powi(-30));
        for (i, &rm) in ALL.iter().enumerate() {
            let pick = |x: u64| {
                if x == d(1.0) {
                    one
                } else if x == d(1.0) + 1 {
                    above
                } else {
                    below
                }
            };
            expect(f32_add(one, t, rm), (pick(add[i]), NX), &format!("f32 1+2^-30 {rm:?}"));
            expect(f32_mul_add(one, one, t, rm), (pick(add[i]), NX), &format!("f32 fma {rm:?}"));
            expect(f32_sub(one, t, rm), (pick(sub[i]), NX), &format!("f32 1-2^-30 {rm:?}"));
            expect(f32_sub(one | S_NEG, t, rm), (pick(neg_sub[i]) | S_NEG, NX), &format!("f32 -1-2^-30 {rm:?}"));
        }
    }

    #[test]
    fn one_third_and_sqrt2_in_every_mode() {
        let lo = 0x3fd5_5555_5555_5555u64;
        let pos = [lo, lo, lo, lo + 1, lo];
        let neg = [lo, lo, lo + 1, lo, lo];
        let (slo, shi) = (0x3eaa_aaaau32, 0x3eaa_aaabu32);
        let spos = [shi, slo, slo, shi, shi];
        let sneg = [shi, slo, shi, slo, shi];
        let r2 = 0x3ff6_a09e_667f_3bcdu64; // sqrt(2) rounded to nearest is above the true value
        let sqrt2 = [r2, r2 - 1, r2 - 1, r2, r2];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_div(d(1.0), d(3.0), rm), (pos[i], NX), &format!("1/3 {rm:?}"));
            expect(f64_div(d(-1.0), d(3.0), rm), (neg[i] | D_NEG, NX), &format!("-1/3 {rm:?}"));
            expect(f32_div(s(1.0), s(3.0), rm), (spos[i], NX), &format!("f32 1/3 {rm:?}"));
            expect(f32_div(s(1.0), s(-3.0), rm), (sneg[i] | S_NEG, NX), &format!("f32 -1/3 {rm:?}"));
            expect(f64_sqrt(d(2.0), rm), (sqrt2[i], NX), &format!("sqrt2 {rm:?}"));
            expect(f64_sqrt(d(4.0), rm), (d(2.0), 0), &format!("sqrt4 {rm:?}"));
            expect(f32_sqrt(s(0.25), rm), (s(0.5), 0), &format!("f32 sqrt.25 {rm:?}"));
        }
        // f32 sqrt(2) = 0x3fb504f3 (rounded down from the true value).
        expect(f32_sqrt(s(2.0), Up), (0x3fb5_04f4, NX), "f32 sqrt2 up");
        expect(f32_sqrt(s(2.0), Rmm), (0x3fb5_04f3, NX), "f32 sqrt2 rmm");
    }

    #[test]
    fn rmm_exact_ties() {
        // Additions whose exact sum is halfway between two floats.
        let two24 = s(16_777_216.0);
        expect(f32_add(two24, s(1.0), Rne), (two24, NX), "2^24+1 rne");
        expect(f32_add(two24, s(1.0), Rmm), (s(16_777_218.0), NX), "2^24+1 rmm");
        expect(f32_add(two24 | S_NEG, s(-1.0), Rmm), (s(-16_777_218.0), NX), "-2^24-1 rmm");
        expect(f32_sub(s(16_777_218.0), s(1.0), Rmm), (s(16_777_218.0), NX), "2^24+2-1 rmm");
        expect(f32_sub(s(16_777_218.0), s(1.0), Rne), (two24, NX), "2^24+2-1 rne");
        expect(f32_add(two24, s(3.0), Rmm), (s(16_777_220.0), NX), "2^24+3 rmm (tie to even agrees)");
        let two53 = d(p2(53));
        expect(f64_add(two53, d(1.0), Rne), (two53, NX), "2^53+1 rne");
        expect(f64_add(two53, d(1.0), Rmm), (two53 + 1, NX), "2^53+1 rmm");
        expect(f64_sub(two53 | D_NEG, d(1.0), Rmm), ((two53 + 1) | D_NEG, NX), "-2^53-1 rmm");
        // Products.
        expect(f32_mul(s(4097.0), s(4097.0), Rne), (s(16_785_408.0), NX), "4097^2 rne");
        expect(f32_mul(s(4097.0), s(4097.0), Rmm), (s(16_785_410.0), NX), "4097^2 rmm");
        let (a, b) = (((1u64 << 26) + 1) as f64, ((1u64 << 27) + 1) as f64);
        let p = (1u64 << 53) + (1 << 27) + (1 << 26) + 1;
        expect(f64_mul(d(a), d(b), Rne), (d((p - 1) as f64), NX), "54-bit product rne");
        expect(f64_mul(d(a), d(b), Rmm), (d((p + 1) as f64), NX), "54-bit product rmm");
        expect(f64_mul(d(-a), d(b), Rmm), (d(-((p + 1) as f64)), NX), "54-bit product rmm neg");
        // Ties on the subnormal grid (2.5 units of the smallest subnormal).
        let want = [2u64, 2, 2, 3, 3];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_div(5, d(2.0), rm), (want[i], UF | NX), &format!("subnormal 5/2 {rm:?}"));
            expect(f64_mul(5, d(0.5), rm), (want[i], UF | NX), &format!("subnormal 5*0.5 {rm:?}"));
            expect(f32_div(5, s(2.0), rm), (want[i] as u32, UF | NX), &format!("f32 subnormal 5/2 {rm:?}"));
        }
        expect(f64_mul(5 | D_NEG, d(0.5), Rmm), (3 | D_NEG, UF | NX), "neg subnormal tie rmm");
        // Fused multiply-add.
        expect(f64_mul_add(two53, d(1.0), d(1.0), Rne), (two53, NX), "fma 2^53+1 rne");
        expect(f64_mul_add(two53, d(1.0), d(1.0), Rmm), (two53 + 1, NX), "fma 2^53+1 rmm");
        expect(f32_mul_add(two24, s(1.0), s(1.0), Rmm), (two24 + 1, NX), "f32 fma 2^24+1 rmm");
        // (1+2^-52)^2 + (2^-53 - 2^-104) = 1 + 2^-51 + 2^-53: a tie only visible with the full 106-bit product.
        let a = d(1.0) + 1;
        let c = d(p2(-53) - p2(-104));
        expect(f64_mul_add(a, a, c, Rne), (d(1.0) + 2, NX), "106-bit fma tie rne");
        expect(f64_mul_add(a, a, c, Rmm), (d(1.0) + 3, NX), "106-bit fma tie rmm");
        expect(f64_mul_add(a, a, c, Up), (d(1.0) + 3, NX), "106-bit fma tie up");
        // Narrowing conversion.
        let x = d(1.0 + p2(-24));
        expect(f64_to_f32(x, Rne), (s(1.0), NX), "1+2^-24 -> f32 rne");
        expect(f64_to_f32(x, Rmm), (s(1.0) + 1, NX), "1+2^-24 -> f32 rmm");
        expect(f64_to_f32(x | D_NEG, Rmm), ((s(1.0) + 1) | S_NEG, NX), "-(1+2^-24) -> f32 rmm");
        // Integer -> float.
        expect(u64_to_f32((1 << 24) + 1, Rne), (two24, NX), "u64 2^24+1 rne");
        expect(u64_to_f32((1 << 24) + 1, Rmm), (two24 + 1, NX), "u64 2^24+1 rmm");
        expect(u32_to_f32((1 << 24) + 1, Rmm), (two24 + 1, NX), "u32 2^24+1 rmm");
        expect(i32_to_f32(-(1 << 24) - 1, Rmm), ((two24 + 1) | S_NEG, NX), "i32 -(2^24+1) rmm");
        expect(i64_to_f64((1 << 53) + 1, Rne), (two53, NX), "i64 2^53+1 rne");
        expect(i64_to_f64((1 << 53) + 1, Rmm), (two53 + 1, NX), "i64 2^53+1 rmm");
        expect(i64_to_f64(-(1 << 53) - 1, Rmm), ((two53 + 1) | D_NEG, NX), "i64 -(2^53+1) rmm");
        expect(u64_to_f64((1 << 53) + 1, Rmm), (two53 + 1, NX), "u64 2^53+1 rmm");
        // Float -> integer.
        expect(f64_to_i32(d(2.5), Rmm), (3, NX), "2.5 rmm");
        expect(f64_to_i32(d(2.5), Rne), (2, NX), "2.5 rne");
        expect(f32_to_i32(s(2.5), Rmm), (3, NX), "f32 2.5 rmm");
        expect(f32_to_i64(s(-2.5), Rmm), (-3i64 as u64, NX), "f32 -2.5 rmm");
        expect(f64_to_u64(d(0.5), Rmm), (1, NX), "0.5 rmm");
        expect(f64_to_u64(d(0.5), Rne), (0, NX), "0.5 rne");
        // -0.5 rounds to -1 under RMM, which an unsigned destination cannot hold.
        expect(f32_to_u32(s(-0.5), Rmm), (0, NV), "-0.5 -> u32 rmm");
        expect(f64_to_i32(d(-2_147_483_648.5), Rne), (0xffff_ffff_8000_0000, NX), "-2^31-0.5 rne");
        expect(f64_to_i32(d(-2_147_483_648.5), Rmm), (0xffff_ffff_8000_0000, NV), "-2^31-0.5 rmm");
    }

    #[test]
    fn signed_zeros() {
        for &rm in &ALL {
            let ctx = format!("{rm:?}");
            let z = if rm == Down { d(-0.0) } else { d(0.0) };
            let nz = d(-0.0);
            expect(f64_sub(d(1.5), d(1.5), rm), (z, 0), &ctx);
            expect(f64_add(d(1.5), d(-1.5), rm), (z, 0), &ctx);
            expect(f64_add(1, 1 | D_NEG, rm), (z, 0), &ctx);
            expect(f64_add(nz, nz, rm), (nz, 0), &ctx);
            expect(f64_add(d(0.0), nz, rm), (z, 0), &ctx);
            expect(f64_sub(nz, d(0.0), rm), (nz, 0), &ctx);
            expect(f64_sub(d(0.0), d(0.0), rm), (z, 0), &ctx);
            expect(f64_add(nz, d(2.0), rm), (d(2.0), 0), &ctx);
            expect(f64_mul_add(d(1.0), d(1.0), d(-1.0), rm), (z, 0), &ctx);
            expect(f64_mul_add(d(0.0), d(1.0), nz, rm), (z, 0), &ctx);
            expect(f64_mul_add(nz, d(1.0), nz, rm), (nz, 0), &ctx);
            expect(f64_mul_add(nz, d(5.0), d(3.0), rm), (d(3.0), 0), &ctx);
            expect(f64_mul_add(d(2.0), d(3.0), nz, rm), (d(6.0), 0), &ctx);
            expect(f64_mul(nz, d(3.0), rm), (nz, 0), &ctx);
            expect(f64_mul(nz, nz, rm), (d(0.0), 0), &ctx);
            expect(f64_div(nz, d(3.0), rm), (nz, 0), &ctx);
            expect(f64_sqrt(nz, rm), (nz, 0), &ctx);
            let z = if rm == Down { s(-0.0) } else { s(0.0) };
            let nz = s(-0.0);
            expect(f32_sub(s(1.5), s(1.5), rm), (z, 0), &ctx);
            expect(f32_add(1, 1 | S_NEG, rm), (z, 0), &ctx);
            expect(f32_add(nz, nz, rm), (nz, 0), &ctx);
            expect(f32_add(s(0.0), nz, rm), (z, 0), &ctx);
            expect(f32_mul_add(s(1.0), s(1.0), s(-1.0), rm), (z, 0), &ctx);
            expect(f32_mul_add(nz, s(1.0), nz, rm), (nz, 0), &ctx);
            expect(f32_mul(nz, s(3.0), rm), (nz, 0), &ctx);
            expect(f32_div(s(0.0), s(-3.0), rm), (nz, 0), &ctx);
            expect(f32_sqrt(nz, rm), (nz, 0), &ctx);
        }
    }

    #[test]
    fn nans_are_canonical_and_snan_signals() {
        for &rm in &ALL {
            for (q, sn) in [(D_QNAN, D_SNAN), (D_QNAN2, D_SNAN2)] {
                for (x, fl) in [(q, 0), (sn, NV)] {
                    let ctx = format!("f64 {x:#x} {rm:?}");
                    let want = (F64_CANONICAL_NAN, fl);
                    expect(f64_add(x, d(1.0), rm), want, &ctx);
                    expect(f64_add(d(1.0), x, rm), want, &ctx);
                    expect(f64_sub(x, D_INF, rm), want, &ctx);
                    expect(f64_mul(d(0.0), x, rm), want, &ctx);
                    expect(f64_div(x, d(0.0), rm), want, &ctx);
                    expect(f64_div(d(1.0), x, rm), want, &ctx);
                    expect(f64_sqrt(x, rm), want, &ctx);
                    expect(f64_mul_add(x, d(1.0), d(1.0), rm), want, &ctx);
                    expect(f64_mul_add(d(1.0), x, d(1.0), rm), want, &ctx);
                    expect(f64_mul_add(d(1.0), d(1.0), x, rm), want, &ctx);
                    expect(f64_to_f32(x, rm), (F32_CANONICAL_NAN, fl), &ctx);
                    expect(f64_add(x, q, rm), want, &ctx);
                }
                expect(f64_add(q, sn, rm), (F64_CANONICAL_NAN, NV), "qnan+snan");
            }
            for (q, sn) in [(S_QNAN, S_SNAN), (S_QNAN2, S_SNAN2)] {
                for (x, fl) in [(q, 0), (sn, NV)] {
                    let ctx = format!("f32 {x:#x} {rm:?}");
                    let want = (F32_CANONICAL_NAN, fl);
                    expect(f32_add(x, s(1.0), rm), want, &ctx);
                    expect(f32_sub(s(1.0), x, rm), want, &ctx);
                    expect(f32_mul(x, S_INF, rm), want, &ctx);
                    expect(f32_div(s(0.0), x, rm), want, &ctx);
                    expect(f32_sqrt(x, rm), want, &ctx);
                    expect(f32_mul_add(x, s(1.0), s(1.0), rm), want, &ctx);
                    expect(f32_mul_add(s(1.0), x, s(1.0), rm), want, &ctx);
                    expect(f32_mul_add(s(1.0), s(1.0), x, rm), want, &ctx);
                    expect(f32_to_f64(x), (F64_CANONICAL_NAN, fl), &ctx);
                }
            }
        }
    }

    #[test]
    fn invalid_operations() {
        let (pinf, ninf) = (D_INF, D_INF | D_NEG);
        let (sinf, sninf) = (S_INF, S_INF | S_NEG);
        let nan = (F64_CANONICAL_NAN, NV);
        let snan = (F32_CANONICAL_NAN, NV);
        for &rm in &ALL {
            let ctx = format!("{rm:?}");
            expect(f64_add(pinf, ninf, rm), nan, &ctx);
            expect(f64_sub(pinf, pinf, rm), nan, &ctx);
            expect(f64_mul(d(0.0), pinf, rm), nan, &ctx);
            expect(f64_mul(ninf, d(-0.0), rm), nan, &ctx);
            expect(f64_div(d(0.0), d(-0.0), rm), nan, &ctx);
            expect(f64_div(pinf, ninf, rm), nan, &ctx);
            expect(f64_sqrt(d(-1.0), rm), nan, &ctx);
            expect(f64_sqrt(ninf, rm), nan, &ctx);
            expect(f64_sqrt(1 | D_NEG, rm), nan, &ctx);
            expect(f64_mul_add(pinf, d(0.0), d(1.0), rm), nan, &ctx);
            expect(f64_mul_add(d(0.0), pinf, D_QNAN, rm), nan, &ctx);
            expect(f64_mul_add(pinf, d(-0.0), D_QNAN2, rm), nan, &ctx);
            expect(f64_mul_add(pinf, d(1.0), ninf, rm), nan, &ctx);
            expect(f64_mul_add(ninf, d(-1.0), ninf, rm), nan, &ctx);
            expect(f32_add(sinf, sninf, rm), snan, &ctx);
            expect(f32_mul(sinf, s(0.0), rm), snan, &ctx);
            expect(f32_div(sinf, sinf, rm), snan, &ctx);
            expect(f32_div(s(0.0), s(0.0), rm), snan, &ctx);
            expect(f32_sqrt(s(-1.0), rm), snan, &ctx);
            expect(f32_mul_add(s(0.0), sinf, S_QNAN, rm), snan, &ctx);
            expect(f32_mul_add(sinf, s(2.0), sninf, rm), snan, &ctx);
            // Valid operations on infinities raise nothing.
            expect(f64_mul_add(pinf, d(1.0), pinf, rm), (pinf, 0), &ctx);
            expect(f64_mul_add(d(1.0), d(1.0), ninf, rm), (ninf, 0), &ctx);
            expect(f64_mul_add(d(-1.0), pinf, d(5.0), rm), (ninf, 0), &ctx);
            expect(f64_add(pinf, d(1.0), rm), (pinf, 0), &ctx);
            expect(f64_div(d(1.0), ninf, rm), (d(-0.0), 0), &ctx);
            expect(f64_div(pinf, d(0.0), rm), (pinf, 0), &ctx);
            expect(f64_sqrt(pinf, rm), (pinf, 0), &ctx);
            expect(f32_mul(sinf, s(-2.0), rm), (sninf, 0), &ctx);
            expect(f32_mul_add(sinf, s(1.0), sinf, rm), (sinf, 0), &ctx);
        }
    }

    #[test]
    fn divide_by_zero() {
        for &rm in &ALL {
            let ctx = format!("{rm:?}");
            expect(f64_div(d(1.0), d(0.0), rm), (D_INF, DZ), &ctx);
            expect(f64_div(d(1.0), d(-0.0), rm), (D_INF | D_NEG, DZ), &ctx);
            expect(f64_div(d(-1.0), d(-0.0), rm), (D_INF, DZ), &ctx);
            expect(f64_div(1, d(0.0), rm), (D_INF, DZ), &ctx);
            expect(f32_div(s(-3.0), s(0.0), rm), (S_INF | S_NEG, DZ), &ctx);
            expect(f32_div(S_MAX, s(-0.0), rm), (S_INF | S_NEG, DZ), &ctx);
        }
    }

    #[test]
    fn overflow_depends_on_mode() {
        let cases = [
            (Rne, D_INF, D_INF | D_NEG, S_INF, S_INF | S_NEG),
            (Rtz, D_MAX, D_MAX | D_NEG, S_MAX, S_MAX | S_NEG),
            (Down, D_MAX, D_INF | D_NEG, S_MAX, S_INF | S_NEG),
            (Up, D_INF, D_MAX | D_NEG, S_INF, S_MAX | S_NEG),
            (Rmm, D_INF, D_INF | D_NEG, S_INF, S_INF | S_NEG),
        ];
        for (rm, pos, neg, spos, sneg) in cases {
            let ctx = format!("{rm:?}");
            let f = OF | NX;
            expect(f64_mul(D_MAX, d(2.0), rm), (pos, f), &ctx);
            expect(f64_mul(D_MAX, d(-2.0), rm), (neg, f), &ctx);
            expect(f64_add(D_MAX, D_MAX, rm), (pos, f), &ctx);
            expect(f64_sub(D_MAX | D_NEG, D_MAX, rm), (neg, f), &ctx);
            expect(f64_div(D_MAX, d(0.5), rm), (pos, f), &ctx);
            expect(f64_mul_add(D_MAX, d(2.0), d(-1.0), rm), (pos, f), &ctx);
            expect(f64_to_f32(d(1e300), rm), (spos, f), &ctx);
            expect(f64_to_f32(d(-1e300), rm), (sneg, f), &ctx);
            expect(f32_mul(S_MAX, s(2.0), rm), (spos, f), &ctx);
            expect(f32_add(S_MAX | S_NEG, S_MAX | S_NEG, rm), (sneg, f), &ctx);
            expect(f32_div(s(1e30), s(1e-30), rm), (spos, f), &ctx);
            expect(f32_mul_add(S_MAX, s(-4.0), s(1.0), rm), (sneg, f), &ctx);
        }
        // Exactly half an ulp above MAX: nearest modes overflow, truncating ones only round.
        let half_ulp = d(p2(970));
        let want = [(D_INF, OF | NX), (D_MAX, NX), (D_MAX, NX), (D_INF, OF | NX), (D_INF, OF | NX)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_add(D_MAX, half_ulp, rm), want[i], &format!("MAX+ulp/2 {rm:?}"));
        }
        let quarter_ulp = d(p2(969));
        let want = [(D_MAX, NX), (D_MAX, NX), (D_MAX, NX), (D_INF, OF | NX), (D_MAX, NX)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_add(D_MAX, quarter_ulp, rm), want[i], &format!("MAX+ulp/4 {rm:?}"));
        }
        // f32 MAX + ulp/2 via narrowing (ulp of f32 MAX is 2^104).
        let x = d(f32::MAX as f64 + p2(103));
        let want = [(S_INF, OF | NX), (S_MAX, NX), (S_MAX, NX), (S_INF, OF | NX), (S_INF, OF | NX)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_to_f32(x, rm), want[i], &format!("f32 MAX+ulp/2 {rm:?}"));
        }
    }

    #[test]
    fn underflow_is_tiny_after_rounding_and_inexact() {
        for &rm in &ALL {
            let ctx = format!("{rm:?}");
            // Exact subnormal results raise nothing.
            expect(f64_mul(D_MIN_NORMAL, d(0.5), rm), (D_MIN_NORMAL >> 1, 0), &ctx);
            expect(f64_sub(D_MIN_NORMAL, 1, rm), (D_MAX_SUB, 0), &ctx);
            expect(f32_mul(S_MIN_NORMAL, s(0.25), rm), (S_MIN_NORMAL >> 2, 0), &ctx);
            expect(f64_to_f32(d(p2(-149)), rm), (1, 0), &ctx);
        }
        // Half of the smallest subnormal: a tie between 0 and 2^-1074.
        let want = [0, 0, 0, 1, 1];
        let want_neg = [0, 0, 1, 0, 1];
        for (i, &rm) in ALL.iter().enumerate() {
            let ctx = format!("min_sub/2 {rm:?}");
            expect(f64_mul(1, d(0.5), rm), (want[i], UF | NX), &ctx);
            expect(f64_mul(1 | D_NEG, d(0.5), rm), (want_neg[i] | D_NEG, UF | NX), &ctx);
            expect(f32_div(1, s(2.0), rm), (want[i] as u32, UF | NX), &ctx);
            expect(f64_to_f32(d(p2(-150)), rm), (want[i] as u32, UF | NX), &ctx);
            expect(f64_to_f32(d(-p2(-150)), rm), (want_neg[i] as u32 | S_NEG, UF | NX), &ctx);
            expect(f64_to_f32(d(-1e-300), rm), ((rm == Down) as u32 | S_NEG, UF | NX), &ctx);
        }
        // 2^-1022 * (1 - 2^-54): rounds to the smallest normal under RNE/RUP/RMM, and with an unbounded
        // exponent it would round to 2^-1022 too, so it is *not* tiny after rounding: no UF.
        let a = 0x000f_ffff_fe00_0000; // 2^-1022 * (1 - 2^-27)
        let b = 0x3ff0_0000_0200_0000; // 1 + 2^-27
        let want =
            [(D_MIN_NORMAL, NX), (D_MAX_SUB, UF | NX), (D_MAX_SUB, UF | NX), (D_MIN_NORMAL, NX), (D_MIN_NORMAL, NX)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_mul(a, b, rm), want[i], &format!("tininess after rounding {rm:?}"));
            expect(f64_mul_add(a, b, d(0.0), rm), want[i], &format!("fma tininess {rm:?}"));
        }
        let x = d(p2(-126) * (1.0 - p2(-25)));
        let want =
            [(S_MIN_NORMAL, NX), (S_MAX_SUB, UF | NX), (S_MAX_SUB, UF | NX), (S_MIN_NORMAL, NX), (S_MIN_NORMAL, NX)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_to_f32(x, rm), want[i], &format!("f32 tininess after rounding {rm:?}"));
        }
        // 2^-126 * (1 - 2^-24) is exactly representable with 24 bits, so it stays tiny even though it
        // rounds up to the smallest normal on the subnormal grid: UF.
        let (a, b) = (0x007f_f800, 0x3f80_0800);
        let want = [S_MIN_NORMAL, S_MAX_SUB, S_MAX_SUB, S_MIN_NORMAL, S_MIN_NORMAL];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f32_mul(a, b, rm), (want[i], UF | NX), &format!("f32 tiny min normal {rm:?}"));
        }
    }

    #[test]
    fn min_max() {
        let (pz, nz) = (d(0.0), d(-0.0));
        expect(f64_min(nz, pz), (nz, 0), "min(-0,+0)");
        expect(f64_min(pz, nz), (nz, 0), "min(+0,-0)");
        expect(f64_max(nz, pz), (pz, 0), "max(-0,+0)");
        expect(f64_max(pz, nz), (pz, 0), "max(+0,-0)");
        expect(f64_min(D_QNAN, d(1.0)), (d(1.0), 0), "min(qnan,1)");
        expect(f64_min(d(1.0), D_QNAN2), (d(1.0), 0), "min(1,qnan)");
        expect(f64_max(D_QNAN, d(-1.0)), (d(-1.0), 0), "max(qnan,-1)");
        expect(f64_min(D_QNAN, D_QNAN2), (F64_CANONICAL_NAN, 0), "min(qnan,qnan)");
        expect(f64_min(D_SNAN, d(1.0)), (d(1.0), NV), "min(snan,1)");
        expect(f64_max(d(1.0), D_SNAN2), (d(1.0), NV), "max(1,snan)");
        expect(f64_max(D_SNAN, D_QNAN), (F64_CANONICAL_NAN, NV), "max(snan,qnan)");
        expect(f64_min(D_INF | D_NEG, d(1.0)), (D_INF | D_NEG, 0), "min(-inf,1)");
        expect(f64_max(D_INF, D_MAX), (D_INF, 0), "max(inf,MAX)");
        expect(f64_min(d(-1.0), d(-2.0)), (d(-2.0), 0), "min(-1,-2)");
        expect(f64_max(d(-1.0), d(-2.0)), (d(-1.0), 0), "max(-1,-2)");
        expect(f64_min(d(1.0), d(2.0)), (d(1.0), 0), "min(1,2)");
        expect(f64_max(1, 2), (2, 0), "max(subnormals)");
        expect(f64_min(1 | D_NEG, pz), (1 | D_NEG, 0), "min(-min_sub,+0)");
        let (pz, nz) = (s(0.0), s(-0.0));
        expect(f32_min(nz, pz), (nz, 0), "f32 min(-0,+0)");
        expect(f32_min(pz, nz), (nz, 0), "f32 min(+0,-0)");
        expect(f32_max(nz, pz), (pz, 0), "f32 max(-0,+0)");
        expect(f32_max(pz, nz), (pz, 0), "f32 max(+0,-0)");
        expect(f32_min(S_QNAN, s(3.0)), (s(3.0), 0), "f32 min(qnan,3)");
        expect(f32_max(S_SNAN, s(3.0)), (s(3.0), NV), "f32 max(snan,3)");
        expect(f32_min(S_QNAN, S_QNAN2), (F32_CANONICAL_NAN, 0), "f32 min(qnan,qnan)");
        expect(f32_max(S_SNAN2, S_SNAN), (F32_CANONICAL_NAN, NV), "f32 max(snan,snan)");
        expect(f32_min(s(-5.0), s(2.0)), (s(-5.0), 0), "f32 min(-5,2)");
        expect(f32_max(s(-5.0), s(2.0)), (s(2.0), 0), "f32 max(-5,2)");
        expect(f32_max(S_INF | S_NEG, S_MAX | S_NEG), (S_MAX | S_NEG, 0), "f32 max(-inf,-MAX)");
    }

    #[test]
    fn comparisons() {
        let b = |x: (bool, u32)| (x.0 as u32, x.1);
        expect(b(f64_eq(d(1.0), d(1.0))), (1, 0), "1==1");
        expect(b(f64_eq(d(-0.0), d(0.0))), (1, 0), "-0==+0");
        expect(b(f64_eq(d(1.0), d(2.0))), (0, 0), "1==2");
        expect(b(f64_eq(D_QNAN, D_QNAN)), (0, 0), "qnan==qnan");
        expect(b(f64_eq(D_QNAN, d(1.0))), (0, 0), "qnan==1");
        expect(b(f64_eq(D_SNAN, d(1.0))), (0, NV), "snan==1");
        expect(b(f64_eq(d(1.0), D_SNAN2)), (0, NV), "1==snan");
        expect(b(f64_lt(d(-0.0), d(0.0))), (0, 0), "-0<+0");
        expect(b(f64_le(d(-0.0), d(0.0))), (1, 0), "-0<=+0");
        expect(b(f64_le(d(0.0), d(-0.0))), (1, 0), "+0<=-0");
        expect(b(f64_lt(d(1.0), d(2.0))), (1, 0), "1<2");
        expect(b(f64_lt(d(2.0), d(1.0))), (0, 0), "2<1");
        expect(b(f64_le(d(2.0), d(1.0))), (0, 0), "2<=1");
        expect(b(f64_lt(d(-2.0), d(-1.0))), (1, 0), "-2<-1");
        expect(b(f64_lt(D_INF | D_NEG, D_MAX | D_NEG)), (1, 0), "-inf<-MAX");
        expect(b(f64_lt(D_INF, D_INF)), (0, 0), "inf<inf");
        expect(b(f64_le(D_INF, D_INF)), (1, 0), "inf<=inf");
        expect(b(f64_lt(1, D_MIN_NORMAL)), (1, 0), "min_sub<min_normal");
        expect(b(f64_lt(1 | D_NEG, 0)), (1, 0), "-min_sub<0");
        expect(b(f64_lt(D_QNAN, d(1.0))), (0, NV), "qnan<1");
        expect(b(f64_le(d(1.0), D_QNAN2)), (0, NV), "1<=qnan");
        expect(b(f64_le(D_SNAN, D_SNAN)), (0, NV), "snan<=snan");
        expect(b(f32_eq(s(-0.0), s(0.0))), (1, 0), "f32 -0==+0");
        expect(b(f32_eq(S_QNAN, S_QNAN)), (0, 0), "f32 qnan==qnan");
        expect(b(f32_eq(S_SNAN, s(0.0))), (0, NV), "f32 snan==0");
        expect(b(f32_lt(s(-1.0), s(-0.5))), (1, 0), "f32 -1<-0.5");
        expect(b(f32_lt(s(0.0), s(-0.0))), (0, 0), "f32 +0<-0");
        expect(b(f32_le(s(3.0), s(3.0))), (1, 0), "f32 3<=3");
        expect(b(f32_le(s(3.0), s(2.0))), (0, 0), "f32 3<=2");
        expect(b(f32_lt(S_QNAN2, s(1.0))), (0, NV), "f32 qnan<1");
        expect(b(f32_le(s(1.0), S_SNAN)), (0, NV), "f32 1<=snan");
    }

    #[test]
    fn classify_every_class() {
        let cases64 = [
            (D_INF | D_NEG, 0),
            (d(-1.0), 1),
            (D_MAX | D_NEG, 1),
            (1 | D_NEG, 2),
            (D_MAX_SUB | D_NEG, 2),
            (D_NEG, 3),
            (0, 4),
            (1, 5),
            (D_MAX_SUB, 5),
            (D_MIN_NORMAL, 6),
            (d(1.0), 6),
            (D_MAX, 6),
            (D_INF, 7),
            (D_SNAN, 8),
            (D_SNAN2, 8),
            (D_QNAN2, 9),
            (D_QNAN, 9),
            (F64_CANONICAL_NAN, 9),
        ];
        for (x, bit) in cases64 {
            assert_eq!(f64_classify(x), 1 << bit, "fclass.d {x:#x}");
        }
        let cases32 = [
            (S_INF | S_NEG, 0),
            (s(-1.0), 1),
            (1 | S_NEG, 2),
            (S_NEG, 3),
            (0, 4),
            (S_MAX_SUB, 5),
            (S_MIN_NORMAL, 6),
            (S_MAX, 6),
            (S_INF, 7),
            (S_SNAN, 8),
            (S_SNAN2, 8),
            (S_QNAN, 9),
            (F32_CANONICAL_NAN, 9),
        ];
        for (x, bit) in cases32 {
            assert_eq!(f32_classify(x), 1 << bit, "fclass.s {x:#x}");
        }
    }

    #[test]
    fn float_to_int_saturation_table() {
        const SEXT_MIN32: u64 = 0xffff_ffff_8000_0000;
        for &rm in &ALL {
            let ctx = format!("{rm:?}");
            for nan in [D_QNAN, D_QNAN2, D_SNAN, F64_CANONICAL_NAN] {
                expect(f64_to_i32(nan, rm), (0x7fff_ffff, NV), &ctx);
                expect(f64_to_u32(nan, rm), (u64::MAX, NV), &ctx);
                expect(f64_to_i64(nan, rm), (i64::MAX as u64, NV), &ctx);
                expect(f64_to_u64(nan, rm), (u64::MAX, NV), &ctx);
            }
            for nan in [S_QNAN, S_SNAN2, F32_CANONICAL_NAN] {
                expect(f32_to_i32(nan, rm), (0x7fff_ffff, NV), &ctx);
                expect(f32_to_u32(nan, rm), (u64::MAX, NV), &ctx);
                expect(f32_to_i64(nan, rm), (i64::MAX as u64, NV), &ctx);
                expect(f32_to_u64(nan, rm), (u64::MAX, NV), &ctx);
            }
            expect(f64_to_i32(D_INF, rm), (0x7fff_ffff, NV), &ctx);
            expect(f64_to_i32(D_INF | D_NEG, rm), (SEXT_MIN32, NV), &ctx);
            expect(f64_to_u32(D_INF, rm), (u64::MAX, NV), &ctx);
            expect(f64_to_u32(D_INF | D_NEG, rm), (0, NV), &ctx);
            expect(f32_to_i64(S_INF, rm), (i64::MAX as u64, NV), &ctx);
            expect(f32_to_i64(S_INF | S_NEG, rm), (i64::MIN as u64, NV), &ctx);
            expect(f32_to_u64(S_INF, rm), (u64::MAX, NV), &ctx);
            expect(f32_to_u64(S_INF | S_NEG, rm), (0, NV), &ctx);
            expect(f64_to_u32(d(-1.0), rm), (0, NV), &ctx);
            expect(f32_to_u32(s(-1.0), rm), (0, NV), &ctx);
            expect(f64_to_u64(d(-1.0), rm), (0, NV), &ctx);
            expect(f64_to_u64(d(-0.0), rm), (0, 0), &ctx);
            expect(f32_to_u32(s(-0.0), rm), (0, 0), &ctx);
            // fcvt.wu writes the 32-bit result sign-extended.
            expect(f32_to_u32(s(3e9), rm), (0xffff_ffff_b2d0_5e00, 0), &ctx);
            expect(f32_to_i32(s(3e9), rm), (0x7fff_ffff, NV), &ctx);
            expect(f32_to_i64(s(3e9), rm), (3_000_000_000, 0), &ctx);
            expect(f32_to_i32(s(-2_147_483_648.0), rm), (SEXT_MIN32, 0), &ctx);
            expect(f32_to_i32(s(2_147_483_648.0), rm), (0x7fff_ffff, NV), &ctx);
            expect(f64_to_u32(d(4_294_967_296.0), rm), (u64::MAX, NV), &ctx);
            expect(f64_to_u32(d(4_294_967_295.0), rm), (u64::MAX, 0), &ctx);
            expect(f64_to_i64(d(p2(63)), rm), (i64::MAX as u64, NV), &ctx);
            expect(f64_to_i64(d(-p2(63)), rm), (i64::MIN as u64, 0), &ctx);
            expect(f64_to_u64(d(p2(64)), rm), (u64::MAX, NV), &ctx);
            expect(f64_to_u64(d(p2(64) - 2048.0), rm), (u64::MAX - 2047, 0), &ctx);
            expect(f32_to_u64(s(1e10), rm), (10_000_000_000, 0), &ctx);
            expect(f64_to_i64(D_MAX, rm), (i64::MAX as u64, NV), &ctx);
            expect(f64_to_i32(1, rm), ((rm == Up) as u64, NX), &ctx);
            expect(f64_to_i32(1 | D_NEG, rm), (if rm == Down { u64::MAX } else { 0 }, NX), &ctx);
        }
        // -0.5 -> unsigned: rounds to -0 (fine, NX) or to -1 (invalid) depending on the mode.
        let want = [(0, NX), (0, NX), (0, NV), (0, NX), (0, NV)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f32_to_u32(s(-0.5), rm), want[i], &format!("-0.5 -> u32 {rm:?}"));
            expect(f64_to_u64(d(-0.5), rm), want[i], &format!("-0.5 -> u64 {rm:?}"));
        }
        // Mode table for halves.
        let table: [(f64, [i64; 5]); 6] = [
            (2.5, [2, 2, 2, 3, 3]),
            (-2.5, [-2, -2, -3, -2, -3]),
            (1.5, [2, 1, 1, 2, 2]),
            (-1.5, [-2, -1, -2, -1, -2]),
            (0.5, [0, 0, 0, 1, 1]),
            (-0.5, [0, 0, -1, 0, -1]),
        ];
        for (x, want) in table {
            for (i, &rm) in ALL.iter().enumerate() {
                let ctx = format!("{x} {rm:?}");
                expect(f64_to_i32(d(x), rm), (want[i] as i32 as i64 as u64, NX), &ctx);
                expect(f64_to_i64(d(x), rm), (want[i] as u64, NX), &ctx);
                expect(f32_to_i32(s(x as f32), rm), (want[i] as i32 as i64 as u64, NX), &ctx);
                expect(f32_to_i64(s(x as f32), rm), (want[i] as u64, NX), &ctx);
            }
        }
        // Range is checked after rounding.
        let near_max = [
            (
                2_147_483_647.4,
                [(0x7fff_ffff, NX), (0x7fff_ffff, NX), (0x7fff_ffff, NX), (0x7fff_ffff, NV), (0x7fff_ffff, NX)],
            ),
            (
                2_147_483_647.5,
                [(0x7fff_ffff, NV), (0x7fff_ffff, NX), (0x7fff_ffff, NX), (0x7fff_ffff, NV), (0x7fff_ffff, NV)],
            ),
            (
                -2_147_483_648.5,
                [(SEXT_MIN32, NX), (SEXT_MIN32, NX), (SEXT_MIN32, NV), (SEXT_MIN32, NX), (SEXT_MIN32, NV)],
            ),
        ];
        for (x, want) in near_max {
            for (i, &rm) in ALL.iter().enumerate() {
                expect(f64_to_i32(d(x), rm), want[i], &format!("{x} -> i32 {rm:?}"));
            }
        }
        let want = [(u64::MAX, NV), (u64::MAX, NX), (u64::MAX, NX), (u64::MAX, NV), (u64::MAX, NV)];
        for (i, &rm) in ALL.iter().enumerate() {
            expect(f64_to_u32(d(4_294_967_295.5), rm), want[i], &format!("2^32-0.5 -> u32 {rm:?}"));
        }
    }

    #[test]
    fn int_to_float_rounding() {
        let want = [0x5f80_0000, 0x5f7f_ffff, 0x5f7f_ffff, 0x5f80_0000, 0x5f80_0000];
        let want_i32max = [0x4f00_0000, 0x4eff_ffff, 0x4eff_ffff, 0x4f00_0000, 0x4f00_0000];
        let want_neg = [0xcb80_0000u32, 0xcb80_0000, 0xcb80_0001, 0xcb80_0000, 0xcb80_0001];
        let want_d = [
            0x43f0_0000_0000_0000,
            0x43ef_ffff_ffff_ffff,
            0x43ef_ffff_ffff_ffff,
            0x43f0_0000_0000_0000,
            0x43f0_0000_0000_0000,
        ];
        for (i, &rm) in ALL.iter().enumerate() {
            let ctx = format!("{rm:?}");
            expect(u64_to_f32(u64::MAX, rm), (want[i], NX), &ctx);
            expect(u64_to_f64(u64::MAX, rm), (want_d[i], NX), &ctx);
            expect(i32_to_f32(i32::MAX, rm), (want_i32max[i], NX), &ctx);
            expect(
                u32_to_f32(u32::MAX, rm),
                (if want[i] == 0x5f80_0000 { 0x4f80_0000 } else { 0x4f7f_ffff }, NX),
                &ctx,
            );
            expect(i32_to_f32(-(1 << 24) - 1, rm), (want_neg[i], NX), &ctx);
            expect(i64_to_f32(-(1 << 24) - 1, rm), (want_neg[i], NX), &ctx);
            expect(i32_to_f32(i32::MIN, rm), (0xcf00_0000, 0), &ctx);
            expect(i64_to_f32(i64::MIN, rm), (0xdf00_0000, 0), &ctx);
            expect(i64_to_f64(i64::MIN, rm), (0xc3e0_0000_0000_0000, 0), &ctx);
            expect(i32_to_f64(i32::MIN, rm), (d(-2_147_483_648.0), 0), &ctx);
            expect(u32_to_f64(u32::MAX, rm), (d(4_294_967_295.0), 0), &ctx);
            expect(i64_to_f64(0, rm), (0, 0), &ctx);
            expect(u64_to_f32(0, rm), (0, 0), &ctx);
            expect(i64_to_f64(-7, rm), (d(-7.0), 0), &ctx);
            expect(u64_to_f64(1 << 63, rm), (d(p2(63)), 0), &ctx);
        }
    }

    #[test]
    fn float_to_float() {
        expect(f32_to_f64(S_SNAN), (F64_CANONICAL_NAN, NV), "snan");
        expect(f32_to_f64(S_QNAN), (F64_CANONICAL_NAN, 0), "qnan");
        expect(f32_to_f64(1), (d(p2(-149)), 0), "min subnormal");
        expect(f32_to_f64(S_NEG), (D_NEG, 0), "-0");
        expect(f32_to_f64(S_INF | S_NEG), (D_INF | D_NEG, 0), "-inf");
        expect(f32_to_f64(s(1.1)), (d(1.1f32 as f64), 0), "1.1");
        expect(f32_to_f64(S_MAX), (d(f32::MAX as f64), 0), "max");
        for &rm in &ALL {
            let ctx = format!("{rm:?}");
            expect(f64_to_f32(d(1.5), rm), (s(1.5), 0), &ctx);
            expect(f64_to_f32(D_NEG, rm), (S_NEG, 0), &ctx);
            expect(f64_to_f32(D_INF, rm), (S_INF, 0), &ctx);
            expect(f64_to_f32(d(f32::MAX as f64), rm), (S_MAX, 0), &ctx);
        }
        let third = [0x3eaa_aaab, 0x3eaa_aaaa, 0x3eaa_aaaa, 0x3eaa_aaab, 0x3eaa_aaab];
        let tiny = [0, 0, 0, 1, 0];
        for (i, &rm) in ALL.iter().enumerate() {
            let ctx = format!("{rm:?}");
            expect(f64_to_f32(d(1.0 / 3.0), rm), (third[i], NX), &ctx);
            expect(f64_to_f32(d(1e-300), rm), (tiny[i], UF | NX), &ctx);
        }
    }

    // ------------------------------------------------------------------ randomized cross-checks

    type Op = fn(u64, u64, u64, Rounding) -> (u64, u32);

    fn w32(x: (u32, u32)) -> (u64, u32) {
        (x.0 as u64, x.1)
    }

    /// (name, public function, software implementation) for every rounded arithmetic operation.
    fn ops(f: Fmt) -> Vec<(&'static str, Op, Op)> {
        if f.exp_bits == 8 {
            vec![
                ("f32_add", |a, b, _, rm| w32(f32_add(a as u32, b as u32, rm)), |a, b, _, rm| soft::add(F32, a, b, rm)),
                ("f32_sub", |a, b, _, rm| w32(f32_sub(a as u32, b as u32, rm)), |a, b, _, rm| soft::sub(F32, a, b, rm)),
                ("f32_mul", |a, b, _, rm| w32(f32_mul(a as u32, b as u32, rm)), |a, b, _, rm| soft::mul(F32, a, b, rm)),
                ("f32_div", |a, b, _, rm| w32(f32_div(a as u32, b as u32, rm)), |a, b, _, rm| soft::div(F32, a, b, rm)),
                ("f32_sqrt", |a, _, _, rm| w32(f32_sqrt(a as u32, rm)), |a, _, _, rm| soft::sqrt(F32, a, rm)),
                (
                    "f32_mul_add",
                    |a, b, c, rm| w32(f32_mul_add(a as u32, b as u32, c as u32, rm)),
                    |a, b, c, rm| soft::mul_add(F32, a, b, c, rm),
                ),
            ]
        } else {
            vec![
                ("f64_add", |a, b, _, rm| f64_add(a, b, rm), |a, b, _, rm| soft::add(F64, a, b, rm)),
                ("f64_sub", |a, b, _, rm| f64_sub(a, b, rm), |a, b, _, rm| soft::sub(F64, a, b, rm)),
                ("f64_mul", |a, b, _, rm| f64_mul(a, b, rm), |a, b, _, rm| soft::mul(F64, a, b, rm)),
                ("f64_div", |a, b, _, rm| f64_div(a, b, rm), |a, b, _, rm| soft::div(F64, a, b, rm)),
                ("f64_sqrt", |a, _, _, rm| f64_sqrt(a, rm), |a, _, _, rm| soft::sqrt(F64, a, rm)),
                ("f64_mul_add", |a, b, c, rm| f64_mul_add(a, b, c, rm), |a, b, c, rm| soft::mul_add(F64, a, b, c, rm)),
                ("f64_to_f32", |a, _, _, rm| w32(f64_to_f32(a, rm)), |a, _, _, rm| soft::convert(F64, F32, a, rm)),
            ]
        }
    }

    /// The raw SSE (MXCSR) implementations, in the order of [`ops`].
    #[cfg(target_arch = "x86_64")]
    fn sse_ops(f: Fmt) -> Vec<Op> {
        if f.exp_bits == 8 {
            vec![
                |a, b, _, rm| w32(canon32(hw::add32(a as u32, b as u32, rm))),
                |a, b, _, rm| w32(canon32(hw::sub32(a as u32, b as u32, rm))),
                |a, b, _, rm| w32(canon32(hw::mul32(a as u32, b as u32, rm))),
                |a, b, _, rm| w32(canon32(hw::div32(a as u32, b as u32, rm))),
                |a, _, _, rm| w32(canon32(hw::sqrt32(a as u32, a as u32, rm))),
                |a, b, c, rm| w32(hw_fma32(a as u32, b as u32, c as u32, rm).expect("FMA3")),
            ]
        } else {
            vec![
                |a, b, _, rm| canon64(hw::add64(a, b, rm)),
                |a, b, _, rm| canon64(hw::sub64(a, b, rm)),
                |a, b, _, rm| canon64(hw::mul64(a, b, rm)),
                |a, b, _, rm| canon64(hw::div64(a, b, rm)),
                |a, _, _, rm| canon64(hw::sqrt64(a, a, rm)),
                |a, b, c, rm| hw_fma64(a, b, c, rm).expect("FMA3"),
                |a, _, _, rm| w32(canon32(to32(hw::cvt64to32(0, a, rm)))),
            ]
        }
    }

    /// The public functions (fast paths + SSE) and the raw SSE path both agree bit-for-bit, flags
    /// included, with the software implementation in the four shared modes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse_and_fast_paths_match_soft_in_shared_modes() {
        assert!(hw::has_fma(), "test host should have FMA3 so that the hardware FMA path is covered");
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut flag_hits = [0u32; 5];
        for f in [F32, F64] {
            let table: Vec<_> = ops(f).into_iter().zip(sse_ops(f)).collect();
            for _ in 0..150_000 {
                let (a, b, c) = triple(&mut r, f);
                for &((name, public, soft), sse) in &table {
                    for &rm in &SHARED {
                        let sw = soft(a, b, c, rm);
                        for (path, got) in [("public", public(a, b, c, rm)), ("sse", sse(a, b, c, rm))] {
                            assert!(
                                got == sw,
                                "{path} {name}({a:#x}, {b:#x}, {c:#x}) {rm:?}: got ({:#x}, {:#x}) soft ({:#x}, {:#x})",
                                got.0,
                                got.1,
                                sw.0,
                                sw.1
                            );
                        }
                        for (i, hit) in flag_hits.iter_mut().enumerate() {
                            *hit += (sw.1 >> i) & 1;
                        }
                    }
                }
            }
        }
        // Make sure the generator actually exercised every flag.
        assert!(flag_hits.iter().all(|&n| n > 1000), "flag coverage {flag_hits:?}");
    }

    fn nat64(x: f64) -> u64 {
        if x.is_nan() {
            F64_CANONICAL_NAN
        } else {
            x.to_bits()
        }
    }
    fn nat32(x: f32) -> u32 {
        if x.is_nan() {
            F32_CANONICAL_NAN
        } else {
            x.to_bits()
        }
    }

    /// Round-to-nearest-even results equal Rust's native operators (both the public and the soft path).
    #[test]
    fn rne_matches_native_operators() {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..100_000 {
            let (a, b, c) = triple(&mut r, F64);
            let (x, y, z) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
            let want =
                [nat64(x + y), nat64(x - y), nat64(x * y), nat64(x / y), nat64(x.sqrt()), nat64(x.mul_add(y, z))];
            for (i, (name, public, soft)) in ops(F64).into_iter().take(6).enumerate() {
                assert_eq!(public(a, b, c, Rne).0, want[i], "{name}({a:#x}, {b:#x}, {c:#x})");
                assert_eq!(soft(a, b, c, Rne).0, want[i], "soft {name}({a:#x}, {b:#x}, {c:#x})");
            }
            assert_eq!(f64_to_f32(a, Rne).0, nat32(x as f32), "f64_to_f32({a:#x})");
            assert_eq!(soft::convert(F64, F32, a, Rne).0 as u32, nat32(x as f32), "soft f64_to_f32({a:#x})");

            let (a, b, c) = triple(&mut r, F32);
            let (x, y, z) = (f32::from_bits(a as u32), f32::from_bits(b as u32), f32::from_bits(c as u32));
            let want =
                [nat32(x + y), nat32(x - y), nat32(x * y), nat32(x / y), nat32(x.sqrt()), nat32(x.mul_add(y, z))];
            for (i, (name, public, soft)) in ops(F32).into_iter().enumerate() {
                assert_eq!(public(a, b, c, Rne).0, want[i] as u64, "{name}({a:#x}, {b:#x}, {c:#x})");
                assert_eq!(soft(a, b, c, Rne).0, want[i] as u64, "soft {name}({a:#x}, {b:#x}, {c:#x})");
            }
            assert_eq!(f32_to_f64(a as u32).0, nat64(x as f64), "f32_to_f64({a:#x})");
        }
    }

    /// RMM differs from RNE only on exact ties, where it picks the neighbour away from zero; the flags
    /// are always the same as RNE's.
    #[test]
    fn rmm_is_rne_except_ties_away() {
        let mut r = Rng(0xdead_beef_cafe_f00d);
        let mut ties = 0;
        for f in [F32, F64] {
            for _ in 0..100_000 {
                let (a, b, c) = triple(&mut r, f);
                for (name, public, _) in ops(f) {
                    let sign = if name == "f64_to_f32" { F32.sign_bit() } else { f.sign_bit() };
                    let rn = public(a, b, c, Rne);
                    let rz = public(a, b, c, Rtz);
                    let away = if rn.0 & sign != 0 { public(a, b, c, Down) } else { public(a, b, c, Up) };
                    let rmm = public(a, b, c, Rmm);
                    let ctx = format!("{name}({a:#x}, {b:#x}, {c:#x})");
                    assert_eq!(rmm.1, rn.1, "{ctx}: flags rmm {:#x} rne {:#x}", rmm.1, rn.1);
                    if rmm.0 != rn.0 {
                        assert!(
                            rn.0 == rz.0 && rmm.0 == away.0 && away.0 != rz.0,
                            "{ctx}: rmm {:#x} rne {:#x} rtz {:#x} away {:#x}",
                            rmm.0,
                            rn.0,
                            rz.0,
                            away.0
                        );
                        ties += 1;
                    }
                }
            }
        }
        assert!(ties > 100, "only {ties} ties seen");
    }

    /// Rounds the f64 `x` (finite) to f32 in mode `rm`, by brute force on the two neighbours.
    fn oracle32(x: f64, rm: Rounding) -> u32 {
        let n = x as f32; // nearest-even (or infinity past the overflow threshold)
        if n as f64 == x {
            return n.to_bits();
        }
        let (lo, hi) = if (n as f64) < x { (n, n.next_up()) } else { (n.next_down(), n) };
        let r = match rm {
            Rne => n,
            Rtz => {
                if x > 0.0 {
                    lo
                } else {
                    hi
                }
            }
            Down => lo,
            Up => hi,
            Rmm => {
                if (lo as f64 + hi as f64) / 2.0 == x {
                    if x > 0.0 {
                        hi
                    } else {
                        lo
                    }
                } else {
                    n
                }
            }
        };
        r.to_bits()
    }

    type Op32 = fn(u32, u32, u32, Rounding) -> (u32, u32);

    fn two_sum(a: f64, b: f64) -> (f64, f64) {
        let s = a + b;
        let bb = s - a;
        (s, (a - (s - bb)) + (b - bb))
    }

    /// f32 results in all five modes against an independent oracle built on exact f64 arithmetic.
    #[test]
    fn f32_all_modes_match_f64_oracle() {
        let mut r = Rng(0x0123_4567_89ab_cdef);
        let mut ties = 0;
        for _ in 0..200_000 {
            let (a, b, c) = triple(&mut r, F32);
            let (x, y, z) =
                (f32::from_bits(a as u32) as f64, f32::from_bits(b as u32) as f64, f32::from_bits(c as u32) as f64);
            if !(x.is_finite() && y.is_finite() && z.is_finite()) {
                continue;
            }
            let (sum, sum_err) = two_sum(x, y);
            let (dif, dif_err) = two_sum(x, -y);
            // x*y is exact in f64, so fma_err == 0 means the fused result is exactly `fma`.
            let (fma, fma_err) = two_sum(x * y, z);
            // (name, exact-or-innocuous f64 value, valid in directed modes, public result)
            let cases: [(&str, f64, bool, Op32); 6] = [
                ("add", sum, sum_err == 0.0, |a, b, _, rm| f32_add(a, b, rm)),
                ("sub", dif, dif_err == 0.0, |a, b, _, rm| f32_sub(a, b, rm)),
                ("mul", x * y, true, |a, b, _, rm| f32_mul(a, b, rm)),
                ("div", x / y, true, |a, b, _, rm| f32_div(a, b, rm)),
                ("sqrt", x.sqrt(), true, |a, _, _, rm| f32_sqrt(a, rm)),
                ("fma", fma, fma_err == 0.0, |a, b, c, rm| f32_mul_add(a, b, c, rm)),
            ];
            for (name, v, directed_ok, op) in cases {
                if !v.is_finite() || (name == "fma" && !directed_ok) {
                    continue;
                }
                for &rm in &ALL {
                    if !directed_ok && !matches!(rm, Rne | Rmm) {
                        continue;
                    }
                    let got = op(a as u32, b as u32, c as u32, rm).0;
                    let want = oracle32(v, rm);
                    // For exact zeros only the magnitude is checked here; the sign rules have their own test.
                    let mask = if v == 0.0 { 0x7fff_ffff } else { u32::MAX };
                    assert_eq!(
                        got & mask,
                        want & mask,
                        "f32 {name}({a:#x}, {b:#x}, {c:#x}) {rm:?}: {got:#x} vs {want:#x}"
                    );
                    if rm == Rmm && got != oracle32(v, Rne) {
                        ties += 1;
                    }
                }
            }
            // Narrowing conversion from a random f64.
            let (wide, _, _) = triple(&mut r, F64);
            let w = f64::from_bits(wide);
            if w.is_finite() {
                for &rm in &ALL {
                    assert_eq!(f64_to_f32(wide, rm).0, oracle32(w, rm), "f64_to_f32({wide:#x}) {rm:?}");
                }
            }
        }
        assert!(ties > 100, "only {ties} RMM ties seen");
    }

    /// Constructed exact ties in binary64, with expected values computed in integer arithmetic.
    #[test]
    fn rmm_constructed_ties_f64() {
        let mut r = Rng(0x5851_f42d_4c95_7f2d);
        for _ in 0..20_000 {
            let neg = r.bit();
            let sgn = |x: f64| if neg { -x } else { x };
            // Product of two odd 27-bit integers with exactly 54 bits: always a tie.
            let (ia, ib) = loop {
                let ia = (1u64 << 26) | (r.next() & ((1 << 26) - 1)) | 1;
                let ib = (1u64 << 26) | (r.next() & ((1 << 26) - 1)) | 1;
                if (ia * ib) >> 53 == 1 {
                    break (ia, ib);
                }
            };
            let p = ia * ib;
            let (ea, eb) = (r.below(800) as i32 - 400, r.below(800) as i32 - 400);
            let (fa, fb) = (sgn(ia as f64 * p2(ea)), ib as f64 * p2(eb));
            let scale = p2(ea + eb);
            let even = if ((p - 1) / 2).is_multiple_of(2) { p - 1 } else { p + 1 };
            let ctx = format!("mul {fa:e} * {fb:e}");
            expect(f64_mul(d(fa), d(fb), Rmm), (d(sgn((p + 1) as f64 * scale)), NX), &ctx);
            expect(f64_mul(d(fa), d(fb), Rne), (d(sgn(even as f64 * scale)), NX), &ctx);
            // The same product plus a small even addend stays an odd 54-bit integer: still a tie.
            let k = (r.below(1 << 20) as i64 - (1 << 19)) * 2;
            let q = (p as i64 + k) as u64;
            if q >> 53 == 1 {
                let fc = sgn(k as f64 * scale);
                expect(f64_mul_add(d(fa), d(fb), d(fc), Rmm), (d(sgn((q + 1) as f64 * scale)), NX), "fma tie");
            }
            // m * 2^e + (half an ulp): tie; RMM goes away from zero.
            let m = (1u64 << 52) | (r.next() & ((1 << 52) - 1));
            let e = r.below(1000) as i32 - 500;
            let toward_larger = r.bit() || m == 1 << 52;
            let fa = sgn(m as f64 * p2(e));
            let fb = sgn(if toward_larger { p2(e - 1) } else { -p2(e - 1) });
            let want = if toward_larger { (m + 1) as f64 } else { m as f64 };
            expect(f64_add(d(fa), d(fb), Rmm), (d(sgn(want * p2(e))), NX), &format!("add tie {fa:e} + {fb:e}"));
            // Integer conversions: m * 2^s + 2^(s-1).
            let sh = 1 + r.below(10) as u32;
            let v = (m << sh) | (1 << (sh - 1));
            let want = ((m + 1) << sh) as f64;
            expect(u64_to_f64(v, Rmm), (d(want), NX), "u64 tie");
            expect(i64_to_f64(if neg { -(v as i64) } else { v as i64 }, Rmm), (d(sgn(want)), NX), "i64 tie");
            // Subnormal ties: odd k units halved.
            let k = (r.next() & ((1 << 52) - 1)) | 1;
            let rne = if ((k - 1) / 2).is_multiple_of(2) { (k - 1) / 2 } else { k.div_ceil(2) };
            let s = if neg { D_NEG } else { 0 };
            expect(f64_mul(k | s, d(0.5), Rmm), (k.div_ceil(2) | s, UF | NX), "subnormal tie rmm");
            expect(f64_mul(k | s, d(0.5), Rne), (rne | s, UF | NX), "subnormal tie rne");
            // Float -> integer: j + 0.5.
            let j = r.below(1 << 40);
            let x = sgn(j as f64 + 0.5);
            expect(f64_to_i64(d(x), Rmm), (if neg { -(j as i64) - 1 } else { j as i64 + 1 } as u64, NX), "i64 half");
        }
    }

    /// Float → integer conversions in all modes against std's rounding functions.
    #[test]
    fn float_to_int_matches_oracle() {
        let mut r = Rng(0x1bad_b002_dead_c0de);
        let bounds: [(u32, bool, f64, f64); 4] = [
            (32, true, -p2(31), p2(31)),
            (32, false, 0.0, p2(32)),
            (64, true, -p2(63), p2(63)),
            (64, false, 0.0, p2(64)),
        ];
        for i in 0..200_000 {
            let (x, from32) = if i % 2 == 0 {
                let mut v = f64::from_bits(gen(&mut r, F64));
                if r.below(2) == 0 {
                    // Integers and halves near the interesting boundaries.
                    let base = [0.0, p2(31), p2(32), p2(63), p2(64), 1.0, 3.0][r.below(7) as usize];
                    let k = r.below(9) as f64 - 4.0;
                    v = (base + k + [0.0, 0.25, 0.5, 0.75][r.below(4) as usize]) * if r.bit() { -1.0 } else { 1.0 };
                }
                (v, false)
            } else {
                (f32::from_bits(gen(&mut r, F32) as u32) as f64, true)
            };
            for &rm in &ALL {
                let rounded = match rm {
                    Rne => x.round_ties_even(),
                    Rtz => x.trunc(),
                    Down => x.floor(),
                    Up => x.ceil(),
                    Rmm => x.round(),
                };
                for (width, signed, lo, hi) in bounds {
                    let (max, min): (i128, i128) =
                        if signed { ((1 << (width - 1)) - 1, -(1 << (width - 1))) } else { ((1 << width) - 1, 0) };
                    let (v, fl) = if x.is_nan() {
                        (max, NV)
                    } else if rounded < lo {
                        (min, NV)
                    } else if rounded >= hi {
                        (max, NV)
                    } else {
                        (rounded as i128, if rounded != x { NX } else { 0 })
                    };
                    let want = (if width == 32 { v as i32 as i64 as u64 } else { v as i64 as u64 }, fl);
                    let got = if from32 {
                        let a = (x as f32).to_bits();
                        match (width, signed) {
                            (32, true) => f32_to_i32(a, rm),
                            (32, false) => f32_to_u32(a, rm),
                            (64, true) => f32_to_i64(a, rm),
                            _ => f32_to_u64(a, rm),
                        }
                    } else {
                        let a = x.to_bits();
                        match (width, signed) {
                            (32, true) => f64_to_i32(a, rm),
                            (32, false) => f64_to_u32(a, rm),
                            (64, true) => f64_to_i64(a, rm),
                            _ => f64_to_u64(a, rm),
                        }
                    };
                    expect(got, want, &format!("{x:e} -> {}{width} {rm:?}", if signed { 'i' } else { 'u' }));
                }
            }
        }
    }

    /// Integer → float conversions in all modes against a brute-force neighbour oracle.
    #[test]
    fn int_to_float_matches_oracle() {
        fn want64(v: i128, rm: Rounding) -> (u64, u32) {
            let n = v as f64;
            if n as i128 == v {
                return (n.to_bits(), 0);
            }
            let (lo, hi) = if (n as i128) < v { (n, n.next_up()) } else { (n.next_down(), n) };
            let tie = lo as i128 + hi as i128 == 2 * v;
            let r = match rm {
                Rne => n,
                Rtz => {
                    if v > 0 {
                        lo
                    } else {
                        hi
                    }
                }
                Down => lo,
                Up => hi,
                Rmm => {
                    if tie {
                        if v > 0 {
                            hi
                        } else {
                            lo
                        }
                    } else {
                        n
                    }
                }
            };
            (r.to_bits(), NX)
        }
        fn want32(v: i128, rm: Rounding) -> (u32, u32) {
            let n = v as f32;
            if n as i128 == v {
                return (n.to_bits(), 0);
            }
            let (lo, hi) = if (n as i128) < v { (n, n.next_up()) } else { (n.next_down(), n) };
            let tie = lo as i128 + hi as i128 == 2 * v;
            let r = match rm {
                Rne => n,
                Rtz => {
                    if v > 0 {
                        lo
                    } else {
                        hi
                    }
                }
                Down => lo,
                Up => hi,
                Rmm => {
                    if tie {
                        if v > 0 {
                            hi
                        } else {
                            lo
                        }
                    } else {
                        n
                    }
                }
            };
            (r.to_bits(), NX)
        }
        let mut r = Rng(0x7777_1234_5678_9abc);
        for _ in 0..200_000 {
            let mut u = r.next() >> r.below(64);
            if r.below(4) == 0 {
                // Few significant bits followed by a tie-ish tail.
                let sh = r.below(40) as u32;
                u = ((u >> sh) << sh) | if r.bit() { 1u64 << sh.saturating_sub(1) } else { 0 };
            }
            let i = u as i64;
            for &rm in &ALL {
                let ctx = format!("{u:#x} {rm:?}");
                expect(u64_to_f64(u, rm), want64(u as i128, rm), &ctx);
                expect(u64_to_f32(u, rm), want32(u as i128, rm), &ctx);
                expect(i64_to_f64(i, rm), want64(i as i128, rm), &ctx);
                expect(i64_to_f32(i, rm), want32(i as i128, rm), &ctx);
                expect(i32_to_f32(i as i32, rm), want32(i as i32 as i128, rm), &ctx);
                expect(u32_to_f32(u as u32, rm), want32(u as u32 as i128, rm), &ctx);
                expect(i32_to_f64(i as i32, rm), want64(i as i32 as i128, rm), &ctx);
                expect(u32_to_f64(u as u32, rm), want64(u as u32 as i128, rm), &ctx);
            }
        }
    }

    /// Comparisons and min/max against native operators on random operands.
    #[test]
    fn compare_min_max_match_native() {
        let mut r = Rng(0x3141_5926_5358_9793);
        for _ in 0..200_000 {
            let a = gen(&mut r, F64);
            let b = if r.bit() { near(&mut r, F64, a) } else { gen(&mut r, F64) };
            let (x, y) = (f64::from_bits(a), f64::from_bits(b));
            let unordered = x.is_nan() || y.is_nan();
            let snan = F64.is_snan(a) || F64.is_snan(b);
            assert_eq!(f64_eq(a, b), (x == y, if snan { NV } else { 0 }), "{a:#x} == {b:#x}");
            assert_eq!(f64_lt(a, b), (x < y, if unordered { NV } else { 0 }), "{a:#x} < {b:#x}");
            assert_eq!(f64_le(a, b), (x <= y, if unordered { NV } else { 0 }), "{a:#x} <= {b:#x}");
            if !(x == 0.0 && y == 0.0) {
                assert_eq!(f64_min(a, b).0, nat64(x.min(y)), "min({a:#x}, {b:#x})");
                assert_eq!(f64_max(a, b).0, nat64(x.max(y)), "max({a:#x}, {b:#x})");
            }
            let (a, b) = (a as u32 ^ (a >> 32) as u32, b as u32);
            let (x, y) = (f32::from_bits(a), f32::from_bits(b));
            let unordered = x.is_nan() || y.is_nan();
            let snan = F32.is_snan(a as u64) || F32.is_snan(b as u64);
            assert_eq!(f32_eq(a, b), (x == y, if snan { NV } else { 0 }), "{a:#x} == {b:#x}");
            assert_eq!(f32_lt(a, b), (x < y, if unordered { NV } else { 0 }), "{a:#x} < {b:#x}");
            assert_eq!(f32_le(a, b), (x <= y, if unordered { NV } else { 0 }), "{a:#x} <= {b:#x}");
            if !(x == 0.0 && y == 0.0) {
                assert_eq!(f32_min(a, b).0, nat32(x.min(y)), "min({a:#x}, {b:#x})");
                assert_eq!(f32_max(a, b).0, nat32(x.max(y)), "max({a:#x}, {b:#x})");
            }
        }
    }
}
