#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding { NearestEven = 0, TowardZero = 1, Down = 2, Up = 3, NearestMaxMagnitude = 4 }
impl Rounding { pub fn from_bits(rm: u32) -> Option<Rounding> { match rm {0=>Some(Rounding::NearestEven),1=>Some(Rounding::TowardZero),2=>Some(Rounding::Down),3=>Some(Rounding::Up),4=>Some(Rounding::NearestMaxMagnitude),_=>None} } }
pub const F32_CANONICAL_NAN: u32 = 0x7fc0_0000;
pub const F64_CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;
pub fn f32_add(_a: u32, _b: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_sub(_a: u32, _b: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_mul(_a: u32, _b: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_div(_a: u32, _b: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_sqrt(_a: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_mul_add(_a: u32, _b: u32, _c: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_min(_a: u32, _b: u32) -> (u32, u32) { todo!() }
pub fn f32_max(_a: u32, _b: u32) -> (u32, u32) { todo!() }
pub fn f32_eq(_a: u32, _b: u32) -> (bool, u32) { todo!() }
pub fn f32_lt(_a: u32, _b: u32) -> (bool, u32) { todo!() }
pub fn f32_le(_a: u32, _b: u32) -> (bool, u32) { todo!() }
pub fn f32_classify(_a: u32) -> u64 { todo!() }
pub fn f32_to_i32(_a: u32, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn i32_to_f32(_a: i32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_to_u32(_a: u32, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn u32_to_f32(_a: u32, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_to_i64(_a: u32, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn i64_to_f32(_a: i64, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f32_to_u64(_a: u32, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn u64_to_f32(_a: u64, _rm: Rounding) -> (u32, u32) { todo!() }
pub fn f64_add(_a: u64, _b: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_sub(_a: u64, _b: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_mul(_a: u64, _b: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_div(_a: u64, _b: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_sqrt(_a: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_mul_add(_a: u64, _b: u64, _c: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_min(_a: u64, _b: u64) -> (u64, u32) { todo!() }
pub fn f64_max(_a: u64, _b: u64) -> (u64, u32) { todo!() }
pub fn f64_eq(_a: u64, _b: u64) -> (bool, u32) { todo!() }
pub fn f64_lt(_a: u64, _b: u64) -> (bool, u32) { todo!() }
pub fn f64_le(_a: u64, _b: u64) -> (bool, u32) { todo!() }
pub fn f64_classify(_a: u64) -> u64 { todo!() }
pub fn f64_to_i32(_a: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn i32_to_f64(_a: i32, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_to_u32(_a: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn u32_to_f64(_a: u32, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_to_i64(_a: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn i64_to_f64(_a: i64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f64_to_u64(_a: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn u64_to_f64(_a: u64, _rm: Rounding) -> (u64, u32) { todo!() }
pub fn f32_to_f64(_a: u32) -> (u64, u32) { todo!() }
pub fn f64_to_f32(_a: u64, _rm: Rounding) -> (u32, u32) { todo!() }
