"""Targets esp32c3 (RISC-V RV32IMC under qemu-system-riscv32 virt) and esp32s3 (PlatformIO output only).

esp32c3: every shared int8 model is bit-exact with TFLite Micro under QEMU (they all fit the chip's 400 KB
SRAM and 4 MB flash), a model that does not fit is refused at build time, the float kernels' expf / tanhf
(the board's own, there is no rv32 libc) agree with TFLite Micro, instruction counts repeat, and faults exit
with their code. esp32s3: the build writes a PlatformIO project; compiling or running it is refused.
Tests that need the RISC-V tools skip (naming the Debian packages) when they are absent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgec.cli.main import main
from edgec.cli.verify import verify
from edgec.errors import EdgecError
from edgec.frontends.tflite_writer import WTensor
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.toolchain.runner import ToolchainError, build_firmware, run_qemu
from support import ModelBuilder, random_inputs, require_target, shared_model

C3_FLASH, C3_RAM = 4 * 1024 * 1024, 400 * 1024
INT8_MODELS = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8", "hello_world_int8",
               "micro_speech_quantized", "simple_add_model"]


@pytest.fixture(scope="module")
def esp32c3() -> dict:
    return require_target("esp32c3")


def quiet(_msg: str) -> None:
    pass


@pytest.mark.parametrize("name", INT8_MODELS)
def test_esp32c3_bitexact_under_qemu(esp32c3, name):
    result = verify(shared_model(f"tflite/{name}.tflite"), "esp32c3", "qemu", n_inputs=3, seed=1,
                    extra_inputs=[], progress=quiet)
    assert result["inputs"] == 3
    assert result["bitexact"], result["first_mismatch"]
    assert result["instructions_per_inference"] > 0
    # The firmware (model, kernels, harness, board support) fits the real chip.
    assert result["weights_bytes"] < result["flash_bytes"] <= C3_FLASH
    assert result["arena_bytes"] <= result["ram_bytes"] <= C3_RAM


def _too_big_for_esp32c3(path: Path) -> Path:
    """int8 ADD of two 1x240x320x3 inputs: a 460,800-byte arena (more than the ESP32-C3's 400 KB, less
    than the ESP32-S3's 512 KB)."""
    mb = ModelBuilder()
    a, b, y = (mb.add(WTensor(n, (1, 240, 320, 3), "int8", scale=[0.05], zero_point=[3])) for n in "aby")
    mb.op("ADD", [a, b], y, {"fused_activation_function": "NONE"})
    path.write_bytes(mb.build())
    return path


def test_too_big_model_refused_at_build_time(tmp_path):
    model = _too_big_for_esp32c3(tmp_path / "big.tflite")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(model), "--target", "esp32c3", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "the arena needs 460800 bytes but target esp32c3 has 409600 bytes of RAM" in result.output
    assert not out.exists()
    # The ESP32-S3 has 512 KB: the same model builds.
    assert build(model, "esp32s3", tmp_path / "s3")["arena_bytes"] == 460800


def _transcendental_model() -> bytes:
    mb = ModelBuilder()
    for kind in ["LOGISTIC", "TANH", "SOFTMAX"]:
        x = mb.add(WTensor("x", (8, 40), "float32"))
        mb.op(kind, [x], mb.add(WTensor("y", (8, 40), "float32")), {"beta": 0.5} if kind == "SOFTMAX" else None)
    return mb.build()


def test_esp32c3_float_kernels_match_tflm(esp32c3, tmp_path):
    """--precision float32 on a core without an FPU: libgcc's soft float and the board's expf / tanhf."""
    model = _transcendental_model()
    (tmp_path / "m.tflite").write_bytes(model)
    report = build(tmp_path / "m.tflite", "esp32c3", tmp_path / "out", precision="float32")
    specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
    rng = np.random.default_rng(3)
    edges = np.array([0.0, -0.0, 1e-30, -1e-7, 0.17, -0.18, 0.5, 3.0, -9.0, 9.5, -15.0, 16.62, 20.0, 87.0, 88.7,
                      88.8, -87.0, -103.9, -104.5, 1e6, -1e6, np.inf, -np.inf, np.nan], np.float32)
    sets = [[rng.uniform(-12, 12, (8, 40)).astype(np.float32) for _ in range(3)],
            [np.resize(edges, (8, 40)) for _ in range(3)]]
    got, _ = run_qemu(build_firmware(tmp_path / "out", esp32c3, tmp_path / "fw"), esp32c3, sets, specs,
                      count_instructions=False)
    want = run_tflm_batch(model, sets)
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            w = np.asarray(w, np.float32).reshape(g.shape)
            assert np.array_equal(np.isnan(g), np.isnan(w)), f"set {r}, output {o}: NaN positions differ"
            ok = ~np.isnan(w)
            np.testing.assert_allclose(g[ok], w[ok], rtol=1e-5, atol=1e-6, err_msg=f"set {r}, output {o}")


# Fault checks hook into the harness (edgec_harness_setup runs once after edgec_init()).
DEEP_RECURSION = """\
#include <stdint.h>
int edgec_harness_setup(void);
static __attribute__((noinline)) int32_t deep(int32_t n)
{
    volatile int32_t frame[16];
    frame[0] = n;
    frame[1] = 0;
    if (n > 0) {
        frame[1] = deep(n - 1); /* stored after the call: every level keeps its frame */
    }
    return frame[0] + frame[1];
}
volatile int32_t edgec_test_depth = 1000000;
int edgec_harness_setup(void) { return deep(edgec_test_depth) == 1 ? 1 : 0; }
"""
ILLEGAL_INSTRUCTION = """\
int edgec_harness_setup(void);
int edgec_harness_setup(void) { __asm__ volatile("unimp"); return 0; }
"""


@pytest.fixture(scope="module")
def small_project(esp32c3, tmp_path_factory) -> tuple[Path, list, list]:
    """micro_speech built for esp32c3: (project, output specs, 2 input sets)."""
    model = shared_model("tflite/micro_speech_quantized.tflite")
    out = tmp_path_factory.mktemp("c3") / "project"
    report = build(model, "esp32c3", out)
    return out, [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]], random_inputs(model.read_bytes(), 2, 5)


