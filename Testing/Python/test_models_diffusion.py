"""TDDM, the I2V denoiser, the noise schedule, the masked losses and the samplers (tiny sizes)."""

from __future__ import annotations

import threading

import pytest
import torch

from MoDiffLib.errors import Cancelled, InputError
from MoDiffLib.models.diffusion import (
    NoiseSchedule,
    i2v_loss,
    masked_mse,
    sample_fields,
    sample_latents,
    tddm_loss,
)
from MoDiffLib.models.i2v import I2VDenoiser
from MoDiffLib.models.tddm import TDDM, fields_from_latents, latents_from_fields

C, F, GRID = 4, 6, (4, 8, 8)  # latent channels, max frames, latent (D, H, W)
SMALL = dict(
    latent_channels=C,
    max_frames=F,
    channels=(8, 16),
    down_factors=((1, 2, 2),),
    attention_levels=(False, True),
    emb_channels=16,
    num_groups=4,
    num_heads=2,
)


pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def make_tddm(**kw):
    return TDDM(**{**SMALL, **kw})


def make_i2v(**kw):
    return I2VDenoiser(**{**SMALL, "fal_levels": (1,), **kw})


def data(b=2):
    return torch.randn(b, C, F, *GRID), torch.randn(b, C, *GRID)


# ------------------------------------------------------------------------------ denoisers


@pytest.mark.parametrize("n", [2, 4, F])
def test_tddm_shapes_and_zeroed_frames(n):
    model = make_tddm()
    fields, prompt = data()
    out = model(fields, torch.tensor([5, 900]), prompt, n, amplitude=1.0)
    assert out.shape == fields.shape and out.dtype == torch.float32
    assert out[:, :, 0].abs().max() == 0  # d_0 is the known zero field
    assert out[:, :, n:].abs().max() == 0 if n < F else True
    assert out[:, :, 1:n].abs().mean() > 0


@pytest.mark.parametrize("n", [2, 4, F])
def test_i2v_shapes_and_zeroed_frames(n):
    model = make_i2v()
    latents, prompt = data()
    fields, _ = data()
    out = model(latents, 7, prompt, fields, n)
    assert out.shape == latents.shape and out.dtype == torch.float32
    assert out[:, :, 0].abs().max() == 0  # frame 0 is the given prompt
    assert out[:, :, n:].abs().max() == 0 if n < F else True
    assert out[:, :, 1:n].abs().mean() > 0


def test_denoisers_accept_fewer_frames_than_f_and_reject_bad_shapes():
    model = make_tddm()
    fields, prompt = data()
    assert model(fields[:, :, :4], 3, prompt, 3).shape == (2, C, 4, *GRID)
    with pytest.raises(InputError):
        model(fields[:, :, :4], 3, prompt, 5)  # N larger than the frames given
    with pytest.raises(InputError):
        model(torch.randn(2, C, F + 1, *GRID), 3, prompt, 3)
    with pytest.raises(InputError):
        model(fields, 3, prompt[:, :2], 3)
    with pytest.raises(InputError):
        model(torch.randn(2, C, F, 4, 8, 7), 3, torch.randn(2, C, 4, 8, 7), 3)  # W not divisible
    i2v = make_i2v()
    with pytest.raises(InputError):
        i2v(fields, 3, prompt, fields[:, :, :4], 3)


def test_mixed_batch_equals_separate_runs():
    """Frames >= N never influence real frames: a mixed-N batch equals per-sample runs."""
    for model in (make_tddm().eval(), make_i2v().eval()):
        x, prompt = data()
        fields, _ = data()
        args = (fields,) if isinstance(model, I2VDenoiser) else ()

        def run(sl, n):
            extra = tuple(a[sl] for a in args)
            return model(x[sl], torch.tensor([40, 40])[sl], prompt[sl], *extra, n)

        with torch.no_grad():
            both = run(slice(0, 2), torch.tensor([3, F]))
            first = run(slice(0, 1), torch.tensor([3]))
            second = run(slice(1, 2), torch.tensor([F]))
        assert torch.allclose(both[0:1], first, atol=1e-5)
        assert torch.allclose(both[1:2], second, atol=1e-5)


def _differs(a, b):
    return not torch.allclose(a, b, atol=1e-6)


