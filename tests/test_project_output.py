"""The generated project around the model C: CMake (host, and firmware under QEMU via ctest),
PlatformIO (platformio.ini, library.json, demo sketch), and the C itself (plain C99, no TVM symbols)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.pipeline import build
from edgec.toolchain.runner import build_host, run_host

REPO = Path(__file__).resolve().parents[1]
PIO_ENVS = {"nucleo_f446re", "disco_f407vg", "nucleo_l4r5zi", "disco_f746ng", "pico", "esp32-s3-devkitc-1",
            "esp32-c3-devkitm-1"}

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("gcc") is None,
                                 reason="cmake and/or gcc not installed (apt-get install cmake gcc)")


def _arm_missing() -> str | None:
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "timeout") if shutil.which(t) is None]
    if not missing:
        specs = subprocess.run(["arm-none-eabi-gcc", "-print-file-name=nano.specs"], check=False,
                               capture_output=True, text=True).stdout.strip()
        if not Path(specs).is_file():
            missing.append("newlib (nano.specs)")
    return ", ".join(missing) or None


ARM_MISSING = _arm_missing()
needs_arm = pytest.mark.skipif(ARM_MISSING is not None, reason=f"missing {ARM_MISSING} (apt-get install "
                               "--no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")


def tiny_model() -> bytes:
    """int8 CONV_2D (per-channel weights, ReLU) -> RESHAPE -> FULLY_CONNECTED: 50 input bytes, 4 output bytes."""
    rng = np.random.default_rng(0)
    w_scales = [0.01, 0.02, 0.015]
    t = [
        WTensor("x", (1, 5, 5, 2), "int8", scale=[0.05], zero_point=[-3]),
        WTensor("w", (3, 3, 3, 2), "int8", rng.integers(-127, 128, (3, 3, 3, 2)), w_scales, [0, 0, 0]),
        WTensor("b", (3,), "int32", rng.integers(-200, 200, 3), [0.05 * s for s in w_scales], [0, 0, 0]),
        WTensor("y", (1, 3, 3, 3), "int8", scale=[0.04], zero_point=[-10]),
        WTensor("shape", (2,), "int32", np.array([1, 27])),
        WTensor("r", (1, 27), "int8", scale=[0.04], zero_point=[-10]),
        WTensor("fw", (4, 27), "int8", rng.integers(-127, 128, (4, 27)), [0.02]),
        WTensor("fb", (4,), "int32", rng.integers(-500, 500, 4), [0.04 * 0.02]),
        WTensor("z", (1, 4), "int8", scale=[0.1], zero_point=[2]),
    ]
    ops = [WOp("CONV_2D", [0, 1, 2], [3], {"padding": "VALID", "fused_activation_function": "RELU"}),
           WOp("RESHAPE", [3, 4], [5]),
           WOp("FULLY_CONNECTED", [5, 6, 7], [8])]
    return write_tflite(t, ops, [0], [8])


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    """The tiny model built for the cortex-m4 and host targets: {target: project folder}."""
    tmp = tmp_path_factory.mktemp("project_output")
    model = tmp / "tiny.tflite"
    model.write_bytes(tiny_model())
    folders = {}
    for target in ("cortex-m4", "host"):
        build(model, target, tmp / target)
        folders[target] = tmp / target
    return folders


def run(cmd: list[str | Path], cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_layout(projects):
    m4, host = projects["cortex-m4"], projects["host"]
    for p in (m4, host):
        for rel in ("CMakeLists.txt", "platformio.ini", "library.json", "examples/platformio/main.cpp",
                    "runtime/harness/edgec_harness.c", "runtime/semihost/edgec_semihost.h",
                    "runtime/semihost/edgec_semihost.c"):
            assert (p / rel).is_file(), rel
        # runtime/*.c is compiled into every runner build: the ARM-only semihosting must stay out of it.
        assert not list((p / "runtime").glob("*.c"))
    assert (m4 / "cmake/arm-none-eabi.cmake").is_file() and (m4 / "runtime/boards/mps2_an386/link.ld").is_file()
    assert not (host / "cmake").exists() and not (host / "runtime/boards").exists()
    toolchain = (m4 / "cmake/arm-none-eabi.cmake").read_text()
    assert "set(CMAKE_SYSTEM_NAME Generic)" in toolchain
    assert "set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)" in toolchain
    assert re.search(r'CMAKE_C_FLAGS_INIT "-mcpu=cortex-m4 .*-mfloat-abi=hard', toolchain)
    assert not re.search(r"set\(CMAKE_C_FLAGS ", toolchain)


@needs_cmake
def test_generated_c_is_plain_c99_without_tvm(projects, tmp_path):
    project = projects["cortex-m4"]
    sources = sorted((project / "src").glob("*.c"))
    objs = []
    for src in sources:
        obj = tmp_path / (src.stem + ".o")
        run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", f"-I{project / 'include'}",
             "-c", src, "-o", obj])
        objs.append(obj)
    # No TVM identifiers in the code (the kernels.c banner comment names the TVM version; comments are fine).
    for path in sources + sorted((project / "src").glob("*.h")) + [project / "include/edgec_model.h"]:
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.DOTALL)
        assert not re.search(r"tvm", code, re.IGNORECASE), f"{path.name} mentions TVM outside comments"
    symbols = run(["nm", *objs])
    assert not re.search(r"tvm", symbols, re.IGNORECASE), symbols


@needs_cmake
@pytest.mark.parametrize("target", ["cortex-m4", "host"])
def test_cmake_host_build_and_ctest(projects, tmp_path, target):
    project, build_dir = projects[target], tmp_path / "build"
    run(["cmake", "-S", project, "-B", build_dir, "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"])
    run(["cmake", "--build", build_dir])
    commands = json.loads((build_dir / "compile_commands.json").read_text())
    model_cmds = [c["command"] for c in commands if "/src/" in c["file"]]
    assert len(model_cmds) == 3 and all("-Werror" in c and "-std=c99" in c for c in model_cmds)
    out = run(["ctest", "--output-on-failure"], cwd=build_dir)
    assert "100% tests passed" in out and "edgec_run" in out and "edgec_output_size" in out

    # The CMake-built harness computes what the runner's host build does, on random inputs too.
    specs = [((1, 4), np.int8)]
    inputs = [[np.random.default_rng(s).integers(-128, 128, (1, 5, 5, 2), dtype=np.int8)] for s in range(4)]
    want = run_host(build_host(project, tmp_path / "runner"), inputs, specs)
    got = run_host(build_dir / "edgec_harness", inputs, specs)
    assert all(np.array_equal(g[0], w[0]) for g, w in zip(got, want))

    # EDGEC_WERROR=OFF drops the warning flags.
    run(["cmake", "-S", project, "-B", build_dir, "-DEDGEC_WERROR=OFF"])
    commands = json.loads((build_dir / "compile_commands.json").read_text())
    assert not any("-Werror" in c["command"] for c in commands)


@needs_cmake
@needs_arm
def test_cmake_cross_build_runs_under_qemu(projects, tmp_path):
    project, build_dir = projects["cortex-m4"], tmp_path / "build-arm"
    run(["cmake", "-S", project, "-B", build_dir, "-DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake"], cwd=project)
    run(["cmake", "--build", build_dir])
    header = run(["arm-none-eabi-readelf", "-h", build_dir / "edgec_harness"])
    assert "ARM" in header and "hard-float" in header
    out = run(["ctest", "--output-on-failure"], cwd=build_dir)
    for test in ("edgec_run", "edgec_output_size", "edgec_host_reference", "edgec_matches_host"):
        assert re.search(rf"Test +#\d+: {test} \.+ +Passed", out), out
    assert (build_dir / "edgec_in.bin").read_bytes() == bytes(50)
    firmware_out = (build_dir / "edgec_out.bin").read_bytes()
    assert len(firmware_out) == 4 and firmware_out == (build_dir / "edgec_expected.bin").read_bytes()


@needs_cmake
def test_repo_cmakelists_builds_project_against_runtime_c(projects, tmp_path):
    build_dir = tmp_path / "runtime"
    run(["cmake", "-S", REPO, "-B", build_dir, f"-DEDGEC_PROJECT={projects['cortex-m4']}",
         "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"])
    run(["cmake", "--build", build_dir])
    files = {c["file"] for c in json.loads((build_dir / "compile_commands.json").read_text())}
    assert str(REPO / "runtime_c/harness/edgec_harness.c") in files
    assert "100% tests passed" in run(["ctest"], cwd=build_dir)


def test_library_json(projects):
    project = projects["cortex-m4"]
    lib = json.loads((project / "library.json").read_text())
    assert lib["name"] == "edgec-tiny" and lib["version"]
    assert lib["headers"] == "edgec_model.h"
    assert lib["build"]["includeDir"] == "include" and "+<src/>" in lib["build"]["srcFilter"]
    # No fused multiply-add: float kernels stay bit-identical with the host and TFLM under GNU C modes.
    assert lib["build"]["flags"] == ["-O2", "-ffp-contract=off"]
    assert "tiny.tflite" in lib["description"]


def _platformio():
    pytest.importorskip("platformio", reason="platformio is not installed (pip install platformio==6.2.0)")
    os.environ.setdefault("PLATFORMIO_SETTING_ENABLE_TELEMETRY", "No")


def test_library_json_platformio_manifest(projects):
    _platformio()
    from platformio.fs import match_src_files
    from platformio.package.manifest.parser import ManifestParserFactory
    from platformio.package.manifest.schema import ManifestSchema

    project = projects["cortex-m4"]
    manifest = ManifestParserFactory.new_from_file(str(project / "library.json")).as_dict()
    ManifestSchema().load_manifest(manifest)  # raises ManifestValidationError
    # What PlatformIO's library builder compiles: the model sources, not the harness or board code.
    build_opts = manifest["build"]
    files = match_src_files(str(project / build_opts["srcDir"]), build_opts["srcFilter"], ["c", "cpp"])
    assert sorted(files) == ["src/kernels.c", "src/model.c", "src/weights.c"]


def test_platformio_ini_validates(projects, monkeypatch):
    _platformio()
    from platformio.project.config import ProjectConfig

    for target, default in (("cortex-m4", "disco_f407vg"), ("host", "nucleo_f446re")):
        monkeypatch.chdir(projects[target])  # pio resolves ${PROJECT_DIR} (relative dirs) from the working dir
        path = str(projects[target] / "platformio.ini")
        config = ProjectConfig(path)
        assert config.validate(silent=True)
        assert ProjectConfig.lint(path) == {"errors": [], "warnings": []}
        # Firmware targets also get the local QEMU env (docs/platformio.md).
        assert set(config.envs()) == PIO_ENVS | ({"qemu"} if target == "cortex-m4" else set())
        assert config.default_envs() == [default]
        platforms = {env: config.get(f"env:{env}", "platform") for env in config.envs()}
        assert platforms["pico"] == "raspberrypi" and platforms["esp32-c3-devkitm-1"] == "espressif32"
        assert platforms["disco_f746ng"] == "ststm32"
        assert config.get("env:pico", "lib_deps") == ["edgec-tiny=symlink://."]
        assert Path(config.get("platformio", "src_dir")) == projects[target] / "examples/platformio"


ARDUINO_STUB = """\
#include <stddef.h>
#include <stdint.h>
struct FakeSerial {
    void begin(unsigned long) {}
    template <typename T> void print(T) {}
    template <typename T> void println(T) {}
    void println() {}
};
static FakeSerial Serial;
inline unsigned long micros() { return 0; }
inline void delay(unsigned long) {}
"""


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None, reason="g++/gcc not installed")
def test_platformio_demo_compiles_with_a_stub_arduino(projects, tmp_path):
    project = projects["cortex-m4"]
    (tmp_path / "Arduino.h").write_text(ARDUINO_STUB)
    (tmp_path / "driver.cpp").write_text("void setup();\nvoid loop();\nint main() { setup(); loop(); return 0; }\n")
    objs = []
    for src in sorted((project / "src").glob("*.c")):
        objs.append(tmp_path / (src.stem + ".o"))
        run(["gcc", "-std=c99", "-O1", f"-I{project / 'include'}", "-c", src, "-o", objs[-1]])
    exe = tmp_path / "demo"
    run(["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path}", f"-I{project / 'include'}",
         project / "examples/platformio/main.cpp", tmp_path / "driver.cpp", *objs, "-o", exe, "-lm"])
    run([exe])