def test_esp32c3_instruction_count_repeatable(esp32c3, small_project, tmp_path):
    project, specs, sets = small_project
    elf = build_firmware(project, esp32c3, tmp_path / "fw")
    first_out, first = run_qemu(elf, esp32c3, sets, specs)
    again_out, again = run_qemu(elf, esp32c3, sets[:1], specs)
    assert first == again and first > 100_000
    assert np.array_equal(first_out[0][0], again_out[0][0])


@pytest.mark.parametrize("source, message", [(DEEP_RECURSION, r"exit code 96 \(.*stack overflow"),
                                             (ILLEGAL_INSTRUCTION, r"exit code 97 \(.*CPU exception")])
def test_esp32c3_faults_exit_with_their_code(esp32c3, small_project, tmp_path, source, message):
    project, specs, sets = small_project
    hook = tmp_path / "hook.c"
    hook.write_text(source)
    elf = build_firmware(project, esp32c3, tmp_path / "fw", extra_sources=[hook])
    with pytest.raises(ToolchainError, match=message) as e:
        run_qemu(elf, esp32c3, sets[:1], specs, count_instructions=False, timeout_s=60)
    assert "mcause=" in str(e.value)  # the trap handler's message, over semihosting


def test_esp32c3_missing_tools_named(monkeypatch):
    from edgec.targets import load_target
    from edgec.toolchain import runner

    monkeypatch.setattr(runner.shutil, "which", lambda tool: None if "riscv" in tool else "/usr/bin/" + tool)
    with pytest.raises(ToolchainError, match="riscv64-unknown-elf-gcc.*gcc-riscv64-unknown-elf qemu-system-misc"):
        runner.ensure_tools(load_target("esp32c3"))


