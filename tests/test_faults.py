"""The fault suite: every command under real faults, run as a user runs it (a separate process).

Full disks are small tmpfs mounts and read-only folders read-only bind mounts, both when the tests run as root (CI
does); otherwise the full disks are skipped with a message and read-only folders made with chmod. Every case asserts
the exact one-line message, the exit status, and that no partial or temporary file is left behind."""
import contextlib, json, os, shutil, signal, subprocess, tempfile, time
from pathlib import Path
import numpy as np
import pytest, torch, tifffile, rawpy
from darknb.raw import sample_dng, data_dir, write_dng, pattern_from_str
from darknb.unet import raw_denoiser, save_model

ROOT = os.geteuid()==0

def darknb(*args, env=None, timeout=600):
    "Run the console script; return (exit code, stderr lines)."
    exe = shutil.which('darknb')
    assert exe, 'the darknb console script is not installed: pip install -e .'
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    return r.returncode, r.stderr.strip().splitlines()

def one_line(rc, lines, expected, code=1):
    "The command failed with `code` and said exactly `expected`, in one line."
    assert rc==code and lines==[f'darknb: error: {expected}'], (rc, lines)

def files_in(d): return sorted(str(p.relative_to(d)) for p in Path(d).rglob('*'))

def _mount(*args):
    r = subprocess.run(['mount', *args], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'mount {" ".join(args)} failed: {r.stderr.strip()}')

