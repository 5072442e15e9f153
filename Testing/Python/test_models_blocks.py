"""Blocks of the Mo-Diff denoisers: shapes, factorisation, masking, embeddings, PAL, FAL, U-Net."""

from __future__ import annotations

import pytest
import torch

from MoDiffLib.errors import InputError
from MoDiffLib.models.blocks import (
    AmplitudeEmbedding,
    ConditionEmbedding,
    FactorisedConv,
    SpatialConv,
    SpatialDownsample,
    SpatialUpsample,
    SpatioTemporalResBlock,
    SpatioTemporalUNet,
    TemporalConv,
    TemporalSelfAttention,
    amplitudes,
    channels_last_video,
    concat_channels,
    frame_counts,
    frame_mask_from_counts,
    from_frames,
    sinusoidal_embedding,
    to_frames,
)
from MoDiffLib.models.fal import FieldAugmentedLayer
from MoDiffLib.models.pal import PromptAttentionLayer


pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def video(b=2, c=4, t=5, d=4, h=8, w=8):
    return torch.randn(b, c, t, d, h, w)


# ----------------------------------------------------------------------------------- layout


def test_channels_last_video_keeps_values_and_gives_per_frame_views():
    x = video()
    y = channels_last_video(x)
    assert torch.equal(x, y)
    assert y.permute(0, 2, 3, 4, 5, 1).is_contiguous()
    frames = to_frames(y)
    assert frames.shape == (2 * 5, 4, 4, 8, 8)
    assert frames.data_ptr() == y.data_ptr()  # a view, no copy
    assert torch.equal(frames[5 + 3], x[1, :, 3])  # frame 3 of sample 1
    assert torch.equal(from_frames(frames, 2), x)
    cat = concat_channels(x, y[:, :2])
    assert torch.equal(cat, torch.cat([x, x[:, :2]], dim=1))


def test_frame_mask_from_counts():
    mask = frame_mask_from_counts(torch.tensor([2, 4]), 5)
    assert mask.tolist() == [[True, True, False, False, False], [True, True, True, True, False]]


# ----------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_shape_and_distinct_values():
    emb = sinusoidal_embedding(torch.arange(20), 32)
    assert emb.shape == (20, 32) and emb.dtype == torch.float32
    distances = torch.cdist(emb, emb) + torch.eye(20) * 1e3
    assert distances.min() > 0.1
    assert sinusoidal_embedding(torch.tensor([1.0, 2.0]), 7).shape == (2, 7)


def test_amplitude_embedding_null_token_per_sample():
    embed = AmplitudeEmbedding(16)
    out = embed(torch.tensor([1.5, float("nan"), 0.3, float("nan")]))
    assert out.shape == (4, 16)
    assert torch.equal(out[1], embed.null_token.detach()) and torch.equal(out[3], embed.null_token.detach())
    assert not torch.allclose(out[0], out[2])
    assert not torch.allclose(out[0], out[1])
    alone = embed(torch.tensor([1.5]))
    assert torch.allclose(alone[0], out[0])  # a batch may mix present and absent amplitudes


def test_condition_embedding_sums_and_uses_every_condition():
    embed = ConditionEmbedding(32)
    t, n = torch.tensor([10, 10]), torch.tensor([4, 4])
    base = embed(t, n, None)
    assert base.shape == (2, 32)
    assert torch.allclose(base[0], base[1])
    assert not torch.allclose(embed(torch.tensor([10, 900]), n)[0], embed(torch.tensor([10, 900]), n)[1])
    changed_n = embed(t, torch.tensor([4, 9]))
    assert torch.allclose(changed_n[0], base[0]) and not torch.allclose(changed_n[1], base[1])
    given = embed(t, n, torch.tensor([1.0, float("nan")]))
    assert not torch.allclose(given[0], base[0]) and torch.allclose(given[1], base[1])


def test_condition_embedding_without_amplitude_refuses_one():
    embed = ConditionEmbedding(16, use_amplitude=False)
    assert embed(torch.tensor([3]), torch.tensor([2])).shape == (1, 16)
    assert embed(torch.tensor([3]), torch.tensor([2]), torch.tensor([float("nan")])).shape == (1, 16)
    with pytest.raises(InputError):
        embed(torch.tensor([3]), torch.tensor([2]), torch.tensor([1.0]))


def test_frame_counts_and_amplitudes_validation():
    assert frame_counts(5, 3, 8).tolist() == [5, 5, 5]
    assert frame_counts([2, 8], 2, 8).dtype == torch.int64
    for bad in (1, 9, [2, 3, 4], 2.5, [0, 4]):
        with pytest.raises(InputError):
            frame_counts(bad, 2, 8)
    assert amplitudes(None, 2) is None
    assert amplitudes(1.5, 3).tolist() == [1.5, 1.5, 1.5]
    with pytest.raises(InputError):
        amplitudes(float("inf"), 2)
    with pytest.raises(InputError):
        amplitudes([1.0, 2.0, 3.0], 2)