def test_tddm_conditions_are_wired():
    model = make_tddm().eval()
    fields, prompt = data()
    with torch.no_grad():
        base = model(fields, 300, prompt, 4, amplitude=2.0)
        assert _differs(model(fields, 300, prompt + 0.5 * torch.randn_like(prompt), 4, amplitude=2.0)[:, :, 1:4], base[:, :, 1:4])
        assert _differs(model(fields, 300, prompt, 5, amplitude=2.0)[:, :, 1:4], base[:, :, 1:4])
        assert _differs(model(fields, 300, prompt, 4, amplitude=0.5), base)
        assert _differs(model(fields, 800, prompt, 4, amplitude=2.0), base)
        null = model(fields, 300, prompt, 4, amplitude=None)
        assert _differs(null, base)
        assert torch.allclose(null, model(fields, 300, prompt, 4, amplitude=float("nan")))
        mixed = model(fields, 300, prompt, 4, amplitude=torch.tensor([2.0, float("nan")]))
        assert torch.allclose(mixed[0], base[0], atol=1e-6) and torch.allclose(mixed[1], null[1], atol=1e-6)
        changed_pad = fields.clone()
        changed_pad[:, :, 4:] += 3.0
        changed_pad[:, :, 0] += 3.0  # d_0 is overwritten by the zero field
        assert torch.allclose(model(changed_pad, 300, prompt, 4, amplitude=2.0), base, atol=1e-6)


def test_i2v_conditions_are_wired():
    model = make_i2v().eval()
    latents, prompt = data()
    fields, _ = data()
    with torch.no_grad():
        base = model(latents, 300, prompt, fields, 4, amplitude=2.0)
        changed = fields.clone()
        changed[:, :, 2] += 1.0
        assert _differs(model(latents, 300, prompt, changed, 4, amplitude=2.0), base)
        assert _differs(model(latents, 300, prompt + 0.5, fields, 4, amplitude=2.0), base)
        assert _differs(model(latents, 300, prompt, fields, 5, amplitude=2.0)[:, :, 1:4], base[:, :, 1:4])
        assert _differs(model(latents, 300, prompt, fields, 4, amplitude=0.5), base)
        assert _differs(model(latents, 300, prompt, fields, 4, amplitude=None), base)
        slot0 = latents.clone()
        slot0[:, :, 0] = torch.randn_like(slot0[:, :, 0])  # slot 0 is replaced by the prompt
        assert torch.allclose(model(slot0, 300, prompt, fields, 4, amplitude=2.0), base, atol=1e-6)
        unused = fields.clone()
        unused[:, :, 0] += 1.0
        unused[:, :, 4:] += 1.0
        assert torch.allclose(model(latents, 300, prompt, unused, 4, amplitude=2.0), base, atol=1e-6)


def test_i2v_field_input_of_fal():
    """FAL warps [d_i, d_1 + ... + d_i] by default, the fields alone without cumulative_fields."""
    model = make_i2v()
    site = next(iter(model.fal.values()))
    assert site.warp.conv.conv.in_channels == 2 * C
    seen = []
    site.warp.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    latents, prompt = data()
    fields, _ = data()
    with torch.no_grad():
        model(latents, 3, prompt, fields, 4)
    given = seen[0]
    assert given.shape == (2, 2 * C, 4, *GRID)
    steps = fields[:, :, :4].clone()
    steps[:, :, 0] = 0
    assert torch.allclose(given[:, :C], steps)
    assert torch.allclose(given[:, C:], torch.cumsum(steps, dim=2), atol=1e-6)
    plain = make_i2v(cumulative_fields=False)
    assert next(iter(plain.fal.values())).warp.conv.conv.in_channels == C
    assert plain(latents, 3, prompt, fields, 4).shape == latents.shape


def test_fields_latents_round_trip():
    latents, prompt = data()
    latents[:, :, 0] = prompt
    n = torch.tensor([3, F])
    fields = fields_from_latents(latents, n)
    assert fields[:, :, 0].abs().max() == 0 and fields[0, :, 3:].abs().max() == 0
    assert torch.allclose(fields[1, :, 2], latents[1, :, 2] - latents[1, :, 1])
    back = latents_from_fields(prompt, fields, n)
    assert torch.allclose(back[0, :, :3], latents[0, :, :3], atol=1e-6)
    assert torch.allclose(back[1], latents[1], atol=1e-5)
    assert back[0, :, 3:].abs().max() == 0


