"Tests of `darknb.restore`: seamless tiles, the fast path, the automatic ratio, the outputs and `enhance_cmd` on good and bad inputs."
import hashlib, math, os, subprocess, sys, shutil
from pathlib import Path
import numpy as np
import pytest, torch, rawpy, png, tifffile

from darknb.raw import (XTRANS_PATTERN, pack_raw, sample_dng, describe, open_raw, raw_mosaic, normalize, pack_mosaic, write_dng, data_dir,
                        mosaic_from_srgb, pattern_from_str, sample_scene, srgb_from_camera, SCENES)
from darknb.noise import synth_dark, SONY_A7S2
from darknb.raw import cam_xyz_matrix
from darknb.sid import SyntheticPairs, eld_noise
from darknb.unet import sid_unet, light_unet, res_unet, raw_denoiser, save_model, net_spec, unet_reach, default_model_path
from darknb.cli import main
from darknb import restore as R
from darknb.restore import (tile_grid, tiled_apply, FastNet, estimate_ratio, apply_orientation,
                            restore_file, save_restored, restore_demo, output_paths, check_ratio, RestoreError)

torch.set_num_threads(1)   # the test suite runs beside other jobs on 2 cores: two threads each would fight

# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "Small model files: an untrained RAW denoiser, one trained for a moment, an sRGB U-Net and an X-Trans (9-channel) denoiser."
    d = tmp_path_factory.mktemp('models')
    torch.manual_seed(0)
    out = dict(raw=save_model(d/'raw.pth', raw_denoiser(width=8, depth=3), 'denoiser', dict(width=8, depth=3)),
               srgb=save_model(d/'srgb.pth', light_unet(width=8, depth=3), 'light', dict(width=8, depth=3)),
               xtrans=save_model(d/'xtrans.pth', raw_denoiser(in_ch=9, width=8, depth=3), 'denoiser', dict(in_ch=9, width=8, depth=3)))
    # a briefly trained one: training is what makes a U-Net use its whole receptive field (and tiles show seams)
    noise = lambda c, r, rng, span: eld_noise(c, r, rng, span, iso=1600)
    ds = SyntheticPairs([sample_dng('coffee')], task='raw', patch=48, noise=noise, length=240, train=False, seed=0)
    net = raw_denoiser(width=8, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for i in range(30):
        xb, yb = map(torch.stack, zip(*[ds[i*8+k] for k in range(8)]))
        loss = (net(xb)-yb).abs().mean(); opt.zero_grad(); loss.backward(); opt.step()
    out['trained'] = save_model(d/'trained.pth', net.eval(), 'denoiser', dict(width=8, depth=3))
    return out

def make_dark(path, scene='coffee', pattern='RGGB', ratio=100, iso=1600, seed=0, orientation=0, size=None):
    "Write a dark DNG made with the noise model from a generated scene; its clean mosaic too."
    img = sample_scene(scene)
    if size: img = img[:size[0], :size[1]]
    pat = pattern_from_str(pattern)
    clean = mosaic_from_srgb(img, pat)
    dark = synth_dark(clean, pat, [512]*4, 16383, ratio, SONY_A7S2(iso), seed)
    write_dng(path, dark, pat, [512]*4, 16383, wb=(2.0, 1.0, 1.6), rgb_xyz_matrix=cam_xyz_matrix(describe(sample_dng(scene))),
              exposure_time=0.001, iso=iso, orientation=orientation, overwrite=True)
    return Path(path), clean

def digest(folder): return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in Path(folder).iterdir() if p.is_file()}

def leftovers(folder): return [p.name for p in Path(folder).rglob('*') if 'darknb-tmp' in p.name]

# ---------------------------------------------------------------- tiles

