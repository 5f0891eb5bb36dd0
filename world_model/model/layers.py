"""Layers of the SANA-WM miniature: frame-wise Gated DeltaNet attention, chunk-causal softmax
attention with a sink + window cache, the UCPE relative-pose branch, the GLU-MBConv
feed-forward with its temporal conv, and the block that assembles them (docs/DESIGN.md).

Tokens are laid out ``x: (B, T, S, C)``: T latent frames, S = h*w tokens per frame.
Each layer's ``forward`` takes the carried state of its block and returns the new one;
nothing is kept in module attributes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from world_model.model.camera import CameraInputs
from world_model.model.config import WorldModelConfig
from world_model.model.rope import apply_rope
from world_model.model.state import GDNBlockState, SoftmaxBlockState
from world_model.ops.dispatch import framewise_gdn, rms_norm, short_conv_frames
from world_model.ops.framewise_gdn import GDNState
from world_model.ops.fused import group_transform, ranged_attention

__all__ = ["Block", "ChunkSoftmaxAttention", "FrameGDNAttention", "GLUMBConvFFN", "RotaryTables", "ucpe_inputs", "ucpe_output"]

GATE_BIAS = 1.2785
"""SiLU(1.2785) = 1: the output gate starts as the identity."""


class RotaryTables(NamedTuple):
    """cos/sin of the token positions for a full head (``full``) and for the rotary half of
    the camera branch (``half``), each ``(T, S, 1, dim/2)`` ready to broadcast over heads."""

    full: tuple[torch.Tensor, torch.Tensor]
    half: tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------- UCPE
def ucpe_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, camera: CameraInputs, rope_half) -> tuple:
    """Relative-pose (GTA/UCPE-style) q, k, v of the camera branch, ``(B, T, S, H, D)`` each.

    The first half of each head's channels is split into groups of 4 and transformed by the
    token's ray frame: ``P^T q``, ``P^-1 k``, ``P^-1 v`` (P = world -> ray), so that
    ``q_i . k_j = q_i^T P_i P_j^-1 k_j`` depends only on the relative pose of the two rays;
    the second half gets rotary positions (q and k). Through
    :func:`~world_model.ops.fused.group_transform` (one output written in place, its
    backward written out).
    """
    p_inv = camera.ray_to_world
    return (group_transform(q, camera.world_to_ray, rope_half, transpose=True), group_transform(k, p_inv, rope_half),
            group_transform(v, p_inv))


def ucpe_output(o: torch.Tensor, camera: CameraInputs) -> torch.Tensor:
    """Map the camera branch's output back to the token's own frame: ``P o`` on the first half."""
    return group_transform(o, camera.world_to_ray)


def _rms_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x (B, T, S, H, D)`` rescaled so that each frame and head has ``like``'s RMS (over
    the frame's tokens and channels): the UCPE transform's change of scale undone, its
    per-token directions and relative magnitudes kept."""
    def rms(t):
        return t.square().mean((2, 4), keepdim=True).add(1e-12).sqrt()

    return x * (rms(like) / rms(x))


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    return x.unflatten(-1, (h, -1))  # (..., C) -> (..., H, D)


