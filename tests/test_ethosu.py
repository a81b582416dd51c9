"""Ethos-U NPU targets (ethos-u55-128/-256): Vela compiles the NPU part, edgec the CPU-fallback ops around it.

Neither QEMU nor this machine can run an Ethos-U, so the generated code is linked against edgec's mock driver
(runtime_c/npu/mock), which checks every ethosu_invoke_v3 call (COP1 payload, the config word against the NPU
it emulates, 16-byte alignment, that the register command stream stays inside the base sizes, the base sizes
against Vela's) and computes nothing. What is compared with TFLite Micro is the CPU part only: the test model
is conv -> conv (NPU) -> MEAN over channels (CPU fallback: the U55 cannot reduce depth) -> conv (NPU), and the test harness makes the
mock write TFLM's result for the first NPU partition's OFM ('b') at Vela's arena offset when that partition is
invoked. Output 'y' (the MEAN of 'b') must then be bit-exact with TFLM; output 'z' is the second partition's OFM,
written by the mock from TFLM's result as well, so it only shows that both partitions were invoked in order.
See docs/npu.md.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_writer import WTensor, write_tflite
from edgec.npu import offline_offsets, run_vela, vela_version
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.targets import load_target
from edgec.toolchain.runner import RUNTIME_C, ToolchainError, build_firmware, build_host, run_host, run_qemu
from support import ModelBuilder, random_inputs, require_target

pytestmark = pytest.mark.skipif(vela_version() is None, reason="ethos-u-vela is not installed (pip install "
                                "ethos-u-vela==5.2.0; scripts/setup.sh installs the pinned version)")

N_RECORDS = 4
MOCK = RUNTIME_C / "npu" / "mock"


def _model() -> tuple[bytes, bytes]:
    """(model, the same model with the first NPU partition's OFM 'b' as an extra output, for TFLM)."""
    rng = np.random.default_rng(7)
    mb = ModelBuilder()

    def conv(x: int, c: int, oc: int, name: str) -> int:
        w = rng.integers(-127, 128, (oc, 3, 3, c)).astype(np.int8)
        wi = mb.add(WTensor(f"{name}_w", w.shape, "int8", data=w, scale=[0.01] * oc, zero_point=[0] * oc))
        bias = rng.integers(-1000, 1000, oc).astype(np.int32)
        bi = mb.add(WTensor(f"{name}_b", (oc,), "int32", data=bias, scale=[0.0005] * oc, zero_point=[0] * oc))
        y = mb.add(WTensor(name, (1, 8, 8, oc), "int8", scale=[0.1], zero_point=[3]))
        mb.op("CONV_2D", [x, wi, bi], y, {"padding": "SAME", "fused_activation_function": "RELU"})
        return y

    x = mb.add(WTensor("x", (1, 8, 8, 4), "int8", scale=[0.05], zero_point=[-2]))
    b = conv(conv(x, 4, 8, "a"), 8, 8, "b")
    axis = mb.add(WTensor("axis", (1,), "int32", data=np.array([3], np.int32)))
    y = mb.add(WTensor("y", (1, 8, 8, 1), "int8", scale=[0.05], zero_point=[-5]))
    mb.op("MEAN", [b, axis], y, {"keep_dims": True})  # a depth reduction: the U55 leaves it to the CPU
    z = conv(y, 1, 4, "z")
    return (write_tflite(mb.tensors, mb.ops, mb.inputs, [y, z]),
            write_tflite(mb.tensors, mb.ops, mb.inputs, [y, z, b]))


def _vela_facts(data: bytes) -> dict:
    """What Vela's own output says, read here without edgec: tensor offsets by name and, per ethos-u op, the
    sizes of its read-only blob, scratch and scratch_fast (what the driver's base_addr_size must be)."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    sg = model.Subgraphs(0)
    names = [sg.Tensors(i).Name().decode() for i in range(sg.TensorsLength())]
    offsets = offline_offsets(data)
    nbytes = [int(np.prod(sg.Tensors(i).ShapeAsNumpy())) for i in range(sg.TensorsLength())]
    partitions = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).CustomCode() == b"ethos-u":
            ins = [int(t) for t in op.InputsAsNumpy()]
            partitions.append({"op": i, "sizes": [nbytes[t] for t in ins[1:4]], "cms": nbytes[ins[0]],
                               "cms_bytes": model.Buffers(sg.Tensors(ins[0]).Buffer()).DataAsNumpy().tobytes()})
    return {"offset": {names[t]: off for t, off in offsets.items()}, "partitions": partitions}


def _c_array(name: str, data: bytes, ctype: str = "uint8_t") -> str:
    body = ", ".join(str(v) for v in np.frombuffer(data, np.uint8 if ctype == "uint8_t" else np.int8))
    return f"static const {ctype} {name}[{len(data)}] __attribute__((aligned(16))) = {{ {body} }};\n"


def _hooks_c(b_records: list[np.ndarray], z_records: list[np.ndarray], facts: dict) -> str:
    """Harness hooks: before record r, reset the mock, expect Vela's base sizes for both partitions and preload
    TFLM's OFMs of record r at Vela's offsets in region 1 (the arena); and check that the previous record's two
    partitions passed the mock's checks."""
    n = len(b_records)
    parts = facts["partitions"]
    src = ['#include <stddef.h>\n#include <stdint.h>\n\n#include "ethosu_driver.h"\n']
    src.append('#ifdef EDGEC_SEMIHOSTING\n#include "edgec_semihost.h"\n'
               'void ethosu_mock_on_error(const char *message)\n{\n    edgec_semihost_write0("ethosu mock: ");\n'
               '    edgec_semihost_write0(message);\n    edgec_semihost_write0("\\n");\n}\n#endif\n\n')
    for r in range(n):
        src.append(_c_array(f"ofm_b_{r}", b_records[r].tobytes(), "int8_t"))
        src.append(_c_array(f"ofm_z_{r}", z_records[r].tobytes(), "int8_t"))
    src.append(f"static const int8_t *const ofm_b[{n}] = {{ {', '.join(f'ofm_b_{r}' for r in range(n))} }};\n")
    src.append(f"static const int8_t *const ofm_z[{n}] = {{ {', '.join(f'ofm_z_{r}' for r in range(n))} }};\n")
    for k, p in enumerate(parts):
        src.append(f"static const size_t sizes_{k}[3] = {{ {', '.join(f'{s}u' for s in p['sizes'])} }};\n")
    src.append(f"""
int edgec_harness_before_run(unsigned long record);

int edgec_harness_before_run(unsigned long record)
{{
    const struct ethosu_mock_stats *stats = ethosu_mock_get_stats();
    if (record > 0u && (stats->passed != {len(parts)}u || stats->failed != 0u)) {{
        return 1;
    }}
    if (record >= {n}u) {{
        return 1;
    }}
    ethosu_mock_reset();
    if (ethosu_mock_preload(0u, 1u, {facts['offset']['b']}u, ofm_b[record], {b_records[0].nbytes}u) != 0 ||
        ethosu_mock_preload(1u, 1u, {facts['offset']['z']}u, ofm_z[record], {z_records[0].nbytes}u) != 0) {{
        return 1;
    }}
""")
    for k in range(len(parts)):
        src.append(f"    if (ethosu_mock_expect_sizes({k}u, sizes_{k}, 3) != 0) {{\n        return 1;\n    }}\n")
    src.append("    return 0;\n}\n")
    return "".join(src)


@pytest.fixture(scope="module")
def npu_case(tmp_path_factory) -> dict:
    """The model built for ethos-u55-128, Vela's facts, TFLM's references and the harness hooks."""
    tmp = tmp_path_factory.mktemp("ethosu")
    model, model_with_b = _model()
    (tmp / "m.tflite").write_bytes(model)
    report = build(tmp / "m.tflite", "ethos-u55-128", tmp / "out")
    vela = run_vela(model, load_target("ethos-u55-128")["npu"], "m")
    facts = _vela_facts(vela.tflite)
    sets = random_inputs(model, N_RECORDS, seed=3)
    want = run_tflm_batch(model_with_b, sets)  # per record: y, z, b
    (tmp / "hooks.c").write_text(_hooks_c([np.asarray(w[2]) for w in want], [np.asarray(w[1]) for w in want], facts))
    return {"tmp": tmp, "model": model, "report": report, "vela": vela, "facts": facts, "sets": sets, "want": want}


def _mock_flags(project: Path, macs: int) -> tuple[list[str], list[Path]]:
    return [f"-I{project / 'runtime' / 'npu_mock'}", f"-DETHOSU_MOCK_MACS={macs}"], \
        [project / "runtime" / "npu_mock" / "ethosu_driver_mock.c"]


def _specs(report: dict) -> list:
    return [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]


def _compare(got: list, want: list) -> None:
    for r, (g, w) in enumerate(zip(got, want)):
        y, z = g
        assert np.array_equal(y, np.asarray(w[0]).reshape(y.shape)), f"record {r}: the CPU-fallback MEAN differs"
        assert np.array_equal(z, np.asarray(w[1]).reshape(z.shape)), f"record {r}: the second partition's OFM"


def test_vela_partitions_and_report(npu_case: dict) -> None:
    """Vela splits the model into two NPU partitions around the MEAN; the report carries Vela's estimate, and
    edgec's arena keeps Vela's offsets for every tensor Vela placed."""
    report, facts, vela = npu_case["report"], npu_case["facts"], npu_case["vela"]
    npu = report["npu"]
    assert [op["type"] for op in report["ops"]] == ["ETHOSU", "MEAN", "ETHOSU"]
    assert npu["accelerator"] == "ethos-u55-128" and npu["partitions"] == 2 and npu["cpu_ops"] == 1
    assert npu["cycles_npu"] > 0 and npu["cycles_total"] >= npu["cycles_npu"]
    assert npu["cycles_npu"] == vela.summary["cycles_npu"]  # deterministic
    assert npu["inference_time_s"] > 0 and npu["sram_used_kib"] > 0
    assert any(c.startswith("MEAN") for c in npu["cpu_fallback"])
    assert [p["config_word"] for p in npu["ethosu_ops"]] == ["0x00001807"] * 2  # U55, 2^7 MACs, 24 KB SHRAM
    for op in report["ops"]:
        for t in op["inputs"] + op["outputs"]:
            assert t["offset"] == facts["offset"][t["name"]], (op["type"], t["name"])
    assert report["arena_bytes"] >= max(p["sizes"][1] for p in facts["partitions"])
    out = npu_case["tmp"] / "out"
    arrays = [line for line in (out / "src" / "weights.c").read_text().splitlines() if line.startswith("const ")]
    assert arrays and all("__attribute__((aligned(16)))" in line for line in arrays)  # stream and blob too
    assert "edgec_npu_invoke" in (out / "src" / "kernels.c").read_text()
    assert json.loads((out / "edgec-report.json").read_text())["npu"]["cycles_total"] == npu["cycles_total"]


def test_host_build_with_mock_matches_tflm(npu_case: dict) -> None:
    """Host build + mock driver: every call passes the mock's checks and the CPU part is bit-exact with TFLM."""
    tmp, project = npu_case["tmp"], npu_case["tmp"] / "out"
    cflags, sources = _mock_flags(project, 128)
    exe = build_host(project, tmp / "host", cflags, sources + [tmp / "hooks.c"])
    _compare(run_host(exe, npu_case["sets"], _specs(npu_case["report"])), npu_case["want"])


def test_qemu_m55_firmware_with_mock_matches_tflm(npu_case: dict) -> None:
    """The same on the Cortex-M55 under QEMU mps3-an547: the firmware links against the mock and passes."""
    target = require_target("ethos-u55-128")
    tmp, project = npu_case["tmp"], npu_case["tmp"] / "out"
    cflags, sources = _mock_flags(project, 128)
    elf = build_firmware(project, target, tmp / "fw", sources + [tmp / "hooks.c"], cflags)
    got, _ = run_qemu(elf, target, npu_case["sets"], _specs(npu_case["report"]), count_instructions=False)
    _compare(got, npu_case["want"])


def test_generated_cmake_with_mock_on_qemu(npu_case: dict) -> None:
    """The generated CMake project: refuses to configure without a driver; with -DEDGEC_NPU_MOCK=ON its ctest
    runs the firmware under QEMU (mock checks pass on zeros) and matches the host build of the same sources."""
    require_target("ethos-u55-128")
    project, tmp = npu_case["tmp"] / "out", npu_case["tmp"]
    bad = subprocess.run(["cmake", "-S", project, "-B", tmp / "cm-nodriver"], check=False, capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "ETHOSU_CORE_DRIVER_PATH" in bad.stderr
    build_dir = tmp / "cm-arm"
    for cmd in (["cmake", "-S", project, "-B", build_dir, "-DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake",
                 "-DEDGEC_NPU_MOCK=ON"], ["cmake", "--build", build_dir], ["ctest", "--test-dir", build_dir,
                                                                          "--output-on-failure"]):
        result = subprocess.run(cmd, check=False, cwd=project, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_u55_256_stream_rejected_by_u55_128_mock(npu_case: dict) -> None:
    """A build for ethos-u55-256 passes a mock emulating a U55-256 and is refused by one emulating a U55-128."""
    tmp = npu_case["tmp"]
    report = build(tmp / "m.tflite", "ethos-u55-256", tmp / "out256")
    assert [p["config_word"] for p in report["npu"]["ethosu_ops"]] == ["0x00003008"] * 2  # 2^8 MACs, 48 KB
    zeros = [[np.zeros((1, 8, 8, 4), np.int8)]]
    cflags, sources = _mock_flags(tmp / "out256", 256)
    run_host(build_host(tmp / "out256", tmp / "h256", cflags, sources), zeros, _specs(report))
    cflags, sources = _mock_flags(tmp / "out256", 128)
    with pytest.raises(ToolchainError, match=r"(?s)exit code 9.*log2\(MACs/cycle\) 0x00000008, this NPU has "
                                             r"0x00000007"):
        run_host(build_host(tmp / "out256", tmp / "h256on128", cflags, sources), zeros, _specs(report))


MOCK_CHECKS_C = r"""
#include <stdio.h>
#include <string.h>

#include "ethosu_driver.h"

%(arrays)s
static uint8_t arena[%(scratch)d + 64] __attribute__((aligned(16)));
static uint8_t shifted[%(cms)d + 16] __attribute__((aligned(16)));
static uint8_t blob[%(blob)d] __attribute__((aligned(16)));
static struct ethosu_driver drv;

static void invoke(const char *name, const void *cms, int cms_bytes, const uint8_t *b0, size_t s0, uint8_t *b1,
                   size_t s1)
{
    uint64_t base[3];
    size_t sizes[3];
    int rc;
    base[0] = (uint64_t)(uintptr_t)b0;
    base[1] = (uint64_t)(uintptr_t)b1;
    base[2] = (uint64_t)(uintptr_t)b1;
    sizes[0] = s0;
    sizes[1] = s1;
    sizes[2] = s1;
    ethosu_mock_reset();
    rc = ethosu_invoke_v3(&drv, cms, cms_bytes, base, sizes, 3, NULL);
    printf("%%s|%%d|%%u|%%s\n", name, rc, (unsigned)ethosu_mock_get_stats()->operations,
           ethosu_mock_get_stats()->last_error);
}

int main(void)
{
    if (ethosu_init(&drv, (void *)(uintptr_t)0x48102000u, NULL, 0u, 1u, 1u) != 0) {
        return 1;
    }
    invoke("ok", cms128, (int)sizeof cms128, blob, sizeof blob, arena, %(scratch)du);
    invoke("ok_again", cms128, (int)sizeof cms128, blob, sizeof blob, arena, %(scratch)du);
    memcpy(shifted + 4, cms128, sizeof cms128);
    invoke("stream_misaligned", shifted + 4, (int)sizeof cms128, blob, sizeof blob, arena, %(scratch)du);
    invoke("arena_misaligned", cms128, (int)sizeof cms128, blob, sizeof blob, arena + 8, %(scratch)du);
    invoke("blob_misaligned", cms128, (int)sizeof cms128, blob + 4, sizeof blob - 4, arena, %(scratch)du);
    invoke("blob_too_small", cms128, (int)sizeof cms128, blob, 64u, arena, %(scratch)du);
    invoke("arena_too_small", cms128, (int)sizeof cms128, blob, sizeof blob, arena, 256u);
    invoke("size_not_words", cms128, (int)sizeof cms128 - 2, blob, sizeof blob, arena, %(scratch)du);
    memcpy(shifted, cms128, sizeof cms128);
    shifted[0] = 'X';
    invoke("not_cop1", shifted, (int)sizeof cms128, blob, sizeof blob, arena, %(scratch)du);
    invoke("u55_256_stream", cms256, (int)sizeof cms256, blob, sizeof blob, arena, %(scratch)du);
    return 0;
}
"""


def test_mock_checks(npu_case: dict, tmp_path: Path) -> None:
    """The mock's checks one by one on Vela's real command stream: a correct call passes; a misaligned stream,
    arena or read-only blob, base sizes smaller than the stream reaches, a bad payload size or fourcc, and a
    U55-256 stream on the (emulated) U55-128 each fail with the reason."""
    facts = npu_case["facts"]
    part = facts["partitions"][0]
    stream256 = _vela_facts(run_vela(npu_case["model"], load_target("ethos-u55-256")["npu"], "m").tflite)
    src = MOCK_CHECKS_C % {
        "arrays": _c_array("cms128", part["cms_bytes"]) + _c_array("cms256", stream256["partitions"][0]["cms_bytes"]),
        "scratch": part["sizes"][1], "cms": part["cms"], "blob": part["sizes"][0]}
    (tmp_path / "checks.c").write_text(src)
    exe = tmp_path / "checks"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{MOCK}", f"-I{RUNTIME_C / 'npu'}",
                    "-DETHOSU_MOCK_MACS=128", tmp_path / "checks.c", MOCK / "ethosu_driver_mock.c",
                    RUNTIME_C / "npu" / "edgec_npu.c", "-o", exe], check=True, capture_output=True, text=True)
    rows = {}
    for line in subprocess.run([exe], check=True, capture_output=True, text=True).stdout.splitlines():
        name, rc, ops, error = line.split("|", 3)
        rows[name] = (int(rc), int(ops), error)
    assert rows["ok"][0] == 0 and rows["ok"][1] >= 2 and rows["ok"][2] == ""  # both convs (+ DMA) checked
    assert rows["ok_again"][0] == 0  # the static semaphores are reused, not leaked
    expected = {
        "stream_misaligned": "not 16-byte aligned", "arena_misaligned": "base address 0x00000001 at",
        "blob_misaligned": "base address 0x00000000 at", "blob_too_small": "> base_addr_size",
        "arena_too_small": "> base_addr_size", "size_not_words": "not a positive multiple of 4",
        "not_cop1": "expected 'COP1'", "u55_256_stream": "log2(MACs/cycle) 0x00000008, this NPU has 0x00000007",
    }
    for name, reason in expected.items():
        rc, _, error = rows[name]
        assert rc != 0 and reason in error, (name, rows[name])


def test_refusals(npu_case: dict, tmp_path: Path) -> None:
    """Clear build errors: float32 precision on an NPU target; a model Vela already compiled, on an NPU target or
    on a target without NPU."""
    tmp = npu_case["tmp"]
    with pytest.raises(EdgecError, match="int8"):
        build(tmp / "m.tflite", "ethos-u55-128", tmp_path / "f", precision="float32")
    (tmp_path / "m_vela.tflite").write_bytes(npu_case["vela"].tflite)
    with pytest.raises(EdgecError, match="already compiled by Vela"):
        build(tmp_path / "m_vela.tflite", "ethos-u55-128", tmp_path / "v")
    with pytest.raises(EdgecError, match="target cortex-m4 has none"):
        build(tmp_path / "m_vela.tflite", "cortex-m4", tmp_path / "c")
    assert not any(p.name in ("f", "v", "c") for p in tmp_path.iterdir())


def test_targets_listed() -> None:
    for name, macs in (("ethos-u55-128", 128), ("ethos-u55-256", 256)):
        target = load_target(name)
        assert target["status"] == "supported (NPU mocked)" and target["npu"]["macs"] == macs
        assert target["board"] == "mps3_an547" and target["kernel_variant"] == "mve"
        assert re.fullmatch(r"ethos-u55-\d+", target["npu"]["accelerator"])


def test_verify_refused(npu_case: dict) -> None:
    """`edgec verify` cannot run an NPU target (no NPU here): a clear error, exit 2, no build."""
    from click.testing import CliRunner

    from edgec.cli.main import main

    result = CliRunner().invoke(main, ["verify", str(npu_case["tmp"] / "m.tflite"), "-t", "ethos-u55-128", "--json"])
    assert result.exit_code == 2 and "Ethos-U NPU" in result.output, result.output
