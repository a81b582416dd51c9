"""The OTA adapter patch and bank metadata byte formats (docs/ota-format.md): encode, decode, check.

Everything here is bytes in, bytes out; the device-side C (runtime_c/ota) implements the same format.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

from edgec.errors import EdgecError

PATCH_MAGIC = b"EDGP"
BANK_MAGIC = b"EDGB"
LAYOUT_MAGIC = b"EDGL"
FORMAT_VERSION = 1
HEADER_BYTES = 128
RECORD_HEADER_BYTES = 16
TRAILER_BYTES = 96
META_BYTES = 128
CONFIRM_UNIT = b"EDGEC-CONFIRMED."
FLAG_LOCAL = 1
OP_CODES = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 3}
# The device receiver's result codes (runtime_c/ota/edgec_ota.h).
OTA_RESULTS = {0: "OK", -10: "ERR_STATE", -11: "ERR_FORMAT", -12: "ERR_BASE", -13: "ERR_LAYOUT", -14: "ERR_SLOT",
               -15: "ERR_COUNTER", -16: "ERR_KEY", -17: "ERR_DIGEST", -18: "ERR_SIGNATURE", -19: "ERR_TRUNCATED",
               -20: "ERR_LENGTH", -21: "ERR_FLASH", -22: "ERR_ARG", -100: "cannot open the patch file"}
_HEADER = struct.Struct("<4sHHII32s32s16sIHHHHIHH8sI")
_RECORD = struct.Struct("<HBBIIf")
_META = struct.Struct("<4sIIIHHHH16sH14s4s")
assert _HEADER.size == HEADER_BYTES and _RECORD.size == RECORD_HEADER_BYTES and _META.size == 60


def layout_sha256(layout: list[dict], layout_bytes: int) -> bytes:
    """SHA-256 of the slot layout description (docs/ota-format.md, "Slot layout and its hash")."""
    out = LAYOUT_MAGIC + struct.pack("<III", FORMAT_VERSION, layout_bytes, len(layout))
    for lay in layout:
        out += struct.pack("<8I", lay["op_index"], OP_CODES[lay["op_type"]], lay["k"], lay["oc"], lay["rank"],
                           lay["a_offset"], lay["b_offset"], lay["m_offset"])
    return hashlib.sha256(out).digest()


def key_id(public_raw: bytes) -> bytes:
    """The 8-byte key id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_raw).digest()[:8]


def record_shapes(lay: dict) -> list[tuple[int, int, int, int]]:
    """(tensor, dtype, dim0, dim1) of the three records of one layout layer."""
    return [(0, 1, lay["rank"], lay["k"]), (1, 1, lay["oc"], lay["rank"]), (2, 2, lay["oc"], 2)]


def payload_bytes(layout: list[dict]) -> int:
    return sum(RECORD_HEADER_BYTES + d0 * d1 * (4 if dt == 2 else 1)
               for lay in layout for _, dt, d0, d1 in record_shapes(lay))


@dataclass
class Header:
    base_sha256: bytes
    layout_sha256: bytes
    name: str
    adapter_id: int
    version: tuple[int, int, int]
    counter: int
    slot: int
    records: int
    key_id: bytes
    payload_bytes: int
    flags: int = 0

    def encode(self) -> bytes:
        return _HEADER.pack(PATCH_MAGIC, FORMAT_VERSION, self.flags, HEADER_BYTES, self.payload_bytes,
                            self.base_sha256, self.layout_sha256, self.name.encode("ascii").ljust(16, b"\0"),
                            self.adapter_id, *self.version, 0, self.counter, self.slot, self.records, self.key_id, 0)


@dataclass
class Record:
    layer: int
    tensor: int
    dtype: int
    dims: tuple[int, int]
    scale: float
    data: bytes


@dataclass
class Patch:
    header: Header
    records: list[Record] = field(default_factory=list)
    digest: bytes = b""
    signature: bytes = b""

    @property
    def signed_bytes(self) -> bytes:
        out = self.header.encode()
        for r in self.records:
            out += _RECORD.pack(r.layer, r.tensor, r.dtype, *r.dims, r.scale) + r.data
        return out


def encode_patch(header: Header, records: list[Record], sign) -> bytes:
    """The patch bytes; `sign(digest) -> 64-byte signature`."""
    body = Patch(header, records).signed_bytes
    digest = hashlib.sha256(body).digest()
    return body + digest + sign(digest)


def _fail(where: str, offset: int, msg: str) -> EdgecError:
    return EdgecError(f"{where}: byte {offset}: {msg}")


def peek_header(data: bytes) -> tuple[str, int] | None:
    """(adapter name, slot) from a patch's header without any check (None if it has no header)."""
    if len(data) < HEADER_BYTES or data[:4] != PATCH_MAGIC:
        return None
    fields = _HEADER.unpack_from(data)
    return fields[7].split(b"\0")[0].decode("ascii", "replace"), fields[14]


