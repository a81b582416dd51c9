"""TFLite Micro's integer arithmetic as TIR expressions (the kernels' shared truth).

These mirror tensorflow/lite/kernels/internal/common.h: SaturatingRoundingDoublingHighMul,
RoundingDivideByPOT and MultiplyByQuantizedMultiplier (double rounding, the TFLM default).
Products are formed in int64 so the emitted C never relies on int32 overflow.
"""

from __future__ import annotations

from tvm import tirx

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def let(value: tirx.PrimExpr, body, name: str = "t") -> tirx.PrimExpr:
    """Bind `value` once (a C temporary) and build `body(var)`: keeps the emitted C small."""
    var = tirx.Var(name, str(value.ty))
    return tirx.Let(var, value, body(var))


def i32(x) -> tirx.PrimExpr:
    return tirx.Cast("int32", x)


def i64(x) -> tirx.PrimExpr:
    return tirx.Cast("int64", x)


def srdhm(a: tirx.PrimExpr, b: tirx.PrimExpr, *, b_never_min: bool = False) -> tirx.PrimExpr:
    """SaturatingRoundingDoublingHighMul(a, b) for int32 a, b; the INT32_MIN*INT32_MIN case saturates.

    b_never_min: the caller guarantees b != INT32_MIN (e.g. b is a QuantizeMultiplier result for a
    positive real), so the saturation case cannot occur and its test is left out.
    """
    def body(ab):
        # gemmlowp divides (ab + nudge) by 2^31 truncating, nudge = 2^30 if ab >= 0 else 1 - 2^30. For
        # ab < 0 the truncating quotient equals floor((ab + 1 - 2^30 + 2^31 - 1) / 2^31), so both signs
        # reduce to floor((ab + 2^30) / 2^31): an add and an arithmetic shift (what gcc/clang do for >>
        # of a negative int64, which edgec's C already relies on).
        high = i32(tirx.shift_right(ab + tirx.const(1 << 30, "int64"), tirx.const(31, "int64")))
        if b_never_min or (isinstance(b, tirx.IntImm) and b.value != INT32_MIN):
            return high
        # a == b == INT32_MIN is the only way to get a*b == 2^62. Not written as `a == INT32_MIN`:
        # TVM 0.27's simplifier folds an int32 `x == -2^31` to False and would drop the saturation.
        overflow = ab == tirx.const(1 << 62, "int64")
        return tirx.Select(overflow, tirx.const(INT32_MAX, "int32"), high)

    return let(i64(a) * i64(b), body, "ab")


def rounding_divide_by_pot(x: tirx.PrimExpr, exponent: tirx.PrimExpr) -> tirx.PrimExpr:
    """RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero (int32)."""
    one, zero = tirx.const(1, "int32"), tirx.const(0, "int32")

    def body(v, e):
        # Built unsigned so exponent 31 does not shift into the int32 sign bit (gemmlowp uses 64 bits).
        mask = i32((tirx.const(1, "uint32") << tirx.Cast("uint32", e)) - tirx.const(1, "uint32"))
        threshold = (mask >> 1) + tirx.Select(v < 0, one, zero)
        return (v >> e) + tirx.Select(tirx.bitwise_and(v, mask) > threshold, one, zero)

    if isinstance(exponent, int):
        return let(x, lambda v: body(v, tirx.const(exponent, "int32")), "x")
    return let(x, lambda v: let(i32(exponent), lambda e: body(v, e), "e"), "x")


def rounding_divide_by_pot_bounded(x: tirx.PrimExpr, exponent: tirx.PrimExpr) -> tirx.PrimExpr:
    """RoundingDivideByPOT for exponent >= 1 and |x| < 2^31 - 1: ties away from zero is rounding half up of
    x - 1 for negative x, and floor((u + 2^(e-1)) / 2^e) = ((u >> (e - 1)) + 1) >> 1 (no overflow in between)."""
    def body(v, e):
        u = v + tirx.shift_right(v, tirx.const(31, "int32"))
        return tirx.shift_right(tirx.shift_right(u, e - 1) + 1, tirx.const(1, "int32"))

    if isinstance(exponent, int):
        return let(x, lambda v: body(v, tirx.const(exponent, "int32")), "x")
    return let(x, lambda v: let(i32(exponent), lambda e: body(v, e), "e"), "x")


def multiply_by_quantized_multiplier(x: tirx.PrimExpr, multiplier: tirx.PrimExpr,
                                     shift: tirx.PrimExpr) -> tirx.PrimExpr:
    """MultiplyByQuantizedMultiplier(x, multiplier, shift) with a run-time or constant shift."""
    if isinstance(shift, int):
        left, right = max(shift, 0), max(-shift, 0)
        shifted = x if left == 0 else i32(i64(x) * (1 << left))
        return rounding_divide_by_pot(srdhm(shifted, multiplier), right) if right else srdhm(shifted, multiplier)
    def body(sh):
        shifted = i32(i64(x) * (tirx.const(1, "int64") << i64(tirx.max(sh, 0))))
        return rounding_divide_by_pot(srdhm(shifted, multiplier), tirx.max(-sh, 0))

    return let(shift, body, "shift")


def clamp(x: tirx.PrimExpr, lo: int, hi: int) -> tirx.PrimExpr:
    dtype = str(x.ty)
    return tirx.min(tirx.max(x, tirx.const(lo, dtype)), tirx.const(hi, dtype))
