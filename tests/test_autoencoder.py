"""The causal video autoencoder: shapes, causality of encode and decode, streaming equals the
full pass, input checks, latent statistics, losses, and the shipped weights."""

from __future__ import annotations

import pytest
import torch

from world_model.autoencoder import WEIGHTS_DIR, Autoencoder, AutoencoderConfig, StreamCache, load_autoencoder
from world_model.autoencoder.losses import LossWeights, psnr, reconstruction_loss, ssim
from world_model.checkpoint import read_pretrained_config

TINY = AutoencoderConfig(latent_channels=4, frame_widths=(8, 12), latent_widths=(16, 16),
                         encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 2))
K = TINY.temporal_stride


@pytest.fixture(scope="module")
def ae() -> Autoencoder:
    """A tiny autoencoder with every weight random: at initialisation the residual branches
    are zero, which would make the causality tests vacuous."""
    torch.manual_seed(0)
    model = Autoencoder(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    return model


def _video(frames: int, h: int = 16, w: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, frames, 3, h, w, generator=g) * 2 - 1


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("n", [0, 1, 3])
def test_shapes(ae, n):
    video = _video(1 + K * n)
    with torch.no_grad():
        z = ae.encode(video)
        assert z.shape == (2, 1 + n, TINY.latent_channels, 2, 3)
        assert z.shape[1:] == TINY.latent_shape(1 + K * n, 16, 24)
        assert ae.decode(z).shape == video.shape


def test_default_config_is_small():
    cfg = AutoencoderConfig()
    assert cfg.spatial_stride == 8 and cfg.temporal_stride == 4
    assert Autoencoder(cfg).num_parameters() <= 8_000_000


# ------------------------------------------------------------------------------ causality
@pytest.mark.parametrize("group", [1, 2])
def test_encode_is_causal(ae, group):
    video = _video(1 + K * 3)
    changed = video.clone()
    changed[:, 1 + K * (group - 1):] += 0.3  # frames of groups >= group
    with torch.no_grad():
        z, z2 = ae.encode(video), ae.encode(changed)
    assert torch.equal(z[:, :group], z2[:, :group])
    assert not torch.allclose(z[:, group], z2[:, group])


def test_first_latent_is_the_first_frame_alone(ae):
    video = _video(1 + K * 2)
    changed = video.clone()
    changed[:, 1:] = -changed[:, 1:]
    with torch.no_grad():
        assert torch.equal(ae.encode(video)[:, 0], ae.encode(changed)[:, 0])
        assert torch.equal(ae.encode(video[:, :1])[:, 0], ae.encode(video)[:, 0])


@pytest.mark.parametrize("latent", [1, 2])
def test_decode_is_causal(ae, latent):
    with torch.no_grad():
        z = ae.encode(_video(1 + K * 3))
        changed = z.clone()
        changed[:, latent:] += 0.5
        x, x2 = ae.decode(z), ae.decode(changed)
    first = 1 + K * (latent - 1)  # first frame of group `latent`
    assert torch.equal(x[:, :first], x2[:, :first])
    assert not torch.allclose(x[:, first:first + K], x2[:, first:first + K])


# ------------------------------------------------------------------------------ streaming
@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [2, 3], [1, 4]])
def test_streaming_encode_equals_full(ae, chunks):
    video = _video(1 + K * (sum(chunks) - 1))
    with torch.no_grad():
        full = ae.encode(video)
        parts, cache, start = [], None, 0
        for i, latents in enumerate(chunks):
            frames = 1 + K * (latents - 1) if i == 0 else K * latents
            z, cache = ae.encode_step(video[:, start:start + frames], cache)
            parts.append(z)
            start += frames
    assert isinstance(cache, StreamCache) and cache.latent_frames == sum(chunks)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [3, 2]])
def test_streaming_decode_equals_full(ae, chunks):
    with torch.no_grad():
        z = ae.encode(_video(1 + K * (sum(chunks) - 1)))
        full = ae.decode(z)
        parts, cache, start = [], None, 0
        for latents in chunks:
            x, cache = ae.decode_step(z[:, start:start + latents], cache)
            assert x.shape[1] == (1 + K * (latents - 1) if start == 0 else K * latents)
            parts.append(x)
            start += latents
    assert cache.latent_frames == sum(chunks)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_stream_cache_size_does_not_grow(ae):
    with torch.no_grad():
        z = ae.encode(_video(1 + K * 4))
        _, c1 = ae.decode_step(z[:, :1])
        _, c2 = ae.decode_step(z[:, 1:4], c1)
    assert [t.shape for t in c1.previous] == [t.shape for t in c2.previous]


