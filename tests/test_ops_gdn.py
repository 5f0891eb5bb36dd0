"""The chunk-causal frame-wise gated delta rule and the other dispatched ops, on CPU.

The batched PyTorch form is checked against the literal reference at awkward sizes
(numerator, denominator and final state), then for the invariants the model relies on:
chunk causality, streaming equals one full pass, exclusive per-chunk backward scan.
The Triton kernel is tested under the interpreter in ``test_ops_triton_interpret.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from world_model.ops import GDNState, framewise_gdn_naive, framewise_gdn_torch, rms_norm_torch, short_conv_frames_torch
from world_model.ops.dispatch import framewise_gdn, rms_norm, short_conv_frames

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def make_inputs(B=2, T=7, S=3, H=3, Dk=4, Dv=5, *, seed=0, dtype=torch.float32, denominator=True, initial=True):
    """Well-conditioned random inputs: keys unit-norm / sqrt(S) so (I - K B K^T) is contractive."""
    g = torch.Generator().manual_seed(seed)

    def keys():
        k = torch.randn(B, T, S, H, Dk, generator=g, dtype=torch.float64)
        return (torch.nn.functional.normalize(k, dim=-1) / S**0.5).to(dtype)

    inputs = dict(
        q=torch.randn(B, T, S, H, Dk, generator=g, dtype=torch.float64).to(dtype),
        k=keys(),
        v=torch.randn(B, T, S, H, Dv, generator=g, dtype=torch.float64).to(dtype),
        beta=(0.05 + 0.9 * torch.rand(B, T, S, H, generator=g, dtype=torch.float64)).to(dtype),
        gamma=(0.5 + 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)).to(dtype),
    )
    if denominator:
        inputs["q_den"] = torch.rand(B, T, S, H, Dk, generator=g, dtype=torch.float64).to(dtype)
        inputs["k_den"] = keys().abs()
    if initial:
        S0 = torch.randn(B, H, Dv, Dk, generator=g, dtype=torch.float64).to(dtype)
        z0 = torch.rand(B, H, Dk, generator=g, dtype=torch.float64).to(dtype) if denominator else None
        inputs["initial_state"] = GDNState(S=S0, z=z0)
    return inputs


def call(fn, inputs, chunk_lengths):
    positional = [inputs[name] for name in ("q", "k", "v", "beta", "gamma")]
    keywords = {name: inputs[name] for name in ("q_den", "k_den", "initial_state") if name in inputs}
    return fn(*positional, chunk_lengths, **keywords)


def assert_close(actual, expected, rtol=1e-5):
    """Elementwise rtol, with an absolute floor of rtol * max|expected| for near-zero entries."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30))


def assert_outputs_close(actual, expected, rtol=1e-5):
    assert_close(actual.numerator, expected.numerator, rtol)
    assert_close(actual.state.S, expected.state.S, rtol)
    assert (actual.denominator is None) == (expected.denominator is None)
    assert (actual.state.z is None) == (expected.state.z is None)
    if expected.denominator is not None:
        assert_close(actual.denominator, expected.denominator, rtol)
        assert_close(actual.state.z, expected.state.z, rtol)


def slice_frames(inputs, start, stop, initial_state):
    """The inputs of frames [start, stop), with another initial state."""
    out = {name: inputs[name][:, start:stop] for name in ("q", "k", "v", "beta", "gamma", "q_den", "k_den")
           if name in inputs}
    if initial_state is not None:
        out["initial_state"] = initial_state
    return out


# ----------------------------------------------------------------------------------------
# batched PyTorch form == literal reference
# ----------------------------------------------------------------------------------------

SIZES = [
    # (B, T, S, H, Dk, Dv, chunk_lengths)
    (2, 7, 3, 3, 4, 5, [4, 3]),
    (2, 7, 5, 3, 6, 3, [1, 3, 3]),
    (2, 5, 3, 3, 4, 5, [1] * 5),
    (1, 7, 5, 3, 5, 4, [7]),
]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"T{s[1]}S{s[2]}Dk{s[4]}Dv{s[5]}-{s[6]}")
@pytest.mark.parametrize("denominator", [True, False], ids=["den", "noden"])
@pytest.mark.parametrize("initial", [True, False], ids=["init", "zero"])
def test_torch_matches_naive(size, denominator, initial):
    B, T, S, H, Dk, Dv, chunks = size
    inputs = make_inputs(B, T, S, H, Dk, Dv, seed=T * S, denominator=denominator, initial=initial)
    expected = call(framewise_gdn_naive, inputs, chunks)
    actual = call(framewise_gdn_torch, inputs, chunks)
    assert actual.numerator.shape == (B, T, S, H, Dv) and actual.numerator.dtype == torch.float32
    assert actual.state.S.shape == (B, H, Dv, Dk)
    if denominator:
        assert actual.denominator.shape == (B, T, S, H) and actual.state.z.shape == (B, H, Dk)
    else:
        assert actual.denominator is None and actual.state.z is None
    assert_outputs_close(actual, expected)


