"""Arm Ethos-U NPU targets: run Vela (ethos-u-vela) on the int8 graph and read back what it made.

For a target with an `npu` table (targets/ethos-u55-*.toml), the pipeline hands the int8 .tflite to Vela
(in-process, in a temporary folder). Vela turns every run of NPU-supported ops into one CUSTOM op
'ethos-u' (read by edgec's TFLite reader as op type ETHOSU) and leaves the other ops (CPU fallback) as they
are. It also plans every activation into one arena (metadata OfflineMemoryAllocation) and writes a
summary CSV with its performance estimate. edgec then compiles Vela's graph: ETHOSU ops become calls to
`edgec_npu_invoke` (runtime_c/npu/edgec_npu.c, which calls the Ethos-U driver's ethosu_invoke_v3), the
CPU-fallback ops edgec's own kernels, and the memory planner keeps Vela's offsets (docs/npu.md).
"""

from __future__ import annotations

import contextlib
import csv
import io
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph

VELA_PACKAGE = "ethos-u-vela"
VELA_VERSION = "5.2.0"  # pinned in pyproject.toml; docs/npu.md

COP1_FOURCC = 0x31504F43  # "COP1": Custom Operator Payload 1, the first word of every command stream
DA_OPTIMIZER_CONFIG = 1  # driver action: the config and id words follow
DA_COMMAND_STREAM = 2  # driver action: (reserved << 16 | length) 32-bit words of register commands follow
DA_NOP = 5
# SHRAM size in KB per Ethos-U55 MAC configuration (what Vela writes into the config word).
U55_SHRAM_KB = {32: 16, 64: 16, 128: 24, 256: 48}


