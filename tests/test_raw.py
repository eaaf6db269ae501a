"""Tests of `darknb.raw` against LibRaw (through rawpy): on every real RAW file of the test data when it is present
(`$DARKNB_DATA`, see README "Test data"), and on RAW files generated in a temporary folder."""
import contextlib, io, os, signal
from pathlib import Path
import numpy as np
import pytest, rawpy
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as psnr

from darknb.raw import (DarknbError, RawError, RawInfo, data_dir, real_raw_files, open_raw, describe, cfa_kind,
                        pack_mosaic, unpack_mosaic, pack_raw, read_mosaic, raw_mosaic, render, libraw_render, normalize,
                        write_dng, srgb_from_camera, pattern_from_str, XTRANS_PATTERN, SCENES, sample_scene,
                        sample_dng, sample_raw_files, mosaic_from_srgb, make_sample_dng, SAMPLE_CAM_XYZ, pick_white_balance)

NO_DATA = 'real RAW files absent: set DARKNB_DATA to the shared test data folder (README, "Test data")'
REAL = real_raw_files()
_raw_dir = data_dir('raw')
EDGE = sorted(p for p in (_raw_dir/'edge-cases').iterdir() if p.is_file()) if _raw_dir and (_raw_dir/'edge-cases').is_dir() else []
PHASES = ('RGGB', 'BGGR', 'GRBG', 'GBRG')

def files_or_skip(files, reason=NO_DATA):
    "pytest parameters for `files`, named by file; one skipped parameter saying why when there are none."
    return [pytest.param(p, id=p.name) for p in files] or [pytest.param(None, id='absent', marks=pytest.mark.skip(reason=reason))]

# What the data's SOURCES.md table says about each real file (written down from it, not from a run).
SOURCES = {
    'RAW_NIKON_D1.NEF': dict(make='Nikon', model={'D1'}, pattern='BGGR', size=(1324,2012), black=0, white=4095,
                             exposure=1/250, iso=200, wb='daylight'),        # camera WB is 1,1,1,1
    'RAW_CANON_D30_SRGB.CRW': dict(make='Canon', model={'EOS D30'}, pattern='RGGB', size=(1448,2176), black=126, white=4095,
                                   exposure=1/203, iso=100, wb='daylight'),  # camera red WB is -1 ("not set")
    'colorchart.dng': dict(make='Canon', model={'EOS 550D', 'EOS Kiss X4', 'EOS Rebel T2i'},   # three names of one camera
                           pattern='RGGB', size=(1156,1734), black=2056, white=15000,
                           exposure=1.0, iso=None, wb='camera'),             # 1 s is the file's placeholder
    'RAW_KODAK_DC50.KDC': dict(make='Kodak', model={'DC50'}, pattern='GRBG', size=(512,768), black=0, white=16383,
                               exposure=1/230, iso=84, wb='none'),           # camera and daylight WB are 1,1,1
}

@contextlib.contextmanager
def no_hang(seconds:int=20):
    "Fail instead of waiting forever if the block hangs (a guard, not a speed test)."
    def boom(*_): raise TimeoutError(f'still running after {seconds} s')
    old = signal.signal(signal.SIGALRM, boom); signal.alarm(seconds)
    try: yield
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)

@pytest.fixture(scope='module')
def samples():
    "The four generated sample DNGs (all four Bayer phases), made in the session's cache folder."
    return sample_raw_files()

# ---------------------------------------------------------------- describe agrees with LibRaw

