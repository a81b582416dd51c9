"""Host/QEMU harness, instruction counting and runner tests, using tiny hand-written fake models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgec.toolchain import runner
from edgec.toolchain.runner import ToolchainError

M4_TARGET = {
    "board": "mps2_an386",
    "qemu_machine": "mps2-an386",
    "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"],
}

needs_host_cc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc and/or qemu-system-arm not installed "
    "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)",
)

HEADER = """\
#ifndef EDGEC_MODEL_H
#define EDGEC_MODEL_H
#include <stddef.h>
#define EDGEC_ARENA_BYTES {arena}
#define EDGEC_NUM_INPUTS {n_in}
#define EDGEC_NUM_OUTPUTS {n_out}
int edgec_init(void);
int edgec_run(void);
void *edgec_input(int index);
void *edgec_output(int index);
size_t edgec_input_bytes(int index);
size_t edgec_output_bytes(int index);
#endif
"""

MODEL = """\
#include <stdint.h>
#include "edgec_model.h"
#include "kernels.h"

/* Static arena, 8-byte aligned through the union. */
static union {{ uint8_t bytes[EDGEC_ARENA_BYTES]; uint64_t align; }} arena;
static const size_t in_off[] = {{{in_off}}}, in_size[] = {{{in_size}}};
static const size_t out_off[] = {{{out_off}}}, out_size[] = {{{out_size}}};

int edgec_init(void) {{ return 0; }}
void *edgec_input(int i) {{ return i >= 0 && i < EDGEC_NUM_INPUTS ? arena.bytes + in_off[i] : NULL; }}
void *edgec_output(int i) {{ return i >= 0 && i < EDGEC_NUM_OUTPUTS ? arena.bytes + out_off[i] : NULL; }}
size_t edgec_input_bytes(int i) {{ return i >= 0 && i < EDGEC_NUM_INPUTS ? in_size[i] : 0; }}
size_t edgec_output_bytes(int i) {{ return i >= 0 && i < EDGEC_NUM_OUTPUTS ? out_size[i] : 0; }}

int edgec_run(void)
{{
    uint8_t *a = arena.bytes;
{body}
    return 0;
}}
"""

# One kernel per fake model lives in kernels.c (a separate file, like the real compiler's output).
KERNELS_H = """\
#include <stdint.h>
int32_t edgec_k_lcg(int32_t n);
extern const int8_t edgec_w_bias;
"""
KERNELS_C = """\
#include "kernels.h"
/* A loop gcc cannot turn into a closed form: cost grows linearly with n. */
int32_t edgec_k_lcg(int32_t n)
{
    uint32_t x = 1;
    for (int32_t k = 0; k < n; k++) {
        x = x * 1103515245u + 12345u;
    }
    return (int32_t)x;
}
"""
WEIGHTS_C = '#include "kernels.h"\nconst int8_t edgec_w_bias = 1;\n'


def write_project(root: Path, inputs: list[int], outputs: list[int], body: str) -> Path:
    """Fake generated project: inputs/outputs given as byte sizes, laid out back to back in the arena."""
    offs, pos = [], 0
    for size in inputs + outputs:
        offs.append(pos)
        pos += (size + 7) // 8 * 8
    fmt = {
        "in_off": ", ".join(map(str, offs[: len(inputs)])), "in_size": ", ".join(map(str, inputs)),
        "out_off": ", ".join(map(str, offs[len(inputs):])), "out_size": ", ".join(map(str, outputs)),
    }
    (root / "include").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "include" / "edgec_model.h").write_text(HEADER.format(arena=pos, n_in=len(inputs), n_out=len(outputs)))
    (root / "include" / "kernels.h").write_text(KERNELS_H)
    (root / "src" / "model.c").write_text(MODEL.format(body=body, **fmt))
    (root / "src" / "kernels.c").write_text(KERNELS_C)
    (root / "src" / "weights.c").write_text(WEIGHTS_C)
    return root


# out[i] = in[i] + 1, int8[16] (wraps around like C int8 arithmetic).
ADD1_BODY = """\
    const int8_t *in = (const int8_t *)(a + 0);
    int8_t *out = (int8_t *)(a + 16);
    for (int i = 0; i < 16; i++) out[i] = (int8_t)(in[i] + edgec_w_bias);
