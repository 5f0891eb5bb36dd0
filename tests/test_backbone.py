"""Invariants of the SANA-WM backbone: chunk causality, streaming equals the full pass,
bounded state, zero camera branches at initialisation, relative-pose attention."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from world_model.geometry import exp_se3, intrinsics_from_fov
from world_model.model import WorldModelBackbone, WorldModelConfig, camera_inputs, state_nbytes
from world_model.model.camera import CameraInputs
from world_model.model.layers import ucpe_inputs, ucpe_output
from world_model.model.rope import apply_rope, rope_angles, token_positions

SMALL = WorldModelConfig(latent_channels=4, latent_height=4, latent_width=4, depth=4, width=32, num_heads=2,
                         softmax_every=2, chunk_frames=2, first_chunk_frames=1, softmax_window_chunks=2)
"""Blocks 1 and 3 softmax, chunks 1 + 2 + 2 + ..., a window of 2 chunks (so it wraps)."""


def make_inputs(cfg: WorldModelConfig, T: int, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(B, T, cfg.latent_channels, cfg.latent_height, cfg.latent_width, generator=g)
    t = torch.rand(B, T, generator=g)
    k = cfg.frames_per_latent
    F = 1 + k * (T - 1)
    twist = torch.randn(B, 6, generator=g, dtype=torch.float64) * 0.3
    steps = torch.arange(F, dtype=torch.float64)[None, :, None] * 0.0625
    c2w = exp_se3(twist[:, None] * steps)  # (B, F, 4, 4) a smooth camera path
    K = intrinsics_from_fov(90, 8 * cfg.latent_height, 8 * cfg.latent_width)
    cam = camera_inputs(c2w, K, (8 * cfg.latent_height, 8 * cfg.latent_width), (cfg.latent_height, cfg.latent_width),
                        k, cfg.pose_scale)
    return lat, t, cam, c2w, K


def randomise_zero_inits(model: torch.nn.Module, seed: int = 1) -> None:
    """Give the zero-initialised parts (camera outputs, Plücker, temporal conv, final layer,
    gates) random values so that the invariants are tested on a model that uses them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 or "gate" in name or "beta" in name or "decay" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (p if "bias" in name else 0))


def slice_cam(cam: CameraInputs, sl: slice) -> CameraInputs:
    return CameraInputs(*(x[:, sl] for x in cam))


def stream(model, cfg: WorldModelConfig, lat, t, cam):
    """The model run chunk by chunk, carrying its state: ``(velocity (B, T, ...), final state)``."""
    state, outs, start = None, [], 0
    for n in cfg.chunk_lengths(lat.shape[1]):
        sl = slice(start, start + n)
        out, state = model(lat[:, sl], t[:, sl], slice_cam(cam, sl), state=state)
        outs.append(out)
        start += n
    return torch.cat(outs, 1), state


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = WorldModelBackbone(SMALL).eval()
    randomise_zero_inits(m)
    return m


def test_chunk_causality(model):
    T = 7  # chunks [1, 2, 2, 2]
    lat, t, cam, _, _ = make_inputs(SMALL, T)
    with torch.no_grad():
        ref, _ = model(lat, t, cam)
        for start in (1, 3, 5):  # first frame of chunk c + 1
            lat2, t2 = lat.clone(), t.clone()
            lat2[:, start:] += torch.randn_like(lat2[:, start:])
            t2[:, start:] = torch.rand_like(t2[:, start:])
            cam2 = CameraInputs(*(torch.cat([x[:, :start], x[:, start:] + torch.randn_like(x[:, start:])], 1) for x in cam))
            out, _ = model(lat2, t2, cam2)
            torch.testing.assert_close(out[:, :start], ref[:, :start], rtol=0, atol=1e-6)
            assert (out[:, start:] - ref[:, start:]).abs().max() > 1e-3


