"""The inference API: ``WorldModel.from_pretrained()``, ``generate_video``, and the
``init_state`` / ``step`` pair that the world-model env calls.

A pretrained folder holds two ``save_pretrained`` folders, ``autoencoder/`` and
``backbone/`` (safetensors weights + JSON config each; the backbone's records the sampling
steps and shift). ``WorldModel.from_pretrained()`` with no argument loads the default
checkpoint shipped inside the package (``world_model/weights``).

The simulator state :class:`WorldState` is an explicit dataclass of tensors: the
backbone's streaming state (fixed size), the autoencoder's decode cache, the reference
pose (the first frame's; all poses are relative to it) and the intrinsics.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from world_model.autoencoder import Autoencoder, StreamCache
from world_model.checkpoint import CheckpointError, load_pretrained, read_pretrained_config, save_pretrained
from world_model.diffusion import commit_chunk, sample_chunk, sampling_times
from world_model.model import StreamState, WorldModelBackbone, WorldModelConfig, camera_inputs
from world_model.model.state import scatter_rows

__all__ = ["DEFAULT_WEIGHTS", "PRECISIONS", "WorldModel", "WorldState", "component_folder", "load_backbone"]

PRECISIONS = ("float32", "bfloat16")
"""How :class:`WorldModel` computes: ``float32``, or ``bfloat16`` autocast (matmuls and
convolutions in bfloat16, the GDN recurrence, norms and softmax statistics still in float32;
the CPU fast path on processors with AMX / AVX-512 bf16)."""


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The context for ``precision`` (one of :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The default checkpoint shipped inside the package."""


def component_folder(path: str | Path | None, name: str) -> Path:
    """The ``name`` (``autoencoder`` / ``backbone``) folder of ``path``: ``path/name`` when
    ``path`` is a world-model folder, else ``path`` itself (a folder of that part alone, such
    as a training stage's ``final/``); ``None``: the shipped checkpoint's."""
    root = DEFAULT_WEIGHTS if path is None else Path(path)
    return root / name if (root / name).is_dir() else root


def load_backbone(path: str | Path | None = None) -> WorldModelBackbone:
    """The backbone of ``path`` (see :func:`component_folder`), float32, eval mode. Raises
    :class:`CheckpointError` naming the file."""
    return load_pretrained(component_folder(path, "backbone"),
                           lambda c: WorldModelBackbone(WorldModelConfig.from_dict(c)))


@dataclass
class WorldState:
    """Everything the next chunk depends on (besides the action and the noise)."""

    stream: StreamState
    """Backbone state: GDN states, conv caches, softmax sink + window caches."""
    decode: StreamCache
    """Autoencoder decode cache (the last frames' features)."""
    reference: torch.Tensor
    """``(B, 4, 4)`` float64 c2w of the first frame: poses are taken relative to it."""
    intrinsics: torch.Tensor
    """``(B, 3, 3)`` float64 intrinsics of the frames."""

    def scatter_rows(self, index: torch.Tensor, rows: "WorldState") -> "WorldState":
        """This state with rows ``index (k,)`` replaced by the ``k`` rows of ``rows``."""
        decode = StreamCache(tuple(a.index_copy(0, index, b) for a, b in zip(self.decode.previous, rows.decode.previous)),
                             max(self.decode.latent_frames, rows.decode.latent_frames))
        return WorldState(scatter_rows(self.stream, index, rows.stream), decode,
                          self.reference.index_copy(0, index, rows.reference),
                          self.intrinsics.index_copy(0, index, rows.intrinsics))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state by name (for snapshots and size accounting)."""
        out = {f"stream.{k}": v for k, v in self.stream.tensors().items()}
        out.update({f"decode.{i}": t for i, t in enumerate(self.decode.previous)})
        out.update(reference=self.reference, intrinsics=self.intrinsics)
        return out

    def clone(self) -> "WorldState":
        return WorldState(self.stream.clone(), StreamCache(tuple(t.clone() for t in self.decode.previous),
                                                           self.decode.latent_frames),
                          self.reference.clone(), self.intrinsics.clone())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _to_video(frames: torch.Tensor) -> np.ndarray:
    """``(B, F, 3, H, W)`` in [-1, 1] -> uint8 ``(B, F, H, W, 3)``."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()