def vela_version() -> str | None:
    """The installed ethos-u-vela version, or None when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version(VELA_PACKAGE)
    except PackageNotFoundError:
        return None


@dataclass
class NpuBuild:
    """What Vela made of a model: its .tflite, the arena offsets it chose and its summary."""

    tflite: bytes
    offsets: dict[int, int]  # tensor id -> arena offset (tensors Vela placed)
    summary: dict  # report["npu"]
    log: str = ""
    ethosu_ops: list[dict] = field(default_factory=list)


def offline_offsets(data: bytes) -> dict[int, int]:
    """The OfflineMemoryAllocation metadata of a .tflite: tensor id -> arena offset (-1 entries left out).

    Format (TFLM's offline planner): int32 [version 0, subgraph count, tensor count, offset per tensor]."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        if md.Name() != b"OfflineMemoryAllocation":
            continue
        words = model.Buffers(md.Buffer()).DataAsNumpy().view(np.int32)
        if len(words) < 3 or words[0] != 0 or words[1] != 1 or len(words) != 3 + words[2]:
            raise EdgecError(f"Vela's OfflineMemoryAllocation metadata is malformed ({len(words)} words, header "
                             f"{list(words[:3])}; expected version 0, 1 subgraph, one offset per tensor)")
        return {t: int(off) for t, off in enumerate(words[3:]) if off >= 0}
    return {}


def parse_cop1(stream: bytes) -> dict:
    """Decode a Vela command stream's driver-action header (as ethos-u-core-driver's ethosu_invoke_async does):
    the config word (product, MACs per cycle, SHRAM size) and the register command stream's length."""
    if len(stream) < 16 or len(stream) % 4:
        raise EdgecError(f"Ethos-U command stream of {len(stream)} bytes (expected a multiple of 4, at least 16)")
    words = struct.unpack(f"<{len(stream) // 4}I", stream)
    if words[0] != COP1_FOURCC:
        raise EdgecError(f"Ethos-U command stream starts with {words[0]:#010x}, expected 'COP1' ({COP1_FOURCC:#x})")
    info: dict = {}
    i = 1
    while i < len(words):
        cmd, reserved, param = words[i] & 0xFF, (words[i] >> 8) & 0xFF, words[i] >> 16
        if cmd == DA_OPTIMIZER_CONFIG:
            config, ident = words[i + 1], words[i + 2]
            info.update(config_word=config, id_word=ident, macs=1 << (config & 0xF),
                        cmd_stream_version=(config >> 4) & 0xF, shram_kb=(config >> 8) & 0xFF,
                        product=config >> 28, arch_major=ident >> 28)
            i += 3
        elif cmd == DA_COMMAND_STREAM:
            length = reserved << 16 | param
            info.update(cms_words=length, cms_offset=4 * (i + 1))
            i += 1 + length
        elif cmd == DA_NOP:
            i += 1
        else:
            raise EdgecError(f"Ethos-U command stream: unknown driver action {cmd} at word {i}")
    if "config_word" not in info or "cms_words" not in info:
        raise EdgecError("Ethos-U command stream without an OPTIMIZER_CONFIG or COMMAND_STREAM driver action")
    return info


def check_stream(stream: bytes, npu: dict, where: str) -> dict:
    """Build-time check that a command stream was made for the target's NPU (the driver checks it again)."""
    info = parse_cop1(stream)
    macs = int(npu["macs"])
    want_shram = U55_SHRAM_KB.get(macs)
    if info["product"] != 0 or info["macs"] != macs or (want_shram is not None and info["shram_kb"] != want_shram):
        raise EdgecError(f"{where}: its command stream was compiled for product {info['product']} with "
                         f"{info['macs']} MACs/cycle and {info['shram_kb']} KB SHRAM, but the target's NPU is "
                         f"{npu['accelerator']} (Ethos-U55 = product 0, {macs} MACs/cycle, {want_shram} KB)")
    return info


def _read_summary(csv_path: Path) -> dict:
    with csv_path.open(newline="") as f:
        row = next(csv.DictReader(f))

    def num(key: str) -> float:
        return float(row[key])

    return {
        "cycles_npu": int(num("cycles_npu")),
        "cycles_total": int(num("cycles_total")),
        "inference_time_s": num("inference_time"),
        "inferences_per_second": num("inferences_per_second"),
        "core_clock_hz": int(num("core_clock")),
        "sram_used_kib": num("sram_memory_used"),
        "dram_used_kib": num("dram_memory_used"),
        "on_chip_flash_used_kib": num("on_chip_flash_memory_used"),
        "off_chip_flash_used_kib": num("off_chip_flash_memory_used"),
        "nn_macs": int(num("nn_macs")),
        "weights_original_bytes": int(num("total_original_weights")),
        "weights_npu_encoded_bytes": int(num("total_npu_encoded_weights")),
        "passes": int(num("passes_after_fusing")),
    }


def run_vela(tflite_bytes: bytes, npu: dict, name: str = "model") -> NpuBuild:
    """Compile `tflite_bytes` (an int8 .tflite) with Vela for the target's `npu` table, in-process."""
    version = vela_version()
    if version is None:
        raise EdgecError(f"the target's NPU ({npu['accelerator']}) needs Arm's Vela compiler: pip install "
                         f"{VELA_PACKAGE}=={VELA_VERSION} (scripts/setup.sh installs it)")
    from ethosu.vela import vela

    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"
    with tempfile.TemporaryDirectory(prefix="edgec_vela_") as tmp:
        tmp_dir = Path(tmp)
        model = tmp_dir / f"{stem}.tflite"
        model.write_bytes(tflite_bytes)
        argv = [str(model), "--accelerator-config", npu["accelerator"], "--config", npu.get("vela_config",
                "Arm/vela.ini"), "--system-config", npu["system_config"], "--memory-mode", npu["memory_mode"],
                "--output-dir", str(tmp_dir / "out")]
        log: list[str] = []
        try:
            with _captured_output(log):
                rc = vela.main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # noqa: BLE001 - Vela raises its own error types; report them all the same way
            raise EdgecError(f"{name}: Vela {version} failed: {type(e).__name__}: {e}\n{_tail(''.join(log))}") \
                from None
        text = "".join(log)
        if rc != 0:
            raise EdgecError(f"{name}: Vela {version} failed (exit {rc}):\n{_tail(text)}")
        out = tmp_dir / "out" / f"{stem}_vela.tflite"
        csvs = sorted((tmp_dir / "out").glob(f"{stem}_summary_*.csv"))
        if not out.is_file() or not csvs:
            raise EdgecError(f"{name}: Vela {version} wrote no {out.name} or summary CSV:\n{_tail(text)}")
        data = out.read_bytes()
        summary = _read_summary(csvs[0])
    lines = text.splitlines()
    # Ops Vela left to the CPU, with its reason ("Warning (supported operators) operator: DIV, ofm: 'y'" and the
    # "Reason: ..." line after it).
    cpu_fallback = [f"{line.split('operator:', 1)[-1].strip()}: {nxt.strip()}"
                    for line, nxt in zip(lines, lines[1:] + [""]) if line.startswith("Warning (supported operators)")]
    counts = {}
    for line in lines:
        for key, label in (("vela_cpu_operators", "CPU operators = "), ("vela_npu_operators", "NPU operators = ")):
            if line.startswith(label):
                counts[key] = int(line[len(label):].split()[0])
    summary = {"accelerator": npu["accelerator"], "macs": int(npu["macs"]), "system_config": npu["system_config"],
               "memory_mode": npu["memory_mode"], "vela_version": version, **summary, **counts,
               "cpu_fallback": cpu_fallback}
    return NpuBuild(data, offline_offsets(data), summary, text)


@contextlib.contextmanager
def _captured_output(sink: list[str]):
    """Capture Python's and the C++ core's (file descriptors 1 and 2) output of the block into `sink`."""
    import ctypes
    import os
    import sys

    def flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass

    buf = io.StringIO()
    flush()
    with tempfile.TemporaryFile() as tmp:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield
        finally:
            flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            sink.append(buf.getvalue() + tmp.read().decode(errors="replace"))


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def npu_graph(graph: Graph, model_bytes: bytes | None, target: dict, source: str) -> tuple[Graph, NpuBuild]:
    """Compile the int8 `graph` for the target's NPU: Vela on `model_bytes` (the model file as given, when it is
    the int8 .tflite that `graph` was read from) or on `graph` exported to .tflite; returns Vela's graph (read
    by edgec's reader: ETHOSU ops + CPU-fallback ops) and the NpuBuild."""
    from edgec.frontends.tflite_reader import parse_tflite

    npu = target["npu"]
    if any(op.type == "ETHOSU" for op in graph.ops):
        raise EdgecError(f"{source}: this model was already compiled by Vela (it has 'ethos-u' custom ops); give "
                         "edgec the int8 .tflite from before Vela: it runs Vela itself for the target")
    if any(graph.t(o).dtype == "float32" for op in graph.ops if op.type != "DEQUANTIZE" for o in op.outputs):
        raise EdgecError(f"{source}: target {target['name']} has an Ethos-U NPU, which computes int8: "
                         "--precision float32 is not supported there")
    if model_bytes is None:
        from edgec.oracle.ir_export import graph_to_tflite

        model_bytes = graph_to_tflite(graph)
    build = run_vela(model_bytes, npu, Path(source).stem)
    vgraph = parse_tflite(build.tflite, f"{source} (after Vela)")
    rows = []
    for op in vgraph.ops:
        if op.type != "ETHOSU":
            continue
        if len(op.inputs) < 4:
            raise EdgecError(f"{source} (after Vela): {op.describe()} has {len(op.inputs)} inputs; expected command "
                             "stream, read-only blob, scratch, scratch_fast and the IFMs")
        cms, blob, scratch, fast = (vgraph.t(t) for t in op.inputs[:4])
        if not cms.is_const or not blob.is_const or scratch.is_const or fast.is_const:
            raise EdgecError(f"{source} (after Vela): {op.describe()}: unexpected operands (command stream and "
                             "read-only blob must be constant, scratch and scratch_fast in the arena)")
        info = check_stream(cms.data.tobytes(), npu, f"{source} (after Vela): {op.describe()}")
        for t in op.inputs[2:4] + op.inputs[4:] + op.outputs:
            if t not in build.offsets:
                raise EdgecError(f"{source} (after Vela): tensor {t} '{vgraph.t(t).name}' of {op.describe()} has "
                                 "no arena offset in Vela's OfflineMemoryAllocation")
        rows.append({"index": op.index, "command_stream_bytes": cms.nbytes, "read_only_bytes": blob.nbytes,
                     "scratch_bytes": scratch.nbytes, "scratch_fast_bytes": fast.nbytes,
                     "config_word": f"{info['config_word']:#010x}",
                     "ifms": [vgraph.t(t).name for t in op.inputs[4:]],
                     "ofms": [vgraph.t(t).name for t in op.outputs]})
    build.ethosu_ops = rows
    build.summary["partitions"] = len(rows)  # ETHOSU ops: one driver call each
    build.summary["cpu_ops"] = sum(1 for op in vgraph.ops if op.type != "ETHOSU")  # edgec's kernels
    build.summary["ethosu_ops"] = rows
    return vgraph, build
