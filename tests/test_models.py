"""The real int8 models in ../shared/models/tflite: bit-exact with TFLite Micro on the host and under QEMU."""

from __future__ import annotations

import pytest

from edgec.cli.verify import verify
from support import shared_model

INT8_MODELS = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8", "hello_world_int8",
               "micro_speech_quantized", "simple_add_model"]

# TFLite Micro's minimal arenas and the liveness lower bounds in file op order (issue #2), for cortex-m4's
# dsp kernels: a 1x1 convolution's scratch (a pixel pair as int16) adds 256 B on kws and 32 B on vww, the
# gathered border window of a padded convolution (KH * KW * C bytes) 144 B on resnet.
ARENA_LIMITS = {"kws_ref_model": (24272, 16256), "vww_96_int8": (103672, 55328),
                "pretrainedResnet_quant": (55984, 49296), "ad01_int8": (4632, 768)}


@pytest.mark.parametrize("on", ["host", "qemu"])
@pytest.mark.parametrize("name", INT8_MODELS)
def test_bitexact_with_tflm(name, on):
    model = shared_model(f"tflite/{name}.tflite")
    result = verify(model, "cortex-m4", on, n_inputs=20, seed=1, extra_inputs=[], progress=lambda m: None)
    assert result["inputs"] == 20
    assert result["bitexact"], result["first_mismatch"]
    if on == "qemu":
        assert result["instructions_per_inference"] > 0
        assert result["flash_bytes"] > result["weights_bytes"]
    if name in ARENA_LIMITS:
        tflm_min, lower_bound = ARENA_LIMITS[name]
        assert result["arena_lower_bound_bytes"] == lower_bound
        assert result["arena_bytes"] <= tflm_min
        assert result["arena_bytes"] <= lower_bound * 1.05
