"""The documentation: the spec and the architecture page are in the repository, the README's
layout names every module, and no text points outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# references to documents outside the repository (written so that this file does not match itself)
OUTSIDE = re.compile("|".join([r"\.\./shared", r"\bSPEC" + r"\.md", r"(?i:\bseeds?[ _]?0\d\d)",
                               r"(?i:\bissues? #?\d+\b)"]))
TEXT_SUFFIXES = {".py", ".md", ".cu", ".cuh", ".json", ".toml", ".txt", ".cfg", ".yml", ".yaml", ""}


def _text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if not path.is_file() or rel.parts[0].startswith(".") or path.suffix not in TEXT_SUFFIXES:
            continue
        if any(p in ("__pycache__", "build", "dist") or p.endswith(".egg-info") for p in rel.parts):
            continue
        yield rel, path


def test_docs_exist_and_readme_links_them():
    text = README.read_text()
    for doc in ("docs/spec.md", "docs/architecture.md"):
        assert (ROOT / doc).is_file(), doc
        assert f"]({doc})" in text, f"README.md does not link {doc}"


def test_no_text_refers_outside_the_repository():
    bad = []
    for rel, path in _text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{rel}:{i}: {line.strip()[:120]}")
    assert not bad, "text referring to documents outside the repository:\n" + "\n".join(bad)


def test_the_outside_pattern_catches_what_it_should():
    for s in ("see ../sha" + "red/SPEC" + ".md", "seed " + "002's example", "Seed" + "002", "as is" + "sue 4 asks",
              "Is" + "sues #12"):
        assert OUTSIDE.search(s), s
    for s in ("docs/spec.md", "seed=0", "seed 0 gives", "an issue with tensor cores"):
        assert not OUTSIDE.search(s), s


def _layout_section():
    text = README.read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.mark.parametrize("folder", ["gpubp", "kernels", "benchmarks"])
def test_readme_layout_names_every_module(folder):
    layout = _layout_section()
    missing = []
    for path in sorted((ROOT / folder).rglob("*")):
        if path.suffix not in (".py", ".cu", ".cuh") or "__pycache__" in path.parts or "results" in path.parts:
            continue
        if path.name == "__init__.py" and path.parent.name in ("kernels", "examples"):
            continue                      # package markers only
        if f"`{path.name}`" not in layout:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README.md's layout section does not describe: {missing}"


# ---------------------------------------------------------------- the examples, run as written

import importlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402


def _fenced_blocks(path, lang):
    """The ```lang blocks of a Markdown file, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _docstring_blocks(doc):
    """The indented (4 spaces) code blocks of a module docstring, dedented."""
    blocks, cur = [], None
    lines = (doc or "").splitlines() + [""]
    for i, line in enumerate(lines):
        if line.startswith("    ") and (cur is not None or i == 0 or not lines[i - 1].strip()
                                        or lines[i - 1].rstrip().endswith("::")):
            cur = (cur or []) + [line]
        elif not line.strip() and cur is not None and i + 1 < len(lines) and lines[i + 1].startswith("    "):
            cur.append("")
        elif cur is not None:
            blocks.append(textwrap.dedent("\n".join(cur)))
            cur = None
    return blocks


def _tiny_classification(n_features, n_classes, rows=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, rows)
    return X, y


def _readme_block(marker):
    found = [b for b in _fenced_blocks(README, "python") if marker in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks containing {marker!r}"
    return found[0]


def test_readme_python_blocks_are_all_tested():
    markers = ("net = gpubp.MLP([64, 128, 10]", "MLPClassifier(hidden_layer_sizes=(128,)",
               "FusedMLP([64, 128, 128, 10]", "comm = distributed.init()")
    blocks = _fenced_blocks(README, "python")
    assert len(blocks) == len(markers), "a new python block in README.md: add it to the tests below"
    for m in markers:
        _readme_block(m)


def test_readme_using_it_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X, y = _tiny_classification(64, 10)
    ns = {"X": X, "y": y, "X_val": X[:16], "y_val": y[:16], "X_test": X[:24]}
    exec(_readme_block("net = gpubp.MLP([64, 128, 10]"), ns)
    assert set(ns["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(ns["history"]["loss"]) == 30
    assert ns["labels"].shape == (24,) and set(ns["labels"]) <= set(range(10))      # class labels
    assert ns["probs"].shape == (24, 10) and np.allclose(ns["probs"].sum(axis=1), 1, atol=1e-5)
    assert isinstance(ns["loss"], float)
    assert [(dW.shape, db.shape) for dW, db in ns["grads"]] == [((128, 64), (128,)), ((10, 128), (10,))]
    assert (tmp_path / "net.npz").is_file() and ns["net"].config()["layer_sizes"] == [64, 128, 10]


def test_readme_sklearn_block_runs_as_written():
    pytest.importorskip("sklearn")
    X, yi = _tiny_classification(5, 3)
    y = np.array(["cat", "dog", "emu"])[yi]                 # "any labels: strings, ..."
    ns = {"X": X, "y": y, "X_test": X[:10], "y_test": y[:10]}
    exec(_readme_block("MLPClassifier(hidden_layer_sizes=(128,)").replace(
        "clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)",
        "out = (clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test))"), ns)
    pred, proba, score = ns["out"]
    assert set(pred) <= {"cat", "dog", "emu"} and proba.shape == (10, 3) and 0 <= score <= 1
    est = ns["clf"][-1]
    for attr in ("classes_", "n_iter_", "loss_curve_", "best_loss_", "validation_scores_", "coefs_",
                 "intercepts_", "net_"):
        assert hasattr(est, attr), attr


def test_readme_torch_block_runs_as_written():
    torch = pytest.importorskip("torch")
    seq = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    ns = {"x": torch.randn(8, 32), "y": torch.randint(0, 10, (8,)), "seq": seq}
    exec(_readme_block("FusedMLP([64, 128, 128, 10]"), ns)
    assert [n for n, _ in ns["mlp"].named_parameters()] == [
        "weight_1", "bias_1", "weight_2", "bias_2", "weight_3", "bias_3"]
    assert ns["mlp"].weight_1.shape == (128, 64) and ns["mlp"].bias_3.shape == (10,)
    back = ns["seq"]
    assert isinstance(back, torch.nn.Sequential) and isinstance(back[1], torch.nn.Tanh)
    assert torch.equal(back[0].weight, seq[0].weight) and back[0].weight is not seq[0].weight


def test_readme_distributed_block_runs_as_written(tmp_path):
    """One rank (MPI singleton): the block as written, on tiny data; `tests/test_distributed.py`
    runs several ranks."""
    pytest.importorskip("mpi4py")
    code = ("import numpy as np\nrng = np.random.default_rng(0)\n"
            "X = rng.normal(size=(32, 784)).astype('float32'); Y = rng.integers(0, 10, 32)\n"
            + _readme_block("comm = distributed.init()").replace("epochs=10", "epochs=2")
            + "\nprint('rank', comm.rank, 'of', comm.size, 'loss', hist['loss'][-1])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 of 1 loss" in r.stdout and (tmp_path / "net.npz").is_file()


def test_explain_md_python_block_runs_and_prints_what_it_says(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (block,) = _fenced_blocks(ROOT / "docs" / "explain.md", "python")
    ns = {}
    with pytest.warns(Warning) as caught:
        exec(block, ns)
    said = re.search(r"# GradientFlowWarning: (layer 1: .*?), below", block).group(1)
    assert any(str(w.message).startswith(said) for w in caught), [str(w.message) for w in caught]
    head, tail = re.search(r'# h\["grad_norms"\]\[-1\] = \[(.*?), \.\.\., (.*?)\]', block).groups()
    got = [f"{v:.1e}" for v in ns["h"]["grad_norms"][-1]]
    assert got[:len(head.split(", "))] == head.split(", ") and got[-len(tail.split(", ")):] == tail.split(", ")
    assert (tmp_path / "grad_norms.png").is_file()


@pytest.mark.parametrize("module", ["gpubp", "gpubp.sklearn", "gpubp.torch", "gpubp.explain"])
def test_module_docstring_examples_run(module, tmp_path, monkeypatch):
    if module in ("gpubp.sklearn", "gpubp.torch"):
        pytest.importorskip(module.split(".")[1])
    monkeypatch.chdir(tmp_path)
    blocks = _docstring_blocks(importlib.import_module(module).__doc__)
    assert blocks, f"{module}'s docstring has no example"
    X, y = _tiny_classification(64, 10)
    ns = {"X": X, "y": y, "X_test": X[:8], "y_test": y[:8]}
    if module == "gpubp.torch":
        import torch
        ns.update(x=torch.randn(8, 64), y=torch.randint(0, 10, (8,)))
    for block in blocks:
        exec(block, ns)
    if module == "gpubp":
        assert len(ns["history"]["loss"]) == 20
    if module == "gpubp.sklearn":
        assert list(ns["clf"].classes_) == list(range(10))


def test_distributed_docstring_example_names_exist():
    """It picks a GPU per rank (`backend="cuda"`): without one, check what it calls exists."""
    import gpubp
    import gpubp.distributed as dist
    (block,) = _docstring_blocks(dist.__doc__)
    compile(block, "gpubp.distributed docstring", "exec")
    assert "gpubp.distributed.init()" in block and callable(gpubp.distributed.init)
    assert "comm" in __import__("inspect").signature(gpubp.MLP.fit).parameters


def _commented_commands(block):
    """(command, [expected output, ...]) for each command of a shell block followed by `# ` lines;
    a `#   ` line continues the one before, and `...` stands for any text."""
    out, cmd, expect = [], None, []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("#   ") and expect:
            expect[-1] += " " + line[1:].strip()
        elif line.startswith("# "):
            expect.append(line[2:].strip())
        elif line.strip():
            if cmd is not None:
                out.append((cmd, expect))
            cmd, expect = line.split("#")[0].strip(), []
    if cmd is not None:
        out.append((cmd, expect))
    return out


def _in_order(text, expected):
    """Whether `expected` (with `...` for any text) appears in `text`, whitespace ignored."""
    norm = lambda s: " ".join(s.split())   # noqa: E731
    pattern = r".*?".join(re.escape(norm(p)) for p in expected.split("..."))
    return re.search(pattern, norm(text)) is not None


def test_readme_watching_backprop_commands_print_what_the_readme_shows(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    blocks = [b for b in _fenced_blocks(README, "bash") if "--grad-norms" in b]
    assert len(blocks) == 1
    commands = _commented_commands(blocks[0])
    assert len(commands) == 2 and all(cmd.startswith("gpubp train ") and exp for cmd, exp in commands)
    for cmd, expected in commands:
        argv = cmd.split()[1:]
        r = subprocess.run([sys.executable, "-m", "gpubp", *argv], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr[-3000:]
        for e in expected:
            assert _in_order(r.stderr + "\n" + r.stdout, e), f"{cmd}: not printed: {e}\n{r.stdout[-2000:]}"
        plot = Path(argv[argv.index("--plot") + 1])
        assert (tmp_path / plot).is_file() and (tmp_path / f"{plot.stem}-grad-norms.png").is_file()


def test_explain_md_commands_run(tmp_path):
    (block,) = re.findall(r"^```\n(gpubp explain.*?)^```", (ROOT / "docs" / "explain.md").read_text(),
                          flags=re.S | re.M)
    (tmp_path / "my_weights.json").write_text(
        '{"layers": [{"W": [[0.1, 0.2], [0.3, 0.4]], "b": [0, 0]}, {"W": [[0.5, 0.6]], "b": [0.1]}], '
        '"input": [1, 2], "target": [1]}')
    from gpubp import cli
    for cmd, _ in _commented_commands(block):
        argv = cmd.split()[1:]
        if "--plot" in argv:
            pytest.importorskip("matplotlib")
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert cli.main(argv) == 0, cmd
        finally:
            os.chdir(old)
    assert (tmp_path / "step.png").is_file()


def test_readme_layout_lists_the_public_names():
    import gpubp
    line = next(ln for ln in _layout_section().splitlines() if ln.startswith("- `__init__.py`"))
    listed = set(re.findall(r"`([A-Za-z_]+)`", line.split(":", 1)[1]))
    assert listed == set(gpubp.__all__), (sorted(listed ^ set(gpubp.__all__)))


def test_explain_md_gradient_ratios_by_activation_and_init():
    """docs/explain.md's ratios of layer 1's ||dW|| to the output layer's, and the layers warned of."""
    import gpubp
    from gpubp import gradflow
    text = " ".join((ROOT / "docs" / "explain.md").read_text().split())
    said = text[text.index("The ratio of layer 1's ||dW||"):]
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 8)), rng.normal(size=(64, 1))
    for act, init, ratio, warned in (("sigmoid", "torch", "5.0e-09", [1, 2, 3]), ("sigmoid", "xavier", "4.3e-07", [1]),
                                     ("tanh", "xavier", "0.83", []), ("relu", "kaiming", "1.4", [])):
        assert ratio in said, ratio
        net = gpubp.MLP([8] + [16] * 10 + [1], activation=act, loss="mse", backend="numpy", dtype="float64",
                        seed=0, init=init)
        g = [float(np.linalg.norm(dW)) for dW, _ in net.loss_and_grads(X, Y)[1]]
        assert f"{g[0] / g[-1]:.2g}" == f"{float(ratio):.2g}", (act, init, g[0] / g[-1])
        assert [w.layer for w in gradflow.flow_warnings(g)] == warned