def test_tile_grid_covers_aligned_and_overlapping():
    rng = np.random.default_rng(0)
    for _ in range(300):
        align = int(rng.choice([1, 2, 4, 16]))
        n = int(rng.integers(1, 200))*align
        tile = int(rng.integers(2, 80))*align
        overlap = int(rng.integers(0, tile-align+1))
        starts, size = tile_grid(n, tile, overlap, align)
        assert starts[0] == 0 and starts[-1]+size == n and size <= max(tile, n if n <= tile else 0)
        if len(starts) > 1:
            assert all(s % align == 0 for s in starts) and size % align == 0
            assert all(b-a <= size-overlap for a, b in zip(starts, starts[1:]))

def test_tiles_never_exceed_the_tile_size():
    "Memory is bounded by the tile: the network never sees more than `tile` x `tile` pixels, however large the image."
    seen = []
    def fn(t): seen.append(tuple(t.shape[-2:])); return t*2
    x = torch.rand(1, 4, 700, 1100)
    y = tiled_apply(fn, x, tile=256, margin=24, align=16)
    assert max(max(s) for s in seen) <= 256 and len(set(seen)) == 1
    torch.testing.assert_close(y, x*2)

@pytest.mark.parametrize('make', [sid_unet, light_unet, res_unet, raw_denoiser])
def test_tiled_equals_whole_image_for_real_unets(make):
    torch.manual_seed(0)
    net = make().eval()
    m = net_spec(net).reach
    assert m >= unet_reach(net.depth) and m % net.multiple == 0
    x = torch.rand(1, 4, 150, 410)   # neither side a multiple of 16: padded like the whole image
    with torch.inference_mode():
        whole = net(x)
        tiled = tiled_apply(net, x, tile=2*m+96, margin=m, scale=net.scale, align=net.multiple)
    assert tiled.shape == whole.shape
    assert (tiled-whole).abs().max() < 1e-3

def test_trained_unet_seams_without_overlap_none_with_margin(models):
    net = R.load_model(models['trained'])[0]
    clean, _ = pack_raw(sample_dng('motorcycle'))
    x = torch.from_numpy(clean)[None]
    m = net_spec(net).reach
    with torch.inference_mode():
        whole = net(x)
        naive = tiled_apply(net, x, tile=64, overlap=0, align=net.multiple)
        tiled = tiled_apply(net, x, tile=64+2*m, margin=m, align=net.multiple)
    assert (naive-whole).abs().max() > 1e-2    # seams: the test can fail
    assert (tiled-whole).abs().max() < 1e-3

def test_fastnet_matches_float32_and_tiles_are_seamless():
    torch.manual_seed(0)
    net = light_unet().eval()
    x = torch.rand(1, 4, 200, 300)
    with torch.no_grad(): ref = net(x)
    fast = FastNet(net)
    whole = fast(x)
    tiled = R.fast_forward(fast, x, tile=2*fast.margin+64)
    rng_ = (ref.max()-ref.min()).item()
    for y in (whole, tiled):
        assert y.dtype == torch.float32 and y.shape == ref.shape
        psnr = 10*math.log10(rng_**2/((y-ref)**2).mean().item())
        assert psnr > 40, psnr
    assert (tiled-whole).abs().max() < 5e-3

# ---------------------------------------------------------------- automatic ratio

def test_auto_ratio_within_a_factor_2_on_generated_frames():
    "Stated tolerance: on whole generated frames (six scenes, ratio 100 and 300, ISO 800 and 3200) within a factor 2."
    rng = np.random.default_rng(0)
    factors = []
    for s in SCENES:
        info = describe(sample_dng(s)); pat = np.asarray(info.raw_pattern)
        with open_raw(sample_dng(s)) as raw: clean = raw_mosaic(raw)
        for ratio in (100, 300):
            for iso in (800, 3200):
                d = synth_dark(clean, pat, info.black_levels, info.white_level, ratio, SONY_A7S2(iso), rng)
                est = estimate_ratio(pack_mosaic(normalize(d, pat, info.black_levels, info.white_level, clip=False), pat), hi=1e6)
                factors.append(max(est/ratio, ratio/est))
    assert max(factors) <= 2, factors
    assert np.median(factors) < 1.5

