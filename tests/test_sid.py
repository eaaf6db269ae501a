"Tests of `darknb.sid`: SID list parsing, protocols, the memory-mapped cache, datasets, DataLoaders and mini-SID."
import json, math, os, pickle, shutil, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from darknb.raw import (DarknbError, open_raw, raw_mosaic, normalize, pack_mosaic, real_raw_files, make_sample_dng,
                        describe)
from darknb.sid import (SIDError, CacheRebuilt, RawCache, SIDDataset, SyntheticPairs, CACHE_VERSION,
                        parse_sid_name, parse_list, sid_pairs, select_protocol, summarize, exposure_ratio, find_list,
                        make_mini_sid, sid_render, make_dls, sid_camera, decode_packed, eld_noise,
                        _simple_dark)

pytestmark = pytest.mark.filterwarnings('ignore:.*torch.jit.script')  # printed when fastai is imported

def write_lookalike(root:Path, lines, name='Sony_test_list.txt', where='.'):
    "A SID look-alike: a list file (in `root/where`) and empty files for the paths it names."
    for line in lines:
        for p in line.split()[:2]:
            f = root/p; f.parent.mkdir(parents=True, exist_ok=True); f.touch()
    lst = root/where/name; lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text('\n'.join(lines)+'\n')
    return lst

def line(short, long, extra='ISO200 F9', cam='Sony', ext='ARW'):
    return f'./{cam}/short/{short}.{ext} ./{cam}/long/{long}.{ext} {extra}'.strip()

# Sony-like test list: scenes 10003 (10 s) and the three misaligned ones (30 s), two bursts of 10003
TEST_LINES = [line('10003_00_0.1s', '10003_00_10s'), line('10003_00_0.04s', '10003_00_10s'),
              line('10003_01_0.1s', '10003_00_10s'), line('10003_01_0.04s', '10003_00_10s'),
              line('10034_00_0.1s', '10034_00_30s'), line('10034_00_0.033s', '10034_00_30s'),
              line('10045_00_0.1s', '10045_00_30s'), line('10172_00_0.033s', '10172_00_30s'),
              line('10172_01_0.033s', '10172_00_30s')]

# ---------------------------------------------------------------- names, ratios, lists, protocols

def test_ratios_from_names(tmp_path):
    pairs = parse_list(write_lookalike(tmp_path, TEST_LINES))
    assert [p.ratio for p in pairs] == [100, 250, 100, 250, 300, 300, 300, 300, 300]
    assert pairs[5].short_exposure == 0.033 and pairs[5].long_exposure == 30
    assert exposure_ratio(0.033, 30, cap=None) == pytest.approx(30/0.033, rel=1e-4)  # 909: only the cap makes it 300
    assert [p.burst for p in pairs[:4]] == [0, 0, 1, 1]
    assert pairs[0].short == tmp_path/'Sony/short/10003_00_0.1s.ARW' and pairs[0].long.name == '10003_00_10s.ARW'
    assert pairs[0].iso == 200 and pairs[0].fnumber == 9.0
    assert pairs[3].origin.endswith('Sony_test_list.txt:4')

def test_splits_from_first_digit(tmp_path):
    lines = [line('00001_00_0.1s', '00001_00_10s'), line('20002_00_0.04s', '20002_00_10s'),
             line('10003_00_0.1s', '10003_00_30s')]
    pairs = parse_list(write_lookalike(tmp_path, lines))
    assert [p.split for p in pairs] == ['train', 'val', 'test']
    assert [p.scene for p in pairs] == [1, 20002, 10003]
    assert parse_sid_name('00001_00_0.1s.ARW') == dict(scene=1, split='train', burst=0, exposure=0.1)
    assert parse_sid_name('10019_00_0.033s.RAF')['exposure'] == 0.033