def test_esp32s3_platformio_project(tmp_path, monkeypatch):
    model = shared_model("tflite/kws_ref_model.tflite")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(model), "--target", "esp32s3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    ini = (out / "platformio.ini").read_text()
    assert re.search(r"^default_envs = esp32-s3-devkitc-1$", ini, re.MULTILINE)
    assert re.search(r"^\[env:esp32-s3-devkitc-1\]\nplatform = espressif32\nboard = esp32-s3-devkitc-1$", ini,
                     re.MULTILINE)
    # No firmware pieces: no cross toolchain file, no board folder.
    assert not (out / "cmake").exists() and not (out / "runtime" / "boards").exists()
    try:
        from platformio.project.config import ProjectConfig
    except ImportError:
        return
    monkeypatch.chdir(out)
    config = ProjectConfig(str(out / "platformio.ini"))
    assert config.validate(silent=True)
    assert config.default_envs() == ["esp32-s3-devkitc-1"]


def test_esp32s3_not_compiled_or_run(tmp_path):
    model = shared_model("tflite/kws_ref_model.tflite")
    message = "esp32s3 is PlatformIO output only: not compiled or run here"
    with pytest.raises(EdgecError, match=message):
        verify(model, "esp32s3", "qemu", n_inputs=3, seed=0, extra_inputs=[], progress=quiet)
    result = CliRunner().invoke(main, ["verify", str(model), "--target", "esp32s3", "--on", "qemu", "--inputs", "3"])
    assert result.exit_code == 2, result.output
    assert "esp32s3" in result.output and "Traceback" not in result.output
    # Running a built project refuses the same way.
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["build", str(model), "--target", "esp32s3", "-o", str(out)]).exit_code == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 49, 10, 1), np.int8))
    result = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"), "--on", "qemu",
                                       "-o", str(tmp_path / "y.npy")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_targets_listed():
    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    status = {t["name"]: t["status"] for t in json.loads(result.stdout)["targets"]}
    assert status["esp32c3"] == "supported" and status["esp32s3"] == "platformio-only"


def test_verify_on_host_still_works_for_esp32s3():
    """The generated C is plain C99: `--on host` checks it for a PlatformIO-only target too."""
    result = verify(shared_model("tflite/hello_world_int8.tflite"), "esp32s3", "host", n_inputs=3, seed=0,
                    extra_inputs=[], progress=quiet)
    assert result["bitexact"]


def test_esp32c3_cmake_project_cross_builds_and_runs(esp32c3, tmp_path):
    """The emitted CMake project builds for RV32 without a C library (the board's include/ and libgcc) and its
    ctest runs the firmware under qemu-system-riscv32 against a host build of the same sources."""
    import shutil
    import subprocess

    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    project = tmp_path / "p"
    build(shared_model("tflite/hello_world_int8.tflite"), "esp32c3", project)
    cmake = ["cmake", "-S", str(project), "-B", str(tmp_path / "b"), "-DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake"]
    subprocess.run(cmake, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(tmp_path / "b"), "-j2"], check=True, capture_output=True)
    test = subprocess.run(["ctest", "--output-on-failure"], check=False, cwd=tmp_path / "b", capture_output=True,
                          text=True)
    assert test.returncode == 0, test.stdout[-3000:]
    assert "100% tests passed" in test.stdout


LIBM_N = 256


def _libm_args() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    special = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 1e-45, 1.17549435e-38, 3.4e38, np.pi / 2, np.pi, 2 * np.pi,
               -2 * np.pi, 0.7853982, 1e-8, 99.5]
    x = np.concatenate([special, rng.uniform(-7, 7, 80), rng.uniform(-100, 100, 32),
                        rng.choice([-1, 1], 128) * 10.0 ** rng.uniform(-37, 37, 128)]).astype(np.float32)
    y = np.concatenate([rng.uniform(-3, 3, 192), rng.uniform(-110, 110, 48), rng.integers(-40, 40, 16)])
    return x[:LIBM_N], y[:LIBM_N].astype(np.float32)


