"""The one-call scripts a GPU session runs (benchmarks/*_device_run.sh) cannot be run here; check
what can be checked on a CPU: bash parses them, and every repository file they run exists."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*_device_run.sh"))


def test_there_are_device_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"tc_device_run.sh", "fused_family_device_run.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_device_script_parses_and_names_existing_files(script):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = script.read_text()
    paths = set(re.findall(r"\b((?:tests|benchmarks)/[\w/]+\.py)\b", text))
    assert paths, "the script runs no repository file"
    missing = [p for p in sorted(paths) if not (ROOT / p).is_file()]
    assert not missing, f"{script.name} runs files that do not exist: {missing}"
