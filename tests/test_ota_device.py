"""OTA receiver on the device side (runtime_c/ota/edgec_ota.c): trial/confirm/rollback semantics, tampering,
truncation, power cuts at every flash operation, fuzzing, the RAM flash HAL, the cortex-m4 code size and a run
under QEMU.

The C driver (tests/ota/ota_driver.c) runs the receiver under AddressSanitizer and UBSan with a synthetic
configuration written here (2 slots, 2 layers, 256-byte pages, write units of 8 bytes, and variants with 1 and
16); patches and bank metadata come from edgec.ota.format and `cryptography` Ed25519 keys, so the format is
checked against the Python implementation. The heavy loops (every bit of a patch, every flash operation, the
fuzzing) run inside the driver."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgec.ota import format as fmt

ROOT = Path(__file__).resolve().parents[1]
OTA_DIR = ROOT / "runtime_c" / "ota"
DRIVER = ROOT / "tests" / "ota" / "ota_driver.c"
CRYPTO = ["edgec_sha256.c", "edgec_sha512.c", "edgec_ed25519.c"]
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
CORTEX_M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os"]

ERR = {m.group(1): int(m.group(2))
       for m in re.finditer(r"#define EDGEC_OTA_(ERR_\w+) \((-\d+)\)", (OTA_DIR / "edgec_ota.h").read_text())}
STATE, FORMAT, BASE, LAYOUT, SLOT = ERR["ERR_STATE"], ERR["ERR_FORMAT"], ERR["ERR_BASE"], ERR["ERR_LAYOUT"], ERR["ERR_SLOT"]
COUNTER, KEY, DIGEST, SIGNATURE = ERR["ERR_COUNTER"], ERR["ERR_KEY"], ERR["ERR_DIGEST"], ERR["ERR_SIGNATURE"]
TRUNCATED, LENGTH, ARG = ERR["ERR_TRUNCATED"], ERR["ERR_LENGTH"], ERR["ERR_ARG"]

PAGE = 256
SLOTS = 2
BASE_SHA = hashlib.sha256(b"the base model").digest()


def _layout() -> tuple[list[dict], int]:
    """Two adapted layers, offsets as the build assigns them (A, B, 4-aligned rescale table, next layer)."""
    layers, off = [], 0
    for op_index, op_type, k, oc, rank in [(0, "FULLY_CONNECTED", 10, 5, 3), (2, "CONV_2D", 7, 3, 4)]:
        a = off
        b = a + rank * k
        m = -(-(b + oc * rank) // 4) * 4
        off = m + 8 * oc
        layers.append({"op_index": op_index, "op_type": op_type, "k": k, "oc": oc, "rank": rank,
                       "a_offset": a, "b_offset": b, "m_offset": m})
    return layers, off


LAYERS, LAYOUT_BYTES = _layout()
LAYOUT_SHA = fmt.layout_sha256(LAYERS, LAYOUT_BYTES)
BANK = -(-(-(-LAYOUT_BYTES // 16) * 16 + fmt.META_BYTES) // PAGE) * PAGE
REGION = 2 * SLOTS * BANK + 2 * PAGE


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"key %d" % seed).digest())


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


KEY_A, KEY_B, KEY_C = _key(1), _key(2), _key(3)  # A and B are compiled in, C is not


def _tables(seed: int, rank: int | None = None) -> list[tuple[bytes, bytes, bytes]]:
    """Per layer (A, B, rescale) bytes; rows of A / columns of B from `rank` on are zero (a smaller adapter
    zero-padded to the layout rank)."""
    rng = np.random.default_rng(seed)
    out = []
    for lay in LAYERS:
        r = lay["rank"] if rank is None else min(rank, lay["rank"])
        a = rng.integers(-127, 128, (lay["rank"], lay["k"]), dtype=np.int8)
        a[:r][a[:r] == 0] = 1
        a[r:] = 0
        a[:r, 0] = 127  # every used row is non-zero, as the build scales it
        b = rng.integers(-127, 128, (lay["oc"], lay["rank"]), dtype=np.int8)
        b[:, r:] = 0
        m = np.stack([rng.integers(1 << 14, 1 << 15, lay["oc"]), rng.integers(10, 40, lay["oc"])], 1).astype("<i4")
        out.append((a.tobytes(), b.tobytes(), m.tobytes()))
    return out


def _image(tables) -> bytes:
    img = bytearray(LAYOUT_BYTES)
    for lay, (a, b, m) in zip(LAYERS, tables):
        img[lay["a_offset"]:lay["a_offset"] + len(a)] = a
        img[lay["b_offset"]:lay["b_offset"] + len(b)] = b
        img[lay["m_offset"]:lay["m_offset"] + len(m)] = m
    return bytes(img)


def _records(tables) -> list[fmt.Record]:
    recs = []
    for i, (lay, data) in enumerate(zip(LAYERS, tables)):
        for (tensor, dtype, d0, d1), blob in zip(fmt.record_shapes(lay), data):
            recs.append(fmt.Record(i, tensor, dtype, (d0, d1), 1 / 127 if tensor == 0 else 0.0, blob))
    return recs


def _header(counter: int, slot: int = 0, key=KEY_A, name: str = "tuned", adapter_id: int = 0xA1B2C3D4,
            version=(2, 1, 0), **kw) -> fmt.Header:
    args = {"base_sha256": BASE_SHA, "layout_sha256": LAYOUT_SHA, "name": name, "adapter_id": adapter_id,
            "version": version, "counter": counter, "slot": slot, "records": 3 * len(LAYERS),
            "key_id": fmt.key_id(_raw(key)), "payload_bytes": fmt.payload_bytes(LAYERS)}
    args.update(kw)
    return fmt.Header(**args)


def _patch(tables, counter: int, slot: int = 0, key=KEY_A, signer=None, **kw) -> bytes:
    return fmt.encode_patch(_header(counter, slot, key, **kw), _records(tables), (signer or key).sign)


def _resign(patch: bytes, edits: dict[int, bytes], key=KEY_A) -> bytes:
    """`patch` with bytes replaced in its signed part, with a correct digest and signature again."""
    body = bytearray(patch[:-fmt.TRAILER_BYTES])
    for off, data in edits.items():
        body[off:off + len(data)] = data
    digest = hashlib.sha256(body).digest()
    return bytes(body) + digest + key.sign(digest)


BUILTIN = _tables(100)
BUILTIN_ID, BUILTIN_RANK = 0x1234, 4


def _region(counter_entries: list[tuple[int, int]] | None = None, page_seq: int = 1, fill: int = 0) -> bytes:
    """Bank 0 (slot 0) holds the built-in adapter (sequence 1, counter 0, confirmed); slot 1 is empty; the
    counter pages are erased, or page 0 holds `counter_entries` (+ `fill` filler entries of slot 1)."""
    img = _image(BUILTIN)
    meta = fmt.bank_metadata(1, 0, BUILTIN_ID, (1, 0, 0), 0, "builtin", BUILTIN_RANK, hashlib.sha256(img).digest(),
                             confirmed=True)
    region = bytearray(b"\xff" * REGION)
    region[:len(img)] = img
    region[BANK - len(meta):BANK] = meta
    if counter_entries is not None:
        page = bytearray(b"\xff" * PAGE)
        page[:16] = b"EDGC" + struct.pack("<III", page_seq, page_seq ^ 0xFFFFFFFF, 0)
        entries = list(counter_entries) + [(1, 0)] * fill
        for i, (s, c) in enumerate(entries):
            page[16 + 16 * i:32 + 16 * i] = struct.pack("<HHII", s, s ^ 0xFFFF, c, c ^ 0xFFFFFFFF) + b"CNTR"
        region[2 * SLOTS * BANK:2 * SLOTS * BANK + PAGE] = page
    return bytes(region)


def _c_bytes(data: bytes) -> str:
    return ", ".join(f"0x{b:02x}" for b in data)


def _config_header(write_bytes: int) -> str:
    layers = ",\n".join(f"    {{ {l['a_offset']}u, {l['b_offset']}u, {l['m_offset']}u, {l['rank']}u, {l['k']}u, "
                        f"{l['oc']}u }}" for l in LAYERS)
    keys = ",\n".join(f"    {{ {{ {_c_bytes(fmt.key_id(_raw(k)))} }}, {{ {_c_bytes(_raw(k))} }} }}"
                      for k in (KEY_A, KEY_B))
    return (f"#define CFG_SLOTS {SLOTS}\n#define CFG_BANK {BANK}u\n#define CFG_PAGE {PAGE}u\n"
            f"#define CFG_WB {write_bytes}u\n#define CFG_LAYERS {len(LAYERS)}\n#define CFG_KEYS 2u\n"
            f"static const edgec_ota_layer_t cfg_layers[] = {{\n{layers}\n}};\n"
            f"static const edgec_ota_key_t cfg_keys[] = {{\n{keys}\n}};\n"
            f"static const uint8_t cfg_base[32] = {{ {_c_bytes(BASE_SHA)} }};\n"
            f"static const uint8_t cfg_layout[32] = {{ {_c_bytes(LAYOUT_SHA)} }};\n")


# ---------------------------------------------------------------------------------------------- build

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    return tmp_path_factory.mktemp("ota_device")


@pytest.fixture(scope="module")
def crypto_objs(work) -> list[Path]:
    objs = []
    for name in CRYPTO:
        obj = work / (name[:-2] + ".o")
        subprocess.run(["gcc", *WARN, "-O2", "-g", *SAN, "-c", str(OTA_DIR / name), "-o", str(obj)], check=True)
        objs.append(obj)
    return objs


_drivers: dict = {}


def _driver(work: Path, crypto_objs: list[Path], write_bytes: int, sim: bool = True) -> Path:
    key = (work, write_bytes, sim)
    if key not in _drivers:
        d = work / f"wb{write_bytes}{'' if sim else '_mem'}"
        d.mkdir(exist_ok=True)
        (d / "ota_cfg.h").write_text(_config_header(write_bytes))
        srcs = [DRIVER, OTA_DIR / "edgec_ota.c"] + ([] if sim else [OTA_DIR / "edgec_flash_mem.c"])
        defs = ["-DSIM_FLASH"] if sim else ["-DEDGEC_FLASH_MEM"]
        exe = d / "ota_driver"
        res = subprocess.run(["gcc", *WARN, "-O1", "-g", *SAN, *defs, f"-I{d}", f"-I{OTA_DIR}", *map(str, srcs),
                              *map(str, crypto_objs), "-o", str(exe)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        _drivers[key] = exe
    return _drivers[key]


class Run:
    """Files for one test and calls of the driver."""

    def __init__(self, work: Path, crypto_objs, name: str, write_bytes: int = 8, region: bytes | None = None,
                 sim: bool = True):
        self.exe = _driver(work, crypto_objs, write_bytes, sim)
        self.dir = work / name
        self.dir.mkdir(exist_ok=True)
        self.region = self.file("region.bin", region if region is not None else _region())

    def file(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def __call__(self, *args, timeout: float = 120) -> str:
        # the receiver does not allocate; the driver keeps its files until exit
        env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
        res = subprocess.run([str(self.exe), str(self.region), *map(str, args)], capture_output=True, text=True,
                             timeout=timeout, env=env, check=False)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]
        return out

    def script(self, text: str) -> str:
        return self("script", self.file("script.txt", text.encode()))


# ---------------------------------------------------------------------------------------------- tests

def _state_bytes(nm: str, obj: Path) -> int:
    """Size of the receiver's static state (the object `S`)."""
    out = subprocess.run([nm, "-S", str(obj)], capture_output=True, text=True, check=True).stdout
    return next(int(f[1], 16) for f in map(str.split, out.splitlines()) if len(f) == 4 and f[3] == "S")


