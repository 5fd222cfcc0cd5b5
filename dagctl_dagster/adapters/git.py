"""Git mirrors: one local bare copy of each project's repository, kept current incrementally.

Every question dagctl asks about a project (which commit is the branch head, what changed between two commits,
what a file said at a commit, what to build) is answered from a local bare mirror of the project's repository.
The mirror is created once, then only fetched when `git ls-remote` shows that the tracked branch moved, so a
sensor tick costs one cheap network round trip and a plan never clones anything. Snapshots of a commit's files
are exported from the mirror with `git archive` into a directory that is never modified after it is written.

Credentials come from the process environment only (`DAGCTL_GIT_SSH_KEY`, `DAGCTL_GIT_TOKEN`), never from the
deployment config; `git_environment` turns them into settings that git reads at run time, so a token never
appears on a command line or in a file. Git never prompts (`GIT_TERMINAL_PROMPT=0`), and every message we
build from git's output is scrubbed of credentials embedded in URLs.

This module never writes to the remote repository.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import DagctlGitError

if TYPE_CHECKING:
    # GitPython is imported where a git command object is made (`_objects`, `_git`): importing the code
    # location (every run of it, an approval's too) does not pay for it.
    import git

SSH_KEY_VARIABLE = "DAGCTL_GIT_SSH_KEY"
TOKEN_VARIABLE = "DAGCTL_GIT_TOKEN"

# A network command (ls-remote, fetch) that has not finished after this long is killed, and a transfer slower
# than 1 KB/s for this long is abandoned by git itself: a hung remote fails the tick instead of holding the
# sensor (git's own default waits for minutes). Projects set it with `git_timeout_seconds`.
NETWORK_TIMEOUT_SECONDS = 60.0
_LOW_SPEED_LIMIT_BYTES = 1000

# Hints by what git said, most specific first: the hint must fit the error (a full disk is not a credentials
# problem).
_DISK_ERRORS = ("no space left on device", "disk quota exceeded", "read-only file system")
_TIMEOUT_ERRORS = ("timeout: the command", "timed out", "operation too slow")
_UNREACHABLE_ERRORS = ("could not resolve host", "connection refused", "network is unreachable",
                       "no route to host", "could not connect", "failed to connect")
_CREDENTIAL_ERRORS = ("authentication failed", "could not read username", "could not read password",
                      "permission denied", "403", "401", "terminal prompts disabled")

# The tree with no entries; git knows it without it being stored, so it serves as the base of a first diff.
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_AUTHOR = re.compile(rb"^author (.*) <(.*)> (\d+) ([+-]\d{4})$", re.MULTILINE)

# The history `detect` reads: committer time, then author and committer, one commit a line (always in UTF-8,
# whatever `i18n.logOutputEncoding` says, as the commit objects read without `log` are).
_HISTORY_FORMAT = "%ct%x00%an%x00%ae%x00%cn%x00%ce"
# detect's record of the histories it read (see `_HistoryCache`), and how many bases it keeps.
HISTORY_CACHE_NAME = "dagctl-history.json"
_HISTORY_CACHE_VERSION = 1
_HISTORY_CACHE_BASES = 32
# New commits since the cached target read from their objects, without `git log`: at most this many, each
# with one parent, no `encoding` header, and author and committer lines that git's own parser splits exactly
# as this pattern does (no `<`, `>` or NUL in a name or an email; a name ends with no space; a plain zone).
_WALK_LIMIT = 4
_IDENT = rb"([^<>\n\0]*[^<>\s\0]) <([^<>\n\0]*)> (\d+) [+-]\d{4}\n"
_WALKABLE_COMMIT = re.compile(rb"tree [0-9a-f]{40}\nparent ([0-9a-f]{40})\nauthor " + _IDENT + rb"committer " + _IDENT)

# Only branches are mirrored: `clone --mirror` would also copy e.g. GitHub's refs/pull/*, which can be huge.
_BRANCHES_REFSPEC = "+refs/heads/*:refs/heads/*"

_CHANGE_TYPES = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "copied",
    "T": "type_changed",
}

# `scheme://userinfo@` in any text; the userinfo ends at the last `@` before the path.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s?#]*)@")

# Longest excerpt of git's error output quoted in a message.
_MAX_STDERR_CHARS = 2000

# The credential helper answers `get` with the token read from the environment when git runs it, so the token
# itself is never part of the helper's definition, of argv or of a config file.
_TOKEN_CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || return 0; echo username=x-access-token; echo "password=${TOKEN_VARIABLE}"; }}; f'
)


@dataclass(frozen=True)
class CommitInfo:
    """Who made a commit, when, and its subject.

    Example: `mirror.commit_info("main")` ->
    `CommitInfo(sha="3f1c...", short_sha="3f1c2a9b7d10", message="Add orders model", author="Ann <ann@x.io>",
    author_name="Ann", authored_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))`.
    """

    sha: str
    short_sha: str
    message: str
    author: str
    author_name: str
    authored_at: datetime


@dataclass(frozen=True)
class ChangeRead:
    """What `detect` reads from Git in one round trip (see `GitMirror.read_change`)."""

    entries: list[DiffEntry]
    info: CommitInfo
    file_text: str | None
    ahead: int
    identities: list[tuple[str, str]]


@dataclass(frozen=True)
class CommitHistory:
    """The commits `target` has that `base` has not: how many, and who authored and committed them.

    `identities` are in one canonical order whatever was read to find them (a whole `git log`, or an earlier
    range extended by the history cache): the committer time of the newest commit carrying the identity,
    newest first, ties by `(name, email)`. They are sealed into plans, so the order must not depend on the
    cache.

    Example: `CommitHistory(ahead=2, identities=[("Ann", "ann@acme.io"), ("Carol", "carol@acme.io")])`.
    """

    ahead: int
    identities: list[tuple[str, str]]


@dataclass(frozen=True)
class _RangeHistory:
    """A range's commit count and, for each `(name, email)`, the committer time of its newest commit."""

    ahead: int
    newest: dict[tuple[str, str], int]

    def to_commit_history(self) -> CommitHistory:
        return CommitHistory(ahead=self.ahead, identities=_ordered_identities(self.newest))


@dataclass(frozen=True)
class _CachedRange:
    """What the history cache holds for a base: the target it was read for and that range's history."""

    target: str
    history: _RangeHistory


