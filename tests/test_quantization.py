"""Low-bit inference (world_model.quantization): the NVFP4 and INT8 emulation against
exactly computed vectors and against ModelOpt's own CPU code, the layer selection, and the
precision modes of the inference API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from world_model.model import WorldModelBackbone, WorldModelConfig
from world_model.quantization import (
    KEEP_FULL_PRECISION,
    QuantizedLinear,
    int8_fake_quant,
    nvfp4_fake_quant,
    quantize_backbone,
    round_to_e2m1,
)

SMALL = WorldModelConfig(latent_channels=16, latent_height=4, latent_width=4, depth=2, width=32, num_heads=2,
                         softmax_every=2)


def test_e2m1_rounding_is_nearest_with_ties_to_the_even_mantissa():
    x = torch.tensor([0.0, 0.24, 0.25, 0.26, 0.5, 0.74, 0.75, 1.0, 1.25, 1.3, 1.75, 2.2, 2.5, 2.6, 3.5, 4.9, 5.0,
                      5.1, 6.0, 7.0, 100.0, -0.75, -3.5, -9.0])
    expected = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0,
                6.0, 6.0, 6.0, 6.0, -1.0, -4.0, -6.0]
    assert round_to_e2m1(x).tolist() == expected


def test_nvfp4_of_hand_computed_blocks():
    """Tensor amax 6: tensor scale 6 / (6 * 448) = 1/448. Block 0 (amax 6): block scale
    448, exact in E4M3, so the values are rounded to E2M1 as they are. Block 1 (amax 3):
    block scale 224 (exact), scale 0.5: the values are rounded in units of 0.5. Block 2 is
    all zeros (scale 1): zeros."""
    b0 = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25, -6.0, -5.1, -2.6, -1.3, 0.1, 0.3, 4.0, 0.0])
    b1 = torch.tensor([3.0, 2.5, 1.75, 1.25, 0.875, 0.625, 0.375, 0.125, -3.0, -1.0, 0.2, 0.3, 0.0, 1.5, 2.9, 0.6])
    b2 = torch.zeros(16)
    out = nvfp4_fake_quant(torch.stack([b0, b1, b2])[None])[0]
    assert out[0].tolist() == round_to_e2m1(b0).tolist()
    assert out[1].tolist() == (0.5 * round_to_e2m1(b1 / 0.5)).tolist()
    assert out[2].tolist() == [0.0] * 16
    assert nvfp4_fake_quant(torch.zeros(2, 32)).abs().sum() == 0
    with pytest.raises(ValueError, match="multiple of the NVFP4 block"):
        nvfp4_fake_quant(torch.ones(2, 24))


def test_int8_of_hand_computed_rows():
    w = torch.tensor([[127.0, 63.5, -1.49, 0.5, 1.5, 2.5], [0.0] * 6, [-2.54, 1.0, 0.01, 0.0, 0.0, 0.0]])
    out = int8_fake_quant(w)
    assert out[0].tolist() == [127.0, 64.0, -1.0, 0.0, 2.0, 2.0]  # scale 1: round half to even
    assert out[1].tolist() == [0.0] * 6
    torch.testing.assert_close(out[2], torch.tensor([-127.0, 50.0, 0.0, 0.0, 0.0, 0.0]) * (2.54 / 127))


@pytest.fixture(scope="module")
def modelopt():
    return pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt (the 'gpu' extra) not installed")


def test_nvfp4_equals_modelopts_quantize_dequantize(modelopt):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(8, 64, generator=g), torch.randn(3, 5, 32, generator=g) * 1e-3,
              torch.randn(4, 48, generator=g).pow(3)):  # heavy tails: many saturated and tiny blocks
        q, block_scale, tensor_scale = NVFP4QTensor.quantize(x.clone(), 16)
        theirs = q.dequantize(dtype=torch.float32, scale=block_scale, double_scale=tensor_scale, block_sizes={-1: 16})
        torch.testing.assert_close(nvfp4_fake_quant(x), theirs.reshape(x.shape), rtol=0, atol=0)


def test_int8_equals_modelopts_cpu_fake_quant(modelopt):
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(1))
    tq = TensorQuantizer(QuantizerAttributeConfig(num_bits=8, axis=0))
    tq.enable_calib()
    tq.disable_quant()
    tq(w)
    tq.load_calib_amax()
    tq.disable_calib()
    tq.enable_quant()
    torch.testing.assert_close(int8_fake_quant(w), tq(w), rtol=0, atol=1e-6)


def test_quantize_backbone_keeps_camera_and_outer_layers_in_float32():
    torch.manual_seed(0)
    backbone = WorldModelBackbone(SMALL).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised outputs would hide the differences
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    for mode, tolerance in (("int8", 0.02), ("nvfp4", 0.3)):
        q = quantize_backbone(backbone, mode)
        kinds = {name: type(m) for name, m in q.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))}
        kept = {name for name, kind in kinds.items() if kind is nn.Linear}
        assert kept == {"embed", "t_embed.0", "t_embed.2", "t_block.1", "final"} | {
            f"blocks.{i}.{leaf}" for i in range(SMALL.depth) for leaf in ("attn.cam_qkv", "attn.cam_out", "plucker")}
        assert all(kinds[n] is QuantizedLinear for n in kinds if n not in kept) and len(kinds) > len(kept)
        assert all(mod.mode == mode for mod in q.modules() if isinstance(mod, QuantizedLinear))
        lat = torch.randn(2, 3, SMALL.latent_channels, 4, 4)
        t = torch.rand(2, 3)
        with torch.no_grad():
            ref, _ = backbone(lat, t, None)
            out, _ = q(lat, t, None)
        rel = ((out - ref).norm() / ref.norm()).item()
        assert 0 < rel < tolerance, (mode, rel)
    for k, v in backbone.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
    assert "*.plucker" in KEEP_FULL_PRECISION
    with pytest.raises(ValueError, match="mode must be one of"):
        quantize_backbone(backbone, "fp2")


def test_world_model_low_bit_precisions_generate_deterministic_videos():
    """``precision="int8"`` / ``"nvfp4"`` in the inference API: same shapes, deterministic,
    different from float32 (the backbone computes in the format), the quantized copies built
    once and kept."""
    from world_model.autoencoder import Autoencoder, AutoencoderConfig
    from world_model.geometry import exp_se3, intrinsics_from_fov
    from world_model.world_model import PRECISIONS, WorldModel

    ae = AutoencoderConfig(latent_channels=16, frame_widths=(8, 8), latent_widths=(16, 16), encoder_blocks=(1, 0, 0, 1),
                           decoder_blocks=(1, 0, 0, 1))
    torch.manual_seed(0)
    backbone = WorldModelBackbone(SMALL)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = WorldModel(Autoencoder(ae), backbone, sample_steps=2)
    first = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    c2w = exp_se3(np.array([0.2, 0.0, 0.8, 0.0, 0.4, 0.0])[None] * np.arange(9)[:, None] * 0.0625)
    K = intrinsics_from_fov(90, 32, 32).numpy()
    assert {"nvfp4", "int8"} <= set(PRECISIONS)
    videos = {p: model.generate_video(first, c2w, K, precision=p) for p in ("float32", "int8", "nvfp4")}
    for p in ("int8", "nvfp4"):
        assert videos[p].shape == videos["float32"].shape == (9, 32, 32, 3)
        assert not np.array_equal(videos[p][1:], videos["float32"][1:])
        np.testing.assert_array_equal(videos[p], model.generate_video(first, c2w, K, precision=p))
    assert set(model._low_bit) == {"int8", "nvfp4"}
    with pytest.raises(ValueError, match="precision must be one of"):
        model.generate_video(first, c2w, K, precision="fp4")