def test_compiles_warning_free_and_sizes(work) -> None:
    """-std=c99 -Wall -Wextra -Werror (+ -pedantic on the host); arm-none-eabi-gcc for cortex-m4 -Os: .text
    of the receiver and of the receiver + crypto (budget 8 KB), RAM of the receiver state."""
    for src in ["edgec_ota.c", "edgec_flash_mem.c"]:
        for extra in ([], ["-DEDGEC_FLASH_MEM"]):
            subprocess.run(["gcc", *WARN, "-pedantic", "-O2", *extra, "-c", str(OTA_DIR / src), "-o",
                            str(work / "w.o")], check=True)
    subprocess.run(["gcc", *WARN, "-O2", "-c", str(OTA_DIR / "edgec_ota.c"), "-o", str(work / "w.o")], check=True)
    print(f"receiver state (host, 64-bit): {_state_bytes('nm', work / 'w.o')} bytes")
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not found: cortex-m4 sizes not measured")
    sizes = {}
    for src in ["edgec_ota.c", "edgec_flash_mem.c", *CRYPTO]:
        obj = work / ("m4_" + src[:-2] + ".o")
        subprocess.run([cc, *WARN, *CORTEX_M4, "-DEDGEC_FLASH_MEM", "-c", str(OTA_DIR / src), "-o", str(obj)],
                       check=True)
        out = subprocess.run([cc.replace("gcc", "size"), str(obj)], capture_output=True, text=True, check=True).stdout
        sizes[src] = int(out.splitlines()[1].split()[0])
    total = sizes["edgec_ota.c"] + sum(sizes[c] for c in CRYPTO)
    ram = _state_bytes(cc.replace("gcc", "nm"), work / "m4_edgec_ota.o")
    print(f"cortex-m4 -Os .text: {sizes}; receiver + crypto = {total} bytes "
          f"({'under' if total < 8192 else 'OVER'} the 8192-byte budget); receiver state {ram} bytes")
    assert ram <= 464
    assert sizes["edgec_ota.c"] <= 2944  # the receiver's share; the total also depends on the crypto