@pytest.fixture
def full_disk(tmp_path):
    "A tmpfs mount with `left` bytes free (root only): `with full_disk(left) as d:`."
    if not ROOT: pytest.skip('a full disk needs a tmpfs mount: run the tests as root (CI does)')
    @contextlib.contextmanager
    def make(left=0, size='4m'):
        d = Path(tempfile.mkdtemp(dir=tmp_path)); _mount('-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(d))
        try:
            st = os.statvfs(d)
            with open(d/'filler', 'wb') as f: f.write(b'\0'*max(st.f_bavail*st.f_frsize-left, 0))
            yield d
        finally: subprocess.run(['umount', '-l', str(d)])
    return make

@pytest.fixture
def read_only(tmp_path):
    "A read-only folder: a read-only bind mount as root, else chmod 0555."
    src = tmp_path/'ro-src'; src.mkdir()
    (src/'kept.txt').write_text('a file of the user')
    if ROOT:
        d = tmp_path/'ro'; d.mkdir()
        _mount('--bind', str(src), str(d)); _mount('-o', 'remount,bind,ro', str(d))
        yield d
        subprocess.run(['umount', '-l', str(d)])
    else:
        src.chmod(0o555); yield src; src.chmod(0o755)

@pytest.fixture(scope='module')
def darks(tmp_path_factory):
    "Dark frames: the real Flea3 ones when present, else generated TIFFs with read noise."
    real = data_dir('flea3')
    if real: return sorted((real/'dark').glob('*.tif'))[:3]
    d = tmp_path_factory.mktemp('darks'); rng = np.random.default_rng(0)
    for i in range(3): tifffile.imwrite(d/f'dark_{i}.tif', (100+rng.normal(0, 3, (128, 128))).round().astype(np.uint16))
    return sorted(d.glob('*.tif'))

TRAIN = ('--epochs', 1, '--length', 8, '--n-valid', 4, '--patch', 32, '--bs', 4, '--width', 4, '--depth', 2)

# ---------------------------------------------------------------- full disks

def test_synth_full_disk(full_disk):
    clean = sample_dng()
    with full_disk(0) as d:
        one_line(*darknb('synth', clean, '-o', d/'o'), f'{d}/o/{clean.stem}_x100.dng: cannot write: no space left on device')
        assert files_in(d)==['filler']
    with full_disk(600_000) as d:   # room for one of the two DNGs: the first one is removed again
        one_line(*darknb('synth', clean, '-o', d/'o'), f'{d}/o/{clean.stem}_ref.dng: cannot write: no space left on device')
        assert files_in(d)==['filler']

def test_calibrate_full_disk(full_disk, darks):
    with full_disk(0) as d:
        one_line(*darknb('calibrate', *darks, '--pattern', 'GBRG', '-o', d/'p.json'), f'{d}/p.json: cannot write: no space left on device')
        assert files_in(d)==['filler']

def test_demo_full_disk(full_disk):
    with full_disk(600_000) as d:
        rc,lines = darknb('demo', '-o', d/'o')
        assert rc==1 and len(lines)==1 and lines[0].startswith(f'darknb: error: {d}/o/') and lines[0].endswith(': cannot write: no space left on device'), lines
        assert files_in(d)==['filler']

def test_train_full_disk_keeps_no_truncated_checkpoint(full_disk):
    "The run files that are complete stay (so --resume works once there is room); nothing truncated, no temporaries."
    with full_disk(60_000) as d:
        rc,lines = darknb('train', 'samples', '-o', d/'t', *TRAIN)
        assert rc==1 and len(lines)==1 and lines[0].startswith(f'darknb: error: {d}/t/') and lines[0].endswith('cannot write: no space left on device'), lines
        left = files_in(d)
        assert not [f for f in left if 'darknb-tmp' in f], left
        for f in ('t/checkpoints/best.pth', 't/checkpoints/last.pth'):
            if f in left: torch.load(d/f, weights_only=False)  # whole, or not there

# ---------------------------------------------------------------- read-only and missing folders

def test_synth_read_only(read_only):
    clean = sample_dng()
    one_line(*darknb('synth', clean, '-o', read_only), f'{read_only}/{clean.stem}_x100.dng: cannot write: ' +
             ('read-only file system' if ROOT else 'permission denied'))
    rc,lines = darknb('synth', clean, '-o', read_only/'new')
    assert rc==1 and lines==[f'darknb: error: {read_only}/new: ' + ('read-only file system' if ROOT else 'permission denied')], lines
    assert files_in(read_only)==['kept.txt']

def test_calibrate_read_only_and_missing_folder(read_only, darks, tmp_path):
    one_line(*darknb('calibrate', *darks, '--pattern', 'GBRG', '-o', read_only/'p.json'),
             f'{read_only}/p.json: cannot write: ' + ('read-only file system' if ROOT else 'permission denied'))
    one_line(*darknb('calibrate', *darks, '--pattern', 'GBRG', '-o', tmp_path/'no/such/dir/p.json'),
             f'{tmp_path}/no/such/dir/p.json: cannot write: its folder does not exist')
    assert files_in(read_only)==['kept.txt'] and not (tmp_path/'no').exists()

def test_demo_and_train_read_only(read_only):
    why = 'read-only file system' if ROOT else 'permission denied'
    one_line(*darknb('demo', '-o', read_only/'o'), f'{read_only}/o: {why}')
    one_line(*darknb('train', 'samples', '-o', read_only/'t', *TRAIN), f'{read_only}/t: {why}')
    assert files_in(read_only)==['kept.txt']

def test_read_only_cache(read_only, tmp_path):
    "A cache that cannot be written: the generated files go to a temporary folder, and one note says which folder to fix."
    why = 'read-only file system' if ROOT else 'permission denied'
    for cache in (read_only, read_only/'cache'):   # an existing folder that cannot be written, and one that cannot be made
        env = dict(DARKNB_CACHE=str(cache))
        rc,lines = darknb('train', 'samples', '-o', tmp_path/'t', *TRAIN, '--force', env=env)
        assert rc==0 and lines[0].startswith(f'darknb: note: {cache}: the cache folder cannot be written ({why}); generated files go to '), lines
        assert (tmp_path/'t'/'model.pt').is_file()
    assert files_in(read_only)==['kept.txt']

# ---------------------------------------------------------------- damaged model files

@pytest.fixture(scope='module')
def bad_models(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad-models')
    good = save_model(d/'good.pth', raw_denoiser(width=4, depth=2), 'denoiser', dict(width=4, depth=2))
    ck = torch.load(good, weights_only=True)
    def variant(name, change):
        c = {k: dict(v) if isinstance(v, dict) else v for k,v in ck.items()}
        change(c); torch.save(c, d/name); return d/name
    (d/'empty.pth').write_bytes(b'')
    return {d/'empty.pth': 'empty file, not a model file',
            variant('keyword.pth', lambda c: c['arch_kwargs'].update(frobnicate=3)):
                "its architecture arguments build no network (SIDUnet.__init__() got an unexpected keyword argument 'frobnicate')",
            variant('width.pth', lambda c: c['arch_kwargs'].update(width=-5)):
                'its architecture arguments build no network (SIDUnet needs depth, width and scale >= 1, got 2, -5, 1)',
            variant('no-kwargs.pth', lambda c: c.pop('arch_kwargs')): 'damaged model file (no architecture arguments or no weights)',
            variant('nan.pth', lambda c: [v.fill_(float('nan')) for v in c['state_dict'].values() if v.is_floating_point()]):
                'its weights are not finite (NaN or infinity): a damaged or diverged model'}

def test_damaged_model_files(bad_models, tmp_path):
    for model,why in bad_models.items():
        one_line(*darknb('enhance', sample_dng(), '-o', tmp_path/'out', '--model', model, '--ratio', 4), f'{model}: {why}')
        assert not (tmp_path/'out').exists()

def test_resume_from_empty_checkpoint(tmp_path):
    run = tmp_path/'run'
    rc,lines = darknb('train', 'samples', '-o', run, *TRAIN)
    assert rc==0, lines
    (run/'checkpoints'/'last.pth').write_bytes(b'')
    rc,lines = darknb('train', '-o', run, '--resume')
    assert rc==1 and len(lines)==1 and lines[0].startswith(f'darknb: error: {run}/checkpoints/last.pth: '), lines

# ---------------------------------------------------------------- options

@pytest.mark.parametrize('args,msg', [(('--workers', '-1'), "argument --workers: invalid int value: '-1'"),
                                      (('--width', '100000'), "argument --width: invalid int value: '100000'")])
def test_train_options_refused_by_the_parser(tmp_path, args, msg):
    rc,lines = darknb('train', 'samples', '-o', tmp_path/'t', *args)
    assert rc==2 and lines[-1]==f'darknb train: error: {msg}' and lines[0].startswith('usage: darknb train'), lines
    assert not (tmp_path/'t').exists()

def test_train_too_big_for_memory_is_refused_before_it_is_built(tmp_path):
    rc,lines = darknb('train', 'samples', '-o', tmp_path/'t', '--width', 1024, '--depth', 10, timeout=120)
    assert rc==1 and len(lines)==1 and lines[0].startswith('darknb: error: this network and batch need about 119.0 TiB'), lines
    assert lines[0].endswith('use a smaller --width, --depth, --bs or --patch')
    assert not (tmp_path/'t').exists()

# ---------------------------------------------------------------- damaged and odd inputs

def damaged(data:bytes, seed:int, frac:float=0.01)->bytes:
    "`data` with a fraction `frac` of its bytes (after the first 1,024) replaced by random ones."
    rng = np.random.default_rng(seed)
    b = np.frombuffer(data, np.uint8).copy()
    idx = rng.choice(len(b)-2048, max(1, int(len(b)*frac)), replace=False)+1024
    b[idx] = rng.integers(0, 256, len(idx), dtype=np.uint8)
    return b.tobytes()

def test_damaged_lossless_jpeg_dngs_never_come_out_restored(tmp_path):
    "LibRaw decodes some damaged lossless-JPEG DNGs without an error; darknb refuses every one of them, and never shows another file's pixels."
    pytest.importorskip('imagecodecs')
    from darknb.raw import read_mosaic, RawError
    with rawpy.imread(str(sample_dng())) as r: m = r.raw_image_visible.copy()
    good = write_dng(tmp_path/'good.dng', m, pattern_from_str('RGGB'), [512]*4, 16383, compression='ljpeg')
    test_eq = np.testing.assert_array_equal
    test_eq(read_mosaic(good, normalized=False)[0], m)
    silent = {}
    for seed in range(240):
        data = damaged(good.read_bytes(), seed, [0.01, 0.001, 0.0001][seed%3])
        try:
            with rawpy.imread(__import__('io').BytesIO(data)) as r: libraw = r.raw_image_visible.copy()
        except rawpy.LibRawError: continue   # LibRaw itself says so
        if (libraw==m).all(): continue       # the damage missed the data
        read_mosaic(good)                     # a good photo first, as in a batch
        with pytest.raises(RawError) as e: read_mosaic(data)
        silent[seed] = e.value.reason
    kinds = {r.split(': ')[0].split(' ', 1)[1] for r in silent.values()}
    assert {'of its pixels were never decoded', 'of its pixels lie above its white level 16383'} <= kinds, silent
    # the command line: the damaged file gets one line, the good one is restored, nothing of the damaged one is written
    seed = next(s for s,r in silent.items() if 'never decoded' in r)
    (tmp_path/'in').mkdir(); shutil.copy(good, tmp_path/'in'/'a.dng')
    (tmp_path/'in'/'b.dng').write_bytes(damaged(good.read_bytes(), seed, [0.01, 0.001, 0.0001][seed%3]))
    exe = shutil.which('darknb')
    r = subprocess.run([exe, 'enhance', tmp_path/'in', '-o', tmp_path/'out', '--ratio', '4'], capture_output=True, text=True, timeout=600)
    assert r.returncode==1 and f"darknb: error: {tmp_path}/in/b.dng: {silent[seed]}" in r.stderr, r.stderr
    assert files_in(tmp_path/'out')==['a_restored.png']

def test_calibrate_refuses_what_cannot_be_a_dark_frame(tmp_path, darks):
    fifo = tmp_path/'fifo.tif'; os.mkfifo(fifo)
    one_line(*darknb('calibrate', fifo, '-o', tmp_path/'p.json', timeout=60),
             f'{fifo}: not a regular file (a pipe, socket or device): reading it could wait forever')
    tifffile.imwrite(tmp_path/'const.tif', np.full((64, 64), 17, np.uint8))
    one_line(*darknb('calibrate', tmp_path/'const.tif', '-o', tmp_path/'p.json'),
             f'{tmp_path}/const.tif: every pixel is 17: a constant frame has no noise to measure')
    tifffile.imwrite(tmp_path/'tiny.tif', np.arange(16, dtype=np.uint8).reshape(4, 4))
    one_line(*darknb('calibrate', tmp_path/'tiny.tif', '-o', tmp_path/'p.json'),
             f'{tmp_path}/tiny.tif: 4 x 4 pixels: too small to measure noise (at least 32 x 32)')
    rng = np.random.default_rng(0)
    sat = np.where(rng.random((64, 64))<0.2, 255, rng.integers(0, 4, (64, 64))).astype(np.uint8)
    tifffile.imwrite(tmp_path/'sat.tif', sat)
    one_line(*darknb('calibrate', tmp_path/'sat.tif', '-o', tmp_path/'p.json'),
             f'{tmp_path}/sat.tif: {(sat==255).mean():.0%} of its pixels are saturated: not a dark (lens-capped) frame')
    lit = (rng.normal(0, 2, (64, 64)) + np.linspace(0, 100, 64)).clip(0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path/'lit.tif', lit)
    rc,lines = darknb('calibrate', tmp_path/'lit.tif', '-o', tmp_path/'p.json')
    assert rc==1 and len(lines)==1 and lines[0].endswith('above its darkest pixels: a lit frame, not a dark (lens-capped) one'), lines
    for bad in ('-5', 'nan'):
        rc,lines = darknb('calibrate', *darks, '--white', bad, '-o', tmp_path/'p.json')
        assert rc==2 and lines[-1]==f"darknb calibrate: error: argument --white: invalid number value: '{bad}'", lines
    assert not (tmp_path/'p.json').exists()

def test_sigterm_during_a_batch_leaves_no_temporary(tmp_path):
    "SIGTERM is handled like Ctrl-C: exit 143, one line, the photos finished so far kept whole, no temporary left."
    (tmp_path/'in').mkdir()
    for i in range(30): shutil.copy(sample_dng(), tmp_path/'in'/f'p{i}.dng')
    p = subprocess.Popen([shutil.which('darknb'), 'enhance', tmp_path/'in', '-o', tmp_path/'out', '--ratio', '4'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    while not (seen and seen[-1].startswith('[1/30] ')) and len(seen)<20:  # the first photo's progress line: under way
        seen.append(p.stderr.readline())
        if not seen[-1]: break
    assert seen[-1].startswith('[1/30] '), seen
    p.send_signal(signal.SIGTERM)
    out,err = p.communicate(timeout=120)
    assert p.returncode==143 and err.strip().splitlines()[-1]=='darknb: error: interrupted', (p.returncode, err)
    assert out=='', out          # no summary: the batch did not finish
    left = files_in(tmp_path/'out')
    assert left and all(f.endswith('_restored.png') for f in left), left
    for f in left: assert (tmp_path/'out'/f).read_bytes()[:8]==b'\x89PNG\r\n\x1a\n'
