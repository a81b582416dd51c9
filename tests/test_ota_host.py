"""OTA patches, host side: `edgec keygen`, `edgec patch create|inspect|verify`. Oracles: the build's own slot
bank (a patch of the adapter the build holds must carry exactly its bytes), `cryptography` (signatures), and
clear refusals (exit 2) for tampered, foreign and mismatched patches; the patch parser is fuzzed."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgec.cli.main import main
from edgec.errors import EdgecError
from edgec.frontends.peft_writer import synthetic_adapter
from edgec.frontends.tflite_reader import read_tflite
from edgec.ota import format as fmt
from edgec.pipeline import build
from support import kws_with_adapters, shared_model


def _cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def ota(tmp_path_factory) -> dict:
    """The int8 KWS model with two synthetic adapters in slots (a in slot 0, b in slot 1, one empty slot)."""
    work = tmp_path_factory.mktemp("ota")
    model, _ = kws_with_adapters(work, {"a": (4, 1), "b": (2, 2), "c": (4, 3)})
    report = build(model, "host", work / "out", adapters=[("a", work / "a"), ("b", work / "b")],
                   adapter_mode="slots", adapter_map=work / "map.json", slots=3)
    code, out = _cli("keygen", "-o", work / "key", "--json")
    assert code == 0, out
    return {"model": model, "work": work, "report": report, "keygen": json.loads(out)}


def _banks(out_dir: Path, report: dict) -> list[bytes]:
    """The bank images in src/adapters.c (little-endian int32 words)."""
    src = (out_dir / "src" / "adapters.c").read_text()
    body = src[src.index("edgec_adapter_banks["):]
    body = body[body.index("= {") + 3:body.index("};")]
    words = [int(v) for v in re.findall(r"-?\d+", body.replace("(-2147483647 - 1)", str(-(2**31))))]
    data = np.array(words, "<i4").tobytes()
    n = report["adapter_bank_bytes"]
    return [data[i * n:(i + 1) * n] for i in range(report["adapter_slots"])]


def _create(ota, name: str, out: str, *extra) -> tuple[int, str]:
    w = ota["work"]
    return _cli("patch", "create", "--build", w / "out", "--adapter", f"{name}={w / name}", "--version", "1.2.3",
                "--counter", "7", "--key", w / "key", "--adapter-map", w / "map.json", "-o", w / out, "--json",
                *extra)


def test_keygen_files(ota) -> None:
    key = ota["work"] / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in (ota["work"] / "key.pub").read_bytes()
    code, out = _cli("keygen", "-o", key)
    assert code == 2 and "already exists" in out
    code, out = _cli("keygen", "-o", ota["work"] / "new" / "keys" / "release")  # as in the README
    assert code == 0 and (ota["work"] / "new" / "keys" / "release.pub").is_file(), out


def test_patch_of_the_built_adapter_is_its_bank(ota) -> None:
    code, out = _create(ota, "a", "a.patch")
    assert code == 0, out
    info = json.loads(out)
    assert (info["adapter"], info["slot"], info["version"], info["security_counter"]) == ("a", 0, "1.2.3", 7)
    patch = fmt.decode_patch((ota["work"] / "a.patch").read_bytes())
    bank = _banks(ota["work"] / "out", ota["report"])[0]
    layout = ota["report"]["adapter_layout"]
    assert len(patch.records) == 3 * len(layout)
    for r in patch.records:
        lay = layout[r.layer]
        offset = (lay["a_offset"], lay["b_offset"], lay["m_offset"])[r.tensor]
        assert bank[offset:offset + len(r.data)] == r.data


def test_new_adapter_goes_to_the_empty_slot_and_verifies(ota) -> None:
    code, out = _create(ota, "c", "c.patch")
    assert code == 0 and json.loads(out)["slot"] == 2, out
    w = ota["work"]
    code, out = _cli("patch", "verify", w / "c.patch", "--pub", w / "key.pub", "--build", w / "out", "--json")
    assert code == 0 and json.loads(out)["valid"] is True, out
    code, out = _cli("patch", "inspect", w / "c.patch", "--json")
    info = json.loads(out)
    assert code == 0 and info["key_id"] == ota["keygen"]["key_id"]
    assert info["base_sha256"] == ota["report"]["model_sha256"]
    assert info["layout_sha256"] == ota["report"]["adapter_layout_sha256"]


def test_refusals(ota, tmp_path: Path) -> None:
    w = ota["work"]
    assert _create(ota, "c", "c2.patch")[0] == 0
    data = (w / "c2.patch").read_bytes()
    # Another key.
    assert _cli("keygen", "-o", tmp_path / "other")[0] == 0
    code, out = _cli("patch", "verify", w / "c2.patch", "--pub", tmp_path / "other.pub")
    assert code == 2 and "key id" in out
    # One flipped bit anywhere: the digest (or the structure) catches it; in the signature, the signature does.
    for pos in (0, 20, 130, len(data) // 2, len(data) - 90, len(data) - 10):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        (tmp_path / "bad.patch").write_bytes(bytes(bad))
        code, out = _cli("patch", "verify", tmp_path / "bad.patch", "--pub", w / "key.pub")
        assert code == 2 and "byte" in out, (pos, out)
        assert "Traceback" not in out
    # Truncated.
    (tmp_path / "short.patch").write_bytes(data[:-1])
    code, out = _cli("patch", "inspect", tmp_path / "short.patch")
    assert code == 2 and "byte 12" in out
    # A patch for another build (other base model).
    other = build(shared_model("tflite/ad01_int8.tflite"), "host", tmp_path / "ad01")
    assert "adapter_layout" not in other
    code, out = _cli("patch", "verify", w / "c2.patch", "--pub", w / "key.pub", "--build", tmp_path / "ad01")
    assert code == 2 and "no adapter slots" in out
    # A key the build was not made for, a bad version, a rank larger than the build's.
    code, out = _create(ota, "c", "x.patch", "--slot", "9")
    assert code == 2 and "--slot 9" in out
    code, out = _cli("patch", "create", "--build", w / "out", "--adapter", f"c={w / 'c'}", "--version", "1.2",
                     "--counter", "1", "--key", w / "key", "--adapter-map", w / "map.json", "-o", w / "x.patch")
    assert code == 2 and "MAJOR.MINOR.PATCH" in out
    synthetic_adapter(read_tflite(ota["model"]), tmp_path / "big", rank=8, seed=4)
    code, out = _cli("patch", "create", "--build", w / "out", "--adapter", f"big={tmp_path / 'big'}", "--version",
                     "1.0.0", "--counter", "1", "--key", w / "key", "--adapter-map", w / "map.json", "-o",
                     tmp_path / "big.patch")
    assert code == 2 and "exceeds the build's slot rank" in out
    assert not (tmp_path / "big.patch").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_patch_parser(ota, data) -> None:
    """Mutated patches: the parser raises EdgecError naming a byte offset, or returns a patch that re-encodes
    to exactly the input; never another exception."""
    path = ota["work"] / "fuzz_seed.patch"
    if not path.exists():
        assert _create(ota, "b", "fuzz_seed.patch")[0] == 0
    blob = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        if not blob:
            break
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if kind == "flip":
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        patch = fmt.decode_patch(bytes(blob))
    except EdgecError as e:
        assert "byte" in str(e)
        return
    # Accepted only if the structure re-encodes to exactly these bytes (digest included).
    assert patch.signed_bytes + patch.digest + patch.signature == bytes(blob)
