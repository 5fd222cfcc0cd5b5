"""Signed decisions: OpenSSH signatures (`ssh-keygen -Y sign`) checked against people's public keys.

An approver proves a decision with their own private key, the way Git signs commits with SSH keys:

    printf '%s' 'jaffle-prod-3f2a9c1d:<fingerprint>' | ssh-keygen -Y sign -n dagctl -f ~/.ssh/id_ed25519

The deployment config lists each person's public keys (`ssh-ed25519 AAAA... alice@laptop`, one per line as
in OpenSSH's allowed_signers), so the code location holds no secret at all: nothing it runs can leak one.
The message binds the plan id and its fingerprint, so a signature never approves another plan or an older
change set; the namespace `dagctl` keeps signatures made for anything else (Git commits, files) from counting.

Verification follows OpenSSH's PROTOCOL.sshsig: the armored blob holds the signer's public key, the
namespace, the hash algorithm and the signature over `"SSHSIG" || string(namespace) || string(reserved) ||
string(hash_alg) || string(H(message))`. Supported keys: ssh-ed25519, ecdsa-sha2-nistp256/384/521, and
ssh-rsa (signatures rsa-sha2-256/512). This module imports `cryptography` (and nothing else outside the
standard library): the signature check is pure computation, with no I/O, so it belongs in `core`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import DagctlSignatureError

NAMESPACE = "dagctl"
_MAGIC = b"SSHSIG"
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_ECDSA_HASHES = {"ecdsa-sha2-nistp256": hashes.SHA256, "ecdsa-sha2-nistp384": hashes.SHA384,
                 "ecdsa-sha2-nistp521": hashes.SHA512}
_RSA_HASHES = {"rsa-sha2-256": hashes.SHA256, "rsa-sha2-512": hashes.SHA512}


def build_decision_message(plan_id: str, fingerprint: str, decision: str = "approve", attempt: int = 0) -> str:
    """What an approver signs for a decision on a plan.

    An approval signs `<plan_id>:<fingerprint>`; a retry signs `retry <attempt>:<plan_id>:<fingerprint>`,
    so neither can be replayed as the other, nor a retry signature as a later retry.

    Example: `build_decision_message("jaffle-prod-3f2a9c1d", "9c1d...")` -> `"jaffle-prod-3f2a9c1d:9c1d..."`.
    """
    if decision == "approve":
        return f"{plan_id}:{fingerprint}"
    return f"{decision} {attempt}:{plan_id}:{fingerprint}"


def parse_public_key(line: str) -> bytes:
    """The wire-format blob of an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).

    Raises `DagctlSignatureError` saying what is wrong with the line.
    """
    parts = line.split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise DagctlSignatureError(
            f"'{line[:40]}' is not an OpenSSH public key: use one line of a .pub file, e.g. "
            f"'ssh-ed25519 AAAA... alice@laptop' (types: {', '.join(_KEY_TYPES)})"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
        key_type, _ = _read_string(blob, 0)
        serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (binascii.Error, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise DagctlSignatureError(f"the {parts[0]} key '{parts[1][:24]}...' cannot be read: {exc}") from exc
    if key_type != parts[0].encode():
        raise DagctlSignatureError(f"the key '{parts[1][:24]}...' is a {key_type.decode()}, not a {parts[0]}")
    return blob


def verify_signature(armored: str, message: str, public_keys: tuple[str, ...], *,
                     namespace: str = NAMESPACE) -> str | None:
    """The public key (as configured) whose signature of `message` `armored` is, or None.

    None for anything that is not a valid SSHSIG signature of exactly this message and namespace by one of
    `public_keys`: another key, another message, another namespace, a malformed or truncated blob.

    Example: `verify_signature(pasted, build_decision_message(plan_id, fp), person.keys)`.
    """
    try:
        blob = _dearmor(armored)
        signer, namespace_used, hash_name, signature = _parse_sshsig(blob)
    except (ValueError, struct.error, binascii.Error):
        return None
    if namespace_used != namespace.encode() or hash_name not in _HASHES:
        return None
    for line in public_keys:
        try:
            if parse_public_key(line) != signer:
                continue
        except DagctlSignatureError:
            continue
        signed = (_MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_name.encode())
                  + _string(_HASHES[hash_name](message.encode()).digest()))
        return line if _is_valid(signer, signature, signed) else None
    return None


def _dearmor(armored: str) -> bytes:
    text = armored.strip()
    if not (text.startswith(_BEGIN) and text.endswith(_END)):
        raise ValueError("not an armored SSH signature")
    body = "".join(text[len(_BEGIN):-len(_END)].split())
    return base64.b64decode(body, validate=True)


def _parse_sshsig(blob: bytes) -> tuple[bytes, bytes, str, bytes]:
    if not blob.startswith(_MAGIC):
        raise ValueError("no SSHSIG preamble")
    (version,) = struct.unpack(">I", blob[6:10])
    if version != 1:
        raise ValueError(f"SSHSIG version {version}")
    offset = 10
    signer, offset = _read_string(blob, offset)
    namespace, offset = _read_string(blob, offset)
    _reserved, offset = _read_string(blob, offset)
    hash_name, offset = _read_string(blob, offset)
    signature, offset = _read_string(blob, offset)
    if offset != len(blob):
        raise ValueError("trailing bytes")
    return signer, namespace, hash_name.decode("ascii"), signature


def _is_valid(signer: bytes, signature: bytes, signed: bytes) -> bool:
    try:
        key_type, offset = _read_string(signer, 0)
        sig_type, sig_offset = _read_string(signature, 0)
        sig, _ = _read_string(signature, sig_offset)
        key = serialization.load_ssh_public_key(key_type + b" " + base64.b64encode(signer))
        if isinstance(key, ed25519.Ed25519PublicKey) and sig_type == b"ssh-ed25519":
            key.verify(sig, signed)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and sig_type == key_type:
            r, r_end = _read_string(sig, 0)
            s, _ = _read_string(sig, r_end)
            der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
            key.verify(der, signed, ec.ECDSA(_ECDSA_HASHES[key_type.decode()]()))
            return True
        if isinstance(key, rsa.RSAPublicKey) and sig_type.decode() in _RSA_HASHES:
            key.verify(sig, signed, padding.PKCS1v15(), _RSA_HASHES[sig_type.decode()]())
            return True
    except (InvalidSignature, ValueError, struct.error, KeyError):
        return False
    return False


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    end = offset + 4 + length
    if end > len(data):
        raise ValueError("truncated")
    return data[offset + 4:end], end


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value
