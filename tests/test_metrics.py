"Tests of darknb.metrics: PSNR/SSIM against scikit-image on real photos, per-image averaging, losses."
import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import skimage.data
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio as sk_psnr, structural_similarity as sk_ssim

from darknb.metrics import (mse_per_image, psnr, ssim, ssim_map, gaussian_window, ImageMetric, PSNRMetric,
                            SSIMMetric, SSIMLoss, MixLoss)


def _photo(name):
    "A bundled scikit-image colour photo as float64 HWC in [0,1]"
    return getattr(skimage.data, name)().astype(np.float64) / 255


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, 'JPEG', quality=quality)
    return np.array(Image.open(buf)).astype(np.float64) / 255


_rng = np.random.default_rng(0)
DISTORTIONS = {
    'noise': lambda im: np.clip(im + _rng.normal(0, 0.04, im.shape), 0, 1),
    'blur': lambda im: gaussian_filter(im, sigma=(2, 2, 0)),
    'darker': lambda im: np.clip(im * 0.7 - 0.02, 0, 1),
    'jpeg': lambda im: _jpeg(im, 25),
}
to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


@pytest.mark.parametrize("name", ['astronaut', 'chelsea', 'coffee'])
@pytest.mark.parametrize("dist", list(DISTORTIONS))
def test_against_skimage(name, dist):
    y = _photo(name)
    x = DISTORTIONS[dist](y)
    ref_p = sk_psnr(y, x, data_range=1)
    ref_s = sk_ssim(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)
    assert 0.2 < ref_s < 0.99 and 10 < ref_p < 45          # a real distortion, not a trivial case
    for dt in (torch.float64, torch.float32):
        xt, yt = to_t(x).to(dt), to_t(y).to(dt)
        assert abs(psnr(xt, yt).item() - ref_p) < 1e-4
        assert abs(ssim(xt, yt).item() - ref_s) < 1e-4
    # single image (C,H,W) gives the same scalar
    assert abs(ssim(to_t(x)[0], to_t(y)[0]).item() - ref_s) < 1e-10


def test_data_range_255_and_other_window():
    y = _photo('chelsea')[:128, :128]
    x = DISTORTIONS['noise'](y)
    ref = sk_ssim(x * 255, y * 255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                  data_range=255, channel_axis=-1)
    assert abs(ssim(to_t(x) * 255, to_t(y) * 255, data_range=255).item() - ref) < 1e-8
    assert abs(psnr(to_t(x) * 255, to_t(y) * 255, data_range=255).item() - sk_psnr(y * 255, x * 255, data_range=255)) < 1e-8
    # sigma 1.0: skimage uses a 2*int(3.5*1+0.5)+1 = 9 tap window
    ref7 = sk_ssim(x, y, gaussian_weights=True, sigma=1.0, use_sample_covariance=False, data_range=1, channel_axis=-1)
    assert abs(ssim(to_t(x), to_t(y), win_size=9, sigma=1.0).item() - ref7) < 1e-8


def test_batching_matches_single_images():
    ys = [_photo(n)[:200, :280] for n in ('astronaut', 'chelsea', 'coffee')]
    xs = [DISTORTIONS[d](y) for d, y in zip(('noise', 'blur', 'jpeg'), ys)]
    X, Y = torch.cat([to_t(x) for x in xs]), torch.cat([to_t(y) for y in ys])
    p, s = psnr(X, Y), ssim(X, Y)
    assert p.shape == s.shape == (3,)
    for i in range(3):
        assert abs(p[i].item() - psnr(X[i:i+1], Y[i:i+1]).item()) < 1e-10
        assert abs(s[i].item() - ssim(X[i], Y[i]).item()) < 1e-10
    assert len(set(np.round(p.tolist(), 3))) == 3              # three different images, three different values
    assert ssim_map(X, Y).shape == (3, 3, 190, 270)


def test_identical_images():
    y = to_t(_photo('coffee')[:64, :64])
    assert psnr(y, y).item() == math.inf
    assert psnr(y, y, max_db=100.).item() == 100.
    assert abs(ssim(y, y).item() - 1) < 1e-12
    m = PSNRMetric(); m.update(y, y); assert m.value == 100.
    m = PSNRMetric(max_db=None); m.update(y, y); assert m.value == math.inf
    m = SSIMMetric(); m.update(y, y); assert abs(m.value - 1) < 1e-12


