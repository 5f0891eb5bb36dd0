"""Checkpoints: pretrained round trip (also stored as float16), every load error names its
file, atomic writes, and training states (optimizer flattening, torn pairs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import world_model.checkpoint as ckpt
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_pretrained,
    load_training_state,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    read_pretrained_config,
    save_pretrained,
    save_training_state,
)

TINY = AutoencoderConfig(latent_channels=4, frame_widths=(4, 8), latent_widths=(8, 8))


def build(config: dict) -> Autoencoder:
    return Autoencoder(AutoencoderConfig.from_json(config))


def _model(seed: int = 0, config: AutoencoderConfig = TINY) -> Autoencoder:
    torch.manual_seed(seed)
    model = Autoencoder(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


@pytest.fixture()
def saved(tmp_path) -> Path:
    model = _model()
    model.set_latent_stats(torch.arange(4.0), torch.ones(4) * 2)
    return save_pretrained(tmp_path / "ae", model, model.config, extra={"note": "hello", "step": 3})


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------ round trip
def test_round_trip(saved):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = load_pretrained(saved, build)
    original = _model()
    assert not loaded.training
    for (k, a), (k2, b) in zip(loaded.state_dict().items(), original.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.config.latent_mean == (0.0, 1.0, 2.0, 3.0) and loaded.config.latent_std == (2.0,) * 4
    meta = read_pretrained_config(saved)
    assert meta["extra"] == {"note": "hello", "step": 3} and meta["model"] == "Autoencoder"
    assert meta["weights"]["parameters"] == original.num_parameters()


def test_half_precision_storage_loads_as_float32(tmp_path):
    model = _model()
    path = save_pretrained(tmp_path / "half", model, model.config, dtype=torch.float16)
    full = save_pretrained(tmp_path / "full", model, model.config)
    assert (path / WEIGHTS_NAME).stat().st_size < 0.6 * (full / WEIGHTS_NAME).stat().st_size
    loaded = load_pretrained(path, build)
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert a.dtype == torch.float32 and torch.equal(a, b.half().float())


# ------------------------------------------------------------------------------ errors name the file
def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no such checkpoint folder"):
        load_pretrained(tmp_path / "nope", build)


@pytest.mark.parametrize("name", [WEIGHTS_NAME, CONFIG_NAME])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=f"{saved / name}: missing"):
        load_pretrained(saved, build)


@pytest.mark.parametrize("text, message", [
    ("{not json", "unreadable JSON"),
    ("[1, 2]", "not a sanawm-pretrained file"),
    ('{"format": "sanawm-pretrained", "format_version": 99}', "format version 99"),
    ('{"format": "sanawm-pretrained", "format_version": 1}', "needs objects 'config' and 'weights'"),
])
def test_unreadable_config(saved, text, message):
    (saved / CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=f"{saved / CONFIG_NAME}: .*{message}"):
        load_pretrained(saved, build)


def test_invalid_model_config(saved):
    meta = json.loads((saved / CONFIG_NAME).read_text())
    meta["config"]["latent_channels"] = -1
    (saved / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{saved / CONFIG_NAME}: config does not describe a valid model "
                                              r"\(latent_channels must be >= 1"):
        load_pretrained(saved, build)


def test_truncated_weights(saved):
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{saved / WEIGHTS_NAME}: {len(data) // 2} bytes, .* says {len(data)}"):
        load_pretrained(saved, build)


def test_corrupt_weights_same_size(saved):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0xFF
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{saved / WEIGHTS_NAME}: sha256 differs"):
        load_pretrained(saved, build)


def test_not_safetensors(saved):
    """A file whose size and hash match the config but which is not safetensors at all."""
    garbage = b"\xff" * 64
    meta = json.loads((saved / CONFIG_NAME).read_text())
    meta["weights"].update(bytes=len(garbage), sha256=__import__("hashlib").sha256(garbage).hexdigest())
    (saved / CONFIG_NAME).write_text(json.dumps(meta))
    (saved / WEIGHTS_NAME).write_bytes(garbage)
    with pytest.raises(CheckpointError, match=f"{saved / WEIGHTS_NAME}: not a readable safetensors file"):
        load_pretrained(saved, build)


def test_missing_and_unexpected_keys(saved):
    class Bigger(Autoencoder):
        def __init__(self, config):
            super().__init__(config)
            self.extra_head = nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match=f"{saved / WEIGHTS_NAME}: does not fit Bigger; missing keys: "
                                              "extra_head.bias, extra_head.weight"):
        load_pretrained(saved, lambda c: Bigger(AutoencoderConfig.from_json(c)))

    class Smaller(Autoencoder):
        def __init__(self, config):
            super().__init__(config)
            del self.encoder.out

    with pytest.raises(CheckpointError, match="unexpected keys: encoder.out.conv.bias, encoder.out.conv.weight"):
        load_pretrained(saved, lambda c: Smaller(AutoencoderConfig.from_json(c)))


def test_shape_mismatch(saved):
    def wider(config: dict) -> Autoencoder:
        return Autoencoder(AutoencoderConfig.from_json({**config, "latent_channels": 6, "latent_mean": None,
                                                        "latent_std": None}))

    with pytest.raises(CheckpointError, match=rf"{saved / WEIGHTS_NAME}: shape mismatch .*decoder.inp.conv.weight: "
                                              r"\(8, 4, 3, 3\) in the file, \(8, 6, 3, 3\) in the model"):
        load_pretrained(saved, wider)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


# ------------------------------------------------------------------------------ atomicity
def test_failed_write_leaves_previous_checkpoint(saved, monkeypatch):
    before = _files(saved)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(saved, _model(seed=1), TINY)
    monkeypatch.undo()
    assert _files(saved) == before  # nothing replaced, no temporary left behind
    load_pretrained(saved, build)


def test_unserialisable_extra_leaves_previous_checkpoint(saved):
    before = _files(saved)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_pretrained(saved, _model(seed=1), TINY, extra={"bad": object()})
    assert _files(saved) == before


def test_torn_pair_is_detected(tmp_path, saved):
    """Weights of one save beside the config of another (a crash between the two renames)."""
    other = save_pretrained(tmp_path / "other", _model(seed=1), TINY)
    os.replace(other / WEIGHTS_NAME, saved / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=f"{saved / WEIGHTS_NAME}: sha256 differs"):
        load_pretrained(saved, build)


# ------------------------------------------------------------------------------ training state
def _trained_optimizer(steps: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(steps):
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_training_state_round_trip_resumes_exactly(tmp_path):
    model, opt = _trained_optimizer(3)
    tensors, data = optimizer_state_to_flat(opt.state_dict())
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    path = save_training_state(tmp_path, "step-3", tensors, {"optimizer": data, "step": 3})
    assert path == tmp_path / "step-3.json"

    loaded, meta = load_training_state(path)
    model2, opt2 = _trained_optimizer(0)
    model2.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model.")})
    opt2.load_state_dict(optimizer_state_from_flat(loaded, meta["optimizer"]))
    assert meta["step"] == 3 and opt2.param_groups[0]["betas"] == (0.9, 0.95)
    x = torch.randn(16, 4)
    for m, o in ((model, opt), (model2, opt2)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_training_state_errors(tmp_path):
    path = save_training_state(tmp_path, "s", {"a": torch.ones(3)}, {"step": 1})
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope.json'}: missing"):
        load_training_state(tmp_path / "nope.json")
    save_training_state(tmp_path / "other", "s", {"a": torch.zeros(3)}, {"step": 2})
    os.replace(tmp_path / "other" / "s.safetensors", tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 's.safetensors'}: sha256 differs"):
        load_training_state(path)
    (tmp_path / "s.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"{tmp_path / 's.safetensors'}: missing"):
        load_training_state(path)


def test_optimizer_state_follows_parameter_names_when_modules_register_in_another_order():
    """A module refactor that only changes the order parameters are registered in must not
    scramble a resumed optimizer: state saved with names is matched by name."""

    class Net(nn.Module):
        def __init__(self, swap: bool):
            super().__init__()
            names = ("big", "small") if not swap else ("small", "big")
            for name in names:
                setattr(self, name, nn.Linear(8, 8) if name == "big" else nn.Linear(8, 2))

        def forward(self, x):
            return self.small(self.big(x))

    torch.manual_seed(0)
    a = Net(swap=False)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    a(torch.randn(4, 8)).square().mean().backward()
    opt_a.step()
    names_a = [n for n, _ in a.named_parameters()]
    tensors, data = optimizer_state_to_flat(opt_a.state_dict(), param_names=names_a)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if read back from a file, not opt_a's live state

    b = Net(swap=True)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(optimizer_state_from_flat(tensors, data, params=list(b.named_parameters())))
    pid_b = {n: i for i, (n, _) in enumerate(b.named_parameters())}
    for pid, name in enumerate(names_a):
        assert torch.equal(opt_a.state_dict()["state"][pid]["exp_avg"], opt_b.state_dict()["state"][pid_b[name]]["exp_avg"])
    x = torch.randn(4, 8)
    opt_a.zero_grad()
    for m, o in ((a, opt_a), (b, opt_b)):
        m(x).square().mean().backward()
        o.step()
    assert all(torch.equal(p, dict(b.named_parameters())[n]) for n, p in a.named_parameters())

    # Saved without names (an older checkpoint) into the other order: a clear error, not a
    # shape error inside the first optimizer step.
    tensors, data = optimizer_state_to_flat(opt_a.state_dict())
    with pytest.raises(ValueError, match=r"optimizer state 'exp_avg' of parameter small.weight has shape \(8, 8\)"):
        optimizer_state_from_flat(tensors, data, params=list(b.named_parameters()))
    with pytest.raises(ValueError, match="optimizer state is for other parameters"):
        optimizer_state_from_flat(tensors, {**data, "param_names": ["x"] * 4}, params=list(b.named_parameters()))