"""

# in0 int8[3], in1 float32[5] -> out0 int16[2] = (sum(in0), max(in0)), out1 float32[4] = 2*in1[j] + in1[j+1].
MULTI_BODY = """\
    const int8_t *in0 = (const int8_t *)(a + 0);
    const float *in1 = (const float *)(a + 8);
    int16_t *out0 = (int16_t *)(a + 32);
    float *out1 = (float *)(a + 40);
    int16_t s = 0, m = in0[0];
    for (int i = 0; i < 3; i++) { s = (int16_t)(s + in0[i]); if (in0[i] > m) m = in0[i]; }
    out0[0] = s; out0[1] = m;
    for (int j = 0; j < 4; j++) out1[j] = 2.0f * in1[j] + in1[j + 1];
"""

# in int32[1] = n -> out int32[1] = LCG state after n steps (loop length set by the input).
LOOP_BODY = """\
    *(int32_t *)(a + 8) = edgec_k_lcg(*(const int32_t *)(a + 0));
"""

MULTI_SPECS = [((2,), np.int16), ((4,), np.float32)]


def add1_ref(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.int16) + 1).astype(np.int8)


def multi_ref(x0: np.ndarray, x1: np.ndarray) -> list[np.ndarray]:
    out0 = np.array([x0.astype(np.int16).sum(), x0.max()], dtype=np.int16)
    return [out0, (np.float32(2) * x1[:4] + x1[1:]).astype(np.float32)]


def lcg_ref(n: int) -> np.ndarray:
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return np.array([x], dtype=np.uint32).view(np.int32)


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fake_projects")
    return {
        "add1": write_project(root / "add1", [16], [16], ADD1_BODY),
        "multi": write_project(root / "multi", [3, 20], [4, 16], MULTI_BODY),
        "loop": write_project(root / "loop", [4], [4], LOOP_BODY),
    }


@pytest.fixture(scope="module")
def firmware(projects: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None:
        pytest.skip("arm-none-eabi-gcc and/or qemu-system-arm not installed")
    work = tmp_path_factory.mktemp("fw")
    return {name: runner.build_firmware(p, M4_TARGET, work / name) for name, p in projects.items()}


def add1_records(n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.integers(-128, 128, 16, dtype=np.int8)] for _ in range(n)]


def multi_records(n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [[rng.integers(-128, 128, 3, dtype=np.int8), rng.standard_normal(5).astype(np.float32)]
            for _ in range(n)]


@needs_host_cc
def test_host_add1(projects: dict[str, Path], tmp_path: Path) -> None:
    exe = runner.build_host(projects["add1"], tmp_path)
    records = add1_records(5)
    records[0][0][:2] = [127, -128]  # wrap-around
    outs = runner.run_host(exe, records, [((16,), np.int8)])
    assert len(outs) == 5
    for rec, out in zip(records, outs):
        np.testing.assert_array_equal(out[0], add1_ref(rec[0]))


@needs_host_cc
def test_host_multi_io(projects: dict[str, Path], tmp_path: Path) -> None:
    # Sanitizers: the harness must be free of memory errors and UB, not just give the right bytes.
    exe = runner.build_host(projects["multi"], tmp_path, ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
    records = multi_records(4)
    outs = runner.run_host(exe, records, MULTI_SPECS)
    for rec, out in zip(records, outs):
        for got, want in zip(out, multi_ref(*rec)):
            np.testing.assert_array_equal(got, want)


@needs_host_cc
def test_host_bad_input_size(projects: dict[str, Path], tmp_path: Path) -> None:
    exe = runner.build_host(projects["add1"], tmp_path)
    with pytest.raises(ToolchainError, match="not a multiple"):
        runner.run_host(exe, [[np.zeros(17, np.int8)]], [((16,), np.int8)])


@needs_host_cc
def test_output_spec_mismatch(projects: dict[str, Path], tmp_path: Path) -> None:
    exe = runner.build_host(projects["add1"], tmp_path)
    with pytest.raises(ToolchainError, match="output_specs"):
        runner.run_host(exe, add1_records(2), [((8,), np.int8)])


def test_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError, match="edgec_model.h"):
        runner.build_host(tmp_path, tmp_path / "work")


@needs_arm
def test_qemu_add1_matches_host(projects: dict[str, Path], firmware: dict[str, Path], tmp_path: Path) -> None:
    records = add1_records(6)
    spec = [((16,), np.int8)]
    host = runner.run_host(runner.build_host(projects["add1"], tmp_path), records, spec)
    qemu, count = runner.run_qemu(firmware["add1"], M4_TARGET, records, spec)
    for h, q, rec in zip(host, qemu, records):
        np.testing.assert_array_equal(q[0], h[0])
        np.testing.assert_array_equal(q[0], add1_ref(rec[0]))
    assert count is not None and 0 < count < 1000


@needs_arm
def test_qemu_multi_io(firmware: dict[str, Path]) -> None:
    records = multi_records(3)
    outs, count = runner.run_qemu(firmware["multi"], M4_TARGET, records, MULTI_SPECS, count_instructions=False)
    assert count is None
    for rec, out in zip(records, outs):
        for got, want in zip(out, multi_ref(*rec)):
            np.testing.assert_array_equal(got, want)


@needs_arm
def test_instruction_count_repeatable_and_linear(firmware: dict[str, Path]) -> None:
    def count(n: int) -> int:
        outs, c = runner.run_qemu(firmware["loop"], M4_TARGET, [[np.array([n], np.int32)]], [((1,), np.int32)])
        np.testing.assert_array_equal(outs[0][0], lcg_ref(n))
        assert c is not None
        return c

    c0, c1000, c2000, c3000 = count(0), count(1000), count(2000), count(3000)
    assert c0 > 0
    assert count(1000) == c1000  # exact and repeatable
    per_iter = (c2000 - c1000) / 1000
    assert 2 <= per_iter <= 8, per_iter  # mul-add + loop compare/branch on a Cortex-M4
    assert c3000 - c2000 == c2000 - c1000  # every iteration costs the same
    assert c0 < c1000 - 1000 * per_iter + 20  # n=0 skips the loop setup: no more than the fixed cost


@needs_arm
def test_only_first_inference_counted(firmware: dict[str, Path]) -> None:
    spec = [((1,), np.int32)]
    _, short_first = runner.run_qemu(firmware["loop"], M4_TARGET,
                                     [[np.array([10], np.int32)], [np.array([5000], np.int32)]], spec)
    _, alone = runner.run_qemu(firmware["loop"], M4_TARGET, [[np.array([10], np.int32)]], spec)
    assert short_first == alone


@needs_arm
def test_qemu_bad_input_size(firmware: dict[str, Path]) -> None:
    with pytest.raises(ToolchainError, match="not a multiple") as e:
        runner.run_qemu(firmware["add1"], M4_TARGET, [[np.zeros(20, np.int8)]], [((16,), np.int8)])
    assert "exit code 5" in str(e.value)


@needs_arm
def test_stack_overflow_faults(tmp_path: Path) -> None:
    # Unbounded recursion: the stack at the bottom of RAM must fault, not corrupt data or hang.
    body = "    *(int32_t *)(a + 8) = edgec_k_deep(*(const int32_t *)(a + 0));\n"
    proj = write_project(tmp_path / "deep", [4], [4], body)
    with open(proj / "include" / "kernels.h", "a") as f:
        f.write("int32_t edgec_k_deep(int32_t n);\n")
    with open(proj / "src" / "kernels.c", "a") as f:
        f.write("int32_t edgec_k_deep(int32_t n)\n{\n    volatile int32_t pad[16];\n    pad[0] = n;\n"
                "    return n <= 0 ? pad[0] : edgec_k_deep(n - 1) + pad[0];\n}\n")
    elf = runner.build_firmware(proj, M4_TARGET, tmp_path / "fw")
    outs, _ = runner.run_qemu(elf, M4_TARGET, [[np.array([10], np.int32)]], [((1,), np.int32)],
                              count_instructions=False)
    assert outs[0][0][0] == 55
    with pytest.raises(ToolchainError, match="stack overflow"):
        runner.run_qemu(elf, M4_TARGET, [[np.array([1_000_000], np.int32)]], [((1,), np.int32)],
                        count_instructions=False, timeout_s=60)


@needs_arm
def test_elf_sizes(firmware: dict[str, Path]) -> None:
    sizes = runner.elf_sizes(firmware["add1"])
    assert sizes["text"] > 0 and sizes["bss"] >= 32  # the 32-byte arena is in .bss
    assert sizes["bss"] < 64 * 1024  # the stack reservation is not counted


def test_plugin_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("host gcc not installed")
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(tmp_path))
    first = runner.insn_count_plugin()
    assert first.parent == tmp_path and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert runner.insn_count_plugin() == first and first.stat().st_mtime_ns == mtime


def test_missing_tools_hint() -> None:
    with pytest.raises(ToolchainError, match="apt-get install"):
        runner.ensure_tools({"board": "x", "qemu_machine": "x", "cc": "no-such-prefix-gcc"})
