"""gpubp.backends.nvrtc_program: the buffers NVRTC writes its log and cubin into.

`build` passed `b" " * size`: NVRTC wrote into an immutable `bytes`, and for an empty log (size 1,
its NUL alone) that was CPython's cached one-byte object `b" "` itself, so the whole process read
every space byte as 0 from then on.  The sm_90a cubin (built without `-Xptxas -v`) has an empty
log: on a cold cubin cache tests/test_kernels_emulated.py's Hopper test built it in the test
process, and tests/test_sklearn.py's check_estimators_pickle(readonly_memmap=True) failed later
(joblib's pure-Python unpickler read a BINGET index 32, a space, as 0, and the pickled config came
back with a key 'gpubp.sklearn'); with a warm cache nothing was built and the suite passed.
"""

import subprocess
import sys
import textwrap

import pytest

from gpubp.backends import nvrtc_program


class _FakeNvrtc:
    """The calls `build` makes, writing into the buffers it is given as the bindings do (through
    their memory), and refusing read-only ones (`bytes`), which the C side would overwrite."""

    class nvrtcResult:
        NVRTC_SUCCESS = 0

    def __init__(self, log: bytes, cubin: bytes):
        self.log, self.cubin = log + b"\0", cubin

    @staticmethod
    def _write(buf, data: bytes):
        view = memoryview(buf)
        if view.readonly:
            raise AssertionError(f"NVRTC was given a read-only {type(buf).__name__} to write into")
        view[:len(data)] = data
        return (0,)

    def nvrtcCreateProgram(self, *args):
        return 0, "prog"

    def nvrtcCompileProgram(self, prog, n, opts):
        return (0,)

    def nvrtcGetProgramLogSize(self, prog):
        return 0, len(self.log)

    def nvrtcGetProgramLog(self, prog, buf):
        return self._write(buf, self.log)

    def nvrtcGetCUBINSize(self, prog):
        return 0, len(self.cubin)

    def nvrtcGetCUBIN(self, prog, buf):
        return self._write(buf, self.cubin)

    def nvrtcDestroyProgram(self, prog):
        return (0,)


@pytest.mark.parametrize("log", [b"", b"w", b"ptxas info: 12 registers"])
def test_nvrtc_writes_into_fresh_writable_buffers(log):
    """An empty log (size 1), a one-character one and a longer one: each buffer NVRTC writes is
    writable; the log and the cubin come back whole, the cubin as bytes."""
    b = nvrtc_program.build(_FakeNvrtc(log, b"\x7fELF cubin"), "src", "k.cu", [], [])
    assert b.error is None and b.log == log.decode()
    assert b.cubin == b"\x7fELF cubin" and type(b.cubin) is bytes


def test_a_real_build_with_an_empty_log_leaves_the_cached_space_byte_alone():
    """With NVRTC: a kernel that compiles without a message (log size 1), in a fresh interpreter
    (before the fix it overwrote the process's cached b" "), then a one-byte read of a space and a
    pickle whose memo entry 32 is fetched by the pure-Python unpickler, as joblib's is."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-bindings and nvidia-cuda-nvrtc")
    code = textwrap.dedent("""
        import io, pickle
        from cuda.bindings import nvrtc
        from gpubp.backends import nvrtc_program
        b = nvrtc_program.build(nvrtc, 'extern "C" __global__ void k(float* x) { x[0] = 1.0f; }', "k.cu",
                                [], ["--gpu-architecture=compute_80"], cubin=False)
        assert b.error is None and b.log == "", (b.error, b.log)
        keys = [f"k{i}" for i in range(40)]          # memo 0 and 1 the lists, 2..41 the keys: k30 is 32
        data = pickle.dumps([keys, keys[30]], protocol=4)
        assert b"h " in data                         # BINGET 32: its index byte is a space
        # (not `== b" "`: that literal is the cached object too, and equal to itself when overwritten)
        assert bytes([32])[0] == 32, "the cached b' ' was overwritten"
        assert pickle._loads(data)[1] == "k30"
        print("ok")
    """)
    try:
        from cuda.bindings import nvrtc
        if nvrtc.nvrtcVersion()[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            pytest.skip("libnvrtc not usable")
    except Exception as e:  # bindings present, libnvrtc missing
        pytest.skip(f"libnvrtc not usable: {e}")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