def check_against_libraw(p:Path)->RawInfo:
    "Compare every field of `describe(p)` with what rawpy reads from the same file."
    info = describe(p)
    assert info.path==str(p)
    with rawpy.imread(str(p)) as raw:
        desc = raw.color_desc.decode()
        if raw.raw_type==rawpy.RawType.Flat:
            assert info.raw_pattern==raw.raw_pattern.tolist()
            assert info.pattern==''.join(desc[i] for i in raw.raw_pattern.ravel())
            assert info.cfa==cfa_kind(raw.raw_pattern, desc)
            assert raw.raw_image_visible.shape==(info.height, info.width)
        else: assert (info.cfa, info.pattern, info.raw_pattern)==('none', None, None)
        assert info.black_levels==[int(b) for b in raw.black_level_per_channel]
        assert info.white_level==raw.white_level
        assert 2**(info.bit_depth-1) <= info.white_level < 2**info.bit_depth
        s = raw.sizes
        assert (info.width, info.height, info.raw_width, info.raw_height, info.orientation)==(s.width, s.height, s.raw_width, s.raw_height, s.flip)
        assert info.camera_wb==[float(w) for w in raw.camera_whitebalance]
        assert info.daylight_wb==[float(w) for w in raw.daylight_whitebalance]
        ref = {'camera': raw.camera_whitebalance, 'daylight': raw.daylight_whitebalance}.get(info.wb_source)
        if ref is None: assert info.wb==[1,1,1,1]
        else: np.testing.assert_allclose(info.wb[:3], np.array(ref[:3])/ref[1], rtol=1e-6)
        for mine,theirs in ((info.rgb_xyz_matrix, raw.rgb_xyz_matrix[:3,:3]), (info.color_matrix, raw.color_matrix[:3,:3])):
            if np.any(theirs): np.testing.assert_allclose(mine, theirs, atol=1e-6)
            else: assert mine is None
        o = raw.other
        assert info.exposure_time==(float(o.shutter_speed) if o.shutter_speed>0 else None)
        assert info.iso==(float(o.iso_speed) if o.iso_speed>0 else None)
    return info

@pytest.mark.parametrize('p', files_or_skip(REAL))
def test_describe_real_file_matches_libraw_and_sources(p):
    info = check_against_libraw(p)
    exp = SOURCES.get(p.name)
    if exp is None: pytest.skip(f'{p.name} is not in the SOURCES.md table')
    assert info.make==exp['make'] and info.model in exp['model'], (info.make, info.model)
    assert (info.cfa, info.pattern)==('bayer', exp['pattern'])
    assert (info.height, info.width)==exp['size']
    assert set(info.black_levels)=={exp['black']} and info.white_level==exp['white']
    assert info.exposure_time==pytest.approx(exp['exposure'], rel=0.01)   # SOURCES rounds 1/201.7 s to 1/203
    assert info.iso==exp['iso'] and info.wb_source==exp['wb']

def test_real_data_covers_the_sources_table():
    if not REAL: pytest.skip(NO_DATA)
    assert {p.name for p in REAL}>=set(SOURCES)

@pytest.mark.parametrize('phase', PHASES)
def test_describe_generated_sample_matches_libraw(samples, phase):
    p = samples[PHASES.index(phase)]
    info = check_against_libraw(p)
    assert (info.make, info.model, info.cfa, info.pattern)==('darknb', 'Synthetic camera', 'bayer', phase)
    assert (info.black_levels, info.white_level, info.bit_depth)==([512]*4, 16383, 14)
    assert info.wb_source=='camera' and info.wb[:3]==pytest.approx([2.0, 1.0, 1.6], rel=1e-6)
    np.testing.assert_allclose(info.color_matrix, srgb_from_camera(SAMPLE_CAM_XYZ), atol=1e-5)

# ---------------------------------------------------------------- files that are not mosaics

@pytest.mark.parametrize('p', files_or_skip(EDGE, 'edge-case files absent: ' + NO_DATA))
def test_edge_case_is_no_mosaic_and_refused_by_bayer_paths(p):
    info = check_against_libraw(p)
    assert info.cfa=='none' and info.pattern is None
    for fn in (render, pack_raw, read_mosaic):
        with pytest.raises(RawError) as e: fn(p)
        assert str(p) in str(e.value) and 'not a' in e.value.reason
    with open_raw(p) as raw:
        with pytest.raises(ValueError, match='not a mosaic'): raw_mosaic(raw)

# ---------------------------------------------------------------- packing

