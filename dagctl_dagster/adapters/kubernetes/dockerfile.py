"""Which Dockerfile a dbt image is built from; run inside the build pod before Kaniko.

`python -m dagctl_dagster.adapters.kubernetes.dockerfile --context DIR --output FILE [--dockerfile PATH]`
copies the Dockerfile to build into FILE: the configured `PATH` (which must exist at the pinned commit),
else the project's own `Dockerfile`, else the default dbt Dockerfile shipped with dagctl
(`default_dbt.Dockerfile` next to this module). Standard library only: it runs in the runner image as a
plain process, with no Dagster import.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path, PurePosixPath

DEFAULT_DOCKERFILE = "default_dbt.Dockerfile"


class DockerfileNotFoundError(Exception):
    """The configured Dockerfile is not in the project at the pinned commit."""


def read_default_dockerfile() -> str:
    """The default dbt Dockerfile shipped with dagctl (package data)."""
    return resources.files(__package__).joinpath(DEFAULT_DOCKERFILE).read_text()


def select_dockerfile(context: Path, dockerfile: str | None) -> tuple[str, str]:
    """The Dockerfile text to build `context` with, and where it came from.

    Example: `select_dockerfile(Path("/workspace/repo"), None)` -> `(text, "Dockerfile")` when the project
    has one, `(text, "the default dbt Dockerfile")` otherwise.
    """
    if dockerfile is not None:
        path = context / PurePosixPath(dockerfile)
        if not path.is_file():
            raise DockerfileNotFoundError(
                f"backend.dockerfile '{dockerfile}' does not exist in the project at this commit"
            )
        return path.read_text(), dockerfile
    own = context / "Dockerfile"
    if own.is_file():
        return own.read_text(), "Dockerfile"
    return read_default_dockerfile(), "the default dbt Dockerfile"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=Path, required=True, help="Project folder (the build context).")
    parser.add_argument("--output", type=Path, required=True, help="Where to write the Dockerfile.")
    parser.add_argument("--dockerfile", help="Configured Dockerfile path inside the project.")
    args = parser.parse_args(argv)
    try:
        text, source = select_dockerfile(args.context, args.dockerfile)
    except DockerfileNotFoundError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    sys.stdout.write(f"building with {source}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
