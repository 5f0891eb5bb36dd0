"""Checkpoints: safetensors for tensors, JSON for everything else, no pickle, atomic writes.

Two kinds:

- **pretrained** (:func:`save_pretrained` / :func:`load_pretrained`): a folder holding
  ``model.safetensors`` (the weights) and ``config.json`` (the model's config, the
  weights' size and sha256, and free-form ``extra`` data) -- what ships and what the env
  loads.
- **training state** (:func:`save_training_state` / :func:`load_training_state`): one pair
  ``<name>.safetensors`` + ``<name>.json`` holding whatever tensors the trainer passes
  (weights, EMA weights, optimizer moments, RNG states) and JSON data (step, scalars of the
  optimizer, history). :func:`optimizer_state_to_flat` / :func:`optimizer_state_from_flat`
  turn an optimizer's ``state_dict`` into such tensors + JSON and back.

Writes are atomic per file: everything is serialised in memory first (so a failure leaves
the previous files untouched), each file goes through a temporary file, ``fsync`` and
``os.replace``; the tensors file is replaced first and the JSON last, and the JSON records
the tensors file's size and sha256, so a pair torn by a crash between the two replaces is
detected on load rather than silently mixed.

Every problem on load raises :class:`CheckpointError` (a ``ValueError``) naming the file
and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

__all__ = [
    "CONFIG_NAME",
    "CheckpointError",
    "config_differences",
    "copy_matching_tensors",
    "field_defaults",
    "WEIGHTS_NAME",
    "load_pretrained",
    "load_state_into",
    "load_training_state",
    "optimizer_state_from_flat",
    "optimizer_state_to_flat",
    "read_pretrained_config",
    "remove_stale_temporaries",
    "save_pretrained",
    "save_training_state",
    "with_defaults",
    "write_files_atomically",
]

WEIGHTS_NAME = "model.safetensors"
"""Weights file of a pretrained folder."""
CONFIG_NAME = "config.json"
"""Config file of a pretrained folder."""
PRETRAINED_FORMAT = "sanawm-pretrained"
"""``config.json["format"]``."""
STATE_FORMAT = "sanawm-training-state"
"""``<name>.json["format"]`` of a training state."""
FORMAT_VERSION = 1
"""Bumped when either layout changes."""
TMP_SUFFIX = ".tmp"
"""Suffix of temporary files (hidden: they start with a dot); stale ones may be deleted."""
_MAX_LISTED = 8  # keys listed in a message


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


# ------------------------------------------------------------------------------ writing
def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files_atomically(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write ``{name: data}`` into ``folder`` (created): all temporary files first, then
    each moved into place in the given order. Readers see old or new files, never parts."""
    folder.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for name, data in files.items():
            tmp = folder / f".{name}.{os.getpid()}{TMP_SUFFIX}"
            tmps.append(tmp)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, name in zip(tmps, files):
            os.replace(tmp, folder / name)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    _fsync_folder(folder)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left in ``folder`` by interrupted writes."""
    if folder.is_dir():
        for tmp in folder.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)


def _json_bytes(data: Any, what: str) -> bytes:
    try:
        return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


def _tensor_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    # Own contiguous CPU copies: safetensors refuses views and tensors that share memory.
    own = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return save_safetensors_bytes(own, metadata=metadata)


def _config_json(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return json.loads(json.dumps(dataclasses.asdict(config)))
    if hasattr(config, "to_json"):
        return config.to_json()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dataclass, have to_json(), or be a mapping; got {type(config).__name__}")


# ------------------------------------------------------------------------------ pretrained
def save_pretrained(path: str | os.PathLike, model: nn.Module, config: Any, extra: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s state dict to ``path/model.safetensors`` and ``config`` (a
    dataclass, an object with ``to_json()``, or a dict) with ``extra`` to ``path/config.json``.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type to save
    space; :func:`load_pretrained` converts them back to the model's dtype. Returns the path.
    """
    path = Path(path)
    state = model.state_dict()
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    weights = _tensor_bytes(state, metadata={"format": "pt"})
    meta = {
        "format": PRETRAINED_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "config": _config_json(config),
        "weights": {"file": WEIGHTS_NAME, "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest(),
                    "dtype": str(dtype or "as saved").replace("torch.", ""),
                    "parameters": sum(p.numel() for p in model.parameters())},
        "extra": extra or {},
    }
    write_files_atomically(path, {WEIGHTS_NAME: weights, CONFIG_NAME: _json_bytes(meta, f"{path / CONFIG_NAME}")})
    return path


