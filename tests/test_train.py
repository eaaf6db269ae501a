"Tests of `darknb.train`: data sources, learners, exact resume, `train_cmd` end to end, errors, two-process DDP on the CPU."
import os, sys, json, subprocess, warnings
from pathlib import Path
import numpy as np
import pytest, torch, tifffile

import darknb.cli, darknb.train
from darknb.core import DarknbError, ArgError
from darknb.raw import sample_raw_files
from darknb.unet import load_model
from darknb.sid import DataError, make_dls
from darknb.train import (TrainError, resolve_source, make_model, make_loss, make_learner, pick_precision, train,
                          train_cmd, quick_train, input_scores, distribute_dl, StopAfter, rng_states, set_rng_states,
                          weights_digest, LOSSES, RUN_FILES)

TINY = dict(arch_kwargs=dict(width=8, depth=2), patch=32, bs=4, length=16, n_valid=4, progress=False)
CMD = dict(width=8, depth=2, patch=32, bs=4, length=16, n_valid=4)

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Other work shares the 2 cores: one torch thread, and quiet fastai/torch warnings."
    old = torch.get_num_threads(); torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning); warnings.simplefilter('ignore', UserWarning)
        yield
    torch.set_num_threads(old)

def _copy_samples(d:Path, n:int=4)->Path:
    d.mkdir(parents=True, exist_ok=True)
    for f in sample_raw_files()[:n]: (d/f.name).write_bytes(f.read_bytes())
    return d

def _linear_dng(path:Path):
    "A DNG that LibRaw opens as already demosaiced colour planes (not a mosaic)."
    img = (np.random.default_rng(0).random((64, 96, 3))*4000).astype(np.uint16)
    tags = [(50706,'B',4,(1,4,0,0),True), (50707,'B',4,(1,1,0,0),True), (271,'s',0,'darknb',True), (50717,'I',1,4095,True)]
    tifffile.imwrite(path, img, photometric=34892, extratags=tags, metadata=None)

def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, DarknbError) and '\n' not in msg, msg
    for w in words: assert w in msg, msg

# --- data sources -------------------------------------------------------------------------------------------------

def test_sources_and_batches(tmp_path):
    raw = _copy_samples(tmp_path/'raw')
    r = resolve_source(raw)
    assert r['kind']=='raw' and len(r['files'])==4
    r = resolve_source('mini-sid')
    assert r['kind']=='sid' and r['camera']=='Sony' and (r['root']/'Sony_train_list.txt').is_file()
    dls = make_dls(resolve_source(raw), 'raw', patch=32, bs=4, length=12, n_valid=6)
    x,y = dls.one_batch()
    assert x.shape==y.shape==(4, 4, 32, 32) and len(dls.train_ds)==12 and len(dls.valid_ds)==6
    assert 0<=float(x.min()) and float(x.max())<=1
    vx = torch.stack([dls.valid_ds[i][0] for i in range(2)])
    assert torch.equal(vx, torch.stack([dls.valid_ds[i][0] for i in range(2)]))   # validation items are fixed
    x,y = make_dls(r, 'srgb', patch=32, bs=2).one_batch()
    assert x.shape==(2, 4, 32, 32) and y.shape==(2, 3, 64, 64)

def test_unusable_sources(tmp_path):
    with pytest.raises(TrainError) as e: resolve_source(tmp_path)
    _one_line(e, str(tmp_path), 'empty folder')
    (tmp_path/'readme.txt').write_text('no photos here')
    with pytest.raises(TrainError) as e: resolve_source(tmp_path)
    _one_line(e, 'no RAW files')
    with pytest.raises(TrainError) as e: resolve_source(tmp_path/'missing')
    _one_line(e, 'no such file or folder')
    lin = tmp_path/'linear'; lin.mkdir()
    for i in range(3): _linear_dng(lin/f'frame{i}.dng')
    (lin/'broken.dng').write_bytes(b'not a raw file'*50)
    with pytest.raises(DataError) as e: make_dls(resolve_source(lin), patch=16, bs=2)
    _one_line(e, str(lin), '0 usable RAW file(s) of 4')
    mixed = _copy_samples(tmp_path/'mixed', 3); _linear_dng(mixed/'linear.dng')
    with pytest.warns(UserWarning, match='skipping 1 file'): dls = make_dls(resolve_source(mixed), patch=32, bs=2, length=4)
    assert len(dls.train_ds.files)+len(dls.valid_ds.files)==3
    with pytest.raises(DataError) as e: make_dls(resolve_source(_copy_samples(tmp_path/'one', 1)), patch=32)
    _one_line(e, 'need at least 2')
    with pytest.raises(DataError) as e: make_dls(resolve_source('samples'), patch=1024)
    _one_line(e, '--patch 1024 is larger than')

