"""Device-side crypto for signed OTA patches (runtime_c/ota): SHA-256, SHA-512, Ed25519 verification.

The three C files are compiled with tests/crypto/crypto_driver.c by host gcc under AddressSanitizer and
UBSan and checked against FIPS 180-4 / RFC 6234 and RFC 8032 vectors, hashlib and `cryptography`
(OpenSSL). A Cortex-M4 build reports .text sizes and the worst-case stack of each entry point; under QEMU,
the M4 build verifies signatures and its instruction count is printed.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgec.toolchain import runner

OTA = Path(__file__).resolve().parents[1] / "runtime_c" / "ota"
NAMES = ["edgec_sha256", "edgec_sha512", "edgec_ed25519"]
SOURCES = [OTA / f"{n}.c" for n in NAMES]
DRIVER = Path(__file__).resolve().parent / "crypto" / "crypto_driver.c"
FIELD_DRIVER = Path(__file__).resolve().parent / "crypto" / "field_driver.c"  # includes edgec_ed25519.c
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]

needs_host_cc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_arm_cc = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("arm-none-eabi-size") is None,
    reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)",
)

# ---------------------------------------------------------------- vectors

MSG_448 = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
MSG_896 = (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
           b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")
MILLION_A = b"a" * 1_000_000

# FIPS 180-4 examples / RFC 6234 section 8.5 (TEST1, TEST2_1, TEST3, and the 896-bit TEST2_2).
SHA_VECTORS = {
    "sha256": [
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (MSG_448, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        (MSG_896, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
        (MILLION_A, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ],
    "sha512": [
        (b"abc", ("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                  "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f")),
        (b"", ("cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
               "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e")),
        (MSG_448, ("204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c335"
                   "96fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445")),
        (MSG_896, ("8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
                   "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909")),
        (MILLION_A, ("e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb"
                     "de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b")),
    ],
}
CHUNKS = [1, 3, 64, 127, 0]  # 0: the whole message in one update() call

RFC8032_TEST_1024_MSG = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
    "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
    "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
    "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
    "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
    "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
    "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
    "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
    "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
    "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
    "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
    "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
    "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
    "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
    "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
    "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
    "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
    "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
    "c60c905c15fc910840b94c00a0b9d0"
)

# RFC 8032 section 7.1: (name, secret key, public key, message, signature), hex.
RFC8032 = [
    ("TEST 1", "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd2"
      "5bf5f0595bbe24655141438e7a100b")),
    ("TEST 2", "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     ("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c38"
      "7b2eaeb4302aeeb00d291612bb0c00")),
    ("TEST 3", "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     ("6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a"
      "7c15e9716ed28dc027beceea1ec40a")),
    ("TEST 1024", "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
     "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e", RFC8032_TEST_1024_MSG,
     ("0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e"
      "8fcd4f681e30a6ac00a9704a188a03")),
    ("TEST SHA(abc)", "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf", hashlib.sha512(b"abc").hexdigest(),
     ("dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303d"
      "ca179c138ac17ad9bef1177331a704")),
]

# ---------------------------------------------------------------- Ed25519 reference arithmetic (RFC 8032 5.1)

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P


def _point_add(a: tuple, b: tuple) -> tuple:
    pa, pb = (a[1] - a[0]) * (b[1] - b[0]) % P, (a[1] + a[0]) * (b[1] + b[0]) % P
    pc, pd = 2 * a[3] * b[3] * D % P, 2 * a[2] * b[2] % P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return e * f % P, g * h % P, f * g % P, e * h % P


def _point_mul(s: int, pt: tuple) -> tuple:
    q = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _point_add(q, pt)
        pt, s = _point_add(pt, pt), s >> 1
    return q


def _encode(pt: tuple) -> bytes:
    zi = pow(pt[2], P - 2, P)
    x, y = pt[0] * zi % P, pt[1] * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _x_squared(y: int) -> int:
    return (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P


_BY = 4 * pow(5, P - 2, P) % P
_BX = pow(_x_squared(_BY), (P + 3) // 8, P)
if (_BX * _BX - _x_squared(_BY)) % P:
    _BX = _BX * pow(2, (P - 1) // 4, P) % P
if _BX & 1:
    _BX = P - _BX
BASE = (_BX, _BY, 1, _BX * _BY % P)


def _le(v: int) -> bytes:
    return v.to_bytes(32, "little")


# ---------------------------------------------------------------- driver


def _build_host(tmp_path_factory: pytest.TempPathFactory, main: Path, sources: list[Path]) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("host gcc not installed")
    exe = tmp_path_factory.mktemp("crypto") / main.stem
    cmd = ["gcc", *STRICT, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           f"-I{OTA}", str(main), *map(str, sources), "-o", str(exe)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return exe


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_host(tmp_path_factory, DRIVER, SOURCES)


@pytest.fixture(scope="module")
def field_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_host(tmp_path_factory, FIELD_DRIVER, [OTA / "edgec_sha512.c"])


def run_driver_lines(exe: Path, lines: list[str]) -> list[str]:
    """Feeds the command lines to a driver; returns its output lines (one per command)."""
    proc = subprocess.run([str(exe)], check=False, input="\n".join(lines) + "\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"driver exit code {proc.returncode}\n{proc.stderr[-4000:]}"
    out = proc.stdout.splitlines()
    assert len(out) == len(lines), proc.stderr[-4000:]
    return out


def run_driver(exe: Path, lines: list[str]) -> list[str]:
    return [line.strip() for line in run_driver_lines(exe, lines)]


def sha_cmd(algo: str, chunk: int, msg: bytes) -> str:
    return f"{algo} {chunk} {msg.hex() or '-'}"


def ed_cmd(sig: bytes, pub: bytes, msg: bytes) -> str:
    assert len(sig) == 64 and len(pub) == 32
    return f"ed25519 {sig.hex()} {pub.hex()} {msg.hex() or '-'}"


def verify_all(exe: Path, cases: list[tuple[bytes, bytes, bytes]]) -> list[int]:
    return [int(v) for v in run_driver(exe, [ed_cmd(*c) for c in cases])]


def openssl_verify(sig: bytes, pub: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signed_cases(n: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    """n (signature, public key, message) triples signed by `cryptography`; messages of 0..300 bytes and,
    as edgec signs them, 32-byte SHA-256 digests."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        msg = hashlib.sha256(rng.randbytes(100)).digest() if i % 3 == 0 else rng.randbytes(rng.randrange(301))
        cases.append((key.sign(msg), raw_public(key), msg))
    return cases


