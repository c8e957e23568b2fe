"""Running the `gpubp` command line in a test: its exit status and output, usage errors, strict JSON."""

import json

import pytest

from gpubp import cli


def run(capsys, *argv):
    """`(status, stdout, stderr)` of `gpubp ARGV`."""
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def usage_error(capsys, *argv, with_stdout=False):
    """Run a command that must fail as a usage error: status 2, a message, no traceback.
    Returns stderr (or `(stdout, stderr)` with `with_stdout`)."""
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    assert e.value.code == 2, (argv, out, err)
    assert "error:" in err and "Traceback" not in err + out, err
    return (out, err) if with_stdout else err


def strict_json(text):
    """`json.loads` that refuses NaN, Infinity and -Infinity (strict JSON, RFC 8259)."""
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)
