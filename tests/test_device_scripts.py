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
    assert {"tc_device_run.sh", "fused_family_device_run.sh", "gemm_f32_device_run.sh",
            "verify_device_run.sh"} <= names


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


#: a GPU call is cut at 10 minutes, start-up and the copy back included: the default steps' own
#: limits must leave room for those
CALL_BUDGET_S = 570


def _run_with_stubs(tmp_path, script: Path, *steps) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `script` (with `steps`) with python, compute-sanitizer and ncu replaced by programs that
    succeed at once; its result and the lines of its summary.txt (none when it wrote none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python-stub", "compute-sanitizer", "ncu"):
        p = bin_dir / name
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(bin_dir / "python-stub"), "OUT": str(out),
           "HOME": str(tmp_path)}
    res = subprocess.run(["bash", str(script), *steps], capture_output=True, text=True, env=env, timeout=60)
    summary = out / "summary.txt"
    return res, summary.read_text().splitlines() if summary.is_file() else []


def _limits_s(lines) -> int:
    """The sum of the steps' time limits in summary lines (each must name one)."""
    limits = [int(m) for line in lines for m in re.findall(r"limit=(\d+)", line)]
    assert len(limits) == len(lines)
    return sum(limits)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_device_script_default_steps_run_and_fit_one_call(script, tmp_path):
    """Run the script with every program it calls replaced by one that succeeds at once (python,
    compute-sanitizer, ncu): every default step leaves one line in summary.txt, none fails, the
    script exits 0, and the default steps' time limits add up to less than one GPU call."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")
    res, lines = _run_with_stubs(tmp_path, script)
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines, "no step ran"
    assert all(" rc=0 " in line for line in lines), lines
    total = _limits_s(lines)
    assert total <= CALL_BUDGET_S, f"{script.name}: default steps may take {total} s"


def test_device_steps_pack_the_results_when_asked(tmp_path):
    """PACK=file.tgz packs the whole results folder (the device tool brings back few files)."""
    if shutil.which("bash") is None or shutil.which("timeout") is None or shutil.which("tar") is None:
        pytest.skip("needs bash, timeout and tar")
    import tarfile
    out, pack = tmp_path / "run", tmp_path / "run.tgz"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "true", "OUT": str(out), "PACK": str(pack), "HOME": str(tmp_path)}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "verify_device_run.sh"), "tests"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    with tarfile.open(pack) as tar:
        names = set(tar.getnames())
    assert {"run/summary.txt", "run/env.txt", "run/gpu_tests.log"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_device_script_refuses_an_unknown_step(script, tmp_path):
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "true", "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)}
    res = subprocess.run(["bash", str(script), "no-such-step"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 1
    assert "unknown step no-such-step" in (tmp_path / "out" / "summary.txt").read_text()


def test_tc_script_wgmma_steps_run_and_fit_one_call(tmp_path):
    """The Hopper GEMMs' named steps of tc_device_run.sh (a second call on an H100 or H200): each
    leaves its line, none fails with stub programs, and their limits fit one GPU call."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")
    steps = ["wgmma-tests", "wgmma-memcheck", "wgmma-racecheck", "wgmma-bench"]
    res, lines = _run_with_stubs(tmp_path, ROOT / "benchmarks" / "tc_device_run.sh", *steps)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(lines) == 4 and all(" rc=0 " in line for line in lines), lines
    assert _limits_s(lines) <= CALL_BUDGET_S