@pytest.mark.parametrize('p', files_or_skip(REAL))
def test_pack_unpack_real_file_exact_and_in_rgbg_order(p):
    m,info = read_mosaic(p, normalized=False)
    pat = np.asarray(info.raw_pattern)
    pk = pack_mosaic(m, pat)
    H,W = m.shape[0]//2*2, m.shape[1]//2*2
    assert pk.shape==(4, H//2, W//2)
    np.testing.assert_array_equal(unpack_mosaic(pk, pat), m[:H,:W])
    with rawpy.imread(str(p)) as raw:   # LibRaw's own colour of every photosite
        colours = pack_mosaic(raw.raw_colors_visible, pat)
    assert [set(np.unique(c)) for c in colours]==[{0}, {1}, {2}, {3}]   # R, G (red row), B, G (blue row)
    x,_ = pack_raw(p)
    np.testing.assert_array_equal(x, pack_mosaic(normalize(m, pat, info.black_levels, info.white_level), pat))
    assert x.dtype==np.float32 and 0<=x.min() and x.max()<=1

@pytest.mark.parametrize('phase', PHASES)
def test_pack_unpack_generated_bayer_exact(phase):
    pat = pattern_from_str(phase)
    m = np.random.default_rng(PHASES.index(phase)).integers(0, 2**14, (37, 51)).astype(np.uint16)  # odd sizes
    pk = pack_mosaic(m, pat)
    assert pk.shape==(4, 18, 25)
    np.testing.assert_array_equal(unpack_mosaic(pk, pat), m[:36,:50])
    colours = np.tile(pat, (4,4))
    assert [set(np.unique(c)) for c in pack_mosaic(colours, pat)]==[{0}, {1}, {2}, {3}]

@pytest.mark.parametrize('shift', [(0,0), (0,2), (2,1), (5,3)])
def test_pack_unpack_xtrans_exact(shift):
    pat = np.roll(XTRANS_PATTERN, shift, axis=(0,1))   # a crop can start anywhere in the 6x6 tile
    m = np.random.default_rng(7).integers(0, 2**14, (40, 62)).astype(np.uint16)
    pk = pack_mosaic(m, pat)
    assert pk.shape==(9, 12, 20)
    np.testing.assert_array_equal(unpack_mosaic(pk, pat), m[:36,:60])
    colours = pack_mosaic(np.tile(pat, (2,3)), pat)
    assert [set(np.unique(c)) for c in colours]==[{0}]*2+[{1}]*5+[{2}]*2

def test_white_balance_choice():
    wb,src = pick_white_balance([1.0, 0.4, 0.6, 0.0], [2.0, 1.0, 1.3, 0.0])   # the 550D frame records green < 1
    assert src=='camera' and wb==pytest.approx([2.5, 1.0, 1.5, 1.0])
    assert pick_white_balance([-1, 1.03, 2.7, 0], [1.92, 0.96, 0.97, 0])==(pytest.approx([2.0, 1.0, 0.97/0.96, 1.0]), 'daylight')
    assert pick_white_balance([1, 1, 1, 1], [1, 1, 1, 0])==([1.0]*4, 'none')

def test_pack_refuses_what_is_not_a_mosaic_pattern():
    with pytest.raises(ValueError, match='cannot pack'): pack_mosaic(np.zeros((4,4)), None)
    with pytest.raises(ValueError, match='cannot pack'): pack_mosaic(np.zeros((4,4)), np.array([[0,1],[1,0]]))
    with pytest.raises(ValueError, match='3 channels'): unpack_mosaic(np.zeros((3,2,2)), pattern_from_str('RGGB'))

# ---------------------------------------------------------------- writing DNG

CAM_XYZ = np.array([[0.9, -0.3, -0.1], [-0.4, 1.3, 0.2], [-0.1, 0.2, 0.6]])

@pytest.mark.parametrize('phase,flip', list(zip(PHASES, (0, 3, 5, 6))))
def test_write_dng_round_trip(tmp_path, phase, flip):
    rng = np.random.default_rng(PHASES.index(phase))
    pat, blacks, white, wb = pattern_from_str(phase), [60, 61, 62, 63], 16000, (2.137, 1.0, 1.618)
    m = rng.integers(0, 16001, (64, 96)).astype(np.uint16)
    p = write_dng(tmp_path/'x.dng', m, pat, blacks, white, wb=wb, rgb_xyz_matrix=CAM_XYZ, exposure_time=1/30,
                  iso=800, make='Acme', model='X1', orientation=flip)
    assert p==tmp_path/'x.dng' and [q.name for q in tmp_path.iterdir()]==['x.dng']
    with rawpy.imread(str(p)) as raw:
        np.testing.assert_array_equal(raw.raw_image_visible, m)   # LibRaw never rotates the mosaic itself
        np.testing.assert_array_equal(raw.raw_pattern, pat)
        assert list(raw.black_level_per_channel)==blacks and raw.white_level==white
        np.testing.assert_allclose(raw.camera_whitebalance[:3], wb, rtol=1e-6)   # float32 precision
        np.testing.assert_allclose(raw.color_matrix[:3,:3], srgb_from_camera(CAM_XYZ), rtol=1e-5, atol=1e-6)
        assert raw.sizes.flip==flip
        assert raw.other.shutter_speed==pytest.approx(1/30, rel=1e-6) and raw.other.iso_speed==800
    info = check_against_libraw(p)
    assert (info.make, info.model, info.pattern, info.orientation)==('Acme', 'X1', phase, flip)

def test_write_dng_xtrans_round_trip(tmp_path):
    m = np.random.default_rng(3).integers(0, 4096, (36, 54)).astype(np.uint16)
    p = write_dng(tmp_path/'x.dng', m, XTRANS_PATTERN, [100]*4, 4095)
    with rawpy.imread(str(p)) as raw:
        np.testing.assert_array_equal(raw.raw_image_visible, m)
        np.testing.assert_array_equal(raw.raw_pattern, XTRANS_PATTERN)
    assert describe(p).cfa=='xtrans'

def test_write_dng_never_overwrites(tmp_path):
    m = np.zeros((24, 24), dtype=np.uint16); pat = pattern_from_str('RGGB')   # LibRaw reads nothing under 22x22
    p = write_dng(tmp_path/'a.dng', m, pat, [0]*4, 1023)
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match='already exists'): write_dng(p, m+5, pat, [0]*4, 1023)
    assert p.read_bytes()==before and [q.name for q in tmp_path.iterdir()]==['a.dng']
    write_dng(p, m+5, pat, [0]*4, 1023, overwrite=True)
    with rawpy.imread(str(p)) as raw: assert (raw.raw_image_visible==5).all()