# ---------------------------------------------------------------- SHA-256 / SHA-512


@needs_host_cc
@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_sha_known_answers(driver: Path, algo: str) -> None:
    lines, want = [], []
    for msg, digest in SHA_VECTORS[algo]:
        assert hashlib.new(algo, msg).hexdigest() == digest  # the table itself
        for chunk in CHUNKS:
            lines.append(sha_cmd(algo, chunk, msg))
            want.append(digest)
    assert run_driver(driver, lines) == want


@needs_host_cc
@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_sha_random_messages(driver: Path, algo: str) -> None:
    rng = random.Random(1 if algo == "sha256" else 2)
    # every padding case around one and two blocks, then random lengths
    lengths = list(range(260)) + [rng.randrange(260, 5000) for _ in range(60)]
    lines, want = [], []
    for n in lengths:
        msg = rng.randbytes(n)
        lines.append(sha_cmd(algo, rng.choice([0, 1, 2, 7, 55, 63, 64, 65, 111, 127, 128, 129, 1000]), msg))
        want.append(hashlib.new(algo, msg).hexdigest())
    assert run_driver(driver, lines) == want


# ---------------------------------------------------------------- GF(p) arithmetic (white box)

# Radix 2^25.5: limb i has 26 bits (even i) or 25 (odd i) at bit ceil(25.5 i). Every field operation
# accepts and returns limbs below 2^(26 or 25) + 2^14 (edgec_ed25519.c); that bound is what keeps the
# 64-bit column sums of a product from overflowing.
LIMB_BITS = [26 - (i & 1) for i in range(10)]
LIMB_SHIFT = [sum(LIMB_BITS[:i]) for i in range(10)]
LIMB_BOUND = [(1 << w) + (1 << 14) for w in LIMB_BITS]


