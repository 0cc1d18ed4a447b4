"""The README's first command, run as written: install nhidel, then mint and check a grant."""

from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def main_job_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install and run the main job", 1)[1]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README lost its main-job command"
    return found.group(1)


@pytest.mark.slow
def test_the_readme_main_job_installs_nhidel_and_mints_a_grant(tmp_path: Path) -> None:
    # A fresh environment (it reuses the installed dependencies, so no download is needed
    # beyond the build backend) and a fresh home: nothing of the developer's is used.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", main_job_block()], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "allowed:" in result.stderr
    assert (env_dir / "bin" / "nhidel").exists()
    assert (env_dir / "share" / "man" / "man1" / "nhidel.1").exists()