# ---------------------------------------------------------------- the spec's and README's numbers, pinned

SPEC = ROOT / "docs" / "spec.md"


def test_spec_constants_are_the_codes():
    """Every `NAME = value` the spec states is the library's constant of that name."""
    from gpubp import activations, checkpoint, network, params, training
    from gpubp.backends import numpy_backend
    text = " ".join(SPEC.read_text().split())
    where = {"ALIGN": params, "CHECK_EVERY": training, "EVAL_CHUNK": network, "LEAKY_SLOPE": activations,
             "DB_BLOCK": numpy_backend}
    stated = dict(re.findall(r"`(?:s = )?([A-Z][A-Z_]+) = ([0-9.e-]+)`", text))
    assert set(stated) == set(where), stated
    for name, value in stated.items():
        assert float(value) == getattr(where[name], name), name
    depth = re.search(r"`MAX_META_DEPTH` \((\d+)\)", text).group(1)
    assert int(depth) == checkpoint.MAX_META_DEPTH
    assert "`c = sqrt(2/pi)`, `k = 0.044715`" in text
    assert activations.GELU_C == pytest.approx(np.sqrt(2 / np.pi), rel=1e-15) and activations.GELU_K == 0.044715


def test_spec_tables_list_the_names_in_the_codes_order():
    import gpubp
    text = SPEC.read_text()

    def first_column(heading):
        section = text[text.index(heading):]
        section = section[section.index("\n| ---"):]
        return re.findall(r"^\| `([a-z_]+)` \|", section.split("\n\n")[0], flags=re.M)
    assert tuple(first_column("## Activations and their derivatives")) == gpubp.ACTIVATIONS   # also ACT_CODES
    assert tuple(first_column("## Losses and the output delta")) == gpubp.LOSSES
    from gpubp.precision import PRECISIONS, TOLERANCE
    modes = re.findall(r'^\| `"([a-z0-9]+)"`.*\| `([0-9.e-]+)` \|$', text, flags=re.M)
    assert [m for m, _ in modes] == list(PRECISIONS)
    assert {m: float(t) for m, t in modes} == TOLERANCE


