"""Camera conditioning of the backbone: Plücker maps per raw frame and ray frames per token.

SANA-WM's dual-branch control (docs/DESIGN.md):

- raw-frame-rate branch: a 6-channel Plücker map ``[d, o x d]`` per raw frame at the latent
  grid's resolution; the K raw frames that fall into one latent frame are stacked into
  ``6K`` channels (the first latent frame holds one raw frame, repeated K times);
- latent-rate branch (UCPE): every latent token's ray (through its pixel centre on the
  latent grid, in the latent frame's camera) defines a local frame with z along the ray;
  ``P`` is its 4x4 ray<-world transform, used to make attention depend on relative poses.

Poses are taken relative to the first raw frame of the video, translations divided by
``pose_scale``. The latent frame's camera for UCPE is the last raw frame of its group
(the pose the env reports at the end of a step).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from world_model.geometry import invert_se3, pixel_rays, plucker_map, scale_intrinsics

__all__ = ["CameraInputs", "camera_inputs", "latent_frame_of_raw", "raw_frames_for_latents"]


class CameraInputs(NamedTuple):
    plucker: torch.Tensor
    """``(B, T, S, 6K)`` stacked Plücker channels per latent token."""
    ray_to_world: torch.Tensor
    """``(B, T, S, 4, 4)`` P^-1 of each token: the ray frame expressed in the world."""
    world_to_ray: torch.Tensor
    """``(B, T, S, 4, 4)`` P: world -> ray frame."""


def raw_frames_for_latents(num_latent: int, k: int) -> int:
    """Raw frames covered by ``num_latent`` latent frames: ``1 + K (T - 1)``."""
    return 1 + k * (num_latent - 1)


def latent_frame_of_raw(num_raw: int, k: int) -> int:
    if (num_raw - 1) % k:
        raise ValueError(f"a video of {num_raw} raw frames does not split into 1 + {k} n frames")
    return 1 + (num_raw - 1) // k


def _ray_frames(c2w: torch.Tensor, K: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(..., 4, 4)`` cameras -> ``(..., h*w, 4, 4)`` ray-to-world frames: z along the ray,
    x the camera's right axis made orthogonal to it, origin at the camera centre."""
    origins, dirs = pixel_rays(c2w, K, h, w)  # (..., h, w, 3)
    z = dirs.flatten(-3, -2)
    right = c2w[..., None, :3, 0].expand_as(z)
    x = right - (right * z).sum(-1, keepdim=True) * z
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-9)
    y = torch.linalg.cross(z, x, dim=-1)
    T = torch.zeros(*z.shape[:-1], 4, 4, dtype=c2w.dtype, device=c2w.device)
    T[..., :3, 0], T[..., :3, 1], T[..., :3, 2] = x, y, z
    T[..., :3, 3] = origins.flatten(-3, -2)
    T[..., 3, 3] = 1
    return T


def camera_inputs(c2w_raw: torch.Tensor, K_image: torch.Tensor, image_hw: tuple[int, int], latent_hw: tuple[int, int],
                  frames_per_latent: int, pose_scale: float, reference: torch.Tensor | None = None,
                  starts_video: bool = True) -> CameraInputs:
    """Conditioning for ``c2w_raw (B, 1 + K (T-1), 4, 4)`` raw-frame poses (any float dtype).

    ``K_image (3, 3)`` or ``(B, 3, 3)`` are intrinsics of the ``image_hw`` frames; they are
    scaled to the latent grid. ``reference (B, 4, 4)`` is the pose the others are taken
    relative to (default: each video's first raw frame; a streamed chunk passes the
    video's first pose so that it is conditioned like the full video). With
    ``starts_video=False`` the poses are ``(B, K T, 4, 4)``: the raw frames of T latent
    frames in the middle of a video (one env step: K poses, T = 1).
    """
    k = frames_per_latent
    B, F = c2w_raw.shape[:2]
    if not starts_video:
        if F % k or reference is None:
            raise ValueError(f"a mid-video chunk needs K={k} poses per latent frame (got {F}) and a reference pose")
        padded = torch.cat([c2w_raw[:, :1], c2w_raw], 1)  # a stand-in first frame, dropped below
        full = camera_inputs(padded, K_image, image_hw, latent_hw, k, pose_scale, reference)
        return CameraInputs(*(x[:, 1:] for x in full))
    T = latent_frame_of_raw(F, k)
    c2w = c2w_raw.double()
    ref = c2w[:, 0] if reference is None else reference.double()
    rel = invert_se3(ref)[:, None] @ c2w  # (B, F, 4, 4)
    rel = rel.clone()
    rel[..., :3, 3] = rel[..., :3, 3] / pose_scale
    K_lat = scale_intrinsics(K_image.double(), image_hw, latent_hw)
    if K_lat.ndim == 3:
        K_lat = K_lat[:, None]  # (B, 1, 3, 3)
    h, w = latent_hw
    pl = plucker_map(rel, K_lat, h, w)  # (B, F, h, w, 6)
    first = pl[:, :1].expand(B, k, h, w, 6)
    groups = torch.cat([first, pl[:, 1:]], 1).reshape(B, T, k, h * w, 6)
    plucker = groups.permute(0, 1, 3, 2, 4).reshape(B, T, h * w, 6 * k)
    last = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(k, F, k)]) if T > 1 else torch.zeros(1, dtype=torch.long)
    rays = _ray_frames(rel[:, last], K_lat, h, w)  # (B, T, S, 4, 4)
    return CameraInputs(plucker.float(), rays.float(), invert_se3(rays).float())
