"Tests of `darknb.noise`: noise statistics, calibration, synthesis, profiles and unprocessing."
import json, math
from pathlib import Path
import numpy as np, pytest, rawpy, tifffile, torch
from scipy import stats
from darknb.raw import (DarknbError, sample_dng, describe, open_raw, raw_mosaic, pattern_from_str, sample_scene, data_dir,
                        mosaic_from_srgb, write_dng)
from darknb.noise import *
from darknb.noise import _planes

def test_tukey_lambda_variance_and_samples():
    for lam in (0.14, 0.0, -0.12):
        assert tukey_lambda_var(lam) == pytest.approx(stats.tukeylambda.var(lam), rel=1e-6)
        x = sample_tukey_lambda(1_000_000, lam, scale=1.7, rng=2, dtype=torch.float64)
        assert abs(x.mean().item()) < 5*math.sqrt(1.7**2*tukey_lambda_var(lam)/1e6)
        assert x.var().item() == pytest.approx(1.7**2*tukey_lambda_var(lam), rel=0.04)
        # the shape too: quantiles match scipy's
        q = np.quantile(x.numpy()/1.7, [0.001, 0.1, 0.5, 0.9, 0.999])
        np.testing.assert_allclose(q, stats.tukeylambda.ppf([0.001, 0.1, 0.5, 0.9, 0.999], lam), rtol=0.03, atol=0.02)

@pytest.mark.parametrize('mu', [0.0, 3.0, 250.0])
def test_poisson_gaussian_mean_variance(mu):
    K, s = 1.3, 2.2
    y = poisson_gaussian(torch.full((600, 600), mu, dtype=torch.float64), K, s, rng=0)
    n = y.numel()
    assert abs(y.mean().item() - mu) < 5*math.sqrt((K*mu + s*s)/n)
    assert y.var().item() == pytest.approx(K*mu + s*s, rel=0.02)

def test_add_noise_mean_variance_and_rows():
    prof = NoiseProfile(K=0.8, read_scale=1.5, tukey_lambda=-0.05, row_scale=2.0, q_step=1.0)
    H, W = 400, 300
    for mu in (0.0, 40.0, 900.0):
        y = add_noise(torch.full((6, H, W), mu, dtype=torch.float64), prof, rng=4)
        assert y.mean().item() == pytest.approx(mu, abs=0.05 + 0.001*mu)
        assert y.var().item() == pytest.approx(prof.variance(mu), rel=0.04)
        pix_var = prof.variance(mu) - prof.row_scale**2
        assert y.mean(-1).var().item() == pytest.approx(prof.row_scale**2 + pix_var/W, rel=0.12)
    # numpy in, numpy out, normalised units
    yn = add_noise(np.full((200, 200), 0.02), prof, rng=0, dn_per_unit=1000.)
    assert isinstance(yn, np.ndarray) and yn.mean() == pytest.approx(0.02, abs=0.001)

def test_add_noise_packed_rows_and_offsets():
    prof = NoiseProfile(K=1.0, read_scale=1e-6, row_scale=4.0, black_offset=[3., 0., -3., 0.])
    y = add_noise(torch.full((4, 300, 80), 50.), prof, rng=1, packed=True, quantize=False)
    r = y.mean(-1) - 50 - torch.tensor([3., 0., -3., 0.])[:, None]
    assert torch.corrcoef(r[[0, 1]])[0, 1] > 0.9 and torch.corrcoef(r[[2, 3]])[0, 1] > 0.9
    assert abs(torch.corrcoef(r[[0, 2]])[0, 1]) < 0.3
    with pytest.raises(ValueError): add_noise(torch.zeros(3, 8, 8), prof, packed=True)
    with pytest.raises(ValueError, match='pattern'): add_noise(torch.zeros(8, 8), prof)

def test_calibrate_recovers_generated_parameters():
    truth = NoiseProfile(K=1.2, read_scale=2.0, tukey_lambda=0.05, row_scale=1.0, black_offset=[0.5, 0., 0., -0.5])
    sim = simulate_series(truth, light_ms=(10, 20, 40, 80), dark_ms=(1, 2, 3, 4, 5, 6), shape=(256, 512), rate=40.,
                          black=256, white=4095, pattern='BGGR', rng=7)
    cal = calibrate(list(sim['dark'].values()), list(sim['light'].values()), pattern=sim['pattern'], white=4095)
    assert cal.K == pytest.approx(truth.K, rel=0.03)
    assert cal.read_std == pytest.approx(truth.read_std, rel=0.03)
    assert cal.row_scale == pytest.approx(truth.row_scale, rel=0.08)
    assert cal.tukey_lambda == pytest.approx(truth.tukey_lambda, abs=0.05)
    np.testing.assert_allclose(cal.black_level, [256.5, 256, 256, 255.5], atol=0.15)
    assert cal.white_level == 4095