@pytest.mark.parametrize("write_bytes", [8, 1, 16])
def test_trial_semantics(work, crypto_objs, write_bytes: int) -> None:
    """finish -> new tables on trial; reboot without confirm -> old; confirm -> survives reboots; rollback after
    confirm -> old, also after reboot; the health callback confirms or reverts; updates after rollbacks;
    an empty slot; counter floors (stored counter 4 in the initial counter page)."""
    run = Run(work, crypto_objs, f"trial{write_bytes}", write_bytes, _region([(0, 4)]))
    t1, t2, t3, s1 = _tables(1, rank=2), _tables(2), _tables(3), _tables(4, rank=1)
    f = {name: run.file(name, data) for name, data in {
        "builtin.img": _image(BUILTIN), "t1.img": _image(t1), "t2.img": _image(t2), "t3.img": _image(t3),
        "s1.img": _image(s1),
        "p1": _patch(t1, 5), "p1b": _patch(t1, 5, name="again"), "p2": _patch(t2, 6, key=KEY_B, adapter_id=77),
        "p3": _patch(t3, 7), "old4": _patch(t3, 4), "s1": _patch(s1, 1, slot=1, name="second", version=(0, 0, 9)),
        "s1b": _patch(s1, 2, slot=1, name="second", version=(0, 0, 9)),
    }.items()}
    bi = f"0 1 0 {BUILTIN_RANK} {BUILTIN_ID} 1 0 0 builtin"
    run.script(f"""
boot 0
bank 0 0
bank 1 -1
bank 2 -1
bank -1 -1
tables 0 {f['builtin.img']}
info 0 0 {bi}
info 1 {SLOT}
info 2 {SLOT}
infonull {ARG}
stored 0 4
floor 0 4
last -1
confirm {STATE}
rollback {STATE}
check 1 {STATE}
checknull {STATE}
write {f['p1']} 0 1 {STATE}
finish {STATE}
apply {f['old4']} {COUNTER}
apply {f['p1']} 0 7
bank 0 1
tables 0 {f['t1.img']}
info 0 0 5 2 1 2 {0xA1B2C3D4} 2 1 0 tuned
last 0
begin {STATE}
meta 1 1 0 0
boot 0
meta 1 1 0 1
meta 0 1 1 0
bank 0 0
tables 0 {f['builtin.img']}
info 0 0 {bi}
last -1
floor 0 4
apply {f['p1b']} 0 1
tables 0 {f['t1.img']}
confirm 0
confirm {STATE}
stored 0 5
floor 0 5
info 0 0 5 2 0 2 {0xA1B2C3D4} 2 1 0 again
boot 0
bank 0 1
tables 0 {f['t1.img']}
info 0 0 5 2 0 2 {0xA1B2C3D4} 2 1 0 again
rollback {STATE}
apply {f['p1']} {COUNTER}
apply {f['p2']} 0 64
bank 0 0
tables 0 {f['t2.img']}
info 0 0 6 3 1 4 77 2 1 0 tuned
confirm 0
meta 0 1 1 0
rollback 0
meta 0 1 1 1
meta 1 1 1 0
bank 0 1
tables 0 {f['t1.img']}
info 0 0 5 2 0 2 {0xA1B2C3D4} 2 1 0 again
rollback {STATE}
floor 0 6
boot 0
bank 0 1
tables 0 {f['t1.img']}
apply {f['p2']} {COUNTER}
apply {f['p3']} 0
bank 0 0
tables 0 {f['t3.img']}
check 0 0
meta 0 1 0 1
bank 0 1
tables 0 {f['t1.img']}
check 1 {STATE}
apply {f['p3']} 0 -1
check 1 0
bank 0 0
tables 0 {f['t3.img']}
boot 0
tables 0 {f['t3.img']}
info 0 0 7 3 0 4 {0xA1B2C3D4} 2 1 0 tuned
stored 0 7
apply {f['s1']} 0 -1
bank 1 2
tables 1 {f['s1.img']}
info 1 0 1 1 1 1 {0xA1B2C3D4} 0 0 9 second
rollback 0
bank 1 -1
info 1 {SLOT}
apply {f['s1']} 0
boot 0
bank 1 -1
apply {f['s1']} 0
confirm 0
bank 1 2
rollback {STATE}
bank 1 2
boot 0
bank 1 2
tables 1 {f['s1.img']}
bank 0 0
tables 0 {f['t3.img']}
stored 1 1
stored 0 7
apply {f['s1']} {COUNTER}
apply {f['s1b']} 0
rollback 0
bank 1 2
begin 0
write {f['p3']} 0 100 0
begin 0
write {f['p3']} 0 128 {COUNTER}
write {f['p3']} 128 10 {COUNTER}
finish {COUNTER}
begin 0
finish {TRUNCATED}
tables 0 {f['t3.img']}
tables 1 {f['s1.img']}
""")


