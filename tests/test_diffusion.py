"""Flow-matching schedules, the chunk noise mixture, the loss and the few-step sampler."""

from __future__ import annotations

import pytest
import torch

from world_model.diffusion import (
    FlowMatchingConfig,
    flow_matching_loss,
    sample_chunk,
    sample_chunk_times,
    sampling_times,
    shift_time,
)


def test_shift_time():
    t = torch.linspace(0, 1, 11)
    assert torch.equal(shift_time(t, 1.0), t)
    s = shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and (s[1:-1] > t[1:-1]).all() and (s.diff() > 0).all()
    with pytest.raises(ValueError, match="shift"):
        shift_time(t, 0.0)


def test_sampling_times():
    times = sampling_times(4, shift=3.0)
    assert times.shape == (5,) and times[0] == 1 and times[-1] == 0 and (times.diff() < 0).all()
    with pytest.raises(ValueError, match="steps"):
        sampling_times(0)


@pytest.mark.parametrize("pattern", range(4))
def test_chunk_time_patterns(pattern):
    weights = [0.0] * 4
    weights[pattern] = 1.0
    cfg = FlowMatchingConfig(pattern_weights=tuple(weights), clean_first_frame=0.0)
    g = torch.Generator().manual_seed(0)
    chunks = [1, 3, 3, 2]
    t, pat = sample_chunk_times(cfg, 64, chunks, g)
    assert t.shape == (64, 9) and (pat == pattern).all()
    per_chunk = torch.stack([t[:, 0], t[:, 1], t[:, 4], t[:, 7]], 1)
    assert torch.equal(t[:, 1:4], per_chunk[:, 1:2].expand(64, 3))  # constant within a chunk
    if pattern == 0:
        assert torch.equal(per_chunk, per_chunk[:, :1].expand(64, 4))
    elif pattern == 1:
        assert (per_chunk.diff(dim=1) >= 0).all()
    elif pattern == 2:
        assert (per_chunk.diff(dim=1) < 0).any()
    else:
        assert (per_chunk[:, :3] == 0).all() and (per_chunk[:, 3] > 0).all()
    assert ((t >= 0) & (t <= 1)).all()


def test_clean_first_frame_probability():
    g = torch.Generator().manual_seed(0)
    t, _ = sample_chunk_times(FlowMatchingConfig(clean_first_frame=0.9), 2000, [1, 3], g)
    assert 0.87 < (t[:, 0] == 0).float().mean() < 0.93


class Oracle(torch.nn.Module):
    """Predicts the exact velocity towards a known clean target (x_t - x_0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, camera, chunk_lengths, state=None, commit=True, compiled=False):
        tb = t[:, :, None, None, None].clamp_min(1e-6)
        return (x - self.x0) / tb, state


def test_euler_sampler_reaches_the_target_with_an_exact_velocity():
    x0 = torch.randn(2, 1, 3, 4, 4)
    out, _ = sample_chunk(Oracle(x0), torch.randn_like(x0), None, None, sampling_times(4, 3.0))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_loss_excludes_clean_frames_and_matches_the_velocity_target():
    x0 = torch.randn(4, 4, 3, 4, 4)

    class Zero(torch.nn.Module):
        def forward(self, x, t, camera, chunk_lengths, state=None, commit=True):
            self.t, self.commit = t, commit
            return torch.zeros_like(x), None

    model = Zero()
    g = torch.Generator().manual_seed(0)
    loss, logs = flow_matching_loss(model, x0, None, [1, 3], FlowMatchingConfig(clean_first_frame=1.0), g)
    # With a zero prediction the loss is E|eps - x0|^2 over the noisy frames only.
    g = torch.Generator().manual_seed(0)
    t, _ = sample_chunk_times(FlowMatchingConfig(clean_first_frame=1.0), 4, [1, 3], g)
    noise = torch.randn(x0.shape, generator=g)
    expected = (noise - x0)[:, 1:].square().mean()
    assert torch.equal(model.t, t)
    assert model.commit is False  # training drops the state: the pass need not assemble it
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "loss" in logs and "t_mean" in logs