def test_calibrate_errors():
    with pytest.raises(NoiseError, match='none given'): calibrate([])
    with pytest.raises(NoiseError, match='differ in size'): calibrate([np.zeros((8, 8)), np.zeros((10, 8))])
    with pytest.raises(NoiseError, match='unclipped'):   # flats clipped everywhere
        dark = (10 + np.random.default_rng(0).normal(0, 2, (64, 64))).round().astype(np.uint16)
        calibrate([dark], [np.full((64, 64), 4095, np.uint16)]*2, white=4095)
    with pytest.raises(NoiseError, match='every pixel is 10'):   # a constant frame is no dark frame
        calibrate([np.full((64, 64), 10, np.uint16)], white=4095)

def test_profile_json_round_trip_and_missing_keys(tmp_path):
    p = SONY_A7S2(1600)
    f = tmp_path/'sony.json'
    p.to_json(f)
    assert NoiseProfile.from_json(f) == p
    with pytest.raises(FileExistsError): p.to_json(f)
    d = json.loads(f.read_text()); del d['K']; del d['row_scale']
    (tmp_path/'bad.json').write_text(json.dumps(d))
    with pytest.raises(NoiseError) as e: NoiseProfile.from_json(tmp_path/'bad.json')
    assert 'bad.json' in str(e.value) and 'K' in str(e.value) and 'row_scale' in str(e.value)
    assert '\n' not in str(e.value) and isinstance(e.value, DarknbError)
    (tmp_path/'notjson.json').write_text('K = 1')
    with pytest.raises(NoiseError, match='not valid JSON'): NoiseProfile.from_json(tmp_path/'notjson.json')

def test_sony_profile_and_virtual_cameras():
    p = SONY_A7S2(800)
    assert p.K == pytest.approx(9.6e-4*800)
    assert math.log(p.row_scale) == pytest.approx(0.528*math.log(p.K) - 0.592)
    ps = [random_profile(s) for s in range(1500)]
    lk = np.log([q.K for q in ps])
    assert lk.min() >= math.log(0.1) - 1e-9 and lk.max() <= math.log(30) + 1e-9
    assert stats.kstest((lk - math.log(0.1))/(math.log(30) - math.log(0.1)), 'uniform').pvalue > 1e-3
    res = np.log([q.row_scale for q in ps]) - (0.528*lk - 0.592)
    assert res.std() == pytest.approx(0.294, rel=0.08)

def test_synth_dark_has_one_rth_of_the_signal():
    info = describe(sample_dng()); pat = np.array(info.raw_pattern)
    with open_raw(sample_dng()) as raw: clean = raw_mosaic(raw)
    for ratio in (50, 200):
        dk = synth_dark(clean, pat, info.black_levels, info.white_level, ratio, SONY_A7S2(1600), rng=ratio)
        assert dk.dtype == np.uint16 and dk.shape == clean.shape and dk.max() <= info.white_level
        sig_c, sig_d = clean.astype(float) - 512, dk.astype(float) - 512
        assert sig_d.mean() == pytest.approx(sig_c.mean()/ratio, rel=0.03)
    with pytest.raises(NoiseError): synth_dark(clean, pat, info.black_levels, info.white_level, 0.2, SONY_A7S2(100))