def test_counter_floor_includes_confirmed_banks(work, crypto_objs) -> None:
    """No counter entries, but the built-in bank says counter 10: the floor is 10 (also for a rolled-back bank:
    valid and confirmed; not for a trial that reverted)."""
    region = bytearray(_region())
    img = _image(BUILTIN)
    region[BANK - 128:BANK] = fmt.bank_metadata(1, 10, BUILTIN_ID, (1, 0, 0), 0, "builtin", BUILTIN_RANK,
                                                hashlib.sha256(img).digest(), confirmed=True)
    run = Run(work, crypto_objs, "floor_banks", 8, bytes(region))
    t = _tables(8)
    p = {c: run.file(f"p{c}", _patch(t, c)) for c in (9, 10, 11, 12)}
    run.script(f"""boot 0
floor 0 10
stored 0 0
apply {p[9]} {COUNTER}
apply {p[10]} {COUNTER}
apply {p[11]} 0
boot 0
apply {p[11]} 0
rollback 0
apply {p[11]} 0
confirm 0
rollback 0
bank 0 0
apply {p[11]} {COUNTER}
apply {p[12]} 0
""")


def test_counter_floor_survives_compaction_and_bank_erases(work, crypto_objs) -> None:
    """30 confirmed updates alternating between the slots fill the 15-entry counter page twice (compaction);
    the stored counters stay, replays are refused, and a nearly full initial page compacts at once."""
    run = Run(work, crypto_objs, "compaction", 8, _region([(0, 4)], page_seq=41, fill=13))
    lines = ["boot 0", "stored 0 4", "stored 1 0"]
    t = _tables(9)
    counters = {0: 4, 1: 0}
    for i in range(30):
        slot = i % 2
        c = counters[slot] + 1 + (i % 3)
        p = run.file(f"u{i}", _patch(t, c, slot=slot))
        old = run.file(f"r{i}", _patch(t, counters[slot], slot=slot))
        lines += [f"apply {p} 0 -1", "confirm 0", f"stored {slot} {c}", f"stored {1 - slot} {counters[1 - slot]}",
                  f"apply {old} {COUNTER}", f"apply {p} {COUNTER}"]
        if i % 7 == 3:
            lines += ["boot 0", f"apply {p} {COUNTER}", f"floor {slot} {c}"]
        counters[slot] = c
    lines += ["boot 0", f"stored 0 {counters[0]}", f"stored 1 {counters[1]}"]
    out = run.script("\n".join(lines) + "\n")
    assert "OK" in out


CHUNKS = [1, 7, 64, 0]


