"""RESHAPE, SQUEEZE, PAD, CONCATENATION, STRIDED_SLICE, TRANSPOSE: bit-exact with TFLM, and checked
against numpy slicing / transpose / pad / concatenate as an independent second reference.

Each model holds several independent ops of one kind (one graph output each), so one build covers
many random cases.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.lower import lower_graph
from edgec.oracle.tflm import run_tflm, run_tflm_batch
from support import assert_matches_tflm, random_inputs


class Model:
    """A small multi-op model; every op output is a graph output."""

    def __init__(self) -> None:
        self.tensors: list[WTensor] = []
        self.ops: list[WOp] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def tensor(self, t: WTensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def input(self, t: WTensor) -> int:
        self.inputs.append(self.tensor(t))
        return self.inputs[-1]

    def op(self, name: str, ins: list[int], out: WTensor, options: dict | None = None, output: bool = True) -> int:
        o = self.tensor(out)
        self.ops.append(WOp(name, ins, [o], options or {}))
        if output:
            self.outputs.append(o)
        return o

    def bytes(self) -> bytes:
        return write_tflite(self.tensors, self.ops, self.inputs, self.outputs)


def q8(name: str, shape, scale: float = 0.05, zp: int = -3, data=None) -> WTensor:
    return WTensor(name, tuple(int(d) for d in shape), "int8", data=data, scale=[scale], zero_point=[zp])


def const(name: str, values, dtype: str = "int32") -> WTensor:
    v = np.asarray(values, dtype=dtype)
    return WTensor(name, v.shape, dtype, data=v)


def rand_q(rng: np.random.Generator) -> tuple[float, int]:
    return float(10 ** rng.uniform(-3, 0)), int(rng.integers(-128, 128))


def check(model: bytes, refs, n_inputs: int = 4, seed: int = 0) -> None:
    """edgec == TFLM bit for bit on random inputs, and TFLM == numpy reference (refs(inputs) -> outputs)."""
    sets = random_inputs(model, n_inputs, seed)
    assert_matches_tflm(model, input_sets=sets)
    for got, want in zip(run_tflm_batch(model, sets[:1])[0], refs(sets[0])):
        assert np.array_equal(np.asarray(got).reshape(want.shape), want)


def lower(model: bytes):
    return lower_graph(parse_tflite(model, "m.tflite"))


# --- TRANSPOSE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_transpose_matches_tflm(seed):
    rng = np.random.default_rng(100 + seed)
    m, cases = Model(), []
    for k in range(6):
        rank = int(rng.integers(1, 6))
        shape = tuple(int(d) for d in rng.integers(1, 5, rank))
        perm = [int(p) for p in rng.permutation(rank)]
        s, z = rand_q(rng)
        x = m.input(q8(f"x{k}", shape, s, z))
        p = m.tensor(const(f"perm{k}", perm))
        m.op("TRANSPOSE", [x, p], q8(f"y{k}", [shape[i] for i in perm], s, z))
        cases.append(perm)
    check(m.bytes(), lambda xs: [np.transpose(x, p) for x, p in zip(xs, cases)])


# --- PAD -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_pad_matches_tflm(seed):
    rng = np.random.default_rng(200 + seed)
    m, cases = Model(), []
    for k in range(6):
        rank = int(rng.integers(1, 6))
        shape = [int(d) for d in rng.integers(1, 5, rank)]
        pads = rng.integers(0, 4, (rank, 2)) * (rng.random((rank, 1)) < 0.7)  # some dims unpadded
        (si, zi), (so, zo) = rand_q(rng), rand_q(rng)  # TFLM copies input bytes whatever their quantization
        x = m.input(q8(f"x{k}", shape, si, zi))
        p = m.tensor(const(f"pads{k}", pads))
        out = q8(f"y{k}", [d + a + b for d, (a, b) in zip(shape, pads)], so, zo)
        value = zo
        if k % 3 == 2:  # explicit constant_values input, quantized like the output
            value = int(rng.integers(-128, 128))
            c = m.tensor(q8(f"c{k}", (), so, zo, data=np.array(value, np.int8)))
            m.op("PAD", [x, p, c], out)
        else:
            m.op("PAD", [x, p], out)
        cases.append((pads, value))
    check(m.bytes(), lambda xs: [np.pad(x, p, constant_values=v) for x, (p, v) in zip(xs, cases)])


def test_pad_image_style_nhwc():
    m = Model()
    x = m.input(q8("x", (1, 5, 7, 3), 0.02, 11))
    p = m.tensor(const("p", [[0, 0], [1, 2], [3, 0], [0, 0]]))
    m.op("PAD", [x, p], q8("y", (1, 8, 10, 3), 0.02, 11))
    check(m.bytes(), lambda xs: [np.pad(xs[0], [[0, 0], [1, 2], [3, 0], [0, 0]], constant_values=11)])


# --- CONCATENATION ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_concatenation_matches_tflm(seed):
    rng = np.random.default_rng(300 + seed)
    m, cases = Model(), []
    const_data: dict[int, np.ndarray] = {}
    for k in range(4):
        rank = int(rng.integers(1, 7))
        shape = [int(d) for d in rng.integers(1, 4, rank)]
        axis = int(rng.integers(-rank, rank))
        n = int(rng.integers(1, 11))
        s, z = rand_q(rng)
        ins, shapes = [], []
        for i in range(n):
            sh = list(shape)
            sh[axis] = int(rng.integers(1, 4))
            if i == 1 and k % 2:  # a constant operand (e.g. a learned token) next to activations
                data = rng.integers(-128, 128, sh).astype(np.int8)
                t = m.tensor(q8(f"c{k}_{i}", sh, s, z, data=data))
                const_data[t] = data
            else:
                t = m.input(q8(f"x{k}_{i}", sh, s, z))
            ins.append(t)
            shapes.append(sh)
        out = list(shape)
        out[axis] = sum(sh[axis] for sh in shapes)
        m.op("CONCATENATION", ins, q8(f"y{k}", out, s, z), {"axis": axis})
        cases.append((ins, axis))
    inputs = m.inputs

    def refs(xs):
        by_tid = {**dict(zip(inputs, xs)), **const_data}
        return [np.concatenate([by_tid[t] for t in ins], axis) for ins, axis in cases]

    check(m.bytes(), refs)


# --- STRIDED_SLICE ---------------------------------------------------------------------------------------


def _np_strided_slice(x, begin, end, strides, bm, em, sm):
    idx = []
    for d in range(x.ndim):
        if sm >> d & 1:
            idx.append(begin[d])
        else:
            idx.append(slice(None if bm >> d & 1 else begin[d], None if em >> d & 1 else end[d], strides[d]))
    return x[tuple(idx)]


def _random_slice(rng, shape):
    """Random begin/end/strides/masks (negative indices and strides, out-of-range ends) with a non-empty result."""
    rank = len(shape)
    while True:
        begin = [int(rng.integers(-n - 2, n + 3)) for n in shape]
        end = [int(rng.integers(-n - 2, n + 3)) for n in shape]
        strides = [int(rng.choice([-3, -2, -1, 1, 1, 2, 3])) for _ in shape]
        bm, em = int(rng.integers(0, 1 << rank)), int(rng.integers(0, 1 << rank))
        sm = int(rng.integers(0, 1 << rank)) if rng.random() < 0.4 else 0
        for d, n in enumerate(shape):
            if sm >> d & 1:  # shrink: an in-range begin and a positive stride (the well-defined cases)
                begin[d], strides[d] = int(rng.integers(-n, n)), int(rng.integers(1, 3))
                bm &= ~(1 << d)
        ref = _np_strided_slice(np.zeros(shape), begin, end, strides, bm, em, sm)
        if ref.size:
            return begin, end, strides, bm, em, sm, ref.shape


@pytest.mark.parametrize("seed", range(10))
def test_strided_slice_matches_tflm(seed):
    rng = np.random.default_rng(400 + seed)
    m, cases = Model(), []
    for k in range(8):
        rank = int(rng.integers(1, 5))
        shape = [int(d) for d in rng.integers(1, 7, rank)]
        begin, end, strides, bm, em, sm, out = _random_slice(rng, shape)
        opts = {"begin_mask": bm, "end_mask": em, "shrink_axis_mask": sm}
        if k == 7:  # TFLM ignores these three options; so must edgec
            opts.update(offset=True, ellipsis_mask=int(rng.integers(0, 4)), new_axis_mask=int(rng.integers(0, 4)))
        s, z = rand_q(rng)
        x = m.input(q8(f"x{k}", shape, s, z))
        idx = [m.tensor(const(f"{w}{k}", v)) for w, v in (("b", begin), ("e", end), ("s", strides))]
        m.op("STRIDED_SLICE", [x, *idx], q8(f"y{k}", out, s, z), opts)
        cases.append((begin, end, strides, bm, em, sm))
    check(m.bytes(), lambda xs: [_np_strided_slice(x, *c) for x, c in zip(xs, cases)])


# --- RESHAPE, SQUEEZE and a chain of all six ---------------------------------------------------------------


def test_reshape_squeeze_alias_and_chain():
    """Aliases at the graph boundary and in the middle of a chain through every movement op."""
    m = Model()
    x = m.input(q8("x", (1, 4, 1, 6), 0.1, 5))
    m.op("RESHAPE", [x, m.tensor(const("s", [6, -1]))], q8("r", (6, 4), 0.1, 5))  # input -> output alias
    m.op("RESHAPE", [x], q8("r1", (24,), 0.1, 5))  # no shape input: the output tensor's shape rules
    sq = m.op("SQUEEZE", [x], q8("sq", (4, 6), 0.1, 5), {"squeeze_dims": [0, -2]}, output=False)
    pd = m.op("PAD", [sq, m.tensor(const("p", [[1, 0], [0, 2]]))], q8("pd", (5, 8), 0.1, 5), output=False)
    tr = m.op("TRANSPOSE", [pd, m.tensor(const("perm", [1, 0]))], q8("tr", (8, 5), 0.1, 5), output=False)
    rs = m.op("RESHAPE", [tr, m.tensor(const("s2", [2, 4, 5]))], q8("rs", (2, 4, 5), 0.1, 5), output=False)
    sl = m.op("STRIDED_SLICE", [rs, m.tensor(const("b", [0, -1, 0])), m.tensor(const("e", [2, 0, 5])),
                                m.tensor(const("st", [1, -1, 2]))], q8("sl", (2, 3, 3), 0.1, 5), output=False)
    sq2 = m.op("SQUEEZE", [m.op("RESHAPE", [sl], q8("u", (1, 2, 3, 3), 0.1, 5), output=False)],
               q8("sq2", (2, 3, 3), 0.1, 5), output=False)
    m.op("CONCATENATION", [sq2, sl, sq2], q8("cat", (2, 3, 9), 0.1, 5), {"axis": -1})
    m.op("SQUEEZE", [x], q8("sq3", (4, 6), 0.1, 5))  # squeeze_dims empty: every size-1 dim

    def refs(xs):
        a = xs[0]
        s = a.reshape(4, 6)
        t = np.pad(s, [[1, 0], [0, 2]], constant_values=5).T.reshape(2, 4, 5)[:, -1:0:-1, 0:5:2]
        return [a.reshape(6, 4), a.reshape(24), np.concatenate([t, t, t], -1), s]

    check(m.bytes(), refs)
    ops = lower(m.bytes()).ops
    assert [o.alias for o in ops] == [o.op.type in ("RESHAPE", "SQUEEZE") for o in ops]


# --- what is rejected, and why ---------------------------------------------------------------------------


def _one(op: str, tensors: list[WTensor], n_in: int, options: dict | None = None) -> bytes:
    m = Model()
    ids = [m.tensor(t) if t.data is not None else m.input(t) for t in tensors[:n_in]]
    m.op(op, ids, tensors[-1], options)
    return m.bytes()


def _ss(shape, b, e, s, out, opts=None, dtype="int32") -> bytes:
    return _one("STRIDED_SLICE", [q8("x", shape), const("b", b, dtype), const("e", e, dtype), const("s", s, dtype),
                                  q8("y", out)], 4, opts)


# (model, message pattern, does TFLM reject it too?)
REJECTED = {
    "concat_scale": (lambda: _one("CONCATENATION", [q8("a", (2, 3), 0.1), q8("b", (2, 2), 0.2), q8("y", (2, 5), 0.1)],
                                  2, {"axis": 1}), "does not requantize", True),
    "concat_zero_point": (lambda: _one("CONCATENATION", [q8("a", (2, 3), zp=1), q8("b", (2, 2)), q8("y", (2, 5))], 2,
                                       {"axis": 1}), "zero point 1 but output", True),
    "concat_relu": (lambda: _one("CONCATENATION", [q8("a", (2, 3)), q8("b", (2, 2)), q8("y", (2, 5))], 2,
                                 {"axis": 1, "fused_activation_function": "RELU"}), "fused activation RELU", True),
    "concat_11_inputs": (lambda: _one("CONCATENATION", [q8(f"a{i}", (1, 2)) for i in range(11)] + [q8("y", (1, 22))],
                                      11, {"axis": 1}), "11 inputs; supported: 1 to 10", True),
    "concat_rank7": (lambda: _one("CONCATENATION", [q8("a", (1,) * 6 + (2,)), q8("y", (1,) * 6 + (2,))], 1,
                                  {"axis": -1}), "output rank 7", True),
    "concat_shape": (lambda: _one("CONCATENATION", [q8("a", (2, 3)), q8("b", (3, 2)), q8("y", (2, 5))], 2,
                                  {"axis": 1}), r"shape \[3, 2\] does not match", None),
    "pad_negative": (lambda: _one("PAD", [q8("x", (4, 4)), const("p", [[-1, 0], [0, 0]]), q8("y", (3, 4))], 2),
                     "negative paddings", False),
    # TFLM reads the int64 words as int32 [0, 0, 1, 0], so its shape check fails.
    "pad_int64": (lambda: _one("PAD", [q8("x", (4, 4)), const("p", [[0, 1], [0, 0]], "int64"), q8("y", (5, 4))], 2),
                  "paddings tensor 'p' is int64; supported: int32", True),
    "pad_rank6": (lambda: _one("PAD", [q8("x", (1,) * 5 + (2,)), const("p", [[0, 0]] * 5 + [[1, 0]]),
                                       q8("y", (1,) * 5 + (3,))], 2), "supported: equal ranks up to 5", True),
    "pad_shape": (lambda: _one("PAD", [q8("x", (4, 4)), const("p", [[1, 0], [0, 0]]), q8("y", (4, 4))], 2),
                  r"padded by \[\[1, 0\], \[0, 0\]\] gives \[5, 4\]", True),
    "pad_constant_quant": (lambda: _one("PAD", [q8("x", (4,)), const("p", [[1, 0]]),
                                                q8("c", (), zp=4, data=np.array(3, np.int8)), q8("y", (5,))], 3),
                           "quantized differently", True),
    "pad_dynamic": (lambda: _one("PAD", [q8("x", (4,)), WTensor("p", (1, 2), "int32"), q8("y", (5,))], 2),
                    "paddings tensor 'p' is not constant", True),
    "slice_rank5": (lambda: _ss((1, 1, 2, 1, 2), [0] * 5, [1, 1, 2, 1, 2], [1] * 5, (1, 1, 2, 1, 2)),
                    "input rank 5; supported: 1 to 4", True),
    "slice_stride0": (lambda: _ss((4, 6), [0, 0], [4, 6], [0, 1], (4, 6)), "stride 0 on axis 0", True),
    "slice_int64": (lambda: _ss((4, 6), [1, 1], [2, 3], [1, 1], (1, 2), dtype="int64"), "is int64", True),
    "slice_short_begin": (lambda: _ss((4, 6), [1], [3], [1], (2, 6)), "begin has 1 values for a rank-2", True),
    "slice_shape": (lambda: _ss((4, 6), [1, 0], [3, 6], [1, 1], (2, 5)), r"give \[2, 6\]", True),
    "slice_offset_shape": (lambda: _ss((4, 6), [1, 1], [2, 3], [1, 1], (2, 3), {"offset": True}),
                           "TFLM ignores offset", True),
    "slice_shrink_negative_stride": (lambda: _ss((4, 6), [1, 2], [2, 3], [1, -1], (1,), {"shrink_axis_mask": 2}),
                                     "TFLM writes no output", False),
    "slice_shrink_out_of_range": (lambda: _ss((4, 6), [7, 2], [8, 3], [1, 1], (1,), {"shrink_axis_mask": 1}),
                                  "TFLM writes no output", False),
    "transpose_dup": (lambda: _one("TRANSPOSE", [q8("x", (2, 3, 4)), const("p", [0, 0, 1]), q8("y", (2, 2, 3))], 2),
                      r"perm \[0, 0, 1\] is not a permutation", False),
    "transpose_rank6": (lambda: _one("TRANSPOSE", [q8("x", (1, 2, 1, 2, 1, 2)), const("p", [5, 4, 3, 2, 1, 0]),
                                                   q8("y", (2, 1, 2, 1, 2, 1))], 2), "input rank 6", True),
    "transpose_int64": (lambda: _one("TRANSPOSE", [q8("x", (2, 3)), const("p", [1, 0], "int64"), q8("y", (3, 2))], 2),
                        "perm tensor 'p' is int64", False),
    "transpose_shape": (lambda: _one("TRANSPOSE", [q8("x", (2, 3)), const("p", [1, 0]), q8("y", (2, 3))], 2),
                        r"transposed by \[1, 0\] gives \[3, 2\]", False),
    "reshape_count": (lambda: _one("RESHAPE", [q8("x", (2, 3)), const("s", [4, 2]), q8("y", (4, 2))], 2),
                      r"has 6 elements but output 'y' shape \[4, 2\] \(new_shape input: \[4, 2\]\) has 8", True),
    "squeeze_not_one": (lambda: _one("SQUEEZE", [q8("x", (1, 3, 2)), q8("y", (3, 2))], 1, {"squeeze_dims": [1]}),
                        r"squeeze_dims \[1\] on input shape \[1, 3, 2\]", True),
    "int16_transpose": (lambda: _one("TRANSPOSE", [WTensor("x", (2, 3), "int16"), const("p", [1, 0]),
                                                   WTensor("y", (3, 2), "int16")], 2),
                        "tensor 'x' is int16; supported: int8", False),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_with_clear_message(case):
    make, pattern, tflm_too = REJECTED[case]
    model = make()
    with pytest.raises(EdgecError, match=pattern) as e:
        lower(model)
    assert str(e.value).startswith("m.tflite: op #0 ")
    if tflm_too is not None:
        # True: TFLM's Prepare rejects it as well. False: TFLM runs it but reads out of bounds, leaves output
        # bytes unwritten or copies something that is not the op's meaning.
        sets = random_inputs(model, 1)
        try:
            run_tflm(model, sets[0])
            rejected = False
        except RuntimeError:
            rejected = True
        assert rejected == tflm_too


def test_slice_ignored_masks_still_checked_like_tflm():
    """new_axis_mask is ignored by TFLM: the converter's real output shape (with the new axis) fails its
    shape check, so edgec rejects it too, and says why."""
    model = _ss((4, 6), [0, 1], [4, 3], [1, 1], (1, 4, 2), {"new_axis_mask": 1})
    with pytest.raises(EdgecError, match="TFLM ignores new_axis_mask"):
        lower(model)