def test_readme_optimizer_signatures_are_the_codes():
    """README's `SGD(lr, momentum=0, weight_decay=0)`, `Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0)` and `AdamW(..., weight_decay=1e-2)` (the spec says the same): the defaults as written."""
    import ast
    import inspect

    from gpubp import optim
    text = " ".join(README.read_text().split()) + " " + " ".join(SPEC.read_text().split())
    for name in ("SGD", "Adam", "AdamW"):
        calls = set(re.findall(rf"`(?:gpubp\.optim\.)?({name}\([^`]*\))`", text))
        assert calls, name
        params = inspect.signature(getattr(optim, name).__init__).parameters
        for call in calls:
            node = ast.parse(call.replace("..., ", ""), mode="eval").body
            assert node.keywords, call
            for kw in node.keywords:
                assert params[kw.arg].default == ast.literal_eval(kw.value), (call, kw.arg)


def test_readme_extras_table_is_pyproject():
    tomllib = pytest.importorskip("tomllib")      # Python 3.11+; pyproject allows 3.10
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = README.read_text()
    section = text[text.index("| extra | brings | for |"):]
    listed = []
    for row in section.split("\n\n")[0].splitlines()[2:]:
        listed += re.findall(r"`([a-z0-9]+)`", row.split("|")[1])
    assert sorted(listed) == sorted(extras)
    everything = set(re.search(r"gpubp\[([a-z0-9,]+)\]", extras["all"][0]).group(1).split(","))
    assert everything == set(extras) - {"all", "test", "cuda12", "cuda13"}     # "all of the above but CuPy"