def test_auto_ratio_edges():
    assert estimate_ratio(np.zeros((4, 32, 32))) == 300
    assert estimate_ratio(np.full((4, 32, 32), 0.8)) == 1
    mosaic = np.full((64, 64), 0.001, np.float32)
    assert estimate_ratio(mosaic) == pytest.approx(estimate_ratio(np.full((4, 32, 32), 0.001)))
    with pytest.raises(ValueError, match='finite'): estimate_ratio(np.full((4, 16, 16), np.inf))
    assert check_ratio('auto') == 'auto' and check_ratio('250') == 250
    for bad in ('abc', 0.5, 'nan', None):
        with pytest.raises(ValueError): check_ratio(bad)


def enhance_cmd(inputs, out, fmt=None, **opts)->int:
    "`darknb enhance INPUTS -o OUT --OPTION VALUE...` through the real command line: its exit status."
    argv = ['enhance', *map(str, inputs), '-o', str(out)] + (['--format', fmt] if fmt else [])
    for k,v in opts.items(): argv += [f'--{k}'] if v is True else [] if v is False else [f'--{k}', str(v)]
    try: return main(argv)
    except SystemExit as e: return e.code

# ---------------------------------------------------------------- outputs

def test_orientation_agrees_with_libraw(tmp_path):
    mos = mosaic_from_srgb(sample_scene('chelsea')[:60, :90], pattern_from_str('RGGB'))
    for flip in (0, 3, 5, 6):
        d = write_dng(tmp_path/f'f{flip}.dng', mos, pattern_from_str('RGGB'), [512]*4, 16383, orientation=flip)
        with rawpy.imread(str(d)) as raw:
            upright, stored = raw.postprocess(half_size=True), raw.postprocess(half_size=True, user_flip=0)
        np.testing.assert_array_equal(upright, apply_orientation(stored, flip))

def test_dng_keeps_the_original_metadata(tmp_path, models):
    src, _ = make_dark(tmp_path/'dark.dng', 'astronaut', 'GBRG', orientation=6)
    net = FastNet(R.load_model(models['raw'])[0])
    res = restore_file(src, net, ratio=100)
    out = save_restored(res, tmp_path/'out.dng', 'dng')
    a, b = describe(src), describe(out)
    for k in ('cfa', 'pattern', 'raw_pattern', 'black_levels', 'white_level', 'orientation', 'iso', 'width', 'height'):
        assert getattr(b, k) == getattr(a, k), k
    np.testing.assert_allclose(b.wb, a.wb, rtol=1e-4)
    np.testing.assert_allclose(srgb_from_camera(b.rgb_xyz_matrix, b.color_matrix), srgb_from_camera(a.rgb_xyz_matrix, a.color_matrix), atol=2e-3)
    assert b.exposure_time == pytest.approx(a.exposure_time*100, rel=1e-5)
    with open_raw(out) as raw: np.testing.assert_array_equal(raw.raw_image_visible, res.dn())
    # the restored mosaic is the network's output, unpacked in the file's own phase
    np.testing.assert_allclose(pack_mosaic(normalize(res.dn(), np.asarray(a.raw_pattern), a.black_levels, a.white_level), np.asarray(a.raw_pattern)),
                               res.output, atol=1/(16383-512))