def test_model_and_loss_choices():
    m,arch,kw = make_model('raw', arch_kwargs=dict(width=8, depth=2))
    x = torch.rand(2, 4, 24, 24)
    assert arch=='denoiser' and kw['in_ch']==4 and torch.equal(m(x), x)   # starts as the identity
    m,arch,kw = make_model('srgb', arch_kwargs=dict(width=8, depth=2))
    assert arch=='light' and m(x).shape==(2, 3, 48, 48)
    for bad,word in [(lambda: make_model('raw', 'sid'), 'makes a srgb network'), (lambda: make_model('srgb', 'nope'), '--arch'),
                     (lambda: make_loss('huber'), '--loss'), (lambda: pick_precision('fp16', 'cpu'), 'needs a GPU')]:
        with pytest.raises(TrainError) as e: bad()
        _one_line(e, word)
    p,t = torch.rand(2, 4, 32, 32), torch.rand(2, 4, 32, 32)
    assert list(LOSSES)==['l1', 'l2', 'ssim', 'mix'] and all(isinstance(d, str) and d for _,d in LOSSES.values())
    for name in LOSSES:
        l = make_loss(name)(p, t); assert l.ndim==0 and float(l)>0 and float(make_loss(name)(t, t))<1e-5
    assert make_loss('l1') is not make_loss('l1')                # a new loss each time

# --- training -----------------------------------------------------------------------------------------------------

def test_training_lowers_the_loss():
    learn = make_learner('samples', task='raw', seed=0, precision='bf16', **{**TINY, 'length': 128, 'n_valid': 8, 'arch_kwargs': dict(width=16, depth=2)})
    before = learn.validate()[0]
    learn.fit_one_cycle(3, 5e-3)
    losses = [float(l) for l in learn.recorder.losses]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    after,ps,ss = learn.validate()
    assert after < before and np.isfinite(ps) and 0<ss<1

def test_bf16_autocast_runs_the_convolutions_in_bf16():
    from fastai.callback.core import Callback
    seen = {}
    class Spy(Callback):
        order = 20  # after `Autocast` has left autocast and cast the prediction
        def after_pred(self): seen['pred'] = self.pred.dtype
    learn = make_learner('samples', seed=0, precision='bf16', **TINY)
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    h = conv.register_forward_hook(lambda m, i, o: seen.__setitem__('conv', o.dtype))
    learn.fit(1, 1e-3, cbs=Spy())
    h.remove()
    assert seen['conv']==torch.bfloat16 and seen['pred']==torch.float32
    assert all(p.dtype==torch.float32 for p in learn.model.parameters())

def test_bf16_close_to_fp32():
    a = make_learner('samples', seed=0, precision='fp32', **TINY)
    b = make_learner('samples', seed=0, precision='bf16', **TINY)
    torch.nn.init.normal_(a.model.head.weight, std=0.05)     # not the identity: the network's output matters
    b.model.load_state_dict(a.model.state_dict())
    va,vb = a.validate(), b.validate()
    assert va[1]!=vb[1] and abs(va[1]-vb[1]) < 0.5 and abs(va[0]-vb[0]) < 0.02*va[0]

def _ckpt(out): return torch.load(Path(out)/'checkpoints'/'last.pth', weights_only=True)