def test_protocol_counts(tmp_path):
    pairs = parse_list(write_lookalike(tmp_path, TEST_LINES))
    assert len(select_protocol(pairs, 'all')) == 9
    first = select_protocol(pairs, 'first')
    assert len(first) == 6 and all(p.burst == 0 for p in first)
    aligned = select_protocol(pairs, 'first-aligned')
    assert [p.scene for p in aligned] == [10003, 10003]
    with pytest.raises(ValueError, match='unknown protocol'): select_protocol(pairs, 'official')
    s = summarize(pairs)
    assert (s['pairs'], s['scenes'], s['short'], s['long']) == (9, 4, 9, 4)
    assert s['ratios'] == {100: 2, 250: 2, 300: 5} and s['splits'] == {'test': 9}

def test_sid_pairs_finds_lists(tmp_path):
    write_lookalike(tmp_path, TEST_LINES)
    assert len(sid_pairs(tmp_path, split='test', protocol='first-aligned')) == 2
    # Fuji, with its list file inside the camera folder; paths stay relative to the root
    fuji = [line('00001_00_0.1s', '00001_00_10s', cam='Fuji', ext='RAF'), line('00001_00_0.033s', '00001_00_30s', cam='Fuji', ext='RAF')]
    write_lookalike(tmp_path, fuji, 'Fuji_train_list.txt', where='Fuji')
    assert find_list(tmp_path, 'Fuji', 'train') == tmp_path/'Fuji'/'Fuji_train_list.txt'
    pairs = sid_pairs(tmp_path, 'Fuji', 'train')
    assert [p.ratio for p in pairs] == [100, 300] and pairs[0].short.is_file()
    with pytest.raises(SIDError, match='no Sony_val_list.txt'): sid_pairs(tmp_path, split='val')
    with pytest.raises(ValueError, match='unknown split'): sid_pairs(tmp_path, split='valid')

