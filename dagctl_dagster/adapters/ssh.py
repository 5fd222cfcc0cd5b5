"""OpenSSH signing: an approver's decision signed with their own key by `ssh-keygen -Y sign`.

The private key never leaves the approver's machine (or their ssh-agent): dagctl hands `ssh-keygen` the
message on stdin and gets back the armored signature, which the code location checks against the public
keys of the deployment config (`core.signatures`). This is the only module that runs `ssh-keygen`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..core.errors import DagctlSignatureError
from ..core.signatures import NAMESPACE


def sign_message(key_path: str | Path, message: str, *, namespace: str = NAMESPACE) -> str:
    """The armored SSHSIG signature of `message` by the key at `key_path` (`ssh-keygen -Y sign`).

    `key_path` is a private key, or a public key whose private half is in the ssh-agent. Raises
    `DagctlSignatureError` with ssh-keygen's reason when it cannot sign.

    Example: `sign_message("~/.ssh/id_ed25519", "jaffle-prod-3f2a9c1d:9c1d...")`.
    """
    executable = shutil.which("ssh-keygen")
    if executable is None:
        raise DagctlSignatureError("ssh-keygen is not installed: install OpenSSH (openssh-client) to sign")
    key = Path(key_path).expanduser()
    if not key.is_file():
        raise DagctlSignatureError(f"--key {key_path}: no such key file")
    result = subprocess.run(
        [executable, "-q", "-Y", "sign", "-n", namespace, "-f", str(key)],
        input=message.encode(), capture_output=True, check=False, timeout=300,
    )
    if result.returncode != 0:
        reason = " ".join(result.stderr.decode(errors="replace").split()) or f"exit {result.returncode}"
        raise DagctlSignatureError(f"ssh-keygen could not sign with {key_path}: {reason}")
    return result.stdout.decode()


def build_ssh_signer(key_path: str | Path) -> Callable[[str], str]:
    """A signer for `DagctlClient.decide(..., signer=...)` that signs with one key."""
    return lambda message: sign_message(key_path, message)
