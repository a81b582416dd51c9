"""The micro-kernel variants (runtime_c/kernels/edgec_<v>.h called from the conv / depthwise / FC TIR) against
TFLite Micro, for each variant and the QEMU target that uses it by default:

- dsp  (edgec_dsp.h, Arm SMLAD / SMLABB / SSAT)                       on cortex-m4,
- mve  (edgec_mve.h, Helium VMLADAVA / int32 lanes / VQRDMULH + VRSHL)  on cortex-m55,
- rv32 (edgec_rv32.h, pointer-walking plain C)                         on esp32c3.

Each runs the same model on the host (the headers' plain-C paths, ASan + UBSan) and under QEMU, bit-exact with
TFLM. The model's shapes reach every branch: 1x1 convolutions with odd pixel and channel counts and depths that
are not multiples of 4 (and below 4), KxK rows, a first layer with few input channels, depthwise blocks of 4
channels with remainders and border windows, FC depths with tails; requantization of 4-channel blocks
(edgec_mve_rq4) in all three shift modes (a shared shift right / zero / left, per-channel right shifts,
per-channel signed shifts), non-zero input zero points at padded borders, RELU / RELU6 clamps.

edgec_mve_rq4 is also tested directly (tests/c/rq4/rq4_model.c behind the standard harness) against a numpy
port of TFLite's MultiplyByQuantizedMultiplier, on the host and on the Cortex-M55 under QEMU."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.targets import list_targets, load_target
from edgec.toolchain.runner import RUNTIME_C, build_firmware, build_host, run_host, run_qemu
from support import ModelBuilder, random_inputs, require_target
from tests.ops.test_conv import ACTIVATIONS, add_conv, add_depthwise, add_fc

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# (kernel variant, the QEMU target whose default it is)
VARIANTS = [("dsp", "cortex-m4"), ("mve", "cortex-m55"), ("rv32", "esp32c3")]
MICRO = ("portable", "dsp", "mve", "rv32")
# Functions of edgec_<v>.h that the model's kernels.c must call (a tuple: one of them at least); variant-only
# ones are absent from the others. MVE depthwise blocks go through edgec_mve_dw4 + edgec_mve_rq4 or one
# edgec_mve_dw_rq per pixel.
COMMON_FUNCS = ("dot4", "dot1", "sat8")
DW_FUNCS = {"dsp": ("edgec_dsp_dw4",), "mve": ("edgec_mve_dw4", "edgec_mve_dw_rq"), "rv32": ("edgec_rv32_dw4",)}
ONLY = {"dsp": ("edgec_dsp_mm2x2",), "mve": ("edgec_mve_rq4",), "rv32": ("edgec_rv32_mm4x4",)}
# Calls taking edgec_mve_rq4's requantization arguments (mult, shift, mode, shift_const, bias, yzp, lo, hi):
# the index of `mult` among their arguments.
REQUANT_CALLS = {"edgec_mve_rq4": 1, "edgec_mve_dw_rq": 10}
# Instructions the firmware must contain (the intrinsics path, not the plain-C fallback, was compiled).
INSNS = {"dsp": ("smlad",), "mve": ("vmlava", "vqrdmulh", "vrshl"), "rv32": ()}  # vmlava: VMLADAVA's alias
OBJDUMP_ARGS = {"mve": ["-m", "armv8.1-m.main"]}  # without it objdump shows MVE loads and VMLADAV as ldc / cdp

# Effective multipliers s_x * s_w / s_y per channel, some above 1 (QuantizeMultiplier shift > 0: a left shift).
MIXED = [0.004, 1.6, 0.03, 2.9, 0.5, 1.05, 0.0004, 12.0]
RELU6_Y = (0.03, -100)  # RELU6 clamps to [-100, 100], RELU to [-100, 127]


def _model(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    mb = ModelBuilder()

    def act() -> str:
        return str(rng.choice(ACTIVATIONS))

    def small(*shape: int) -> np.ndarray:
        """Weights in [-1, 1]: accumulators small enough that multipliers > 1 leave some outputs unsaturated."""
        return rng.integers(-1, 2, shape).astype(np.int8)

    # 1x1, stride 1: pixel pairs (odd counts leave one pixel), channel pairs (odd OC), C % 4 tails, C < 4.
    for h, w, c, oc in ((3, 3, 6, 5), (2, 4, 8, 8), (1, 3, 3, 4), (5, 1, 13, 7)):
        add_conv(mb, rng, h=h, w=w, c=c, oc=oc, kh=1, kw=1, padding="VALID", act=act(),
                 per_channel=rng.random() < 0.8)
    # KxK rows (interior windows through edgec_<v>_dot4, borders scalar), strides, OC % 4 remainders.
    for kh, kw, c, oc, s in ((3, 3, 4, 6, 1), (2, 3, 5, 9, 2), (1, 1, 8, 4, 2)):
        add_conv(mb, rng, h=6, w=5, c=c, oc=oc, kh=kh, kw=kw, sh=s, sw=s, padding="SAME", act=act())
    # A first layer: 3 input channels, 16 output channels, padded 3x3 windows with a non-zero input zero point.
    add_conv(mb, rng, h=8, w=8, c=3, oc=16, kh=3, kw=3, sh=2, sw=2, padding="SAME", act="RELU6",
             x_q=(0.02, 23), y_q=RELU6_Y)
    # Depthwise, multiplier 1: 4-channel blocks, remainders, in-image taps at the borders, strides.
    for c, kh, kw, s, pad in ((4, 3, 3, 1, "SAME"), (7, 3, 2, 2, "SAME"), (12, 5, 5, 1, "SAME"), (9, 2, 2, 1, "VALID")):
        add_depthwise(mb, rng, h=6, w=7, c=c, dm=1, kh=kh, kw=kw, sh=s, sw=s, padding=pad, act=act())
    add_depthwise(mb, rng, h=5, w=5, c=4, dm=2, act=act())  # multiplier 2: the portable path
    # FC: depth tails, channel remainders, batches.
    for shape, oc in (((1, 10), 6), ((2, 33), 5), ((1, 64), 12)):
        add_fc(mb, rng, in_shape=shape, oc=oc, act=act(), per_channel=rng.random() < 0.5)

    # Requantization of 4-channel blocks (edgec_mve_rq4's shift modes), with clamps and border zero points.
    # Mode 0, one shift for all channels (per-tensor weights): right, zero (multiplier in [0.5, 1)), left.
    add_conv(mb, rng, h=3, w=3, c=8, oc=8, kh=1, kw=1, padding="VALID", per_channel=False, act="RELU",
             y_q=RELU6_Y)
    add_fc(mb, rng, in_shape=(3, 12), oc=8, per_channel=False, mults=[0.7], weights=small(8, 12),
           bias_values=rng.integers(-100, 101, 8), x_q=(0.125, -20))
    add_conv(mb, rng, h=3, w=4, c=6, oc=8, kh=1, kw=1, padding="VALID", per_channel=False, mults=[2.5],
             weights=small(8, 1, 1, 6), bias_values=rng.integers(-100, 101, 8))
    add_depthwise(mb, rng, h=5, w=5, c=8, kh=3, kw=3, padding="SAME", per_channel=False, mults=[2.5],
                  weights=small(1, 3, 3, 8), bias_values=rng.integers(-100, 101, 8), x_q=(0.1, -7))
    # Mode 1, per-channel right shifts (spread over 3 decades): padded depthwise windows with x_zp != 0 (the
    # border blocks' dw4 subtracts it), RELU6; a padded KxK conv with x_zp != 0, RELU.
    add_depthwise(mb, rng, h=6, w=6, c=10, kh=3, kw=3, padding="SAME", act="RELU6", x_q=(0.05, -61),
                  y_q=RELU6_Y)
    add_conv(mb, rng, h=5, w=5, c=5, oc=8, kh=3, kw=3, padding="SAME", act="RELU", x_q=(0.02, 37),
             y_q=RELU6_Y)
    # Mode 2, per-channel signed shifts (some channels shift left): conv rows, depthwise, FC.
    add_conv(mb, rng, h=4, w=3, c=4, oc=8, kh=1, kw=1, padding="VALID", mults=MIXED, weights=small(8, 1, 1, 4),
             bias_values=rng.integers(-100, 101, 8))
    add_depthwise(mb, rng, h=5, w=6, c=8, kh=3, kw=3, padding="SAME", act="RELU6", mults=MIXED,
                  weights=small(1, 3, 3, 8), bias_values=rng.integers(-100, 101, 8), x_q=(0.05, 90),
                  y_q=RELU6_Y)
    add_fc(mb, rng, in_shape=(2, 20), oc=8, per_channel=True, mults=MIXED, weights=small(8, 20),
           bias_values=rng.integers(-100, 101, 8))
    return mb.build()


@functools.cache
def _case(seed: int):
    """(model, input sets, TFLM outputs) of a seed, shared by the variants."""
    model = _model(seed)
    sets = random_inputs(model, 3, seed)
    return model, sets, run_tflm_batch(model, sets)


def _compare(got, want) -> None:
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            w = np.asarray(w).reshape(g.shape)
            if not np.array_equal(g, w):
                idx = tuple(np.argwhere(g != w)[0])
                raise AssertionError(f"input {r}, output {o}: {int((g != w).sum())} of {g.size} differ; first at "
                                     f"{idx}: edgec {g[idx]} vs TFLM {w[idx]}")


def _calls(source: str, name: str) -> list[list[str]]:
    """The top-level argument texts of every call of `name` in C `source`."""
    calls = []
    for m in re.finditer(rf"\b{name}\(", source):
        depth, args, cur, i = 1, [], "", m.end()
        while True:
            ch = source[i]
            i += 1
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
            if ch == "," and depth == 1:
                args.append(cur.strip())
                cur = ""
            else:
                cur += ch
        args.append(cur.strip())
        calls.append(args)
    return calls


def _int(arg: str) -> int | None:
    try:
        return int(arg.strip("()"))
    except ValueError:
        return None


def _check_project(out: Path, variant: str) -> str:
    """The variant's header (and only it) is in src/ and kernels.c calls its functions; returns kernels.c."""
    src = out / "src"
    for v in MICRO[1:]:
        assert (src / f"edgec_{v}.h").is_file() == (v == variant), f"edgec_{v}.h in src/ of a {variant} build"
    kernels_c = (src / "kernels.c").read_text()
    for f in COMMON_FUNCS:
        assert f"edgec_{variant}_{f}(" in kernels_c, f"edgec_{variant}_{f}"
    assert any(f + "(" in kernels_c for f in DW_FUNCS[variant]), DW_FUNCS[variant]
    for v, names in ONLY.items():
        for name in names:
            assert (name + "(" in kernels_c) == (v == variant), name
    for v in MICRO[1:]:
        if v != variant:
            assert f"edgec_{v}_" not in kernels_c, f"a {variant} build calls edgec_{v}_*"
    # Border blocks of the padded depthwise layers with x_zp != 0 subtract it in dw4 / dw_rq (9th argument).
    zps = {_int(a[8]) for f in DW_FUNCS[variant] for a in _calls(kernels_c, f)}
    assert 0 in zps and zps - {0, None}, f"dw4 input zero points {zps}: no border block with x_zp != 0"
    return kernels_c


