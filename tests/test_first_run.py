"""The README's first commands work on a machine where only python3, git and make are on PATH."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a fresh Debian has: no uv, nothing under /usr/local.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def test_demo_preparation_runs_with_only_the_tools_the_makefile_provides(tmp_path):
    # `make demo-check` is `make demo` up to the webserver: it installs (bootstrapping uv into .tools/ when
    # uv is not on PATH), creates the demo's Git remotes, then resolves the webserver command. A script
    # that calls a tool the Makefile did not provide (plain `uv`, say) exits with 127 here.
    env = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "DAGCTL_DEMO_DIR": str(tmp_path / "demo"), "DAGCTL_DEMO_HOME": str(tmp_path / "dagster_home")}
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "demo-check"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo check: " in result.stdout and " run --frozen dagster dev " in result.stdout
    assert (tmp_path / "demo" / "remote" / "jaffle.git").is_dir()
    assert (tmp_path / "dagster_home" / "dagster.yaml").is_file()