@pytest.mark.parametrize("chunks", [[3, 4], [2, 2, 3]])
def test_torch_matches_naive_with_gamma_one(chunks):
    inputs = make_inputs(T=7, seed=3)
    inputs["gamma"] = torch.ones_like(inputs["gamma"])
    assert_outputs_close(call(framewise_gdn_torch, inputs, chunks), call(framewise_gdn_naive, inputs, chunks))


def test_dispatch_on_cpu_is_the_torch_form():
    inputs = make_inputs(T=7, seed=1)
    a, b = call(framewise_gdn, inputs, [1, 3, 3]), call(framewise_gdn_torch, inputs, [1, 3, 3])
    assert torch.equal(a.numerator, b.numerator) and torch.equal(a.denominator, b.denominator)
    assert torch.equal(a.state.S, b.state.S) and torch.equal(a.state.z, b.state.z)


def test_gradients_flow_through_torch_form():
    inputs = make_inputs(B=1, T=4, S=2, H=1, Dk=3, Dv=2, dtype=torch.float64, seed=5)
    names = ["q", "k", "v", "beta", "gamma", "q_den", "k_den"]

    def f(*tensors):
        x = dict(zip(names, tensors), initial_state=inputs["initial_state"])
        out = call(framewise_gdn_torch, x, [1, 3])
        return out.numerator, out.denominator, out.state.S, out.state.z

    tensors = tuple(inputs[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, tensors)


# ----------------------------------------------------------------------------------------
# invariants
# ----------------------------------------------------------------------------------------

PERTURBED = ["q", "k", "v", "beta", "gamma", "q_den", "k_den"]


@pytest.mark.parametrize("chunks", [[4, 3], [1, 3, 3], [2, 1, 2, 2]])
def test_chunk_causality(chunks):
    """Changing any input of chunk c+1 onwards leaves the outputs of chunks <= c bit-unchanged."""
    inputs = make_inputs(T=7, seed=2)
    reference = call(framewise_gdn_torch, inputs, chunks)
    starts = [sum(chunks[:c]) for c in range(1, len(chunks))]
    for start in starts:
        for name in PERTURBED:
            changed = dict(inputs)
            x = inputs[name].clone()
            x[:, start:] = x[:, start:] * 0.5 + 0.25
            changed[name] = x
            out = call(framewise_gdn_torch, changed, chunks)
            assert torch.equal(out.numerator[:, :start], reference.numerator[:, :start]), (name, start)
            assert torch.equal(out.denominator[:, :start], reference.denominator[:, :start]), (name, start)
            later_changed = (not torch.equal(out.numerator[:, start:], reference.numerator[:, start:])
                             or not torch.equal(out.denominator[:, start:], reference.denominator[:, start:]))
            assert later_changed, (name, start)


@pytest.mark.parametrize("calls", [[[1], [3], [3]], [[1, 3], [3]], [[1], [3, 3]]], ids=str)
@pytest.mark.parametrize("initial", [True, False], ids=["init", "zero"])
def test_streaming_equals_full(calls, initial):
    """Chunk by chunk, carrying the returned state, reproduces one call over all frames."""
    inputs = make_inputs(T=7, seed=4, initial=initial)
    full = call(framewise_gdn_torch, inputs, [length for lengths in calls for length in lengths])
    state, start, numerators, denominators = inputs.get("initial_state"), 0, [], []
    for lengths in calls:
        stop = start + sum(lengths)
        out = call(framewise_gdn_torch, slice_frames(inputs, start, stop, state), lengths)
        assert out.state.S.shape == full.state.S.shape and out.state.z.shape == full.state.z.shape
        numerators.append(out.numerator)
        denominators.append(out.denominator)
        state, start = out.state, stop
    assert_close(torch.cat(numerators, dim=1), full.numerator)
    assert_close(torch.cat(denominators, dim=1), full.denominator)
    assert_close(state.S, full.state.S)
    assert_close(state.z, full.state.z)


def _causal_recurrence(inputs):
    """Forward-only frame-wise delta rule, written out independently of the modules."""
    q, k, v, beta, gamma = (inputs[n].double() for n in ("q", "k", "v", "beta", "gamma"))
    B, T, S, H, Dk = q.shape
    state = inputs["initial_state"].S.double().clone()           # [B, H, Dv, Dk]
    out = []
    for t in range(T):
        K = k[:, t].permute(0, 2, 3, 1)                          # [B, H, Dk, S]
        V = v[:, t].permute(0, 2, 3, 1)                          # [B, H, Dv, S]
        Bt = torch.diag_embed(beta[:, t].permute(0, 2, 1))       # [B, H, S, S]
        eye = torch.eye(Dk, dtype=torch.float64)
        state = gamma[:, t, :, None, None] * state @ (eye - K @ Bt @ K.transpose(-1, -2)) + V @ Bt @ K.transpose(-1, -2)
        out.append(torch.einsum("bhvk,bshk->bshv", state, q[:, t]))
    return torch.stack(out, dim=1).float(), state.float()


def test_single_frame_chunks_are_purely_causal():
    inputs = make_inputs(T=6, seed=6)
    expected, final = _causal_recurrence(inputs)
    out = call(framewise_gdn_torch, inputs, [1] * 6)
    assert_close(out.numerator, expected)
    assert_close(out.state.S, final)


def test_backward_scan_is_exclusive_by_hand():
    """T = 2 in one chunk, gamma = 1, no initial state: frame 0 reads V0 B0 K0^T + V1 B1 K1^T,
    frame 1 reads only its forward state (its backward state is zero)."""
    inputs = make_inputs(B=1, T=2, S=3, H=1, Dk=4, Dv=2, seed=7, initial=False, denominator=False)
    inputs["gamma"] = torch.ones_like(inputs["gamma"])
    q, k, v, beta = (inputs[n][0, :, :, 0] for n in ("q", "k", "v", "beta"))   # [T, S, D]

    def outer(t):
        return v[t].T @ torch.diag(beta[t]) @ k[t]                 # V_t B_t K_t^T: [Dv, Dk]

    S1 = outer(0) @ (torch.eye(4) - k[1].T @ torch.diag(beta[1]) @ k[1]) + outer(1)  # forward state of frame 1
    out = call(framewise_gdn_torch, inputs, [2]).numerator[0, :, :, 0]             # [T, S, Dv]
    assert_close(out[0], q[0] @ (outer(0) + outer(1)).T)
    assert_close(out[1], q[1] @ S1.T)


def test_one_chunk_frame_zero_sees_the_last_frame():
    """With one chunk over everything, frame 0 reads frame T-1; with two, it does not."""
    inputs = make_inputs(T=7, seed=8)
    whole = call(framewise_gdn_torch, inputs, [7])
    split = call(framewise_gdn_torch, inputs, [4, 3])
    for name, field in (("v", "numerator"), ("k_den", "denominator")):
        changed = dict(inputs)
        changed[name] = inputs[name].clone()
        changed[name][:, 6] += 1.0
        whole2, split2 = call(framewise_gdn_torch, changed, [7]), call(framewise_gdn_torch, changed, [4, 3])
        assert not torch.equal(getattr(whole2, field)[:, 0], getattr(whole, field)[:, 0]), name
        assert torch.equal(getattr(split2, field)[:, :4], getattr(split, field)[:, :4]), name


def test_backward_scan_restarts_in_every_chunk():
    """The last frame of each chunk reads only its forward state, whatever the chunk length."""
    inputs = make_inputs(T=7, seed=9)
    causal, _ = _causal_recurrence(inputs)
    out = call(framewise_gdn_torch, inputs, [2, 4, 1])
    for end in (1, 5, 6):
        assert_close(out.numerator[:, end], causal[:, end])
    assert not torch.allclose(out.numerator[:, 2], causal[:, 2])


def test_beta_zero_only_decays_the_initial_state():
    inputs = make_inputs(T=5, seed=10)
    inputs["beta"] = torch.zeros_like(inputs["beta"])
    out = call(framewise_gdn_torch, inputs, [2, 3])
    decay = torch.cumprod(inputs["gamma"], dim=1)                  # [B, T, H]
    S0, z0 = inputs["initial_state"].S, inputs["initial_state"].z
    expected_num = decay[:, :, None, :, None] * torch.einsum("bhvk,btshk->btshv", S0, inputs["q"])
    expected_den = decay[:, :, None, :] * torch.einsum("bhk,btshk->btsh", z0, inputs["q_den"])
    assert_close(out.numerator, expected_num)
    assert_close(out.denominator, expected_den)
    assert_close(out.state.S, decay[:, -1, :, None, None] * S0)


def test_gamma_one_beta_zero_is_a_fixed_state():
    inputs = make_inputs(T=5, seed=11)
    inputs["beta"] = torch.zeros_like(inputs["beta"])
    inputs["gamma"] = torch.ones_like(inputs["gamma"])
    out = call(framewise_gdn_torch, inputs, [5])
    assert torch.equal(out.state.S, inputs["initial_state"].S)
    assert torch.equal(out.state.z, inputs["initial_state"].z)
    assert_close(out.numerator, torch.einsum("bhvk,btshk->btshv", inputs["initial_state"].S, inputs["q"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_upcast(dtype):
    half = make_inputs(T=5, seed=12, dtype=dtype)
    upcast = {n: (GDNState(x.S.float(), x.z.float()) if isinstance(x, GDNState) else x.float())
              for n, x in half.items()}
    a, b = call(framewise_gdn_torch, half, [2, 3]), call(framewise_gdn_torch, upcast, [2, 3])
    assert a.numerator.dtype == a.denominator.dtype == a.state.S.dtype == a.state.z.dtype == torch.float32
    assert torch.equal(a.numerator, b.numerator) and torch.equal(a.denominator, b.denominator)
    assert torch.equal(a.state.S, b.state.S)
    assert call(framewise_gdn_naive, half, [2, 3]).numerator.dtype == torch.float32


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------


def _bad(**changes):
    inputs = make_inputs(T=5, seed=13)
    chunks = changes.pop("chunk_lengths", [2, 3])
    inputs.update(changes)
    return inputs, chunks


BAD_CALLS = {
    "k shape": (lambda: _bad(k=torch.zeros(2, 5, 3, 3, 6)),
                r"k must have q's shape.*\(2, 5, 3, 3, 4\).*\(2, 5, 3, 3, 6\)"),
    "q rank": (lambda: _bad(q=torch.zeros(2, 5, 3, 4)), r"q must be \[B, T, S, H, Dk\].*\(2, 5, 3, 4\)"),
    "v frames": (lambda: _bad(v=torch.zeros(2, 4, 3, 3, 5)), r"v must be.*\(2, 4, 3, 3, 5\)"),
    "beta shape": (lambda: _bad(beta=torch.zeros(2, 5, 3)), r"beta must be.*\(2, 5, 3, 3\).*\(2, 5, 3\)"),
    "gamma shape": (lambda: _bad(gamma=torch.zeros(2, 5, 3, 3)), r"gamma must be.*\(2, 5, 3\).*\(2, 5, 3, 3\)"),
    "sum": (lambda: _bad(chunk_lengths=[2, 2]), r"chunk_lengths \[2, 2\] sum to 4.*T = 5"),
    "zero length": (lambda: _bad(chunk_lengths=[2, 0, 3]), r"chunk_lengths\[1\] = 0 is not positive"),
    "negative": (lambda: _bad(chunk_lengths=[6, -1]), r"chunk_lengths\[1\] = -1 is not positive"),
    "empty": (lambda: _bad(chunk_lengths=[]), r"chunk_lengths must not be empty"),
    "float length": (lambda: _bad(chunk_lengths=[2.0, 3]), r"chunk_lengths\[0\] = 2.0 is not an int"),
    "q_den alone": (lambda: _bad(k_den=None), r"q_den and k_den go together.*k_den=None"),
    "q_den shape": (lambda: _bad(q_den=torch.zeros(2, 5, 3, 3, 5)), r"q_den must have q's shape.*\(2, 5, 3, 3, 5\)"),
    "state S": (lambda: _bad(initial_state=GDNState(torch.zeros(2, 3, 4, 5))),
                r"initial_state.S must be \[B, H, Dv, Dk\] = \(2, 3, 5, 4\), got \(2, 3, 4, 5\)"),
    "state z": (lambda: _bad(initial_state=GDNState(torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 5))),
                r"initial_state.z must be.*\(2, 3, 4\).*\(2, 3, 5\)"),
    "integer": (lambda: _bad(v=torch.zeros(2, 5, 3, 3, 5, dtype=torch.int64)), r"v must be a floating-point"),
}


@pytest.mark.parametrize("fn", [framewise_gdn_torch, framewise_gdn_naive, framewise_gdn], ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", list(BAD_CALLS), ids=str)
def test_bad_arguments_raise_value_errors(fn, case):
    build, message = BAD_CALLS[case]
    inputs, chunks = build()
    with pytest.raises(ValueError, match=message):
        call(fn, inputs, chunks)


# ----------------------------------------------------------------------------------------
# short_conv_frames, rms_norm
# ----------------------------------------------------------------------------------------


def _conv_reference(x, weight):
    """The causal depthwise conv of the whole sequence via F.conv1d on [B*S, C, T]."""
    B, T, S, C = x.shape
    W = weight.shape[1]
    seqs = x.permute(0, 2, 3, 1).reshape(B * S, C, T)
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(seqs, (W - 1, 0)), weight[:, None, :], groups=C)
    return y.reshape(B, S, C, T).permute(0, 3, 1, 2)


@pytest.mark.parametrize("fn", [short_conv_frames, short_conv_frames_torch], ids=lambda f: f.__name__)
def test_short_conv_streaming_equals_full(fn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 5, generator=g)
    weight = torch.randn(5, 4, generator=g)
    full, full_cache = fn(x, weight)
    assert_close(full, _conv_reference(x, weight))
    assert torch.equal(full_cache, x[:, -3:])
    cache, pieces, start = None, [], 0
    for length in (1, 2, 3, 1):                                   # some calls shorter than W - 1
        y, cache = fn(x[:, start:start + length], weight, cache)
        assert cache.shape == (2, 3, 3, 5)
        pieces.append(y)
        start += length
    assert_close(torch.cat(pieces, dim=1), full)
    assert torch.equal(cache, full_cache)


def test_short_conv_identity_init_and_dtype():
    x = torch.randn(2, 5, 3, 4).to(torch.bfloat16)
    weight = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(4, 4)
    y, cache = short_conv_frames(x, weight, torch.randn(2, 3, 3, 4).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.equal(y, x)
    assert torch.equal(cache, x[:, -3:])


@pytest.mark.parametrize(
    "x, weight, cache, message",
    [
        (torch.zeros(2, 5, 4), torch.zeros(4, 4), None, r"x must be \[B, T, S, C\].*\(2, 5, 4\)"),
        (torch.zeros(2, 5, 3, 4), torch.zeros(5, 4), None, r"weight must be \[C, W\] = \[4, W >= 1\].*\(5, 4\)"),
        (torch.zeros(2, 5, 3, 4), torch.zeros(4, 4), torch.zeros(2, 4, 3, 4),
         r"cache must be.*\(2, 3, 3, 4\).*\(2, 4, 3, 4\)"),
    ],
)
def test_short_conv_bad_arguments(x, weight, cache, message):
    with pytest.raises(ValueError, match=message):
        short_conv_frames(x, weight, cache)


@pytest.mark.parametrize("fn", [rms_norm, rms_norm_torch], ids=lambda f: f.__name__)
def test_rms_norm_matches_formula(fn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=g) * 3
    weight = torch.rand(8, generator=g) + 0.5
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight
    assert_close(fn(x, weight, 1e-6), expected)
    assert_close(fn(x, None, 1e-6), expected / weight)
    y = fn(x.to(torch.bfloat16), weight, 1e-6)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match=r"weight must be \[C\] = \[8\].*\(7,\)"):
        fn(x, torch.ones(7), 1e-6)


# ----------------------------------------------------------------------------------------
# one module owns triton / fla
# ----------------------------------------------------------------------------------------


def test_importing_ops_imports_neither_triton_nor_fla():
    code = ("import sys, world_model.ops; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('triton', 'fla')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_only_the_dispatcher_and_the_kernel_import_triton_or_fla():
    allowed = {REPO / "world_model/ops/dispatch.py", REPO / "world_model/ops/framewise_gdn/triton_kernel.py"}
    offenders = []
    for folder in ("world_model", "sanawm_gym", "policies", "examples"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                if any(name.split(".")[0] in ("triton", "fla") for name in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"only world_model/ops/dispatch.py may import triton / fla: {offenders}"