def _check_insns(elf: Path, target: dict, variant: str, insns: tuple[str, ...] | None = None) -> None:
    """The firmware has the variant's characteristic instructions (its intrinsics path was compiled in)."""
    insns = INSNS[variant] if insns is None else insns
    objdump = target.get("cc", "arm-none-eabi-gcc")[: -len("gcc")] + "objdump"
    if not insns or shutil.which(objdump) is None:
        return
    text = subprocess.run([objdump, "-d", *OBJDUMP_ARGS.get(variant, []), str(elf)], check=True,
                          capture_output=True, text=True).stdout
    for insn in insns:
        assert re.search(rf"\s{insn}", text), f"{target['name']} firmware has no {insn}: intrinsics path not built"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("variant", "target_name"), VARIANTS)
def test_micro_kernels_match_tflm(variant: str, target_name: str, seed: int) -> None:
    assert load_target(target_name)["kernel_variant"] == variant
    model, sets, want = _case(seed)
    with tempfile.TemporaryDirectory(prefix=f"edgec_{variant}_") as tmp:
        tmp = Path(tmp)
        (tmp / "m.tflite").write_bytes(model)
        report = build(tmp / "m.tflite", "host", tmp / "host", kernels=variant)
        assert report["kernels"] == variant
        _check_project(tmp / "host", variant)
        specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
        _compare(run_host(build_host(tmp / "host", tmp / "hw", extra_cflags=SANITIZE), sets, specs), want)

        target = require_target(target_name)
        report = build(tmp / "m.tflite", target_name, tmp / "fw")  # the target's default variant
        assert report["kernels"] == variant
        _check_project(tmp / "fw", variant)
        elf = build_firmware(tmp / "fw", target, tmp / "fww")
        _check_insns(elf, target, variant)
        got, _ = run_qemu(elf, target, sets, specs, count_instructions=False)
        _compare(got, want)