# --------------------------------------------------------------------------- convolutions


def test_factorised_convolutions_shapes():
    x = channels_last_video(video())
    assert SpatialConv(4, 6)(x).shape == (2, 6, 5, 4, 8, 8)
    assert TemporalConv(4, 6)(x).shape == (2, 6, 5, 4, 8, 8)
    y = FactorisedConv(4, 6)(x, frame_mask_from_counts(torch.tensor([3, 5]), 5))
    assert y.shape == (2, 6, 5, 4, 8, 8) and y.dtype == torch.float32


def test_spatial_conv_never_mixes_frames_and_temporal_conv_never_mixes_voxels():
    x = torch.zeros(1, 2, 5, 4, 6, 6)
    x[0, :, 2, 1, 3, 3] = 1.0  # an impulse at frame 2, voxel (1, 3, 3)
    spatial = SpatialConv(2, 2)
    temporal = TemporalConv(2, 2)
    for conv in (spatial, temporal):
        for p in conv.parameters():
            torch.nn.init.uniform_(p, 0.1, 1.0)  # positive weights: no accidental cancellation
    s = spatial(x) - spatial(torch.zeros_like(x))
    changed_frames = s.abs().sum(dim=(0, 1, 3, 4, 5)) > 0
    assert changed_frames.tolist() == [False, False, True, False, False]
    assert (s[0, :, 2].abs().sum(0) > 0).sum() == 27  # the 3x3x3 neighbourhood
    tt = temporal(x) - temporal(torch.zeros_like(x))
    changed_frames = tt.abs().sum(dim=(0, 1, 3, 4, 5)) > 0
    assert changed_frames.tolist() == [False, True, True, True, False]
    changed_voxels = tt.abs().sum(dim=(0, 1, 2)) > 0
    assert changed_voxels.sum() == 1 and changed_voxels[1, 3, 3]


def test_temporal_conv_ignores_padded_frames():
    conv = TemporalConv(4, 4)
    mask = frame_mask_from_counts(torch.tensor([3, 5]), 5)
    x = video()
    y = x.clone()
    y[0, :, 3:] = torch.randn_like(y[0, :, 3:]) * 10
    assert torch.allclose(conv(x, mask)[0, :, :3], conv(y, mask)[0, :, :3])
    assert torch.allclose(conv(x, mask)[1], conv(y, mask)[1])
    # the same result as a sequence that simply ends at frame 3
    assert torch.allclose(conv(x, mask)[0:1, :, :3], conv(x[0:1, :, :3]), atol=1e-6)


def test_res_block_shapes_and_embedding_effect():
    block = SpatioTemporalResBlock(4, 8, emb_channels=16, num_groups=4)
    x = video()
    emb = torch.randn(2, 16)
    y = block(x, emb)
    assert y.shape == (2, 8, 5, 4, 8, 8)
    assert not torch.allclose(y, block(x, emb + 1.0))
    same = SpatioTemporalResBlock(8, 8, emb_channels=16)
    assert same.skip is None and same(y, emb).shape == y.shape


def test_temporal_attention_mixes_frames_and_masks_padding():
    attn = TemporalSelfAttention(8, num_heads=2, num_groups=4)
    x = video(c=8)
    mask = frame_mask_from_counts(torch.tensor([3, 5]), 5)
    y = attn(x, mask)
    assert y.shape == x.shape
    far = x.clone()
    far[1, :, 4] += 1.0  # a change at the last frame reaches frame 0 of the same voxel
    assert not torch.allclose(attn(far, mask)[1, :, 0], y[1, :, 0])
    padded = x.clone()
    padded[0, :, 3:] = torch.randn_like(padded[0, :, 3:]) * 10
    assert torch.allclose(attn(padded, mask)[0, :, :3], y[0, :, :3], atol=1e-6)


def test_spatial_resampling_is_anisotropic_and_keeps_frames():
    x = video(t=7, d=4, h=8, w=8)
    down = SpatialDownsample(4, 6, (1, 2, 2))
    up = SpatialUpsample(6, 4, (1, 2, 2))
    y = down(x)
    assert y.shape == (2, 6, 7, 4, 4, 4)
    assert up(y).shape == (2, 4, 7, 4, 8, 8)
    assert SpatialDownsample(4, 4, (2, 2, 2))(x).shape == (2, 4, 7, 2, 4, 4)
    with pytest.raises(ValueError):
        SpatialDownsample(4, 4, (2, 2))


# ------------------------------------------------------------------------------------ U-Net