def _expected_codes(patch: bytes, floors: dict[int, int], slots: int = SLOTS) -> bytes:
    """The error code for every flipped bit of `patch` (one int8 per bit), from the field it lands in."""
    out = bytearray()
    payload = len(patch) - fmt.HEADER_BYTES - fmt.TRAILER_BYTES
    counter, slot = struct.unpack_from("<IH", patch, 108)
    rec_starts, off = [], fmt.HEADER_BYTES
    for lay in LAYERS:
        for _, dt, d0, d1 in fmt.record_shapes(lay):
            rec_starts.append(off)
            off += fmt.RECORD_HEADER_BYTES + d0 * d1 * (4 if dt == 2 else 1)
    for bit in range(8 * len(patch)):
        byte, mask = bit // 8, 1 << (bit % 8)
        if byte < 16 or 106 <= byte < 108 or 114 <= byte < 116 or 124 <= byte < 128:
            code = FORMAT
        elif byte < 48:
            code = BASE
        elif byte < 80:
            code = LAYOUT
        elif byte < 96:
            name = bytearray(patch[80:96])
            name[byte - 80] ^= mask
            code = DIGEST if 0 in name else FORMAT
        elif byte < 108:
            code = DIGEST
        elif byte < 112:
            c = counter ^ (mask << (8 * (byte - 108)))
            code = COUNTER if c <= floors[slot] else DIGEST
        elif byte < 114:
            s = slot ^ (mask << (8 * (byte - 112)))
            code = SLOT if s >= slots else COUNTER if counter <= floors[s] else DIGEST
        elif byte < 124:
            code = KEY
        elif byte < fmt.HEADER_BYTES + payload:
            starts = [r for r in rec_starts if r <= byte]
            code = LAYOUT if byte - starts[-1] < 12 else DIGEST
        elif byte < fmt.HEADER_BYTES + payload + 32:
            code = DIGEST
        else:
            code = SIGNATURE
        out += struct.pack("b", code)
    return bytes(out)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_every_bit_flip_is_rejected_with_its_code(work, crypto_objs, chunk: int) -> None:
    """Every bit of a valid patch flipped: the error of the field it lands in, nothing of the active bank,
    the slot state or the counter pages changes (initial floor of slot 0: 4, so counter flips below it are
    COUNTER). Chunk sizes 1, 7, 64 and the whole patch."""
    run = Run(work, crypto_objs, f"tamper{chunk}", 8, _region([(0, 4)]))
    patch = _patch(_tables(5), 5)
    expect = _expected_codes(patch, {0: 4, 1: 0})
    out = run("tamper", run.file("p", patch), run.file("e", expect), chunk)
    print(out.strip().splitlines()[0])
    codes = dict(map(int, kv.split(":")) for kv in out.split("codes:")[1].split("\n")[0].split())
    assert set(codes) == {FORMAT, BASE, LAYOUT, SLOT, COUNTER, KEY, DIGEST, SIGNATURE}


def test_truncation_at_every_length(work, crypto_objs) -> None:
    """Every proper prefix -> TRUNCATED (also the empty one); one byte more -> LENGTH (also sticky in finish)."""
    run = Run(work, crypto_objs, "truncate")
    patch = run.file("p", _patch(_tables(6), 3))
    for chunk in (0, 7):
        run("truncate", patch, chunk)


def test_refusals(work, crypto_objs) -> None:
    """Wrong key id, right id with another key's signature, wrong base / layout, replayed counters, the
    local-origin flag, a bad slot, names, versions, record counts, payload sizes, records that do not follow
    the layout (correctly signed), extra bytes; the second compiled-in key works."""
    run = Run(work, crypto_objs, "refusals", 8, _region([(0, 4)]))
    t = _tables(7)
    ok = _patch(t, 9)
    recs = _records(t)
    swapped = [fmt.Record(r.layer, r.tensor, r.dtype, r.dims[::-1], r.scale, r.data) if i == 0 else r
               for i, r in enumerate(recs)]
    wrong_layer = [fmt.Record(1 - r.layer if i == 3 else r.layer, r.tensor, r.dtype, r.dims, r.scale, r.data)
                   for i, r in enumerate(recs)]
    wrong_dtype = [fmt.Record(r.layer, r.tensor, 1 if i == 2 else r.dtype, r.dims, r.scale, r.data)
                   for i, r in enumerate(recs)]
    reordered = [recs[1], recs[0]] + recs[2:]
    cases = {
        "ok_b": (_patch(t, 9, key=KEY_B), 0),
        "unknown_key": (_patch(t, 9, key=KEY_C), KEY),
        "other_signature": (_patch(t, 9, key=KEY_A, signer=KEY_B), SIGNATURE),
        "wrong_base": (_patch(t, 9, base_sha256=hashlib.sha256(b"other").digest()), BASE),
        "wrong_layout": (_patch(t, 9, layout_sha256=fmt.layout_sha256(LAYERS, LAYOUT_BYTES + 4)), LAYOUT),
        "counter_equal": (_patch(t, 4), COUNTER),
        "counter_lower": (_patch(t, 1), COUNTER),
        "counter_zero": (_patch(t, 0), COUNTER),
        "local_origin": (_patch(t, 9, flags=fmt.FLAG_LOCAL), FORMAT),
        "flags_bit15": (_patch(t, 9, flags=0x8000), FORMAT),
        "slot_2": (_patch(t, 9, slot=2), SLOT),
        "slot_ffff": (_patch(t, 9, slot=0xFFFF), SLOT),
        "name_16": (_patch(t, 9, name="abcdefghijklmnop"), FORMAT),
        "name_15": (_patch(t, 9, name="abcdefghijklmno"), 0),
        "records_5": (_patch(t, 9, records=5), FORMAT),
        "payload_more": (_patch(t, 9, payload_bytes=fmt.payload_bytes(LAYERS) + 1), FORMAT),
        "version_2": (_resign(ok, {4: b"\x02\x00"}), FORMAT),
        "header_129": (_resign(ok, {8: struct.pack("<I", 129)}), FORMAT),
        "reserved_106": (_resign(ok, {106: b"\x01\x00"}), FORMAT),
        "reserved_124": (_resign(ok, {124: b"\x00\x00\x00\x80"}), FORMAT),
        "magic": (_resign(ok, {0: b"EDGQ"}), FORMAT),
        "dims_swapped": (fmt.encode_patch(_header(9), swapped, KEY_A.sign), LAYOUT),
        "wrong_layer": (fmt.encode_patch(_header(9), wrong_layer, KEY_A.sign), LAYOUT),
        "wrong_dtype": (fmt.encode_patch(_header(9), wrong_dtype, KEY_A.sign), LAYOUT),
        "reordered": (fmt.encode_patch(_header(9), reordered, KEY_A.sign), LAYOUT),
        "quant_field": (_resign(ok, {128 + 12: struct.pack("<f", 0.5)}), 0),
        "extra_byte": (ok + b"\0", LENGTH),
        "signature_s_plus_l": (ok[:-32] + (int.from_bytes(ok[-32:], "little") + 2**252 +
                                           27742317777372353535851937790883648493).to_bytes(32, "little"),
                               SIGNATURE),
        "zero_signature": (ok[:-64] + bytes(64), SIGNATURE),
    }
    lines = []
    for name, (data, code) in cases.items():
        lines += ["boot 0", f"# {name}", f"apply {run.file(name, data)} {code} 7", f"bank 0 {1 if code == 0 else 0}"]
    run.script("\n".join(lines) + "\n")