@pytest.mark.skipif(data_dir('raw') is None, reason='no real RAW files here')
def test_dng_of_a_real_camera_file(tmp_path, models):
    src = data_dir('raw')/'RAW_KODAK_DC50.KDC'
    if not src.exists(): pytest.skip('RAW_KODAK_DC50.KDC not in the test data')
    net = FastNet(R.load_model(models['raw'])[0])
    res = restore_file(src, net, ratio=2)
    out = save_restored(res, tmp_path/'kodak.dng', 'dng')
    a, b = describe(src), describe(out)
    for k in ('pattern', 'black_levels', 'white_level', 'orientation', 'width', 'height'): assert getattr(b, k) == getattr(a, k), k
    np.testing.assert_allclose(srgb_from_camera(b.rgb_xyz_matrix, b.color_matrix), srgb_from_camera(a.rgb_xyz_matrix, a.color_matrix), atol=2e-3)
    assert b.exposure_time == pytest.approx(a.exposure_time*2, rel=1e-5)

def test_png_and_tiff_are_upright_16_bit_srgb(tmp_path, models):
    src, _ = make_dark(tmp_path/'dark.dng', 'coffee', orientation=6, size=(181, 243))   # odd sizes: an incomplete Bayer tile
    info = describe(src)
    rc = enhance_cmd([src], tmp_path/'out', ratio=100, model=models['raw'])
    assert rc == 0
    rc = enhance_cmd([src], tmp_path/'out', ratio=100, model=models['raw'], fmt='tiff')
    assert rc == 0
    w, h, rows, meta = png.Reader(filename=str(tmp_path/'out'/'dark_restored.png')).asDirect()
    assert (w, h, meta['bitdepth'], meta['planes']) == (info.height, info.width, 16, 3)
    img = np.vstack(list(rows)).reshape(h, w, 3)
    np.testing.assert_array_equal(tifffile.imread(tmp_path/'out'/'dark_restored.tif'), img)
    res = restore_file(src, FastNet(R.load_model(models['raw'])[0]), ratio=100)
    np.testing.assert_array_equal(img, R.to_uint16(apply_orientation(res.srgb(upright=False), 6)))
    assert enhance_cmd([src], tmp_path/'d', ratio=100, model=models['raw'], fmt='dng') == 0
    assert describe(tmp_path/'d'/'dark_restored.dng').width == info.width     # the odd column is kept

def test_srgb_model_writes_its_output(tmp_path, models):
    src, _ = make_dark(tmp_path/'dark.dng')
    assert enhance_cmd([src], tmp_path/'out', model=models['srgb']) == 0
    w, h, *_ = png.Reader(filename=str(tmp_path/'out'/'dark_restored.png')).read()
    assert (h, w) == (describe(src).height, describe(src).width)
    assert enhance_cmd([src], tmp_path/'o2', model=models['srgb'], fmt='dng') == 1     # a DNG needs a RAW model
    assert not (tmp_path/'o2').exists()

def test_xtrans_needs_a_9_channel_model(tmp_path, models, capsys):
    m = mosaic_from_srgb(sample_scene('coffee')[:120, :180], XTRANS_PATTERN, exposure=1/50)
    src = write_dng(tmp_path/'xt.dng', m, XTRANS_PATTERN, [512]*4, 16383, wb=(2, 1, 1.6), exposure_time=0.01)
    assert enhance_cmd([src], tmp_path/'a', model=models['raw']) == 1
    assert 'xtrans mosaic packs into 9 channels, but the model takes 4' in capsys.readouterr().err
    assert enhance_cmd([src], tmp_path/'b', model=models['xtrans']) == 0
    assert enhance_cmd([src], tmp_path/'b', model=models['xtrans'], fmt='dng') == 0
    assert describe(tmp_path/'b'/'xt_restored.dng').pattern == describe(src).pattern
    assert png.Reader(filename=str(tmp_path/'b'/'xt_restored.png')).read()[:2] == (180, 120)

def test_compare_slider():
    a, b = np.zeros((20, 30, 3)), np.ones((20, 30, 3))
    w = R.compare_slider(a, b)
    pytest.importorskip('ipywidgets')
    first = w.children[2].value
    w.children[1].value = 0.9
    assert w.children[2].value != first
    with pytest.raises(ValueError): R.compare_slider(a, b[:10])

