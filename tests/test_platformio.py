"""PlatformIO without its registry: the emitted platformio.ini validates, and its [env:qemu] builds the model +
test harness with `pio run` (the project's local dev-platform runtime/platformio/edgec-qemu, the cross compiler
from PATH, SCons from the `scons` pip package packaged as PlatformIO's tool-scons) into firmware whose outputs
under QEMU are bit-exact with TFLite Micro (also for a build with LoRA slots and the OTA receiver, whose
runtime/ sources and headers library.json must cover). Each module run uses its own PLATFORMIO_CORE_DIR; requests to the
outside go to a closed local port, so anything that needs the registry fails instead of downloading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.oracle.tflm import run_tflm_batch
from edgec.ota.keys import generate_keypair
from edgec.pipeline import build
from edgec.targets import load_target
from edgec.toolchain.runner import run_qemu
from support import kws_with_adapters, random_inputs, require_target, shared_model

pytest.importorskip("platformio", reason="platformio is not installed (pip install platformio==6.2.0)")

BOARD_ENVS = {"nucleo_f446re", "disco_f407vg", "nucleo_l4r5zi", "disco_f746ng", "pico", "esp32-s3-devkitc-1",
              "esp32-c3-devkitm-1"}
DEV_PLATFORM = "runtime/platformio/edgec-qemu"


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    """kws_ref_model built for an Arm, a RISC-V (both with a QEMU board) and a PlatformIO-only target, and for
    cortex-m4 with an adapter slot and the OTA receiver (runtime/*.c, runtime/*.h)."""
    model = shared_model("tflite/kws_ref_model.tflite")
    tmp = tmp_path_factory.mktemp("pio_projects")
    projects = {}
    for target in ("cortex-m4", "esp32c3", "esp32s3"):
        build(model, target, tmp / target)
        projects[target] = tmp / target
    work = tmp_path_factory.mktemp("pio_ota")
    kws_with_adapters(work, {"a": (4, 1)})
    _, pub = generate_keypair(work / "key")
    build(model, "cortex-m4", tmp / "ota", adapters=[("a", work / "a")], adapter_mode="slots",
          adapter_map=work / "map.json", ota_pubkeys=[pub])
    projects["cortex-m4-ota"] = tmp / "ota"
    return projects


@pytest.mark.parametrize("target_name", ["cortex-m4", "esp32c3", "esp32s3"])
def test_platformio_ini_validates(projects, target_name, monkeypatch):
    from platformio.project.config import ProjectConfig

    target, project = load_target(target_name), projects[target_name]
    monkeypatch.chdir(project)  # relative dirs resolve from the working directory
    path = str(project / "platformio.ini")
    config = ProjectConfig(path)
    assert config.validate(silent=True)
    assert ProjectConfig.lint(path) == {"errors": [], "warnings": []}
    assert config.default_envs() == [target["platformio_board"]]
    has_qemu = "board" in target
    assert set(config.envs()) == BOARD_ENVS | ({"qemu"} if has_qemu else set())
    assert (project / DEV_PLATFORM / "platform.json").is_file() == has_qemu
    if has_qemu:
        assert config.get("env:qemu", "platform") == "symlink://" + DEV_PLATFORM
        assert config.get("env:qemu", "framework") == []  # not the Arduino framework of the board envs
        assert config.get("env:qemu", "custom_edgec_cc") == target["cc"]
        assert config.get("env:qemu", "custom_edgec_board") == target["board"]
        assert json.loads((project / DEV_PLATFORM / "platform.json").read_text())["name"] == "edgec-qemu"


def _tool_scons_version(scons_version: str) -> str:
    """PlatformIO's version of its tool-scons package for an SCons release: 4.11.1 -> 4.41101.0."""
    major, minor, patch = (int(p) for p in scons_version.split(".")[:3])
    return f"{major}.{major}{minor:02d}{patch:02d}.0"


def _pio(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "platformio", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pio {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def pio_env(tmp_path_factory) -> dict[str, str]:
    """Environment for `pio` with a private core dir holding a tool-scons packaged from the installed SCons
    (docs/platformio.md): PlatformIO would otherwise download it from its registry on the first `pio run`."""
    scons = pytest.importorskip("SCons", reason="SCons is not installed (pip install scons==4.11.1, a test extra)")
    import semantic_version
    from platformio.dependencies import get_core_dependencies

    version, wanted = _tool_scons_version(scons.__version__), get_core_dependencies()["tool-scons"]
    if not semantic_version.SimpleSpec(wanted).match(semantic_version.Version(version)):
        pytest.skip(f"SCons {scons.__version__} is tool-scons {version}; platformio needs {wanted}")
    tmp = tmp_path_factory.mktemp("pio_core")
    package = tmp / "tool-scons"
    shutil.copytree(Path(scons.__file__).parent, package / "SCons",
                    ignore=shutil.ignore_patterns("__pycache__", "docbook"))  # docbook: 20 MB, unused
    (package / "package.json").write_text(json.dumps({"name": "tool-scons", "version": version}))
    (package / "scons.py").write_text("import sys\nfrom SCons.Script.Main import main\nsys.exit(main())\n")
    env = dict(os.environ, PLATFORMIO_CORE_DIR=str(tmp / "core"), PLATFORMIO_SETTING_ENABLE_TELEMETRY="No",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    _pio(["pkg", "install", "-g", "-t", package.as_uri()], tmp, env)
    # A file:// install records no owner, and PlatformIO looks for its core packages as platformio/tool-scons.
    piopm = tmp / "core" / "packages" / "tool-scons" / ".piopm"
    meta = json.loads(piopm.read_text())
    meta["spec"]["owner"] = "platformio"
    piopm.write_text(json.dumps(meta))
    return env


@pytest.mark.parametrize("project_name", ["cortex-m4", "esp32c3", "cortex-m4-ota"])
def test_pio_run_qemu_env_is_bitexact_with_tflm(projects, pio_env, project_name):
    target = require_target(project_name.removesuffix("-ota"))
    project = projects[project_name]
    out = _pio(["run", "-e", "qemu"], project, pio_env)
    # Only local packages: the dev-platform and the model library, both symlinks into the project.
    installs = [line for line in out.splitlines() if "Installing" in line]
    assert installs and all("symlink://" in line for line in installs), out
    elf = project / ".pio" / "build" / "qemu" / "firmware.elf"
    assert elf.is_file(), out

    model = shared_model("tflite/kws_ref_model.tflite").read_bytes()
    report = json.loads((project / "edgec-report.json").read_text())
    specs = [(tuple(o["shape"]), np.dtype(o["dtype"])) for o in report["outputs"]]
    zeros = [[np.zeros(i["shape"], np.dtype(i["dtype"])) for i in report["inputs"]]]
    sets = zeros + random_inputs(model, 8, seed=3)  # no adapter slot active: the base model's outputs
    got, _ = run_qemu(elf, target, sets, specs, count_instructions=False, timeout_s=120)
    want = run_tflm_batch(model, sets)
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            assert np.array_equal(g, np.asarray(w).reshape(g.shape)), f"input set {r}, output {o} differs from TFLM"

    # `-t exec` runs the same firmware under QEMU on one record of zeros.
    _pio(["run", "-e", "qemu", "-t", "exec"], project, pio_env)
    assert (elf.parent / "edgec_out.bin").read_bytes() == b"".join(g.tobytes() for g in got[0])