def test_resume_gives_the_uninterrupted_run(tmp_path):
    a,b = tmp_path/'a',tmp_path/'b'
    make_learner('samples', out_dir=a, seed=1, **TINY).fit_one_cycle(3, 2e-3)
    with pytest.raises(KeyboardInterrupt): make_learner('samples', out_dir=b, seed=1, **TINY).fit_one_cycle(3, 2e-3, cbs=StopAfter(0))
    assert _ckpt(b)['epoch']==1
    torch.manual_seed(99); np.random.seed(5)           # another process, another random state
    lb = make_learner('samples', out_dir=b, seed=1, **TINY)
    info = lb.load_checkpoint()
    assert (info['epoch'], info['n_epoch'], info['lr']) == (1, 3, 2e-3)
    lb.fit_one_cycle(info['n_epoch'], info['lr'], start_epoch=info['epoch'])
    ca,cb = _ckpt(a),_ckpt(b)
    assert ca['epoch']==cb['epoch']==3
    for k in ca['model']: assert torch.equal(ca['model'][k], cb['model'][k]), k
    for sa,sb in zip(ca['opt']['state'], cb['opt']['state']):
        assert sa.keys()==sb.keys()
        for k in sa: assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    assert ca['opt']['hypers']==cb['opt']['hypers'] and ca['best']==cb['best']
    la,lb_ = (a/'log.csv').read_text().splitlines(),(b/'log.csv').read_text().splitlines()
    assert [l.split(',')[:5] for l in la]==[l.split(',')[:5] for l in lb_] and len(la)==4

def test_rng_states_round_trip():
    dls = make_dls(resolve_source('samples'), patch=32, bs=4, length=8)
    st = rng_states(dls)
    a = (torch.rand(3), np.random.rand(), __import__('random').random(), dls.train.rng.random())
    set_rng_states(torch.load(_save(st), weights_only=True), dls)   # survives a weights-only save and load
    b = (torch.rand(3), np.random.rand(), __import__('random').random(), dls.train.rng.random())
    assert torch.equal(a[0], b[0]) and a[1:]==b[1:]

def _save(o):
    import io
    f = io.BytesIO(); torch.save(o, f); f.seek(0); return f

def test_load_checkpoint_refuses_other_networks(tmp_path):
    make_learner('samples', out_dir=tmp_path, seed=0, **TINY).fit_one_cycle(1, 1e-3)
    other = make_learner('samples', out_dir=tmp_path, seed=0, **{**TINY, 'arch_kwargs': dict(width=16, depth=2)})
    with pytest.raises(TrainError) as e: other.load_checkpoint()
    _one_line(e, 'do not fit this network')
    (tmp_path/'junk.pth').write_bytes(b'junk')
    with pytest.raises(TrainError) as e: other.load_checkpoint(tmp_path/'junk.pth')
    _one_line(e, 'junk.pth')

def test_quick_train_scores():
    r = quick_train(iters=12, arch_kwargs=dict(width=8, depth=2), patch=32, bs=4, n_valid=4)
    assert r['iters']==12 and r['params']>0 and r['seconds']>0
    assert np.isfinite(r['psnr']) and r['input_psnr'] is not None
    assert r['input_psnr']==pytest.approx(input_scores(make_dls(resolve_source('samples'), patch=32, bs=4, n_valid=4))['psnr'])

def test_distribute_dl_splits_an_epoch():
    dls = make_dls(resolve_source('samples'), patch=32, bs=2, length=10)
    dl = dls.valid.new(shuffle=False, n=10)
    parts = [distribute_dl(dl, r, 3).get_idxs() for r in range(3)]
    assert [len(p) for p in parts]==[4, 4, 4] and sorted(set(sum(parts, [])))==list(range(10))
    assert len(distribute_dl(dl, 0, 3))==2

# --- the command --------------------------------------------------------------------------------------------------

def test_train_cmd_end_to_end(tmp_path, capsys):
    out = tmp_path/'run'
    assert train_cmd('samples', out=out, epochs=2, seed=3, **CMD)==0
    assert 'model written to' in capsys.readouterr().out
    for f in ('recipe.json', 'log.csv', 'history.png', 'model.pt', 'checkpoints/last.pth', 'checkpoints/best.pth'): assert (out/f).is_file(), f
    log = (out/'log.csv').read_text().splitlines()
    assert log[0].startswith('epoch,train_loss,valid_loss,psnr,ssim') and len(log)==3
    assert (out/'history.png').read_bytes()[:8]==b'\x89PNG\r\n\x1a\n'
    model,info = load_model(out/'model.pt', task='raw')
    rec = info['meta']['recipe']
    assert (rec['source'], rec['epochs'], rec['patch'], rec['bs'], rec['lr'], rec['loss'], rec['seed']) == ('samples', 2, 32, 4, 1e-3, 'l1', 3)
    assert info['arch']=='denoiser' and info['arch_kwargs']['width']==8 and rec['camera']=='sony-a7s2'   # the noise's camera is recorded
    assert info['meta']['scores']['psnr']==pytest.approx(max(float(l.split(',')[3]) for l in log[1:]), abs=1e-4)
    assert json.loads((out/'recipe.json').read_text())['arch_kwargs']==info['arch_kwargs']
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad(): assert model(x).shape==x.shape