# ------------------------------------------------------------------------- shared pieces
class _GatedAttention(nn.Module):
    """What both attention kinds own: q/k/v, per-head q/k norm weights, the output gate
    (W_g = 0, b_g = 1.2785: SiLU(b_g) = 1) and projection, and the camera branch's own
    q/k/v, norm weights and zero-initialised output projection. Subclasses add their own
    parameters, then call :meth:`reset_gates`."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        C, H, D = cfg.width, cfg.num_heads, cfg.head_dim
        self.cfg, self.H, self.D = cfg, H, D
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_norm = nn.Parameter(torch.ones(D))
        self.k_norm = nn.Parameter(torch.ones(D))
        self.gate = nn.Linear(C, C)
        self.out = nn.Linear(C, C)
        if cfg.camera_branches:
            self.cam_qkv = nn.Linear(C, 3 * C, bias=False)
            self.cam_q_norm = nn.Parameter(torch.ones(D))
            self.cam_k_norm = nn.Parameter(torch.ones(D))
            self.cam_out = nn.Linear(C, C)

    @torch.no_grad()
    def reset_gates(self) -> None:
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, GATE_BIAS)
        if self.cfg.camera_branches:
            nn.init.zeros_(self.cam_out.weight)
            nn.init.zeros_(self.cam_out.bias)


# ------------------------------------------------------------------ frame-wise Gated DeltaNet
class FrameGDNAttention(_GatedAttention):
    """Frame-wise Gated DeltaNet (docs/DESIGN.md), chunk-causal, with the UCPE camera branch.

    Per head, with ``K~, Q~`` the rotary copies (numerator only) and ``B_t = diag(beta)``:
    ``S_t = gamma_t S_{t-1} (I - K~_t B_t K~_t^T) + V_t B_t K~_t^T``,
    ``z_t = gamma_t (I - K_t B_t K_t^T) z_{t-1} + K_t B_t 1``,
    ``o = S_t q~ / (z_t^T q + eps)``, forward scan carried across chunks plus an exclusive
    backward scan inside each chunk (:mod:`world_model.ops.framewise_gdn`).

    Gates: ``beta = sigmoid(W_b x + b_b)`` per token (W_b = 0, b_b = 5);
    ``gamma = exp(-exp(A_log) softplus(W_a mean_s(x) + b_a + dt_bias))`` per frame (W_a = 0,
    b_a = 0, dt_bias = -5, A_log = 0: gamma ~ 0.993); output
    ``(o + camera) * SiLU(W_g x + b_g)`` (W_g = 0, b_g = 1.2785) then a projection.

    The camera branch has its own q/k/v (same feature map, short conv on k), UCPE
    transforms, its own state ``S_cam``; it shares gamma and the output gate; its output
    projection is zero-initialised. ``camera_form="shared"`` (the shipped model): it shares
    beta and the main branch's denominator too (a choice, docs/DESIGN.md says so).
    ``"upstream"`` (upstream SANA-WM's form): numerator only; q/k/v rescaled after the UCPE
    transform to their RMS before it, per frame and head; beta divided per token by what
    remains of the key's squared-norm inflation (when above 1).
    """

    def __init__(self, cfg: WorldModelConfig):
        super().__init__(cfg)
        C, H = cfg.width, cfg.num_heads
        nb = 2 if cfg.camera_branches else 1
        conv = torch.zeros(nb * C, cfg.short_conv_kernel)
        conv[:, -1] = 1.0  # identity initialisation
        self.k_conv = nn.Parameter(conv)
        self.beta = nn.Linear(C, H)
        self.decay = nn.Linear(C, H)
        self.dt_bias = nn.Parameter(torch.full((H,), -5.0))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self) -> None:
        super().reset_gates()
        nn.init.zeros_(self.beta.weight)
        nn.init.constant_(self.beta.bias, 5.0)
        nn.init.zeros_(self.decay.weight)
        nn.init.zeros_(self.decay.bias)

    def _features(self, q, k, q_w, k_w):
        """RMSNorm and ReLU on q and k per head; k scaled by D^-1/2 S^-1/2."""
        S = q.shape[2]
        q = F.relu(rms_norm(q, q_w, self.cfg.norm_eps))
        k = F.relu(rms_norm(k, k_w, self.cfg.norm_eps)) * (self.D**-0.5 * S**-0.5)
        return q, k

    def forward(self, x: torch.Tensor, chunk_lengths: list[int], rope: RotaryTables, camera: CameraInputs | None,
                state: GDNBlockState) -> tuple[torch.Tensor, dict]:
        H, C = self.H, self.cfg.width
        use_cam = camera is not None and self.cfg.camera_branches
        q, k, v = self.qkv(x).chunk(3, -1)  # (B, T, S, C) each
        keys = k
        if self.cfg.camera_branches:
            qc, kc, vc = self.cam_qkv(x).chunk(3, -1)
            keys = torch.cat([k, kc], -1)
        keys, k_conv = short_conv_frames(keys.float(), self.k_conv, state.k_conv)  # causal over frames
        k = keys[..., :C]
        q, k = self._features(_heads(q, H), _heads(k, H), self.q_norm, self.k_norm)
        v = _heads(v, H).float()
        beta = torch.sigmoid(self.beta(x)).float()  # (B, T, S, H)
        rate = F.softplus(self.decay(x.mean(2)) + self.dt_bias)  # (B, T, H)
        gamma = torch.exp(-torch.exp(self.A_log) * rate).float()
        cos, sin = rope.full
        main = framewise_gdn(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, beta, gamma, chunk_lengths,
                             q_den=q, k_den=k, initial_state=GDNState(state.S, state.z))
        den = main.denominator[..., None] + self.cfg.gdn_eps
        o = (main.numerator / den).flatten(-2)  # (B, T, S, C)
        S_cam = state.S_cam
        if use_cam:
            qc, kc = self._features(_heads(qc, H), _heads(keys[..., C:], H), self.cam_q_norm, self.cam_k_norm)
            vc = _heads(vc, H).float()
            q2, k2, v2 = ucpe_inputs(qc, kc, vc, camera, rope.half)
            beta_cam = beta
            if self.cfg.camera_form == "upstream":
                q2, k2, v2 = (_rms_like(a, b) for a, b in ((q2, qc), (k2, kc), (v2, vc)))
                inflation = k2.square().sum(-1) / kc.square().sum(-1).clamp_min(1e-12)  # (B, T, S, H)
                beta_cam = beta / inflation.clamp_min(1.0)
            cam = framewise_gdn(q2, k2, v2, beta_cam, gamma, chunk_lengths, initial_state=GDNState(state.S_cam, None))
            S_cam = cam.state.S
            num = cam.numerator if self.cfg.camera_form == "upstream" else cam.numerator / den
            o = o + self.cam_out(ucpe_output(num, camera).flatten(-2).to(x.dtype)).float()
        y = self.out((o * F.silu(self.gate(x)).float()).to(x.dtype))
        return y, dict(S=main.state.S, z=main.state.z, S_cam=S_cam, k_conv=k_conv)


# -------------------------------------------------------------------- chunk-causal softmax
class ChunkSoftmaxAttention(_GatedAttention):
    """Softmax attention, full inside a chunk and causal across chunks, over a *sink* (the
    first chunk) plus a window of the ``softmax_window_chunks`` most recent chunks.

    Training and streaming share one path: chunks are processed in order against the
    cache, and each chunk's keys/values are written into it afterwards (the sink slots for
    chunk 0, a ring of window slots after), so a full pass and chunk-by-chunk generation
    see exactly the same keys. q/k get RMSNorm and rotary positions; the camera branch's
    heads (UCPE-transformed) run in the same attention call as extra heads; the output is
    gated like the GDN blocks'.
    """

    def __init__(self, cfg: WorldModelConfig):
        super().__init__(cfg)
        self.reset_gates()

    def _write_plan(self, chunk_index: torch.Tensor, n: int, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where each row's chunk of ``n`` frames goes: ``slots (B, n)`` cache indices,
        ``write (B,)`` whether it is written at all, ``evict (B, L)`` slots to free first
        (the chunk that ring slot held). Chunk 0 goes to the sink, later chunks to the ring.
        Free of data-dependent Python branches, so that ``torch.compile`` traces it whole."""
        cfg = self.cfg  # chunk sizes were checked by the backbone (check_chunk_sizes), outside any compiled region
        first = chunk_index == 0
        W = max(cfg.softmax_window_chunks, 1)
        base = torch.where(first, 0, cfg.first_chunk_frames + ((chunk_index - 1) % W) * cfg.chunk_frames)  # (B,)
        write = first | torch.tensor(cfg.softmax_window_chunks > 0, device=first.device)
        slots = base[:, None] + torch.arange(n, device=base.device)  # (B, n)
        ar = torch.arange(L, device=base.device)
        evict = (~first & write)[:, None] & (ar >= base[:, None]) & (ar < base[:, None] + cfg.chunk_frames)
        return slots, write, evict

    def _write(self, cache_k, cache_v, valid, k_new, v_new, chunk_index):
        """The cache after writing one chunk's keys / values ``(B, n, S, heads, D)`` at
        ``chunk_index (B,)``: appended (unbounded window) or written into the sink or its
        ring slots, out of place so that training can backpropagate through it (a row that
        writes nothing keeps its cache through a ``where``, so that its gradient is not
        doubled by the duplicate slots a no-op scatter would need)."""
        B, n = k_new.shape[:2]
        if self.cfg.softmax_window_chunks < 0:
            return torch.cat([cache_k, k_new], 1), torch.cat([cache_v, v_new], 1), torch.cat([valid, valid.new_ones(B, n)], 1)
        L = valid.shape[1]
        slots, write, evict = self._write_plan(chunk_index, n, L)
        slots = slots.clamp_max(L - 1)  # rows not written (a sink-only cache after chunk 0): any slot, masked out below
        idx = slots[:, :, None, None, None].expand(B, n, *cache_k.shape[2:])
        w = write[:, None, None, None, None]
        cache_k = torch.where(w, cache_k.scatter(1, idx, k_new), cache_k)
        cache_v = torch.where(w, cache_v.scatter(1, idx, v_new), cache_v)
        valid = torch.where(write[:, None], (valid & ~evict).scatter(1, slots, True), valid)
        return cache_k, cache_v, valid

    def _attend_fresh(self, q, k, v, chunk_lengths: list[int]) -> torch.Tensor:
        """Attention of a pass that starts a video (an empty state): chunk ``i`` sees the
        sink (chunk 0), the ``softmax_window_chunks`` chunks before it and itself, exactly
        the keys the cache would hold, read as ranges of this pass's own keys instead (one
        layout copy, no cache writes, no mask: every key seen is valid) by
        :func:`~world_model.ops.fused.ranged_attention`. ``q, k, v (B, T, S, heads, D)`` ->
        ``(B, T, S, heads, D)``."""
        B, T, S = q.shape[:3]
        W = self.cfg.softmax_window_chunks
        qh, kh, vh = (t.flatten(1, 2).transpose(1, 2).contiguous() for t in (q, k, v))  # (B, heads, T*S, D)
        starts = [0]
        for n in chunk_lengths:
            starts.append(starts[-1] + n)
        blocks = []
        for i in range(len(chunk_lengths)):
            lo = 0 if W < 0 else max(i - W, 1) if W > 0 else i  # first chunk of the window (chunk 0 is the sink)
            end = starts[i + 1] * S
            # the sink and the window are one range when they touch
            ranges = ((0, end),) if lo <= 1 else ((0, starts[1] * S), (starts[lo] * S, end))
            blocks.append((starts[i] * S, end, ranges))
        return ranged_attention(qh, kh, vh, tuple(blocks)).transpose(1, 2).unflatten(1, (T, S))

    def forward(self, x: torch.Tensor, chunk_lengths: list[int], rope: RotaryTables, camera: CameraInputs | None,
                state: SoftmaxBlockState, chunk_index: torch.Tensor, commit: bool = True,
                fresh: bool = False) -> tuple[torch.Tensor, dict]:
        """``chunk_index (B,)``: chunks each row has committed before these frames.
        ``commit=False`` (a denoising pass whose state is dropped): the last chunk's keys
        are not written into the cache, which saves copying it; the returned cache is then
        not the state after these frames. ``fresh=True`` says that ``state`` is empty (a
        pass that starts the video, as in training): the keys are then read from this
        pass's own (:meth:`_attend_fresh`), the same attention without the cache's copies,
        and the cache is written only when ``commit``."""
        H = self.H
        B, T, S, _ = x.shape
        cos, sin = rope.full
        q, k, v = (_heads(t, H) for t in self.qkv(x).float().chunk(3, -1))
        q = apply_rope(rms_norm(q, self.q_norm, self.cfg.norm_eps), cos, sin)
        k = apply_rope(rms_norm(k, self.k_norm, self.cfg.norm_eps), cos, sin)
        use_cam = camera is not None and self.cfg.camera_branches
        if self.cfg.camera_branches:
            if use_cam:
                qc, kc, vc = (_heads(t, H) for t in self.cam_qkv(x).float().chunk(3, -1))
                qc = rms_norm(qc, self.cam_q_norm, self.cfg.norm_eps)
                kc = rms_norm(kc, self.cam_k_norm, self.cfg.norm_eps)
                qc, kc, vc = ucpe_inputs(qc, kc, vc, camera, rope.half)
            else:  # no camera: the camera heads attend to nothing useful and are dropped below
                qc = kc = vc = torch.zeros_like(q)
            q, k, v = torch.cat([q, qc], 3), torch.cat([k, kc], 3), torch.cat([v, vc], 3)  # (B, T, S, 2H, D)
        cache_k, cache_v, valid = state.k, state.v, state.valid  # (B, L, S, heads, D), ..., (B, L)
        ks, vs = k.split(chunk_lengths, 1), v.split(chunk_lengths, 1)
        if fresh:
            o = self._attend_fresh(q, k, v, chunk_lengths)  # (B, T, S, heads, D)
            if commit:
                for i in range(len(chunk_lengths)):
                    cache_k, cache_v, valid = self._write(cache_k, cache_v, valid, ks[i], vs[i], chunk_index + i)
        else:
            outs = []
            for i, (qi, ki, vi) in enumerate(zip(q.split(chunk_lengths, 1), ks, vs)):
                n = qi.shape[1]
                qh = qi.flatten(1, 2).transpose(1, 2)  # (B, heads, n*S, D)
                keys = torch.cat([cache_k, ki], 1).flatten(1, 2).transpose(1, 2)  # (B, heads, (L+n)*S, D)
                vals = torch.cat([cache_v, vi], 1).flatten(1, 2).transpose(1, 2)
                seen = torch.cat([valid, valid.new_ones(B, n)], 1).repeat_interleave(S, 1)  # (B, (L+n)*S)
                o = F.scaled_dot_product_attention(qh, keys, vals, attn_mask=seen[:, None, None])  # (B, heads, n*S, D)
                outs.append(o.transpose(1, 2).unflatten(1, (n, S)))  # (B, n, S, heads, D)
                if commit or i < len(chunk_lengths) - 1:  # nothing after the last chunk reads the cache
                    cache_k, cache_v, valid = self._write(cache_k, cache_v, valid, ki, vi, chunk_index + i)
            o = torch.cat(outs, 1)  # (B, T, S, heads, D)
        y = o[..., :H, :].flatten(-2)
        if use_cam:
            y = y + self.cam_out(ucpe_output(o[..., H:, :], camera).flatten(-2).to(x.dtype)).float()
        y = self.out((y * F.silu(self.gate(x)).float()).to(x.dtype))
        return y, dict(k=cache_k, v=cache_v, valid=valid)


