"Tests of darknb.resnet: block shapes and shortcuts, gradient flow at init, training."
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from darknb.resnet import (conv3x3, conv1x1, lrelu, PlainBlock, ResBlock, make_stack, plain_net, res_net,
                           he_init_, layer_grad_norms, toy_images)


def n_convs(m): return sum(isinstance(l, nn.Conv2d) for l in m.modules())


@pytest.mark.parametrize("ni,nf,stride,hw", [(8, 8, 1, 16), (8, 16, 1, 16), (8, 16, 2, 8), (8, 8, 2, 8)])
@pytest.mark.parametrize("preact", [True, False])
def test_block_shapes(ni, nf, stride, hw, preact):
    x = torch.randn(3, ni, 16, 16)
    for blk in (PlainBlock, ResBlock):
        assert blk(ni, nf, stride, preact=preact)(x).shape == (3, nf, hw, hw)


def test_identity_vs_projection_shortcut():
    b = ResBlock(16, 16)
    assert isinstance(b.shortcut, nn.Identity) and b.is_identity_shortcut
    for ni, nf, stride in [(16, 32, 1), (16, 16, 2), (16, 8, 2)]:
        b = ResBlock(ni, nf, stride)
        assert not b.is_identity_shortcut
        conv = b.shortcut[0]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (stride, stride)
        assert (conv.in_channels, conv.out_channels) == (ni, nf)
    # identity shortcut: the block output minus its branch is exactly the input
    b, x = ResBlock(16, 16), torch.randn(2, 16, 8, 8)
    with torch.no_grad(): assert torch.allclose(b(x) - b.branch(x), x, atol=1e-6)


def test_zero_init_is_identity():
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        assert torch.equal(ResBlock(16, 16, zero_init=True)(x), x)
        assert torch.equal(ResBlock(16, 16, zero_init=True, preact=False)(x), F.leaky_relu(x, 0.2))
        assert not torch.allclose(ResBlock(16, 16)(x), x)
        # a whole stack of zero-initialised blocks is the identity too
        assert torch.equal(make_stack(ResBlock, 5, 16, 16, zero_init=True)(x), x)
        # with a projection the block starts as its projection
        b = ResBlock(16, 32, stride=2, zero_init=True)
        assert torch.allclose(b(x), b.shortcut(x))


def test_configurable_act_and_norm():
    b = ResBlock(8, 16, stride=2, act=nn.ReLU, norm=nn.BatchNorm2d)
    assert sum(isinstance(m, nn.ReLU) for m in b.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in b.modules()) == 3
    assert all(m.bias is None for m in b.modules() if isinstance(m, nn.Conv2d))
    d = ResBlock(8, 8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    with pytest.raises(TypeError, match="act"): ResBlock(8, 8, act=3)
    with pytest.raises(ValueError, match="n >= 1"): make_stack(ResBlock, 0, 8, 8)


def test_nets_same_layers():
    p, r = plain_net(14), res_net(14)
    assert n_convs(p) == n_convs(r) == 30
    assert sum(q.numel() for q in p.parameters()) == sum(q.numel() for q in r.parameters())
    x = torch.rand(2, 4, 20, 20)
    assert res_net(3, c_in=4, c_out=12, nf=8)(x).shape == (2, 12, 20, 20)
    assert plain_net(3, c_in=4, c_out=3, nf=8, preact=False)(x).shape == (2, 3, 20, 20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_reach_first_layer_of_deep_resnet(seed):
    clean = toy_images(16, size=24, seed=seed)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed); gp = layer_grad_norms(plain_net(14), noisy, clean)
    torch.manual_seed(seed); gr = layer_grad_norms(res_net(14), noisy, clean)
    assert len(gp) == len(gr) == 30
    assert gr[0] > 1e3 * gp[0]           # measured at init: the plain net's first layer gets ~nothing
    assert gp[0] < 1e-3 * gp[-1]         # it vanishes along the plain net ...
    assert gr[0] > 1e-2 * gr[-1]         # ... but not along the residual one


def test_he_init_and_zero_init():
    torch.manual_seed(0)
    x = toy_images(8, size=24, seed=3)
    with torch.no_grad():
        big = he_init_(res_net(14))(x).std()
        ok = he_init_(res_net(14, zero_init=True))(x).std()
    assert big > 10 * ok                 # without normalisation, residual variances add up
    z = he_init_(res_net(2, zero_init=True))
    assert all(b.branch[-1].weight.abs().sum() == 0 for b in z.body)


def _train(model, clean, noisy, steps, lr=1e-3, bs=8):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(clean), (bs,))
        loss = F.mse_loss(model(noisy[idx]), clean[idx])
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    return losses


@pytest.fixture
def one_thread():
    "Tiny convolutions: one thread is faster than two when other jobs share the CPU"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_reduces_loss_and_resnet_beats_plain(one_thread):
    clean = toy_images(256, size=16, seed=0)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0); lr_ = _train(res_net(14, nf=8), clean, noisy, 40)
    torch.manual_seed(0); lp = _train(plain_net(14, nf=8), clean, noisy, 40)
    first, last = sum(lr_[:5]) / 5, sum(lr_[-10:]) / 10
    assert last < 0.3 * first
    assert last < 0.5 * sum(lp[-10:]) / 10   # same layers, no shortcut: much worse after the same steps


def test_toy_images():
    a = toy_images(5, size=20, seed=1)
    assert a.shape == (5, 1, 20, 20) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, toy_images(5, size=20, seed=1)) and not torch.equal(a, toy_images(5, size=20, seed=2))
    assert (a.flatten(1).std(1) > 0.05).all()   # not flat images