@pytest.mark.parametrize('bad,msg', [
    ('./Sony/short/10003_00_0.1s.ARW', 'expected "short long'),
    ('./Sony/short/10003_00_0.1.ARW ./Sony/long/10003_00_10s.ARW', '10003_00_0.1.ARW: not a SID file name'),
    ('./Sony/short/10003_00_zero.ARW ./Sony/long/10003_00_10s.ARW', 'not a SID file name'),
    ('./Sony/short/10003_00_0s.ARW ./Sony/long/10003_00_10s.ARW', 'not positive'),
    ('./Sony/short/30003_00_0.1s.ARW ./Sony/long/30003_00_10s.ARW', 'starts with 3'),
    ('./Sony/short/10003_00_0.1s.ARW ./Sony/long/10004_00_10s.ARW', 'scene 10003 paired with long frame of scene 10004'),
    ('./Sony/short/10003_00_10s.ARW ./Sony/long/10003_00_0.1s.ARW', 'not longer than short'),
    ('./Sony/short/10003_00_0.1s.ARW ./Sony/long/10003_00_10s.ARW ISO2OO', "unexpected field 'ISO2OO'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad, msg):
    lst = write_lookalike(tmp_path, TEST_LINES[:2], 'Sony_val_list.txt')
    lst.write_text(lst.read_text()+'\n'+bad+'\n')  # line 3 is blank: the bad line is line 4
    with pytest.raises(SIDError) as e: parse_list(lst)
    assert str(e.value).startswith(f'{lst}:4: ') and msg in str(e.value)
    assert e.value.line == 4 and isinstance(e.value, DarknbError)

def test_missing_files(tmp_path):
    lst = write_lookalike(tmp_path, TEST_LINES)
    (tmp_path/'Sony/long/10034_00_30s.ARW').unlink()
    with pytest.raises(SIDError, match=r'Sony_test_list.txt:5: .*10034_00_30s.ARW: no such file'): parse_list(lst)
    assert len(parse_list(lst, check=False)) == 9
    with pytest.raises(SIDError, match='no such list file'): parse_list(tmp_path/'nope.txt')

# ---------------------------------------------------------------- the noise used to make dark frames

def test_simple_dark_statistics():
    rng = np.random.default_rng(1)
    clean = np.full((300, 400), 0.5, np.float32)
    span, K = 16383-512, 9.6e-4*800
    d = _simple_dark(clean, 250, rng, span, iso=800)*span
    assert d.mean() == pytest.approx(0.5*span/250, rel=0.02)
    read2, row2 = math.exp(2*(0.462*math.log(K)+0.566)), math.exp(2*(0.528*math.log(K)-0.592))
    assert d.var() == pytest.approx(K*d.mean()+read2+row2+1/12, rel=0.1)
    row_means = d.mean(1)  # row noise: rows differ more than the per-pixel noise alone explains
    assert row_means.var() > 0.5*row2

def test_noise_follows_the_camera_rule_on_other_bit_depths():
    "A 12-bit frame gets the same normalised noise as the camera's own 14-bit data (darknb.noise's one rule)."
    clean = np.full((4, 200, 200), 0.3, np.float32)
    for noise in (eld_noise, _simple_dark):
        d14 = noise(clean, 100, np.random.default_rng(0), 16383-512, 1600)
        d12 = noise(clean, 100, np.random.default_rng(0), 4095-256, 1600)
        assert d12.std() == pytest.approx(d14.std(), rel=0.1), noise.__name__
        assert d12.mean() == pytest.approx(0.003, rel=0.05)

def test_sid_error_keeps_reason_and_line():
    e = SIDError('Sony_val_list.txt', 'bad line', 3)
    assert str(e) == 'Sony_val_list.txt:3: bad line' and e.reason == 'bad line' and e.line == 3
    assert e.path == Path('Sony_val_list.txt')

# ---------------------------------------------------------------- mini-SID and the cache

@pytest.fixture(scope='module')
def mini(tmp_path_factory):
    return make_mini_sid(tmp_path_factory.mktemp('sid')/'mini', n_scenes=5, size=(128, 192), bursts=2, seed=3)

def test_mini_sid_layout(mini, tmp_path):
    names = {p.name for p in mini.iterdir()}
    assert {'Sony', 'Sony_train_list.txt', 'Sony_val_list.txt', 'Sony_test_list.txt'} <= names
    counts = {s: summarize(sid_pairs(mini, split=s)) for s in ('train', 'val', 'test')}
    assert [counts[s]['scenes'] for s in ('train', 'val', 'test')] == [3, 1, 1]
    assert counts['train']['pairs'] == 3*2*2 and counts['train']['long'] == 3
    assert set(counts['train']['ratios']) == {100, 250, 300}
    assert len(sid_pairs(mini, split='train', protocol='first')) == 3*2
    with pytest.raises(FileExistsError): make_mini_sid(mini)
    # the short frames really got 1/ratio of the light (true ratio, before the cap)
    p = sid_pairs(mini, split='train')[1]
    with open_raw(p.short) as r: s = normalize(raw_mosaic(r), r.raw_pattern, r.black_level_per_channel, r.white_level, clip=False)
    with open_raw(p.long) as r: l = normalize(raw_mosaic(r), r.raw_pattern, r.black_level_per_channel, r.white_level)
    assert s.mean()*(p.long_exposure/p.short_exposure) == pytest.approx(l.mean(), rel=0.05)
    assert describe(p.short).exposure_time == pytest.approx(p.short_exposure)
    assert not any(n.endswith('.darknb-tmp') for n in os.listdir(mini.parent))

def test_mini_sid_from_clean_files(tmp_path):
    src = [make_sample_dng(tmp_path/f'{ph}.dng', 'rocket', ph) for ph in ('BGGR', 'GBRG')]
    root = make_mini_sid(tmp_path/'m', clean_files=src, n_scenes=3, size=(64, 96), bursts=1, noise='simple')
    pairs = [p for s in ('train', 'val', 'test') for p in sid_pairs(root, split=s)]
    patterns = {tuple(map(tuple, describe(p.long).raw_pattern)) for p in pairs}
    assert len(patterns) == 2  # both phases kept
    assert describe(pairs[0].short).width == 96 and describe(pairs[0].short).height == 64

def test_decode_packed_refuses_non_mosaics(tmp_path):
    bad = tmp_path/'x.dng'; bad.write_text('hello')
    with pytest.raises(DarknbError, match='x.dng'): decode_packed(bad)

def direct_packed(path):
    with open_raw(path) as r:
        return pack_mosaic(normalize(raw_mosaic(r), r.raw_pattern, r.black_level_per_channel, r.white_level),
                           r.raw_pattern, r.color_desc.decode())

def test_cache_identical_to_direct_decoding(mini, tmp_path):
    cache = RawCache(tmp_path/'cache')
    p = sid_pairs(mini, split='train')[0]
    for f in (p.short, p.long):
        np.testing.assert_array_equal(cache.packed(f), direct_packed(f))
        np.testing.assert_array_equal(cache.packed(f, (5, 7, 32, 40)), direct_packed(f)[:, 5:37, 7:47])
    np.testing.assert_array_equal(cache.srgb(p.long), sid_render(p.long).astype(np.float32)/65535)
    np.testing.assert_array_equal(cache.srgb(p.long, (5, 7, 32, 40)), sid_render(p.long)[10:74, 14:94].astype(np.float32)/65535)
    m = cache.meta(p.short)
    assert m['version'] == CACHE_VERSION and m['dtype'] == 'uint16' and m['shape'] == [4, 64, 96]
    assert isinstance(cache.array(p.short), np.memmap)

@pytest.mark.skipif(not real_raw_files(), reason='real RAW test data absent')
def test_cache_on_real_cameras(tmp_path):
    cache = RawCache(tmp_path)
    for f in real_raw_files():  # other black levels and Bayer phases than the generated frames
        np.testing.assert_array_equal(cache.packed(f, (3, 5, 16, 16)), direct_packed(f)[:, 3:19, 5:21])
        assert cache.meta(f)['black'] == [float(b) for b in pack_mosaic(
            np.asarray(describe(f).black_levels)[np.asarray(describe(f).raw_pattern)], np.asarray(describe(f).raw_pattern))[:, 0, 0]]

def rebuilt(cache_root, src, kind='raw'):
    "Read `src` through a fresh cache (a new process); return the warnings and the data."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        c = RawCache(cache_root)
        data = c.packed(src) if kind == 'raw' else c.srgb(src)
    return [x for x in w if issubclass(x.category, CacheRebuilt)], data

def test_damaged_cache_is_rebuilt(mini, tmp_path):
    root = tmp_path/'cache'
    p = sid_pairs(mini, split='val')[0]
    want, want_srgb = direct_packed(p.short), sid_render(p.long).astype(np.float32)/65535
    c = RawCache(root); c.packed(p.short); c.srgb(p.long)
    npy, hdr = c.files(p.short)
    mtime = npy.stat().st_mtime_ns
    w, _ = rebuilt(root, p.short)
    assert w == [] and npy.stat().st_mtime_ns == mtime  # a valid entry is reused, not rebuilt
    with open(npy, 'r+b') as f: f.truncate(npy.stat().st_size-1)  # cut short by one byte
    w, data = rebuilt(root, p.short)
    assert len(w) == 1 and 'cut short' in str(w[0].message) and p.short.name in str(w[0].message)
    np.testing.assert_array_equal(data, want)
    h = json.loads(hdr.read_text()); h['version'] = CACHE_VERSION-1; hdr.write_text(json.dumps(h))  # older version
    w, data = rebuilt(root, p.short)
    assert len(w) == 1 and f'version {CACHE_VERSION-1}' in str(w[0].message)
    np.testing.assert_array_equal(data, want)
    hdr.unlink()  # an array without its header (killed between the two writes)
    w, data = rebuilt(root, p.short)
    assert len(w) == 1 and 'incomplete' in str(w[0].message)
    h = json.loads(hdr.read_text()); h['shape'] = [4, 10, 10]; hdr.write_text(json.dumps(h))  # header disagrees
    w, data = rebuilt(root, p.short)
    assert len(w) == 1 and 'header says' in str(w[0].message)
    np.testing.assert_array_equal(data, want)
    os.utime(p.short, ns=(p.short.stat().st_atime_ns, p.short.stat().st_mtime_ns+10**9))  # the source changed
    w, _ = rebuilt(root, p.short)
    assert len(w) == 1 and 'source changed' in str(w[0].message)
    snpy, _ = c.files(p.long, 'srgb')
    snpy.write_bytes(snpy.read_bytes()[:200])  # the sRGB target cut short too
    w, data = rebuilt(root, p.long, 'srgb')
    assert len(w) == 1 and 'cut short' in str(w[0].message)
    np.testing.assert_array_equal(data, want_srgb)
    assert RawCache(root).problem(p.short) is None and RawCache(root).problem(p.long, 'srgb') is None
    assert not [f for f in root.iterdir() if f.name.endswith('.darknb-tmp')]

def test_cache_refuses_missing_and_bad_sources(tmp_path):
    c = RawCache(tmp_path/'c')
    with pytest.raises(SIDError, match='no such file'): c.packed(tmp_path/'nope.dng')
    bad = tmp_path/'00001_00_0.1s.ARW'; bad.write_bytes(b'not a raw file'*10)
    with pytest.raises(DarknbError, match='00001_00_0.1s.ARW'): c.packed(bad)

# ---------------------------------------------------------------- datasets and DataLoaders

def test_sid_dataset_pairs_are_aligned(mini, tmp_path):
    "Short = a copy of the long frame (ratio 2): with any crop, flip or transpose, input must equal min(target x 2, 1)."
    long = sid_pairs(mini, split='train')[0].long
    (tmp_path/'Sony/short').mkdir(parents=True); (tmp_path/'Sony/long').mkdir()
    shutil.copy(long, tmp_path/'Sony/long/00001_00_10s.dng'); shutil.copy(long, tmp_path/'Sony/short/00001_00_5s.dng')
    (tmp_path/'Sony_train_list.txt').write_text('./Sony/short/00001_00_5s.dng ./Sony/long/00001_00_10s.dng\n')
    pairs = sid_pairs(tmp_path)
    ds = SIDDataset(pairs*8, task='raw', patch=24, cache=RawCache(tmp_path/'c'))
    torch.manual_seed(0)
    seen = set()
    for i in range(8):
        x, y = ds[i]
        torch.testing.assert_close(x, torch.clamp(y*2, max=1), rtol=0, atol=0)
        assert (x < 1).float().mean() > 0.5  # not saturated: the equality above tests real values
        seen.add(x.numpy().tobytes())
    assert len(seen) == 8  # random crops/flips differ between reads

def test_sid_dataset_srgb_task(mini, tmp_path):
    cache = RawCache(tmp_path)
    pairs = sid_pairs(mini, split='test')
    ds = SIDDataset(pairs, task='srgb', patch=32, cache=cache, train=False)
    x, y = ds[1]
    assert x.shape == (4, 32, 32) and y.shape == (3, 64, 64)
    p = pairs[1]
    want_x = np.minimum(direct_packed(p.short)[:, 16:48, 32:64]*np.float32(p.ratio), 1)  # centre of 64x96
    np.testing.assert_array_equal(x.numpy(), want_x)
    np.testing.assert_array_equal(y.numpy(), sid_render(p.long)[32:96, 64:128].transpose(2, 0, 1).astype(np.float32)/65535)
    assert SIDDataset(pairs, task='srgb', patch=None, cache=cache, train=False)[0][1].shape == (3, 128, 192)
    with pytest.raises(SIDError, match='smaller than the patch'): SIDDataset(pairs, patch=128, cache=cache)[0]
    with pytest.raises(ValueError, match='unknown task'): SIDDataset(pairs, task='rgb')

def test_synthetic_pairs(mini, tmp_path):
    longs = sorted({p.long for p in sid_pairs(mini, split='train')})
    cache = RawCache(tmp_path)
    ds = SyntheticPairs(longs, task='raw', patch=32, length=7, cache=cache)
    assert len(ds) == 7
    torch.manual_seed(0); (x1, y1), (x2, y2) = ds[0], ds[0]
    assert x1.shape == y1.shape == (4, 32, 32) and not torch.equal(x1, x2)  # new noise (and crop) at every read
    assert 0 <= x1.min() and x1.max() <= 1
    v = SyntheticPairs(longs, task='srgb', patch=32, cache=cache, train=False, seed=5)
    assert torch.equal(v[2][0], v[2][0]) and v[2][1].shape == (3, 64, 64)
    # the amplified dark frame is the clean frame plus zero-mean noise
    big = SyntheticPairs(longs, task='raw', patch=None, ratio=(100, 100), cache=cache, train=False, noise='simple')
    x, y = big[0]
    keep = (y > 0.1) & (y < 0.6)  # away from the clip at 0
    assert (x[keep]-y[keep]).mean().abs() < 0.01
    x2, _ = SyntheticPairs(longs, task='raw', patch=None, ratio=(100, 100), cache=cache, train=False)[0]  # ELD noise
    assert (x2[keep]-y[keep]).mean().abs() < 0.02 and not torch.equal(x, x2)
    calls = []
    def mine(clean, ratio, rng, span): calls.append(ratio); return clean/ratio
    x3, y3 = SyntheticPairs(longs, patch=16, ratio=(150, 150), noise=mine, cache=cache, train=False)[0]
    torch.testing.assert_close(x3, torch.clamp(y3, max=1))
    assert calls == [150.0]
    with pytest.raises(ValueError, match='unknown noise'): SyntheticPairs(longs, noise='gauss')

def test_mini_sid_round_trip_dataloaders(mini, tmp_path):
    cache = RawCache(tmp_path)
    torch.manual_seed(0)
    assert sid_camera(mini) == 'Sony' and sid_camera(tmp_path) is None
    dls = make_dls(mini, task='srgb', patch=32, bs=2, cache=cache)
    x, y = dls.one_batch()
    assert x.shape == (2, 4, 32, 32) and y.shape == (2, 3, 64, 64)
    assert x.dtype == y.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and 0 <= y.min() and y.max() <= 1 and y.mean() > 0.05
    assert len(dls.train_ds.ds) == 3*2 and len(dls.train_ds) == 4*2 and len(dls.valid_ds) == 2  # 6 pairs cycled: 4 batches
    xv, yv = next(iter(dls.valid))
    assert xv.shape == (2, 4, 32, 32) and yv.shape == (2, 3, 64, 64)
    xr, yr = make_dls(mini, task='raw', patch=32, bs=3, cache=cache, valid_patch=None).one_batch()
    assert xr.shape == yr.shape == (3, 4, 32, 32)
    full = make_dls(mini, task='raw', patch=32, bs=1, cache=cache, valid_patch=None)
    assert next(iter(full.valid))[0].shape == (1, 4, 64, 96)
    syn = make_dls(mini, task='raw', patch=32, bs=2, cache=cache, synthetic=True)
    assert isinstance(syn.train_ds, SyntheticPairs) and syn.one_batch()[0].shape == (2, 4, 32, 32)
    longs = [p.long for p in sid_pairs(mini, split='train')]
    sd = make_dls(sorted(set(longs)), patch=16, bs=2, cache=cache)
    assert sd.one_batch()[1].shape == (2, 4, 16, 16) and len(sd.valid_ds.files) == 1
    with pytest.raises(SIDError, match='no training list file'): make_dls(tmp_path, cache=cache)

def test_keep_open_maps_and_pickling(mini, tmp_path):
    p = sid_pairs(mini, split='train')[0]
    c = RawCache(tmp_path, keep_open=True)
    np.testing.assert_array_equal(c.packed(p.short, (1, 2, 8, 8)), RawCache(tmp_path).packed(p.short, (1, 2, 8, 8)))
    assert c.array(p.short) is c.array(p.short)  # the same open map
    c2 = pickle.loads(pickle.dumps(c))  # what DataLoader workers get: no arrays, just the cache's description
    assert c2._maps == {} and c2.root == c.root and len(pickle.dumps(c)) < 10_000
    np.testing.assert_array_equal(c2.packed(p.short), c.packed(p.short))

@pytest.mark.skipif(not real_raw_files('raw/edge-cases'), reason='edge-case RAW files absent')
def test_non_mosaic_files_refused(tmp_path):
    c = RawCache(tmp_path/'c')
    for f in real_raw_files('raw/edge-cases'):  # linear DNGs, a film scanner's RGB NEF, a 4-channel stack
        with pytest.raises(DarknbError, match=f.name): c.packed(f)
        with pytest.raises(DarknbError, match=f.name): make_mini_sid(tmp_path/f.stem, clean_files=[f], n_scenes=3)
        assert not (tmp_path/f.stem).exists()