@pytest.mark.parametrize("seed", [1, 2])
def test_mve_requantization_modes_covered(seed: int, tmp_path: Path) -> None:
    """The model reaches edgec_mve_rq4 in every shift mode (its 4th argument): 0 with a shared right, zero and
    left shift (5th argument), 1, and 2 (some channel shifting left); and with activation bounds inside int8.
    Other calls with the same requantization arguments (edgec_mve_dw_rq) see every mode too."""
    (tmp_path / "m.tflite").write_bytes(_model(seed))
    build(tmp_path / "m.tflite", "host", tmp_path / "out", kernels="mve")
    kernels_c = (tmp_path / "out" / "src" / "kernels.c").read_text()
    bounds = set()
    for name, at in REQUANT_CALLS.items():
        calls = _calls(kernels_c, name)
        if name != "edgec_mve_rq4" and not calls:
            continue
        assert calls and all(len(a) == at + 9 for a in calls), (name, calls[:3])
        modes = {_int(a[at + 2]) for a in calls}
        assert modes == {0, 1, 2}, f"{name} shift modes {modes}"
        if name == "edgec_mve_rq4":
            consts = {_int(a[at + 3]) for a in calls if _int(a[at + 2]) == 0}
            assert min(consts) < 0 and 0 in consts and max(consts) > 0, f"{name}: mode-0 shifts {consts}"
        bounds |= {(_int(a[at + 6]), _int(a[at + 7])) for a in calls}
    assert (-100, 100) in bounds and (-100, 127) in bounds, f"clamp bounds {bounds}"  # RELU6, RELU