def _limbs_value(limbs: list[int]) -> int:
    return sum(v << s for v, s in zip(limbs, LIMB_SHIFT))


def _exact_limbs(v: int) -> list[int]:
    return [(v >> s) & ((1 << w) - 1) for s, w in zip(LIMB_SHIFT, LIMB_BITS)]


def _field_inputs(rng: random.Random, n: int) -> list[list[int]]:
    top = [b - 1 for b in LIMB_BOUND]
    special = [top, [0] * 10, _exact_limbs(1), _exact_limbs(P - 1), _exact_limbs(P), _exact_limbs(2**255 - 1),
               [b - 1 if i % 2 else 0 for i, b in enumerate(LIMB_BOUND)], [top[0]] + [0] * 9, [0] * 9 + [top[9]]]
    out = list(special)
    while len(out) < n:
        kind = rng.randrange(3)
        if kind == 0:  # anywhere in the allowed limb range
            out.append([rng.randrange(b) for b in LIMB_BOUND])
        elif kind == 1:  # near the top of the range
            out.append([b - 1 - rng.randrange(1 << 15) for b in LIMB_BOUND])
        else:  # canonical
            out.append(_exact_limbs(rng.randrange(P)))
    return out


@needs_host_cc
def test_field_arithmetic_bounds(field_driver: Path) -> None:
    rng = random.Random(9)
    xs = _field_inputs(rng, 150)
    pairs = [(a, b) for a in xs[:12] for b in xs[:12]] + [(rng.choice(xs), rng.choice(xs)) for _ in range(600)]
    ops = {"mul": lambda a, b: a * b, "add": lambda a, b: a + b, "sub": lambda a, b: a - b}
    lines, want = [], []
    for a, b in pairs:
        for op, fn in ops.items():
            lines.append(f"{op} {' '.join(map(hex, a))} {' '.join(map(hex, b))}")
            want.append(fn(_limbs_value(a), _limbs_value(b)) % P)
    for a in xs:
        lines.append(f"sq {' '.join(map(hex, a))}")
        want.append(_limbs_value(a) ** 2 % P)
    for a in xs[:40]:
        lines.append(f"inv {' '.join(map(hex, a))}")
        want.append(pow(_limbs_value(a), P - 2, P))
    got = run_driver_lines(field_driver, lines)
    for line, g, w in zip(lines, got, want):
        limbs = [int(v, 16) for v in g.split()]
        assert all(v < b for v, b in zip(limbs, LIMB_BOUND)), f"{line}: limb bound broken: {g}"
        assert _limbs_value(limbs) % P == w, line


@needs_host_cc
def test_field_encoding(field_driver: Path) -> None:
    rng = random.Random(10)
    xs = _field_inputs(rng, 300)
    raw = [rng.randbytes(32) for _ in range(100)] + [_le(P + i) for i in range(19)] + [b"\xff" * 32, bytes(32)]
    lines = [f"tobytes {' '.join(map(hex, a))}" for a in xs] + [f"frombytes {r.hex()}" for r in raw]
    got = run_driver_lines(field_driver, lines)
    for a, g in zip(xs, got):
        assert g == _le(_limbs_value(a) % P).hex(), a
    for r, g in zip(raw, got[len(xs):]):
        assert [int(v, 16) for v in g.split()] == _exact_limbs(int.from_bytes(r, "little") & (2**255 - 1)), r


# ---------------------------------------------------------------- Ed25519: valid signatures