def test_esp32c3_board_math_functions(esp32c3, tmp_path):
    """The board's own math functions (there is no rv32 libc) under QEMU against numpy in double precision: the
    float ones (logf, sqrtf, cosf, powf, expf, tanhf: the float kernels and the training runtime) within 1 ulp
    of the exactly rounded value, the double helpers of the training runtime's quantization (floor, frexp,
    ldexp) exact."""
    proj = tmp_path / "libm"
    (proj / "include").mkdir(parents=True)
    (proj / "src").mkdir()
    tests_c = Path(__file__).parent / "c"
    (proj / "include" / "edgec_model.h").write_text((tests_c / "edgec_model.h").read_text())
    (proj / "src" / "libm_model.c").write_text((tests_c / "libm" / "libm_model.c").read_text())
    x, y = _libm_args()
    outs, _ = run_qemu(build_firmware(proj, esp32c3, tmp_path / "w"), esp32c3, [[np.concatenate([x, y])]],
                       [((LIBM_N * (6 * 4 + 4 * 8),), np.uint8)], count_instructions=False)
    raw = outs[0][0]
    got_f = raw[:LIBM_N * 24].view(np.float32).reshape(LIBM_N, 6)
    got_d = raw[LIBM_N * 24:].view(np.float64).reshape(LIBM_N, 4)
    x64, y64, ax = x.astype(np.float64), y.astype(np.float64), np.abs(x.astype(np.float64))
    with np.errstate(all="ignore"):
        want_f = np.stack([np.log(ax), np.sqrt(ax), np.cos(x64), np.power(ax, y64), np.exp(y64),
                           np.tanh(y64)], 1).astype(np.float32)
        mantissa, exponent = np.frexp(x64)
        want_d = np.stack([np.floor(x64 * 1000.25), mantissa, exponent,
                           np.ldexp(x64, y.astype(np.int64))], 1)
    # cosf reduces |x| <= 1e5 exactly and returns NaN beyond (the training runtime passes [0, 2 pi)).
    want_f[np.abs(x) > 1e5, 2] = np.nan
    for j, name in enumerate(["logf", "sqrtf", "cosf", "powf", "expf", "tanhf"]):
        g, w = got_f[:, j], want_f[:, j]
        same = (g == w) | (np.isnan(g) & np.isnan(w))
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf: `same` covers them
            close = np.abs(g.astype(np.float64) - w) <= np.spacing(np.abs(w)).astype(np.float64)
        bad = np.flatnonzero(~(same | close))
        assert not len(bad), f"{name}: x={x[bad[0]]!r} y={y[bad[0]]!r}: board {g[bad[0]]!r}, exact {w[bad[0]]!r}"
    for j, name in enumerate(["floor", "frexp mantissa", "frexp exponent", "ldexp"]):
        bad = np.flatnonzero(got_d[:, j] != want_d[:, j])
        assert not len(bad), f"{name}: x={x[bad[0]]!r}: board {got_d[bad[0], j]!r}, exact {want_d[bad[0], j]!r}"


def test_esp32c3_trains_like_the_host(esp32c3, tmp_path):
    """`edgec build --train` (Adam, DP-SGD noise) links for the esp32c3 with the board's math functions, and two
    steps under QEMU give the host build's losses, validation loss and promotion (float rounding aside)."""
    model = shared_model("tflite/kws_ref_model.tflite")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(-128, 128, (16, 1, 49, 10, 1)).astype(np.int8),
             y=rng.integers(0, 12, 16))
    runs = {}
    for on, target in (("qemu", "esp32c3"), ("host", "host")):
        res = CliRunner().invoke(main, ["build", str(model), "-t", target, "-o", str(tmp_path / on), "--train", "mine",
                                        "--optimizer", "adam", "--lr", "0.01", "--dp-clip", "1", "--dp-noise", "0.5"])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(main, ["train", str(tmp_path / on), "--data", str(tmp_path / "d.npz"), "--steps",
                                        "2", "--validate-every", "2", "--on", on, "--json"])
        assert res.exit_code in (0, 1), res.output
        runs[on] = json.loads(res.output.strip().splitlines()[-1])
    qemu, host = runs["qemu"], runs["host"]
    assert qemu["instructions_per_step"] > 0
    assert qemu["losses"] == pytest.approx(host["losses"], rel=1e-4)
    assert qemu["checkpoints"][0]["validation_loss"] == pytest.approx(host["checkpoints"][0]["validation_loss"],
                                                                      rel=1e-4)
    assert [c["promoted"] for c in qemu["checkpoints"]] == [c["promoted"] for c in host["checkpoints"]]
