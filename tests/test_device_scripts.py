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
#: the one call of a GPU task (15 minutes of device time in all): every GPU check, ended by a deadline
SESSION_SCRIPT = ROOT / "benchmarks" / "gpu_session_run.sh"


def _run_with_stubs(tmp_path, script: Path, *steps, stub="exit 0", env_extra=None,
                    timeout=60) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `script` (with `steps`) with python, compute-sanitizer and ncu replaced by shell programs
    whose body is `stub` (by default: succeed at once); its result and the lines of its summary.txt
    (none when it wrote none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python-stub", "compute-sanitizer", "ncu"):
        p = bin_dir / name
        p.write_text(f"#!/bin/sh\n{stub}\n")
        p.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(bin_dir / "python-stub"), "OUT": str(out),
           "HOME": str(tmp_path), "WHEELS": str(tmp_path / "no-wheels"), **(env_extra or {})}
    res = subprocess.run(["bash", str(script), *steps], capture_output=True, text=True, env=env,
                         timeout=timeout)
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
    if script.name == SESSION_SCRIPT.name:
        # steps run side by side and the deadline cuts them: the deadline is what fits the call
        # (test_session_script_ends_by_its_deadline holds the script to it)
        session_s = int(re.search(r'SESSION_S="\$\{SESSION_S:-(\d+)\}"', script.read_text())[1])
        assert session_s <= CALL_BUDGET_S
        assert all(int(re.search(r"limit=(\d+)", line)[1]) <= session_s for line in lines), lines
        return
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


def _needs_bash_and_timeout():
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")


def test_session_script_runs_every_gpu_test_file_and_every_sanitize_script(tmp_path):
    """The session call covers all of tests/gpu (not a hand-kept list that a new file can miss) and
    runs each tool over every sanitize script, each with its own log."""
    _needs_bash_and_timeout()
    text = SESSION_SCRIPT.read_text()
    assert re.search(r"-m pytest tests/gpu -m gpu", text)
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*sanitize*.py")}
    named = set(re.findall(r"benchmarks/(\w+\.py)", text))
    assert scripts and scripts <= named, f"sanitize scripts the session does not run: {scripts - named}"
    res, lines = _run_with_stubs(tmp_path, SESSION_SCRIPT)
    assert res.returncode == 0, res.stdout + res.stderr
    for tool in ("memcheck", "racecheck"):
        logs = sorted(line.split("log=")[1] for line in lines if line.startswith(tool + " "))
        assert len(logs) == len(scripts) == len(set(logs)), logs


def test_session_script_ends_by_its_deadline(tmp_path):
    """Programs that never finish: the first step is cut to the time left before the deadline and
    killed there, every later step is recorded as not run, the run exits 1, and the whole script
    ends within seconds of SESSION_S (a script that ran each step to its own limit would take
    minutes and hit the subprocess timeout)."""
    _needs_bash_and_timeout()
    import time
    # `python -m pytest ...` and the sanitizers hang; the plugin probes (`python -c ...`) return at once
    stub = 'case "$*" in *"-m pytest"*|*--tool*) sleep 300;; esac\nexit 0'
    t0 = time.monotonic()
    res, lines = _run_with_stubs(tmp_path, SESSION_SCRIPT, stub=stub, timeout=90,
                                 env_extra={"SESSION_S": "8", "MIN_STEP_S": "3", "RESERVE_S": "1"})
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    assert took < 20, f"the script ran {took:.0f} s past an 8 s deadline"
    first = lines[0]
    assert first.startswith("tests rc=124 ") and "cut_from=240" in first, lines
    assert int(re.search(r"limit=(\d+)", first)[1]) <= 7
    assert all(" rc=skipped " in line and "out of time" in line for line in lines[1:]), lines
    assert {line.split()[0] for line in lines[1:]} == {"memcheck", "racecheck", "bench"}