# ---------------------------------------------------------------- the command on good and bad inputs

def test_batch_with_bad_inputs(tmp_path, models, capsys):
    inp = tmp_path/'in'; inp.mkdir()
    make_dark(inp/'a.dng', 'coffee'); make_dark(inp/'b.dng', 'chelsea', 'BGGR', ratio=250, iso=3200)
    (inp/'notes.dng').write_text('not a RAW file')
    (inp/'cut.dng').write_bytes((inp/'a.dng').read_bytes()[:30000])
    (inp/'readme.txt').write_text('ignored: not a RAW extension')
    extra = [p for p in [data_dir('raw') and data_dir('raw')/'edge-cases'/'DSC8695.dng',
                         data_dir('raw') and data_dir('raw')/'edge-cases'/'Nikon_uncompressed.nef'] if p and p.exists()]
    before = digest(inp)
    rc = enhance_cmd([inp, tmp_path/'missing.dng', *extra], tmp_path/'out', model=models['raw'])
    err = capsys.readouterr().err
    assert rc == 1
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['a_restored.png', 'b_restored.png']
    assert digest(inp) == before                    # inputs are only read
    errors = [l for l in err.splitlines() if 'error' in l]
    assert len(errors) == 3+len(extra)
    for name in ['missing.dng', 'notes.dng', 'cut.dng'] + [p.name for p in extra]:
        assert sum(name in l for l in errors) == 1, name
    assert not leftovers(tmp_path)

def test_no_overwrite_without_force(tmp_path, models, capsys):
    src, _ = make_dark(tmp_path/'a.dng')
    assert enhance_cmd([src], tmp_path/'out', ratio=100, model=models['raw']) == 0
    out = tmp_path/'out'/'a_restored.png'
    first = out.read_bytes(); os.utime(out, (1, 1))
    assert enhance_cmd([src], tmp_path/'out', ratio=300, model=models['raw']) == 1
    assert 'already exists' in capsys.readouterr().err
    assert out.read_bytes() == first and out.stat().st_mtime == 1
    assert enhance_cmd([src], tmp_path/'out', ratio=300, model=models['raw'], force=True) == 0
    assert out.read_bytes() != first
    assert enhance_cmd([src], tmp_path, model=models['raw'], fmt='dng') == 0    # the output folder holds the input: still only read
    assert (tmp_path/'a_restored.dng').exists() and src.read_bytes()

def test_full_disk_leaves_nothing_partial(tmp_path, models, monkeypatch, capsys):
    srcs = [make_dark(tmp_path/f'{n}.dng', s)[0] for n, s in (('a', 'coffee'), ('b', 'chelsea'))]
    write, calls = png.Writer.write, []
    def full_disk(self, f, rows):
        calls.append(1)
        if len(calls) == 1:
            f.write(b'\x89PNG partial'); raise OSError(28, 'No space left on device')
        return write(self, f, rows)
    monkeypatch.setattr(png.Writer, 'write', full_disk)
    rc = enhance_cmd(srcs, tmp_path/'out', model=models['raw'])
    assert rc == 1
    assert [p.name for p in (tmp_path/'out').iterdir()] == ['b_restored.png']
    assert 'a_restored.png: cannot write: no space left on device' in capsys.readouterr().err
    assert not leftovers(tmp_path)

def test_output_folder_that_cannot_be_made(tmp_path, models, capsys):
    src, _ = make_dark(tmp_path/'a.dng')
    (tmp_path/'file').write_text('x')
    assert enhance_cmd([src], tmp_path/'file'/'out', model=models['raw']) == 1
    assert 'cannot create the output folder' in capsys.readouterr().err

