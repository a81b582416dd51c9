"""`edgec patch create|inspect|verify`: adapter patches for a built project (docs/ota-format.md).

A patch holds one adapter's slot tables for an existing build. They are computed exactly as the build
computes them (edgec.passes.lora_slots binds and factors the adapter on the base model; the base's weight
scales and the slot layout come from the build report), so a patch of the adapter a build already holds is
byte-identical to that build's bank.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ota import format as fmt


def load_report(build_dir: Path) -> dict:
    path = Path(build_dir) / "edgec-report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgecError(f"{path}: cannot read the build report: {e}") from None
    if "adapter_layout" not in report:
        raise EdgecError(f"{build_dir}: this build has no adapter slots (build it with --adapter-mode slots)")
    return report


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m or any(int(v) > 0xFFFF for v in m.groups()):
        raise EdgecError(f"--version '{text}': expected MAJOR.MINOR.PATCH with numbers up to 65535")
    return tuple(int(v) for v in m.groups())


def _slot_for(report: dict, name: str, slot: int | None) -> int:
    if slot is not None:
        if not 0 <= slot < report["adapter_slots"]:
            raise EdgecError(f"--slot {slot}: the build has {report['adapter_slots']} slots")
        return slot
    named = [a["slot"] for a in report.get("adapters", []) if a["name"] == name]
    if named:
        return named[0]
    used = {a["slot"] for a in report.get("adapters", [])}
    free = [s for s in range(report["adapter_slots"]) if s not in used]
    if not free:
        raise EdgecError(f"no slot holds an adapter named '{name}' and no slot is empty; choose one with --slot")
    return free[0]


def slot_records(report: dict, graph, adapter, adapter_map: dict | None) -> list[fmt.Record]:
    """The three records per layout layer for `adapter` on the base `graph` (as read from the model file)."""
    from edgec.passes.lora_slots import plan_slots
    from edgec.quantize.adapter_tables import slot_tables

    plan = plan_slots(graph, [adapter], 1, adapter_map)
    by_name = {graph.t(tid).name: factors[0] for tid, factors in plan.layers.items()}
    layout = report["adapter_layout"]
    missing = sorted(set(by_name) - {lay["weight"] for lay in layout})
    if missing:
        raise EdgecError(f"adapter '{adapter.name}' adapts {', '.join(missing)}, which this build has no slot tables "
                         "for (build with an adapter on those layers)")
    records = []
    for i, lay in enumerate(layout):
        factors = by_name.get(lay["weight"])
        if factors is not None and factors[0].shape[0] > lay["rank"]:
            raise EdgecError(f"adapter '{adapter.name}': rank {factors[0].shape[0]} on '{lay['weight']}' exceeds the "
                             f"build's slot rank {lay['rank']} for that layer")
        a_q, b_q, m = slot_tables(np.asarray(lay["weight_scales"], np.float64), [factors], lay["rank"], lay["k"],
                                  lay["oc"], f"layer '{lay['weight']}'")
        records += [fmt.Record(i, 0, 1, (lay["rank"], lay["k"]), 1.0 / 127.0, a_q[0].tobytes()),
                    fmt.Record(i, 1, 1, (lay["oc"], lay["rank"]), 0.0, b_q[0].tobytes()),
                    fmt.Record(i, 2, 2, (lay["oc"], 2), 0.0, m[0].astype("<i4").tobytes())]
    return records


def create_patch(build_dir: Path, name: str, peft_dir: Path, version: str, counter: int, key_path: Path,
                 model: Path | None = None, adapter_map: Path | None = None, slot: int | None = None) -> bytes:
    """Patch bytes for adapter NAME=PEFT_DIR on the build in `build_dir`, signed with `key_path`."""
    import hashlib

    from edgec.frontends.peft_reader import read_adapter
    from edgec.ota.keys import load_private
    from edgec.passes.lora_slots import adapter_id
    from edgec.pipeline import load_adapter_map, load_model

    report = load_report(build_dir)
    if not 0 <= counter <= 0xFFFFFFFF:
        raise EdgecError(f"--counter {counter}: expected 0..4294967295")
    if len(name.encode()) > 15:
        raise EdgecError(f"adapter name '{name}': at most 15 characters in a patch")
    model = Path(model or report["model_path"])
    if not model.is_file():
        raise EdgecError(f"{model}: the build's base model is not there; give it with --model")
    if hashlib.sha256(model.read_bytes()).hexdigest() != report["model_sha256"]:
        raise EdgecError(f"{model}: not the model this build was made from (SHA-256 differs)")
    key = load_private(key_path)
    from cryptography.hazmat.primitives import serialization

    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    trusted = report.get("ota", {}).get("key_ids")
    if trusted is not None and fmt.key_id(public).hex() not in trusted:
        raise EdgecError(f"{key_path}: key id {fmt.key_id(public).hex()} is not compiled into this build "
                         f"(its keys: {', '.join(trusted)})")
    graph, _ = load_model(model, report.get("input_layout", "model"))
    adapter = read_adapter(name, peft_dir)
    records = slot_records(report, graph, adapter, load_adapter_map(adapter_map))
    header = fmt.Header(bytes.fromhex(report["model_sha256"]), bytes.fromhex(report["adapter_layout_sha256"]), name,
                        adapter_id(adapter), parse_version(version), counter, _slot_for(report, name, slot),
                        len(records), fmt.key_id(public), sum(16 + len(r.data) for r in records))
    return fmt.encode_patch(header, records, key.sign)


def describe(patch: fmt.Patch) -> dict:
    h = patch.header
    return {"format_version": fmt.FORMAT_VERSION, "adapter": h.name, "adapter_id": h.adapter_id,
            "version": ".".join(map(str, h.version)), "security_counter": h.counter, "slot": h.slot,
            "base_sha256": h.base_sha256.hex(), "layout_sha256": h.layout_sha256.hex(), "key_id": h.key_id.hex(),
            "local_origin": bool(h.flags & fmt.FLAG_LOCAL), "records": len(patch.records),
            "payload_bytes": h.payload_bytes, "bytes": fmt.HEADER_BYTES + h.payload_bytes + fmt.TRAILER_BYTES,
            "sha256": patch.digest.hex()}


def verify_patch(data: bytes, public_raw: bytes, report: dict | None, where: str) -> dict:
    """Structure, digest, signature with `public_raw` and (with a build report) the binding to the build;
    EdgecError naming the failure. Returns the description."""
    from edgec.ota.keys import verify_signature

    patch = fmt.decode_patch(data, where)
    if patch.header.key_id != fmt.key_id(public_raw):
        raise EdgecError(f"{where}: signed with key id {patch.header.key_id.hex()}, the given public key is "
                         f"{fmt.key_id(public_raw).hex()}")
    if not verify_signature(public_raw, patch.signature, patch.digest):
        raise EdgecError(f"{where}: byte {len(data) - 64}: the Ed25519 signature is not valid for this key")
    if report is not None:
        fmt.check_binding(patch, report, where)
    return describe(patch)