# ----------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_noise_schedule_shapes_and_monotone(kind):
    s = NoiseSchedule(beta_schedule=kind)
    assert s.betas.shape == (1000,) and bool((s.betas > 0).all()) and bool((s.betas < 1).all())
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    assert s.alphas_cumprod[-1] < 0.05 and s.alphas_cumprod[0] > 0.99
    ts = s.sampling_timesteps(20)
    assert ts[0] == 999 and ts[-1] == 0 and len(set(ts)) == 20 and ts == sorted(ts, reverse=True)
    assert s.sampling_timesteps(1) == [999] and len(set(s.sampling_timesteps(1000))) == 1000
    with pytest.raises(InputError):
        s.sampling_timesteps(0)
    with pytest.raises(ValueError):
        NoiseSchedule(beta_schedule="quadratic")


def test_q_sample_matches_equation_1():
    s = NoiseSchedule()
    x0, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    t = torch.tensor([0, 500, 999])
    xt = s.q_sample(x0, t, noise)
    for i in range(3):
        a = s.alphas_cumprod[t[i]].item()
        assert torch.allclose(xt[i], a**0.5 * x0[i] + (1 - a) ** 0.5 * noise[i], atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_step_with_an_oracle_network_recovers_x0(prediction, eta):
    """A network that outputs the exact target makes every reverse step land on the true x0 path."""
    s = NoiseSchedule(prediction_type=prediction)
    x0 = torch.randn(1, 3, 5)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 5, generator=g)
    ts = s.sampling_timesteps(10)
    for i, t in enumerate(ts):
        abar = s.alphas_cumprod[t].item()
        eps = (x - abar**0.5 * x0) / (1 - abar) ** 0.5
        out = s.training_target(x0, eps, torch.tensor([t]))
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = s.step(out, t, prev, x, eta=eta, generator=g)
    assert torch.allclose(x, x0, atol=1e-4)


def test_ddpm_step_adds_the_posterior_noise_and_ddim_none():
    """eta = 1 on consecutive timesteps is DDPM: noise of variance (1 - abar_prev) / (1 - abar_t) * beta_t."""
    s = NoiseSchedule()
    zeros = torch.zeros(200_000)
    g = torch.Generator().manual_seed(0)
    t = 400
    expected = ((1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t]) * s.betas[t]).sqrt().item()
    ddpm = s.step(zeros, t, t - 1, zeros, eta=1.0, generator=g)
    assert abs(ddpm.std().item() / expected - 1) < 0.01 and abs(ddpm.mean().item()) < 0.01 * expected
    assert s.step(zeros, t, t - 1, zeros, eta=0.0, generator=g).abs().max() == 0


# ------------------------------------------------------------------------------------ losses


def test_tddm_loss_ignores_padding_and_frame_zero():
    model = make_tddm()
    fields, prompt = data()
    noise = torch.randn_like(fields)
    t = torch.tensor([100, 700])
    n = torch.tensor([3, 5])
    loss = tddm_loss(model, fields, prompt, n, amplitude=1.0, amplitude_dropout=0.0, noise=noise, timesteps=t)
    f2, n2 = fields.clone(), noise.clone()
    f2[0, :, 3:] = torch.randn_like(f2[0, :, 3:]) * 10  # padding of sample 0: targets and noise
    n2[0, :, 3:] = torch.randn_like(n2[0, :, 3:]) * 10
    f2[1, :, 5:] += 7.0
    n2[1, :, 5:] -= 7.0
    f2[:, :, 0] += 4.0  # frame 0: the zero mask
    n2[:, :, 0] += 4.0
    same = tddm_loss(model, f2, prompt, n, amplitude=1.0, amplitude_dropout=0.0, noise=n2, timesteps=t)
    assert torch.allclose(loss, same)
    n3 = noise.clone()
    n3[0, :, 2] += 1.0  # a real frame does count
    assert not torch.allclose(loss, tddm_loss(model, fields, prompt, n, 1.0, 0.0, noise=n3, timesteps=t))


def test_i2v_loss_ignores_padding_and_frame_zero():
    model = make_i2v()
    latents, prompt = data()
    fields, _ = data()
    noise = torch.randn_like(latents)
    t = torch.tensor([100, 700])
    n = torch.tensor([2, 4])
    kw = dict(amplitude_dropout=0.0, timesteps=t)
    loss = i2v_loss(model, latents, prompt, fields, n, noise=noise, **kw)
    l2, n2 = latents.clone(), noise.clone()
    l2[0, :, 2:] = torch.randn_like(l2[0, :, 2:]) * 10
    n2[0, :, 2:] = torch.randn_like(n2[0, :, 2:]) * 10
    l2[1, :, 4:] += 7.0
    n2[:, :, 0] += 4.0
    assert torch.allclose(loss, i2v_loss(model, l2, prompt, fields, n, noise=n2, **kw))
    n3 = noise.clone()
    n3[1, :, 3] += 1.0
    assert not torch.allclose(loss, i2v_loss(model, latents, prompt, fields, n, noise=n3, **kw))