# ------------------------------------------------------------------------------ feed-forward
class GLUMBConvFFN(nn.Module):
    """GLU MBConv: 1x1 expand, 3x3 depthwise (per frame), GLU, causal temporal conv over
    frames (kernel 3, zero-initialised, residual), 1x1 project."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        hid = cfg.hidden_dim
        self.cfg = cfg
        self.expand = nn.Linear(cfg.width, 2 * hid)
        self.depthwise = nn.Conv2d(2 * hid, 2 * hid, 3, padding=1, groups=2 * hid)
        self.temporal = nn.Parameter(torch.zeros(hid, cfg.temporal_conv_kernel))
        self.project = nn.Linear(hid, cfg.width)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, S, _ = x.shape
        h, w = self.cfg.latent_height, self.cfg.latent_width
        y = self.expand(x)  # (B, T, S, 2hid)
        # channels-last (a permuted view, not copied): oneDNN's depthwise kernels run 2-4x faster
        # on it than on NCHW, forward and backward, and the output comes back token-major
        y = y.reshape(B * T, h, w, -1).permute(0, 3, 1, 2)  # (B*T, 2hid, h, w), channels-last strides
        y = self.depthwise(y).permute(0, 2, 3, 1).reshape(B, T, S, -1)
        a, g = y.chunk(2, -1)
        y = (a * F.silu(g)).float()  # (B, T, S, hid)
        t, cache = short_conv_frames(y, self.temporal, cache)
        return self.project((y + t).to(x.dtype)), cache


# ------------------------------------------------------------------------------------ block
class Block(nn.Module):
    """``x += gate * Attn(mod(LN x)); x += Plücker(cam); x += gate * FFN(mod(LN x))`` with
    per-frame shift/scale/gate from the timestep (adaLN-single: a shared projection of the
    timestep embedding plus this block's learned table)."""

    def __init__(self, cfg: WorldModelConfig, index: int):
        super().__init__()
        self.cfg, self.index = cfg, index
        self.softmax = cfg.is_softmax_block(index)
        self.attn = ChunkSoftmaxAttention(cfg) if self.softmax else FrameGDNAttention(cfg)
        self.ffn = GLUMBConvFFN(cfg)
        self.table = nn.Parameter(torch.randn(6, cfg.width) / math.sqrt(cfg.width))
        if cfg.camera_branches:
            self.plucker = nn.Linear(6 * cfg.frames_per_latent, cfg.width)  # a 1x1 conv over the latent grid
            nn.init.zeros_(self.plucker.weight)
            nn.init.zeros_(self.plucker.bias)

    def forward(self, x, t_mod, chunk_lengths, rope, camera, state, chunk_index, commit=True, fresh=False):
        eps = self.cfg.norm_eps
        mod = (t_mod + self.table)[:, :, None]  # (B, T, 1, 6, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(3)
        h = F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale1) + shift1
        if self.softmax:
            a, attn_state = self.attn(h, chunk_lengths, rope, camera, state, chunk_index, commit, fresh)
        else:
            a, attn_state = self.attn(h, chunk_lengths, rope, camera, state)
        x = x + gate1 * a
        if camera is not None and self.cfg.camera_branches:
            x = x + self.plucker(camera.plucker.to(x.dtype))
        h = F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale2) + shift2
        f, ffn_conv = self.ffn(h, state.ffn_conv)
        x = x + gate2 * f
        return x, type(state)(**attn_state, ffn_conv=ffn_conv)