class WorldModel(nn.Module):
    """Autoencoder + backbone + few-step sampler, streaming one chunk at a time."""

    def __init__(self, autoencoder: Autoencoder, backbone: WorldModelBackbone, sample_steps: int = 4,
                 sample_shift: float = 3.0, image_hw: tuple[int, int] | None = None):
        super().__init__()
        self.autoencoder = autoencoder.eval()
        self.backbone = backbone.eval()
        self.sample_steps = sample_steps
        self.sample_shift = sample_shift
        cfg = backbone.cfg
        self.image_hw = tuple(image_hw or (8 * cfg.latent_height, 8 * cfg.latent_width))

    @property
    def config(self) -> WorldModelConfig:
        return self.backbone.cfg

    # --------------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "WorldModel":
        """Load ``path`` (a folder with ``autoencoder/`` and ``backbone/``); default: the
        checkpoint shipped in the package. Raises :class:`CheckpointError` naming the file."""
        from world_model.autoencoder import load_autoencoder

        root = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not root.is_dir():
            raise CheckpointError(f"{root}: no such world-model checkpoint folder (expected autoencoder/ and backbone/ inside)")
        ae = load_autoencoder(root / "autoencoder")
        meta = read_pretrained_config(root / "backbone")
        backbone = load_backbone(root / "backbone")
        sampling = meta.get("extra", {}).get("sampling", {})
        image_hw = meta.get("extra", {}).get("image_hw")
        return cls(ae, backbone, int(sampling.get("steps", 4)), float(sampling.get("shift", 3.0)),
                   tuple(image_hw) if image_hw else None)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
        """Write ``autoencoder/`` and ``backbone/`` into ``path`` (atomically, each).
        ``dtype`` (e.g. ``torch.float16``) stores the weights smaller; loading converts back
        to float32. ``extra`` is recorded in the backbone's ``config.json``."""
        root = Path(path)
        save_pretrained(root / "autoencoder", self.autoencoder, self.autoencoder.config, dtype=dtype)
        save_pretrained(root / "backbone", self.backbone, self.backbone.cfg, dtype=dtype,
                        extra={**(extra or {}), "sampling": {"steps": self.sample_steps, "shift": self.sample_shift},
                               "image_hw": list(self.image_hw)})
        return root

    # ------------------------------------------------------------------------ streaming
    def _check_frames(self, frames: np.ndarray) -> torch.Tensor:
        arr = np.asarray(frames)
        H, W = self.image_hw
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (H, W, 3):
            raise ValueError(f"first frames must be uint8 (B, {H}, {W}, 3), got {arr.dtype} {arr.shape}")
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)[:, None]  # (B, 1, 3, H, W)

    def _camera(self, c2w: torch.Tensor, reference: torch.Tensor, intrinsics: torch.Tensor, starts_video: bool):
        cfg = self.config
        return camera_inputs(c2w, intrinsics, self.image_hw, (cfg.latent_height, cfg.latent_width),
                             cfg.frames_per_latent, cfg.pose_scale, reference=reference, starts_video=starts_video)

    @torch.no_grad()
    def init_state(self, first_frames: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray,
                   precision: str = "float32") -> tuple[np.ndarray, WorldState]:
        """Encode ``first_frames`` uint8 ``(B, H, W, 3)`` taken at ``c2w (B, 4, 4)`` with
        ``intrinsics (B, 3, 3)`` into a fresh state. Returns the decoded first frames
        (uint8 ``(B, H, W, 3)``: what the model "sees") and the state. ``precision``: one
        of :data:`PRECISIONS` (use the same for every call on one state)."""
        with autocast(precision, self._device):
            return self._init_state(first_frames, c2w, intrinsics)

    @property
    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _init_state(self, first_frames: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, WorldState]:
        video = self._check_frames(first_frames)
        B = video.shape[0]
        ref = torch.as_tensor(np.asarray(c2w, dtype=np.float64)).reshape(B, 4, 4)
        K = torch.as_tensor(np.asarray(intrinsics, dtype=np.float64)).reshape(B, 3, 3)
        latent = self.autoencoder.encode(video)  # (B, 1, C, h, w)
        stream = commit_chunk(self.backbone, latent, self._camera(ref[:, None], ref, K, starts_video=True), None)
        decoded, cache = self.autoencoder.decode_step(latent, None)
        return _to_video(decoded)[:, 0], WorldState(stream, cache, ref, K)

    @torch.no_grad()
    def reset_rows(self, state: WorldState | None, index: torch.Tensor, first_frames: np.ndarray, c2w: np.ndarray,
                   intrinsics: np.ndarray, precision: str = "float32") -> tuple[np.ndarray, WorldState]:
        """Start rows ``index (k,)`` of a batched state afresh from ``first_frames (k, H, W, 3)``
        (``state=None``: a new state of k rows). Returns the decoded first frames and the state."""
        decoded, rows = self.init_state(first_frames, c2w, intrinsics, precision)
        return decoded, rows if state is None else state.scatter_rows(index, rows)

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the noise of one chunk: ``(B, 1, C, h, w)``."""
        cfg = self.config
        return (batch, 1, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    @torch.no_grad()
    def step(self, state: WorldState, c2w_chunk: np.ndarray, generator: torch.Generator | None = None,
             steps: int | None = None, noise: torch.Tensor | None = None,
             precision: str = "float32", compile: bool = False) -> tuple[np.ndarray, WorldState]:
        """Generate the next latent frame for the K raw-frame poses ``c2w_chunk (B, K, 4, 4)``
        and decode it: uint8 frames ``(B, K, H, W, 3)`` and the new state (the input state is
        not modified). ``steps``: sampler steps (default: the checkpoint's). ``noise``
        ``(B, 1, C, h, w)`` replaces the draw from ``generator`` (a batched env draws each
        row's noise from that row's own generator). ``precision``: one of :data:`PRECISIONS`.
        ``compile=True``: the backbone passes and the decoding run through ``torch.compile``
        (built on the first call for each batch size and precision, tens of seconds; then
        about 1.5-2x faster on CPU); frames equal the eager ones up to float rounding, and
        are deterministic."""
        with autocast(precision, self._device):
            return self._step(state, c2w_chunk, generator, steps, noise, compile)

    def _step(self, state: WorldState, c2w_chunk: np.ndarray, generator: torch.Generator | None,
              steps: int | None, noise: torch.Tensor | None, compile: bool) -> tuple[np.ndarray, WorldState]:
        cfg = self.config
        c2w = torch.as_tensor(np.asarray(c2w_chunk, dtype=np.float64))
        B = state.reference.shape[0]
        if c2w.shape != (B, cfg.frames_per_latent, 4, 4):
            raise ValueError(f"c2w_chunk must be (B={B}, K={cfg.frames_per_latent}, 4, 4), got {tuple(c2w.shape)}")
        cam = self._camera(c2w, state.reference, state.intrinsics, starts_video=False)
        if noise is None:
            noise = torch.randn(self.noise_shape(B), generator=generator)
        elif tuple(noise.shape) != self.noise_shape(B):
            raise ValueError(f"noise must be {self.noise_shape(B)}, got {tuple(noise.shape)}")
        times = sampling_times(steps or self.sample_steps, self.sample_shift)
        latent, stream = sample_chunk(self.backbone, noise, cam, state.stream, times, compiled=compile)
        frames, cache = self.autoencoder.decode_step(latent, state.decode, compiled=compile)
        return _to_video(frames), dataclasses.replace(state, stream=stream, decode=cache)

    @torch.no_grad()
    def generate_video(self, first_frame: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, steps: int | None = None,
                       seed: int = 0, precision: str = "float32", compile: bool = False) -> np.ndarray:
        """A video along ``c2w (F, 4, 4)`` (F = 1 + K n) from ``first_frame`` uint8 (H, W, 3):
        uint8 ``(F, H, W, 3)``, streamed chunk by chunk with the bounded state. ``precision``:
        one of :data:`PRECISIONS`; ``compile``: see :meth:`step`."""
        c2w = np.asarray(c2w, dtype=np.float64)
        k = self.config.frames_per_latent
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or (c2w.shape[0] - 1) % k:
            raise ValueError(f"c2w must be (F, 4, 4) with F = 1 + {k} n, got {c2w.shape}")
        K = np.asarray(intrinsics, dtype=np.float64)
        if K.shape not in ((3, 3), (c2w.shape[0], 3, 3)):
            raise ValueError(f"intrinsics must be (3, 3) or (F, 3, 3), got {K.shape}")
        K0 = K if K.ndim == 2 else K[0]
        if K.ndim == 3 and not np.allclose(K, K0):
            raise ValueError("intrinsics that change along the video are not supported: pass one (3, 3) matrix")
        g = torch.Generator().manual_seed(seed)
        first, state = self.init_state(np.asarray(first_frame)[None], c2w[None, 0], K0[None], precision)
        frames = [first[:, None]]
        for i in range(1, c2w.shape[0], k):
            out, state = self.step(state, c2w[None, i : i + k], g, steps, precision=precision, compile=compile)
            frames.append(out)
        return np.concatenate(frames, 1)[0]