def test_variants_refused_where_unsupported(tmp_path: Path) -> None:
    """A target takes only its own kernel_variant or portable; the host takes every variant."""
    (tmp_path / "m.tflite").write_bytes(_model(3))
    defaults = {t: load_target(t).get("kernel_variant", "portable") for t in ("cortex-m4", "cortex-m55", "esp32c3")}
    assert defaults == {"cortex-m4": "dsp", "cortex-m55": "mve", "esp32c3": "rv32"}
    refused = [("mve", "cortex-m4"), ("dsp", "esp32c3"), ("rv32", "cortex-m55"), ("dsp", "cortex-m55"),
               ("mve", "esp32c3"), ("rv32", "cortex-m4")]
    plain = [t["name"] for t in list_targets() if t.get("kernel_variant", "portable") == "portable"
             and t["name"] != "host" and t.get("board")]
    refused += [(v, plain[0]) for v in MICRO[1:]] if plain else []
    for i, (variant, target) in enumerate(refused):
        with pytest.raises(EdgecError, match=f"--kernels {variant}"):
            build(tmp_path / "m.tflite", target, tmp_path / f"out{i}", kernels=variant)
    with pytest.raises(EdgecError, match="kernel variant 'neon'"):
        build(tmp_path / "m.tflite", "host", tmp_path / "neon", kernels="neon")
    assert build(tmp_path / "m.tflite", "cortex-m55", tmp_path / "portable", kernels="portable")["kernels"] \
        == "portable"
    kernels_c = (tmp_path / "portable" / "src" / "kernels.c").read_text()
    assert "edgec_mve_" not in kernels_c and not (tmp_path / "portable" / "src" / "edgec_mve.h").exists()


# --- edgec_mve_rq4 on its own ------------------------------------------------------------------------------

RQ4_DIR = Path(__file__).resolve().parents[1] / "c" / "rq4"
RQ4_CASES, RQ4_WORDS = 256, 21  # as in tests/c/rq4/rq4_model.c
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def _wrap32(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v, np.int64) + 2**31) % 2**32 - 2**31


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul, as gemmlowp writes it: (a * b + nudge) / 2^31 truncating toward zero,
    nudge 2^30 or 1 - 2^30 by the product's sign; INT32_MIN * INT32_MIN saturates to INT32_MAX."""
    ab = a.astype(np.int64) * b.astype(np.int64)  # |ab| <= 2^62
    n = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = np.where(n >= 0, n >> 31, -((-n) >> 31))
    return np.where((a == I32_MIN) & (b == I32_MIN), I32_MAX, q)


