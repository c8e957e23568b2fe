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


class _Err:
    """A failing NVRTC result, named as the bindings' enum members are."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<nvrtcResult.{self.name}>"


class _RecordingNvrtc(_FakeNvrtc):
    """`_FakeNvrtc` that also lowers name expressions, records the calls and can fail the compile
    (`compile_error`) or one call (`fail`, the name of the method that returns an error)."""

    def __init__(self, log=b"", cubin=b"CUBIN", compile_error=None, fail=None):
        super().__init__(log, cubin)
        self.compile_error, self.fail, self.calls = compile_error, fail, []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("nvrtc") and name != "nvrtcResult":
            def call(*args):
                self.calls.append((name, args))
                return (_Err("NVRTC_ERROR_INVALID_INPUT"), None) if name == self.fail else attr(*args)
            return call
        return attr

    def nvrtcAddNameExpression(self, prog, ne):
        return (0,)

    def nvrtcCompileProgram(self, prog, n, opts):
        return (self.compile_error or 0,)

    def nvrtcGetLoweredName(self, prog, ne):
        return 0, b"_Z" + ne

    def names(self):
        return [n for n, _ in self.calls]


def test_build_passes_source_options_and_name_expressions_and_lowers_each():
    nv = _RecordingNvrtc(log=b"ptxas info  \0\0")
    b = nvrtc_program.build(nv, "src", "k.cu", ["a<1>", "b"], ["-O3", "--x=y"])
    assert b == nvrtc_program.Build(error=None, log="ptxas info", lowered={"a<1>": "_Za<1>", "b": "_Zb"},
                                    cubin=b"CUBIN")
    args = dict(nv.calls)
    assert args["nvrtcCreateProgram"] == (b"src", b"k.cu", 0, [], [])
    assert args["nvrtcCompileProgram"] == ("prog", 2, [b"-O3", b"--x=y"])
    assert [a for n, a in nv.calls if n == "nvrtcAddNameExpression"] == [("prog", b"a<1>"), ("prog", b"b")]
    assert nv.names()[-1] == "nvrtcDestroyProgram"
    nv = _RecordingNvrtc()
    assert nvrtc_program.build(nv, "src", "k.cu", [], [], cubin=False).cubin is None
    assert "nvrtcGetCUBIN" not in nv.names() and "nvrtcGetCUBINSize" not in nv.names()


def test_a_compile_error_is_returned_with_its_log_and_the_program_destroyed():
    nv = _RecordingNvrtc(log=b"k.cu(1): error: bad", compile_error=_Err("NVRTC_ERROR_COMPILATION"))
    b = nvrtc_program.build(nv, "src", "k.cu", ["a"], [])
    assert b == nvrtc_program.Build(error="NVRTC_ERROR_COMPILATION", log="k.cu(1): error: bad", lowered={})
    assert "nvrtcGetLoweredName" not in nv.names() and nv.names()[-1] == "nvrtcDestroyProgram"


@pytest.mark.parametrize("fail", ["nvrtcAddNameExpression", "nvrtcGetProgramLogSize", "nvrtcGetProgramLog",
                                  "nvrtcGetLoweredName", "nvrtcGetCUBINSize", "nvrtcGetCUBIN"])
def test_a_failing_nvrtc_call_raises_naming_it_and_destroys_the_program(fail):
    nv = _RecordingNvrtc(fail=fail)
    with pytest.raises(RuntimeError, match=rf"^{fail}(\(a\))?: <nvrtcResult.NVRTC_ERROR_INVALID_INPUT>$"):
        nvrtc_program.build(nv, "src", "k.cu", ["a"], [])
    assert nv.names()[-1] == "nvrtcDestroyProgram"
    nv = _RecordingNvrtc(fail="nvrtcCreateProgram")
    with pytest.raises(RuntimeError, match="^nvrtcCreateProgram: "):
        nvrtc_program.build(nv, "src", "k.cu", ["a"], [])
    assert "nvrtcDestroyProgram" not in nv.names()


def test_check_returns_the_value_or_none():
    nv = _FakeNvrtc(b"", b"")
    assert nvrtc_program.check(nv, (0, 7), "x") == 7 and nvrtc_program.check(nv, (0,), "x") is None
    with pytest.raises(RuntimeError, match="^what: 3$"):
        nvrtc_program.check(nv, (3, 7), "what")
