"""The fused CPU forms of ``world_model.ops.fused`` against their references: values and
gradients (float64 gradcheck at small sizes, float32 at the model's sizes), and a whole
training step of the backbone with every fused form against the same step inside
``reference_ops()``."""

from __future__ import annotations

import contextlib

import pytest
import torch

from world_model.ops import fused
from world_model.ops.dispatch import short_conv_frames, short_conv_frames_torch
from world_model.ops.framewise_gdn import GDNState, framewise_gdn_naive, framewise_gdn_torch
from world_model.ops.framewise_gdn.torch_impl import delta_scan


def _grads(fn, inputs, seed=1):
    """Outputs of ``fn(*inputs)`` and the gradients of a random projection of them."""
    for t in inputs:
        t.grad = None
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs] + [t.grad for t in inputs]


def _leaf(*shape, dtype=torch.float64, scale=1.0, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale).requires_grad_()


# ------------------------------------------------------------------------ short conv
def test_short_conv_fused_gradcheck_and_matches_reference():
    x, w, past = _leaf(2, 5, 3, 4), _leaf(4, 3, seed=1), _leaf(2, 2, 3, 4, seed=2)
    assert torch.autograd.gradcheck(fused.short_conv_frames_fused, (x, w, past))
    for a, b in zip(_grads(fused.short_conv_frames_fused, [x, w, past]),
                    _grads(fused.short_conv_frames_reference, [x, w, past])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_short_conv_dispatch_on_cpu_is_the_fused_form_and_carries_the_cache():
    x, w, cache = _leaf(2, 6, 3, 8, dtype=torch.float32), _leaf(8, 4, dtype=torch.float32, seed=1), None
    (y, c), (y_ref, c_ref) = short_conv_frames(x, w, cache), short_conv_frames_torch(x, w, cache)
    assert y.grad_fn is not None and "ShortConv" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(c, c_ref)
    with fused.reference_ops():
        assert "ShortConv" not in type(short_conv_frames(x, w)[0].grad_fn).__name__


# ------------------------------------------------------------------------ delta scan
def _scan_inputs(N=3, T=4, S=5, Dk=3, Dv=2, dtype=torch.float64):
    k = _leaf(N, T, S, Dk, dtype=dtype, scale=0.4, seed=1)
    return [_leaf(N, T, S, Dk, dtype=dtype), k, _leaf(N, T, S, Dk, dtype=dtype, scale=0.4, seed=2),
            _leaf(N, T, S, Dv, dtype=dtype, seed=3),
            torch.rand(N, T, generator=torch.Generator().manual_seed(4), dtype=dtype).requires_grad_(),
            _leaf(N, Dk, Dv, dtype=dtype, seed=5)]


def test_delta_scan_fused_gradcheck_and_matches_autograd():
    inputs = _scan_inputs()
    assert torch.autograd.gradcheck(fused.delta_scan_fused, inputs)
    for a, b in zip(_grads(fused.delta_scan_fused, inputs), _grads(delta_scan, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_delta_scan_fused_with_constant_values_and_unused_final_state():
    """V as an expanded view of ones (the normaliser's scan) needs no gradient; a loss of the
    outputs alone leaves the final state's gradient None."""
    q, k, kb, _, gamma, h0 = _scan_inputs()
    ones = torch.ones((), dtype=torch.float64).expand(3, 4, 5, 1)
    h0 = h0[..., :1].detach().requires_grad_()
    got = _grads(lambda *a: fused.delta_scan_fused(*a)[0], [q, k, kb, ones, gamma, h0])
    want = _grads(lambda *a: delta_scan(*a)[0], [q, k, kb, ones, gamma, h0])
    assert got[4] is None and want[4] is None  # the ones
    for a, b in zip(got, want):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [1, 3, 1], [2, 3]])
def test_framewise_gdn_fused_equals_autograd_and_naive(chunks):
    g = torch.Generator().manual_seed(0)
    B, T, S, H, D = 2, sum(chunks), 3, 2, 4

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    q, v, qd = leaf(B, T, S, H, D), leaf(B, T, S, H, D), leaf(B, T, S, H, D)
    k, kd = leaf(B, T, S, H, D, scale=0.3), leaf(B, T, S, H, D, scale=0.3)
    beta = torch.rand(B, T, S, H, generator=g, dtype=torch.float64).requires_grad_()
    gamma = torch.rand(B, T, H, generator=g, dtype=torch.float64).requires_grad_()
    S0, z0 = leaf(B, H, D, D), leaf(B, H, D)
    inputs = [q, k, v, beta, gamma, qd, kd, S0, z0]

    def run(impl):
        def f(q, k, v, beta, gamma, qd, kd, S0, z0):
            o = impl(q, k, v, beta, gamma, chunks, q_den=qd, k_den=kd, initial_state=GDNState(S0, z0))
            return o.numerator, o.denominator, o.state.S, o.state.z
        return f

    fast = _grads(run(lambda *a, **kw: framewise_gdn_torch(*a, **kw, fused=True)), inputs)
    slow = _grads(run(lambda *a, **kw: framewise_gdn_torch(*a, **kw, fused=False)), inputs)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        naive = framewise_gdn_naive(q, k, v, beta, gamma, chunks, q_den=qd, k_den=kd, initial_state=GDNState(S0, z0))
    torch.testing.assert_close(fast[0], naive.numerator.to(fast[0].dtype), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(fast[1], naive.denominator.to(fast[1].dtype), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------ attention
def _window_blocks(T, S, W):
    blocks = []
    for i in range(T):
        lo = max(i - W, 1)
        ranges = ((0, (i + 1) * S),) if lo <= 1 else ((0, S), (lo * S, (i + 1) * S))
        blocks.append((i * S, (i + 1) * S, ranges))
    return tuple(blocks)


def test_ranged_attention_gradcheck_and_matches_reference():
    blocks = _window_blocks(5, 2, 2)  # blocks 3 and 4 read the sink and a window apart from it
    assert any(len(r) == 2 for _, _, r in blocks)
    q, k, v = _leaf(2, 3, 10, 4), _leaf(2, 3, 10, 4, seed=1), _leaf(2, 3, 10, 4, seed=2)
    assert torch.autograd.gradcheck(lambda q, k, v: fused.ranged_attention(q, k, v, blocks), (q, k, v))
    q, k, v = (t.detach().float().requires_grad_() for t in (q, k, v))
    for a, b in zip(_grads(lambda *a: fused.ranged_attention(*a, blocks), [q, k, v]),
                    _grads(lambda *a: fused.ranged_attention_reference(*a, blocks), [q, k, v])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ranged_attention_keys_outside_the_ranges_get_no_gradient():
    blocks = ((0, 2, ((0, 2),)), (2, 4, ((0, 1), (3, 4))))  # key rows 1 and 2 only for block 0
    q, k, v = _leaf(1, 1, 4, 4), _leaf(1, 1, 4, 4, seed=1), _leaf(1, 1, 4, 4, seed=2)
    out = fused.ranged_attention(q, k, v, blocks)
    out[:, :, 2:].sum().backward()
    assert k.grad[:, :, 1:3].abs().max() == 0 and k.grad[:, :, [0, 3]].abs().max() > 0
    assert q.grad[:, :, :2].abs().max() == 0


# ------------------------------------------------------------------------ UCPE transform
@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_group_transform_gradcheck_and_matches_reference(rotary, transpose):
    B, T, S, H, D = 2, 3, 2, 2, 16
    x = _leaf(B, T, S, H, D)
    m = torch.randn(B, T, S, 4, 4, dtype=torch.float64)
    angles = torch.randn(T, S, 1, D // 4, dtype=torch.float64)
    rope = (angles.cos(), angles.sin()) if rotary else None
    f = lambda x: fused.group_transform(x, m, rope, transpose=transpose)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    mm = m.transpose(-1, -2) if transpose else m
    for a, b in zip(_grads(f, [x]), _grads(lambda x: fused.group_transform_reference(x, mm, rope), [x])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    first = torch.einsum("btsij,btshgj->btshgi", mm, x.detach()[..., :D // 2].unflatten(-1, (-1, 4))).flatten(-2)
    torch.testing.assert_close(f(x)[..., :D // 2], first)


def test_group_transform_sees_an_in_place_change_of_the_matrix():
    """The block-diagonal form is cached per matrix: an in-place change must rebuild it."""
    x = torch.randn(1, 2, 3, 2, 8)
    m = torch.randn(1, 2, 3, 4, 4)
    before = fused.group_transform(x, m)
    m.mul_(2.0)
    after = fused.group_transform(x, m)
    torch.testing.assert_close(after[..., :4], 2 * before[..., :4])
    torch.testing.assert_close(after, fused.group_transform_reference(x, m))


def test_reference_ops_restores_the_switch_on_error():
    assert fused.fused_ops_enabled()
    with pytest.raises(RuntimeError), fused.reference_ops():
        assert not fused.fused_ops_enabled()
        raise RuntimeError
    assert fused.fused_ops_enabled()


# ------------------------------------------------------------------------ a training step
@pytest.mark.parametrize("chunk_frames", [1, 2])
def test_training_step_with_fused_ops_equals_the_reference_step(chunk_frames):
    """The backbone's flow-matching loss and every parameter's gradient, fused against
    ``reference_ops()``, with the zero-initialised branches opened (so that the camera
    branches, the gates and the temporal convolutions carry gradient)."""
    from world_model.diffusion import FlowMatchingConfig
    from world_model.model import WorldModelBackbone, WorldModelConfig
    from world_model.train.bench import _Objective, make_batch

    cfg = WorldModelConfig(latent_channels=8, latent_height=4, latent_width=4, depth=4, width=32, num_heads=2,
                           softmax_every=2, chunk_frames=chunk_frames, first_chunk_frames=1, softmax_window_chunks=1)
    torch.manual_seed(0)
    backbone = WorldModelBackbone(cfg)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if p.abs().sum() == 0 or "gate" in name:
                p.add_(0.05 * torch.randn_like(p))
    objective = _Objective(backbone, FlowMatchingConfig())
    batch = make_batch(cfg, 2, 7)
    results = []
    for ctx in (contextlib.nullcontext, fused.reference_ops):
        backbone.zero_grad()
        with ctx():
            loss = objective(batch["latents"], batch["c2w"], batch["intrinsics"], 0)
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in backbone.named_parameters()}))
    (loss, grads), (loss_ref, grads_ref) = results
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=0)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        scale = grads_ref[name].abs().max().clamp_min(1e-12)
        assert (grads[name] - grads_ref[name]).abs().max() / scale < 1e-4, name