def decode_patch(data: bytes, where: str = "patch") -> Patch:
    """Parse and check the structure and the digest (not the signature, not the device binding)."""
    if len(data) < HEADER_BYTES + TRAILER_BYTES:
        raise _fail(where, len(data), f"truncated: {len(data)} bytes, a patch has at least "
                                      f"{HEADER_BYTES + TRAILER_BYTES}")
    (magic, version, flags, hbytes, pbytes, base, layout, name, aid, major, minor, patch_v, res16, counter, slot,
     nrec, kid, res32) = _HEADER.unpack_from(data)
    if magic != PATCH_MAGIC:
        raise _fail(where, 0, f"magic {magic!r}, expected {PATCH_MAGIC!r} (not an edgec adapter patch)")
    if version != FORMAT_VERSION:
        raise _fail(where, 4, f"format version {version}, supported: {FORMAT_VERSION}")
    if flags & ~FLAG_LOCAL:
        raise _fail(where, 6, f"unknown flags 0x{flags:04x}")
    if hbytes != HEADER_BYTES:
        raise _fail(where, 8, f"header size {hbytes}, expected {HEADER_BYTES}")
    if res16 or res32:
        raise _fail(where, 106 if res16 else 124, "reserved field is not 0")
    if b"\0" not in name:
        raise _fail(where, 80, "adapter name is not NUL-terminated")
    if len(data) != HEADER_BYTES + pbytes + TRAILER_BYTES:
        raise _fail(where, 12, f"payload size {pbytes} gives a {HEADER_BYTES + pbytes + TRAILER_BYTES}-byte patch, "
                               f"the file has {len(data)} bytes")
    header = Header(base, layout, name.split(b"\0")[0].decode("ascii", "replace"), aid, (major, minor, patch_v),
                    counter, slot, nrec, kid, pbytes, flags)
    records, off, end = [], HEADER_BYTES, HEADER_BYTES + pbytes
    for i in range(nrec):
        if off + RECORD_HEADER_BYTES > end:
            raise _fail(where, off, f"record {i} of {nrec} starts past the payload's end")
        layer, tensor, dtype, d0, d1, scale = _RECORD.unpack_from(data, off)
        if tensor > 2 or dtype not in (1, 2):
            raise _fail(where, off + 2, f"record {i}: tensor {tensor} dtype {dtype} (tensor 0..2, dtype 1 or 2)")
        size = d0 * d1 * (4 if dtype == 2 else 1)
        if off + RECORD_HEADER_BYTES + size > end:
            raise _fail(where, off + 4, f"record {i}: {d0}x{d1} data runs past the payload's end")
        records.append(Record(layer, tensor, dtype, (d0, d1), scale,
                              bytes(data[off + RECORD_HEADER_BYTES:off + RECORD_HEADER_BYTES + size])))
        off += RECORD_HEADER_BYTES + size
    if off != end:
        raise _fail(where, off, f"{end - off} bytes after the last record")
    digest, signature = bytes(data[end:end + 32]), bytes(data[end + 32:end + TRAILER_BYTES])
    if hashlib.sha256(data[:end]).digest() != digest:
        raise _fail(where, end, "SHA-256 digest does not match the header and payload (corrupted)")
    return Patch(header, records, digest, signature)


def check_binding(patch: Patch, report: dict, where: str = "patch") -> None:
    """The patch fits the build: base model, slot layout, slot index and records (EdgecError otherwise)."""
    h = patch.header
    if h.base_sha256.hex() != report.get("model_sha256"):
        raise _fail(where, 16, f"built for base model sha256 {h.base_sha256.hex()[:16]}..., this build's model is "
                               f"{str(report.get('model_sha256'))[:16]}...")
    layout = report.get("adapter_layout")
    if layout is None:
        raise EdgecError(f"{where}: the build has no adapter slots")
    if h.layout_sha256.hex() != report.get("adapter_layout_sha256"):
        raise _fail(where, 48, "slot layout hash differs from the build's (other layers, ranks or offsets)")
    if h.slot >= report["adapter_slots"]:
        raise _fail(where, 112, f"slot {h.slot}, the build has {report['adapter_slots']} slots")
    want = [(i, *shape) for i, lay in enumerate(layout) for shape in record_shapes(lay)]
    got = [(r.layer, r.tensor, r.dtype, *r.dims) for r in patch.records]
    if got != want:
        raise _fail(where, HEADER_BYTES, "records do not follow the slot layout (layer, tensor, dtype, dims)")


def bank_metadata(seq: int, counter: int, adapter_id: int, version: tuple[int, int, int], flags: int, name: str,
                  rank: int, digest: bytes, confirmed: bool) -> bytes:
    """The 128 metadata bytes at the end of a bank (docs/ota-format.md, "Bank")."""
    head = _META.pack(BANK_MAGIC, seq, counter, adapter_id, *version, flags, name.encode("ascii").ljust(16, b"\0"),
                      rank, bytes(14), digest[:4])
    head += struct.pack("<I", zlib.crc32(head))
    return head + (CONFIRM_UNIT if confirmed else b"\xff" * 16) + b"\xff" * 48