def tiny_unet(**kw):
    args = dict(
        channels=(8, 16, 16),
        num_res_blocks=1,
        down_factors=((1, 2, 2), (2, 2, 2)),
        attention_levels=(False, True, True),
        emb_channels=16,
        num_groups=4,
        num_heads=2,
    )
    args.update(kw)
    return SpatioTemporalUNet(4, 3, **args)


def test_unet_shapes_sites_and_hook_order():
    net = tiny_unet()
    sites = net.sites()
    assert [s.name for s in sites] == ["down0", "down1", "down2", "mid", "up2", "up1", "up0"]
    assert [s.reduction for s in sites] == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (2, 4, 4), (2, 4, 4), (1, 2, 2), (1, 1, 1)]
    seen = []

    def hook(h, site):
        assert h.shape[1] == site.channels
        assert tuple(h.shape[3:]) == (4 // site.reduction[0], 8 // site.reduction[1], 8 // site.reduction[2])
        assert h.shape[2] == 6  # T is never resampled
        seen.append(site.name)
        return h

    for t in (2, 6):
        x = torch.randn(2, 4, t, 4, 8, 8)
        y = net(x, torch.randn(2, 16), hook=hook if t == 6 else None)
        assert y.shape == (2, 3, t, 4, 8, 8) and y.dtype == torch.float32
    assert seen == [s.name for s in sites]
    with pytest.raises(InputError):
        net(torch.randn(1, 4, 3, 4, 6, 8), torch.randn(1, 16))
    with pytest.raises(ValueError):
        tiny_unet(down_factors=((2, 2, 2),))


def test_unet_real_frames_do_not_depend_on_padding_and_trimming_is_exact():
    net = tiny_unet().eval()
    x = torch.randn(2, 4, 6, 4, 8, 8)
    emb = torch.randn(2, 16)
    mask = frame_mask_from_counts(torch.tensor([3, 6]), 6)
    with torch.no_grad():
        y = net(x, emb, mask)
        x2 = x.clone()
        x2[0, :, 3:] = torch.randn_like(x2[0, :, 3:]) * 5
        y2 = net(x2, emb, mask)
        trimmed = net(x[0:1, :, :3], emb[0:1])
    assert torch.allclose(y[0, :, :3], y2[0, :, :3], atol=1e-5)
    assert torch.allclose(y[1], y2[1], atol=1e-5)
    assert torch.allclose(y[0:1, :, :3], trimmed, atol=1e-5)
    assert not torch.allclose(y[0, :, 3:], y2[0, :, 3:])  # the padding itself did change


# ------------------------------------------------------------------------------- PAL / FAL


def test_pal_scale_shift_is_per_voxel_and_shared_by_all_frames():
    pal = PromptAttentionLayer(prompt_channels=4, feature_channels=8, num_groups=4)
    prompt = torch.randn(2, 4, 4, 8, 8)
    h = torch.randn(2, 8, 1, 2, 4, 4).expand(2, 8, 5, 2, 4, 4)  # identical frames, a coarser level
    out = pal(h, prompt)
    assert out.shape == (2, 8, 5, 2, 4, 4)
    assert torch.allclose(out[:, :, 0:1].expand_as(out), out)  # one modulation for every frame
    scale, shift = pal.prompt_features(prompt, (2, 4, 4)).chunk(2, dim=1)
    assert torch.allclose(out, h * (1 + scale[:, :, None]) + shift[:, :, None])
    assert not torch.allclose(pal(h, prompt + 1.0), out)
    # element-wise multiplication and addition: a zero feature map receives only the shift
    zero = pal(torch.zeros_like(h), prompt)
    assert torch.allclose(zero, shift[:, :, None].expand_as(zero))


def test_fal_interleaves_fields_and_frames_and_is_wired():
    fal = FieldAugmentedLayer(field_channels=4, feature_channels=8, num_heads=2, num_groups=4)
    h = torch.randn(2, 8, 5, 2, 4, 4)
    fields = torch.randn(2, 4, 5, 4, 8, 8)  # the full latent grid; pooled to the site
    mask = frame_mask_from_counts(torch.tensor([3, 5]), 5)
    out = fal(h, fields, mask)
    assert out.shape == h.shape
    frames, augmented = fal.augmented_sequence(h, fields)
    assert augmented.shape == (2 * 2 * 4 * 4, 10, 8)
    assert torch.equal(augmented[:, 0::2], frames)  # even tokens: frames; odd tokens: warped fields
    assert not torch.allclose(augmented[:, 1::2], frames)
    changed = fields.clone()
    changed[1, :, 2] += 1.0
    assert not torch.allclose(fal(h, changed, mask)[1], out[1])
    padded = fields.clone()
    padded[0, :, 3:] = torch.randn_like(padded[0, :, 3:]) * 10
    assert torch.allclose(fal(h, padded, mask)[0, :, :3], out[0, :, :3], atol=1e-6)
    with pytest.raises(ValueError):
        fal(h, fields[:, :, :4], mask)
