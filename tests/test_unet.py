"Tests of `darknb.unet`: parameter counts, shapes at odd sizes, padding, receptive field, cost table, training."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from darknb.unet import *


@pytest.fixture(autouse=True)
def one_thread():
    "Run on one thread: on a shared 2-core machine two threads can be many times slower"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_sid_parameter_count_as_published():
    sid = sid_unet()
    assert param_count(sid) == 7_760_748
    assert [b[0].out_channels for b in sid.encoder] == [32, 64, 128, 256, 512]
    assert sid.head.out_channels == 12 and isinstance(sid.to_space, nn.PixelShuffle)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in sid.modules())
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2
               for m in sid.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.GELU)))
    assert all(isinstance(d, nn.MaxPool2d) for d in sid.downs)
    assert all(isinstance(u, nn.ConvTranspose2d) and u.kernel_size == (2, 2) and u.stride == (2, 2) for u in sid.ups)
    assert param_count(SIDUnet(4, 3, 2, width=32, depth=5)) == 7_760_748


def test_width_and_depth_configurable():
    assert param_count(sid_unet(width=16)) < param_count(sid_unet()) / 3.9   # weights grow as width**2
    n4 = sid_unet(depth=4)
    assert n4.multiple == 8 and len(n4.encoder) == 4 and len(n4.decoder) == 3
    with torch.no_grad():
        assert sid_unet(depth=1, width=8)(torch.rand(1, 4, 5, 3)).shape == (1, 3, 10, 6)


@pytest.mark.parametrize("make", [light_unet, lambda: light_unet(width=32, separable=True)])
def test_light_unet_in_published_light_range(make):
    assert 0.8e6 <= param_count(make()) <= 2.8e6


NETS = {'sid': sid_unet, 'res': res_unet, 'light': light_unet, 'fastai': fastai_unet}

@pytest.mark.parametrize("name", list(NETS))
def test_odd_sizes_bayer_and_xtrans(name):
    torch.manual_seed(0)
    with torch.no_grad():
        bayer, xtrans = NETS[name]('bayer').eval(), NETS[name]('xtrans').eval()
        assert bayer(torch.rand(1, 4, 37, 53)).shape == (1, 3, 74, 106)
        assert xtrans(torch.rand(1, 9, 25, 31)).shape == (1, 3, 75, 93)


def test_xtrans_head_and_tiny_inputs():
    fuji = sid_unet('xtrans')
    assert fuji.in_ch == 9 and fuji.head.out_channels == 27
    with torch.no_grad():
        assert sid_unet()(torch.rand(2, 4, 1, 1)).shape == (2, 3, 2, 2)   # too small to reflect: replicated
        assert fuji(torch.rand(1, 9, 2, 17)).shape == (1, 3, 6, 51)


def test_denoiser_keeps_shape():
    den = raw_denoiser()
    with torch.no_grad():
        x = torch.rand(2, 4, 37, 53)
        assert den(x).shape == x.shape
        assert raw_denoiser(9, width=8)(torch.rand(1, 9, 11, 7)).shape == (1, 9, 11, 7)
    # residual: with the head zeroed the denoiser is the identity
    for p in den.head.parameters(): nn.init.zeros_(p)
    with torch.no_grad(): assert torch.equal(den(x), x)


def test_padding_then_cropping():
    torch.manual_seed(0)
    sid = sid_unet(width=8).eval()
    x = torch.rand(1, 4, 50, 45)
    with torch.no_grad():
        assert torch.allclose(sid(x), sid(F.pad(x, (0, 3, 0, 14), mode='reflect'))[..., :100, :90], atol=1e-5)
    xp, hw = pad_to_multiple(torch.arange(15.).reshape(1, 1, 3, 5), 4)
    assert xp.shape == (1, 1, 4, 8) and hw == (3, 5) and torch.equal(xp[0, 0, 3], xp[0, 0, 1])


def test_clear_errors():
    with pytest.raises(ValueError, match="expected shape N x C x H x W, C = 4, got \\(1, 3, 16, 16\\)"): sid_unet()(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="cfa must be one of"): sid_unet('foveon')
    with pytest.raises(ValueError, match="residual=True needs"): SIDUnet(4, 3, 2, residual=True)
    with pytest.raises(ValueError, match="down must be"): sid_unet(down='pool')


def test_transposed_conv_equals_conv_plus_pixel_shuffle():
    torch.manual_seed(0)
    tconv, shuf = up_layer('tconv', 6, 3), up_layer('shuffle', 6, 3)
    with torch.no_grad():
        shuf[0].weight.copy_(tconv.weight.permute(1, 2, 3, 0).reshape(12, 6, 1, 1))
        shuf[0].bias.copy_(tconv.bias.repeat_interleave(4))
        x = torch.randn(2, 6, 5, 7)
        assert torch.allclose(shuf(x), tconv(x), atol=1e-5)


