"""The Triton framewise_gdn kernel, run by Triton's interpreter on CPU tensors.

``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported (it decides, when
``@triton.jit`` decorates a function, whether it is compiled or interpreted, for
``triton.language``'s own helpers too), and an interpreted triton must not leak into the
rest of the test process (on a GPU machine it would break the real kernels). So under a
plain ``pytest`` this file holds one test, which runs this file again in a fresh process
with ``TRITON_INTERPRET=1``; there, and only there, the kernel tests of :class:`TestKernel`
are collected. Sizes are tiny: the interpreter runs every program in Python.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_ops_gdn import assert_outputs_close, call, make_inputs, slice_frames
from world_model.ops import framewise_gdn_naive, framewise_gdn_torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED:
    pytest.importorskip("triton")
    from world_model.ops.framewise_gdn import triton_kernel


def test_kernel_under_the_interpreter_in_a_fresh_process():
    """Runs :class:`TestKernel` in a child process with TRITON_INTERPRET=1 (see the module doc)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}"


test_kernel_under_the_interpreter_in_a_fresh_process.__test__ = not INTERPRETED


SIZES = [
    # (B, T, S, H, Dk, Dv, chunk_lengths)
    (1, 5, 4, 2, 8, 8, [1, 2, 2]),
    (2, 5, 4, 2, 16, 16, [2, 3]),
    (2, 5, 4, 2, 8, 16, [1] * 5),          # no backward launch
    (1, 5, 3, 2, 5, 6, [2, 3]),            # not powers of two: masked blocks
    (1, 3, 40, 1, 72, 70, [1, 2]),         # Dk > 64: two token tiles, three Dv tiles
]


class TestKernel:
    """Kernel == batched PyTorch form / reference: numerator, denominator and final state."""

    __test__ = INTERPRETED      # collected only in the TRITON_INTERPRET=1 process

    @pytest.mark.parametrize("size", SIZES, ids=lambda s: f"B{s[0]}S{s[2]}Dk{s[4]}Dv{s[5]}-{s[6]}")
    @pytest.mark.parametrize("initial", [True, False], ids=["init", "zero"])
    def test_matches_torch_form(self, size, initial):
        B, T, S, H, Dk, Dv, chunks = size
        inputs = make_inputs(B, T, S, H, Dk, Dv, seed=S + Dk, initial=initial)
        actual = call(triton_kernel.framewise_gdn_triton, inputs, chunks)
        assert actual.numerator.shape == (B, T, S, H, Dv) and actual.denominator.shape == (B, T, S, H)
        assert actual.state.S.shape == (B, H, Dv, Dk) and actual.state.z.shape == (B, H, Dk)
        assert_outputs_close(actual, call(framewise_gdn_torch, inputs, chunks))

    def test_matches_naive_without_denominator(self):
        inputs = make_inputs(2, 5, 4, 2, 8, 8, seed=1, denominator=False)
        actual = call(triton_kernel.framewise_gdn_triton, inputs, [3, 2])
        assert actual.denominator is None and actual.state.z is None
        assert_outputs_close(actual, call(framewise_gdn_naive, inputs, [3, 2]))

    def test_streaming_equals_full(self):
        inputs = make_inputs(1, 5, 4, 2, 8, 8, seed=2)
        kernel = triton_kernel.framewise_gdn_triton
        full = call(kernel, inputs, [1, 2, 2])
        first = call(kernel, slice_frames(inputs, 0, 3, inputs["initial_state"]), [1, 2])
        second = call(kernel, slice_frames(inputs, 3, 5, first.state), [2])
        numerator = torch.cat([first.numerator, second.numerator], dim=1)
        torch.testing.assert_close(numerator, full.numerator, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(second.state.S, full.state.S, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(second.state.z, full.state.z, rtol=1e-5, atol=1e-6)

    def test_upcasts_bf16(self):
        inputs = make_inputs(1, 5, 4, 2, 8, 8, seed=3, dtype=torch.bfloat16)
        actual = call(triton_kernel.framewise_gdn_triton, inputs, [2, 3])
        assert actual.numerator.dtype == torch.float32
        assert_outputs_close(actual, call(framewise_gdn_torch, inputs, [2, 3]))

    def test_rejects_what_it_cannot_run(self):
        with pytest.raises(ValueError, match=r"Dk = 130 > 128 \(S = 4, Dv = 8\)"):
            triton_kernel.check_supported(4, 130, 8, torch.float32)
        assert not triton_kernel.is_supported(4, 130, 8, torch.float32)
        assert triton_kernel.is_supported(880, 128, 112, torch.float32)
        inputs = make_inputs(1, 3, 4, 1, 8, 8, seed=4, dtype=torch.float64)
        with pytest.raises(ValueError, match=r"computes in float32, got torch.float64"):
            call(triton_kernel.framewise_gdn_triton, inputs, [3])
        inputs = make_inputs(1, 3, 4, 1, 8, 8, seed=4)
        with pytest.raises(ValueError, match=r"chunk_lengths \[2\] sum to 2"):
            call(triton_kernel.framewise_gdn_triton, inputs, [2])