@needs_host_cc
def test_ed25519_rfc8032_vectors(driver: Path) -> None:
    cases = []
    for name, sk, pk, msg, sig in RFC8032:
        # the transcribed vectors are self-consistent: OpenSSL derives the same key and signature
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
        assert raw_public(key).hex() == pk, name
        assert key.sign(bytes.fromhex(msg)).hex() == sig, name
        cases.append((bytes.fromhex(sig), bytes.fromhex(pk), bytes.fromhex(msg)))
    assert len(cases[3][2]) == 1023
    assert verify_all(driver, cases) == [1] * len(cases)


@needs_host_cc
def test_ed25519_signed_by_cryptography(driver: Path) -> None:
    cases = signed_cases(200, seed=3)
    assert verify_all(driver, cases) == [1] * len(cases)


# ---------------------------------------------------------------- Ed25519: rejections


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


@needs_host_cc
def test_ed25519_rejects_bit_flips(driver: Path) -> None:
    rng = random.Random(4)
    cases = []
    for sig, pub, msg in signed_cases(6, seed=5):
        msg = msg or b"\x00"
        # R (incl. its sign bit 255), S (incl. bits 252..255 above L), message, public key (incl. sign bit)
        sig_bits = sorted({0, 1, 254, 255, 256, 257, 500, 507, 508, 511, *rng.sample(range(512), 24)})
        msg_bits = sorted({0, 8 * len(msg) - 1, *rng.sample(range(8 * len(msg)), min(12, 8 * len(msg)))})
        pub_bits = sorted({0, 7, 254, 255, *rng.sample(range(256), 16)})
        cases += [(_flip(sig, b), pub, msg) for b in sig_bits]
        cases += [(sig, pub, _flip(msg, b)) for b in msg_bits]
        cases += [(sig, _flip(pub, b), msg) for b in pub_bits]
    assert not any(openssl_verify(*c) for c in cases)  # the mutations are real forgeries
    got = verify_all(driver, cases)
    assert got == [0] * len(cases), [i for i, g in enumerate(got) if g]


@needs_host_cc
def test_ed25519_rejects_noncanonical_s(driver: Path) -> None:
    cases = []
    for sig, pub, msg in signed_cases(8, seed=6):
        s = int.from_bytes(sig[32:], "little")
        assert s < L
        for bad in (s + L, s + 2 * L, L, 2**256 - 1):
            if bad < 2**256:
                cases.append((sig[:32] + _le(bad), pub, msg))
    assert not any(openssl_verify(*c) for c in cases)
    assert verify_all(driver, cases) == [0] * len(cases)


@needs_host_cc
def test_ed25519_rejects_other_key_and_message(driver: Path) -> None:
    (sig1, pub1, msg1), (sig2, pub2, msg2) = signed_cases(2, seed=7)
    cases = [(sig1, pub2, msg1), (sig2, pub1, msg2), (sig1, pub1, msg2), (sig2[:32] + sig1[32:], pub1, msg1)]
    assert verify_all(driver, cases) == [0, 0, 0, 0]
    assert verify_all(driver, [(sig1, pub1, msg1), (sig2, pub2, msg2)]) == [1, 1]