def test_synth_cmd_writes_dngs_libraw_reads(tmp_path, capsys):
    src = sample_dng('rocket', 'GRBG')
    assert synth_cmd(str(src), ratio=100, out=str(tmp_path), seed=3) == 0
    dark, ref = tmp_path/f'{src.stem}_x100.dng', tmp_path/f'{src.stem}_ref.dng'
    s, d, r = describe(src), describe(dark), describe(ref)
    for k in ('pattern', 'black_levels', 'white_level', 'cfa', 'orientation', 'iso'):
        assert getattr(d, k) == getattr(s, k) == getattr(r, k)
    np.testing.assert_allclose(d.wb, s.wb, rtol=1e-4)
    np.testing.assert_allclose(d.color_matrix, s.color_matrix, atol=1e-4)   # same colours
    assert d.exposure_time == pytest.approx(s.exposure_time/100, rel=1e-4)
    with rawpy.imread(str(dark)) as a, rawpy.imread(str(src)) as b, rawpy.imread(str(ref)) as c:
        np.testing.assert_array_equal(c.raw_image_visible, b.raw_image_visible)
        ratio = (b.raw_image_visible.astype(float) - 512).mean()/(a.raw_image_visible.astype(float) - 512).mean()
        assert ratio == pytest.approx(100, rel=0.03)
    rec = json.loads((tmp_path/f'{src.stem}_x100.json').read_text())
    assert rec['ratio'] == 100 and rec['seed'] == 3
    with pytest.raises(FileExistsError): synth_cmd(str(src), ratio=100, out=str(tmp_path))
    assert synth_cmd(str(src), ratio=100, out=str(tmp_path), force=True) == 0
    (tmp_path/'p.json').write_text('{"K": 2}')
    with pytest.raises(NoiseError, match='missing keys'): synth_cmd(str(src), ratio=10, profile=str(tmp_path/'p.json'), out=str(tmp_path/'o'))
    with pytest.raises(DarknbError, match='nothing.dng'): synth_cmd(str(tmp_path/'nothing.dng'), ratio=10, out=str(tmp_path/'o'))

def test_synth_cmd_makes_its_folder_and_refuses_before_writing(tmp_path, capsys):
    src = sample_dng('rocket', 'GRBG')
    out = tmp_path/'new'/'pairs'
    assert synth_cmd(str(src), ratio=20, out=str(out)) == 0       # the folder is created
    (out/f'{src.stem}_x20.dng').unlink()
    with pytest.raises(FileExistsError, match='_ref.dng'): synth_cmd(str(src), ratio=20, out=str(out))
    assert not (out/f'{src.stem}_x20.dng').exists()               # nothing written
    with pytest.raises(NotADirectoryError): synth_cmd(str(src), out='/dev/null/x')   # an OSError: the CLI says it in one line

def test_command_checkers_refuse_bad_values():
    arg = lambda f, k: eval(f.__annotations__[k], f.__globals__)
    for f, k, bad in ((synth_cmd, 'ratio', 'inf'), (synth_cmd, 'ratio', '0.5'), (synth_cmd, 'camera', 'nikon'),
                      (synth_cmd, 'seed', '1.5'), (calibrate_cmd, 'white', '-5'), (calibrate_cmd, 'white', 'nan')):
        with pytest.raises(ValueError): arg(f, k)(bad)
    assert arg(synth_cmd, 'camera')('sony-a7s2') == 'sony-a7s2' and arg(calibrate_cmd, 'white')('4095') == 4095
    assert getattr(synth_cmd, 'darknb_command', False) and getattr(calibrate_cmd, 'darknb_command', False)

def test_camera_profile_on_another_bit_depth():
    "One rule: the same electrons per full scale; normalised noise does not depend on the bit depth."
    assert CAMERAS['sony-a7s2'] is SONY_A7S2 and SONY_A7S2.span == 15871
    flat = torch.full((256, 256), 0.002, dtype=torch.float64)
    sd = lambda p, span: add_noise(flat, p, rng=0, dn_per_unit=span).std().item()
    s14, s12 = sd(SONY_A7S2(1600), 15871), sd(SONY_A7S2.for_span(1600, 3839), 3839)
    assert s12 == pytest.approx(s14, rel=0.05) and sd(SONY_A7S2(1600), 3839) > 2*s14
    p = SONY_A7S2.for_span(1600, 3839)
    assert p.K == pytest.approx(SONY_A7S2(1600).K*3839/15871) and p.q_step == 1
    assert SONY_A7S2.for_span(1600, 15871) == SONY_A7S2(1600) == SONY_A7S2.for_span(1600)
    assert random_profile(4, span=3839).row_scale == pytest.approx(random_profile(4).row_scale*3839/15871)

def test_synth_cmd_uses_the_rule_on_a_12_bit_file(tmp_path, capsys):
    pat = pattern_from_str('RGGB')
    m = mosaic_from_srgb(sample_scene('rocket')[:128, :192], pat, black=256, white=4095)
    src = write_dng(tmp_path/'twelve.dng', m, pat, [256]*4, 4095, wb=(2.0, 1.0, 1.6), iso=1600, exposure_time=0.1)
    synth_cmd(str(src), ratio=10, out=str(tmp_path/'o'))
    rec = json.loads((tmp_path/'o'/'twelve_x10.json').read_text())
    assert rec['camera'] == 'sony-a7s2'
    assert rec['profile']['K'] == pytest.approx(SONY_A7S2(1600).K*(4095-256)/15871)