def test_receptive_field_exact_matches_measurement():
    torch.manual_seed(0)
    exact = unet_receptive_field(4)
    net = sid_unet(width=4, depth=4, down='avgpool')
    for p in [0, 3, 7]:
        q = 2 * (64 + p)
        assert empirical_receptive_field(net, 128, pos=(q, q)) == (exact[p], exact[p])
    with pytest.raises(ValueError, match="reaches the border"): empirical_receptive_field(net, 64)


def test_cost_table():
    torch.manual_seed(0)
    sid, light = sid_unet(), light_unet()
    t = model_table({'sid': sid, 'light': light}, size=32, repeats=1)
    assert list(t.index) == ['sid', 'light']
    assert t.loc['sid', 'params'] == 7_760_748 and t.loc['light', 'params'] == param_count(light)
    assert t.loc['light', 'GFLOP/MP'] < t.loc['sid', 'GFLOP/MP'] / 3.5
    assert (t['CPU s/MP'] > 0).all()
    # SID works at packed resolution: its FLOPs per output pixel do not depend on the input size
    assert abs(model_table({'sid': sid}, size=16, repeats=1).loc['sid', 'GFLOP/MP'] - t.loc['sid', 'GFLOP/MP']) < 1e-6
    assert count_flops(nn.Conv2d(4, 8, 3, padding=1), torch.zeros(1, 4, 10, 10)) == 2 * 4 * 8 * 9 * 100


def test_toy_pair():
    x, y = toy_pair()
    assert x.shape == (2, 4, 16, 16) and y.shape == (2, 3, 32, 32)
    _, clean = toy_pair(target='raw')
    assert torch.equal(clean[:, 0], y[:, 0, ::2, ::2]) and torch.equal(clean[:, 2], y[:, 2, 1::2, 1::2])
    xf, yf = toy_pair('xtrans')
    assert xf.shape == (2, 9, 16, 16) and yf.shape == (2, 3, 48, 48)


TRAIN = {'sid': (sid_unet, 'bayer'), 'sid_xtrans': (lambda: sid_unet('xtrans'), 'xtrans'),
         'res': (res_unet, 'bayer'), 'light': (light_unet, 'bayer'),
         'light_sep': (lambda: light_unet(width=32, separable=True), 'bayer'),
         'denoiser': (raw_denoiser, 'raw'), 'fastai': (fastai_unet, 'bayer')}

@pytest.mark.parametrize("name", list(TRAIN))
def test_every_network_trains(name):
    make, data = TRAIN[name]
    torch.manual_seed(0)
    xb, yb = toy_pair('xtrans') if data == 'xtrans' else toy_pair(target='raw' if data == 'raw' else 'rgb')
    losses = overfit_batch(make(), xb, yb, steps=25)
    assert len(losses) == 25
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses


def test_every_network_keeps_the_contract():
    "Each registered factory declares its task and input; the network it builds states them in its `spec`."
    for name, f in ARCHS.items():
        for in_ch in (4, 9):
            net = build_model(name, in_ch=in_ch, width=4, depth=2)
            s = net_spec(net)
            assert (s.task, s.in_ch) == (f.task, in_ch) and s.multiple == 2 and s.reach % s.multiple == 0
            with torch.no_grad(): y = net(torch.rand(1, in_ch, 10, 14))
            assert y.shape[1:] == (s.out_ch, 10*s.scale, 14*s.scale)
    with pytest.raises(ValueError, match='4 \\(Bayer\\) or 9'): build_model('sid', in_ch=3)
    assert net_spec(nn.Conv2d(4, 4, 3, padding=1)) == NetSpec('raw', 4, 4)   # a foreign network: measured

def test_damaged_model_files_are_refused_before_building(tmp_path):
    net = raw_denoiser(width=4, depth=2)
    for kw, msg in [(dict(width=4, depth=2, colour='blue'), 'build no network'), (dict(width=-3), 'build no network')]:
        f = save_model(tmp_path/'m.pth', net, 'denoiser', kw, overwrite=True)
        with pytest.raises(ModelError, match=msg): load_model(f)
    ck = torch.load(f, weights_only=True); del ck['arch_kwargs']; torch.save(ck, tmp_path/'no-kwargs.pth')
    with pytest.raises(ModelError, match='damaged model file'): load_model(tmp_path/'no-kwargs.pth')
    (tmp_path/'empty.pth').touch()
    with pytest.raises(ModelError, match='empty file'): load_model(tmp_path/'empty.pth')
