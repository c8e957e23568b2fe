"""gpubp.log: the "gpubp" logger writes its own lines until the application configures logging, and
then behaves as any library's logger (each case in a fresh process: pytest configures logging itself)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = "backend='auto' chose numpy"


def python(code):
    """`code` run by a fresh Python on this tree's gpubp, without a GPU; its completed process."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def run(setup):
    """stderr of a process that runs `setup`, imports gpubp and has it log which backend 'auto' chose."""
    return python(f"import logging\n{setup}\nimport gpubp\ngpubp.get_backend('auto')\n").stderr


def test_unconfigured_logging_writes_gpubp_lines_to_stderr():
    err = run("")
    assert f"gpubp: {LINE}" in err and err.count(LINE) == 1, err


@pytest.mark.parametrize("setup", ["logging.basicConfig(level=logging.WARNING)", "logging.basicConfig()"])
def test_an_application_logging_at_warning_gets_no_info_lines(setup):
    # the logger's own INFO level sent "INFO:gpubp:backend='auto' chose ..." to the application's
    # handler though the application logs at WARNING ("like any library's", the module says)
    assert LINE not in run(setup)


def test_an_application_logging_at_info_gets_the_lines_through_its_handlers_only():
    err = run("logging.basicConfig(level=logging.INFO)")
    assert f"INFO:gpubp:{LINE}" in err and err.count(LINE) == 1, err


@pytest.mark.parametrize("setup", ["logging.getLogger('gpubp').setLevel(logging.WARNING)",
                                   "logging.basicConfig(level=logging.INFO); "
                                   "logging.getLogger('gpubp').setLevel(logging.WARNING)"])
def test_a_level_set_on_the_gpubp_logger_wins(setup):
    assert LINE not in run(setup)


def test_a_level_set_on_the_gpubp_logger_wins_over_the_root_level():
    err = run("logging.basicConfig(level=logging.WARNING); logging.getLogger('gpubp').setLevel(logging.INFO)")
    assert f"INFO:gpubp:{LINE}" in err, err


@pytest.mark.parametrize("reload", ["importlib.reload(gpubp.log)",
                                    "[sys.modules.pop(m) for m in list(sys.modules) if m.startswith('gpubp')]; "
                                    "import gpubp"])
def test_a_module_imported_again_keeps_one_line_per_message(reload):
    """Importing gpubp.log again (importlib.reload, a notebook's autoreload, a test dropping gpubp from
    sys.modules) added a second default handler, whose class the new module no longer recognised:
    every line was written twice from then on."""
    code = (f"import importlib, logging, sys\nimport gpubp\n{reload}\ngpubp.get_backend('auto')\n"
            "print(len(logging.getLogger('gpubp').handlers))\n")
    r = python(code)
    assert r.stderr.count(LINE) == 1 and r.stdout.split() == ["1"], (r.stdout, r.stderr)


@pytest.mark.parametrize("setup", ["logging.disable(logging.INFO)", "logging.disable(logging.WARNING)",
                                   "logging.getLogger('gpubp').disabled = True"])
def test_logging_disabled_silences_the_gpubp_lines(setup):
    """logging.disable(level) silences that level and below, as it does every logger's; so does .disabled."""
    assert LINE not in run(setup)


def test_logging_disabled_below_info_keeps_the_gpubp_lines():
    err = run("logging.disable(logging.DEBUG)")
    assert f"gpubp: {LINE}" in err, err


def test_importing_gpubp_again_keeps_an_application_handler_of_the_same_class_name():
    """Only gpubp's own default handler is replaced on a second import, not another module's class that happens
    to share its name."""
    code = ("import importlib, logging\nimport gpubp\n"
            "class _DefaultHandler(logging.Handler):\n    def emit(self, record): print('app:', record.getMessage())\n"
            "logging.getLogger('gpubp').addHandler(_DefaultHandler())\n"
            "importlib.reload(gpubp.log)\ngpubp.get_backend('auto')\n")
    r = python(code)
    assert f"app: {LINE}" in r.stdout and r.stderr.count(LINE) == 1, (r.stdout, r.stderr)
