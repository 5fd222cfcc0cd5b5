"""OpenSSH signatures (SSHSIG) checked in pure Python against real `ssh-keygen -Y sign` output."""

from __future__ import annotations

import pytest
from fixtures.ssh_keys import SshKey, make_key

from dagctl_dagster.core.errors import DagctlSignatureError
from dagctl_dagster.core.signatures import build_decision_message, parse_public_key, verify_signature

MESSAGE = "jaffle-prod-3f2a9c1d:" + "9c" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, SshKey]:
    folder = tmp_path_factory.mktemp("keys")
    return {key_type: make_key(folder, "alice", key_type) for key_type in ("ed25519", "ecdsa", "rsa")}


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_signature_by_a_listed_key_is_valid_and_names_that_key(keys, key_type) -> None:
    key = keys[key_type]
    others = tuple(k.public for t, k in keys.items() if t != key_type)

    assert verify_signature(key.sign(MESSAGE), MESSAGE, (*others, key.public)) == key.public
    assert verify_signature(key.sign(MESSAGE), MESSAGE, others) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda sig: sig.replace("-----END SSH SIGNATURE-----", ""),
        lambda sig: sig[:60] + sig[61:],
        lambda sig: "garbage",
        lambda sig: "",
    ],
    ids=["no-armor-end", "truncated", "garbage", "empty"],
)
def test_malformed_signature_is_invalid_not_an_error(keys, tamper) -> None:
    key = keys["ed25519"]

    assert verify_signature(tamper(key.sign(MESSAGE)), MESSAGE, (key.public,)) is None


def test_signature_of_another_message_or_namespace_is_invalid(keys) -> None:
    key = keys["ed25519"]

    assert verify_signature(key.sign(MESSAGE + "0"), MESSAGE, (key.public,)) is None
    assert verify_signature(key.sign(MESSAGE, namespace="git"), MESSAGE, (key.public,)) is None
    assert verify_signature(key.sign(MESSAGE, namespace="git"), MESSAGE, (key.public,), namespace="git")


def test_decision_messages_differ_per_decision_and_attempt() -> None:
    assert build_decision_message("p", "f") == "p:f"
    assert build_decision_message("p", "f", "retry", 2) == "retry 2:p:f"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("AAAAC3NzaC1lZDI1NTE5AAAAIFMJ", "is not an OpenSSH public key"),
        ("ssh-ed25519", "is not an OpenSSH public key"),
        ("ssh-dss AAAAB3NzaC1kc3M= x", "is not an OpenSSH public key"),
        ("ssh-ed25519 not-base64!", "cannot be read"),
    ],
)
def test_bad_public_key_line_says_what_to_use(line, message) -> None:
    with pytest.raises(DagctlSignatureError, match=message):
        parse_public_key(line)
