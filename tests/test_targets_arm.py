"""The Cortex-M7, -M33 and -M55 targets (QEMU mps2-an500, mps2-an505, mps3-an547): every int8 model of
../shared/models/tflite verifies bit-exact with TFLite Micro on each, under QEMU; the targets are listed;
a model larger than a target's memory is refused at build time; the board startup code enables the FPU
(and MVE on the M55) and catches stack overflows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgec.cli.main import main
from edgec.cli.verify import verify
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.targets import load_target
from edgec.toolchain import runner
from edgec.toolchain.runner import RUNTIME_C, ToolchainError
from support import fc_model, require_target, shared_model

ARM_TARGETS = {"cortex-m7": "mps2-an500", "cortex-m33": "mps2-an505", "cortex-m55": "mps3-an547"}

# All seven fit all three targets (the largest firmware, ad01_int8's, is 283,744 B of the M55's 512 KB
# ITCM; the largest arena, vww_96_int8's, 55,296 B of its 512 KB DTCM).
INT8_MODELS = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8", "hello_world_int8",
               "micro_speech_quantized", "simple_add_model"]

STACK_BYTES = 64 * 1024  # the boards' default stack, reserved in RAM beside .data + .bss


@pytest.mark.parametrize("name", INT8_MODELS)
@pytest.mark.parametrize("target", list(ARM_TARGETS))
def test_bitexact_on_qemu(target, name):
    t = require_target(target)
    model = shared_model(f"tflite/{name}.tflite")
    result = verify(model, target, "qemu", n_inputs=3, seed=1, extra_inputs=[], progress=lambda m: None)
    assert result["inputs"] == 3
    assert result["bitexact"], result["first_mismatch"]
    assert result["instructions_per_inference"] > 0
    # The firmware really fits the board's memory as the linker script lays it out.
    assert result["weights_bytes"] < result["flash_bytes"] <= t["flash_bytes"]
    assert result["arena_bytes"] <= result["ram_bytes"] <= t["ram_bytes"] - STACK_BYTES


@pytest.mark.parametrize("target", list(ARM_TARGETS))
def test_float_kernels_on_fpu(target):
    # --precision float32 runs float kernels: the FPU must be enabled before the first float instruction.
    require_target(target)
    result = verify(shared_model("tflite/hello_world_float.tflite"), target, "qemu", n_inputs=3, seed=1,
                    extra_inputs=[], progress=lambda m: None, precision="float32")
    assert result["passed"] and result["relative_error"] <= 1e-4, result


def _linker_size(board: str, symbol: str) -> int:
    text = (RUNTIME_C / "boards" / board / "link.ld").read_text()
    value = re.search(rf"^{symbol} = (0x[0-9a-fA-F]+|\d+)([KM]?);", text, re.MULTILINE)
    assert value, f"{symbol} not found in {board}/link.ld"
    return int(value.group(1), 0) * {"": 1, "K": 1024, "M": 1024 * 1024}[value.group(2)]


def test_targets_listed():
    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {t["name"]: t for t in json.loads(result.stdout)["targets"]}
    text = CliRunner().invoke(main, ["targets"]).output
    for name, machine in ARM_TARGETS.items():
        assert rows[name]["status"] == "supported" and rows[name]["qemu_machine"] == machine
        assert re.search(rf"^{name} +supported ", text, re.MULTILINE), text
        t = load_target(name)
        assert t["kernel_variant"] and t["flash_page_bytes"] == 4096 and t["flash_write_bytes"] == 8
        # The memory the pipeline checks against is the memory the board's linker script provides.
        assert rows[name]["flash_bytes"] == _linker_size(t["board"], "__edgec_flash_size")
        assert rows[name]["ram_bytes"] == _linker_size(t["board"], "__edgec_ram_size")


def _assert_refused(tmp_path: Path, model: bytes, target: str, *needles: str) -> None:
    path = tmp_path / "big.tflite"
    path.write_bytes(model)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(path), "--target", target, "-o", str(out)])
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not out.exists()


def test_too_large_for_m55_refused(tmp_path):
    # The M55 board has 512 KB of code memory and 512 KB of RAM (the shared models all fit, so these are
    # made to measure). 600,000 bytes of FULLY_CONNECTED weights:
    fc = fc_model(1000, 600)
    _assert_refused(tmp_path, fc, "cortex-m55",
                    "the weights need 600000 bytes but target cortex-m55 has 524288 bytes of flash")
    # A 600,000-byte activation:
    shape = (1, 600, 1000, 1)
    tensors = [WTensor("x", shape, "int8", scale=[0.1], zero_point=[0]),
               WTensor("y", shape, "int8", scale=[0.1], zero_point=[0])]
    relu = write_tflite(tensors, [WOp("RELU", [0], [1], {})], [0], [1])
    _assert_refused(tmp_path, relu, "cortex-m55", "the arena needs 600000 bytes but target cortex-m55 has 524288")


def _fake_project(root: Path, kernel_c: str, prototype: str) -> Path:
    """A fake generated project whose model runs one hand-written kernel on a 16-byte input (output: int32)."""
    from test_toolchain import write_project

    body = "    *(int32_t *)(a + 16) = edgec_k_test(a);\n"
    proj = write_project(root, [16], [4], body)
    with open(proj / "include" / "kernels.h", "a") as f:
        f.write(prototype + "\n")
    with open(proj / "src" / "kernels.c", "a") as f:
        f.write(kernel_c)
    return proj


@pytest.mark.parametrize("target", list(ARM_TARGETS))
def test_stack_overflow_faults(tmp_path, target):
    # The M33/M55 boards guard the stack with MSPLIM (Armv8-M), the M7 board with an MPU region.
    t = require_target(target)
    proj = _fake_project(tmp_path / "deep", """
static int32_t deep(int32_t n)
{
    volatile int32_t pad[16];
    pad[0] = n;
    return n <= 0 ? pad[0] : deep(n - 1) + pad[0];
}
int32_t edgec_k_test(const uint8_t *a) { return deep(*(const int32_t *)a); }
""", "int32_t edgec_k_test(const uint8_t *a);")
    elf = runner.build_firmware(proj, t, tmp_path / "fw")
    spec = [((1,), np.int32)]
    outs, _ = runner.run_qemu(elf, t, [[np.array([10, 0, 0, 0], np.int32)]], spec, count_instructions=False)
    assert outs[0][0][0] == 55
    with pytest.raises(ToolchainError, match="stack overflow"):
        runner.run_qemu(elf, t, [[np.array([1_000_000, 0, 0, 0], np.int32)]], spec, count_instructions=False,
                        timeout_s=60)


def test_m55_mve_enabled(tmp_path):
    # An MVE (Helium) instruction faults (UsageFault NOCP) unless the startup code enabled CP10/CP11.
    t = require_target("cortex-m55")
    proj = _fake_project(tmp_path / "mve", """
#include <arm_mve.h>
int32_t edgec_k_test(const uint8_t *a) { return vaddvq_s8(vldrbq_s8((const int8_t *)a)); }
""", "int32_t edgec_k_test(const uint8_t *a);")
    elf = runner.build_firmware(proj, t, tmp_path / "fw")
    x = (np.arange(16) * 9 - 70).astype(np.int8)
    outs, _ = runner.run_qemu(elf, t, [[x]], [((1,), np.int32)], count_instructions=False)
    assert outs[0][0][0] == int(x.astype(np.int32).sum())
