"""OTA adapter patches end to end: a KWS firmware built with --ota-pubkey receives a signed patch through its
own receiver (host build and QEMU cortex-m4, patch read through stdio / semihosting), runs the new adapter,
and reverts after a simulated reset without confirm. Oracles: a build with the new adapter compiled into the
slot (bit-exact), the build without the patch (bit-exact after the revert), host vs QEMU (bit-exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgec.cli.main import main
from edgec.cli.verify import run_project
from edgec.ota import format as fmt
from edgec.ota.keys import generate_keypair
from edgec.ota.patch import create_patch
from edgec.pipeline import build
from support import kws_with_adapters, require_target

ONE = 1 << 16


@pytest.fixture(scope="module")
def fw(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("ota_fw")
    model, graph = kws_with_adapters(work, {"a": (4, 1), "b": (2, 2), "c": (4, 3)})
    key, pub = generate_keypair(work / "key")
    opts = {"adapter_mode": "slots", "adapter_map": work / "map.json"}
    report = build(model, "cortex-m4", work / "ota", adapters=[("a", work / "a"), ("b", work / "b")],
                   ota_pubkeys=[pub], **opts)
    # The expected result of the update: adapter c's tables in slot 0.
    want_report = build(model, "cortex-m4", work / "want", adapters=[("a", work / "c"), ("b", work / "b")], **opts)
    patch = work / "a2.patch"
    patch.write_bytes(create_patch(work / "ota", "a", work / "c", "2.0.0", 1, key, adapter_map=work / "map.json"))
    x = graph.t(graph.inputs[0])
    rng = np.random.default_rng(7)
    inputs = [[np.clip(np.round(rng.normal(x.zero_point, 30, x.shape)), -128, 127).astype(np.int8)]
              for _ in range(4)]
    return {"model": model, "work": work, "report": report, "want_report": want_report, "patch": patch,
            "inputs": inputs, "key": key, "pub": pub}


def _run(fw, project: str, on: str, tag: str, **kw):
    report = fw["want_report"] if project == "want" else fw["report"]
    return run_project(fw["work"] / project, report, fw["inputs"], on, fw["work"] / f"run_{tag}", [[ONE, 0]], **kw)


def test_ota_build_report(fw) -> None:
    ota = fw["report"]["ota"]
    assert ota["banks_per_slot"] == 2 and len(ota["key_ids"]) == 1
    assert ota["region_bytes"] == 2 * 2 * fw["report"]["adapter_bank_bytes"] + 2 * fw["report"]["adapter_page_bytes"]


def test_patch_applies_on_host_bitexact_with_the_compiled_adapter(fw) -> None:
    got, measured = _run(fw, "ota", "host", "host_patch", patch=fw["patch"])
    assert (measured["ota_result"], measured["ota_slot"], measured["active_version"], measured["ota_trial"]) == \
        (0, 0, "2.0.0", True)
    want, _ = _run(fw, "want", "host", "host_want")
    old, _ = _run(fw, "ota", "host", "host_old")
    assert all(np.array_equal(g[0], w[0]) for g, w in zip(got, want))
    assert any(not np.array_equal(g[0], o[0]) for g, o in zip(got, old))


def test_qemu_applies_then_reverts_after_reset(fw) -> None:
    require_target()
    got, measured = _run(fw, "ota", "qemu", "qemu_patch", patch=fw["patch"], resets=(2,))
    assert measured["ota_result"] == 0 and measured["active_version"] == "2.0.0"
    want, _ = _run(fw, "want", "host", "host_want2")
    old, _ = _run(fw, "ota", "host", "host_old2")
    # Records 0-1 ran the new adapter; a reset without confirm before record 2 reverted to the old one.
    assert all(np.array_equal(got[i][0], want[i][0]) for i in (0, 1))
    assert all(np.array_equal(got[i][0], old[i][0]) for i in (2, 3))
    host, _ = _run(fw, "ota", "host", "host_patch_reset", patch=fw["patch"], resets=(2,))
    assert all(np.array_equal(g[0], h[0]) for g, h in zip(got, host))


def test_rejected_patches_leave_the_adapter(fw, tmp_path: Path) -> None:
    w = fw["work"]
    data = fw["patch"].read_bytes()
    tampered = bytearray(data)
    tampered[200] ^= 1
    (tmp_path / "tampered.patch").write_bytes(bytes(tampered))
    (tmp_path / "replay.patch").write_bytes(create_patch(w / "ota", "a", w / "c", "2.0.0", 0, fw["key"],
                                                         adapter_map=w / "map.json"))
    # The same patch signed by a key the firmware does not know.
    other = Ed25519PrivateKey.generate()
    patch = fmt.decode_patch(data)
    patch.header.key_id = fmt.key_id(other.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    (tmp_path / "foreign.patch").write_bytes(fmt.encode_patch(patch.header, patch.records, other.sign))
    old, _ = _run(fw, "ota", "host", "host_old3")
    np.save(tmp_path / "x.npy", np.stack([r[0] for r in fw["inputs"]]))
    for name, code in (("tampered", -17), ("replay", -15), ("foreign", -16)):
        res = CliRunner().invoke(main, ["run", str(w / "ota"), "--input", str(tmp_path / "x.npy"), "--apply-patch",
                                        str(tmp_path / f"{name}.patch"), "--activate", "a", "-o",
                                        str(tmp_path / "y.npy"), "--json"])
        assert res.exit_code == 1, (name, res.output)
        result = json.loads(res.output.strip().splitlines()[-1])
        assert result["ota_result"] == code, (name, result)
        got = np.load(tmp_path / "y.npy")
        assert np.array_equal(got, np.stack([o[0] for o in old]).reshape(got.shape)), name
