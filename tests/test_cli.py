"Tests of the `darknb` console script, run as a user runs it: a separate process."
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from darknb.raw import data_dir, real_raw_files, sample_dng

ROOT = Path(__file__).resolve().parents[1]

def darknb(*args, cwd=None, timeout=300):
    "Run the console script; return (exit code, stdout, stderr)."
    exe = shutil.which('darknb')
    assert exe, 'the darknb console script is not installed: pip install -e .'
    cmd = [exe]
    r = subprocess.run(cmd+[str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return r.returncode, r.stdout, r.stderr

def test_no_command_is_a_usage_error():
    rc,out,err = darknb()
    assert rc==2 and 'usage: darknb' in err and 'Traceback' not in err

def test_help_is_quiet():
    "Help for the command that imports fastai prints the usage and nothing else (no library deprecation warnings)."
    rc,out,err = darknb('train', '--help')
    assert rc==0 and out.startswith('usage: darknb train') and '--lr' in out
    assert err=='', err

def test_info_json_on_files(tmp_path):
    files = real_raw_files() or [sample_dng('coffee','RGGB'), sample_dng('chelsea','BGGR')]
    rc,out,err = darknb('info', *files, '--json')
    assert rc==0, err
    recs = json.loads(out)
    assert [r['path'] for r in recs]==[str(f) for f in files]
    for r in recs:
        assert r['cfa']=='bayer' and len(r['pattern'])==4 and r['white_level']>max(r['black_levels'])

def test_info_human_readable():
    f = sample_dng('coffee','GRBG')
    rc,out,err = darknb('info', f)
    assert rc==0 and 'bayer GRBG' in out and 'white 16383' in out and 'Synthetic camera' in out

@pytest.fixture
def bad_files(tmp_path):
    "A folder of the kinds of bad input a user may give."
    d = tmp_path/'bad'; d.mkdir()
    (d/'empty.NEF').write_bytes(b'')
    (d/'random.CR2').write_bytes(np.random.default_rng(0).bytes(50_000))
    from PIL import Image
    Image.fromarray(np.zeros((32,32,3), np.uint8)).save(d/'photo.jpg'); (d/'photo.jpg').rename(d/'photo.NEF')
    good = sample_dng('coffee','RGGB')
    data = good.read_bytes(); (d/'truncated.dng').write_bytes(data[:len(data)//3])
    (d/'notes.dng').write_text('exposure 1/30 s, ISO 3200\n'*20)
    (d/'folder.ARW').mkdir()
    return d, good

def test_info_bad_inputs_one_line_each(bad_files):
    d,good = bad_files
    bad = sorted(d.iterdir()) + [d/'missing.NEF']
    before = sorted(p.name for p in d.iterdir())
    rc,out,err = darknb('info', *bad, good, '--json')
    assert rc==1
    lines = err.strip().splitlines()
    assert len(lines)==len(bad), err
    assert 'Traceback' not in err
    for p,line in zip(bad, lines): assert line.startswith(f'darknb: error: {p}: '), line
    recs = json.loads(out)
    assert recs[-1]['path']==str(good) and recs[-1]['pattern']=='RGGB'  # the good file is still described
    assert all('error' in r for r in recs[:-1])
    assert sorted(p.name for p in d.iterdir())==before  # nothing written
    reasons = dict(zip([p.name for p in bad], lines))
    assert reasons['empty.NEF'].endswith('empty file')
    assert reasons['missing.NEF'].endswith('no such file')
    assert 'directory' in reasons['folder.ARW']
    assert 'truncated or corrupt' in reasons['truncated.dng']
    assert reasons['notes.dng'].endswith('notes.dng: not a RAW file (it is text)')
    assert 'not a RAW file' in reasons['photo.NEF'] and 'not a RAW file' in reasons['random.CR2']

@pytest.mark.skipif(data_dir('raw/edge-cases') is None, reason='real edge-case files are not available ($DARKNB_DATA)')
def test_info_describes_non_mosaic_files():
    files = sorted(p for p in data_dir('raw/edge-cases').iterdir() if p.is_file())
    rc,out,err = darknb('info', *files, '--json')
    assert rc==0, err
    assert {r['cfa'] for r in json.loads(out)}=={'none'}

def test_demo_writes_figure_and_never_overwrites(tmp_path):
    out = tmp_path/'out'
    rc,o,e = darknb('demo', '-o', out, cwd=tmp_path)
    assert rc==0, e
    fig = out/'raw_vs_jpg.png'
    assert fig.read_bytes()[:8]==b'\x89PNG\r\n\x1a\n' and str(fig) in o
    assert (out/'restore_demo.png').read_bytes()[:4]==b'\x89PNG'
    m2 = re.search(r'amplified x100: PSNR ([\d.]+) dB.*\n.*restored: +PSNR ([\d.]+) dB', o)
    assert m2 and float(m2[2]) > float(m2[1])  # the bundled model improves on plain amplification
    m = re.search(r'JPEG kept (\d+) levels and scores ([\d.]+) dB; the 14-bit RAW scores ([\d.]+) dB', o)
    assert m and float(m[3]) > float(m[2])  # the RAW brightens better than the JPEG
    fig.write_bytes(b'mine')
    rc,o,e = darknb('demo', '-o', out)
    assert rc==1 and 'already exists' in e and 'Traceback' not in e
    assert fig.read_bytes()==b'mine'
    assert sorted(p.name for p in out.iterdir())==['demo_motorcycle_x100.dng', 'raw_vs_jpg.png', 'restore_demo.png']  # no temporary file
    rc,o,e = darknb('demo', '-o', out, '--force')
    assert rc==0 and fig.read_bytes()[:4]==b'\x89PNG'

def test_readme_has_exactly_two_commands_and_ci_runs_the_tests():
    readme = (ROOT/'README.md').read_text()
    blocks = re.findall(r'```sh\n(.*?)```', readme, re.S)
    assert len(blocks)==2, blocks
    install_run, test_cmd = [b.strip() for b in blocks]
    assert 'darknb demo' in install_run
    ci = (ROOT/'.ci'/'run').read_text()
    assert test_cmd in ci.splitlines()

@pytest.mark.skipif(data_dir('flea3') is None, reason='the real Flea3 frames are not available ($DARKNB_DATA)')
def test_calibrate_on_real_frames(tmp_path):
    darks = sorted((data_dir('flea3')/'dark').glob('*.tif'))
    flats = sorted((data_dir('flea3')/'disks_500nm').glob('*.tif'))
    out = tmp_path/'flea3.json'
    rc,o,e = darknb('calibrate', *darks, '--flats', *flats, '--pattern', 'GBRG', '-o', out)
    assert rc==0, e
    prof = json.loads(out.read_text())
    assert prof['K']>0 and prof['read_scale']>0
    rc,o,e = darknb('calibrate', *darks, '-o', out)  # an existing profile is kept
    assert rc==1 and 'already exists' in e and json.loads(out.read_text())==prof

def test_synth_writes_a_dark_dng(tmp_path):
    clean = sample_dng('coffee','RGGB')
    rc,o,e = darknb('synth', clean, '--ratio', 50, '-o', tmp_path/'s')
    assert rc==0, e
    dngs = sorted((tmp_path/'s').glob('*.dng'))
    assert len(dngs)==2
    rc,o,e = darknb('info', *dngs, '--json')
    recs = {Path(r['path']).name: r for r in json.loads(o)}
    dark = next(r for n,r in recs.items() if '_x50' in n); ref = next(r for n,r in recs.items() if '_ref' in n)
    assert dark['pattern']==ref['pattern']=='RGGB' and dark['black_levels']==ref['black_levels']
    assert dark['exposure_time'] == pytest.approx(ref['exposure_time']/50, rel=1e-3)
    (tmp_path/'bad.json').write_text('{"K": 1}')
    rc,o,e = darknb('synth', clean, '--profile', tmp_path/'bad.json', '-o', tmp_path/'s2')
    assert rc==1 and 'bad.json' in e and 'missing keys' in e and 'Traceback' not in e

def test_train_tiny_run_end_to_end(tmp_path):
    out = tmp_path/'run'
    rc,o,e = darknb('train', 'samples', '--task', 'raw', '--width', 8, '--depth', 3, '--patch', 32, '--bs', 4,
                    '--epochs', 1, '--length', 8, '--n-valid', 4, '--seed', 0, '-o', out)
    assert rc==0, e
    for f in ('recipe.json', 'log.csv', 'history.png', 'model.pt', 'checkpoints/last.pth'): assert (out/f).exists(), f
    from darknb.unet import load_model
    net,info = load_model(out/'model.pt', task='raw', in_ch=4)
    assert info['meta']  # the recipe travels with the model
    rc,o,e = darknb('train', 'samples', '-o', out)  # a finished run is never overwritten silently
    assert rc==1 and 'Traceback' not in e and str(out) in e

def test_train_bad_folder(tmp_path):
    (tmp_path/'empty').mkdir()
    rc,o,e = darknb('train', tmp_path/'empty', '-o', tmp_path/'run')
    assert rc==1 and 'Traceback' not in e and 'empty' in e
    assert not (tmp_path/'run').exists() or not any((tmp_path/'run').iterdir())

def test_enhance_batch_with_bad_inputs(tmp_path, bad_files):
    d,good = bad_files
    src = tmp_path/'in'; src.mkdir()
    dark = src/'dark.dng'; dark.write_bytes(good.read_bytes())
    before = dark.read_bytes()
    out = tmp_path/'out'
    rc,o,e = darknb('enhance', dark, d/'photo.NEF', d/'missing.NEF', '-o', out, '--ratio', 4, '--format', 'dng')
    assert rc==1 and 'Traceback' not in e
    assert 'photo.NEF' in e and 'missing.NEF' in e
    outs = [p for p in out.iterdir()]
    assert len(outs)==1 and outs[0].suffix=='.dng'  # the good file was restored, nothing partial left
    rc,o2,e2 = darknb('info', outs[0], '--json')
    rec = json.loads(o2)[0]
    assert rec['pattern']=='RGGB' and rec['wb'][:3]==pytest.approx(json.loads(darknb('info', dark, '--json')[1])[0]['wb'][:3], rel=1e-4)
    assert dark.read_bytes()==before  # inputs are only read
    rc,o,e = darknb('enhance', dark, '-o', out, '--ratio', 4, '--format', 'dng')
    assert rc==1 and 'already exists' in e  # never overwritten without --force

# ---------------------------------------------------------------- one error policy, one table

@pytest.mark.parametrize('args', [('demo', '-o', '/dev/null/x'),
                                  ('synth', 'CLEAN', '-o', '/dev/null/x'),
                                  ('calibrate', 'DARK', '-o', '/dev/null/p.json')])
def test_os_errors_are_one_line(tmp_path, args):
    "A folder that cannot be made (a path through a file): one line naming the path and the reason, never a traceback."
    import tifffile
    dark = tmp_path/'dark.tif'
    tifffile.imwrite(dark, (100 + np.random.default_rng(0).normal(0, 3, (64, 64))).round().astype(np.uint16))
    args = [str(sample_dng()) if a=='CLEAN' else str(dark) if a=='DARK' else a for a in args]
    rc,out,err = darknb(*args)
    assert rc==1 and 'Traceback' not in err, err
    lines = err.strip().splitlines()
    assert len(lines)==1 and lines[0].startswith('darknb: error: /dev/null/') and 'not a directory' in lines[0].lower(), err

@pytest.mark.parametrize('args', [('enhance', 'x.dng', '-o', 'o', '--ratio', '0.5'), ('enhance', 'x.dng', '-o', 'o', '--ratio', '1e308'),
                                  ('enhance', 'x.dng', '-o', 'o', '--format', 'jpg'), ('enhance', 'x.dng'),
                                  ('synth', 'x.dng', '-o', 'o', '--ratio', 'inf'), ('train', '-o', 'o', '--workers', '-1'),
                                  ('train', '-o', 'o', '--ratio-min', '0'), ('train', '-o', 'o', '--camera', 'nikon-d1'),
                                  ('synth', 'x.dng', '-o', 'o', '--camera', 'nikon-d1'), ('info',), ('frobnicate',)])
def test_bad_options_exit_2(tmp_path, args):
    rc,out,err = darknb(*args, cwd=tmp_path)
    assert rc==2 and 'usage: darknb' in err and 'Traceback' not in err, err
    assert not any(tmp_path.iterdir())   # refused before anything ran

def test_outputs_get_the_mode_open_gives(tmp_path):
    "Files written through a temporary name get 0666 less the umask, like any file a program opens (not mkstemp's 0600)."
    rc,o,e = darknb('synth', sample_dng(), '--ratio', 10, '-o', tmp_path)
    assert rc==0, e
    umask = os.umask(0); os.umask(umask)
    for p in tmp_path.iterdir(): assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p

def test_every_command_has_help_from_its_docments():
    from darknb.cli import commands
    names = commands()
    assert {'info', 'demo', 'calibrate', 'synth', 'enhance', 'train'} <= set(names)
    rc,out,err = darknb('--help')
    assert rc==0 and all(n in out for n in names)
    for n in names:
        rc,out,err = darknb(n, '--help')
        assert rc==0 and err=='' and out.startswith(f'usage: darknb {n}'), (n, err)
        assert re.search(r'\n  -h, --help', out)
