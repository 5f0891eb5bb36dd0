"""The inference API: ``WorldModel.from_pretrained()``, ``generate_video``, and the
``init_state`` / ``step`` pair that the world-model env calls.

A pretrained folder holds two ``save_pretrained`` folders, ``autoencoder/`` and
``backbone/`` (safetensors weights + JSON config each; the backbone's records the sampling
steps and shift), and optionally a third, ``depth/``, the autoencoder's depth head
(:mod:`world_model.autoencoder.depth`), which gives every generated chunk its depth.
``WorldModel.from_pretrained()`` with no argument loads the default checkpoint shipped
inside the package (``world_model/weights``).

The simulator state :class:`WorldState` is an explicit dataclass of tensors: the
backbone's streaming state (fixed size), the autoencoder's decode cache, the reference
pose (the first frame's; all poses are relative to it) and the intrinsics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from world_model.autoencoder import Autoencoder, StreamCache
from world_model.checkpoint import CheckpointError, load_pretrained, read_pretrained_config, save_pretrained
from world_model.diffusion import sample_chunk, sampling_times
from world_model.generation import stream_latents
from world_model.geometry import is_rigid
from world_model.memory import MemoryGuide, SceneMemory, guide_chunk
from world_model.model import StreamState, WorldModelBackbone, WorldModelConfig

__all__ = ["DEFAULT_WEIGHTS", "PACKAGED_MODELS", "PRECISIONS", "WorldModel", "WorldState", "component_folder", "has_native_bf16",
           "load_depth_head",
           "load_backbone", "packaged_model", "resolve_precision"]

PRECISIONS = ("auto", "float32", "bfloat16", "nvfp4", "int8")
"""How :class:`WorldModel` computes: ``float32``, ``bfloat16`` autocast (the linear layers'
matmuls and the convolutions in bfloat16; the GDN recurrence, the UCPE camera transforms,
softmax attention and the norms in float32),
or ``auto`` (the default): bfloat16 where the device multiplies bf16 in hardware (a CUDA
GPU that supports bf16, a CPU with AMX or AVX-512 BF16: :func:`has_native_bf16`), float32
elsewhere, where bf16 matmuls are emulated and 3-13x slower than float32.
:func:`resolve_precision` says which ``auto`` picks.
``nvfp4`` (4-bit weights and activations) and ``int8`` (8-bit weights) run the backbone's
linear layers in that format, the camera conditioning and the autoencoder in float32
(:mod:`world_model.quantization`); on CPU this emulates the format's arithmetic to measure
its fidelity, and is not faster."""


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA device that supports
    bf16, or an x86 CPU with AMX tiles (``amx_bf16``) or AVX-512 bf16 dot products
    (``avx512_bf16``), read from ``/proc/cpuinfo`` at run time. Measured on an AMD EPYC with
    ``avx512_bf16`` and no AMX (docs/RESULTS.md): the bf16 matmul peak 2.1-2.3x float32's, the
    training step x1.3 and ``Nav-v0`` x1.1-1.2 under bf16 autocast, the fidelity suite within
    0.03 dB. Without either flag (AVX-512F alone, or no AVX-512) PyTorch emulates bf16
    matmuls, measured 3-13x slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return platform.machine().lower() in ("x86_64", "amd64") and bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``float32`` or ``bfloat16`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if has_native_bf16(device) else "float32"
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The context for ``precision`` (one of :data:`PRECISIONS`; ``auto`` resolved here;
    the low-bit modes compute in float32 around their quantized layers)."""
    if resolve_precision(precision, device) != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The default checkpoint shipped inside the package."""

PACKAGED_MODELS: dict[str, str] = {
    "default": ".",
    "teacher": "teacher",
}
"""The checkpoints shipped inside the package, by name: ``model="teacher"`` anywhere a
checkpoint folder is accepted. Each is a sub-folder of :data:`DEFAULT_WEIGHTS` holding a
``backbone/``; all share the default's ``autoencoder/`` (so the package carries it once).
``default`` is what ``None`` loads (see ``docs/DESIGN.md`` for what each one is)."""


def packaged_model(path: str | Path | None) -> str | None:
    """The packaged model's name that ``path`` means, or ``None`` for a folder: ``None`` is
    ``"default"``; a name of :data:`PACKAGED_MODELS` is that model unless a folder of that
    name exists where it is given (a path always means the folder)."""
    if path is None:
        return "default"
    if isinstance(path, str) and path in PACKAGED_MODELS and not Path(path).is_dir():
        return path
    return None


def component_folder(path: str | Path | None, name: str) -> Path:
    """The ``name`` (``autoencoder`` / ``backbone`` / ``depth``) folder of ``path``: ``path/name`` when
    ``path`` is a world-model folder, else ``path`` itself (a folder of that part alone, such
    as a training stage's ``final/``); ``None`` or a name of :data:`PACKAGED_MODELS`: that
    shipped checkpoint's (the autoencoder and the depth head are the default's for every one
    of them)."""
    named = packaged_model(path)
    if named is not None:
        return DEFAULT_WEIGHTS / (PACKAGED_MODELS[named] if name == "backbone" else ".") / name
    root = Path(path)
    return root / name if (root / name).is_dir() else root


def load_depth_head(path: str | Path | None = None):
    """The depth head of ``path`` (a world-model folder with ``depth/``, a depth head's own
    folder, or a packaged model's name), float32, eval mode; ``None`` when a world-model
    folder has no ``depth/``."""
    from world_model.autoencoder.depth import DepthHead, DepthHeadConfig

    folder = component_folder(path, "depth")
    if not (folder / "config.json").is_file():
        return None
    meta = read_pretrained_config(folder)
    if "frames_per_latent" not in meta.get("config", {}) or "up_widths" not in meta.get("config", {}):
        return None  # the folder of another part (a backbone or autoencoder given alone)
    return load_pretrained(folder, lambda c: DepthHead(DepthHeadConfig.from_json(c)))


def load_backbone(path: str | Path | None = None) -> WorldModelBackbone:
    """The backbone of ``path`` (see :func:`component_folder`), float32, eval mode. Raises
    :class:`CheckpointError` naming the file."""
    return load_pretrained(component_folder(path, "backbone"),
                           lambda c: WorldModelBackbone(WorldModelConfig.from_dict(c)))


@dataclass
class WorldState:
    """Everything the next chunk depends on (besides the action and the noise), for ``B``
    rows (envs) at once. Rows are selected, replaced and cloned by the state's own methods;
    a one-row state is what an env snapshot holds."""

    stream: StreamState
    """Backbone state: GDN states, conv caches, softmax sink + window caches."""
    decode: StreamCache
    """Autoencoder decode cache (the last frames' features)."""
    reference: torch.Tensor
    """``(B, 4, 4)`` float64 c2w of the first frame: poses are taken relative to it."""
    intrinsics: torch.Tensor
    """``(B, 3, 3)`` float64 intrinsics of the frames."""

    @property
    def batch_size(self) -> int:
        return self.reference.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> "WorldState":
        """Rows ``index (k,)`` as a new ``k``-row state (copies)."""
        index = torch.as_tensor(index, dtype=torch.long)
        decode = StreamCache(tuple(t.index_select(0, index) for t in self.decode.previous), self.decode.latent_frames)
        return WorldState(self.stream.select(index), decode, self.reference.index_select(0, index),
                          self.intrinsics.index_select(0, index))

    def with_rows(self, index: torch.Tensor | list[int], rows: "WorldState") -> "WorldState":
        """This state with rows ``index (k,)`` replaced by the ``k`` rows of ``rows`` (a
        state of the same model, see :meth:`check_like`; floating-point tensors are converted
        to this state's dtypes). Out of place."""
        index = torch.as_tensor(index, dtype=torch.long)
        decode = StreamCache(tuple(a.index_copy(0, index, b.to(a.dtype))
                                   for a, b in zip(self.decode.previous, rows.decode.previous)),
                             max(self.decode.latent_frames, rows.decode.latent_frames))
        return WorldState(self.stream.with_rows(index, rows.stream), decode,
                          self.reference.index_copy(0, index, rows.reference.to(self.reference.dtype)),
                          self.intrinsics.index_copy(0, index, rows.intrinsics.to(self.intrinsics.dtype)))

    def clone(self) -> "WorldState":
        return WorldState(self.stream.clone(), StreamCache(tuple(t.clone() for t in self.decode.previous),
                                                           self.decode.latent_frames),
                          self.reference.clone(), self.intrinsics.clone())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state by name (for snapshot files and size accounting)."""
        out = {f"stream.{k}": v for k, v in self.stream.tensors().items()}
        out.update({f"decode.{i}": t for i, t in enumerate(self.decode.previous)})
        out.update(reference=self.reference, intrinsics=self.intrinsics)
        return out

    def from_tensors(self, tensors: dict[str, torch.Tensor], decode_frames: int) -> "WorldState":
        """A state shaped like this one (same block kinds) holding ``tensors`` (the names of
        :meth:`tensors`, any number of rows): the inverse of :meth:`tensors` for snapshot
        files. Shapes, dtypes and values are for :meth:`check_like` to judge."""
        own = self.tensors()
        if set(tensors) != set(own):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise ValueError(f"the state tensors do not come from this world model (missing {missing[:4]}, "
                             f"unexpected {extra[:4]})")
        stream = self.stream.from_tensors({k[len("stream."):]: v for k, v in tensors.items() if k.startswith("stream.")})
        decode = StreamCache(tuple(tensors[f"decode.{i}"] for i in range(len(self.decode.previous))), int(decode_frames))
        return WorldState(stream, decode, tensors["reference"], tensors["intrinsics"])

    def check_like(self, other: "WorldState", rows_must_match: bool = True) -> None:
        """Raise ``ValueError`` unless ``other`` could be a state of the same model as this
        one: the same tensor names and shapes (but for the rows unless ``rows_must_match``),
        floating-point where this one is (bf16 vs float32 is allowed: it is converted on
        restore) and integer / bool dtypes exactly equal, every value finite."""
        own, new = self.tensors(), other.tensors()
        if own.keys() != new.keys():
            raise ValueError("the state comes from a different world model (its tensors have other names)")
        for k, a in own.items():
            b = new[k]
            if b.shape[1:] != a.shape[1:] or (rows_must_match and b.shape[0] != a.shape[0]):
                raise ValueError(f"state tensor {k!r} has shape {tuple(b.shape)}, this model's is "
                                 f"({'B' if not rows_must_match else a.shape[0]}, {', '.join(map(str, a.shape[1:]))}): "
                                 "a different world model or configuration")
            if a.is_floating_point() != b.is_floating_point() or (not a.is_floating_point() and a.dtype != b.dtype):
                raise ValueError(f"state tensor {k!r} is {b.dtype}, this model's is {a.dtype}: only floating-point "
                                 "precisions convert into each other (float32 <-> bfloat16)")
            if b.is_floating_point() and not bool(torch.isfinite(b).all()):
                raise ValueError(f"state tensor {k!r} holds non-finite values (NaN or inf): refusing to restore it")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _to_video(frames: torch.Tensor) -> np.ndarray:
    """``(B, F, 3, H, W)`` in [-1, 1] -> uint8 ``(B, F, H, W, 3)``."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()


class WorldModel(nn.Module):
    """Autoencoder + backbone + few-step sampler, streaming one chunk at a time."""

    def __init__(self, autoencoder: Autoencoder, backbone: WorldModelBackbone, sample_steps: int = 4,
                 sample_shift: float = 3.0, image_hw: tuple[int, int] | None = None, depth_head: nn.Module | None = None):
        super().__init__()
        self.autoencoder = autoencoder.eval()
        self.backbone = backbone.eval()
        self.depth_head = depth_head.eval() if depth_head is not None else None
        self.sample_steps = sample_steps
        self.sample_shift = sample_shift
        cfg = backbone.cfg
        self.image_hw = tuple(image_hw or (8 * cfg.latent_height, 8 * cfg.latent_width))
        self._low_bit: dict[str, WorldModelBackbone] = {}  # quantized copies, built on first use (not submodules)

    def backbone_for(self, precision: str) -> WorldModelBackbone:
        """The backbone that computes in ``precision``: this one, or for ``nvfp4`` / ``int8``
        a quantized copy of it (:func:`world_model.quantization.quantize_backbone`, built
        once per mode and kept; rebuild after changing the weights by clearing
        ``_low_bit``)."""
        resolved = resolve_precision(precision, self._device)
        if resolved not in ("nvfp4", "int8"):
            return self.backbone
        if resolved not in self._low_bit:
            from world_model.quantization import quantize_backbone

            self._low_bit[resolved] = quantize_backbone(self.backbone, resolved)
        return self._low_bit[resolved]

    @property
    def config(self) -> WorldModelConfig:
        return self.backbone.cfg

    @property
    def has_depth(self) -> bool:
        """Whether the model has a depth head (then ``step(..., depth=True)`` works)."""
        return self.depth_head is not None

    @torch.no_grad()
    def decode_depth(self, latents: torch.Tensor) -> np.ndarray:
        """``(B, T, C, h, w)`` latents (normalised, as the backbone makes them) -> the depth
        head's float32 depth in metres ``(B, T, K, H, W)``; ``ValueError`` without a head."""
        if self.depth_head is None:
            raise ValueError("this world model has no depth head (no depth/ folder in its checkpoint); the packaged "
                             "models have one")
        with torch.autocast(latents.device.type, enabled=False):
            return self.depth_head(latents.float()).cpu().numpy()

    # --------------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "WorldModel":
        """Load ``path``: a folder with ``autoencoder/`` and ``backbone/``, or the name of a
        checkpoint shipped in the package (:data:`PACKAGED_MODELS`: ``"default"``,
        ``"teacher"``); ``None``: the default. Raises :class:`CheckpointError` naming the file."""
        from world_model.autoencoder import load_autoencoder

        if packaged_model(path) is None and not Path(path).is_dir():
            raise CheckpointError(f"{path}: no such world-model checkpoint folder (expected autoencoder/ and backbone/ "
                                  f"inside) and not a packaged model's name ({', '.join(PACKAGED_MODELS)})")
        ae = load_autoencoder(component_folder(path, "autoencoder"))
        meta = read_pretrained_config(component_folder(path, "backbone"))
        backbone = load_backbone(path)
        sampling = meta.get("extra", {}).get("sampling", {})
        image_hw = meta.get("extra", {}).get("image_hw")
        return cls(ae, backbone, int(sampling.get("steps", 4)), float(sampling.get("shift", 3.0)),
                   tuple(image_hw) if image_hw else None, load_depth_head(path))

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
        """Write ``autoencoder/`` and ``backbone/`` (and ``depth/`` when the model has a depth
        head) into ``path`` (atomically, each). ``dtype`` (e.g. ``torch.float16``) stores the
        weights smaller; loading converts back to float32. ``extra`` is recorded in the
        backbone's ``config.json``."""
        root = Path(path)
        save_pretrained(root / "autoencoder", self.autoencoder, self.autoencoder.config, dtype=dtype)
        if self.depth_head is not None:
            save_pretrained(root / "depth", self.depth_head, self.depth_head.config, dtype=dtype)
        save_pretrained(root / "backbone", self.backbone, self.backbone.cfg, dtype=dtype,
                        extra={**(extra or {}), "sampling": {"steps": self.sample_steps, "shift": self.sample_shift},
                               "image_hw": list(self.image_hw)})
        return root

    # ------------------------------------------------------------------------ checks
    def _check_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` frames or ``(B, 1 + K n, H, W, 3)`` clips -> float
        ``(B, F, 3, H, W)`` in [-1, 1]."""
        arr = np.asarray(frames)
        H, W = self.image_hw
        k = self.config.frames_per_latent
        if arr.dtype != np.uint8 or arr.ndim not in (4, 5) or arr.shape[-3:] != (H, W, 3) or \
                (arr.ndim == 5 and (arr.shape[1] - 1) % k):
            raise ValueError(f"first frames must be uint8 (B, {H}, {W}, 3), or context clips (B, 1 + {k} n, {H}, {W}, 3), "
                             f"got {arr.dtype} {arr.shape}")
        video = torch.from_numpy(arr.reshape(arr.shape[0], -1, H, W, 3))
        return video.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)  # (B, F, 3, H, W)

    def _check_steps(self, steps) -> int:
        if steps is None:
            return self.sample_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (sampler steps; None: the checkpoint's "
                             f"{self.sample_steps}), got {steps!r}")
        return int(steps)

    # ------------------------------------------------------------------------ streaming
    def _camera(self, c2w: torch.Tensor, reference: torch.Tensor, intrinsics: torch.Tensor, starts_video: bool):
        return self.backbone.camera(c2w, intrinsics, self.image_hw, reference=reference, starts_video=starts_video)

    @torch.no_grad()
    def init_state(self, first_frames: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray,
                   precision: str = "auto", depth: bool = False) -> tuple[np.ndarray, WorldState]:
        """Encode ``first_frames`` uint8 ``(B, H, W, 3)`` taken at ``c2w (B, 4, 4)`` with
        ``intrinsics (B, 3, 3)`` into a fresh state; or a **context clip** ``(B, 1 + K n, H,
        W, 3)`` taken at ``c2w (B, 1 + K n, 4, 4)`` (for example a look around the room):
        its latent frames are committed clean, chunk by chunk, exactly as generated chunks
        are, so the model starts from everything the clip showed. The state has the same
        size either way. Returns the decoded frames (what the model "sees": ``(B, H, W, 3)``,
        or ``(B, 1 + K n, H, W, 3)`` for clips) and the state; poses are taken relative to
        the first frame. ``precision``: one of :data:`PRECISIONS` (use the same for every
        call on one state). ``depth=True`` (a model with a depth head): also the depth head's
        float32 depth in metres of the frames, shaped like them without the colour axis,
        returned third."""
        clip = np.asarray(first_frames).ndim == 5
        video = self._check_frames(first_frames)  # (B, F, 3, H, W)
        B, F = video.shape[:2]
        poses = torch.as_tensor(check_c2w(c2w, "c2w", (B, F, 4, 4) if clip else (B, 4, 4))).reshape(B, F, 4, 4)
        K = torch.as_tensor(check_intrinsics(intrinsics, "intrinsics", (B, 3, 3)))
        ref = poses[:, 0]
        with autocast(precision, self._device):
            latents = self.autoencoder.encode(video)  # (B, 1 + n, C, h, w)
            camera = self._camera(poses, ref, K, starts_video=True)
            _, stream = next(stream_latents(self.backbone_for(precision), latents, camera, latents.shape[1], None))
            decoded, cache = self.autoencoder.decode_step(latents, None)
        frames = _to_video(decoded)  # (B, F, H, W, 3)
        state = WorldState(stream, cache, ref, K)
        if not depth:
            return (frames if clip else frames[:, 0]), state
        d = self.decode_depth(latents)  # (B, 1 + n, K, H, W): latent 0's maps are all frame 0's
        d = np.concatenate([d[:, :1, -1], d[:, 1:].reshape(B, -1, *d.shape[-2:])], 1)  # (B, F, H, W)
        return (frames if clip else frames[:, 0]), state, (d if clip else d[:, 0])

    @property
    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def reset_rows(self, state: WorldState | None, index: torch.Tensor, first_frames: np.ndarray, c2w: np.ndarray,
                   intrinsics: np.ndarray, precision: str = "auto", depth: bool = False) -> tuple[np.ndarray, WorldState]:
        """Start rows ``index (k,)`` of a batched state afresh from ``first_frames (k, H, W, 3)``
        (``state=None``: a new state of k rows). Returns the decoded first frames and the state
        (and with ``depth=True`` their predicted depth, as :meth:`init_state`)."""
        out = self.init_state(first_frames, c2w, intrinsics, precision, depth=depth)
        rows = out[1]
        return (out[0], rows if state is None else state.with_rows(index, rows)) + tuple(out[2:])

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the noise of one chunk: ``(B, 1, C, h, w)``."""
        cfg = self.config
        return (batch, 1, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    @torch.no_grad()
    def step(self, state: WorldState, c2w_chunk: np.ndarray, generator: torch.Generator | None = None,
             steps: int | None = None, noise: torch.Tensor | None = None,
             precision: str = "auto", compile: bool = False, depth: bool = False,
             memory: list | None = None, previous: np.ndarray | None = None) -> tuple[np.ndarray, WorldState]:
        """Generate the next latent frame for the K raw-frame poses ``c2w_chunk (B, K, 4, 4)``
        (rigid, finite) and decode it: uint8 frames ``(B, K, H, W, 3)`` and the new state (the
        input state is not modified): one turn of :func:`world_model.generation.stream_latents`.
        ``steps``: sampler steps, an integer >= 1 (default: the checkpoint's). ``noise``
        ``(B, 1, C, h, w)`` replaces the draw from ``generator`` (a batched env draws each
        row's noise from that row's own generator). ``precision``: one of :data:`PRECISIONS`.
        ``compile=True``: the backbone passes and the decoding run through ``torch.compile``
        (built on the first call for each batch size and precision, tens of seconds; then
        about 1.5-2x faster on CPU); frames equal the eager ones up to float rounding, and
        are deterministic. ``depth=True`` (a model with a depth head): also the chunk's depth,
        float32 metres ``(B, K, H, W)``, decoded by the depth head from the same latent,
        returned third. ``memory``: one :class:`~world_model.memory.SceneMemory` (or None) per
        row: the chunk is composited with what the row's memory shows from ``c2w_chunk`` and
        the composite is committed and returned (:func:`~world_model.memory.guide_chunk`);
        ``previous`` uint8 ``(B, H, W, 3)``: each row's last frame before the chunk (needed
        with ``memory``). Bad input raises ``ValueError`` naming the argument."""
        cfg = self.config
        B = state.batch_size
        c2w = torch.as_tensor(check_c2w(c2w_chunk, "c2w_chunk", (B, cfg.frames_per_latent, 4, 4)))
        times = sampling_times(self._check_steps(steps), self.sample_shift)
        if noise is None:
            noise = torch.randn(self.noise_shape(B), generator=generator)
        elif tuple(noise.shape) != self.noise_shape(B):
            raise ValueError(f"noise must be {self.noise_shape(B)}, got {tuple(noise.shape)}")
        guide, kept = None, {}
        if memory is not None:
            if len(memory) != B or previous is None:
                raise ValueError(f"memory needs one SceneMemory (or None) per row ({B}) and previous frames; got "
                                 f"{len(memory)} memories, previous {None if previous is None else np.shape(previous)}")
            last = self._check_frames(np.asarray(previous)[:, None])[:, 0]  # (B, 3, H, W) in [-1, 1]

            def guide(x: torch.Tensor) -> torch.Tensor:
                decoded, kept["cache"] = self.autoencoder.decode_step(x, state.decode, compiled=compile)
                kept["frames"], x = guide_chunk(self.autoencoder, x, decoded, last, memory, c2w.numpy(),
                                                state.intrinsics.numpy())
                return x
        with autocast(precision, self._device):
            cam = self._camera(c2w, state.reference, state.intrinsics, starts_video=False)
            latent, stream = sample_chunk(self.backbone_for(precision), noise, cam, state.stream, times, compiled=compile,
                                          guide=guide)
            if guide is None:
                frames, cache = self.autoencoder.decode_step(latent, state.decode, compiled=compile)
            else:
                frames, cache = kept["frames"], kept["cache"]
        new = dataclasses.replace(state, stream=stream, decode=cache)
        if not depth:
            return _to_video(frames), new
        return _to_video(frames), new, self.decode_depth(latent)[:, 0]

    @torch.no_grad()
    def generate_video(self, first_frame: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, steps: int | None = None,
                       seed: int = 0, precision: str = "auto", compile: bool = False,
                       context_depth: np.ndarray | None = None) -> np.ndarray:
        """A video along ``c2w (F, 4, 4)`` (F = 1 + K n; rigid, finite) from ``first_frame``
        uint8 (H, W, 3), or from a context clip uint8 (1 + K m, H, W, 3) taken at the first
        1 + K m poses (committed clean, see :meth:`init_state`; the video then holds its
        decoded frames and continues), with ``intrinsics`` (3, 3) (or (F, 3, 3), all equal): uint8
        ``(F, H, W, 3)``, generated chunk by chunk by :func:`world_model.generation.stream_latents`
        with the bounded state and decoded as each chunk comes. ``steps``: sampler steps, an
        integer >= 1 (default: the checkpoint's); ``seed``: the noise; ``precision``: one of
        :data:`PRECISIONS`; ``compile``: see :meth:`step`. ``context_depth``: z-depth in
        metres of the first frame or context clip, ``(H, W)`` or ``(1 + K m, H, W)``
        (``inf``: sky): the video is guided by a :class:`~world_model.memory.SceneMemory` of
        it, as ``NavConfig.scene_memory`` guides the env (each chunk composited with what the
        memory shows, then committed). Bad input raises ``ValueError`` naming the argument
        and the accepted range."""
        k = self.config.frames_per_latent
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or (c2w.shape[0] - 1) % k:
            raise ValueError(f"c2w must be (F, 4, 4) with F = 1 + {k} n, got {c2w.shape}")
        c2w = check_c2w(c2w, "c2w", c2w.shape)
        first = np.asarray(first_frame)
        context = first.shape[0] if first.ndim == 4 else 1
        if context > c2w.shape[0]:
            raise ValueError(f"a context clip of {context} frames needs at least as many poses, got c2w {c2w.shape}")
        K = np.asarray(intrinsics, dtype=np.float64)
        if K.shape not in ((3, 3), (c2w.shape[0], 3, 3)):
            raise ValueError(f"intrinsics must be (3, 3) or (F, 3, 3), got {K.shape}")
        K = check_intrinsics(K, "intrinsics", K.shape)
        K0 = K if K.ndim == 2 else K[0]
        if K.ndim == 3 and not np.allclose(K, K0):
            raise ValueError("intrinsics that change along the video are not supported: pass one (3, 3) matrix")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        times = sampling_times(self._check_steps(steps), self.sample_shift)
        video = self._check_frames(first[None])  # (1, context, 3, H, W)
        poses = torch.as_tensor(c2w)[None]  # (1, F, 4, 4)
        g = torch.Generator().manual_seed(int(seed))
        num_latent = 1 + (c2w.shape[0] - 1) // k
        if context_depth is not None:
            H, W = self.image_hw
            context_depth = np.asarray(context_depth, dtype=np.float32)
            if context_depth.shape not in ((context, H, W),) + (((H, W),) if context == 1 else ()):
                raise ValueError(f"context_depth must be ({context}, {H}, {W}) metres, one map per context frame"
                                 f"{f' (or ({H}, {W}))' if context == 1 else ''}, got {context_depth.shape}")
            if np.isnan(context_depth).any() or (context_depth <= 0).any():
                raise ValueError("context_depth must be positive metres (inf for sky), without NaN")
            context_depth = context_depth.reshape(context, H, W)
        frames, cache = [], None
        with autocast(precision, self._device):
            camera = self.backbone.camera(poses, torch.as_tensor(K0)[None], self.image_hw)
            start = self.autoencoder.encode(video)  # (1, 1 + n0, C, h, w)
            guide = None
            if context_depth is not None:
                memory = SceneMemory()
                memory.add(first.reshape(context, *first.shape[-3:]), context_depth, c2w[:context], K0)
                guide = MemoryGuide(self.autoencoder, [memory], start, video[:, -1], c2w[None], K0)
            for latent, _ in stream_latents(self.backbone_for(precision), start, camera, num_latent, times, g,
                                            compiled=compile, guide=guide):
                if guide is None:
                    out, cache = self.autoencoder.decode_step(latent, cache, compiled=compile)
                    frames.append(_to_video(out)[0])
        if guide is not None:
            return _to_video(guide.video())[0]
        return np.concatenate(frames, 0)


def check_c2w(c2w, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``c2w`` as float64 of ``shape``, every matrix finite and rigid (orthonormal rotation
    with det +1, last row ``[0, 0, 0, 1]``), else ``ValueError`` naming ``name``."""
    arr = np.asarray(c2w, dtype=np.float64)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite camera-to-world matrices (got NaN or inf)")
    rigid = np.asarray(is_rigid(arr.reshape(-1, 4, 4), 1e-4))
    if not rigid.all():
        bad = int(np.flatnonzero(~rigid)[0])
        raise ValueError(f"{name} must be rigid camera-to-world matrices (orthonormal rotation, det +1, last row "
                         f"[0, 0, 0, 1]); matrix {bad} is not")
    return arr


def check_intrinsics(intrinsics, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``intrinsics`` as float64 of ``shape``: finite pinhole matrices ``[[fx, s, cx], [0,
    fy, cy], [0, 0, 1]]`` with positive focal lengths, else ``ValueError`` naming ``name``."""
    arr = np.asarray(intrinsics, dtype=np.float64)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (got NaN or inf)")
    flat = arr.reshape(-1, 3, 3)
    if (flat[:, 0, 0] <= 0).any() or (flat[:, 1, 1] <= 0).any():
        raise ValueError(f"{name}: focal lengths fx = K[0, 0] and fy = K[1, 1] must be > 0 (pixels), got "
                         f"{flat[:, 0, 0].min():g} and {flat[:, 1, 1].min():g}")
    if not np.allclose(flat[:, 2], [0.0, 0.0, 1.0]) or not np.allclose(flat[:, 1, 0], 0.0):
        raise ValueError(f"{name} must be pinhole matrices [[fx, s, cx], [0, fy, cy], [0, 0, 1]] (not singular)")
    return arr