def test_streaming_equals_full_pass(model):
    T = 9  # chunks [1, 2, 2, 2, 2]: the softmax ring of 2 chunks wraps twice
    lat, t, cam, _, _ = make_inputs(SMALL, T)
    with torch.no_grad():
        full, full_state = model(lat, t, cam)
        streamed, state = stream(model, SMALL, lat, t, cam)
    rel = (streamed - full).norm() / full.norm()
    assert rel <= 1e-5
    for name, a in full_state.tensors().items():
        torch.testing.assert_close(state.tensors()[name], a, rtol=1e-5, atol=1e-6, msg=name)


def test_a_pass_without_commit_gives_the_same_velocity(model):
    """Denoising passes (``commit=False``) skip writing the cache; their output is the same."""
    T = 5  # chunks [1, 2, 2]
    lat, t, cam, _, _ = make_inputs(SMALL, T)
    with torch.no_grad():
        _, state = model(lat[:, :3], t[:, :3], slice_cam(cam, slice(0, 3)))
        sl = slice(3, 5)
        v, new = model(lat[:, sl], t[:, sl], slice_cam(cam, sl), state=state)
        v_dropped, none = model(lat[:, sl], t[:, sl], slice_cam(cam, sl), state=state, commit=False)
        assert none is None and new is not None
        assert torch.equal(v, v_dropped)
        # several chunks in one pass still write every chunk but the last
        v_all, _ = model(lat, t, cam)
        v_all_dropped, _ = model(lat, t, cam, commit=False)
        assert torch.equal(v_all, v_all_dropped)