# ------------------------------------------------------------------------------ input checks
@pytest.mark.parametrize("frames", [2, 4, 6])
def test_bad_frame_count(ae, frames):
    with pytest.raises(ValueError, match=r"1 \+ 4n frames \(1, 5, 9, \.\.\.\), got %d" % frames):
        ae.encode(_video(frames))


@pytest.mark.parametrize("hw", [(12, 16), (16, 20), (4, 16)])
def test_bad_frame_size(ae, hw):
    with pytest.raises(ValueError, match=rf"multiples of 8 .*got {hw[0]}x{hw[1]}"):
        ae.encode(_video(5, *hw))


def test_bad_inputs(ae):
    with pytest.raises(ValueError, match="3 channels"):
        ae.encode(torch.zeros(1, 5, 4, 16, 16))
    with pytest.raises(ValueError, match="got shape"):
        ae.encode(torch.zeros(5, 3, 16, 16))
    with torch.no_grad():
        _, cache = ae.encode_step(_video(1))
    with pytest.raises(ValueError, match=r"4m frames \(4, 8, \.\.\.\), got 5"):
        ae.encode_step(_video(5), cache)
    with pytest.raises(ValueError, match=r"latents must be \(B, T >= 1, 4, h, w\)"):
        ae.decode(torch.zeros(1, 2, 5, 2, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"latent_channels": 0}, "latent_channels must be >= 1"),
    ({"frame_widths": (8,)}, "frame_widths must have 2 entries"),
    ({"decoder_blocks": (1, 1, -1, 1)}, "decoder_blocks entries must be integers >= 0"),
    ({"decoder_width_multiplier": 0}, "decoder_width_multiplier must be >= 1"),
    ({"latent_mean": (0.0,) * 3}, "latent_mean must have latent_channels=128 entries"),
    ({"latent_std": (0.0,) * 128}, "latent_std entries must be > 0"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown AutoencoderConfig field"):
        AutoencoderConfig.from_json({"latent_channel": 4})


# ------------------------------------------------------------------------------ statistics
def test_latent_statistics_normalise(ae):
    video = _video(9)
    model = Autoencoder(TINY).eval()
    model.load_state_dict(ae.state_dict())
    with torch.no_grad():
        raw = model.encode(video)  # no statistics yet: raw latents
        mean, std = raw.mean(dim=(0, 1, 3, 4)), raw.std(dim=(0, 1, 3, 4))
        model.set_latent_stats(mean, std)
        z = model.encode(video)
        torch.testing.assert_close(z.mean(dim=(0, 1, 3, 4)), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std(dim=(0, 1, 3, 4)), torch.ones(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode(z), ae.decode(raw), atol=5e-4, rtol=1e-4)
    assert model.config.latent_std == tuple(float(s) for s in std)
    rebuilt = Autoencoder(AutoencoderConfig.from_json(model.config.to_json()))
    assert torch.equal(rebuilt.latent_mean, model.latent_mean)


def test_shared_latent_scale_keeps_the_channels_relative_energy(ae):
    """``latent_scale="shared"``: one standard deviation for all channels, the pooled one of
    the mean-removed latents; the normalised latents have unit variance overall while each
    channel keeps its share."""
    from world_model.train.stages.autoencoder import AutoencoderStageConfig, latent_statistics

    batches = [{"video": _video(9, seed=seed)} for seed in range(2)]
    with torch.no_grad():
        mean_c, std_c = latent_statistics(ae, batches, torch.device("cpu"))
        mean_s, std_s = latent_statistics(ae, batches, torch.device("cpu"), "shared")
        raw = torch.cat([ae.encoder(b["video"], None)[0] for b in batches])  # (B, T, L, h, w)
    torch.testing.assert_close(mean_s, mean_c)
    pooled = (raw - mean_c.view(-1, 1, 1)).square().mean().sqrt()
    torch.testing.assert_close(std_s, pooled.expand(4), rtol=1e-4, atol=0)
    assert std_c.max() / std_c.min() > 1.05  # the channels differ: the two scales are not the same
    model = Autoencoder(TINY).eval()
    model.load_state_dict(ae.state_dict())
    model.set_latent_stats(mean_s, std_s)
    with torch.no_grad():
        z = torch.cat([model.encode(b["video"]) for b in batches])
    torch.testing.assert_close(z.square().mean(), torch.tensor(1.0), rtol=1e-4, atol=0)
    torch.testing.assert_close(z.std(dim=(0, 1, 3, 4), correction=0), std_c / std_s, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="latent_scale must be one of channel, shared"):
        AutoencoderStageConfig(latent_scale="per-frame")


# ------------------------------------------------------------------------------ losses
def test_metrics():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = x + 0.02  # an error of 0.01 in [0, 1]: 40 dB
    torch.testing.assert_close(psnr(noisy, x), torch.full((3,), 40.0), atol=1e-3, rtol=0)
    assert (ssim(-x, x) < 0.5).all()


def test_loss_logs_every_term_and_is_finite_under_bf16():
    x = torch.rand(2, 5, 3, 16, 16, requires_grad=True)
    y = torch.rand(2, 5, 3, 16, 16)
    weights = LossWeights(l1=1, l2=1, ssim=0.2, gradient=0.5, latent_l2=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = reconstruction_loss(x * 2 - 1, y * 2 - 1, torch.randn(2, 2, 4, 2, 2), weights)
    assert torch.isfinite(loss) and set(logs) == {"l1", "l2", "ssim", "gradient", "latent_l2", "psnr"}
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="loss weight l1 must be >= 0, got -1"):
        LossWeights(l1=-1)


# ------------------------------------------------------------------------------ shipped weights
@pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").exists(), reason="no shipped autoencoder weights")
def test_shipped_weights():
    meta = read_pretrained_config(WEIGHTS_DIR)
    assert meta["weights"]["bytes"] <= 12 * 2**20
    model = load_autoencoder()
    cfg = model.config
    assert cfg.latent_mean is not None and cfg.latent_std is not None
    assert cfg.latent_channels == 128 and len(set(cfg.latent_std)) == 1  # one shared latent scale
    assert cfg.spatial_stride == 8 and cfg.temporal_stride == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.num_parameters() <= 6_500_000
    with torch.no_grad():
        x = model.decode(model.encode(torch.zeros(1, 5, 3, 64, 64)))
    assert x.shape == (1, 5, 3, 64, 64) and torch.isfinite(x).all()


def test_shipped_autoencoder_reconstructs_above_the_former_32_channel_one(tmp_path, monkeypatch):
    """The shipped 128-channel autoencoder (30.0 dB on 32 held-out clips, the 30 dB target)
    reconstructs fresh held-out clips well above the former 32-channel one, which is kept
    in ``checkpoints/world-model-32ch`` and still loads into today's model code: measured
    30.4 dB vs 27.3 dB on these 4 clips."""
    from pathlib import Path

    from sanawm_gym.dataset import write_dataset
    from world_model.data import PosedVideoDataset
    from world_model.scoring import evaluate_reconstruction

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    former = load_autoencoder(Path(__file__).resolve().parents[1] / "checkpoints" / "world-model-32ch" / "autoencoder")
    assert former.config.latent_channels == 32 and former.config.spatial_stride == 8
    data = PosedVideoDataset(write_dataset(tmp_path / "held", 4, 9, height=64, width=64, seed=7000, progress=False), 9,
                             random_crop=False)
    shipped = evaluate_reconstruction(load_autoencoder(), data)["psnr"]
    narrow = evaluate_reconstruction(former, data)["psnr"]
    assert shipped >= 29.5 and shipped >= narrow + 2.0, (shipped, narrow)


def test_dc_ae_shortcuts_move_channels_without_parameters():
    from world_model.autoencoder.model import shortcut

    x = torch.randn(2, 8, 6, 4)
    assert torch.equal(shortcut(x, 32, 2), torch.nn.functional.pixel_unshuffle(x, 2))  # space-to-channel
    assert torch.allclose(shortcut(shortcut(x, 16), 8), x)  # repeat, then average back
    up = shortcut(x, 4, -2)  # repeat to 16 channels, then channel-to-space
    assert up.shape == (2, 4, 12, 8)
    assert torch.allclose(shortcut(up, 16, 2).unflatten(1, (4, 4)).mean(2), x.unflatten(1, (4, 2)).mean(2))
    assert shortcut(x, 3) is None and shortcut(x, 5, 2) is None  # counts that do not divide: no shortcut