def test_spec_initialisations_draw_as_written():
    """init="torch": W then b uniform in ±1/sqrt(n_in); "xavier": W uniform in ±sqrt(6/(n_in+n_out));
    "kaiming": W normal, std sqrt(2/n_in); b = 0 for both; default_rng(seed), float64, layer by layer."""
    import gpubp
    sizes = [5, 7, 3]
    for init in ("torch", "xavier", "kaiming"):
        rng = np.random.default_rng(11)
        want = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            if init == "torch":
                bound = 1 / np.sqrt(n_in)
                want.append((rng.uniform(-bound, bound, (n_out, n_in)), rng.uniform(-bound, bound, n_out)))
            elif init == "xavier":
                bound = np.sqrt(6 / (n_in + n_out))
                want.append((rng.uniform(-bound, bound, (n_out, n_in)), np.zeros(n_out)))
            else:
                want.append((rng.normal(0, np.sqrt(2 / n_in), (n_out, n_in)), np.zeros(n_out)))
        for dtype in ("float64", "float32"):
            net = gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=11, init=init)
            for (W, b), (W0, b0) in zip(net.get_params(), want):
                assert np.array_equal(W, W0.astype(dtype)) and np.array_equal(b, b0.astype(dtype)), (init, dtype)


def test_spec_checkpoint_arrays_and_balanced_class_weights(tmp_path):
    import gpubp
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 3)), np.array([0] * 9 + [1] * 3)
    net = gpubp.MLP([3, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    # "class c gets the weight N / (n_L count_c)", counted over the N training rows
    w = net._sample_weights(None, 12, net._targets(y, 12), "balanced")
    assert np.array_equal(w, np.where(y == 0, 12 / (2 * 9), 12 / (2 * 3)))
    net.fit(X, y, epochs=1, batch_size=4, standardize=True, progress=False)
    net.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["input_mean", "input_std", "meta", "opt.m", "opt.v", "params"]
        assert f["input_mean"].dtype == f["input_std"].dtype == np.float64 and f["input_std"].shape == (3,)
    text = " ".join(SPEC.read_text().split())
    assert all(f"`{name}`" in text for name in ("meta", "params", "opt.<name>", "input_mean", "input_std"))


def test_every_relative_link_and_named_file_of_the_docs_exists():
    """README.md and docs/*.md link only files of the repository, and every file they name in code
    spans (`kernels/gemm.cu`, `tc_bench.py`) is one (generated outputs like `sig-grad-norms.png` aside)."""
    tracked = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    bad = []
    for md in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = md.read_text()
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in link and not (md.parent / link).exists():
                bad.append(f"{md.name}: link {link}")
        for name in set(re.findall(r"`([A-Za-z0-9_./-]+\.(?:py|cu|cuh|sh|md|json|toml))`", text)):
            if not (ROOT / name).exists() and not any(t == name or t.endswith("/" + name) for t in tracked):
                bad.append(f"{md.name}: names {name}")
    assert not bad, bad


def test_explain_md_table_is_what_gpubp_explain_prints():
    """docs/explain.md's 2-2-1 table: its `gpubp explain` column (or "the same": the formulas' column)
    is exactly the trace's, the two columns differ by at most 2e-16 relative, and the lr 0.5 example's
    numbers are its trace's too."""
    import json as _json

    from gpubp import explain
    text = (ROOT / "docs" / "explain.md").read_text()

    def trace(example):
        prob = explain.make_problem(weights=explain._example_text(example), weights_is_text=True)
        return _json.loads(explain.trace_json(explain.trace_step(**prob.trace_args())))

    t = trace("sigmoid-2-2-1")
    f, b, u = t["forward"], t["backward"], t["updated"]
    flat = lambda v: list(np.ravel(v))   # noqa: E731
    want = {"z1": f[0]["z"], "a1": f[0]["a"], "z2": f[1]["z"], "a2": f[1]["a"], "loss": [t["loss"]],
            "dL/da2": b[0]["dL_da"], "g'(z2)": b[0]["g_prime"], "delta2": b[0]["delta"], "dW2": flat(b[0]["dW"]),
            "db2": b[0]["db"], "dL/da1": b[1]["dL_da"], "g'(z1)": b[1]["g_prime"], "delta1": b[1]["delta"],
            "dW1": flat(b[1]["dW"]), "db1": b[1]["db"], "W1 after": flat(u[0]["W"]), "b1 after": u[0]["b"],
            "W2 after": flat(u[1]["W"]), "b2 after": u[1]["b"], "loss after the step": [t["loss_after"]]}
    section = text[text.index("| quantity | the visualiser's formulas |"):]
    rows = [r for r in section.split("\n\n")[0].splitlines()[2:]]
    seen = set()
    for row in rows:
        name, formulas, ours = (c.strip() for c in row.strip("|").split("|"))
        key = re.sub(r"\*\*|\s*\(published.*\)|\s*=.*", "", name)
        nums = lambda s: [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", s)]   # noqa: E731
        left, right = nums(formulas), (nums(formulas) if ours == "the same" else nums(ours))
        assert right == want[key], (key, right, want[key])
        assert np.allclose(left, right, rtol=2.3e-16, atol=0), (key, left, right)
        seen.add(key)
    assert seen == set(want)
    t5 = trace("sigmoid-2-2-1-lr0.5")
    para = " ".join(text[text.index("The \"higher learning rate\" example"):].split("\n\n")[0].split())
    stated = [float(x) for x in re.findall(r"-?\d+\.\d{6,}", para)]
    got = flat(t5["updated"][0]["W"]) + t5["updated"][0]["b"] + flat(t5["updated"][1]["W"]) + t5["updated"][1]["b"]
    assert stated == got + [t5["loss_after"]]
    assert f"half_sse would halve its loss, {t['loss'] / 2:.5f}" in " ".join(text.split())


# ---------------------------------------------------------------- the other modules' docstring examples
def test_gradcheck_docstring_example_runs():
    import gpubp
    import gpubp.gradcheck as gc
    (block,) = _docstring_blocks(gc.__doc__)
    net = gpubp.MLP([3, 5, 2], activation="tanh", loss="mse", backend="numpy", dtype="float64", seed=0)
    X, Y = gc.random_problem(net, batch=4)
    ns = {"net": net, "X": X, "Y": Y}
    exec(block, ns)
    assert len(ns["errs"]) == 2 and max(max(e) for e in ns["errs"]) < 1e-6, ns["errs"]


def test_gradflow_docstring_example_is_what_fit_records():
    """The block in gpubp.gradflow's docstring, given one step's arrays, appends to the history
    what `fit(..., grad_norms=True)` records for that step, and warns of the same layers."""
    import warnings

    import gpubp
    import gpubp.gradflow as gf
    (block,) = _docstring_blocks(gf.__doc__)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 1))
    net = gpubp.MLP([3, 4, 1], activation="tanh", loss="mse", backend="numpy", dtype="float64", seed=0)
    (W1, b1), (W2, b2) = before = net.get_params()
    _, grads = net.loss_and_grads(X, Y)
    # the step's deltas by hand (one batch of all 6 rows): mse 2 (a - y) / (B n), tanh' = 1 - a^2
    a1 = np.tanh(X @ W1.T + b1)
    d2 = 2 * (a1 @ W2.T + b2 - Y) / 6
    d1 = (d2 @ W2) * (1 - a1 ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = net.fit(X, Y, epochs=1, batch_size=6, optimizer="sgd", lr=0.1, shuffle=False, grad_norms=True,
                    progress=False)
    ns = {"W_before": [W for W, _ in before], "W_after": [W for W, _ in net.get_params()],
          "dW": [dW for dW, _ in grads], "delta": [d1, d2], "history": {}}
    exec(block, ns)
    for key in gf.HISTORY_KEYS:
        np.testing.assert_allclose(ns["history"][key], h[key], rtol=1e-12)


def test_cli_docstring_commands_parse_and_the_quick_ones_run(tmp_path, capsys, monkeypatch):
    from gpubp import cli
    commands = _docstring_blocks(cli.__doc__)[0].splitlines()
    monkeypatch.chdir(tmp_path)
    parser, _ = cli.build_parser()
    for line in commands:
        for cmd in line.split("#")[0].split("&&"):
            argv = cmd.split()
            assert argv[0] == "gpubp", line
            parser.parse_args(argv[1:])          # every option it shows exists (exits 2 if not)
            if argv[1] in ("explain", "gradcheck", "info"):
                assert cli.main(argv[1:]) == 0, cmd
    assert "worst relative error" in capsys.readouterr().out    # gradcheck printed its verdict