def test_train_cmd_resumes_after_an_interruption(tmp_path):
    out = tmp_path/'run'
    with pytest.raises(KeyboardInterrupt): train('samples', out, epochs=3, extra_cbs=[StopAfter(1)], progress=False, **TINY_TRAIN)
    assert not (out/'model.pt').exists() and _ckpt(out)['epoch']==2
    with pytest.raises(TrainError) as e: train_cmd('samples', out=out, epochs=3, **CMD)
    _one_line(e, 'not empty', '--resume', '--force')
    with pytest.raises(TrainError) as e: train_cmd(None, out=out, epochs=4, resume=True)
    _one_line(e, '--epochs 4 differs')
    with pytest.raises(TrainError) as e: train_cmd(None, out=out, patch=64, resume=True)
    _one_line(e, '--patch 64 differs')
    assert train_cmd(None, out=out, resume=True, width=8)==0       # options left out come from recipe.json
    assert [l.split(',')[0] for l in (out/'log.csv').read_text().splitlines()]==['epoch', '0', '1', '2']
    assert load_model(out/'model.pt')[1]['meta']['scores']['epochs']==3

TINY_TRAIN = dict(arch_kwargs=dict(width=8, depth=2), patch=32, bs=4, length=16, n_valid=4)

def test_force_replaces_only_run_files(tmp_path):
    out = tmp_path/'run'; out.mkdir()
    (out/'notes.txt').write_text('mine')
    with pytest.raises(TrainError) as e: train_cmd('samples', out=out, epochs=1, **CMD)
    _one_line(e, str(out))
    assert train_cmd('samples', out=out, epochs=1, force=True, **CMD)==0
    assert (out/'notes.txt').read_text()=='mine' and (out/'model.pt').is_file()

@pytest.mark.parametrize('kw,words', [
    (dict(patch=8), ['--patch 8']), (dict(bs=0), ['--bs 0']), (dict(epochs=0), ['--epochs 0']),
    (dict(lr='fast'), ['--lr fast']), (dict(lr=-1.0), ['--lr -1.0']), (dict(ratio_min=300, ratio_max=100), ['--ratio-min 300']),
    (dict(length=2, bs=4), ['--bs 4', '--length']), (dict(arch='sid'), ['--arch sid', '--task raw']),
    (dict(loss='huber'), ['--loss']), (dict(precision='fp16', cpu=True), ['--precision fp16']),
    (dict(resume=True, force=True), ['--resume and --force']), (dict(resume=True), ['nothing to resume'])])
def test_bad_options_give_one_line(tmp_path, kw, words):
    with pytest.raises((TrainError, DataError)) as e: train_cmd('samples', out=tmp_path/'out', **{**CMD, **kw})  # --bs vs --length: the data's
    _one_line(e, *words)

def test_bad_sources_give_one_line(tmp_path):
    empty = tmp_path/'empty'; empty.mkdir()
    with pytest.raises(TrainError) as e: train_cmd(empty, out=tmp_path/'o1', **CMD)
    _one_line(e, str(empty))
    assert not (tmp_path/'o1').exists()                        # nothing is created for a run that cannot start
    lin = tmp_path/'linear'; lin.mkdir()
    for i in range(2): _linear_dng(lin/f'f{i}.dng')
    with pytest.raises(DataError) as e: train_cmd(lin, out=tmp_path/'o2', **CMD)
    _one_line(e, 'usable RAW file', 'not a Bayer or X-Trans mosaic')