def test_masked_mse_is_a_mean_over_real_elements():
    pred, target = torch.zeros(2, 3, 4, 1, 2, 2), torch.zeros(2, 3, 4, 1, 2, 2)
    pred[0, :, 1] = 2.0  # squared error 4 on one frame of 12 elements
    pred[1, :, 3] = 100.0  # masked out
    mask = torch.tensor([[False, True, True, False], [False, True, False, False]])
    assert torch.isclose(masked_mse(pred, target, mask), torch.tensor(4.0 * 12 / 36))


def test_amplitude_dropout_uses_the_null_token():
    model = make_tddm()
    fields, prompt = data()
    kw = dict(noise=torch.randn_like(fields), timesteps=torch.tensor([300, 300]))
    dropped = tddm_loss(model, fields, prompt, 4, amplitude=2.0, amplitude_dropout=1.0, **kw)
    none = tddm_loss(model, fields, prompt, 4, amplitude=None, **kw)
    kept = tddm_loss(model, fields, prompt, 4, amplitude=2.0, amplitude_dropout=0.0, **kw)
    assert torch.allclose(dropped, none) and not torch.allclose(kept, none)
    with pytest.raises(ValueError):
        tddm_loss(model, fields, prompt, 4, amplitude=2.0, amplitude_dropout=1.5)


