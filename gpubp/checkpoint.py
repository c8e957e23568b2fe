"""Checkpoints: one `.npz` file with configuration, parameters and optimizer state.

The file is a numpy zip archive read with `allow_pickle=False`, so loading it
never runs code.  It holds:
- `meta`: UTF-8 JSON (as uint8) with the format name and version, the network
  configuration, the optimizer's name, hyper-parameters and step count, and a
  SHA-256 of every array;
- `params`: the flat parameter buffer (see `gpubp.params`);
- `opt.<name>`: each optimizer state buffer, same layout.
A file that is damaged, of another format, or inconsistent with itself is
refused with a ValueError saying what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "gpubp-checkpoint"
VERSION = 1


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(net, path, metadata=None) -> None:
    arrays = {"params": net.backend.to_numpy(net._params)}
    opt = net.optimizer
    opt_meta = None
    if opt is not None:
        for name, buf in opt.state.items():
            arrays[f"opt.{name}"] = net.backend.to_numpy(buf)
        opt_meta = {"name": opt.name, "hyper": opt.hyper(), "t": opt.t, "state": sorted(opt.state)}
    meta = {"format": FORMAT, "version": VERSION, "config": net.config(), "optimizer": opt_meta,
            "shapes": [[o, i] for _, o, i, _ in net.layout.segments],
            "metadata": _plain(metadata if metadata is not None else net.metadata),
            "sha256": {k: _digest(v) for k, v in arrays.items()}}
    meta["meta_sha256"] = _meta_digest(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = Path(path)
    with open(path, "wb") as f:   # a file object keeps numpy from appending ".npz"
        np.savez(f, **arrays)


def _plain(metadata):
    """`metadata` as JSON-ready data (numpy arrays become lists), or a TypeError."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, default=lambda o: o.tolist() if hasattr(o, "tolist") else
                                     (_ for _ in ()).throw(TypeError(f"{type(o).__name__} is not JSON data"))))
    except TypeError as e:
        raise TypeError(f"metadata must hold JSON data (numbers, strings, lists, dicts, arrays): {e}") from None


def _fail(path, why):
    raise ValueError(f"{path}: not a usable gpubp checkpoint: {why}")


def load(path, backend="auto"):
    from .network import MLP
    from .optim import OPTIMIZERS

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        _fail(path, f"the file cannot be read as a checkpoint archive ({e})")
    if "meta" not in arrays or "params" not in arrays:
        _fail(path, "it has no 'meta' or no 'params' entry")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"its metadata is not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(path, "its metadata does not name the gpubp checkpoint format")
    if meta.get("version") != VERSION:
        _fail(path, f"format version {meta.get('version')!r}; this gpubp reads version {VERSION}")
    if meta.get("meta_sha256") != _meta_digest(meta):
        _fail(path, "its metadata does not match its checksum (the file is damaged)")
    sums = meta.get("sha256", {})
    if set(sums) != set(arrays):
        _fail(path, f"it lists arrays {sorted(sums)} but holds {sorted(arrays)}")
    for k, a in arrays.items():
        if _digest(a) != sums[k]:
            _fail(path, f"array {k!r} does not match its checksum (the file is damaged)")
    cfg = meta["config"]
    try:
        net = MLP(cfg["layer_sizes"], activation=cfg["activation"], output_activation=cfg["output_activation"],
                  loss=cfg["loss"], backend=backend, dtype=cfg["dtype"], seed=cfg.get("seed"),
                  precision=cfg.get("precision", "float32"))
    except (KeyError, TypeError, ValueError) as e:
        _fail(path, f"its configuration is invalid ({e})")
    shapes = [[o, i] for _, o, i, _ in net.layout.segments]
    if meta.get("shapes") != shapes:
        _fail(path, f"its parameters have layer shapes {meta.get('shapes')} (n_out, n_in), which do not fit "
                    f"the network {cfg['layer_sizes']} of its configuration ({shapes})")
    params = arrays["params"]
    if params.shape != (net.layout.total,) or params.dtype != net.dtype:
        _fail(path, f"parameters of shape {params.shape} and dtype {params.dtype} do not fit the network "
                    f"{cfg['layer_sizes']} in {net.dtype} ({net.layout.total} values)")
    net._params[...] = net.backend.asarray(params, net.dtype)
    net.metadata = meta.get("metadata") or {}
    om = meta.get("optimizer")
    if om is not None:
        cls = OPTIMIZERS.get(om.get("name"))
        if cls is None:
            _fail(path, f"unknown optimizer {om.get('name')!r}")
        hyper = dict(om["hyper"])
        if "betas" in hyper:
            hyper["betas"] = tuple(hyper["betas"])
        opt = cls(**hyper)
        opt.bind(net.backend, net._params)
        if sorted(opt.state) != sorted(om["state"]):
            _fail(path, f"optimizer state {om['state']} does not fit {cls.__name__}")
        for name, buf in opt.state.items():
            a = arrays.get(f"opt.{name}")
            if a is None or a.shape != params.shape or a.dtype != params.dtype:
                _fail(path, f"optimizer state {name!r} is missing or of the wrong shape")
            buf[...] = net.backend.asarray(a, net.dtype)
        opt.t = int(om["t"])
        net.optimizer = opt
    return net