def test_main_reports_errors(tmp_path, capsys):
    assert darknb.cli.main(['train', str(tmp_path/'nowhere'), '-o', str(tmp_path/'o')])==1
    err = capsys.readouterr().err.strip()
    assert err.startswith('darknb: error:') and 'nowhere' in err and '\n' not in err

@pytest.mark.parametrize('args', [['--workers', '-1'], ['--ratio-min', '0'], ['--lr', '0'], ['--lr', 'fast'], ['--loss', 'huber'],
                                  ['--patch', '8'], ['--bs', '1.5'], ['--task', 'jpeg']])
def test_parser_refuses_bad_values(tmp_path, args, capsys):
    with pytest.raises(SystemExit) as e: darknb.cli.main(['train', 'samples', '-o', str(tmp_path/'o'), *args])
    assert e.value.code==2 and not (tmp_path/'o').exists()
    assert args[0] in capsys.readouterr().err

def _checkers():
    "The annotation of each `train_cmd` parameter, evaluated as `darknb.cli` does (in the module's globals)."
    return {k: eval(v, vars(darknb.train)) if isinstance(v, str) else v for k,v in train_cmd.__annotations__.items() if k!='return'}

def test_command_signature():
    "`train_cmd` is a `@command`: one positional, options after `*`, a --help comment on each, checkers that refuse bad values."
    import inspect
    from fastcore.docments import docments
    assert getattr(train_cmd, 'darknb_command', False)
    ps = inspect.signature(train_cmd).parameters
    assert [k for k,p in ps.items() if p.kind!=p.KEYWORD_ONLY]==['source']
    doc = docments(train_cmd)
    assert all(doc[k] for k in ps), [k for k in ps if not doc[k]]
    ck = _checkers()
    for k,v in [('workers', '-1'), ('ratio_min', '0'), ('lr', '0'), ('lr', 'fast'), ('bs', '1.5'), ('patch', '8'), ('loss', 'huber'), ('arch', 'unet3000')]:
        with pytest.raises(ArgError): ck[k](v)
    assert ck['workers']('0')==0 and ck['lr']('find')=='find' and ck['lr']('3e-3')==3e-3 and ck['ratio_min']('1')==1
    assert ck['loss']('mix')=='mix' and sorted(ck['loss'].choices)==sorted(LOSSES)

# --- several processes ----------------------------------------------------------------------------------------------

def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path/'ddp'
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    port = str(29600 + os.getpid()%300)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', port, '-m', 'darknb.cli', 'train',
           'samples', '-o', str(out), '--cpu', '--width', '8', '--depth', '2', '--patch', '32', '--bs', '4', '--epochs', '2',
           '--length', '16', '--n-valid', '4', '--seed', '0']
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode==0, r.stderr[-3000:]
    info = load_model(out/'model.pt')[1]
    d = info['meta']['weights_sha1']
    assert info['meta']['world_size']==2 and len(d)==2 and d[0]==d[1]      # both processes ended with the same weights
    m,_ = load_model(out/'model.pt')
    assert weights_digest(m)!=weights_digest(make_model('raw', arch_kwargs=dict(width=8, depth=2))[0])  # and they trained
    assert len((out/'log.csv').read_text().splitlines())==3 and r.stdout.count('model written to')==1

def test_custom_data_and_network():
    "Other inputs (here 3-channel images) train through the same learner with `dls=` and `model=`; such a network is no darknb model file."
    from fastai.data.core import DataLoaders
    from darknb.unet import SIDUnet
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(24, 3, 32, 32, generator=g)
    pairs = [((c + 0.1*torch.randn(c.shape, generator=g)).clamp(0, 1), c) for c in clean]
    dls = DataLoaders.from_dsets(pairs[:16], pairs[16:], bs=4, device='cpu')
    net = SIDUnet(in_ch=3, out_ch=3, scale=1, residual=True, width=8, depth=2)
    r = quick_train(dls=dls, model=net, task='raw', iters=4, bs=4, n_valid=8)
    assert r['arch']=='custom' and np.isfinite(r['psnr']) and r['input_psnr']>0
    learn = make_learner(dls=dls, model=net, progress=False)
    with pytest.raises(TrainError) as e: learn.export_model('x.pt')
    _one_line(e, 'torch.save')