def test_loss_is_reproducible_with_a_generator():
    model = make_tddm()
    fields, prompt = data()
    a = tddm_loss(model, fields, prompt, 4, 1.0, generator=torch.Generator().manual_seed(5))
    b = tddm_loss(model, fields, prompt, 4, 1.0, generator=torch.Generator().manual_seed(5))
    c = tddm_loss(model, fields, prompt, 4, 1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _overfit(loss_fn, model, steps):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


OVERFIT_GRID = (2, 4, 4)  # smaller still: these tests take 60 optimiser steps


def test_tddm_overfits_one_field_sequence():
    """A fixed batch (fields, prompt, timesteps, noise) is memorised: the loss falls >= 20x in 60 steps."""
    model = make_tddm()
    fields, prompt = torch.randn(2, C, F, *OVERFIT_GRID), torch.randn(2, C, *OVERFIT_GRID)
    kw = dict(noise=torch.randn_like(fields), timesteps=torch.tensor([150, 600]), amplitude_dropout=0.0)
    losses = _overfit(lambda: tddm_loss(model, fields, prompt, torch.tensor([4, 5]), 1.0, **kw), model, 60)
    assert min(losses[-5:]) < losses[0] / 20, (losses[0], losses[-5:])


def test_i2v_overfits_one_latent_sequence():
    model = make_i2v()
    latents, prompt = torch.randn(2, C, F, *OVERFIT_GRID), torch.randn(2, C, *OVERFIT_GRID)
    fields = torch.randn_like(latents)
    kw = dict(noise=torch.randn_like(latents), timesteps=torch.tensor([150, 600]), amplitude_dropout=0.0)
    losses = _overfit(lambda: i2v_loss(model, latents, prompt, fields, torch.tensor([4, 5]), None, **kw), model, 60)
    assert min(losses[-5:]) < losses[0] / 20, (losses[0], losses[-5:])


# ---------------------------------------------------------------------------------- samplers


class CountingTDDM(TDDM):
    calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_fields_seeded_and_masked(sampler):
    model = make_tddm()
    _, prompt = data()
    a = sample_fields(model, prompt, 4, steps=3, sampler=sampler, seed=11, amplitude=1.0)
    b = sample_fields(model, prompt, 4, steps=3, sampler=sampler, seed=11, amplitude=1.0)
    c = sample_fields(model, prompt, 4, steps=3, sampler=sampler, seed=12, amplitude=1.0)
    assert a.shape == (2, C, F, *GRID)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a[:, :, 0].abs().max() == 0 and a[:, :, 4:].abs().max() == 0
    assert a[:, :, 1:4].abs().mean() > 0
    assert model.training  # the caller's mode is restored


def test_sample_latents_seeded_and_masked():
    model = make_i2v()
    fields, prompt = data()
    n = torch.tensor([2, F])
    a = sample_latents(model, prompt, fields, n, steps=3, seed=1)
    b = sample_latents(model, prompt, fields, n, steps=3, seed=1)
    c = sample_latents(model, prompt, fields, n, steps=3, seed=2)
    assert a.shape == (2, C, F, *GRID)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(a[:, :, 0], prompt)
    assert a[0, :, 2:].abs().max() == 0 and a[1, :, 1:].abs().min() > 0
    other_fields = sample_latents(model, prompt, fields + 1.0, n, steps=3, seed=1)
    assert not torch.allclose(other_fields, a)


def _silent(model):
    """The denoiser with its output convolution zeroed: it predicts x0 = 0 (a zero residual)."""
    with torch.no_grad():
        for p in model.unet.out_conv.parameters():
            p.zero_()
    return model


def test_residual_i2v_diffuses_against_the_field_implied_latents():
    """A residual I2V that predicts a zero residual returns exactly z_0 + d_1 + ... + d_i."""
    scale = 3.0
    schedule = NoiseSchedule(prediction_type="sample")
    latents, prompt = data()
    n = torch.tensor([3, F])
    latents[:, :, 0] = prompt
    fields = fields_from_latents(latents, n) * scale
    model = _silent(make_i2v(residual_to_fields=True))
    out = sample_latents(model, prompt, fields, n, steps=4, seed=0, schedule=schedule, field_scale=scale)
    assert torch.allclose(out, latents_from_fields(prompt, fields / scale, n), atol=1e-5)
    assert torch.equal(out[:, :, 0], prompt) and out[0, :, 3:].abs().max() == 0
    # Exact fields leave nothing to denoise: the x0 target is zero, so the silent model is perfect ...
    kw = dict(amplitude_dropout=0.0, schedule=schedule, timesteps=torch.tensor([10, 900]))
    assert i2v_loss(model, latents, prompt, fields, n, field_scale=scale, **kw) < 1e-10
    # ... while the plain formulation asks it for the latents themselves.
    plain = _silent(make_i2v())
    assert i2v_loss(plain, latents, prompt, fields, n, **kw) > 0.5
    with pytest.raises(InputError, match="field_scale"):
        sample_latents(model, prompt, fields, n, steps=2, schedule=schedule)


def test_progress_once_per_step_and_cancel_within_one_step():
    model = CountingTDDM(**SMALL)
    _, prompt = data(1)
    events = []
    sample_fields(model, prompt, 3, steps=4, progress=events.append)
    assert [(e.stage, e.step, e.total, e.fraction) for e in events] == [
        ("tddm", 1, 4, 0.25), ("tddm", 2, 4, 0.5), ("tddm", 3, 4, 0.75), ("tddm", 4, 4, 1.0)]
    assert model.calls == 4

    model.calls = 0
    calls = []
    cancel = threading.Event()

    def progress(event):
        calls.append(event.step)
        if event.step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        sample_fields(model, prompt, 3, steps=10, progress=progress, cancel=cancel)
    assert calls == [1, 2] and model.calls == 2  # stopped before a third network call

    i2v = make_i2v()
    fields, _ = data(1)
    calls.clear()
    cancel.clear()
    stages = []
    with pytest.raises(Cancelled):
        sample_latents(i2v, prompt, fields, 3, steps=10, progress=lambda e: (stages.append(e.stage), progress(e)),
                       cancel=cancel)
    assert calls == [1, 2] and stages == ["i2v", "i2v"]


def test_sampler_input_validation():
    tddm, i2v = make_tddm(), make_i2v()
    fields, prompt = data()
    for n in (1, 0, F + 1, [2, F + 1]):
        with pytest.raises(InputError):
            sample_fields(tddm, prompt, n, steps=2)
        with pytest.raises(InputError):
            sample_latents(i2v, prompt, fields, n, steps=2)
    with pytest.raises(InputError):
        sample_fields(tddm, prompt, 3, steps=0)
    with pytest.raises(InputError):
        sample_fields(tddm, prompt, 3, steps=2, sampler="euler")
    with pytest.raises(InputError):
        sample_fields(tddm, prompt[:, :2], 3, steps=2)
    with pytest.raises(InputError):
        sample_latents(i2v, prompt, fields[:, :, :4], 3, steps=2)
