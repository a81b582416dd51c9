"""The small targets: cortex-m0plus (ARMv6-M, QEMU microbit: an nRF51 Cortex-M0 with 256 KB flash and 16 KB
SRAM) and stm32f405 (QEMU netduinoplus2: 1 MB flash, 128 KB SRAM). Every int8 model of ../shared/models/tflite
that fits a target verifies bit-exact with TFLite Micro under QEMU; the ones that do not fit are refused at
build time; the linker scripts hold the real memory sizes, so what slips past the build's own check does not
link; the board startup code reports faults and stack overflows; QEMU's Cortex-M0 rejects ARMv7-M
instructions and unaligned accesses, so a bit-exact run there is also an ARMv6-M check."""

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

SMALL_TARGETS = {"cortex-m0plus": ("microbit", "microbit"), "stm32f405": ("netduinoplus2", "netduinoplus2")}

# What fits where (arena / weights as edgec plans them): on the M0+ (14,336 B of RAM for the arena, 256 KB flash)
# only hello_world_int8 and micro_speech_quantized (arena 5,960 B); kws_ref_model (arena 16,000 B), vww_96_int8,
# pretrainedResnet_quant and simple_add_model need more RAM and ad01_int8's weights more than 256 KB of flash.
# All seven fit the STM32F405.
FITS = {
    "cortex-m0plus": ["hello_world_int8", "micro_speech_quantized"],
    "stm32f405": ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8", "hello_world_int8",
                  "micro_speech_quantized", "simple_add_model"],
}


def _linker_value(board: str, symbol: str) -> int:
    """A size from the board's link.ld (`sym = 256K;`, or the default of `sym = DEFINED(sym) ? sym : 2K;`)."""
    text = (RUNTIME_C / "boards" / board / "link.ld").read_text()
    value = re.search(rf"^{symbol} = (?:DEFINED\({symbol}\) \? {symbol} : )?(0x[0-9a-fA-F]+|\d+)([KM]?);", text,
                      re.MULTILINE)
    assert value, f"{symbol} not found in {board}/link.ld"
    return int(value.group(1), 0) * {"": 1, "K": 1024, "M": 1024 * 1024}[value.group(2)]


def _board_memory(target: str) -> tuple[int, int, int]:
    """(flash, SRAM, stack) bytes as the board's linker script lays them out."""
    board = load_target(target)["board"]
    return (_linker_value(board, "__edgec_flash_size"), _linker_value(board, "__edgec_ram_size"),
            _linker_value(board, "__edgec_stack_size"))


@pytest.mark.parametrize("target,name", [(t, m) for t, models in FITS.items() for m in models])
def test_bitexact_on_qemu(target, name):
    require_target(target)
    model = shared_model(f"tflite/{name}.tflite")
    result = verify(model, target, "qemu", n_inputs=3, seed=1, extra_inputs=[], progress=lambda m: None)
    assert result["inputs"] == 3
    assert result["bitexact"], result["first_mismatch"]
    assert result["instructions_per_inference"] > 0
    # The whole firmware (model, kernels, harness, libc pieces) fits the chip as the linker script lays it out.
    flash, sram, stack = _board_memory(target)
    assert result["weights_bytes"] < result["flash_bytes"] <= flash
    assert result["arena_bytes"] <= result["ram_bytes"] <= sram - stack


def _build_cli(tmp_path: Path, model: Path, target: str):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(model), "--target", target, "-o", str(out)])
    return result, out


@pytest.mark.parametrize("name,message", [
    ("vww_96_int8", r"the arena needs \d+ bytes but target cortex-m0plus has 14336 bytes of RAM"),
    ("ad01_int8", r"the weights need \d+ bytes but target cortex-m0plus has 262144 bytes of flash"),
])
def test_too_large_for_m0plus_refused(tmp_path, name, message):
    result, out = _build_cli(tmp_path, shared_model(f"tflite/{name}.tflite"), "cortex-m0plus")
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert not out.exists()


