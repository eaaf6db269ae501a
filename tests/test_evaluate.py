"Tests of `darknb evaluate`, run as a user runs it, on a generated SID look-alike (DNG frames with SID names and lists)."
import csv, os, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
from darknb.sid import make_mini_sid, parse_list
from darknb.noise import CAMERAS, add_noise
from darknb.evaluate import raw_pair, score, read_results, read_pairs, FIELDS

SPAN = 16383-512

def darknb(*args, timeout=600):
    r = subprocess.run([shutil.which('darknb'), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.strip().splitlines()

@pytest.fixture(scope='module')
def sid(tmp_path_factory):
    "A mini-SID whose dark frames have one known camera's noise, and that camera's profile."
    d = tmp_path_factory.mktemp('eval')
    prof = CAMERAS['sony-a7s2'].for_span(3200, SPAN)
    def noise(clean, ratio, rng, span, iso): return add_noise(clean/ratio, prof, rng, dn_per_unit=span)
    root = make_mini_sid(d/'sid', n_scenes=5, size=(128, 192), bursts=2, noise=noise, seed=1)
    prof.to_json(d/'profile.json')
    return root, d/'profile.json'

def test_end_to_end_ratio_protocols_and_resume(sid, tmp_path):
    root,prof = sid
    lst = root/'Sony_test_list.txt'
    pairs = parse_list(lst)
    rc,out,err = darknb('evaluate', lst, '-o', tmp_path/'all', '--methods', 'amplify,bm3d', '--profile', prof)
    assert rc==0, err
    rows = read_results(tmp_path/'all'/'results.csv')
    assert len(rows)==2*len(pairs)==8
    with open(tmp_path/'all'/'results.csv') as f: assert tuple(next(csv.reader(f)))==FIELDS
    for p in pairs:   # the ratio from the names (long / short, capped at 300); amplify is the direct computation
        s = str(p.short.relative_to(root))
        r = {m['method']: m for m in rows if m['short']==s}
        assert r['amplify']['ratio']==min(round(p.long_exposure/p.short_exposure, 4), 300)
        x,y,_ = raw_pair(p.short, p.long, p.ratio)
        assert r['amplify']['psnr']==pytest.approx(score(np.clip(x, 0, 1), y)[0], abs=1e-3)
        assert r['bm3d']['psnr'] > r['amplify']['psnr']     # BM3D with the camera's profile beats doing nothing
    summary = (tmp_path/'all'/'summary.md').read_text()
    assert 'Protocol `all`, RAW domain' in summary and '| amplify | 4 |' in summary and '| bm3d | 4 |' in summary
    # the protocols: `first` keeps the _00 frames
    rc,out,err = darknb('evaluate', lst, '-o', tmp_path/'first', '--methods', 'amplify', '--protocol', 'first')
    assert rc==0 and len(read_results(tmp_path/'first'/'results.csv'))==sum(p.burst==0 for p in pairs)==2
    # resume: an interrupted run (a row cut short at the end) is finished without redoing the rows it has
    res = tmp_path/'all'/'results.csv'
    lines = res.read_text().splitlines()
    res.write_text('\n'.join(lines[:4]) + '\n' + lines[4][:20])   # three whole rows and a broken one
    rc,out,err = darknb('evaluate', lst, '-o', tmp_path/'all', '--methods', 'amplify,bm3d', '--profile', prof)
    assert rc==0, err
    again = read_results(res)
    assert len(again)==8 and again[:3]==rows[:3]
    assert sorted((r['short'], r['method']) for r in again)==sorted((r['short'], r['method']) for r in rows)

def test_a_bad_line_and_a_missing_file_are_one_line_each(sid, tmp_path):
    root,_ = sid
    lines = (root/'Sony_test_list.txt').read_text().splitlines()
    lst = tmp_path/'list.txt'
    lst.write_text('\n'.join([lines[0], 'lonely.ARW', './Sony/short/10001_00_0.1s.dng ./Sony/long/10001_00_99s.dng'] + lines[1:]) + '\n')
    rc,out,err = darknb('evaluate', lst, '--data', root, '-o', tmp_path/'out', '--methods', 'amplify')
    assert rc==1 and 'Traceback' not in '\n'.join(err)
    errs = [l for l in err if l.startswith('darknb: error:')]
    assert errs==[f'darknb: error: {lst}:2: expected "short long [ISO<n>] [F<n>]", got \'lonely.ARW\'',
                  f'darknb: error: {lst}:3: {root}/Sony/long/10001_00_99s.dng: no such file'], err
    assert len(read_results(tmp_path/'out'/'results.csv'))==len(lines)   # the good pairs were all scored
    assert '2 of 6 pairs could not be scored' in out

def test_bad_options(sid, tmp_path):
    root,_ = sid
    rc,out,err = darknb('evaluate', root/'Sony_test_list.txt', '-o', tmp_path/'o', '--methods', 'amplify,sharpen')
    assert rc==2 and err[-1]=="darknb evaluate: error: argument --methods: invalid method_list value: 'amplify,sharpen'"
    rc,out,err = darknb('evaluate', tmp_path/'none.txt', '-o', tmp_path/'o')
    assert rc==1 and err==[f'darknb: error: {tmp_path}/none.txt: no such list file']
    assert not (tmp_path/'o').exists()

def test_srgb_domain(sid, tmp_path):
    "SID's protocol: LibRaw's renderings of the outputs against that of the long exposure."
    from darknb.evaluate import srgb_render
    from darknb.raw import describe
    root,prof = sid
    lst = root/'Sony_test_list.txt'
    rc,out,err = darknb('evaluate', lst, '-o', tmp_path/'srgb', '--methods', 'amplify,bm3d', '--profile', prof, '--domain', 'srgb', '--protocol', 'first')
    assert rc==0, err
    rows = read_results(tmp_path/'srgb'/'results.csv')
    assert len(rows)==4 and 'Protocol `first`, SRGB domain' in (tmp_path/'srgb'/'summary.md').read_text()
    for p in [p for p in parse_list(lst) if p.burst==0]:
        r = {m['method']: m for m in rows if m['short']==str(p.short.relative_to(root))}
        x,y,_ = raw_pair(p.short, p.long, p.ratio)
        info = describe(p.long)
        direct = score(srgb_render(np.clip(x, 0, 1), info).transpose(2, 0, 1), srgb_render(y, info).transpose(2, 0, 1))[0]
        assert r['amplify']['psnr']==pytest.approx(direct, abs=1e-3)
        assert abs(direct - score(np.clip(x, 0, 1), y)[0]) > 3      # the domains give very different numbers
        assert r['bm3d']['psnr'] > r['amplify']['psnr']