def test_calibrate_cmd_tiffs(tmp_path, capsys):
    truth = NoiseProfile(K=0.5, read_scale=1.2, row_scale=0.5)
    sim = simulate_series(truth, light_ms=(10, 20, 40), dark_ms=(1, 2, 3), shape=(128, 256), rate=60., black=64, white=4095, rng=1)
    darks = []
    for t, a in sim['dark'].items(): tifffile.imwrite(tmp_path/f'd{t}.tif', a.astype(np.uint16)); darks.append(tmp_path/f'd{t}.tif')
    flats = []
    for t, a in sim['light'].items(): tifffile.imwrite(tmp_path/f's_{t}ms.tif', a.astype(np.uint16)); flats.append(tmp_path/f's_{t}ms.tif')
    out = tmp_path/'p.json'
    assert calibrate_cmd(darks, flats=flats, out=str(out), pattern='GBRG', white=4095) == 0
    p = NoiseProfile.from_json(out)
    assert p.K == pytest.approx(0.5, rel=0.05)
    assert 'written' in capsys.readouterr().out
    before = out.read_text()
    with pytest.raises(FileExistsError): calibrate_cmd(darks, flats=flats, out=str(out))
    assert out.read_text() == before
    (tmp_path/'junk.tif').write_bytes(b'not a tiff at all')
    with pytest.raises(NoiseError, match='junk.tif'): calibrate_cmd([tmp_path/'junk.tif'], out=str(tmp_path/'q.json'))
    tifffile.imwrite(tmp_path/'rgb.tif', np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(NoiseError, match='rgb.tif'): calibrate_cmd([tmp_path/'rgb.tif'], out=str(tmp_path/'q.json'))
    assert not (tmp_path/'q.json').exists()

@pytest.mark.skipif(flea3_series() is None, reason='real Flea3 data absent')
def test_calibrate_real_flea3():
    s = flea3_series()
    assert set(s['dark']) and set(s['light']) and s['white'] == 255
    p = calibrate(list(s['dark'].values()), list(s['light'].values()), pattern=s['pattern'], white=255)
    assert p.K > 0 and p.read_std >= 0
    pts = mean_variance_points(list(s['light'].values()), s['pattern'], p.black_level, 255)
    # the line fits: in each mean bin of the green and blue blocks, the median variance is within 20 % of K·mean + R
    ok = np.isin(pts['chan'], [1, 2, 3])
    x, y = pts['x'][ok], pts['y'][ok]
    edges = np.percentile(x, [0, 20, 40, 60, 80, 100])
    line = lambda v: p.K*v + p.fit['intercept']
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (x >= lo) & (x <= hi)
        assert np.median(y[m]/line(x[m])) == pytest.approx(1, abs=0.2), (lo, hi)
    # the channels that have signal agree on the gain
    ks = [v['K'] for v in p.fit['per_channel'].values()]
    assert len(ks) >= 3 and max(ks)/min(ks) < 1.3

def test_unprocess_inverts_the_pipeline():
    img = sample_scene('coffee')[:200:2, :300:2]
    lin, meta = unprocess(img, rng=11, mosaic=False)
    gains = np.array([1/meta['red_gain'], 1, 1/meta['blue_gain']])/meta['rgb_gain']
    ok = ((lin/gains).mean(-1) < 0.85) & (lin.max(-1) < 0.999) & (lin.min(-1) > 0) & (img.max(-1) < 0.99) & (img.min(-1) > 0.01)
    assert ok.mean() > 0.3
    fwd = np.clip((lin/gains) @ meta['cam2rgb'].T, 0, 1)**(1/2.2)
    fwd = 3*fwd**2 - 2*fwd**3
    np.testing.assert_allclose(fwd[ok], img[ok], atol=2e-3)
    assert 1.9 <= meta['red_gain'] <= 2.4 and 1.5 <= meta['blue_gain'] <= 1.9
    mos, meta2 = unprocess(img, rng=11, pattern='BGGR')
    assert mos.shape == (100, 150) and mos.dtype == np.float32 and 0 <= mos.min() and mos.max() <= 1
    np.testing.assert_allclose(mos[1::2, 1::2], lin[1::2, 1::2, 0], atol=1e-6)   # BGGR: red at (1, 1)
    shots, reads = np.array([random_noise_levels(i) for i in range(2000)]).T
    assert shots.min() >= 1e-4 and shots.max() <= 0.012
    assert np.std(np.log(reads) - 2.18*np.log(shots) - 1.20) == pytest.approx(0.26, rel=0.08)