def test_too_large_for_stm32f405_refused(tmp_path):
    # All shared models fit the F405, so these are made to measure: 1,100,000 bytes of weights, then a
    # 130,000-byte activation (more than the 120 KB of SRAM left beside the stack).
    path = tmp_path / "fc.tflite"
    path.write_bytes(fc_model(1000, 1100))
    result, out = _build_cli(tmp_path, path, "stm32f405")
    assert result.exit_code == 2, result.output
    assert re.search(r"the weights need 11\d{5} bytes but target stm32f405 has 1048576 bytes of flash", result.output)
    assert not out.exists()
    shape = (1, 130, 1000, 1)
    tensors = [WTensor("x", shape, "int8", scale=[0.1], zero_point=[0]),
               WTensor("y", shape, "int8", scale=[0.1], zero_point=[0])]
    path.write_bytes(write_tflite(tensors, [WOp("RELU", [0], [1], {})], [0], [1]))
    result, out = _build_cli(tmp_path, path, "stm32f405")
    assert result.exit_code == 2, result.output
    assert re.search(r"the arena needs \d+ bytes but target stm32f405 has 122880 bytes of RAM", result.output)
    assert not out.exists()


def test_m0plus_linker_holds_the_real_sizes(tmp_path, monkeypatch):
    # The build's check compares only the arena with ram_bytes and the weights with flash_bytes; the code,
    # the rest of .data/.bss and the stack must fit too, and the linker script checks them against the chip.
    t = require_target("cortex-m0plus")
    from edgec.pipeline import build

    # 258,000 bytes of weights pass the build's check (<= 262,144) but not with the code beside them.
    path = tmp_path / "fc.tflite"
    path.write_bytes(fc_model(1000, 258))
    build(path, "cortex-m0plus", tmp_path / "flash")
    with pytest.raises(ToolchainError, match="region `FLASH' overflowed"):
        runner.build_firmware(tmp_path / "flash", t, tmp_path / "fw_flash")
    # kws_ref_model's 16,000-byte arena passes a check against the whole 16 KB SRAM, but not with the stack.
    monkeypatch.setattr("edgec.pipeline.load_target", lambda name: {**load_target(name), "ram_bytes": 16384})
    build(shared_model("tflite/kws_ref_model.tflite"), "cortex-m0plus", tmp_path / "ram")
    with pytest.raises(ToolchainError, match="RAM overflow"):
        runner.build_firmware(tmp_path / "ram", t, tmp_path / "fw_ram")


def test_targets_listed(tmp_path):
    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {t["name"]: t for t in json.loads(result.stdout)["targets"]}
    text = CliRunner().invoke(main, ["targets"]).output
    pages = {"cortex-m0plus": (1024, 4), "stm32f405": (16384, 4)}
    kernels = {"cortex-m0plus": "portable", "stm32f405": "dsp"}  # ARMv6-M has no DSP extension
    for name, (board, machine) in SMALL_TARGETS.items():
        t = load_target(name)
        assert rows[name]["status"] == "supported" and rows[name]["qemu_machine"] == machine
        assert re.search(rf"^{name} +supported ", text, re.MULTILINE), text
        assert t["board"] == board and t["kernel_variant"] == kernels[name]
        assert (t["flash_page_bytes"], t["flash_write_bytes"]) == pages[name]
        # The memory the build checks against is what the board's linker script provides beside the stack.
        flash, sram, stack = _board_memory(name)
        assert rows[name]["flash_bytes"] == flash
        assert rows[name]["ram_bytes"] == sram - stack
    assert _board_memory("cortex-m0plus")[:2] == (256 * 1024, 16 * 1024)
    assert _board_memory("stm32f405")[:2] == (1024 * 1024, 128 * 1024)
    # The PlatformIO environment of the generated project names the real board.
    from edgec.pipeline import build

    for name, env, platform in [("cortex-m0plus", "bbcmicrobit", "nordicnrf51"),
                                ("stm32f405", "genericSTM32F405RG", "ststm32")]:
        out = tmp_path / name
        build(shared_model("tflite/hello_world_int8.tflite"), name, out)
        ini = (out / "platformio.ini").read_text()
        assert f"default_envs = {env}" in ini and f"[env:{env}]\nplatform = {platform}\nboard = {env}" in ini