def _read_json(file: Path, fmt: str) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{file}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise CheckpointError(f"{file}: not a {fmt} file (format {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: format version {data.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    return data


def _read_tensors(file: Path, expected: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """Tensors of ``file``; ``expected`` (``{"bytes", "sha256"}`` from the JSON) is checked."""
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    data = file.read_bytes()
    if expected is not None:
        if len(data) != expected.get("bytes"):
            raise CheckpointError(f"{file}: {len(data)} bytes, the JSON beside it says {expected.get('bytes')} "
                                  "(truncated, or overwritten by another save)")
        if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise CheckpointError(f"{file}: sha256 differs from the one recorded beside it (corrupt, or "
                                  "overwritten by another save)")
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt: {exc})") from None


def _listed(keys: list[str]) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_state_into(module: nn.Module, tensors: Mapping[str, torch.Tensor], file: Path) -> None:
    """Copy ``tensors`` into ``module``'s state dict exactly (names and shapes must match;
    floating-point tensors are converted to the module's dtype)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = ([f"missing keys: {_listed(missing)}"] if missing else []) + (
            [f"unexpected keys: {_listed(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{file}: does not fit {type(module).__name__}; " + "; ".join(parts))
    wrong = [f"{k}: {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} in the model"
             for k, v in own.items() if tensors[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{file}: shape mismatch for {len(wrong)} tensor(s): {_listed(wrong)}")
    kinds = [k for k, v in own.items() if v.is_floating_point() != tensors[k].is_floating_point()]
    if kinds:
        raise CheckpointError(f"{file}: floating-point / integer dtype mismatch for {_listed(kinds)}")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{file}: non-finite values (NaN or inf) in {len(bad)} tensor(s): {_listed(sorted(bad))}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(v.dtype))


def copy_matching_tensors(module: nn.Module, source: nn.Module | Mapping[str, torch.Tensor]) -> list[str]:
    """Warm start: copy ``source``'s tensors into ``module`` wherever name and shape match;
    returns the names of ``module``'s tensors left as they were (sorted)."""
    theirs = source.state_dict() if isinstance(source, nn.Module) else source
    mine = module.state_dict()
    fits = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    with torch.no_grad():
        for k, v in fits.items():
            mine[k].copy_(v.to(mine[k].dtype))
    return sorted(set(mine) - set(fits))


def read_pretrained_config(path: str | os.PathLike) -> dict[str, Any]:
    """The whole ``config.json`` of a pretrained folder (``config``, ``extra``, ``weights``...)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    return _read_json(path / CONFIG_NAME, PRETRAINED_FORMAT)


def load_pretrained(path: str | os.PathLike, build_fn: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """Build a model with ``build_fn(config_dict)`` from ``path/config.json`` and load
    ``path/model.safetensors`` into it (as float32, or whatever dtype ``build_fn`` made).
    Returns the model in eval mode. Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    meta = read_pretrained_config(path)
    config_file = path / CONFIG_NAME
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("weights"), dict):
        raise CheckpointError(f"{config_file}: needs objects 'config' and 'weights'")
    try:
        model = build_fn(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: config does not describe a valid model ({exc})") from None
    weights_file = path / WEIGHTS_NAME
    load_state_into(model, _read_tensors(weights_file, meta["weights"]), weights_file)
    return model.eval()


# ------------------------------------------------------------------------------ training state
def save_training_state(folder: str | os.PathLike, name: str, tensors: Mapping[str, torch.Tensor],
                        data: dict[str, Any], fmt: str = STATE_FORMAT) -> Path:
    """Write ``folder/name.safetensors`` (``tensors``) then ``folder/name.json`` (``data``
    plus the tensors file's size and sha256; ``fmt`` its ``format``), both atomically.
    Returns the JSON's path. Also the file form of env snapshots."""
    folder = Path(folder)
    blob = _tensor_bytes(tensors)
    meta = {"format": fmt, "format_version": FORMAT_VERSION,
            "tensors": {"file": f"{name}.safetensors", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()},
            "data": data}
    json_blob = _json_bytes(meta, f"{folder / name}.json")
    write_files_atomically(folder, {f"{name}.safetensors": blob, f"{name}.json": json_blob})
    return folder / f"{name}.json"


def load_training_state(json_path: str | os.PathLike,
                        fmt: str = STATE_FORMAT) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, data)`` of a file pair written by :func:`save_training_state` with the
    same ``fmt``. No pickle: safetensors and JSON only."""
    json_path = Path(json_path)
    meta = _read_json(json_path, fmt)
    if not isinstance(meta.get("tensors"), dict) or not isinstance(meta.get("data"), dict):
        raise CheckpointError(f"{json_path}: needs objects 'tensors' and 'data'")
    tensors = _read_tensors(json_path.with_name(meta["tensors"]["file"]), meta["tensors"])
    return tensors, meta["data"]


def optimizer_state_to_flat(state_dict: dict[str, Any], prefix: str = "optim.",
                            param_names: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` -> ``(tensors, json_data)``: per-parameter tensors become
    ``<prefix><param id>.<name>``, other per-parameter values and ``param_groups`` go to JSON.
    ``param_names``: the parameter name of each id, stored so that a later load can match
    the state to parameters by name (see :func:`optimizer_state_from_flat`)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = json.loads(json.dumps(state_dict["param_groups"]))  # betas tuples become lists
    data = {"param_groups": groups, "scalars": scalars}
    if param_names is not None:
        data["param_names"] = list(param_names)
    return tensors, data


def optimizer_state_from_flat(tensors: Mapping[str, torch.Tensor], data: dict[str, Any], prefix: str = "optim.",
                              params: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_flat` (give the result to ``load_state_dict``).

    ``params``: the ``(name, parameter)`` of each id of the optimizer that will load it. With
    it, state saved with ``param_names`` is matched by name (so that a change in the order
    modules register their parameters does not scramble it), and every tensor of the state
    is checked against its parameter's shape: a mismatch raises ``ValueError`` naming the
    parameter, here, rather than a shape error inside the first optimizer step."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in data.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for group in data["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    if params is not None:
        state, groups = _match_optimizer_state(state, groups, data.get("param_names"), params)
    return {"state": state, "param_groups": groups}


def _match_optimizer_state(state: dict[int, dict[str, Any]], groups: list[dict], saved_names: list[str] | None,
                           params: list[tuple[str, torch.Tensor]]) -> tuple[dict, list[dict]]:
    names = [n for n, _ in params]
    if saved_names is not None and saved_names != names:
        if sorted(saved_names) != sorted(names):
            missing, extra = sorted(set(names) - set(saved_names)), sorted(set(saved_names) - set(names))
            raise ValueError(f"optimizer state is for other parameters (missing {missing[:5]}, unexpected {extra[:5]})")
        where = {n: i for i, n in enumerate(names)}
        state = {where[saved_names[pid]]: entries for pid, entries in state.items()}
        saved_group = {where[saved_names[pid]]: g for g, group in enumerate(groups) for pid in group["params"]}
        groups = [dict(group, params=sorted(i for i, g in saved_group.items() if g == k)) for k, group in enumerate(groups)]
    for pid, entries in state.items():
        if not 0 <= pid < len(params):
            raise ValueError(f"optimizer state has an entry for parameter id {pid}; the model has {len(params)}")
        name, p = params[pid]
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                raise ValueError(f"optimizer state {key!r} of parameter {name} has shape {tuple(value.shape)}, the "
                                 f"parameter {tuple(p.shape)} (state saved for another parameter order or model)")
    return state, groups


# ------------------------------------------------------------------------------ run configs
def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def field_defaults(cls: type) -> dict[str, Any]:
    """The declared default of every field of dataclass ``cls`` that has one (nested
    dataclasses as dicts), without constructing ``cls`` (whose checks may need values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def with_defaults(stored: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with every key it lacks taken from ``defaults`` (nested dicts merged)."""
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def config_differences(stored: Any, wanted: Any, ignore: frozenset[str] = frozenset(),
                       labels: tuple[str, str] = ("stored", "wanted")) -> list[str]:
    """``"field: <stored> <label 0>, <wanted> <label 1>"`` for every differing field
    (nested fields dotted) of two JSON-like configs, except those in ``ignore``."""
    a, b = _flatten(json.loads(json.dumps(stored))), _flatten(json.loads(json.dumps(wanted)))
    missing = "<missing>"
    return [f"{k}: {a.get(k, missing)!r} {labels[0]}, {b.get(k, missing)!r} {labels[1]}"
            for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k, missing) != b.get(k, missing)]