class _HistoryCache:
    """`detect`'s record of the histories it read, so the next plan of the same base reads only new commits.

    One JSON file in the mirror directory (`dagctl-history.json`): for each base commit, the target it was last
    read for, `ahead`, and each identity with the committer time of its newest commit. It lives where the Git
    objects live and is trusted as they are: whoever can write it can rewrite the mirror's history as well.
    At most `_HISTORY_CACHE_BASES` bases are kept, the least recently written dropped. A missing, unreadable,
    malformed or other-version file reads as empty (detect reads the whole range), and a failed write is
    ignored: the cache only ever saves time. Written atomically (a temporary file, then `os.replace`); two
    processes writing at once keep the last one's entries.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, object]:
        """The entries by base commit; empty when the file is missing or not ours."""
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _HISTORY_CACHE_VERSION:
            return {}
        bases = data.get("bases")
        return bases if isinstance(bases, dict) else {}

    def save(self, bases: Mapping[str, object], base: str, target: str, history: _RangeHistory) -> None:
        """Writes `bases` with `base`'s entry replaced by `target`'s history, as the most recent one."""
        entries = {key: entry for key, entry in bases.items() if key != base}
        entries[base] = {"target": target, "ahead": history.ahead,
                         "identities": [[*identity, history.newest[identity]]
                                        for identity in _ordered_identities(history.newest)]}
        kept = dict(list(entries.items())[-_HISTORY_CACHE_BASES:])
        text = json.dumps({"version": _HISTORY_CACHE_VERSION, "bases": kept}, separators=(",", ":"))
        temporary = None
        try:
            descriptor, temporary = tempfile.mkstemp(prefix=".dagctl-history-", dir=self.path.parent)
            with os.fdopen(descriptor, "w") as handle:
                os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide it from other readers of the mirror
                handle.write(text)
            os.replace(temporary, self.path)
        except OSError:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


def _get_cached_range(bases: Mapping[str, object], base: str) -> _CachedRange | None:
    """`base`'s entry of the history cache, or None when it has none or it is malformed."""
    entry = bases.get(base)
    try:
        target, ahead, identities = entry["target"], entry["ahead"], entry["identities"]
        newest = {(name, email): time for name, email, time in identities}
    except (TypeError, KeyError, ValueError):
        return None
    is_valid = (isinstance(target, str) and _FULL_SHA.fullmatch(target) is not None
                and type(ahead) is int and ahead >= 0
                and all(isinstance(name, str) and isinstance(email, str) and type(time) is int
                        for (name, email), time in newest.items()))
    return _CachedRange(target, _RangeHistory(ahead, newest)) if is_valid else None


class PendingChange:
    """A change being read for `detect` (see `GitMirror.start_change_read`): the diff, the target's commit and
    the file are read; the commit history comes from a `git log` that may still be running.

    The caller works on the files while git walks the history, then asks for `history()`. Use it as a context
    manager: leaving it stops a `git log` whose history was never asked for, and reaps it.

    Example:
        with mirror.start_change_read(base, head, file_path=".dagctl/config.yaml") as change:
            paths = [entry.path for entry in change.entries]
            ahead = change.history().ahead
    """

    def __init__(self, mirror: GitMirror, base: str | None, target: str, *, entries: list[DiffEntry],
                 info: CommitInfo, file_text: str | None, log: subprocess.Popen[bytes] | None,
                 cached: _CachedRange | None = None, known: _RangeHistory | None = None,
                 record: Callable[[_RangeHistory], None] | None = None) -> None:
        self.entries = entries
        self.info = info
        self.file_text = file_text
        self._mirror, self._base, self._target = mirror, base, target
        self._log = log
        self._cached, self._known, self._record = cached, known, record
        self._history: CommitHistory | None = None

    def history(self) -> CommitHistory:
        """The commits in `base..target` (the target alone without a base), waiting for `git log` if needed.

        Read from the history cache's entry for `base` when there was one (see `start_change_read`), then
        recorded in the cache for the next plan.

        Raises:
            DagctlGitError: the history cannot be read (the individual reads say why).
        """
        if self._history is None:
            self._history = self._read_history().to_commit_history()
        return self._history

    def _read_history(self) -> _RangeHistory:
        cached, history = self._cached, self._known  # known: a hit, or new commits read without `git log`
        if history is None:
            history = self._read_log(cached)
        if self._record is not None:
            self._record(history)
        return history

    def _read_log(self, cached: _CachedRange | None) -> _RangeHistory:
        raw, status = (b"", 1) if self._log is None else _drain(self._log)
        history = None
        if status == 0:
            history = (_parse_history(raw, is_counted=self._base is not None) if cached is None
                       else _extend_history(raw, cached.history))
        if history is None:  # git failed, or the cached range is not all in the target (history rewritten)
            history = self._mirror._read_range_history(self._base, self._target)
        return history

    def close(self) -> None:
        """Stops the `git log` if its output was never read; harmless after `history()`."""
        if self._log is not None and self._log.returncode is None:
            self._log.kill()
            _drain(self._log)

    def __enter__(self) -> PendingChange:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class DiffEntry:
    """One changed file between two commits, as `git diff --name-status -M` reports it.

    `change_type` is one of `added`, `modified`, `deleted`, `renamed`, `copied`, `type_changed`. `path` is the
    new path (the old one for `deleted`); `old_path` is the previous path of a renamed or copied file.

    Example: `DiffEntry(change_type="renamed", path="models/orders.sql", old_path="models/order.sql")`.
    """

    change_type: str
    path: str
    old_path: str | None = None


def redact_url(url: str) -> str:
    """`url` (or any text containing URLs) without the credentials embedded in it, for logs and errors.

    The user name alone is kept for `ssh://` URLs, where it is not a secret (`ssh://git@host/repo.git`).

    Example: `redact_url("https://x-access-token:s3cret@github.com/acme/dbt.git")` is
    `"https://github.com/acme/dbt.git"`.
    """

    def strip(match: re.Match[str]) -> str:
        scheme, userinfo = match.group("scheme"), match.group("userinfo")
        if scheme.lower() in ("ssh://", "git+ssh://", "ssh+git://") and ":" not in userinfo:
            return match.group(0)
        return scheme

    return _URL_USERINFO.sub(strip, url)