@pytest.mark.parametrize("write_bytes,scenario", [
    (8, "confirm"), (8, "revert_at_boot"), (8, "rollback_trial"), (8, "rollback_confirmed"), (8, "compaction"),
    (8, "empty_slot"), (1, "confirm"), (16, "confirm"), (16, "compaction")])
def test_power_cut_at_every_flash_operation(work, crypto_objs, write_bytes: int, scenario: str) -> None:
    """Cut power before and inside every flash operation (torn writes: the rest of the unit kept or random;
    erases half done or random) and also fail each operation in the HAL; reboot: the slot holds exactly the old
    or the new tables (as before or after the interrupted operation), with matching metadata, never empty,
    counter floors never drop; a further update (higher counter) still applies, confirms and survives a
    reboot."""
    slot = 1 if scenario == "empty_slot" else 0
    region = _region([(0, 4)], page_seq=7, fill=14 if scenario == "compaction" else 0)
    run = Run(work, crypto_objs, f"cut_{scenario}_{write_bytes}", write_bytes, region)
    new, nxt = _tables(21, rank=3), _tables(22)
    f = {n: run.file(n, d) for n, d in {"new": _patch(new, 9, slot=slot), "next": _patch(nxt, 1000, slot=slot),
                                        "old.img": _image(BUILTIN), "new.img": _image(new),
                                        "next.img": _image(nxt)}.items()}
    body = {"confirm": "confirm 0\n", "revert_at_boot": "boot 0\n", "rollback_trial": "rollback 0\n",
            "rollback_confirmed": "confirm 0\nrollback 0\n", "compaction": "confirm 0\n",
            "empty_slot": "confirm 0\n"}[scenario]
    script = run.file("script", f"boot 0\napply {f['new']} 0 -1\n{body}".encode())
    out = run("powercut", slot, script, f["old.img"], 0, f["new.img"], 9, f["next"], f["next.img"], timeout=300)
    lines = out.splitlines()
    seq = lines[0].split(": ")[-1]
    print(lines[0], "|", next(line for line in lines if "interrupted runs" in line))
    # the outcome (x empty, 0 old, 1 new) after every operation, runs of equal outcomes merged
    merged = "".join(c for i, c in enumerate(seq) if i == 0 or seq[i - 1] != c)
    assert merged == {"confirm": "01", "revert_at_boot": "0", "rollback_trial": "0", "rollback_confirmed": "010",
                      "compaction": "01", "empty_slot": "x1"}[scenario], seq
    if scenario == "compaction":
        assert lines[1].count(f"E0@{2 * SLOTS * BANK + PAGE}") == 1  # the counter page erase


def test_fuzz_mutated_patches(work, crypto_objs) -> None:
    """100,000 mutants of valid patches (bit flips, byte sets, insertions, deletions, splices, truncations,
    32-bit fields set to boundary values), random chunking, under ASan/UBSan: none is accepted, the active
    bank, slot state and counter pages never change. (A deterministic mutation loop in the gcc-built driver;
    test_libfuzzer_mutated_patches does the same with libFuzzer's coverage-guided mutations.)"""
    run = Run(work, crypto_objs, "fuzz", 8, _region([(0, 4)]))
    pats = [run.file("p0", _patch(_tables(30), 5)), run.file("p1", _patch(_tables(31, rank=1), 6, slot=1)),
            run.file("p2", _patch(_tables(32), 7, key=KEY_B))]
    t0 = time.time()
    out = run("fuzz", 100_000, 12345, *pats, timeout=300)
    print(out.strip().splitlines()[0], f"({time.time() - t0:.1f} s)")
    assert ", 0 accepted" in out


