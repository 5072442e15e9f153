"""The frame VAE: shapes for isotropic and anisotropic grids, clear refusals, losses that train."""

import math

import pytest
import torch

from MoDiffLib.errors import InputError
from MoDiffLib.models.config import VAEConfig, default_config
from MoDiffLib.models.vae import (
    KLAutoencoder,
    compute_latent_scale,
    gradient_l1,
    kl_divergence,
    vae_loss,
)


def tiny_vae(down_factors=((1, 2, 2),), latent_channels=4, seed=0) -> KLAutoencoder:
    torch.manual_seed(seed)
    levels = len(down_factors) + 1
    return KLAutoencoder(
        latent_channels=latent_channels,
        channels=tuple(8 * (level + 1) for level in range(levels)),
        down_factors=down_factors,
        num_res_blocks=1,
    )


def blob_phantom(shape=(16, 32, 32), blobs=6, seed=0) -> torch.Tensor:
    """(1, 1, D, H, W): background -1 with spheres of random radius and intensity."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    x = torch.full(shape, -1.0)
    for _ in range(blobs):
        centre = torch.rand(3, generator=g) * torch.tensor(shape, dtype=torch.float32)
        radius = 2.0 + 4.0 * float(torch.rand(1, generator=g))
        dist2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
        x[dist2 < radius**2] = float(torch.rand(1, generator=g)) * 1.6 - 0.6
    return x[None, None]


@pytest.mark.parametrize(
    "factors, shape, latent",
    [
        (((2, 2, 2), (2, 2, 2)), (16, 16, 16), (4, 4, 4)),  # isotropic
        (((1, 2, 2), (1, 2, 2)), (6, 32, 24), (6, 8, 6)),  # in-plane only (cardiac MR)
        (((2, 2, 2), (1, 2, 2)), (8, 16, 32), (4, 4, 8)),  # lung CT recipe
        (((1, 3, 3),), (5, 9, 15), (5, 3, 5)),  # a factor other than 2, odd sizes
    ],
)
def test_encode_decode_shapes(factors, shape, latent):
    vae = tiny_vae(factors).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        assert mean.shape == logvar.shape == (2, 4, *latent)
        assert vae.latent_shape(shape) == latent
        recon = vae.decode(vae.sample(mean, logvar))
        assert recon.shape == x.shape
        out, m2, _ = vae(x, sample=False)
    assert out.shape == x.shape and torch.equal(m2, mean)
    assert vae.total_factor == tuple(math.prod(f[a] for f in factors) for a in range(3))


def test_sizes_not_divisible_by_the_downsampling_are_refused():
    vae = tiny_vae(((2, 2, 2), (1, 2, 2)))  # total factor (2, 4, 4)
    with pytest.raises(InputError, match=r"17x32x32 .*not divisible.*2x4x4"):
        vae.encode(torch.zeros(1, 1, 17, 32, 32))
    with pytest.raises(InputError, match="not divisible"):
        vae.encode(torch.zeros(1, 1, 16, 30, 32))
    with pytest.raises(InputError, match=r"\(B, 1, D, H, W\)"):
        vae.encode(torch.zeros(1, 2, 16, 32, 32))
    with pytest.raises(InputError, match=r"\(B, 1, D, H, W\)"):
        vae.encode(torch.zeros(16, 32, 32))
    with pytest.raises(InputError, match=r"\(B, 4, d, h, w\)"):
        vae.decode(torch.zeros(1, 3, 8, 8, 8))


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(InputError, match="one width per level"):
        KLAutoencoder(channels=(8, 16), down_factors=((2, 2, 2), (2, 2, 2)))
    with pytest.raises(InputError, match="1..8"):
        KLAutoencoder(channels=(8, 16), down_factors=((0, 2, 2),), num_res_blocks=1)
    with pytest.raises(InputError, match="multiple of 8 groups"):
        KLAutoencoder(channels=(8, 12), down_factors=((1, 2, 2),), num_res_blocks=1)
    with pytest.raises(InputError, match="res-block"):
        KLAutoencoder(channels=(8, 16), down_factors=((1, 2, 2),), num_res_blocks=(1, 1, 1))


def test_sampling_is_reparameterised_and_reproducible():
    mean = torch.randn(2, 4, 3, 4, 4)
    logvar = torch.full_like(mean, math.log(0.25))  # std 0.5
    a = KLAutoencoder.sample(mean, logvar, torch.Generator().manual_seed(3))
    b = KLAutoencoder.sample(mean, logvar, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    noise = (a - mean) / 0.5
    assert abs(float(noise.std()) - 1.0) < 0.2 and not torch.allclose(a, mean)
    near_zero_var = KLAutoencoder.sample(mean, torch.full_like(mean, -30.0))
    assert torch.allclose(near_zero_var, mean, atol=1e-5)


def test_frame_sequences_match_single_frame_calls_for_any_chunk_size():
    vae = tiny_vae(((1, 2, 2),)).eval()
    frames = torch.randn(2, 5, 4, 16, 16)  # (B, T, D, H, W)
    with torch.no_grad():
        z = vae.encode_frames(frames, chunk_size=3)
        assert z.shape == (2, 4, 5, 4, 8, 8)  # (B, C_lat, T, d, h, w)
        for t in range(5):
            mean, _ = vae.encode(frames[:, t : t + 1])
            assert torch.allclose(z[:, :, t], mean, atol=1e-5)
        z_list = vae.encode_frames([frames[:, t] for t in range(5)], chunk_size=1)
        assert torch.allclose(z_list, z, atol=1e-5)
        x = vae.decode_frames(z, chunk_size=2)
        assert x.shape == frames.shape
        for t in range(5):
            assert torch.allclose(x[:, t], vae.decode(z[:, :, t])[:, 0], atol=1e-5)
        assert torch.allclose(vae.decode_frames(z, chunk_size=10), x, atol=1e-5)
    with pytest.raises(InputError, match="one shape"):
        vae.encode_frames([torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 8, 16)])
    with pytest.raises(InputError, match=r"\(B, C_lat, T, d, h, w\)"):
        vae.decode_frames(torch.zeros(1, 4, 8, 8, 8))
    with pytest.raises(InputError, match="chunk size"):
        vae.encode_frames(frames, chunk_size=0)


def test_kl_and_gradient_terms_have_their_closed_forms():
    zero = torch.zeros(2, 3, 2, 2, 2)
    assert float(kl_divergence(zero, zero)) == 0.0
    # mean 1, variance 1: 0.5 per element, 24 elements per sample
    assert float(kl_divergence(torch.ones_like(zero), zero)) == pytest.approx(12.0)
    # variance e: 0.5 * (e - 1 - 1) per element
    assert float(kl_divergence(zero, torch.ones_like(zero))) == pytest.approx(24 * 0.5 * (math.e - 2), rel=1e-6)
    x = torch.randn(1, 1, 4, 5, 6)
    assert float(gradient_l1(x, x)) == 0.0
    assert float(gradient_l1(x, x + 3.0)) == pytest.approx(0.0, abs=1e-6)  # offsets have no edges
    assert float(gradient_l1(x, torch.zeros_like(x))) > 0.1


def test_a_tiny_vae_overfits_one_phantom():
    x = blob_phantom()  # 32 x 32 x 16 voxels (W x H x D)
    torch.manual_seed(0)
    vae = KLAutoencoder(latent_channels=4, channels=(8, 16), down_factors=((1, 2, 2),), num_res_blocks=(0, 1))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(100):
        loss, logs = vae_loss(vae, x, kl_weight=1e-6, gradient_weight=0.1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(logs)
    first, last = history[0], history[-1]
    assert set(first) == {"recon_l1", "gradient_l1", "kl", "loss"}
    assert last["loss"] < first["loss"] / 5
    assert last["recon_l1"] < 0.15 < first["recon_l1"]
    assert last["kl"] > 0.0


def test_latent_scale_gives_unit_std():
    vae = tiny_vae(((1, 2, 2),)).eval()
    batches = [blob_phantom(seed=s, shape=(4, 16, 16)) * 3.0 for s in range(3)]
    scale = compute_latent_scale(vae, batches, chunk_size=1)
    with torch.no_grad():
        z = torch.cat([vae.encode(b)[0] for b in batches])
    assert float((z * scale).std()) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(InputError, match="at least one frame"):
        compute_latent_scale(vae, [])


@pytest.mark.parametrize("kind", ["lung", "cardiac"])
def test_default_configs_build_vaes_whose_latent_fits_the_grid(kind):
    config = default_config(kind)
    vae = KLAutoencoder.from_config(config.vae)
    assert vae.latent_shape(config.grid.shape_kji) == config.latent_shape
    assert vae.latent_channels == config.vae.latent_channels == 8
    assert config.latent_shape == {"lung": (32, 32, 32), "cardiac": (16, 32, 32)}[kind]
    small = KLAutoencoder.from_config(VAEConfig(channels=(8, 16, 16), num_res_blocks=(0, 0, 1)))
    assert small.channels == (8, 16, 16)
