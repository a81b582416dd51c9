"""The dsp kernel variant (runtime_c/kernels/edgec_dsp.h called from the conv / depthwise / FC TIR) against
TFLite Micro: on the host (the micro-kernels' plain-C fallback, same TIR) and under QEMU on cortex-m4 (SMLAD,
SMLABB/SMLATT, SSAT), on shapes that reach every branch: 1x1 convolutions with odd pixel and channel counts
and depths that are not multiples of 4 (and below 4), depthwise blocks of 4 channels with remainders and
border windows, KxK rows, FC depths with tails, all activations."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.targets import load_target
from edgec.toolchain.runner import build_firmware, build_host, run_host, run_qemu
from support import ModelBuilder, random_inputs, require_target
from tests.ops.test_conv import ACTIVATIONS, add_conv, add_depthwise, add_fc


def _model(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    mb = ModelBuilder()

    def act() -> str:
        return str(rng.choice(ACTIVATIONS))

    # 1x1, stride 1: pixel pairs (odd counts leave one pixel), channel pairs (odd OC), C % 4 tails, C < 4.
    for h, w, c, oc in ((3, 3, 6, 5), (2, 4, 8, 8), (1, 3, 3, 4), (5, 1, 13, 7)):
        add_conv(mb, rng, h=h, w=w, c=c, oc=oc, kh=1, kw=1, padding="VALID", act=act(),
                 per_channel=rng.random() < 0.8)
    # KxK rows (interior windows through edgec_dsp_dot4, borders scalar), strides, OC % 4 remainders.
    for kh, kw, c, oc, s in ((3, 3, 4, 6, 1), (2, 3, 5, 9, 2), (1, 1, 8, 4, 2)):
        add_conv(mb, rng, h=6, w=5, c=c, oc=oc, kh=kh, kw=kw, sh=s, sw=s, padding="SAME", act=act())
    # Depthwise, multiplier 1: 4-channel blocks, remainders, in-image taps at the borders, strides.
    for c, kh, kw, s, pad in ((4, 3, 3, 1, "SAME"), (7, 3, 2, 2, "SAME"), (12, 5, 5, 1, "SAME"), (9, 2, 2, 1, "VALID")):
        add_depthwise(mb, rng, h=6, w=7, c=c, dm=1, kh=kh, kw=kw, sh=s, sw=s, padding=pad, act=act())
    add_depthwise(mb, rng, h=5, w=5, c=4, dm=2, act=act())  # multiplier 2: the portable path
    # FC: depth tails, channel remainders, batches.
    for shape, oc in (((1, 10), 6), ((2, 33), 5), ((1, 64), 12)):
        add_fc(mb, rng, in_shape=shape, oc=oc, act=act(), per_channel=rng.random() < 0.5)
    return mb.build()


def _compare(got, want) -> None:
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            assert np.array_equal(g, np.asarray(w).reshape(g.shape)), f"input {r}, output {o}"


@pytest.mark.parametrize("seed", [1, 2])
def test_dsp_kernels_match_tflm(seed: int) -> None:
    model = _model(seed)
    sets = random_inputs(model, 3, seed)
    want = run_tflm_batch(model, sets)
    with tempfile.TemporaryDirectory(prefix="edgec_dsp_") as tmp:
        tmp = Path(tmp)
        (tmp / "m.tflite").write_bytes(model)
        report = build(tmp / "m.tflite", "host", tmp / "host", kernels="dsp")
        assert report["kernels"] == "dsp" and (tmp / "host" / "src" / "edgec_dsp.h").is_file()
        kernels_c = (tmp / "host" / "src" / "kernels.c").read_text()
        for name in ("edgec_dsp_mm2x2", "edgec_dsp_dot4", "edgec_dsp_dot1", "edgec_dsp_dw4", "edgec_dsp_sat8"):
            assert name in kernels_c, name
        specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
        _compare(run_host(build_host(tmp / "host", tmp / "hw", extra_cflags=["-fsanitize=address,undefined",
                                                                             "-fno-sanitize-recover=all"]),
                          sets, specs), want)
        target = require_target("cortex-m4")
        build(tmp / "m.tflite", "cortex-m4", tmp / "m4")
        got, _ = run_qemu(build_firmware(tmp / "m4", target, tmp / "m4w"), target, sets, specs)
        _compare(got, want)


def test_dsp_variant_refused_where_unsupported(tmp_path: Path) -> None:
    """Only targets whose kernel_variant is dsp (and the host, for tests) take --kernels dsp."""
    from edgec.errors import EdgecError
    from edgec.targets import list_targets

    plain = [t["name"] for t in list_targets() if t.get("kernel_variant", "portable") == "portable"
             and t["name"] != "host" and t.get("board")]
    if not plain:
        pytest.skip("no target with portable kernels only")
    (tmp_path / "m.tflite").write_bytes(_model(3))
    with pytest.raises(EdgecError, match="--kernels dsp"):
        build(tmp_path / "m.tflite", plain[0], tmp_path / "out", kernels="dsp")
    assert load_target("cortex-m4")["kernel_variant"] == "dsp"
