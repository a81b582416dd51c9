"""The device side of on-device training checkpoints: edgec_train_quantize_layer (runtime_c/train) against
edgec.quantize.adapter_tables.slot_tables (byte for byte), and local-origin updates through the OTA receiver
(edgec_ota_apply_local, runtime_c/ota with EDGEC_OTA_LOCAL): the bank, its metadata, trial / confirm /
rollback / reboot, the counter floor, the stream it feeds (decoded by edgec.ota.format and rebuilt in Python),
and that nothing of it exists over the air or in a build without EDGEC_OTA_LOCAL.

The C driver (tests/train/checkpoint_driver.c) runs under AddressSanitizer and UBSan with the synthetic OTA
configuration of tests/test_ota_device.py (2 slots, 2 layers, 256-byte pages, write unit 8) on the RAM flash
HAL (EDGEC_FLASH_MEM)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_ota_device import (
    BANK,
    BASE_SHA,
    CORTEX_M4,
    CRYPTO,
    ERR,
    LAYERS,
    LAYOUT_SHA,
    OTA_DIR,
    PAGE,
    SAN,
    SLOTS,
    WARN,
    _config_header,
    _image,
    _patch,
    _region,
    _tables,
)

from edgec.errors import EdgecError
from edgec.ota import format as fmt
from edgec.quantize.adapter_tables import slot_tables

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "runtime_c" / "train"
DRIVER = ROOT / "tests" / "train" / "checkpoint_driver.c"
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
LOCAL = ["-DEDGEC_OTA_LOCAL", "-DEDGEC_OTA_LOCAL_TAP", "-DEDGEC_FLASH_MEM"]

TRAIN_ERR = {"ok": 0, "arg": -1, "range": -2, "dwarfs": -3}
STATE, FORMAT, SLOT, KEY, COUNTER, ARG = (ERR[n] for n in ("ERR_STATE", "ERR_FORMAT", "ERR_SLOT", "ERR_KEY",
                                                            "ERR_COUNTER", "ERR_ARG"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    return tmp_path_factory.mktemp("checkpoint")


@pytest.fixture(scope="module")
def driver(work: Path) -> Path:
    (work / "ota_cfg.h").write_text(_config_header(8))
    exe = work / "checkpoint_driver"
    srcs = [DRIVER, TRAIN / "edgec_train.c", TRAIN / "edgec_train_rng.c", OTA_DIR / "edgec_ota.c",
            OTA_DIR / "edgec_flash_mem.c", *(OTA_DIR / c for c in CRYPTO)]
    res = subprocess.run(["gcc", *WARN, "-O1", "-g", *SAN, *LOCAL, "-DEDGEC_TRAIN_TEST_RNG", f"-I{work}",
                          f"-I{OTA_DIR}", f"-I{TRAIN}", *map(str, srcs), "-lm", "-o", str(exe)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return exe


# ---------------------------------------------------------------------------------------------- quantize

def _case(a: np.ndarray, b: np.ndarray, ws: np.ndarray, rank: int) -> dict:
    return {"a": np.asarray(a, np.float32), "b": np.asarray(b, np.float32), "ws": np.asarray(ws, np.float32),
            "rank": rank}


def _run_quant(driver: Path, cases: list[dict]) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    blob = b""
    for c in cases:
        r, k = c["a"].shape
        oc = c["b"].shape[0]
        blob += struct.pack("<4i", r, k, oc, c["rank"]) + c["a"].tobytes() + c["b"].tobytes() + c["ws"].tobytes()
    out = subprocess.run([str(driver), "quant"], input=blob, capture_output=True, check=True, env=ENV).stdout
    res, off = [], 0
    for c in cases:
        k, oc, rank = c["a"].shape[1], c["b"].shape[0], c["rank"]
        rc = struct.unpack_from("<i", out, off)[0]
        off += 4
        aq = np.frombuffer(out, np.int8, rank * k, off).reshape(rank, k)
        off += rank * k
        bq = np.frombuffer(out, np.int8, oc * rank, off).reshape(oc, rank)
        off += oc * rank
        m = np.frombuffer(out, "<i4", 2 * oc, off).reshape(oc, 2)
        off += 8 * oc
        res.append((rc, aq, bq, m))
    assert off == len(out)
    return res


def _python(c: dict) -> tuple[str, tuple | None]:
    """slot_tables for one slot (the factors' float32 values as float64): ("ok", tables) or the error kind."""
    k, oc, r = c["a"].shape[1], c["b"].shape[0], c["a"].shape[0]
    factors = [(c["a"].astype(np.float64), c["b"].astype(np.float64))] if r else [None]
    try:
        aq, bq, m = slot_tables(c["ws"].astype(np.float64), factors, c["rank"], k, oc, "layer")
    except EdgecError as e:
        return ("range" if "overflow" in str(e) else "dwarfs" if "dwarfs" in str(e) else str(e)), None
    return "ok", (aq[0], bq[0], m[0])


def _no_branch(c: dict) -> tuple:
    k, oc, rank = c["a"].shape[1], c["b"].shape[0], c["rank"]
    return np.zeros((rank, k), np.int8), np.zeros((oc, rank), np.int8), np.tile(np.array([0, 1], np.int32), (oc, 1))


def _compare(driver: Path, cases: list[dict]) -> dict[str, int]:
    """Every case: the C result code and tables equal slot_tables' (tables or error); on an error the C
    outputs are the no-branch tables. Returns how many cases ended how."""
    outcomes: dict[str, int] = {}
    for i, (c, (rc, aq, bq, m)) in enumerate(zip(cases, _run_quant(driver, cases))):
        kind, want = _python(c)
        outcomes[kind] = outcomes.get(kind, 0) + 1
        assert rc == TRAIN_ERR[kind], (i, rc, kind)
        for name, got, exp in zip(("a_q", "b_q", "mult"), (aq, bq, m), want or _no_branch(c)):
            assert got.tobytes() == exp.astype(got.dtype).tobytes(), (i, name)
    return outcomes


def _ws_for(real: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Weight scales that put each channel's rescale (1/127) sb / ws at `real` (up to float32 rounding)."""
    return ((1 / 127) * sb / real).astype(np.float32)


def test_quantize_layer_matches_slot_tables(driver: Path) -> None:
    """Random factors of many shapes (r < rank, r == rank, rank 1, K 1 .. 600) and scales (factors from 1e-4 to
    1e3, weight scales from 1e-9 to 1e6, so some layers dwarf their base and some channels fall below 2^-47),
    zero rows of A, zero B, zero channels of B, values near the rounding halves, r = 0: byte for byte the
    tables (or the error) of slot_tables."""
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(400):
        rank = int(rng.integers(1, 9))
        r = int(rng.integers(1, rank + 1))
        k, oc = int(rng.integers(1, 600)), int(rng.integers(1, 40))
        a = rng.normal(0, 1, (r, k)) * 10.0 ** rng.uniform(-4, 3)
        b = rng.normal(0, 1, (oc, r)) * 10.0 ** rng.uniform(-4, 3)
        if rng.random() < 0.2:
            a[rng.integers(r)] = 0
        if rng.random() < 0.2:
            b[rng.integers(oc)] = 0
        if rng.random() < 0.1:
            b[:] = 0
        ws = 10.0 ** rng.uniform(-9, 6, oc) if rng.random() < 0.3 else np.abs(rng.normal(0.01, 0.005, oc)) + 1e-4
        cases.append(_case(a, b, ws, rank))
    # rounding halves: a row of max 127 with entries n + 0.5 (and B the same), positive and negative
    half = np.arange(-127, 127) + 0.5
    cases.append(_case(np.stack([np.append(half, 127.0), np.append(-half, -127.0)]),
                       np.stack([half[:2] * 0.25, [127.0, -63.5]]), [0.01, 0.02], 3))
    cases.append(_case(np.zeros((2, 5)), np.ones((3, 2)), [0.1, 0.1, 0.1], 2))  # A zero
    cases.append(_case(np.ones((2, 5)), np.zeros((3, 2)), [0.1, 0.1, 0.1], 2))  # B zero
    cases.append(_case(np.zeros((0, 5)), np.zeros((3, 0)), [0.1, 0.1, 0.1], 2))  # r = 0: no branch
    outcomes = _compare(driver, cases)
    print(f"quantize: {outcomes}")
    assert outcomes.get("ok", 0) > 300 and outcomes.get("dwarfs", 0) > 10


def test_quantize_layer_rescale_boundaries(driver: Path) -> None:
    """Channels placed by their weight scale at the rescale's edges: shift 62 (kept) and 63 (dropped: (0, 1)),
    shift 1 (the largest allowed), a multiplier that rounds to 2^15 (-> 2^14, exponent + 1), a zero channel;
    then shift 0 and the 2^15 rounding at 2^14 (both EDGEC_TRAIN_ERR_DWARFS)."""
    a = np.ones((1, 4))
    b = np.array([[1.0], [1.0], [1.0], [1.0], [1.0], [0.0]])
    sb = np.full(6, 1 / 127)  # max |B[c]| / 127 with A's row max 1
    almost = 1 - 2.0**-17
    real = np.array([2.0**-47.5, 2.0**-48.5, 2.0**13.5, almost * 2.0**-3, 0.5, 1.0])
    ws = _ws_for(real, sb)
    kind, want = _python(_case(a, b, ws, 1))
    assert kind == "ok"
    m = want[2]
    assert m[0, 1] == 62 and tuple(m[1]) == (0, 1) and m[2, 1] == 1 and tuple(m[3]) == (2**14, 17)
    assert tuple(m[5]) == (0, 1)
    cases = [_case(a, b, ws, 1), _case(a, b, ws, 2)]
    for bad in (2.0**14.5, almost * 2.0**14):
        cases.append(_case(a, b, _ws_for(np.array([0.5, 0.5, bad, 0.5, 0.5, 1.0]), sb), 1))
    assert _compare(driver, cases) == {"ok": 2, "dwarfs": 2}


def test_quantize_layer_int64_range(driver: Path) -> None:
    """|B t| >= 2^42 (r K >= 1,069,332 with full rows): EDGEC_TRAIN_ERR_RANGE where slot_tables raises, also
    when a channel would dwarf its base too (RANGE is checked first, as in slot_tables); just below (a size
    whose bound cannot reach it, and one where the exact bound is computed and stays below): the tables."""
    rng = np.random.default_rng(1)
    r, k = 16, 70_000
    full = np.where(rng.random((r, k)) < 0.5, -1.0, 1.0)
    b = np.full((2, r), 0.5)
    sparse = full.copy()
    sparse[:, k // 2:] = 1e-4  # quantizes to 0: sum |A| halves
    cases = [_case(full, b, [0.01, 0.01], r), _case(full, b, [1e-12, 0.01], r),
             _case(full[:, :66_000], b, [0.01, 0.01], r), _case(sparse, b, [0.01, 0.01], r)]
    assert _compare(driver, cases) == {"range": 2, "ok": 2}


def test_quantize_layer_argument_errors(driver: Path) -> None:
    """r > rank, a weight scale that is 0, negative, inf or NaN, a NaN or inf factor: EDGEC_TRAIN_ERR_ARG and
    nothing written (the driver fills the outputs with 0x5A)."""
    a, b, ws = np.ones((2, 3)), np.ones((4, 2)), np.full(4, 0.1)
    bad_ws = [np.array([0.1, 0.0, 0.1, 0.1]), np.array([0.1, -0.1, 0.1, 0.1]), np.array([np.inf, 0.1, 0.1, 0.1]),
              np.array([0.1, 0.1, 0.1, np.nan])]
    a_nan, b_inf = a.copy(), b.copy()
    a_nan[1, 2], b_inf[3, 0] = np.nan, -np.inf
    cases = [_case(a, b, ws, 1)] + [_case(a, b, w, 2) for w in bad_ws] + [_case(a_nan, b, ws, 2),
                                                                           _case(a, b_inf, ws, 2)]
    for rc, aq, bq, m in _run_quant(driver, cases):
        assert rc == TRAIN_ERR["arg"]
        assert set(aq.tobytes() + bq.tobytes() + m.tobytes()) == {0x5A}


# ---------------------------------------------------------------------------------------------- local updates

class Ota:
    """One scenario: files, and the driver's `ota` command on a region."""

    def __init__(self, driver: Path, work: Path, name: str, region: bytes):
        self.exe = driver
        self.dir = work / name
        self.dir.mkdir(exist_ok=True)
        self.region = self.file("region.bin", region)

    def file(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def run(self, script: str) -> list[str]:
        res = subprocess.run([str(self.exe), "ota", str(self.region), str(self.file("script", script.encode()))],
                             capture_output=True, text=True, env=ENV, timeout=120, check=False, cwd=self.dir)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout.splitlines()

    def saved(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


def _bank(region: bytes, b: int) -> bytes:
    return region[b * BANK:(b + 1) * BANK]


def _meta(region: bytes, b: int) -> dict:
    m = _bank(region, b)[-fmt.META_BYTES:]
    magic, seq, counter, aid, v0, v1, v2, flags, name, rank = struct.unpack_from("<4sIIIHHHH16sH", m)
    return {"valid": magic == b"EDGB" and zlib.crc32(m[:60]) == struct.unpack_from("<I", m, 60)[0], "seq": seq,
            "counter": counter, "id": aid, "version": (v0, v1, v2), "flags": flags,
            "name": name.split(b"\0")[0].decode("latin-1"), "rank": rank, "digest4": m[56:60],
            "confirmed": m[64:80] == fmt.CONFIRM_UNIT, "reverted": m[80:96] != b"\xff" * 16}


def _counter_pages(region: bytes) -> bytes:
    return region[2 * SLOTS * BANK:]


def _stored(region: bytes, slot: int) -> int:
    """The stored counter of a slot (docs/ota-format.md, "Counter pages")."""
    pages = _counter_pages(region)
    best, cur = None, None
    for p in range(2):
        magic, seq, nseq, zero = struct.unpack_from("<4sIII", pages, p * PAGE)
        if magic == b"EDGC" and nseq == seq ^ 0xFFFFFFFF and zero == 0 and (best is None or seq > best):
            best, cur = seq, pages[p * PAGE:(p + 1) * PAGE]
    c = 0
    for off in range(16, PAGE, 16) if cur is not None else ():
        s, ns, v, nv, tag = struct.unpack_from("<HHII4s", cur, off)
        if s == slot and ns == s ^ 0xFFFF and nv == v ^ 0xFFFFFFFF and tag == b"CNTR":
            c = max(c, v)
    return c


def _floor(region: bytes, slot: int) -> int:
    banks = [_meta(region, b) for b in (2 * slot, 2 * slot + 1)]
    return max([_stored(region, slot)] + [m["counter"] for m in banks if m["valid"] and m["confirmed"]])


def _assert_holds(region: bytes, b: int, image: bytes) -> None:
    """Bank b holds exactly the image's tables; every other byte before the metadata is erased."""
    want = bytearray(b"\xff" * (BANK - fmt.META_BYTES))
    for lay in LAYERS:
        for off, n in ((lay["a_offset"], lay["rank"] * lay["k"]), (lay["b_offset"], lay["oc"] * lay["rank"]),
                       (lay["m_offset"], 8 * lay["oc"])):
            want[off:off + n] = image[off:off + n]
    assert _bank(region, b)[:BANK - fmt.META_BYTES] == bytes(want)


def _factors(seed: int, ranks: list[int]) -> tuple[bytes, bytes, int]:
    """Trained float factors for each layer (`train` input), the image slot_tables makes of them and its
    effective rank."""
    rng = np.random.default_rng(seed)
    blob, tables = b"", []
    for lay, r in zip(LAYERS, ranks):
        a = rng.normal(0, 0.3, (r, lay["k"])).astype(np.float32)
        b = rng.normal(0, 0.3, (lay["oc"], r)).astype(np.float32)
        ws = (np.abs(rng.normal(0.3, 0.1, lay["oc"])) / 127).astype(np.float32)
        blob += struct.pack("<i", r) + a.tobytes() + b.tobytes() + ws.tobytes()
        aq, bq, m = slot_tables(ws.astype(np.float64), [(a.astype(np.float64), b.astype(np.float64))], lay["rank"],
                                lay["k"], lay["oc"], "layer")
        tables.append((aq[0].tobytes(), bq[0].tobytes(), m[0].astype("<i4").tobytes()))
    return blob, _image(tables), max(ranks)


def _info(line: str) -> dict:
    f = line.split()
    assert f[0] == "info"
    return {"rc": int(f[1]), "counter": int(f[2]), "seq": int(f[3]), "trial": int(f[4]), "rank": int(f[5]),
            "flags": int(f[6]), "id": int(f[7]), "version": tuple(map(int, f[8:11])), "name": f[11]}


def test_local_update_trial_confirm_reboot(driver: Path, work: Path) -> None:
    """Trained float factors -> edgec_train_quantize_layer -> edgec_ota_apply_local (the `train` command): the
    inactive bank holds exactly the slot_tables image, its metadata has the local flag, counter = floor, the
    given name, id and version, sequence + 1; the slot runs it on trial (slot state, info) and nothing else of
    the region changed; begin() and another local update wait for the trial; confirm makes it permanent across a
    reboot with the counter pages untouched (no entry: the floor stays 4); a signed patch with counter 4 is
    still refused and one with 5 applies."""
    ota = Ota(driver, work, "confirm", _region([(0, 4)]))
    factors, image, rank = _factors(3, [2, 4])
    fac = ota.file("factors.bin", factors)
    img = ota.file("image.bin", image)
    p4, p5 = ota.file("p4", _patch(_tables(9), 4)), ota.file("p5", _patch(_tables(9), 5))
    out = ota.run(f"""boot
save r0
train 0 {fac} ckpt 77 1 2 3
state
bank 0
info 0
save r1
begin
local 0 {img} again 1 0 0 0
confirm
info 0
save r2
boot
bank 0
info 0
save r3
apply {p4}
apply {p5}
confirm
save r4
""")
    assert out[:3] == ["boot 0", "train 0 0 0", f"state {BANK} {2 * BANK}"] and out[3] == "bank 1"
    assert _info(out[4]) == {"rc": 0, "counter": 4, "seq": 2, "trial": 1, "rank": rank, "flags": 1, "id": 77,
                             "version": (1, 2, 3), "name": "ckpt"}
    assert out[5:8] == [f"begin {STATE}", f"local {STATE}", "confirm 0"]
    assert _info(out[8])["trial"] == 0 and out[9:11] == ["boot 0", "bank 1"]
    assert _info(out[11]) == {**_info(out[4]), "trial": 0}
    assert out[12:] == [f"apply {COUNTER}", "apply 0", "confirm 0"]
    r0, r1, r2, r3, r4 = (ota.saved(f"r{i}") for i in range(5))
    _assert_holds(r1, 1, image)
    m = _meta(r1, 1)
    assert m["valid"] and not m["confirmed"] and not m["reverted"] and m["flags"] == fmt.FLAG_LOCAL
    assert (m["seq"], m["counter"], m["id"], m["version"], m["name"], m["rank"]) == (2, 4, 77, (1, 2, 3), "ckpt",
                                                                                      rank)
    assert r1[:BANK] == r0[:BANK] and r1[2 * BANK:] == r0[2 * BANK:]  # only the inactive bank was written
    assert _meta(r2, 1)["confirmed"] and _counter_pages(r2) == _counter_pages(r0)
    assert _floor(r0, 0) == _floor(r2, 0) == 4 and r3 == r2
    assert _stored(r4, 0) == 5 and _floor(r4, 0) == 5 and _meta(r4, 0)["seq"] == 3
    _assert_holds(r4, 1, image)  # the local checkpoint stays as the previous version


def test_local_update_rollback_and_reboot_restore(driver: Path, work: Path) -> None:
    """rollback() of a local trial and a reboot without confirm both leave the old bank byte for byte and the
    slot on it (the trial's revert unit written); a confirmed local update rolled back (no trial: the last
    updated slot) returns to the old bank too; an empty slot takes a local update into bank 2s."""
    ota = Ota(driver, work, "rollback", _region([(0, 4)]))
    t = _tables(11, rank=2)
    img = ota.file("image.bin", _image(t))
    out = ota.run(f"""boot
save r0
local 0 {img} tuned 5 0 1 0
bank 0
rollback
bank 0
state
save r1
local 0 {img} tuned 5 0 1 0
save r2
boot
bank 0
info 0
save r3
local 0 {img} tuned 5 0 1 0
confirm
rollback
bank 0
save r4
local 1 {img} - 6 0 0 1
bank 1
info 1
""")
    assert out[:7] == ["boot 0", "local 0", "bank 1", "rollback 0", "bank 0", f"state 0 {2 * BANK}", "local 0"]
    assert out[7:9] == ["boot 0", "bank 0"] and _info(out[9])["name"] == "builtin"
    assert out[10:14] == ["local 0", "confirm 0", "rollback 0", "bank 0"]
    assert out[14:16] == ["local 0", "bank 2"]
    assert _info(out[16]) == {"rc": 0, "counter": 0, "seq": 1, "trial": 1, "rank": 2, "flags": 1, "id": 6,
                              "version": (0, 0, 1), "name": "-"}
    r0, r1, r2, r3, r4 = (ota.saved(f"r{i}") for i in range(5))
    for r in (r1, r3, r4):
        assert _bank(r, 0) == _bank(r0, 0)
        assert _meta(r, 1)["valid"] and _meta(r, 1)["reverted"] and _meta(r, 1)["flags"] == 1
        assert _counter_pages(r) == _counter_pages(r0)
    _assert_holds(r2, 1, _image(t))
    assert _meta(r2, 1)["valid"] and not _meta(r2, 1)["reverted"]  # the new trial's bank was erased first
    assert _meta(r4, 1)["confirmed"] and _floor(r4, 0) == 4


def test_local_stream_is_a_valid_patch(driver: Path, work: Path) -> None:
    """The bytes apply_local feeds (tapped): edgec.ota.format.decode_patch accepts them (digest included); flags
    local, counter = the floor, key id 0, zero signature, the configuration's hashes, the records follow the
    layout and carry exactly the image; the same bytes as the patch edgec.ota.format encodes for them; the bank
    metadata's digest is the stream's. Replayed over the air (and a correctly signed patch with the local flag)
    they are refused with EDGEC_OTA_ERR_FORMAT."""
    ota = Ota(driver, work, "stream", _region([(0, 4), (1, 2)]))
    t0, t1 = _tables(12), _tables(13, rank=1)
    img0, img1 = ota.file("i0", _image(t0)), ota.file("i1", _image(t1))
    signed_local = ota.file("sl", _patch(t0, 9, flags=fmt.FLAG_LOCAL))
    tap0, tap1 = ota.dir / "tap0", ota.dir / "tap1"
    out = ota.run(f"""boot
local 0 {img0} first 258 1 0 0 {tap0}
save r0
confirm
local 1 {img1} second_one 4294967295 65535 0 7 {tap1}
save r1
rollback
apply {tap0}
apply {tap1}
apply {signed_local}
bank 0
bank 1
""")
    assert out == ["boot 0", "local 0", "confirm 0", "local 0", "rollback 0", f"apply {FORMAT}", f"apply {FORMAT}",
                   f"apply {FORMAT}", "bank 1", "bank -1"]
    for tap, image, tables, slot, counter, name, aid, version, region, bank in (
            (tap0, _image(t0), t0, 0, 4, "first", 258, (1, 0, 0), ota.saved("r0"), 1),
            (tap1, _image(t1), t1, 1, 2, "second_one", 0xFFFFFFFF, (65535, 0, 7), ota.saved("r1"), 2)):
        data = tap.read_bytes()
        patch = fmt.decode_patch(data, "tap")
        h = patch.header
        assert h.flags == fmt.FLAG_LOCAL and h.counter == counter == _floor(region, slot) and h.slot == slot
        assert (h.name, h.adapter_id, h.version, h.key_id) == (name, aid, version, bytes(8))
        assert (h.base_sha256, h.layout_sha256) == (BASE_SHA, LAYOUT_SHA) and patch.signature == bytes(64)
        report = {"model_sha256": BASE_SHA.hex(), "adapter_layout": LAYERS, "adapter_layout_sha256": LAYOUT_SHA.hex(),
                  "adapter_slots": SLOTS}
        fmt.check_binding(patch, report, "tap")
        assert [r.data for r in patch.records] == [blob for layer in tables for blob in layer]
        assert [r.scale for r in patch.records] == [np.float32(1 / 127), 0.0, 0.0] * len(LAYERS)
        recs = [fmt.Record(r.layer, r.tensor, r.dtype, r.dims, r.scale, r.data) for r in patch.records]
        header = fmt.Header(BASE_SHA, LAYOUT_SHA, name, aid, version, counter, slot, 3 * len(LAYERS), bytes(8),
                            fmt.payload_bytes(LAYERS), fmt.FLAG_LOCAL)
        assert fmt.encode_patch(header, recs, lambda d: bytes(64)) == data
        _assert_holds(region, bank, image)
        assert _meta(region, bank)["digest4"] == hashlib.sha256(data[:-fmt.TRAILER_BYTES]).digest()[:4]


def test_training_only_build_without_keys(driver: Path, work: Path) -> None:
    """keys = 0, key = NULL: boot accepts it; every signed patch is refused with EDGEC_OTA_ERR_KEY; local
    updates work (trial, confirm, reboot)."""
    ota = Ota(driver, work, "nokeys", _region())
    img = ota.file("i", _image(_tables(14)))
    p = ota.file("p", _patch(_tables(15), 1))
    out = ota.run(f"bootnokeys\napply {p}\nlocal 0 {img} t 1 1 0 0\nconfirm\nbootnokeys\nbank 0\napply {p}\n")
    assert out == ["boot 0", f"apply {KEY}", "local 0", "confirm 0", "boot 0", "bank 1", f"apply {KEY}"]


def test_local_update_refusals(driver: Path, work: Path) -> None:
    """Before boot: EDGEC_OTA_ERR_STATE; NULL image, name or version and a 16-character name: ERR_ARG; slots -1
    and 2: ERR_SLOT; none of them changes anything. A local update abandons an unfinished over-the-air update
    (which cannot be continued or finished afterwards) and works after a failed one."""
    ota = Ota(driver, work, "refusals", _region([(0, 4)]))
    t = _tables(16)
    img = ota.file("i", _image(t))
    p = ota.file("p", _patch(_tables(17), 5))
    out = ota.run(f"""local 0 {img} t 1 0 0 0
boot
save r0
localargs 0 {img}
bank 0
save r1
partial {p} 300
local 0 {img} t 1 0 0 0
finish
rollback
partial {p} 10
finish
local 0 {img} t 1 0 0 0
save r2
""")
    assert out == [f"local {STATE}", "boot 0", f"localargs {ARG} {ARG} {ARG} {ARG} {SLOT} {SLOT}", "bank 0",
                   "partial 0", "local 0", f"finish {STATE}", "rollback 0", "partial 0",
                   f"finish {ERR['ERR_TRUNCATED']}", "local 0"]
    assert ota.saved("r0") == ota.saved("r1")
    _assert_holds(ota.saved("r2"), 1, _image(t))


def _symbols(nm: str, obj: Path) -> str:
    return subprocess.run([nm, str(obj)], capture_output=True, text=True, check=True).stdout


def test_builds_without_local_and_code_sizes(work: Path) -> None:
    """Without EDGEC_OTA_LOCAL: no edgec_ota_apply_local (nor any other new symbol), its call does not compile,
    and the cortex-m4 -Os object has the receiver's size and state; with it: -Werror clean (host -pedantic and
    cortex-m4), sizes printed. The training runtime with edgec_train_quantize_layer builds -Werror for
    cortex-m4 too."""
    base = ["gcc", *WARN, "-pedantic", "-O2"]
    plain, local = work / "plain.o", work / "local.o"
    subprocess.run([*base, "-c", str(OTA_DIR / "edgec_ota.c"), "-o", str(plain)], check=True)
    subprocess.run([*base, *LOCAL, "-c", str(OTA_DIR / "edgec_ota.c"), "-o", str(local)], check=True)
    subprocess.run([*base, "-c", str(TRAIN / "edgec_train.c"), "-o", str(work / "train.o")], check=True)
    assert "edgec_ota_apply_local" not in _symbols("nm", plain) and "local_tap" not in _symbols("nm", plain)
    assert " T edgec_ota_apply_local" in _symbols("nm", local)
    call = work / "call.c"
    call.write_text('#include "edgec_ota.h"\n'
                    'int f(const uint8_t *i) { return edgec_ota_apply_local(0, i, "x", 1u, 0); }\n')
    res = subprocess.run([*base, f"-I{OTA_DIR}", "-c", str(call), "-o", str(work / "call.o")], capture_output=True,
                         text=True, check=False)
    assert res.returncode != 0 and "edgec_ota_apply_local" in res.stderr
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not found: cortex-m4 sizes not measured")
    sizes, nm = {}, cc.replace("gcc", "nm")
    for name, src, defs in (("receiver", OTA_DIR / "edgec_ota.c", []),
                            ("receiver + local", OTA_DIR / "edgec_ota.c", ["-DEDGEC_OTA_LOCAL"]),
                            ("train", TRAIN / "edgec_train.c", [])):
        obj = work / f"m4_{name.replace(' + ', '_')}.o"
        subprocess.run([cc, *WARN, *CORTEX_M4, *defs, "-c", str(src), "-o", str(obj)], check=True)
        out = subprocess.run([cc.replace("gcc", "size"), str(obj)], capture_output=True, text=True, check=True).stdout
        text, _, bss = map(int, out.splitlines()[1].split()[:3])
        sizes[name] = (text, bss)
        if name == "receiver":
            assert "apply_local" not in _symbols(nm, obj)
    print(f"cortex-m4 -Os (.text, .bss): {sizes}")
    assert sizes["receiver"][0] <= 2944 and sizes["receiver"][1] == sizes["receiver + local"][1] == 456