def test_flash_mem_hal(work, crypto_objs) -> None:
    """The RAM flash HAL (edgec_flash_mem.c, EDGEC_FLASH_MEM): a full update, confirm and reboot on it;
    misaligned or out-of-range calls are refused."""
    run = Run(work, crypto_objs, "mem", 8, _region(), sim=False)
    t = _tables(40)
    p = run.file("p", _patch(t, 3))
    img = run.file("t.img", _image(t))
    run.script(f"boot 0\napply {p} 0 -1\nconfirm 0\nboot 0\nbank 0 1\ntables 0 {img}\nstored 0 3\n")
    d = work / "memhal"
    d.mkdir(exist_ok=True)
    (d / "t.c").write_text(f"""
#include <stdio.h>
#include "edgec_flash.h"
#include "edgec_ota.h"
static uint8_t region[{REGION}];
const edgec_ota_config_t edgec_ota_config = {{0, 0, {SLOTS}u, {BANK}u, {PAGE}u, 8u, 0u, 0, 0u, 0, region}};
int main(void)
{{
    static const uint8_t d[16] = {{0x0F, 0xF0}};
    int bad = 0;
    bad |= edgec_flash_erase_page(0) != 0 || region[0] != 0xFF || region[{PAGE - 1}] != 0xFF || region[{PAGE}] != 0;
    bad |= edgec_flash_write(8, d, 16) != 0 || region[8] != 0x0F || region[9] != 0xF0 || region[10] != 0;
    bad |= edgec_flash_write(8, d + 1, 8) != 0 || region[8] != 0x00;
    bad |= edgec_flash_erase_page(1) == 0 || edgec_flash_erase_page({REGION}) == 0;
    bad |= edgec_flash_write(4, d, 8) == 0 || edgec_flash_write(8, d, 4) == 0 || edgec_flash_write({REGION - 8}, d, 16) == 0;
    bad |= edgec_flash_write(0, 0, 8) == 0 || edgec_flash_write(0xFFFFFFF8u, d, 16) == 0;
    bad |= edgec_flash_write({REGION - 8}, d, 8) != 0;
    printf("%s\\n", bad ? "FAILED" : "OK");
    return bad;
}}
""")
    exe = d / "t"
    subprocess.run(["gcc", *WARN, "-O1", *SAN, "-DEDGEC_FLASH_MEM", f"-I{OTA_DIR}", str(d / "t.c"),
                    str(OTA_DIR / "edgec_flash_mem.c"), "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)], capture_output=True, text=True, check=False).stdout.strip() == "OK"


def test_cortex_m4_under_qemu(work) -> None:
    """The receiver, crypto and the RAM flash HAL cross-compiled for cortex-m4 (-O2 -Werror) and run under QEMU
    mps2-an386 with the region in section .edgec_adapters (the board's flash, writable in QEMU) as generated
    projects have it: a tampered patch is refused, a valid one applies, confirms and survives a reboot, its
    replay is refused."""
    cc, qemu = shutil.which("arm-none-eabi-gcc"), shutil.which("qemu-system-arm")
    if cc is None or qemu is None:
        pytest.skip("arm-none-eabi-gcc or qemu-system-arm not found")
    d = work / "qemu"
    d.mkdir(exist_ok=True)
    t = _tables(50)
    region = _region([(0, 4)])
    words = ", ".join(str(v) for v in struct.unpack(f"<{len(region) // 4}i", region))
    (d / "ota_qemu_data.h").write_text(
        _config_header(8) + f"#define REGION_BYTES {len(region)}u\n#define REGION_WORDS {{ {words} }}\n"
        f"static const uint8_t PATCH[] = {{ {_c_bytes(_patch(t, 5))} }};\n"
        f"static const uint8_t NEW_IMAGE[] = {{ {_c_bytes(_image(t))} }};\n")
    board = ROOT / "runtime_c" / "boards" / "mps2_an386"
    elf = d / "ota.elf"
    subprocess.run([cc, *WARN, "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-O2",
                    "-ffunction-sections", "-fdata-sections", "-DEDGEC_FLASH_MEM", "-DEDGEC_SEMIHOSTING", f"-I{d}",
                    f"-I{OTA_DIR}", f"-I{ROOT / 'runtime_c' / 'semihost'}", str(ROOT / "tests" / "ota" / "ota_qemu.c"),
                    *(str(OTA_DIR / c) for c in ["edgec_ota.c", "edgec_flash_mem.c", *CRYPTO]),
                    str(ROOT / "runtime_c" / "semihost" / "edgec_semihost.c"), str(board / "startup.c"),
                    f"-T{board / 'link.ld'}", "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections", "-lm",
                    "-o", str(elf)], check=True)
    nm = subprocess.run([cc.replace("gcc", "nm"), str(elf)], capture_output=True, text=True, check=True).stdout
    banks = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(" edgec_adapter_banks"))
    assert banks < 0x400000  # in the code memory ("flash"), not RAM
    res = subprocess.run(["timeout", "120", qemu, "-M", "mps2-an386", "-display", "none", "-monitor", "none",
                          "-serial", "none", "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "OTA OK" in res.stdout + res.stderr, res.stdout + res.stderr


def test_bad_configuration_is_refused(work, crypto_objs) -> None:
    """edgec_ota_boot refuses NULL arguments and configurations it cannot work with (EDGEC_OTA_ERR_ARG);
    every other call then returns an error."""
    d = work / "badcfg"
    d.mkdir(exist_ok=True)
    (d / "t.c").write_text(f"""
#include <stdio.h>
#include <string.h>
#include "edgec_flash.h"
#include "edgec_ota.h"
static uint8_t region[{REGION}];
static int32_t st[4];
static const uint8_t h[32];
static const edgec_ota_layer_t lay[1] = {{{{0u, 30u, 48u, 3u, 10u, 5u}}}};
static const edgec_ota_layer_t past_end[1] = {{{{0u, 30u, {BANK - 128 - 36}u, 3u, 10u, 5u}}}};
const edgec_ota_config_t edgec_ota_config = {{h, h, 2u, {BANK}u, {PAGE}u, 8u, 1u, lay, 0u, 0, region}};
int edgec_flash_erase_page(uint32_t o) {{ (void)o; return -1; }}
int edgec_flash_write(uint32_t o, const uint8_t *d, uint32_t n) {{ (void)o; (void)d; (void)n; return -1; }}
int main(void)
{{
    edgec_ota_config_t c;
    int bad = 0, i;
    static const uint8_t x[1];
    edgec_ota_info_t info;
    for (i = 0; i < 11; i++) {{
        c = edgec_ota_config;
        if (i == 0) c.slots = 0;
        if (i == 1) c.slots = 33;
        if (i == 2) c.write_bytes = 0;
        if (i == 3) c.write_bytes = 3;
        if (i == 4) c.write_bytes = 32;
        if (i == 5) c.page_bytes = 40;
        if (i == 6) c.page_bytes = 32;
        if (i == 7) c.bank_bytes = {BANK + 16};
        if (i == 8) c.region = 0;
        if (i == 9) c.bank_bytes = 0;
        if (i == 10) c.layer = past_end;
        bad |= edgec_ota_boot(&c, st) != EDGEC_OTA_ERR_ARG;
    }}
    bad |= edgec_ota_boot(0, st) != EDGEC_OTA_ERR_ARG || edgec_ota_boot(&edgec_ota_config, 0) != EDGEC_OTA_ERR_ARG;
    bad |= edgec_ota_begin() != EDGEC_OTA_ERR_STATE || edgec_ota_write(x, 1) != EDGEC_OTA_ERR_STATE;
    bad |= edgec_ota_finish() != EDGEC_OTA_ERR_STATE || edgec_ota_confirm() != EDGEC_OTA_ERR_STATE;
    bad |= edgec_ota_rollback() != EDGEC_OTA_ERR_STATE || edgec_ota_info(0, &info) != EDGEC_OTA_ERR_STATE;
    bad |= edgec_ota_slot_bank(0) != -1 || edgec_ota_last_slot() != -1;
    memset(region, 0xFF, sizeof(region));
    bad |= edgec_ota_boot(&edgec_ota_config, st) != 0 || st[1] != 0 || st[3] != {2 * BANK};
    bad |= edgec_ota_begin() != 0 || edgec_ota_write(0, 1) != EDGEC_OTA_ERR_ARG || edgec_ota_finish() != EDGEC_OTA_ERR_ARG;
    printf("%s\\n", bad ? "FAILED" : "OK");
    return bad;
}}
""")
    exe = d / "t"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-O1", *SAN, f"-I{OTA_DIR}", str(d / "t.c"),
                    str(OTA_DIR / "edgec_ota.c"), *map(str, crypto_objs), "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)], capture_output=True, text=True, check=False).stdout.strip() == "OK"


def test_libfuzzer_mutated_patches(work) -> None:
    """libFuzzer (clang -fsanitize=fuzzer,address,undefined) mutates valid patches 100,000 times through the
    receiver (tests/ota/ota_fuzz.c): no crash, no undefined behaviour, nothing but the valid patches accepted,
    and a rejected patch leaves every slot's bank, the slot state and the counter pages unchanged."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not found (scripts/setup.sh installs clang and libclang-rt-14-dev for libFuzzer)")
    d = work / "libfuzzer"
    (d / "corpus").mkdir(parents=True, exist_ok=True)
    (d / "ota_cfg.h").write_text(_config_header(8))
    exe = d / "ota_fuzz"
    res = subprocess.run([clang, "-std=c99", "-O1", "-g", "-fsanitize=fuzzer,address,undefined",
                          "-fno-sanitize-recover=all", f"-I{d}", f"-I{OTA_DIR}", str(DRIVER.parent / "ota_fuzz.c"),
                          str(OTA_DIR / "edgec_ota.c"), *(str(OTA_DIR / c) for c in CRYPTO), "-o", str(exe)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0 and "libclang_rt.fuzzer" in res.stderr:
        pytest.skip("clang has no libFuzzer runtime (install libclang-rt-14-dev)")
    assert res.returncode == 0, res.stderr
    valid = [_patch(_tables(30), 5), _patch(_tables(31, rank=1), 6, slot=1), _patch(_tables(32), 7, key=KEY_B)]
    for i, p in enumerate(valid):
        (d / "corpus" / f"seed{i}").write_bytes(p)
    (d / "valid.bin").write_bytes(b"".join(struct.pack("<I", len(p)) + p for p in valid))
    (d / "region.bin").write_bytes(_region([(0, 4)]))
    env = {**os.environ, "OTA_FUZZ_REGION": str(d / "region.bin"), "OTA_FUZZ_VALID": str(d / "valid.bin"),
           "ASAN_OPTIONS": "detect_leaks=0"}
    res = subprocess.run([str(exe), "-runs=100000", "-seed=1", "-max_len=1024", str(d / "corpus")],
                         capture_output=True, text=True, env=env, timeout=600, check=False, cwd=d)
    tail = res.stderr.strip().splitlines()[-3:]
    print(*tail, sep="\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("Done 100000 runs" in line for line in tail)
