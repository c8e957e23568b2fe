#!/usr/bin/env bash
# Download, on this machine, the pytest plugins the GPU machine lacks (it has no network) into .whl/
# (git-ignored), for the device call to carry:
#
#     bash benchmarks/device_wheels.sh      # then, in the device tool's run call: carry [".whl"]
#
# benchmarks/device_steps.sh installs them there (pip --no-index --target, no dependency resolution:
# pytest itself is the machine's) when they do not import: pytest-xdist (and execnet, its one
# dependency besides pytest) for `-n 8`, pytest-timeout for `--timeout`.  All pure-Python wheels.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary :all: -d .whl pytest-xdist execnet pytest-timeout
ls .whl