def _rdpot(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT: x / 2^e rounded to nearest, ties away from zero."""
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def _rq4_reference(cases: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What edgec_mve_rq4 must store for cases [n, RQ4_WORDS] (int64): clamp(MultiplyByQuantizedMultiplier(
    acc + bias (wrapped), mult, shift) + yzp (wrapped, as TFLite's int32), lo, hi) per lane; and the
    intermediates (for the coverage checks)."""
    acc, mult, shift, bias = cases[:, 0:4], cases[:, 4:8], cases[:, 8:12], cases[:, 12:16]
    mode, const, yzp, lo, hi = (cases[:, i:i + 1] for i in range(16, 21))
    assert ((cases >= I32_MIN) & (cases <= I32_MAX)).all()
    s = np.where(mode == 0, const, np.where(mode == 1, -shift, shift))
    total = _wrap32(acc + bias)
    shifted = _wrap32(total << np.maximum(s, 0))
    ab = shifted * mult
    high = _srdhm(shifted, mult)
    right = np.maximum(-s, 0)
    scaled = _rdpot(high, right)
    out = _wrap32(scaled + yzp)
    y = np.clip(out, lo, hi)
    return y, {"s": s, "sum": acc + bias, "total": total, "shifted": shifted, "ab": ab, "high": high, "right": right,
               "scaled": scaled, "out": out, "lo": np.broadcast_to(lo, y.shape), "hi": np.broadcast_to(hi, y.shape),
               "mult": mult}


def _rq4_cases(seed: int = 0) -> np.ndarray:
    """Random cases of every mode plus edge cases; int64 [n, RQ4_WORDS], n a multiple of RQ4_CASES."""
    rng = np.random.default_rng(seed)
    rows = []

    def case(acc, mult, shift, bias, mode, const=0, yzp=0, lo=-128, hi=127):
        rows.append([*np.broadcast_to(acc, 4), *np.broadcast_to(mult, 4), *np.broadcast_to(shift, 4),
                     *np.broadcast_to(bias, 4), mode, const, yzp, lo, hi])

    def i32(lo=I32_MIN, hi=I32_MAX, n=4):
        return rng.integers(lo, hi, n, endpoint=True)

    def qmult(n=4):  # QuantizeMultiplier's range, with 0 (flushed to zero) now and then
        return np.where(rng.random(n) < 0.05, 0, rng.integers(1 << 30, I32_MAX, n, endpoint=True))

    def bounds():
        if rng.random() < 0.5:
            return -128, 127
        lo, hi = sorted(rng.integers(-128, 128, 2))
        return int(lo), int(hi)

    for _ in range(3000):  # random: realistic multipliers mostly, any int32 sometimes
        mode = int(rng.integers(0, 3))
        mult = qmult() if rng.random() < 0.8 else i32()
        acc = i32() if rng.random() < 0.3 else i32(-(1 << 20), 1 << 20)
        bias = i32() if rng.random() < 0.2 else i32(-(1 << 16), 1 << 16)
        shift = rng.integers(0, 32, 4) if mode == 1 else rng.integers(-31, 32, 4)
        if mode == 2 and rng.random() < 0.7:
            shift = rng.integers(-31, 1, 4) + (rng.random(4) < 0.3) * rng.integers(1, 32, 4)
        const = int(rng.integers(-31, 32))
        lo, hi = bounds()
        case(acc, mult, shift, bias, mode, const, int(rng.integers(-128, 128)), lo, hi)
    m = rng.integers(1 << 30, I32_MAX, 4, endpoint=True)
    for mode in (0, 1, 2):
        sh = np.array([0, 5, 31, 17]) if mode == 1 else np.array([-31, 3, 0, -31])
        const = -31 if mode != 2 else 0
        # acc + bias wrapping around int32 both ways
        case([I32_MAX, I32_MIN, I32_MAX - 3, I32_MIN + 3], m, sh, [1, -1, 100, -100], mode, const, 5)
        case([I32_MAX, I32_MIN, 1 << 30, -(1 << 30)], m, sh, [I32_MAX, I32_MIN, 1 << 30, -(1 << 30) - 1], mode,
             const, -3)
        # INT32_MIN products: INT32_MIN * INT32_MIN saturates; INT32_MIN times others
        case(I32_MIN, [I32_MIN, I32_MAX, -1, 1 << 30], sh, 0, mode, const, -20)
        case([I32_MIN, I32_MAX, I32_MIN, -1], I32_MIN, sh, 0, mode, const, -7)
        # right shift 31 on extremes
        case([I32_MAX, I32_MIN, 1 << 30, -(1 << 30)], I32_MAX, 31 if mode == 1 else -31, 0, mode, -31)
        case([(1 << 30) + 1, -(1 << 30) - 1, 3 << 29, -(3 << 29)], I32_MAX, 31 if mode == 1 else -31, 0, mode, -31)
    # Ties at .5. SRDHM: a * 2^30 (a multiplier of one half) for odd a, both signs.
    for mode, const, sh in ((0, 0, 0), (1, 0, 0), (2, 0, 0)):
        case([3, -3, 5, -5], 1 << 30, sh, 0, mode, const)
        case([I32_MAX, -I32_MAX, 1, -1], 1 << 30, sh, 0, mode, const)
    # RoundingDivideByPOT: srdhm(2v, 2^30) = v exactly, so v = (2k + 1) 2^(e-1) is a tie of the e-bit shift.
    for e in (1, 2, 7, 15, 29):
        for k in (0, 1, 6):
            v = (2 * k + 1) << (e - 1)
            if 2 * v + 2 > I32_MAX:
                continue
            for mode, sh in ((0, 0), (1, e), (2, -e)):
                case([2 * v, -2 * v, 2 * v + 2, -2 * v - 2], 1 << 30, sh, 0, mode, -e)
                case([2 * v, -2 * v, 2 * v - 2, -2 * v + 2], 1 << 30, sh, 0, mode, -e, yzp=-1)
    # e = 30: srdhm(+-2^30, 2^30) = +-2^29; e = 31: srdhm(INT32_MAX, 2^30) = 2^30, srdhm(INT32_MIN, 2^30) = -2^30.
    for mode in (0, 1, 2):
        case([1 << 30, -(1 << 30), (1 << 30) + 2, -(1 << 30) - 2], 1 << 30, 30 if mode == 1 else -30, 0, mode, -30)
        case([I32_MAX, I32_MIN, I32_MAX - 2, I32_MIN + 2], 1 << 30, 31 if mode == 1 else -31, 0, mode, -31)
    # Left shifts, 1..31, that wrap (x * 2^s in int32) and that do not; mode 2 mixes left and right lanes.
    for s in (1, 2, 7, 16, 30, 31):
        case([1, -1, 3, -(1 << 20)], m, 0, 0, 0, s, 3)
        case([1, -1, 0x40000001, I32_MIN + 1], m, [s, s, s, s], [0, 0, 0, 0], 2, 0, -4)
        case([1, -5, 100, -100], [1 << 30, m[1], I32_MAX, 1 << 30], [s, -s, 0, s], 0, 2, 0, 1)
        case([40, -40, 63, -64], 1 << 30, [1, 1, 1, 1], 0, 2, 0, 0)  # 2x then x0.5: exact
    # yzp and the clamp bounds: outputs at lo - 1, lo, hi, hi + 1 (srdhm(2v, 2^30) = v).
    for yzp, lo, hi in ((0, -128, 127), (-100, -100, 100), (17, -5, 5), (-128, -128, -128), (127, 0, 127)):
        for mode in (0, 1, 2):
            vals = np.array([lo - 1, lo, hi, hi + 1]) - yzp
            case(2 * vals, 1 << 30, 0, 0, mode, 0, yzp, lo, hi)
            case(2 * vals - 4, 1 << 30, 0, 4, mode, 0, yzp, lo, hi)
    cases = np.array(rows, np.int64)
    # Cases where the requantized value + yzp leaves int32 are left out (see test_rq4_output_offset_overflow).
    _, mid = _rq4_reference(cases)
    return _pad(cases[~(mid["scaled"] + cases[:, 18:19] != mid["out"]).any(1)])


def _pad(cases: np.ndarray) -> np.ndarray:
    return np.concatenate([cases, np.tile(cases[-1:], (-len(cases) % RQ4_CASES, 1))])


def _rq4_overflow_cases() -> np.ndarray:
    """Cases whose requantized value + yzp leaves int32 (it wraps in TFLite's int32 `acc += output_offset`, as
    on any two's-complement target): the SRDHM saturation, multipliers of 2^31 - 1 (QuantizeMultiplier of a
    real just below a power of 2) on sums near the int32 limits, with no right shift."""
    rows = []
    for mode in (0, 1, 2):
        rows.append([I32_MIN] * 4 + [I32_MIN] * 4 + [0] * 4 + [0] * 4 + [mode, 0, 7, -128, 127])
        rows.append([I32_MAX - 10, I32_MIN + 10, I32_MAX, I32_MIN] + [I32_MAX] * 4 + [0] * 4 + [5, -5, 0, 0]
                    + [mode, 0, 127 if mode != 1 else -128, -128, 127])
    # a left shift of 1 on 2^30 - 1 with the largest multiplier
    rows.append([(1 << 30) - 1] * 4 + [I32_MAX] * 4 + [1] * 4 + [0] * 4 + [2, 0, 100, -128, 127])
    cases = np.array(rows, np.int64)
    _, mid = _rq4_reference(cases)
    assert (mid["scaled"] + cases[:, 18:19] != mid["out"]).any(1).all()
    return _pad(cases)


def _rq4_project(tmp: Path) -> Path:
    proj = tmp / "rq4"
    (proj / "include").mkdir(parents=True)
    (proj / "src").mkdir()
    shutil.copy(RQ4_DIR.parent / "edgec_model.h", proj / "include")
    shutil.copy(RUNTIME_C / "kernels" / "edgec_mve.h", proj / "include")
    shutil.copy(RQ4_DIR / "rq4_model.c", proj / "src")
    return proj


def _rq4_records(cases: np.ndarray) -> list[list[np.ndarray]]:
    return [[cases[i:i + RQ4_CASES].astype(np.int32).reshape(-1)] for i in range(0, len(cases), RQ4_CASES)]


def _rq4_outputs(outs: list[list[np.ndarray]]) -> tuple[set[int], np.ndarray]:
    """(EDGEC_MVE values, y [n, 4]) from the harness's output records."""
    raw = [o[0] for o in outs]
    return ({int(r[:4].view(np.int32)[0]) for r in raw},
            np.concatenate([r[4:].view(np.int8).reshape(-1, 4) for r in raw]).astype(np.int64))


def _check_rq4(y: np.ndarray, cases: np.ndarray, want: np.ndarray, where: str) -> None:
    bad = np.argwhere(y != want)
    if len(bad):
        i, lane = bad[0]
        raise AssertionError(f"{where}: {len(bad)} of {want.size} lanes differ; first: case {cases[i].tolist()} "
                             f"lane {lane}: got {y[i, lane]}, want {want[i, lane]}")


RQ4_SPECS = [((4 + 4 * RQ4_CASES,), np.uint8)]


def test_rq4_reference_matches_python_port() -> None:
    """The numpy reference agrees with edgec's exact Python port (edgec.lower.ops.extra._mbqm) on
    realistic cases (QuantizeMultiplier ranges), and with gemmlowp's published tie behaviour."""
    from edgec.lower.ops.extra import _mbqm

    cases = _rq4_cases()
    want, mid = _rq4_reference(cases)
    sample = np.random.default_rng(1).choice(len(cases), 600, replace=False)
    for i in sample:
        for lane in range(4):
            m = int(mid["mult"][i, lane])
            ref = _mbqm(int(mid["sum"][i, lane]), m, int(mid["s"][i, lane]))
            ref = min(max(ref + int(cases[i, 18]), int(cases[i, 19])), int(cases[i, 20]))
            assert want[i, lane] == ref, (cases[i].tolist(), lane)
    # SRDHM: 3 * 0.5 = 1.5 -> 2, -1.5 -> -1 (gemmlowp's nudge rounds half up); RDPOT: ties away from zero.
    a = np.array([3, -3, I32_MIN, I32_MIN])
    assert _srdhm(a, np.array([1 << 30, 1 << 30, I32_MIN, I32_MAX])).tolist() == [2, -1, I32_MAX, -I32_MAX]
    assert _rdpot(np.array([3, -3, 5, -5, -(1 << 30), 1 << 30]), np.array([1, 1, 1, 1, 31, 31])).tolist() \
        == [2, -2, 3, -3, -1, 1]


def test_rq4_cases_cover_edges() -> None:
    """The edge cases are there: every mode, wrapped sums, SRDHM saturation and INT32_MIN operands, ties of
    SRDHM and of RoundingDivideByPOT of both signs, right shifts of 31, left shifts (wrapping too), clamps."""
    cases = _rq4_cases()
    y, mid = _rq4_reference(cases)
    mode = np.broadcast_to(cases[:, 16:17], y.shape)
    assert set(np.unique(mode)) == {0, 1, 2}
    assert ((mid["sum"] > I32_MAX) | (mid["sum"] < I32_MIN)).sum() >= 6
    assert ((mid["shifted"] == I32_MIN) & (mid["mult"] == I32_MIN)).sum() >= 3
    assert (mid["shifted"] == I32_MIN).sum() > 10 and (mid["mult"] == I32_MIN).sum() > 10
    tie_srdhm = (mid["ab"] % (1 << 31)) == (1 << 30)
    assert (tie_srdhm & (mid["ab"] > 0)).sum() >= 5 and (tie_srdhm & (mid["ab"] < 0)).sum() >= 5
    r = mid["right"]
    tie_pot = (r > 0) & ((mid["high"] & ((np.int64(1) << r) - 1)) == (np.int64(1) << np.maximum(r - 1, 0)))
    for sign in (1, -1):
        hits = tie_pot & (np.sign(mid["high"]) == sign)
        assert hits.sum() >= 20 and set(np.unique(mode[hits])) == {0, 1, 2}
        assert (hits & (r == 31)).any() and (hits & (r == 1)).any()
    assert (r == 31).sum() > 50
    left = mid["s"] > 0
    assert set(np.unique(mode[left])) == {0, 2} and (left & (mid["s"] == 31)).any()
    assert (left & (mid["shifted"] != mid["total"] << np.maximum(mid["s"], 0))).sum() > 10  # wrapped
    assert ((cases[:, 16] == 2) & (mid["s"] > 0).any(1) & (mid["s"] < 0).any(1)).sum() > 10  # mixed lanes
    for bound in ("lo", "hi"):
        assert ((mid["out"] == mid[bound]) & (mid[bound] != {"lo": -128, "hi": 127}[bound])).sum() >= 5
    assert (mid["out"] < mid["lo"]).sum() > 100 and (mid["out"] > mid["hi"]).sum() > 100
    assert ((y > mid["lo"]) & (y < mid["hi"])).sum() > 1000


def _run_rq4(where: str, cases: np.ndarray, tmp_path: Path) -> np.ndarray:
    """y [n, 4] of edgec_mve_rq4 on `cases`: the plain-C path on the host (ASan + UBSan), the Helium path
    (VQRDMULH, VRSHL: checked in the firmware) on the Cortex-M55 under QEMU."""
    proj = _rq4_project(tmp_path)
    if where == "host":
        outs = run_host(build_host(proj, tmp_path / "w", extra_cflags=SANITIZE), _rq4_records(cases), RQ4_SPECS)
    else:
        target = require_target(where)
        elf = build_firmware(proj, target, tmp_path / "w")
        _check_insns(elf, target, "mve", ("vqrdmulh", "vrshl"))
        outs, _ = run_qemu(elf, target, _rq4_records(cases), RQ4_SPECS, count_instructions=False)
    mve, y = _rq4_outputs(outs)
    assert mve == {int(where != "host")}, f"EDGEC_MVE = {mve}"
    return y


@pytest.mark.parametrize("where", ["host", "cortex-m55"])
def test_rq4_matches_reference(where: str, tmp_path: Path) -> None:
    """edgec_mve_rq4 lane by lane against the numpy reference."""
    cases = _rq4_cases()
    _check_rq4(_run_rq4(where, cases, tmp_path), cases, _rq4_reference(cases)[0], where)


@pytest.mark.parametrize("where", ["host", "cortex-m55"])
def test_rq4_output_offset_overflow(where: str, tmp_path: Path) -> None:
    """A requantized value within |yzp| of the int32 limits: the sum with yzp wraps, as TFLite's int32 sum does
    on the targets (VADD on the M55; the plain-C path adds through uint32, clean under UBSan)."""
    cases = _rq4_overflow_cases()
    _check_rq4(_run_rq4(where, cases, tmp_path), cases, _rq4_reference(cases)[0], where)
