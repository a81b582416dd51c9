"""Build and run generated edgec C projects on the host and under QEMU.

A generated project has ``include/edgec_model.h`` and ``src/*.c`` (plus optional ``runtime/*.c``).
It is linked with ``runtime_c/harness/edgec_harness.c``, which streams input records through the
model (see that file for the record format). Firmware builds add semihosting and a board folder
``runtime_c/boards/<board>/`` (``*.c`` + ``link.ld``) and run under the target's QEMU (semihosting: Arm or
RISC-V). A target without ``board`` (e.g. status "platformio-only") is refused with a clear error.

Target dicts (parsed from a target TOML) use these keys:
``board`` (folder under runtime_c/boards), ``qemu_machine`` (``-M``), ``cflags`` (list, CPU/FPU flags),
and optionally ``ldflags`` (list), ``cc`` (default ``arm-none-eabi-gcc``; ``nm``/``size`` use the same
prefix), ``qemu`` (default ``qemu-system-arm``), ``qemu_args`` (list, e.g. ``["-cpu", "..."]``),
``libs`` (list, linked last; default ``["-lm"]``), ``apt_packages`` (list, for the install hint).
A target whose ``ldflags`` have ``-nostdlib`` links without newlib (no ``--specs=nano.specs``); its board
folder then brings the C library pieces it needs (headers in ``<board>/include``, on the include path).

Instruction counts come from a QEMU TCG plugin (``qemu_plugin/insn_count.c``) counting guest
instructions between the entries of ``edgec_bench_begin`` and ``edgec_bench_end`` for the first
inference. They are instructions, not cycles of a real core.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import EdgecError

RUNTIME_C = Path(__file__).resolve().parents[2] / "runtime_c"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu_plugin" / "insn_count.c"

HOST_CC = "gcc"
# EDGEC_FLASH_MEM: the OTA flash HAL on plain memory (runtime_c/ota/edgec_flash_mem.c), right for the host
# and QEMU test builds; a real board brings its own flash driver instead. EDGEC_TRAIN_TEST_RNG: the seedable
# generator behind edgec_hal_random (runtime_c/train/edgec_train_rng.c), where a device uses a TRNG.
COMMON_CFLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-DEDGEC_FLASH_MEM", "-DEDGEC_TRAIN_TEST_RNG"]
INSTALL_HINT = (
    "install with: apt-get install -y --no-install-recommends "
    "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
)

# Exit codes of the harness and board fault handlers (enum edgec_exit_code in edgec_semihost.h).
EXIT_CODES = {
    2: "usage error",
    3: "cannot open input file",
    4: "cannot open output file",
    5: "input file size is not a multiple of the model's input record size",
    6: "short read from input file",
    7: "short write to output file",
    8: "edgec_init() failed",
    9: "edgec_run() failed",
    10: "model returned a NULL buffer or has no inputs",
    90: "firmware fault: NMI",
    91: "firmware fault: HardFault",
    92: "firmware fault: MemManage",
    93: "firmware fault: BusFault",
    94: "firmware fault: UsageFault",
    95: "firmware fault: unexpected interrupt",
    96: "firmware fault: stack overflow (increase the stack size)",
    97: "firmware fault: CPU exception (RISC-V trap; mcause/mepc/mtval in the output)",
    124: "timed out",
    134: "QEMU aborted (CPU lockup, or semihosting not enabled)",
}

Shape = tuple[int, ...]
OutputSpec = tuple[Shape, Any]  # (shape, numpy dtype)


class ToolchainError(EdgecError):
    """A build or run step failed or a tool is missing; the message has the command, exit code and output."""


def _run(cmd: Sequence[str | os.PathLike[str]], what: str, cwd: Path | None = None,
         timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except FileNotFoundError as e:
        raise ToolchainError(f"{what}: {cmd[0]} not found ({INSTALL_HINT})") from e
    except subprocess.TimeoutExpired as e:
        raise ToolchainError(f"{what}: timed out after {timeout} s\ncommand: {' '.join(cmd)}") from e
    if proc.returncode != 0:
        meaning = EXIT_CODES.get(proc.returncode, "")
        raise ToolchainError(
            f"{what} failed with exit code {proc.returncode}"
            + (f" ({meaning})" if meaning else "")
            + f"\ncommand: {' '.join(cmd)}\n{_tail(proc.stderr)}{_tail(proc.stdout)}"
        )
    return proc


def _tail(text: str, limit: int = 4000) -> str:
    text = text.strip()
    if not text:
        return ""
    return (text if len(text) <= limit else "...\n" + text[-limit:]) + "\n"


def _target_tools(target: dict[str, Any]) -> dict[str, str]:
    cc = target.get("cc", "arm-none-eabi-gcc")
    prefix = cc[: -len("gcc")] if cc.endswith("gcc") else "arm-none-eabi-"
    return {"cc": cc, "nm": prefix + "nm", "size": prefix + "size", "qemu": target.get("qemu", "qemu-system-arm")}


def require_board(target: dict[str, Any]) -> None:
    """ToolchainError unless the target has a QEMU board (``board`` key): e.g. a PlatformIO-only target."""
    if target.get("board"):
        return
    name = target.get("name", "this target")
    if target.get("status") == "platformio-only":
        raise ToolchainError(f"{name} is PlatformIO output only: not compiled or run here")
    raise ToolchainError(f"target {name} has no board support: it cannot be built as firmware or run under QEMU")


def _no_libc(target: dict[str, Any]) -> bool:
    return "-nostdlib" in target.get("ldflags", [])


def ensure_tools(target: dict[str, Any] | None = None) -> None:
    """Check that the host compiler (and, for a target, cross tools, newlib and QEMU) are installed.

    Raises ToolchainError with an install hint otherwise.
    """
    missing = [t for t in (HOST_CC, "timeout") if shutil.which(t) is None]
    hint = INSTALL_HINT
    if target is not None:
        tools = _target_tools(target)
        missing += [t for t in tools.values() if shutil.which(t) is None]
        if target.get("apt_packages"):
            hint = "install with: apt-get install -y --no-install-recommends " + " ".join(target["apt_packages"])
        if shutil.which(tools["cc"]) is not None and not _no_libc(target):
            # Without newlib, -print-file-name echoes the bare name back.
            specs = subprocess.run([tools["cc"], "-print-file-name=nano.specs"], check=False,
                                   capture_output=True, text=True).stdout.strip()
            if not Path(specs).is_file():
                missing.append("newlib (nano.specs)")
    if missing:
        raise ToolchainError(f"missing tools: {', '.join(missing)}; {hint}")


def _project_sources(project_dir: Path) -> tuple[list[Path], list[str]]:
    project_dir = Path(project_dir)
    if not (project_dir / "include" / "edgec_model.h").is_file():
        raise ToolchainError(f"{project_dir} is not a generated edgec project (no include/edgec_model.h)")
    sources = sorted((project_dir / "src").glob("*.c")) + sorted((project_dir / "runtime").glob("*.c"))
    includes = [f"-I{project_dir / 'include'}", f"-I{RUNTIME_C / 'semihost'}"]
    if (project_dir / "runtime").is_dir():
        includes.append(f"-I{project_dir / 'runtime'}")
    report = project_dir / "edgec-report.json"
    if report.is_file():  # features the project needs compiled in (as its CMakeLists.txt defines them)
        includes += [f"-D{d}" for d in json.loads(report.read_text()).get("c_defines", [])]
    return sources, includes


def build_host(project_dir: Path, work_dir: Path, extra_cflags: Sequence[str] = (),
               extra_sources: Sequence[Path] = ()) -> Path:
    """Compile the project with the harness for the host; returns the executable (``harness IN OUT``).

    ``extra_cflags`` is appended (e.g. ``["-fsanitize=address,undefined", "-g"]``); ``extra_sources`` are
    compiled in too (e.g. the harness hooks that ``edgec run --activate`` generates).
    """
    ensure_tools()
    sources, includes = _project_sources(project_dir)
    sources += [Path(p) for p in extra_sources]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    exe = work_dir / "edgec_host"
    _run([HOST_CC, *COMMON_CFLAGS, *extra_cflags, *includes, RUNTIME_C / "harness" / "edgec_harness.c", *sources,
          "-o", exe, "-lm"], "host build")
    return exe


def build_firmware(project_dir: Path, target: dict[str, Any], work_dir: Path,
                   extra_sources: Sequence[Path] = (), extra_cflags: Sequence[str] = ()) -> Path:
    """Cross-compile the project with harness, semihosting and board startup; returns the ELF.

    ``extra_cflags`` is appended to the compiler flags (e.g. the mock NPU driver's include folder)."""
    require_board(target)
    ensure_tools(target)
    sources, includes = _project_sources(project_dir)
    sources += [Path(p) for p in extra_sources]
    board = RUNTIME_C / "boards" / target["board"]
    if not (board / "link.ld").is_file():
        raise ToolchainError(f"unknown board {target['board']!r}: no {board / 'link.ld'}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    elf = work_dir / "firmware.elf"
    # Target TOMLs may repeat the default link flags; a second --specs is a gcc error.
    ldflags = list(target.get("ldflags", []))
    defaults = ["-nostartfiles", "-Wl,--gc-sections"]
    if not any(f.startswith("--specs=") for f in ldflags) and not _no_libc(target):
        defaults.append("--specs=nano.specs")
    ldflags = [f for f in defaults if f not in ldflags] + ldflags
    if (board / "include").is_dir():  # the board's own libc headers (targets linked with -nostdlib)
        includes.append(f"-I{board / 'include'}")
    cmd = [
        _target_tools(target)["cc"], *COMMON_CFLAGS, *target.get("cflags", []),
        "-ffunction-sections", "-fdata-sections", "-DEDGEC_SEMIHOSTING", *extra_cflags, *includes,
        RUNTIME_C / "harness" / "edgec_harness.c", RUNTIME_C / "semihost" / "edgec_semihost.c",
        *sorted(board.glob("*.c")), *sources,
        f"-T{board / 'link.ld'}", f"-Wl,-Map={work_dir / 'firmware.map'}", *ldflags,
        *target.get("libs", ["-lm"]), "-o", elf,
    ]
    _run(cmd, "firmware build")
    return elf


def elf_sizes(elf: Path, size_tool: str = "arm-none-eabi-size") -> dict[str, int]:
    """Section totals of an ELF (Berkeley format): flash = text + data, RAM = data + bss.

    The stack is not included (it is reserved by the linker script, not a section).
    """
    out = _run([size_tool, "-B", elf], "size").stdout.splitlines()
    text, data, bss = (int(v) for v in out[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def _symbol_addresses(elf: Path, names: Sequence[str], nm_tool: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in _run([nm_tool, elf], "nm").stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in names:
            found[parts[2]] = int(parts[0], 16) & ~1  # drop the Thumb bit
    missing = [n for n in names if n not in found]
    if missing:
        raise ToolchainError(f"symbols {missing} not found in {elf}")
    return found


def _plugin_cache_dir() -> Path:
    return Path(os.environ.get("EDGEC_CACHE_DIR") or Path.home() / ".cache" / "edgec")


def insn_count_plugin() -> Path:
    """Build (once per source version) and return the instruction-count QEMU plugin."""
    source = PLUGIN_SOURCE.read_bytes()
    flags = ["-shared", "-fPIC", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror"]
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    cache = _plugin_cache_dir()
    plugin = cache / f"insn_count-{digest}.so"
    if plugin.is_file():
        return plugin
    ensure_tools()
    cache.mkdir(parents=True, exist_ok=True)
    # Build under a unique name and rename: concurrent runs never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".insn_count-", suffix=".so")
    os.close(fd)
    try:
        _run([HOST_CC, *flags, PLUGIN_SOURCE, "-o", tmp], "QEMU plugin build")
        os.replace(tmp, plugin)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return plugin


def _pack_inputs(inputs: Sequence[Sequence[np.ndarray]]) -> bytes:
    # Native byte order is little-endian on both the host (x86/ARM) and the Cortex-M targets.
    return b"".join(np.ascontiguousarray(a).tobytes() for record in inputs for a in record)


def _unpack_outputs(data: bytes, n_records: int, output_specs: Sequence[OutputSpec]) -> list[list[np.ndarray]]:
    sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in output_specs]
    record = sum(sizes)
    if len(data) != n_records * record:
        raise ToolchainError(
            f"output file has {len(data)} bytes, expected {n_records} records x {record} bytes "
            f"(output_specs {list(output_specs)} do not match the model's outputs)"
        )
    records, pos = [], 0
    for _ in range(n_records):
        outs = []
        for (shape, dtype), size in zip(output_specs, sizes):
            outs.append(np.frombuffer(data, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                      offset=pos).reshape(shape).copy())
            pos += size
        records.append(outs)
    return records


def run_host(exe: Path, inputs: Sequence[Sequence[np.ndarray]],
             output_specs: Sequence[OutputSpec], timeout_s: float = 600) -> list[list[np.ndarray]]:
    """Run a host harness on ``inputs[record][input_index]``; returns ``outputs[record][output_index]``."""
    with tempfile.TemporaryDirectory(prefix="edgec_host_") as tmp:
        in_file, out_file = Path(tmp) / "edgec_in.bin", Path(tmp) / "edgec_out.bin"
        in_file.write_bytes(_pack_inputs(inputs))
        _run([Path(exe).resolve(), in_file, out_file], f"host run of {exe}", timeout=timeout_s)
        return _unpack_outputs(out_file.read_bytes(), len(inputs), output_specs)


def run_qemu(elf: Path, target: dict[str, Any], inputs: Sequence[Sequence[np.ndarray]],
             output_specs: Sequence[OutputSpec], count_instructions: bool = True,
             timeout_s: float = 600) -> tuple[list[list[np.ndarray]], int | None]:
    """Run firmware under QEMU; returns (outputs, instructions for the first inference or None).

    The count is exact and repeatable (QEMU TCG plugin); it counts instructions, not cycles.
    """
    if count_instructions and not inputs:
        raise ToolchainError("cannot count instructions without at least one input record")
    require_board(target)
    ensure_tools(target)
    tools = _target_tools(target)
    elf = Path(elf).resolve()
    with tempfile.TemporaryDirectory(prefix="edgec_qemu_") as tmp:
        tmp_dir = Path(tmp)
        (tmp_dir / "edgec_in.bin").write_bytes(_pack_inputs(inputs))
        count_file = tmp_dir / "insn_count.txt"
        cmd: list[str | Path] = [
            "timeout", "--kill-after=5", str(timeout_s), tools["qemu"], "-M", target["qemu_machine"],
            *target.get("qemu_args", []), "-display", "none", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-icount", "shift=0,sleep=off",
            "-kernel", elf,
        ]
        if count_instructions:
            marks = _symbol_addresses(elf, ["edgec_bench_begin", "edgec_bench_end"], tools["nm"])
            # QEMU option values escape ',' as ',,'.
            plugin, out = (str(p).replace(",", ",,") for p in (insn_count_plugin(), count_file))
            begin, end = marks["edgec_bench_begin"], marks["edgec_bench_end"]
            cmd += ["-plugin", f"file={plugin},begin={begin:#x},end={end:#x},out={out}"]
        _run(cmd, f"QEMU run of {elf.name}", cwd=tmp_dir)
        outputs = _unpack_outputs((tmp_dir / "edgec_out.bin").read_bytes(), len(inputs), output_specs)
        count = None
        if count_instructions:
            if not count_file.is_file():
                raise ToolchainError("instruction-count plugin wrote no count (bench markers not reached)")
            count = int(count_file.read_text().strip())
        return outputs, count
