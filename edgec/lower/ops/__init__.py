"""One module per op family: TIR template, lowering (compile-time constants) and reference notes."""

from edgec.lower.ops import conv, movement, nonlinear, pool_arith

LOWERINGS = {**conv.LOWERINGS, **pool_arith.LOWERINGS, **nonlinear.LOWERINGS, **movement.LOWERINGS}