def git_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git processes: `base` (default `os.environ`) plus credentials and no prompts.

    - `DAGCTL_GIT_SSH_KEY=/path/to/key`: `GIT_SSH_COMMAND` uses that key only, and accepts a new host key once.
    - `DAGCTL_GIT_TOKEN=<token>`: for https URLs, a credential helper passed through `GIT_CONFIG_*` variables
      answers with user `x-access-token` and the token, read from the environment when git runs it. Helpers
      configured elsewhere are switched off, so the token is never stored (e.g. by `credential.helper=store`).
    - Always `GIT_TERMINAL_PROMPT=0`: git fails instead of waiting for a password.

    Example: `GitMirror(url, path, env=git_environment({**os.environ, "GIT_TRACE": "1"}))` runs git with the
    credentials of this process and traces its commands; `git_environment()["GIT_TERMINAL_PROMPT"]` is `"0"`.
    """
    env = dict(os.environ if base is None else base)
    env["GIT_TERMINAL_PROMPT"] = "0"
    ssh_key = env.get(SSH_KEY_VARIABLE)
    if ssh_key:
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {shlex.quote(ssh_key)} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"
        )
    if env.get(TOKEN_VARIABLE):
        # Append to configuration already passed this way instead of replacing it.
        index = int(env.get("GIT_CONFIG_COUNT") or 0)
        # An empty value first resets the list of helpers configured in files.
        for offset, helper in enumerate(("", _TOKEN_CREDENTIAL_HELPER)):
            env[f"GIT_CONFIG_KEY_{index + offset}"] = "credential.helper"
            env[f"GIT_CONFIG_VALUE_{index + offset}"] = helper
        env["GIT_CONFIG_COUNT"] = str(index + 2)
    return env


def _normalize_subdirectory(subdirectory: str | None) -> str | None:
    cleaned = (subdirectory or "").strip().strip("/")
    return None if cleaned in ("", ".") else cleaned


def _relative_to(path: str, subdirectory: str | None) -> str:
    path = escape_undecodable(path)
    if subdirectory and path.startswith(f"{subdirectory}/"):
        return path[len(subdirectory) + 1 :]
    return path


def escape_undecodable(text: str) -> str:
    """`text` decoded with `surrogateescape`, its undecodable bytes written as `\\xNN` (plain ASCII).

    File names are bytes to Git; one that is not UTF-8 must never reach Dagster's event log or logs, which
    cannot store it. The escaped name is still readable and says which byte it was.

    Example: `escape_undecodable(b"models/caf\\xe9.sql".decode("utf-8", "surrogateescape"))` is
    `"models/caf\\\\xe9.sql"` (a backslash, then `xe9`).
    """
    if text.isascii() or not any("\udc80" <= character <= "\udcff" for character in text):
        return text
    return "".join(
        f"\\x{ord(character) - 0xDC00:02x}" if "\udc80" <= character <= "\udcff" else character
        for character in text
    )


def _parse_name_status(output: str, subdirectory: str | None) -> list[DiffEntry]:
    """Parse `git diff --name-status -z`: a status, then one path (two for renames and copies), NUL-separated."""
    fields = output.split("\0")
    entries: list[DiffEntry] = []
    position = 0
    while position < len(fields) and fields[position]:
        status = fields[position]
        letter = status[0]
        if letter in ("R", "C"):
            old_path, path = fields[position + 1], fields[position + 2]
            position += 3
            entries.append(
                DiffEntry(
                    change_type=_CHANGE_TYPES[letter],
                    path=_relative_to(path, subdirectory),
                    old_path=_relative_to(old_path, subdirectory),
                )
            )
            continue
        path = fields[position + 1]
        position += 2
        # Statuses outside the table (U unmerged, X unknown) cannot occur between two commits.
        change_type = _CHANGE_TYPES.get(letter, "modified")
        entries.append(DiffEntry(change_type=change_type, path=_relative_to(path, subdirectory)))
    return sorted(entries, key=lambda entry: (entry.path, entry.old_path or ""))


class GitMirror:
    """One local bare mirror of a project's repository, fetched incrementally (never a full clone per tick).

    All reads (`resolve`, `read_file`, `diff`, `export_snapshot`...) use the mirror only; the network is used by
    `ensure` (first time), `remote_head` and `fetch`. Several processes may share one mirror: creating and
    fetching it are serialized by a lock file next to it. Next to the Git objects, `dagctl-history.json` is
    `detect`'s history cache (see `start_change_read`): deleting it only makes the next `detect` read more.

    Args:
        url: the repository URL as git accepts it (https, ssh, scp-like or a local path).
        mirror_dir: where the bare repository lives; created by the first `ensure()`.
        env: the environment of git processes; default `git_environment()`. `GIT_TERMINAL_PROMPT=0` is always
            added.
        network_timeout: seconds after which a network call (ls-remote, fetch) is killed, and how long a
            transfer may stay below 1 KB/s.

    Example:
        ```python
        mirror = GitMirror("https://github.com/acme/analytics.git", Path("/var/dagctl/mirrors/analytics"))
        head = mirror.refresh_branch("main")
        changes = mirror.diff(last_deployed, head, subdirectory="dbt")
        project_dir = mirror.export_snapshot(head, Path(f"/var/dagctl/snapshots/{head}"), subdirectory="dbt")
        ```
    """

    def __init__(self, url: str, mirror_dir: Path, *, env: Mapping[str, str] | None = None,
                 network_timeout: float = NETWORK_TIMEOUT_SECONDS) -> None:
        if not url or url.startswith("-"):
            raise DagctlGitError(
                f"Invalid Git repository URL {redact_url(url)!r}: give an https, ssh or scp-like URL "
                "(or a local path) in the project's `repository`."
            )
        self.url = url
        self.mirror_dir = Path(mirror_dir)
        self.network_timeout = network_timeout
        self._env = {**(git_environment() if env is None else env), "GIT_TERMINAL_PROMPT": "0"}
        # Values that must never reach a message: the token and a password embedded in the URL.
        self._secrets = [
            secret
            for secret in (self._env.get(TOKEN_VARIABLE), *_url_passwords(url))
            if secret and len(secret) >= 3
        ]
        self._object_git: git.Git | None = None
        self._history_cache = _HistoryCache(self.mirror_dir / HISTORY_CACHE_NAME)

    def __repr__(self) -> str:
        return f"GitMirror({redact_url(self.url)!r}, {str(self.mirror_dir)!r})"

    @property
    def display_url(self) -> str:
        """The repository URL without credentials, as shown in logs and errors."""
        return redact_url(self.url)

    # -- network ---------------------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the mirror if it does not exist yet (a full fetch of all branches); otherwise do nothing.

        The mirror is built in a temporary directory and renamed into place, so a crash never leaves a half
        mirror behind, and a lock file keeps two processes from building it at once. Unlike `git clone`, the
        URL is not written into the mirror's config, so credentials embedded in it are never stored.

        Example: `GitMirror(url, Path("/tmp/mirror")).ensure()` leaves a bare repository in `/tmp/mirror`.
        """
        if self.exists():
            return
        with self._lock():
            if self.exists():  # Another process built it while we waited for the lock.
                return
            prefix = f".{self.mirror_dir.name}.building-"
            building = Path(tempfile.mkdtemp(prefix=prefix, dir=self.mirror_dir.parent))
            try:
                self._run(["init", "--bare", "--quiet", str(building)], in_mirror=False, action="create a mirror of")
                self._fetch_into(building)
                os.rename(building, self.mirror_dir)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise

    def exists(self) -> bool:
        """Whether the mirror has been created (by `ensure`).

        Example: `GitMirror(url, tmp_path / "m").exists()` is `False` until `ensure()` ran.
        """
        return (self.mirror_dir / "HEAD").is_file()

    def remote_head(self, branch: str) -> str:
        """The sha at the head of `branch` on the remote, asked with `git ls-remote` (nothing is fetched).

        Raises:
            DagctlGitError: the remote is unreachable or has no such branch.

        Example: `mirror.remote_head("main")` -> `"3f1c2a9b7d10..."` (40 hex digits).
        """
        return self.start_remote_head(branch)()

    def start_remote_head(self, branch: str) -> Callable[[], str]:
        """`remote_head`, started now in its own git process and collected by calling the result, so the
        caller can read its own state while the remote answers. The collector raises what `remote_head`
        raises; a remote silent for `network_timeout` seconds has git and its helpers killed.

        Example: `head = mirror.start_remote_head("main"); ...; head()` -> `"3f1c2a9b7d10..."`.
        """
        _check_ref_argument(branch, "branch", self.display_url)
        ref = f"refs/heads/{branch}"
        action = f"read the head of branch '{branch}' from"
        # English messages for `_hint`, as GitPython runs git; a session of its own, so that a timeout kills
        # the transport helpers (git-remote-https, ssh) with git.
        env = {**os.environ, **self._env, "LANGUAGE": "C", "LC_ALL": "C"}
        process = subprocess.Popen(["git", *self._network_options(), "ls-remote", self.url, ref], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)

        def collect() -> str:
            try:
                output, stderr = process.communicate(timeout=self.network_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise self._error(action, "Timeout: the command was killed",
                                  hint=self._hint("timeout: the command", network=True)) from None
            if process.returncode != 0:
                text = stderr.decode("utf-8", "replace")
                raise self._error(action, text, hint=self._hint(text, network=True))
            for line in output.decode("utf-8", "replace").splitlines():
                sha, _, name = line.partition("\t")
                if name == ref:
                    return sha
            raise DagctlGitError(
                f"Branch '{branch}' does not exist in {self.display_url}: push the branch, or fix the project's "
                "branch in the deployment config."
            )

        return collect

    def fetch(self) -> None:
        """Fetch all branches into the mirror: new commits only, moved and deleted branches follow the remote.

        Raises:
            DagctlGitError: the mirror does not exist (call `ensure()`), or the remote is unreachable.

        Example: `mirror.fetch()` after a push makes `mirror.resolve("main")` return the pushed sha.
        """
        self._require_mirror()
        with self._lock():
            self._fetch_into(self.mirror_dir)

    def refresh_branch(self, branch: str, *, remote: str | None = None) -> str:
        """The head of `branch`, present in the mirror; fetches only when the remote head moved.

        `remote` is the remote head when the caller has just asked for it (`remote_head`): it is not asked
        again.

        Raises:
            DagctlGitError: the remote is unreachable or has no such branch.

        Example: `mirror.refresh_branch("main")` on a quiet repository costs one `git ls-remote`.
        """
        self.ensure()
        remote = remote or self.remote_head(branch)
        if self._local_branch(branch) == remote:
            return remote
        self.fetch()
        local = self._local_branch(branch)
        if local is None:
            raise DagctlGitError(
                f"Branch '{branch}' disappeared from {self.display_url} while it was being fetched: "
                "check that the branch still exists, then try again."
            )
        # The branch may have moved again between ls-remote and fetch; what the mirror holds is what we can use.
        return local

    # -- reads from the mirror -------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The full sha of a commit in the mirror, from a branch name, a sha or an unambiguous short sha.

        Raises:
            DagctlGitError: nothing in the mirror matches `ref` (or a short sha is ambiguous).

        Example: `mirror.resolve("3f1c2a9")` -> `"3f1c2a9b7d10..."`; `mirror.resolve("main")` -> the branch head.
        """
        _check_ref_argument(ref, "commit", self.display_url)
        self._require_mirror()
        status, output, _ = self._execute(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"])
        if status != 0 or not output.strip():
            raise DagctlGitError(
                f"Commit or branch '{ref}' is not in the mirror of {self.display_url}: check the sha or the "
                "branch name, and that it was pushed (the mirror is refreshed from the tracked branches)."
            )
        return output.strip()

    def has_commit(self, sha: str) -> bool:
        """Whether the commit `sha` (full or short) is in the mirror; `False` if the mirror does not exist.

        Example: `mirror.has_commit(mirror.remote_head("main"))` is `False` until the mirror is fetched.
        """
        if not sha or sha.startswith("-") or not self.exists():
            return False
        status, _, _ = self._execute(["cat-file", "-e", f"{sha}^{{commit}}"])
        return status == 0

    def read_file(self, commit: str, path: str) -> str | None:
        """The text of the file `path` (relative to the repository root) at `commit`; `None` if it is absent.

        Raises:
            DagctlGitError: the commit is not in the mirror, or the file is not UTF-8 text.

        Example: `mirror.read_file("main", ".dagctl/config.yaml")` -> `"version: 3\\n..."`.
        """
        sha = self.resolve(commit)
        path = path.strip().lstrip("/").removeprefix("./")
        status, content, _ = self._execute(["cat-file", "blob", f"{sha}:{path}"], text=False)
        if status != 0:
            return None  # The commit is known, so a failure means there is no such file (or it is a directory).
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DagctlGitError(
                f"File '{path}' at commit {sha[:12]} of {self.display_url} is not UTF-8 text: "
                "save it as UTF-8."
            ) from error

    def commit_info(self, commit: str) -> CommitInfo:
        """Sha, subject, author and author date (UTC) of a commit in the mirror.

        `short_sha` is always the first 12 hex digits, not git's abbreviation, which grows with the repository
        and would make names built from it (image tags, folders) change over time.

        Raises:
            DagctlGitError: the commit is not in the mirror.

        Example: `mirror.commit_info("main").author` -> `"Ann <ann@acme.io>"`.
        """
        sha = self.resolve(commit)
        output = self._run(["show", "--no-patch", "--format=%H%x00%s%x00%an%x00%ae%x00%aI", sha], action="read")
        full_sha, subject, name, email, authored = output.strip().split("\0")
        return CommitInfo(
            sha=full_sha,
            short_sha=full_sha[:12],
            message=subject,
            author=f"{name} <{email}>",
            author_name=name,
            authored_at=datetime.fromisoformat(authored).astimezone(UTC),
        )

    def read_history(self, base: str | None, target: str) -> CommitHistory:
        """The commits in `base..target` in one `git log`: how many, and the `(name, email)` of the author and
        the committer of each, once each, in `CommitHistory`'s canonical order (newest committer time first,
        ties by `(name, email)`). Without `base` (a first deployment): 0 commits ahead and the identities of
        the target commit alone (the whole history is not one person's change). Refs are resolved first.

        Raises:
            DagctlGitError: either commit is not in the mirror.

        Example: `mirror.read_history(deployed, "main")` -> `CommitHistory(ahead=3, identities=[("Ann", ...)])`.
        """
        target_sha = self.resolve(target)
        return self._read_range_history(self.resolve(base) if base else None, target_sha).to_commit_history()

    def _read_range_history(self, base: str | None, target: str) -> _RangeHistory:
        """The whole history of `base..target` (the target alone without a base) in one `git log`."""
        status, raw, stderr = self._execute(_history_args(base, target), text=False)
        if status != 0:
            # Say which commit is unknown, if one is.
            if base is not None:
                self.resolve(base)
            self.resolve(target)
            raise self._error("list the commits of", stderr, hint=self._hint(stderr, network=False))
        return _parse_history(raw, is_counted=base is not None)

    def diff(self, base: str | None, target: str, *, subdirectory: str | None = None) -> list[DiffEntry]:
        """The files changed from `base` to `target`, with rename detection, sorted by path.

        With `subdirectory`, only files under it are listed and paths are relative to it; a file moved into or
        out of the subdirectory is `added` or `deleted` from its point of view. A `base` of `None` diffs
        against the empty tree: every file is `added`. One `git diff` process, whatever the size of the change.

        Raises:
            DagctlGitError: either commit is not in the mirror.

        Example: `mirror.diff("v1", "main", subdirectory="dbt")` ->
        `[DiffEntry("modified", "models/orders.sql", None), DiffEntry("renamed", "seeds/b.csv", "seeds/a.csv")]`.
        """
        self._require_mirror()
        for ref in (base, target):
            if ref is not None:
                _check_ref_argument(ref, "commit", self.display_url)
        subdirectory = _normalize_subdirectory(subdirectory)
        args = [
            "diff",
            "--name-status",
            "-z",
            "-M",
            "--no-ext-diff",
            "--no-relative",
            base if base is not None else _EMPTY_TREE,
            target,
            "--",
        ]
        if subdirectory:
            # A pathspec (not `--relative`) so rename detection only pairs files inside the subdirectory.
            args.append(f":(top,literal){subdirectory}/")
        status, raw, stderr = self._execute(args, text=False)
        if status != 0:
            # Find which side is unknown only on failure, to keep the common path to one process.
            if base is not None:
                self.resolve(base)
            self.resolve(target)
            raise self._error(f"diff {base} and {target} in", stderr, hint="check both commits")
        return _parse_name_status(raw.decode("utf-8", "surrogateescape"), subdirectory)

    def read_change(
        self, base: str | None, target: str, *, subdirectory: str | None = None, file_path: str
    ) -> ChangeRead:
        """Everything `detect` needs from Git, read by concurrent git processes (see `start_change_read`).

        The diff (as `diff`), the target's commit info (as `commit_info`), one file at the target (as
        `read_file`), the commits ahead and their identities (as `read_history`).

        Example: `mirror.read_change(base, head, subdirectory="dbt", file_path="dbt/.dagctl/config.yaml")`.
        """
        with self.start_change_read(base, target, subdirectory=subdirectory, file_path=file_path) as change:
            history = change.history()
        return ChangeRead(entries=change.entries, info=change.info, file_text=change.file_text,
                          ahead=history.ahead, identities=history.identities)

    def start_change_read(
        self, base: str | None, target: str, *, subdirectory: str | None = None, file_path: str
    ) -> PendingChange:
        """Reads what `read_change` reads, and returns as soon as the diff is read: the history follows.

        Two git processes start together: `log` (it counts the commits and lists their authors and
        committers, the longest read: it parses every commit object) first, then `diff` (`diff` first when the
        history cache makes `log` short). The target's commit and the file come from a persistent
        `cat-file --batch` meanwhile. This returns once the diff is read,
        so the caller's own work on the files overlaps the `log`, which `PendingChange.history()` waits for:
        with two free CPUs, `detect` takes about as long as that `log`. `target` (and `base`) must be full
        shas. On any failure it falls back to the individual reads, which raise the precise `DagctlGitError`.

        The history cache (`dagctl-history.json` in the mirror, see `_HistoryCache`) makes the `log` short in
        the sensor's steady state, where each plan's range extends the previous plan's: when it holds
        `base -> t` (`base..t` was read before), `log --left-right target...t ^base` lists only the commits
        of `target` that `t` lacks (`<`) and those of `t` that `target` lacks (`>`). Without a `>` line,
        `base..target` is exactly those `<` commits plus `base..t`, so `ahead` adds up and the identities are
        the union. Any `>` line (a force push dropped commits of `base..t`), or a failed `log`, means the
        whole range is read again. No `log` runs when `t` is `target` (a hit), nor when `target` descends
        from `t` by a few single-parent commits that `cat-file` reads exactly as `log` would (a push of new
        commits on the branch: `diff` then runs alone, see `_walk_to_cached`). Every history read with a
        base is recorded for the next plan.

        Example: `mirror.start_change_read(base, head, subdirectory="dbt", file_path="dbt/.dagctl/config.yaml")`.
        """
        self._require_mirror()
        for ref in (base, target):
            if ref is not None and not _FULL_SHA.match(ref):
                raise DagctlGitError(f"read_change needs full commit shas, got '{ref}'")
        subdirectory = _normalize_subdirectory(subdirectory)
        path = file_path.strip().lstrip("/").removeprefix("./")
        # GIT_FLUSH=0: writing to a pipe, `log` would flush after every commit (1,000 writes for 1,000 commits,
        # and as many wake-ups of this process), which made it take half as long again.
        env = {**os.environ, **self._mirror_env(self.mirror_dir), "GIT_FLUSH": "0"}
        diff_args = ["diff", "--name-status", "-z", "-M", "--no-ext-diff", "--no-relative",
                     base or _EMPTY_TREE, target, "--"]
        if subdirectory:
            diff_args.append(f":(top,literal){subdirectory}/")
        bases = self._history_cache.load() if base else {}
        cached = _get_cached_range(bases, base) if base else None
        is_hit = cached is not None and cached.target == target
        # The longer read starts first: a first plan's `log` (every commit object of the range), else the
        # `diff`. No stderr: on a failure the individual reads run again and say what went wrong.
        log = _start_git(_history_args(base, target), env) if cached is None else None
        diff = _start_git(diff_args, env)
        try:
            try:
                commit_raw: bytes | None = self._read_object(target, b"commit")
                file_raw: bytes | None = self._read_object(f"{target}:{path}", b"blob")
            except ValueError:
                commit_raw = file_raw = None
            known = cached.history if cached is not None and is_hit else None
            if cached is not None and base and not is_hit and commit_raw is not None:
                known = _walk_to_cached(self._read_commit, base, commit_raw, cached)
                if known is None:
                    log = _start_git(_extension_args(base, target, cached.target), env)
            diff_raw, diff_status = _drain(diff)
            if commit_raw is None or diff_status != 0:
                if log is not None:
                    log.kill()
                    _drain(log)
                return PendingChange(
                    self, base, target, entries=self.diff(base, target, subdirectory=subdirectory),
                    info=self.commit_info(target), file_text=self.read_file(target, path), log=None)
            try:
                file_text = file_raw.decode("utf-8") if file_raw is not None else None
            except UnicodeDecodeError as error:
                raise DagctlGitError(
                    f"File '{path}' at commit {target[:12]} of {self.display_url} is not UTF-8 text: "
                    "save it as UTF-8."
                ) from error
            return PendingChange(
                self, base, target,
                entries=_parse_name_status(diff_raw.decode("utf-8", "surrogateescape"), subdirectory),
                info=_parse_commit_object(target, commit_raw), file_text=file_text, log=log, cached=cached,
                known=known, record=None if base is None or is_hit else (
                    lambda history: self._history_cache.save(bases, base, target, history)))
        except BaseException:
            for process in (log, diff):
                if process is not None and process.returncode is None:
                    process.kill()
                    _drain(process)
            raise

    def _objects(self) -> git.Git:
        """A git command object whose `cat-file --batch` process stays alive between reads."""
        if self._object_git is None:
            import git

            self._object_git = git.Git(str(self.mirror_dir))
            self._object_git.update_environment(**self._mirror_env(self.mirror_dir))
        return self._object_git

    def _read_object(self, spec: str, kind: bytes) -> bytes | None:
        """The object `spec` if it is a `kind` (`b"blob"`, `b"commit"`); None if missing or another kind."""
        try:
            _, found, _, data = self._objects().get_object_data(spec)
        except ValueError:
            return None  # `missing`: e.g. no such file at that commit
        return data if found == kind else None

    def _read_commit(self, sha: str) -> bytes | None:
        return self._read_object(sha, b"commit")

    def tree_id(self, commit: str, subdirectory: str | None = None) -> str:
        """The id of the tree of `commit` (or of its `subdirectory`): a content hash of the snapshot.

        Two commits with the same tree id have exactly the same files, so it can key caches of builds.

        Raises:
            DagctlGitError: the commit is not in the mirror, or the subdirectory does not exist at that commit.

        Example: `mirror.tree_id("main", "dbt")` -> `"9c4e..."` (40 hex digits).
        """
        sha = self.resolve(commit)
        subdirectory = _normalize_subdirectory(subdirectory)
        if not subdirectory:
            return self._run(["rev-parse", "--verify", f"{sha}^{{tree}}"], action="read").strip()
        # `ls-tree -d` lists the directory itself with its type; a file of that name is not listed.
        output = self._run(
            ["ls-tree", "-d", "-z", "--full-tree", sha, "--", f":(literal){subdirectory}"], action="read"
        )
        for entry in output.split("\0"):
            info, _, name = entry.partition("\t")
            if name == subdirectory and info.split(" ")[1:2] == ["tree"]:
                return info.split(" ")[2]
        raise DagctlGitError(
            f"Directory '{subdirectory}' does not exist at commit {sha[:12]} of {self.display_url}: "
            "fix the project's subdirectory in the deployment config, or check the commit."
        )

    def export_snapshot(self, commit: str, destination: Path, *, subdirectory: str | None = None) -> Path:
        """Write the files of `commit` (only `subdirectory`'s, as the root, when given) to `destination`.

        The snapshot has no `.git` and is never modified after it is written: it is extracted next to
        `destination` and renamed into place, so a reader never sees half a snapshot. If `destination` already
        exists it is reused as it is, so name it after the commit (or `tree_id`). Entries that would escape the
        snapshot (absolute or outward symlinks) are refused.

        Raises:
            DagctlGitError: the commit or the subdirectory does not exist, or the archive cannot be extracted.

        Example: `mirror.export_snapshot(sha, Path(f"/snapshots/{sha}"), subdirectory="dbt")` -> that path,
        holding `dbt_project.yml`, `models/`...
        """
        destination = Path(destination)
        if destination.exists():
            return destination
        tree = self.tree_id(commit, subdirectory)
        destination.parent.mkdir(parents=True, exist_ok=True)
        extracting = Path(tempfile.mkdtemp(prefix=f".{destination.name}.extracting-", dir=destination.parent))
        try:
            self._extract_archive(tree, extracting, commit=commit)
            extracting.chmod(0o755)  # mkdtemp makes it private; a snapshot is read by other users (pods).
            try:
                os.rename(extracting, destination)
            except OSError:
                if not destination.exists():
                    raise
                shutil.rmtree(extracting, ignore_errors=True)  # Another process exported it first.
        except BaseException:
            shutil.rmtree(extracting, ignore_errors=True)
            raise
        return destination

    # -- internals -------------------------------------------------------------------------------------------

    def _fetch_into(self, git_dir: Path) -> None:
        self._run(
            # A commit-graph makes history walks (commits ahead of the base) several times faster. Every fetch
            # keeps what it receives as a pack: git would unpack a fetch of fewer than 100 objects into loose
            # files, and `detect`'s `git log` reads 1,000 loose commits 3.5 times slower than packed ones.
            ["-c", "fetch.writeCommitGraph=true", "-c", "fetch.unpackLimit=1", "fetch", "--quiet", "--prune",
             "--no-tags", "--no-recurse-submodules", self.url, _BRANCHES_REFSPEC],
            git_dir=git_dir,
            action="fetch branches from",
            network=True,
        )

    def _local_branch(self, branch: str) -> str | None:
        status, output, _ = self._execute(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"])
        return output.strip() if status == 0 and output.strip() else None

    def _extract_archive(self, tree: str, directory: Path, *, commit: str) -> None:
        import git

        process = self._git(self.mirror_dir).execute(
            ["git", "archive", "--format=tar", tree], as_process=True, env=self._mirror_env(self.mirror_dir)
        )
        try:
            with tarfile.open(fileobj=process.proc.stdout, mode="r|") as archive:
                extract_data_archive(archive, directory)
            process.wait()
        except (tarfile.TarError, git.GitCommandError, OSError) as error:
            process.proc.kill()
            process.proc.wait()
            raise DagctlGitError(
                f"Cannot export commit '{commit}' of {self.display_url} to {directory.parent}: "
                f"{self._scrub(str(getattr(error, 'stderr', '') or error))}. Check free disk space, and that the "
                "repository has no links pointing outside the project."
            ) from error

    def _run(
        self,
        args: Sequence[str],
        *,
        action: str,
        in_mirror: bool = True,
        git_dir: Path | None = None,
        network: bool = False,
    ) -> str:
        """Run git and return its output; on failure a `DagctlGitError` saying what we tried on which URL."""
        status, output, stderr = self._execute(args, in_mirror=in_mirror, git_dir=git_dir, network=network)
        if status != 0:
            raise self._error(action, stderr, hint=self._hint(stderr, network=network))
        return output

    def _hint(self, stderr: str, *, network: bool) -> str:
        """The hint that fits what git said."""
        said = stderr.lower()
        if any(error in said for error in _DISK_ERRORS):
            return f"free disk space (or fix permissions) where the mirrors live, {self.mirror_dir.parent}"
        if not network:
            return f"check the mirror in {self.mirror_dir} (delete it to rebuild it from the remote)"
        if any(error in said for error in _TIMEOUT_ERRORS):
            return (f"the remote did not answer within {self.network_timeout:g}s: check that it is up and "
                    "reachable, or raise the project's git_timeout_seconds if it is only slow")
        if any(error in said for error in _UNREACHABLE_ERRORS):
            return "check the host name in the URL and that the network reaches it"
        if any(error in said for error in _CREDENTIAL_ERRORS):
            return ("check the credentials: DAGCTL_GIT_SSH_KEY (ssh) or DAGCTL_GIT_TOKEN (https) in the "
                    "environment, and that they may read this repository")
        return ("check the URL, the network and the credentials (DAGCTL_GIT_SSH_KEY or DAGCTL_GIT_TOKEN in the "
                "environment)")

    def _execute(
        self,
        args: Sequence[str],
        *,
        in_mirror: bool = True,
        git_dir: Path | None = None,
        network: bool = False,
        text: bool = True,
    ) -> tuple[int, str, str] | tuple[int, bytes, str]:
        directory = git_dir or (self.mirror_dir if in_mirror else None)
        env = self._mirror_env(directory) if directory else self._env
        if network:
            args = [*self._network_options(), *args]
        return self._git(directory).execute(
            ["git", *args],
            env=env,
            with_extended_output=True,
            with_exceptions=False,
            stdout_as_string=text,
            strip_newline_in_stdout=False,
            kill_after_timeout=self.network_timeout if network else None,
        )

    def _network_options(self) -> list[str]:
        return ["-c", f"http.lowSpeedLimit={_LOW_SPEED_LIMIT_BYTES}",
                "-c", f"http.lowSpeedTime={max(1, int(self.network_timeout))}"]

    def _mirror_env(self, git_dir: Path) -> dict[str, str]:
        # An explicit GIT_DIR: no discovery from the working directory, whatever it is.
        return {**self._env, "GIT_DIR": str(git_dir)}

    @staticmethod
    def _git(directory: Path | None) -> git.Git:
        import git

        return git.Git(str(directory) if directory else None)

    def _error(self, action: str, stderr: str, *, hint: str) -> DagctlGitError:
        detail = self._scrub(stderr).strip().rstrip(".")
        # GitPython's words (with the whole command line), or git's own low-speed limit over HTTP, which is set
        # to the same timeout and may fire first: one message for both.
        if detail.startswith("Timeout: the command") or "operation too slow" in detail.lower():
            detail = f"no answer within {self.network_timeout:g}s, git was stopped"
        if len(detail) > _MAX_STDERR_CHARS:
            detail = "..." + detail[-_MAX_STDERR_CHARS:]
        return DagctlGitError(
            f"Cannot {action} {self.display_url}: {detail or 'git failed without a message'}. Hint: {hint}."
        )

    def _scrub(self, text: str) -> str:
        text = redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _require_mirror(self) -> None:
        if not self.exists():
            raise DagctlGitError(
                f"The mirror of {self.display_url} does not exist in {self.mirror_dir}: call ensure() "
                "(or refresh_branch()) first."
            )

    @contextmanager
    def _lock(self) -> Iterator[None]:
        # `<name>.lock` rather than `with_suffix(".lock")`: mirror names like `github.com_acme_dbt` have dots.
        lock_path = self.mirror_dir.with_name(f"{self.mirror_dir.name}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def _url_passwords(url: str) -> list[str]:
    match = _URL_USERINFO.search(url)
    if not match:
        return []
    user, _, password = match.group("userinfo").partition(":")
    if password:
        return [password]
    # A user alone is a secret in http(s) URLs (`https://<token>@github.com/...`), not in ssh ones (`git@`).
    return [user] if match.group("scheme").lower() in ("http://", "https://") else []


def extract_data_archive(archive: tarfile.TarFile, directory: Path) -> None:
    """Extracts `archive` (read as a stream) into `directory` as tarfile's "data" filter does: absolute paths,
    links leading outside `directory` and device files are refused (`tarfile.TarError` naming the member),
    and no file keeps a setuid bit or a write bit for others.

    Python 3.11.4 and later have the filter (`extractall(filter="data")`); older 3.11 releases (Debian 12
    ships 3.11.2) do not, and get the same checks here, member by member.
    """
    if hasattr(tarfile, "data_filter"):
        archive.extractall(directory, filter="data")
        return
    root = directory.resolve()

    def inside(path: Path) -> bool:
        return path == root or root in path.parents

    for member in archive:
        target = (root / member.name).resolve()
        if os.path.isabs(member.name) or not inside(target):
            raise tarfile.TarError(f"'{member.name}' would be written outside the snapshot")
        if member.issym() or member.islnk():
            base = target.parent if member.issym() else root
            if os.path.isabs(member.linkname) or not inside((base / member.linkname).resolve()):
                raise tarfile.TarError(f"'{member.name}' links to '{member.linkname}', outside the snapshot")
        elif not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"'{member.name}' is a device or special file")
        member.mode &= 0o755
        archive.extract(member, directory)


def _start_git(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["git", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _history_args(base: str | None, target: str) -> list[str]:
    revisions = [f"{base}..{target}"] if base else ["-1", target]
    return ["log", "--encoding=UTF-8", f"--format={_HISTORY_FORMAT}", *revisions, "--"]


def _extension_args(base: str, target: str, cached_target: str) -> list[str]:
    """The commits of `target` that `cached_target` has not (`<`), and the reverse (`>`), outside `base`."""
    return ["log", "--encoding=UTF-8", "--left-right", f"--format=%m{_HISTORY_FORMAT}",
            f"{target}...{cached_target}", f"^{base}", "--"]


def _parse_history(output: bytes, *, is_counted: bool) -> _RangeHistory:
    """`_history_args`'s output: one line a commit (counted when `is_counted`)."""
    return _RangeHistory(ahead=output.count(b"\n") if is_counted else 0, newest=_parse_newest(output.split(b"\n")))


def _extend_history(output: bytes, cached: _RangeHistory) -> _RangeHistory | None:
    """`cached` (the history of `base..t`) extended by `_extension_args`'s output; None if it has a `>` line:
    then some commit of `base..t` is not in `target`, and the union would be wrong."""
    if output.startswith(b">") or b"\n>" in output:
        return None
    lines = [line[1:] for line in output.split(b"\n") if line]
    return _RangeHistory(ahead=cached.ahead + len(lines),
                         newest=_merge_newest(cached.newest, _parse_newest(lines)))


def _walk_to_cached(read_commit: Callable[[str], bytes | None], base: str, target_raw: bytes,
                    cached: _CachedRange) -> _RangeHistory | None:
    """`base..target` read from commit objects when `target` descends from the cached target `t` by a short
    chain of single-parent commits: `cached`'s history plus that chain's. None when it does not (a merge, a
    longer or rewritten history, a commit this does not read exactly as `git log` would): `log` decides.

    Exact: with `base..t` not empty, no commit above `t` is an ancestor of `base`, so `base..target` is the
    chain plus `base..t`.
    """
    if cached.history.ahead == 0:
        return None
    newest: dict[tuple[str, str], int] = {}
    raw: bytes | None = target_raw
    for count in range(1, _WALK_LIMIT + 1):
        headers = raw.partition(b"\n\n")[0] + b"\n" if raw is not None else b""
        match = _WALKABLE_COMMIT.match(headers)
        if match is None or b"\nencoding " in headers:
            return None
        parent, author, author_email, _, committer, committer_email, time = match.groups()
        newest = _merge_newest(newest, {
            (author.decode("utf-8", "replace"), author_email.decode("utf-8", "replace")): int(time),
            (committer.decode("utf-8", "replace"), committer_email.decode("utf-8", "replace")): int(time)})
        if parent.decode() == cached.target:
            return _RangeHistory(cached.history.ahead + count, _merge_newest(cached.history.newest, newest))
        if parent.decode() == base:
            return None
        raw = read_commit(parent.decode())
    return None


def _parse_newest(lines: Iterable[bytes]) -> dict[tuple[str, str], int]:
    """For each `(name, email)` in lines `ct NUL an NUL ae NUL cn NUL ce`, the newest `ct` carrying it."""
    # A few people write most commits: each distinct author-committer pair is decoded and split once.
    by_people: dict[bytes, int] = {}
    for line in lines:
        stamp, _, people = line.partition(b"\0")
        if people:
            time = int(stamp)
            if time > by_people.get(people, time - 1):
                by_people[people] = time
    newest: dict[tuple[str, str], int] = {}
    for people, time in by_people.items():
        fields = people.decode("utf-8", "replace").split("\0")
        if len(fields) == 4:
            for identity in ((fields[0], fields[1]), (fields[2], fields[3])):
                if time > newest.get(identity, time - 1):
                    newest[identity] = time
    return newest


def _merge_newest(first: Mapping[tuple[str, str], int],
                  second: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Every identity of either, with the newer of its two times."""
    merged = dict(first)
    for identity, time in second.items():
        if time > merged.get(identity, time - 1):
            merged[identity] = time
    return merged


def _ordered_identities(newest: Mapping[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The canonical order of identities: the newest commit carrying one first, ties by `(name, email)`.

    It depends only on the set of commits, so a range read whole and one read as an earlier range plus its
    new commits give the same list (history order would not: a union cannot place a merged branch's commits).
    """
    return sorted(newest, key=lambda identity: (-newest[identity], identity))


def _drain(process: subprocess.Popen[bytes]) -> tuple[bytes, int]:
    """All of `process`'s standard output (its only pipe) and its exit status, once it has exited."""
    assert process.stdout is not None
    with process.stdout:
        output = process.stdout.read()
    return output, process.wait()


def _check_ref_argument(ref: str, kind: str, display_url: str) -> None:
    # A leading dash would be read by git as an option.
    if not ref or ref.startswith("-") or any(character.isspace() or character == "\0" for character in ref):
        raise DagctlGitError(f"Invalid {kind} name {ref!r} for {display_url}: give a branch name or a commit sha.")


def _parse_commit_object(sha: str, raw: bytes) -> CommitInfo:
    headers, _, message = raw.partition(b"\n\n")
    match = _AUTHOR.search(headers)
    if match is None:
        raise DagctlGitError(f"commit {sha[:12]} has no author line")
    name, email = match.group(1).decode("utf-8", "replace"), match.group(2).decode("utf-8", "replace")
    sign = -1 if match.group(4).startswith(b"-") else 1
    hours, minutes = int(match.group(4)[1:3]), int(match.group(4)[3:5])
    zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    authored = datetime.fromtimestamp(int(match.group(3)), zone).astimezone(UTC)
    subject = message.decode("utf-8", "replace").strip().split("\n\n", 1)[0].replace("\n", " ")
    return CommitInfo(sha=sha, short_sha=sha[:12], message=subject, author=f"{name} <{email}>",
                      author_name=name, authored_at=authored)
