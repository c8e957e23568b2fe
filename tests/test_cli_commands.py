"""The `gpubp` command line around the commands: dispatch (`main`, `_main`, the external subcommands), `info`
(and the GPUs it finds), `gradcheck`'s report and refusals, `explain`'s plot and interruption handling, and the
defaults `--help` states."""

import argparse
import json
import sys
import types

import pytest

from gpubp import cli
from support.cli import run, usage_error


# ---------------------------------------------------------------- dispatch
@pytest.mark.parametrize("name", sorted(cli.EXTERNAL))
def test_an_unknown_option_before_an_external_subcommand_is_a_usage_error(capsys, name):
    """`gpubp --foo bench` parsed `bench` as the command and looked for its parser among the built-in
    subcommands' (a KeyError, shown as a traceback): the unknown option is the top-level parser's usage error."""
    err = usage_error(capsys, "--foo", name)
    assert "gpubp: error: unrecognized arguments: --foo" in err and "usage: gpubp" in err