def test_write_dng_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    import darknb.raw as dr
    m = np.zeros((32, 32), dtype=np.uint16); pat = pattern_from_str('RGGB')
    with pytest.raises(ValueError, match='uint16'): write_dng(tmp_path/'f.dng', m.astype(np.float32), pat, [0]*4, 1023)
    with pytest.raises(ValueError, match='22 pixels'): write_dng(tmp_path/'s.dng', m[:8], pat, [0]*4, 1023)
    def disk_full(*a, **k): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(dr.tifffile, 'imwrite', disk_full)
    with pytest.raises(OSError, match='g.dng: cannot write: no space left on device'): write_dng(tmp_path/'g.dng', m, pat, [0]*4, 1023)
    monkeypatch.undo()
    monkeypatch.setattr(dr, '_exif_ifd', lambda *a: (_ for _ in ()).throw(RuntimeError('failed late')))
    with pytest.raises(RuntimeError, match='failed late'): write_dng(tmp_path/'h.dng', m, pat, [0]*4, 1023)
    assert list(tmp_path.iterdir())==[]

# ---------------------------------------------------------------- bad input

def jpeg_bytes()->bytes:
    b = io.BytesIO(); Image.fromarray((sample_scene('coffee')*255).astype(np.uint8)).save(b, 'JPEG'); return b.getvalue()