def test_input_errors():
    "One line that names the argument at fault, no module prefix"
    a = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="^pred and targ: .*differ in shape"): psnr(a, a[:1])
    with pytest.raises(ValueError, match="^win_size: .*smaller than the 11x11 window"): ssim(a[..., :10, :10], a[..., :10, :10])
    with pytest.raises(ValueError, match=r"^pred: .*\(N,C,H,W\)"): ssim(a[0, 0], a[0, 0])
    with pytest.raises(ValueError, match="^size: .*odd"): gaussian_window(4)
    with pytest.raises(ValueError, match="^alpha: "): MixLoss(alpha=-0.1)
    w = gaussian_window(11, 1.5, torch.float64)
    assert abs(w.sum().item() - 1) < 1e-12 and w.argmax() == 5


def test_per_image_average_with_unequal_batches():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(9, 3, 20, 20, generator=g)
    sig = torch.tensor([0.005, 0.2, 0.01, 0.05, 0.3, 0.01, 0.02, 0.1, 0.004]).view(-1, 1, 1, 1)
    x = (y + sig * torch.randn(y.shape, generator=g)).clamp(0, 1)
    sizes = [4, 1, 3, 1]
    batches = list(zip(x.split(sizes), y.split(sizes)))
    for metric, fn in ((PSNRMetric(), psnr), (SSIMMetric(), ssim)):
        metric.reset()
        for xb, yb in batches: metric.update(xb, yb)
        per_image = fn(x, y).mean().item()
        batch_means = sum(fn(xb, yb).mean().item() for xb, yb in batches) / len(batches)
        assert metric.count == 9
        assert abs(metric.value - per_image) < 1e-5
        assert abs(batch_means - per_image) > 1e-3     # the unweighted mean of batch means is another number
    # PSNR of the pooled MSE of a batch is another number again
    pooled = 10 * math.log10(1 / mse_per_image(x, y).mean().item())
    assert abs(pooled - psnr(x, y).mean().item()) > 1


def test_metric_clamps_and_names():
    y = torch.rand(3, 3, 16, 16)
    x = y + 0.3
    m = PSNRMetric(); m.update(x, y)
    assert abs(m.value - psnr(x.clamp(0, 1), y).mean().item()) < 1e-5
    m = PSNRMetric(clamp=False); m.update(x, y)
    assert abs(m.value - 20 * math.log10(1 / 0.3)) < 1e-3
    assert PSNRMetric().name == 'psnr' and SSIMMetric().name == 'ssim'
    m = ImageMetric(lambda p, t: (p - t).abs().flatten(1).mean(1), 'mae')
    assert m.value is None
    m.update(x, y); assert m.name == 'mae'