def test_a_failing_background_step_fails_the_run(tmp_path):
    """Sanitizers run side by side in the background, where a failure cannot set the script's
    variable: finish reads the summary lines instead, so one failing sanitizer fails the run."""
    _needs_bash_and_timeout()
    stub = 'case "$*" in *tc_sanitize*) exit 3;; esac\nexit 0'
    res, lines = _run_with_stubs(tmp_path, SESSION_SCRIPT, "memcheck", stub=stub)
    assert res.returncode == 1, res.stdout + res.stderr
    failing = [line for line in lines if " rc=0 " not in line]
    assert failing == [l for l in lines if l.startswith("memcheck rc=3 ") and "memcheck_tc.log" in l], lines


def test_session_steps_limits_add_up_within_its_deadline_and_the_documented_call():
    """The session's deadline (SESSION_S) was 480 s while its steps' limits add up to 530 s (tests 240,
    memcheck 100, racecheck 100, the bench's least 90): a run whose tests and sanitizers took their
    limits had 30 s left and skipped the bench, leaving every goal NOT MEASURED, though
    docs/gpu-session.md's table promises all four steps.  The limits, the packing reserve and the
    deadline must agree, and the deadline must fit the device call's `timeout_s` the docs give."""
    text = SESSION_SCRIPT.read_text()
    limits = [int(re.search(r"step tests (\d+) ", text)[1]),
              int(re.search(r"sanitize_all memcheck (\d+)", text)[1]),
              int(re.search(r"sanitize_all racecheck (\d+)", text)[1]),
              int(re.search(r'\[ "\$left" -ge (\d+) \]', text)[1])]          # the bench's least time
    session_s = int(re.search(r'SESSION_S="\$\{SESSION_S:-(\d+)\}"', text)[1])
    reserve_s = int(re.search(r'RESERVE_S="\$\{RESERVE_S:-(\d+)\}"',
                              (ROOT / "benchmarks" / "device_steps.sh").read_text())[1])
    assert sum(limits) + reserve_s <= session_s, (limits, reserve_s, session_s)
    docs = (ROOT / "docs" / "gpu-session.md").read_text()
    call_s = int(re.search(r"`timeout_s` at (\d+)", docs)[1])
    assert session_s + 15 <= call_s <= CALL_BUDGET_S        # bash start-up and the pack fit in the rest
    assert f"deadline, {session_s} s after it" in " ".join(docs.split())
    for limit in limits[:3]:                                # the table gives the same limits
        assert f"| {limit} s |" in docs


def test_carried_wheels_give_the_tests_their_plugins(tmp_path):
    """Where pytest-xdist and pytest-timeout do not import (the device machine) and wheels were carried,
    they are installed offline into a folder put on PYTHONPATH, and the tests step runs with -n 8 and
    --timeout; where they do import, nothing is installed."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")
    wheels, log = tmp_path / "wheels", tmp_path / "calls.log"
    wheels.mkdir()
    for plugins_import in (False, True):
        # the plugins import where the machine has them, or once their folder is on PYTHONPATH
        stub = (f'echo "$PYTHONPATH|$*" >> {log}\n'
                f'case "$*" in "-c import"*) case "$PYTHONPATH" in *{tmp_path / "plugins"}*) exit 0;; esac; '
                f'exit {0 if plugins_import else 1};; esac\nexit 0')
        run_dir = tmp_path / f"run-{plugins_import}"
        run_dir.mkdir()
        log.write_text("")
        res, lines = _run_with_stubs(run_dir, SESSION_SCRIPT, "tests", stub=stub,
                                     env_extra={"WHEELS": str(wheels), "PLUGINS": str(tmp_path / "plugins")})
        assert res.returncode == 0, res.stdout + res.stderr
        calls = log.read_text().splitlines()
        pip = [c for c in calls if " pip install " in f" {c.split('|', 1)[1]} "]
        tests = [c for c in calls if "pytest tests/gpu" in c]
        assert len(tests) == 1, calls
        if plugins_import:
            assert not pip and str(tmp_path / "plugins") not in tests[0].split("|")[0]
        else:
            assert len(pip) == 1 and all(a in pip[0] for a in ("--no-index", f"--find-links {wheels}",
                                                                  f"--target {tmp_path / 'plugins'}",
                                                                  "pytest-xdist", "execnet", "pytest-timeout"))
            assert str(tmp_path / "plugins") in tests[0].split("|")[0].split(":")
        assert "-n 8 --dist load" in tests[0] and "--timeout 150" in tests[0]