def _fake_project(root: Path, kernel_c: str) -> Path:
    """A fake generated project whose model runs one hand-written kernel on a 16-byte input (output: int32)."""
    from test_toolchain import write_project

    body = "    *(int32_t *)(a + 16) = edgec_k_test(a);\n"
    proj = write_project(root, [16], [4], body)
    with open(proj / "include" / "kernels.h", "a") as f:
        f.write("int32_t edgec_k_test(const uint8_t *a);\n")
    with open(proj / "src" / "kernels.c", "a") as f:
        f.write(kernel_c)
    return proj


def _run(elf: Path, t: dict, values: list[int]) -> int:
    outs, _ = runner.run_qemu(elf, t, [[np.array(values, np.int32)]], [((1,), np.int32)], count_instructions=False,
                              timeout_s=60)
    return int(outs[0][0][0])


@pytest.mark.parametrize("target", list(SMALL_TARGETS))
def test_faults_and_stack_overflow(tmp_path, target):
    # Semihosting file I/O and exit codes work; a stack overflow and a bus fault exit QEMU with their own codes
    # (the M0 has no MPU and no fault status registers: startup.c tells an overflow by the stack pointer).
    t = require_target(target)
    proj = _fake_project(tmp_path / "p", """
static int32_t deep(int32_t n)
{
    volatile int32_t pad[16];
    pad[0] = n;
    return n <= 0 ? pad[0] : deep(n - 1) + pad[0];
}
int32_t edgec_k_test(const uint8_t *a)
{
    const int32_t *v = (const int32_t *)a;
    if (v[1] != 0) {
        return *(volatile const int32_t *)(uintptr_t)(uint32_t)v[1]; /* a load from that address */
    }
    return deep(v[0]);
}
""")
    elf = runner.build_firmware(proj, t, tmp_path / "fw")
    assert _run(elf, t, [10, 0, 0, 0]) == 55
    with pytest.raises(ToolchainError, match="stack overflow"):
        _run(elf, t, [1_000_000, 0, 0, 0])
    with pytest.raises(ToolchainError, match="exit code 91 .firmware fault: HardFault"):
        _run(elf, t, [0, 0x30000000, 0, 0])  # unmapped on both boards: a bus error, escalated to HardFault


def test_m0_rejects_armv7m_code(tmp_path):
    # QEMU's Cortex-M0 faults on what a real ARMv6-M core cannot do, so the bit-exact runs above also show the
    # generated code is ARMv6-M only: an ARMv7-M instruction and an unaligned word load both HardFault.
    t = require_target("cortex-m0plus")
    proj = _fake_project(tmp_path / "p", """
int32_t edgec_k_test(const uint8_t *a)
{
    const int32_t *v = (const int32_t *)a;
    if (v[0] == 1) {
        register int32_t r0 __asm__("r0") = v[1];
        register int32_t r1 __asm__("r1") = v[2];
        __asm__ volatile(".inst.w 0xfb90f0f1" : "+r"(r0) : "r"(r1)); /* sdiv r0, r0, r1 */
        return r0;
    }
    if (v[0] == 2) {
        return *(volatile const int32_t *)(uintptr_t)(a + v[1]); /* an unaligned word load for odd v[1] */
    }
    return v[1] + v[2];
}
""")
    elf = runner.build_firmware(proj, t, tmp_path / "fw")
    assert _run(elf, t, [0, 40, 2, 0]) == 42
    assert _run(elf, t, [2, 8, 7, 0]) == 7  # aligned: fine
    for values in ([1, 84, 2, 0], [2, 5, 0, 0]):
        with pytest.raises(ToolchainError, match="exit code 91 .firmware fault: HardFault"):
            _run(elf, t, values)


def test_bench_reports_models_that_do_not_fit(tmp_path: Path) -> None:
    """`edgec bench -t cortex-m0plus`: no MLPerf Tiny model fits the M0+ (14 KB RAM, 256 KB flash); each row says
    which budget it exceeds and the command still writes its table (no adapter/OTA/training rows: they need KWS)."""
    models = shared_model("tflite/kws_ref_model.tflite").parent
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", "-t", "cortex-m0plus", "--models", str(models), "-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["models"]
    assert [r["model"] for r in rows] == ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8"]
    assert all("does_not_fit" in r for r in rows)
    assert "bytes of RAM" in rows[0]["does_not_fit"] and "bytes of flash" in rows[3]["does_not_fit"]
    assert res.output.count("does not fit: ") == 4 and "rank-4 LoRA" not in res.output