def bad_files(tmp_path:Path, samples)->list:
    "(path, expected reason) for each kind of bad input, made in `tmp_path`."
    cases = [(tmp_path/'missing.NEF', 'no such file')]
    (tmp_path/'folder.CR2').mkdir(); cases.append((tmp_path/'folder.CR2', 'is a directory'))
    (tmp_path/'empty.ARW').touch(); cases.append((tmp_path/'empty.ARW', 'empty file'))
    (tmp_path/'photo.NEF').write_bytes(jpeg_bytes()); cases.append((tmp_path/'photo.NEF', 'not a RAW file'))
    (tmp_path/'noise.CR2').write_bytes(np.random.default_rng(0).bytes(200_000)); cases.append((tmp_path/'noise.CR2', 'not a RAW file'))
    for src in [*REAL, samples[0]]:
        data = src.read_bytes()
        for frac in (0.5, 0.98):
            cut = tmp_path/f'cut{int(frac*100)}-{src.name}'; cut.write_bytes(data[:int(len(data)*frac)])
            cases.append((cut, 'truncated or corrupt|not a RAW file'))   # a CRW cut short loses its directory: unrecognised
    return cases

def test_bad_input_raises_raw_error_naming_file_and_reason(tmp_path, samples):
    cases = bad_files(tmp_path, samples)
    before = sorted(tmp_path.iterdir())
    for p,reason in cases:
        for fn in (describe, render, read_mosaic, libraw_render):
            with no_hang(), pytest.raises(RawError) as e: fn(p)
            err = e.value
            assert isinstance(err, DarknbError) and err.path==p
            assert str(err).startswith(f'{p}: ') and p.name in str(err)
            assert any(r in err.reason for r in reason.split('|')), (p.name, err.reason)
    assert sorted(tmp_path.iterdir())==before   # nothing written beside the bad files

def test_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('DARKNB_DATA', str(tmp_path/'nowhere'))
    assert data_dir('raw') is None and real_raw_files()==[]
    (tmp_path/'raw').mkdir(); (tmp_path/'raw'/'a.NEF').write_bytes(b'x'); (tmp_path/'raw'/'read-me.txt').write_text('x')
    monkeypatch.setenv('DARKNB_DATA', str(tmp_path))
    assert data_dir('raw')==tmp_path/'raw' and real_raw_files()==[tmp_path/'raw'/'a.NEF']

# ---------------------------------------------------------------- the pipeline

@pytest.mark.parametrize('phase', PHASES)
def test_generated_sample_renders_back_to_its_scene(samples, phase):
    p = samples[PHASES.index(phase)]
    scene = sample_scene(SCENES[PHASES.index(phase)])
    img = render(p)
    assert img.shape==scene.shape and img.dtype==np.float32
    assert psnr(scene, img, data_range=1) > 20
    assert psnr(scene, libraw_render(p), data_range=1) > 20   # LibRaw agrees on the same file

def test_dark_sample_is_dark_and_brightens_back(tmp_path):
    p = make_sample_dng(tmp_path/'dark.dng', 'chelsea', 'GBRG', exposure=1/16)
    m,info = read_mosaic(p, normalized=False)
    np.testing.assert_array_equal(m, mosaic_from_srgb(sample_scene('chelsea'), pattern_from_str('GBRG'), exposure=1/16))
    assert read_mosaic(p)[0].max() <= 1/16 + 1e-3
    assert psnr(sample_scene('chelsea'), render(p, exposure=16), data_range=1) > 20

@pytest.mark.parametrize('p', files_or_skip(REAL))
def test_render_matches_libraw_on_real_file(p):
    "darknb's pipeline against LibRaw's, with LibRaw keeping the file's white level (and camera colours when there is no matrix)."
    info = describe(p)
    kw = {} if info.rgb_xyz_matrix or info.color_matrix else dict(output_color=rawpy.ColorSpace.raw)
    with open_raw(p) as raw:
        ref = raw.postprocess(user_wb=info.wb, no_auto_bright=True, output_bps=16, gamma=(2.4,12.92), half_size=True,
                              demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR, user_flip=0, adjust_maximum_thr=0, **kw)
    assert psnr(ref.astype(np.float32)/65535, render(p, half=True), data_range=1) > 40