@needs_host_cc
def test_ed25519_public_key_decoding(driver: Path) -> None:
    """RFC 8032 5.1.3: y >= p, no x for y, and x = 0 with the sign bit set do not decode.

    The neutral element as public key makes the check observable: any (R = [s]B, S = s) then satisfies
    [S]B = R + [k]A. With the canonical encoding (y = 1) it verifies (RFC 8032 does not reject small-order
    keys); with y = p + 1 (the same point, reduced mod p) or with the sign bit set on x = 0 it must not.
    OpenSSL accepts both of the latter; the device is stricter, as RFC 8032 says.
    """
    s = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF
    sig, msg = _encode(_point_mul(s, BASE)) + _le(s), b"any message"
    identity = _le(1)
    assert verify_all(driver, [(sig, identity, msg)]) == [1]
    assert openssl_verify(sig, identity, msg)

    rejected = [_le(P + 1), _le(1 | 1 << 255), _le(P - 1 | 1 << 255)]  # y = p + 1; x = 0 with sign (y = +-1)
    rejected += [_le(P + i | sign << 255) for i in range(19) for sign in (0, 1)]  # every y >= p
    no_root = [y for y in range(2, 200) if pow(_x_squared(y), (P - 1) // 2, P) == P - 1][:10]
    assert no_root
    rejected += [_le(y | sign << 255) for y in no_root for sign in (0, 1)]  # canonical y, not on the curve
    assert verify_all(driver, [(sig, pub, msg) for pub in rejected]) == [0] * len(rejected)


@needs_host_cc
def test_ed25519_r_must_be_canonical(driver: Path) -> None:
    # A = neutral element, S = 0: [0]B = R + [k]A holds for R = the neutral element, whatever the message.
    identity, msg = _le(1), b"m"
    assert verify_all(driver, [(identity + _le(0), identity, msg)]) == [1]
    bad_r = [_le(P + 1), _le(1 | 1 << 255)]  # the neutral element, non-canonical y and "-0"
    no_root = next(y for y in range(2, 200) if pow(_x_squared(y), (P - 1) // 2, P) == P - 1)
    bad_r.append(_le(no_root))
    assert verify_all(driver, [(r + _le(0), identity, msg) for r in bad_r]) == [0] * len(bad_r)
    assert not any(openssl_verify(r + _le(0), identity, msg) for r in bad_r)


# ---------------------------------------------------------------- Cortex-M4: size, stack, QEMU


def _header_bound(name: str) -> int:
    text = (OTA / f"{name}.h").read_text()
    m = re.search(rf"#define {name.upper()}_STACK_BYTES (\d+)", text)
    assert m, f"{name}.h does not define {name.upper()}_STACK_BYTES"
    return int(m.group(1))


def worst_stack(ci_files: list[Path], root: str) -> tuple[int, list[str]]:
    """Deepest stack use from `root` over gcc -fcallgraph-info=su call graphs (frames of library calls such
    as memcpy are not included)."""
    frames: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    for ci in ci_files:
        text = ci.read_text()
        for m in re.finditer(r'node: \{ title: "([^"]+)" label: "([^"]*)"', text):
            size = re.search(r"\\n(\d+) bytes \((\w+)", m.group(2))
            if size:
                assert size.group(2) == "static", m.group(0)
                frames[m.group(1)] = int(size.group(1))
        for m in re.finditer(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', text):
            calls.setdefault(m.group(1), set()).add(m.group(2))

    def walk(fn: str, path: tuple[str, ...]) -> tuple[int, list[str]]:
        assert fn not in path, f"recursion through {fn}"
        best: tuple[int, list[str]] = (0, [])
        for callee in calls.get(fn, ()):
            sub = walk(callee, path + (fn,))
            best = max(best, sub)
        return frames.get(fn, 0) + best[0], [fn.rsplit(":", 1)[-1]] + best[1]

    return walk(root, ())


@needs_arm_cc
def test_cortex_m4_size_and_stack(tmp_path: Path) -> None:
    text: dict[str, dict[str, int]] = {}
    stack: dict[str, dict[str, int]] = {}
    for opt in ("-Os", "-O2"):
        text[opt], cis = {}, []
        for name, src in zip(NAMES, SOURCES):
            obj = tmp_path / f"{name}{opt}.o"
            proc = subprocess.run(["arm-none-eabi-gcc", *STRICT, *M4_FLAGS, opt, "-fcallgraph-info=su",
                                   "-c", str(src), "-o", str(obj)], check=False, capture_output=True, text=True,
                                  cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr
            size = subprocess.run(["arm-none-eabi-size", "-B", str(obj)], capture_output=True, text=True,
                                  check=True).stdout.splitlines()[1].split()
            text[opt][name] = int(size[0])  # .text + .rodata
            assert int(size[1]) == 0 and int(size[2]) == 0, f"{name}: no .data/.bss expected"
            cis.append(obj.with_suffix(".ci"))
        stack[opt] = {entry: worst_stack(cis, entry)[0] for entry in
                      ("edgec_sha256_update", "edgec_sha256_final", "edgec_sha512_update", "edgec_sha512_final",
                       "edgec_ed25519_verify")}
    for opt, sizes in text.items():
        print(f"cortex-m4 {opt}: .text {sizes} total {sum(sizes.values())} B; stack {stack[opt]}")
    assert sum(text["-Os"].values()) < 8 * 1024
    for opt in stack:
        assert max(stack[opt]["edgec_sha256_update"], stack[opt]["edgec_sha256_final"]) <= _header_bound(
            "edgec_sha256")
        assert max(stack[opt]["edgec_sha512_update"], stack[opt]["edgec_sha512_final"]) <= _header_bound(
            "edgec_sha512")
        assert stack[opt]["edgec_ed25519_verify"] <= _header_bound("edgec_ed25519")


QEMU_MODEL = r"""#include <stdint.h>
#include "edgec_model.h"
#include "edgec_ed25519.h"
static union { uint8_t b[128]; uint32_t align; } in; /* signature, public key, 32-byte message */
static int32_t out[1];
int edgec_init(void) { return 0; }
void *edgec_input(int i) { return i == 0 ? (void *)in.b : NULL; }
void *edgec_output(int i) { return i == 0 ? (void *)out : NULL; }
size_t edgec_input_bytes(int i) { return i == 0 ? sizeof in.b : 0; }
size_t edgec_output_bytes(int i) { return i == 0 ? sizeof out : 0; }
int edgec_run(void)
{
    out[0] = edgec_ed25519_verify(in.b, in.b + 64, in.b + 96, 32);
    return 0;
}
"""
QEMU_HEADER = """#ifndef EDGEC_MODEL_H
#define EDGEC_MODEL_H
#include <stddef.h>
#define EDGEC_NUM_INPUTS 1
#define EDGEC_NUM_OUTPUTS 1
int edgec_init(void);
int edgec_run(void);
void *edgec_input(int index);
void *edgec_output(int index);
size_t edgec_input_bytes(int index);
size_t edgec_output_bytes(int index);
#endif
"""


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="arm-none-eabi-gcc and/or qemu-system-arm not installed")
@pytest.mark.parametrize("opt", ["-Os", "-O2"])
def test_cortex_m4_qemu_verify(opt: str) -> None:
    target = {"board": "mps2_an386", "qemu_machine": "mps2-an386", "cflags": [*M4_FLAGS, opt]}
    try:
        runner.ensure_tools(target)
    except runner.ToolchainError as e:
        pytest.skip(str(e))
    keys = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(3)]
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(3)]  # edgec signs a patch's SHA-256
    cases = [(key.sign(m), raw_public(key), m) for key, m in zip(keys, digests)]
    cases[2] = (_flip(cases[2][0], 300), cases[2][1], cases[2][2])
    with tempfile.TemporaryDirectory(prefix="edgec_crypto_") as tmp:
        proj = Path(tmp) / "proj"
        for sub in ("include", "src", "runtime"):
            (proj / sub).mkdir(parents=True)
        (proj / "include" / "edgec_model.h").write_text(QEMU_HEADER)
        (proj / "src" / "model.c").write_text(QEMU_MODEL)
        for name in NAMES:
            for ext in (".c", ".h"):
                shutil.copy(OTA / f"{name}{ext}", proj / "runtime")
        elf = runner.build_firmware(proj, target, Path(tmp) / "fw")
        records = [[np.frombuffer(s + p + m, np.uint8)] for s, p, m in cases]
        outs, count = runner.run_qemu(elf, target, records, [((1,), np.int32)])
    assert [int(o[0][0]) for o in outs] == [1, 1, 0]
    print(f"cortex-m4 {opt}: edgec_ed25519_verify of a 32-byte message: {count} instructions")
    assert count is not None and count < 5_000_000