@pytest.mark.parametrize("window", [2, 0, -1])
def test_a_pass_from_an_empty_state_attends_like_the_cache(model, window):
    """A pass given no state (training's) reads the softmax keys from the pass itself; one
    given an explicit empty state runs the cache: the same velocity, state and gradients,
    for a wrapping window, a sink-only one and an unbounded one."""
    cfg = dataclasses.replace(SMALL, softmax_window_chunks=window)
    m = WorldModelBackbone(cfg).eval()
    m.load_state_dict(model.state_dict())
    T = 9  # chunks [1, 2, 2, 2, 2]: with a window of 2, chunk 4 sees the sink and chunks 2-4 only
    lat, t, cam, _, _ = make_inputs(cfg, T)
    outs = []
    for state in (None, m.init_state(lat.shape[0])):
        x = lat.clone().requires_grad_(True)
        v, new = m(x, t, cam, state=state)
        v.square().sum().backward()
        outs.append((v.detach(), new, x.grad, [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        m.zero_grad(set_to_none=True)
    (v0, s0, g0, p0), (v1, s1, g1, p1) = outs
    torch.testing.assert_close(v0, v1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for name, a in s1.tensors().items():
        torch.testing.assert_close(s0.tensors()[name], a, rtol=1e-5, atol=1e-6, msg=name)


def test_state_size_is_independent_of_episode_length():
    cfg = dataclasses.replace(SMALL, depth=2, chunk_frames=1)
    torch.manual_seed(0)
    m = WorldModelBackbone(cfg).eval()
    lat, t, cam, _, _ = make_inputs(cfg, 240, B=1)
    sizes = {}
    with torch.no_grad():
        state = None
        for i in range(240):  # one minute at 4 latent frames per second
            _, state = m(lat[:, i : i + 1], t[:, i : i + 1], slice_cam(cam, slice(i, i + 1)), state=state)
            if i + 1 in (1, 2, 240):
                sizes[i + 1] = state_nbytes(state)
    assert sizes[1] == sizes[2] == sizes[240]
    assert int(state.frame_index) == 240 and int(state.chunk_index) == 240


def test_camera_branches_contribute_exactly_zero_at_init():
    torch.manual_seed(0)
    m = WorldModelBackbone(SMALL)
    with torch.no_grad():  # a non-trivial output: un-zero only the final projection
        m.final.weight.normal_()
    lat, t, cam, _, _ = make_inputs(SMALL, 5)
    with_cam, _ = m(lat, t, cam)
    without, _ = m(lat, t, None)
    assert with_cam.abs().max() > 0
    assert torch.equal(with_cam, without)
    # ... yet the branches are trainable: their zero-initialised outputs get gradients.
    with_cam.square().mean().backward()
    assert m.blocks[0].attn.cam_out.weight.grad.abs().sum() > 0
    assert m.blocks[1].attn.cam_out.weight.grad.abs().sum() > 0
    assert m.blocks[0].plucker.weight.grad.abs().sum() > 0


def test_gate_initial_values():
    m = WorldModelBackbone(SMALL)
    gdn = m.blocks[0].attn
    x = torch.randn(3, SMALL.width)
    assert torch.allclose(torch.nn.functional.silu(gdn.gate(x)), torch.ones(3, SMALL.width), atol=1e-4)
    assert torch.allclose(torch.sigmoid(gdn.beta(x)), torch.full((3, SMALL.num_heads), torch.sigmoid(torch.tensor(5.0)).item()))
    rate = torch.nn.functional.softplus(gdn.decay(x) + gdn.dt_bias)
    assert torch.allclose(torch.exp(-torch.exp(gdn.A_log) * rate), torch.tensor(0.99331), atol=1e-5)
    assert torch.equal(gdn.k_conv[:, :-1], torch.zeros_like(gdn.k_conv[:, :-1])) and (gdn.k_conv[:, -1] == 1).all()


def test_ucpe_logits_depend_only_on_relative_pose():
    """q_i . k_j of the camera branch is unchanged when every ray frame moves by one global
    rigid transform (and the rotary half stays put)."""
    cfg = SMALL
    B, T, S, H, D = 1, 2, cfg.tokens_per_frame, 2, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, S, H, D, generator=g) for _ in range(3))
    _, _, cam, _, _ = make_inputs(cfg, T, B=1)
    G = exp_se3(torch.tensor([0.3, -0.2, 0.5, 0.4, 0.1, -0.7], dtype=torch.float64)).float()
    moved = CameraInputs(cam.plucker, G @ cam.ray_to_world, cam.world_to_ray @ torch.linalg.inv(G))
    rope = rope_angles(token_positions(T, cfg.latent_height, cfg.latent_width), D // 2, 10000.0)
    rope = tuple(a[None, :, :, None] for a in rope)
    q1, k1, _ = ucpe_inputs(q, k, v, cam, rope)
    q2, k2, _ = ucpe_inputs(q, k, v, moved, rope)
    logits1 = torch.einsum("bthd,bshd->bhts", q1.flatten(1, 2), k1.flatten(1, 2))
    logits2 = torch.einsum("bthd,bshd->bhts", q2.flatten(1, 2), k2.flatten(1, 2))
    torch.testing.assert_close(logits1, logits2, rtol=1e-4, atol=1e-4)
    # The output map inverts the value map for a token attending only to itself.
    _, _, v1 = ucpe_inputs(q, k, v, cam, rope)
    torch.testing.assert_close(ucpe_output(v1, cam), v, rtol=1e-4, atol=1e-4)


def test_parameter_counts():
    tiny = sum(p.numel() for p in WorldModelBackbone(WorldModelConfig.tiny()).parameters())
    assert 1e6 < tiny < 6e6
    with torch.device("meta"):
        full = WorldModelBackbone(WorldModelConfig.sana_wm())
    n = sum(p.numel() for p in full.parameters())
    assert 1e9 < n < 5e9  # billions, like the released model


def test_bad_inputs(model):
    lat, t, cam, _, _ = make_inputs(SMALL, 3)
    with pytest.raises(ValueError, match="latents must be"):
        model(lat[:, :, :2], t, cam)
    with pytest.raises(ValueError, match="timesteps"):
        model(lat, t[:, :2], cam)
    with pytest.raises(ValueError, match="chunk_lengths"):
        model(lat, t, cam, chunk_lengths=[1, 1])
    with pytest.raises(ValueError, match="sink"):
        model(lat, t, cam, chunk_lengths=[3])
    lat4, t4, cam4, _, _ = make_inputs(SMALL, 4)
    with pytest.raises(ValueError, match="chunk of 3 frames; chunks after the first hold at most chunk_frames=2"):
        model(lat4, t4, cam4, chunk_lengths=[1, 3])
    _, state = model(lat[:, :1], t[:, :1], slice_cam(cam, slice(0, 1)))  # a row past its first chunk
    with pytest.raises(ValueError, match="chunk of 3 frames"):
        model(lat, t, cam, chunk_lengths=[3], state=state)
    with pytest.raises(ValueError, match="divisible"):
        WorldModelConfig(width=30, num_heads=4)


def test_unbounded_cache_baseline_grows_and_streams_like_the_full_pass():
    """softmax_window_chunks=-1 (the benchmark's baseline) keeps every chunk: its state grows."""
    cfg = dataclasses.replace(SMALL, softmax_window_chunks=-1)
    torch.manual_seed(0)
    m = WorldModelBackbone(cfg).eval()
    randomise_zero_inits(m)
    T = 7
    lat, t, cam, _, _ = make_inputs(cfg, T)
    with torch.no_grad():
        full, _ = m(lat, t, cam)
        state, outs, start, sizes = None, [], 0, []
        for n in cfg.chunk_lengths(T):
            sl = slice(start, start + n)
            out, state = m(lat[:, sl], t[:, sl], slice_cam(cam, sl), state=state)
            outs.append(out)
            sizes.append(state_nbytes(state))
            start += n
    assert (torch.cat(outs, 1) - full).norm() / full.norm() <= 1e-5
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_rows_at_different_positions_match_single_row_runs():
    """A batched env resets rows independently: a row reset mid-stream (``StreamState.with_rows`` with a
    fresh state) must then evolve exactly as if it ran alone from the start."""
    from world_model.model.state import init_state

    cfg = dataclasses.replace(SMALL, chunk_frames=1)
    torch.manual_seed(0)
    m = WorldModelBackbone(cfg).eval()
    randomise_zero_inits(m)
    T = 6
    lat, t, cam, _, _ = make_inputs(cfg, T, B=2)

    def step(i, rows_lat, rows_t, rows_cam, state):
        return m(rows_lat[:, i : i + 1], rows_t[:, i : i + 1], slice_cam(rows_cam, slice(i, i + 1)), [1], state)

    with torch.no_grad():
        # Row 0 runs frames 0..5. Row 1 runs frames 0..2, is reset, then runs frames 0..2 again.
        state, outs = None, []
        order1 = [0, 1, 2, 0, 1, 2]
        for j in range(T):
            if j == 3:
                state = state.with_rows(torch.tensor([1]), init_state(cfg, 1))
            idx = torch.tensor([j, order1[j]])
            batch_lat = torch.stack([lat[0, idx[0]], lat[1, idx[1]]])[:, None]
            batch_t = torch.stack([t[0, idx[0]], t[1, idx[1]]])[:, None]
            batch_cam = CameraInputs(*(torch.stack([x[0, idx[0]], x[1, idx[1]]])[:, None] for x in cam))
            out, state = m(batch_lat, batch_t, batch_cam, [1], state)
            outs.append(out)
        alone0, s0 = [], None
        for j in range(T):
            o, s0 = step(j, lat[:1], t[:1], CameraInputs(*(x[:1] for x in cam)), s0)
            alone0.append(o)
        alone1, s1 = [], None
        for j in range(3):
            o, s1 = step(j, lat[1:], t[1:], CameraInputs(*(x[1:] for x in cam)), s1)
            alone1.append(o)
    torch.testing.assert_close(torch.cat([o[:1] for o in outs], 1), torch.cat(alone0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([o[1:] for o in outs[3:]], 1), torch.cat(alone1, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([o[1:] for o in outs[:3]], 1), torch.cat(alone1, 1), rtol=1e-5, atol=1e-5)


def test_copies_and_pickles_build_their_own_compiled_function():
    """The compiled forward is bound to one module's weights: a deep copy (an EMA model, say)
    must not run the original's weights when it is called with ``compiled=True``."""
    import copy
    import io

    model = WorldModelBackbone(SMALL)
    fn = model.compiled("_compute")  # torch.compile is lazy: nothing is built here
    assert model.compiled("_compute") is fn
    twin = copy.deepcopy(model)
    assert "_compiled__compute" not in twin.__dict__ and twin.compiled("_compute") is not fn
    torch.save(model, io.BytesIO())  # a bound compiled function cannot be pickled


def test_bench_command_prints_the_chunk_ratios_and_throughput(capsys):
    """``python -m world_model.bench_streaming`` at a short horizon: the hybrid's carried state is the
    same size late as early, the unbounded baseline's grows, and every figure is printed."""
    from world_model.bench_streaming import main

    assert main(["--chunks", "12", "--steps", "1", "--repeats", "1", "--batch-sizes", "1",
                 "--throughput-chunks", "2"]) == 0
    out = capsys.readouterr().out
    ratios = {line.split("   ")[0].strip(): line for line in out.splitlines() if "state x" in line}
    assert "state x1.00" in ratios["hybrid GDN (sink + window cache)"]
    grown = float(ratios["all softmax, unbounded cache"].split("state x")[1])
    assert grown > 2  # 12 chunks of keys and values against 2
    assert "baseline / hybrid at chunk 12" in out
    assert len([line for line in out.splitlines() if line.split()[:1] == ["1"]]) == 2  # batch 1: float32, bf16
    assert "precision='auto' picks" in out and "1 threads" in out and out.count("<- auto") == 1


def test_rope_as_complex_product_equals_the_rotation_written_out():
    """apply_rope (one complex product over a view of the pairs) against each pair rotated
    by hand, on a contiguous tensor, a strided slice (as q out of a fused qkv), an odd
    offset (copied first), float64 (kept) and bfloat16 (returned as given); gradients too."""
    g = torch.Generator().manual_seed(0)
    cos_sin = rope_angles(token_positions(3, 2, 2), 8, 10000.0)
    cos, sin = (a[..., None, :] for a in cos_sin)  # (T, S, 1, 4)

    def by_hand(x):
        a, b = x[..., 0::2].double(), x[..., 1::2].double()
        c, s_ = cos.double(), sin.double()
        return torch.stack([a * c - b * s_, a * s_ + b * c], -1).flatten(-2)

    fused = torch.randn(2, 3, 4, 2, 25, generator=g)
    for x in (fused[..., :8].contiguous(), fused[..., 8:16], fused[..., 1:9], fused[..., :8].double(),
              fused[..., :8].bfloat16()):
        out = apply_rope(x, cos, sin)
        assert out.dtype == x.dtype and out.shape == x.shape
        tol = 1e-2 if x.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(out.double(), by_hand(x.float() if x.dtype == torch.bfloat16 else x), rtol=tol, atol=tol)
    x = torch.randn(3, 4, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double(), sin.double()), (x,))


def test_upstream_camera_form_streams_like_the_full_pass_and_starts_at_zero(model):
    """``camera_form="upstream"`` (numerator only, RMS rescale, beta discount): the camera
    branch still adds exactly zero at initialisation, streaming equals the full pass, and
    with trained-like weights it computes something else than the shared form."""
    cfg = dataclasses.replace(SMALL, camera_form="upstream")
    T = 5
    lat, t, cam, _, _ = make_inputs(cfg, T)
    fresh = WorldModelBackbone(cfg).eval()
    with torch.no_grad():
        a, _ = fresh(lat, t, cam)
        b, _ = fresh(lat, t, None)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # zero-initialised camera outputs and Plücker
    m = WorldModelBackbone(cfg).eval()
    m.load_state_dict(model.state_dict())  # the same weights as the shared-form fixture
    with torch.no_grad():
        full, _ = m(lat, t, cam)
        streamed, _ = stream(m, cfg, lat, t, cam)
        shared, _ = model(lat, t, cam)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(full).all() and (full - shared).abs().max() > 1e-4
    with pytest.raises(ValueError, match="camera_form must be one of"):
        dataclasses.replace(SMALL, camera_form="numerator")