def test_import_needs_no_fastai():
    "psnr, ssim and the losses need torch alone (darknb.restore scores with them); the first metric made imports fastai"
    code = ("import sys, darknb.metrics as m; assert not {'fastai', 'pandas'} & set(sys.modules); "
            "m.psnr(m.torch.ones(3, 16, 16), m.torch.ones(3, 16, 16)); m.SSIMLoss(); assert 'fastai' not in sys.modules; "
            "p = m.PSNRMetric(); from fastai.learner import Metric; assert isinstance(p, Metric) and isinstance(p, m.PSNRMetric)")
    r = subprocess.run([sys.executable, '-W', 'error::FutureWarning', '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert type(PSNRMetric()) is type(PSNRMetric())            # one class per metric, made once


def test_ssim_parameters_are_delegated():
    import inspect
    want = ['data_range', 'win_size', 'sigma', 'K1', 'K2']
    for f in (ssim, SSIMLoss, MixLoss, SSIMMetric): assert all(k in inspect.signature(f).parameters for k in want), f
    y = torch.rand(2, 3, 24, 24); x = (y + 0.1 * torch.randn(y.shape)).clamp(0, 1)
    assert torch.allclose(ssim(x, y, win_size=7, sigma=1.0), ssim_map(x, y, win_size=7, sigma=1.0).flatten(1).mean(1))
    assert torch.allclose(SSIMLoss(win_size=7)(x, y), 1 - ssim(x, y, win_size=7).mean())


def test_fastai_learner_reports_per_image_mean():
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    g = torch.Generator().manual_seed(1)
    def ds(n):
        ys = torch.rand(n, 3, 16, 16, generator=g)
        scale = torch.linspace(0.01, 0.3, n).view(-1, 1, 1, 1)
        return list(zip((ys + scale * torch.randn(ys.shape, generator=g)).clamp(0, 1), ys))
    dls = DataLoaders.from_dsets(ds(8), ds(10), bs=4, device=torch.device('cpu'))   # valid batches: 4, 4, 2
    model = nn.Conv2d(3, 3, 3, padding=1)
    nn.init.dirac_(model.weight); nn.init.zeros_(model.bias)
    learn = Learner(dls, model, loss_func=MixLoss(), metrics=[PSNRMetric(), SSIMMetric()])
    with learn.no_logging(): learn.fit(1, 1e-3)
    _, vp, vs = learn.validate()
    preds, targs = learn.get_preds()
    assert preds.shape == (10, 3, 16, 16)
    assert abs(vp - psnr(preds.clamp(0, 1), targs).mean().item()) < 1e-4
    assert abs(vs - ssim(preds.clamp(0, 1), targs).mean().item()) < 1e-5


@pytest.mark.parametrize("loss", [nn.L1Loss(), nn.MSELoss(), SSIMLoss(), MixLoss(), MixLoss(alpha=0.5)])
def test_losses_decrease_towards_target(loss):
    y = torch.from_numpy(_photo('astronaut')[100:164, 200:264]).permute(2, 0, 1)[None].float()
    far = torch.from_numpy(DISTORTIONS['blur'](_photo('astronaut'))[100:164, 200:264]).permute(2, 0, 1)[None].float()
    far = far + 0.05 * torch.randn(far.shape, generator=torch.Generator().manual_seed(2))
    vals = [loss(y + a * (far - y), y).item() for a in (1., 0.6, 0.3, 0.1, 0.)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    assert abs(vals[-1]) < 1e-6


def test_ssim_loss_gradients():
    g = torch.Generator().manual_seed(3)
    y = torch.rand(2, 3, 32, 32, generator=g)
    x = (y + 0.1 * torch.randn(y.shape, generator=g)).requires_grad_()
    for lf in (SSIMLoss(), MixLoss()):
        x.grad = None
        lf(x, y).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        # a small step against the gradient lowers the loss
        with torch.no_grad(): assert lf(x - 0.5 * x.grad / x.grad.abs().max() * 0.01, y) < lf(x, y)
    # a few steps of gradient descent on the pixels raise SSIM
    x0 = x.detach().clone().requires_grad_()
    opt = torch.optim.Adam([x0], 1e-2)
    before = ssim(x0.detach(), y).mean().item()
    for _ in range(20):
        opt.zero_grad(); l = SSIMLoss()(x0, y); l.backward(); opt.step()
    assert ssim(x0.detach(), y).mean().item() > before + 0.05


def test_mix_loss_is_weighted_sum():
    g = torch.Generator().manual_seed(4)
    y = torch.rand(2, 3, 24, 24, generator=g); x = (y + 0.1 * torch.randn(y.shape, generator=g))
    s, l1 = SSIMLoss()(x, y), F.l1_loss(x, y)
    assert torch.allclose(MixLoss(0.84)(x, y), 0.84 * s + 0.16 * l1)
    assert torch.allclose(MixLoss(0.)(x, y), l1) and torch.allclose(MixLoss(1.)(x, y), s)


def test_ssim_rewards_structure_l1_brightness():
    "At equal MSE, SSIM hardly sees a gain error but sees noise; L1 sees the offset most"
    y = torch.from_numpy(_photo('coffee')[::2, ::2].copy()).permute(2, 0, 1)[None].float()
    target = 2.5e-3
    def tune(f, lo, hi):
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mse_per_image(f(mid), y).item() < target else (lo, mid)
        return f((lo + hi) / 2)
    gen = lambda s: (y + s * torch.randn(y.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    noise, gain, off = tune(gen, 0, 0.2), tune(lambda k: (y * k).clamp(0, 1), 1, 2), tune(lambda d: (y + d).clamp(0, 1), 0, 0.2)
    for x in (noise, gain, off): assert abs(mse_per_image(x, y).item() - target) < 1e-6
    sl = SSIMLoss()
    assert sl(gain, y) < 0.1 * sl(noise, y)
    assert F.l1_loss(off, y) > F.l1_loss(gain, y) and F.l1_loss(off, y) > F.l1_loss(noise, y)