def test_model_problems(tmp_path, models, capsys):
    src, _ = make_dark(tmp_path/'a.dng')
    (tmp_path/'junk.pth').write_bytes(b'not a model')
    for model, msg in [(tmp_path/'junk.pth', 'not a darknb model file'), (tmp_path/'none.pth', 'no such file')]:
        assert enhance_cmd([src], tmp_path/'out', model=model) == 1
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path/'out').exists()
    # a model for another input: each Bayer file is refused, nothing written
    assert enhance_cmd([src, src.parent], tmp_path/'out', model=models['xtrans']) == 1
    assert 'packs into 4 channels, but the model takes 9' in capsys.readouterr().err
    assert not list((tmp_path/'out').iterdir())
    assert enhance_cmd([src], tmp_path/'out', ratio='lots', model=models['raw']) == 2   # bad options: usage errors
    assert enhance_cmd([src], tmp_path/'out', fmt='jpeg', model=models['raw']) == 2
    assert enhance_cmd([src], tmp_path/'out', ratio='1e308', model=models['raw']) == 2
    assert enhance_cmd([src], tmp_path/'out', tile=32, model=models['raw']) == 1
    assert 'too small' in capsys.readouterr().err

def test_default_model_missing_is_one_clear_line(monkeypatch, tmp_path, capsys):
    import importlib.resources
    monkeypatch.setattr(importlib.resources, 'files', lambda pkg: tmp_path)
    with pytest.raises(R.DarknbError, match='no bundled model in this installation: pass --model PATH'): default_model_path()
    assert enhance_cmd([tmp_path], tmp_path/'out') == 1
    assert capsys.readouterr().err.strip() == 'darknb: error: no bundled model in this installation: pass --model PATH'

def test_output_names_are_unique():
    files = [Path('x/a.NEF'), Path('x/a.dng'), Path('y/a.dng'), Path('x/b.dng')]
    names = [p.name for p in output_paths(files, 'out', 'png')]
    assert len(set(names)) == 4 and names[-1] == 'b_restored.png' and names[0] == 'a_nef_restored.png'

def test_restore_demo(tmp_path, models, capsys):
    assert restore_demo(tmp_path, model=models['trained']) == 0
    out = capsys.readouterr().out
    assert 'PSNR' in out and 'SSIM' in out
    assert (tmp_path/'restore_demo.png').stat().st_size > 10_000
    assert describe(tmp_path/'demo_coffee_x100.dng').cfa == 'bayer'
    with pytest.raises(FileExistsError): restore_demo(tmp_path, model=models['trained'])
    assert restore_demo(tmp_path, model=models['trained'], force=True) == 0

def test_console_script(tmp_path, models):
    "`darknb enhance` through the installed console script."
    src, _ = make_dark(tmp_path/'a.dng')
    exe = shutil.which('darknb') or pytest.skip('no darknb console script on PATH')
    r = subprocess.run([exe, 'enhance', str(src), '-o', str(tmp_path/'out'), '--model', str(models['raw']), '--ratio', '100'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'out'/'a_restored.png').exists()

def test_command_line_arguments(tmp_path, capsys):
    from darknb.cli import make_parser
    p = make_parser('enhance')
    a = p.parse_args(['enhance', 'a.dng', 'folder', '-o', 'out', '--format', 'dng', '--force'])
    assert (a.inputs, a.out, a.ratio, a.model, a.format, a.force) == (['a.dng', 'folder'], 'out', 'auto', 'default', 'dng', True)
    for bad in (['a', '-o', 'o', '--ratio', '0.5'], ['a', '-o', 'o', '--format', 'jpg'], ['a']):
        with pytest.raises(SystemExit) as e: p.parse_args(['enhance', *bad])
        assert e.value.code == 2

def test_restoring_imports_neither_fastai_nor_pandas():
    r = subprocess.run([sys.executable, '-c', 'import sys, darknb.restore, darknb.cli; darknb.cli.make_parser("enhance"); '
                        'print(sorted(m for m in ("fastai", "pandas", "matplotlib") if m in sys.modules))'],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == '[]', r.stdout + r.stderr
