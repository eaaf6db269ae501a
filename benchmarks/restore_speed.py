"""Restoration speed and memory: `darknb.restore`'s fast path against a plain float32 whole-image run of the same network.

The fast path is `darknb.restore.FastNet` + `tiled_apply`: inference mode, channels-last memory, bfloat16 autocast
(where the CPU has AMX / AVX-512 BF16), a frozen oneDNN graph, and seamless tiles of at most `--tile` packed pixels
(margin = the receptive field's reach). The plain path is `model(x)` under `torch.no_grad()` in float32 on the
whole image. Both run the same weights on the same 12-megapixel dark frame (the coffee sample scaled up to the Sony
size, 2848 x 4256, darkened 100x with the α7S II noise model at ISO 1600, x100, clipped at 1; packed 4 x 1424 x 2128).

Networks: the SID U-Net and the light U-Net (`darknb.unet.sid_unet`, `light_unet`; random weights, seed 0), and a
trained darknb model file when one is given (`--model`) or bundled (`darknb/assets/default_model.pth`). For random
weights the outputs are compared by their PSNR relative to the plain output's range (peak to peak) and their
largest difference; for a trained RAW model also by each path's PSNR against the clean reference (rendered to sRGB),
and the gap between the two in dB.

Each measurement runs in a fresh process; memory is that process's peak resident size (VmHWM of /proc/self/status,
reset after imports, set-up and loading the input, so it counts the run itself: network activations, tiles, output).
"first" is the first call (it traces and optimises the graph), "steady" the second one on the same frame; CPU time
(user + system, all threads) is printed beside the wall-clock time, since on a shared machine the latter depends on
the other jobs. The last part runs the light U-Net on 3, 12 and 27 megapixels: the fast path's working memory
(peak minus its output buffer) stays nearly flat, the plain path's grows with the image.

    python benchmarks/restore_speed.py                 # about 3 minutes on 2 shared cores
    python benchmarks/restore_speed.py --threads 1 --archs light --model path/to/model.pth
"""
import argparse, json, math, os, subprocess, sys, tempfile, time, shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's darknb

from common import MB, status_kb, reset_peak, cpu_model

# ---------------------------------------------------------------- the child: one measurement

def cpu_s()->float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime+r.ru_stime

def child(a):
    import numpy as np, torch
    torch.set_num_threads(a.threads)
    from darknb.unet import sid_unet, light_unet, load_model
    from darknb.restore import FastNet, fast_forward
    if a.arch in ('sid', 'light'):
        torch.manual_seed(0)
        net = dict(sid=sid_unet, light=light_unet)[a.arch]().eval()
    else: net = load_model(a.arch)[0]
    x = torch.from_numpy(np.load(a.input, mmap_mode='r')[:, :a.rows, :a.cols].copy())[None]
    if a.path=='fast': fast = FastNet(net)
    def run():
        if a.path=='plain':
            with torch.no_grad(): return net(x)
        return fast_forward(fast, x, tile=a.tile)
    base = status_kb('VmRSS'); reset_peak()
    c0,t0 = cpu_s(),time.perf_counter(); y = run(); first,first_cpu = time.perf_counter()-t0,cpu_s()-c0
    peak1 = status_kb('VmHWM')
    steady = steady_cpu = peak2 = None
    if a.path=='fast' and a.repeat:
        del y; base2 = status_kb('VmRSS'); reset_peak()
        c0,t0 = cpu_s(),time.perf_counter(); y = run(); steady,steady_cpu = time.perf_counter()-t0,cpu_s()-c0
        peak2 = (status_kb('VmHWM')-base2)/1024
    if a.out: np.save(a.out, y[0].numpy())
    print(json.dumps(dict(first=first, steady=steady, first_cpu=first_cpu, steady_cpu=steady_cpu, peak_mb=(peak1-base)/1024, steady_peak_mb=peak2, base_mb=base/1024,
                          in_mb=x.numel()*4/MB, out_mb=y.numel()*4/MB, lowp=a.path=='fast' and fast.low_precision)))

# ---------------------------------------------------------------- the parent

def measure(a, tmp, arch, path, rows=None, cols=None, out=None, repeat=True):
    cmd = [sys.executable, __file__, '--child', '--arch', str(arch), '--path', path, '--input', str(tmp/'input.npy'),
           '--threads', str(a.threads), '--tile', str(a.tile), '--rows', str(rows or 10**6), '--cols', str(cols or 10**6)]
    if out: cmd += ['--out', str(out)]
    if repeat: cmd += ['--repeat']
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    if r.returncode: raise RuntimeError(f'{arch} {path} failed:\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def make_input(tmp:Path, mp:float):
    "A dark frame of about `mp` megapixels (Sony aspect): the packed network input and the clean reference."
    import numpy as np
    from skimage.transform import resize
    from darknb.raw import sample_scene, mosaic_from_srgb, pattern_from_str, normalize, pack_mosaic
    from darknb.noise import synth_dark, SONY_A7S2
    f = math.sqrt(mp*1e6/(2848*4256))
    H,W = int(round(2848*f/32))*32,int(round(4256*f/32))*32   # the Sony frame's shape (2848 x 4256 at 12.1 MP)
    img = resize(sample_scene('coffee'), (H, W), order=1, anti_aliasing=False).astype(np.float32)
    pat = pattern_from_str('RGGB')
    clean = mosaic_from_srgb(img, pat)
    dark = synth_dark(clean, pat, [512]*4, 16383, 100, SONY_A7S2(1600), rng=0)
    x = np.clip(pack_mosaic(normalize(dark, pat, [512]*4, 16383, clip=False), pat)*100, 0, 1).astype(np.float32)
    np.save(tmp/'input.npy', x)
    np.save(tmp/'clean.npy', pack_mosaic(normalize(clean, pat, [512]*4, 16383), pat).astype(np.float32))
    return x.shape

def compare(tmp, arch, trained:bool):
    import numpy as np
    p,f = np.load(tmp/f'{arch}-plain.npy'), np.load(tmp/f'{arch}-fast.npy')
    rng = float(p.max()-p.min())
    res = dict(max_diff=float(np.abs(p-f).max()), psnr_range=10*math.log10(rng**2/float(((p-f)**2).mean())))
    if trained and p.shape[0]==4:  # a RAW model: score both against the clean reference, developed to sRGB
        import torch
        from darknb.raw import unpack_mosaic, render_mosaic, pattern_from_str, SAMPLE_CAM_XYZ
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)   # fastai's imports use torch.jit.script
            from darknb.metrics import psnr
        pat = pattern_from_str('RGGB')
        dev = lambda q: torch.from_numpy(render_mosaic(unpack_mosaic(np.clip(q, 0, 1), pat), pat, (2., 1., 1.6), SAMPLE_CAM_XYZ)).permute(2, 0, 1)
        ref = dev(np.load(tmp/'clean.npy'))
        res.update(psnr_plain=float(psnr(dev(p), ref)), psnr_fast=float(psnr(dev(f), ref)))
    return res

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=2, help='torch CPU threads (default 2)')
    ap.add_argument('--mp', type=float, default=12.1, help='megapixels of the test frame (default 12.1, the Sony size)')
    ap.add_argument('--tile', type=int, default=1024, help='largest tile side of the fast path, packed pixels (default 1024)')
    ap.add_argument('--archs', nargs='+', default=['light', 'sid'], help="networks: 'light', 'sid' (random weights)")
    ap.add_argument('--model', help='also a trained darknb model file (default: the bundled model, if any)')
    ap.add_argument('--no-scaling', action='store_true', help='skip the memory-versus-size runs')
    ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    for k in ('arch', 'path', 'input', 'out'): ap.add_argument(f'--{k}', help=argparse.SUPPRESS)
    ap.add_argument('--rows', type=int, help=argparse.SUPPRESS); ap.add_argument('--cols', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--repeat', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(a)

    import torch
    from darknb.unet import bf16_supported, default_model_path
    from darknb.raw import DarknbError
    archs = list(a.archs)
    if a.model: archs.append(str(Path(a.model).resolve()))
    else:
        try: archs.append(str(default_model_path()))
        except DarknbError: pass
    T0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix='darknb-restore-bench-'))
    try:
        shape = make_input(tmp, a.mp)
        mp_out = shape[1]*shape[2]*4/1e6
        print(f'frame: packed {shape[0]} x {shape[1]} x {shape[2]} ({mp_out:.1f} MP mosaic); {a.threads} threads; '
              f'CPU {cpu_model()}, bfloat16 units: {bf16_supported()}; tiles of at most {a.tile} packed px')
        rows = []
        for arch in archs:
            name = arch if arch in ('sid', 'light') else Path(arch).name
            r = {p: measure(a, tmp, arch, p, out=tmp/f'{Path(arch).name}-{p}.npy') for p in ('plain', 'fast')}
            c = compare(tmp, Path(arch).name, arch not in ('sid', 'light'))
            rows.append((name, r, c))
            for p in ('plain', 'fast'):
                (tmp/f'{Path(arch).name}-{p}.npy').unlink()
        print()
        print('wall-clock seconds of the first call (it compiles) and of the second; CPU seconds (all threads) of the same calls;')
        print('peak memory of the call above the process before it (MB)\n')
        print(f"{'network':<12}{'path':<7}{'first s':>8}{'steady s':>9}{'first cpu':>10}{'steady cpu':>11}{'peak MB':>9}   comparison")
        for name, r, c in rows:
            f,p_ = r['fast'],r['plain']
            sp,sc = p_['first']/(f['steady'] or f['first']),p_['first_cpu']/(f['steady_cpu'] or f['first_cpu'])
            for p in ('plain', 'fast'):
                m = r[p]
                extra = '' if p=='plain' else (f"{sp:.1f}x faster (steady; {sc:.1f}x less CPU time), {p_['peak_mb']/m['peak_mb']:.1f}x less memory; "
                                               f"outputs {c['psnr_range']:.1f} dB apart (PSNR over the output range), largest difference {c['max_diff']:.1e}")
                st,stc = (f"{m['steady']:.2f}",f"{m['steady_cpu']:.2f}") if m['steady'] else ('-','-')
                print(f"{name[:11]:<12}{p:<7}{m['first']:>8.2f}{st:>9}{m['first_cpu']:>10.2f}{stc:>11}{m['peak_mb']:>9.0f}   {extra}")
            if 'psnr_plain' in c:
                print(f"{'':<19}against the reference: plain {c['psnr_plain']:.3f} dB, fast {c['psnr_fast']:.3f} dB "
                      f"(gap {abs(c['psnr_plain']-c['psnr_fast']):.3f} dB)")
        if not a.no_scaling and 'light' in archs:
            print('\nmemory as the image grows (light U-Net; peak of one call above the process before it, the input already loaded;')
            print('fast: the second call, once the graph is compiled; "working" = peak minus the output buffer):')
            print(f"{'MP':>6}{'path':>7}{'s':>7}{'peak MB':>9}{'input MB':>10}{'output MB':>11}{'working MB':>12}")
            light = dict(rows[archs.index('light')][1])
            runs = []
            for mp in (3, 12.1, 27):
                if abs(mp-a.mp)<0.5: runs += [(mp_out, 'fast', light['fast']), (mp_out, 'plain', light['plain'])]; continue
                shape = make_input(tmp, mp)
                for p in (('fast', 'plain') if mp<5 else ('fast',)):
                    runs.append((shape[1]*shape[2]*4/1e6, p, measure(a, tmp, 'light', p, repeat=p=='fast')))
            for mp, p, m in runs:
                s_,pk = (m['steady'],m['steady_peak_mb']) if m['steady'] else (m['first'],m['peak_mb'])
                print(f"{mp:>6.1f}{p:>7}{s_:>7.2f}{pk:>9.0f}{m['in_mb']:>10.0f}{m['out_mb']:>11.0f}{pk-m['out_mb']:>12.0f}")
        print(f'\ntotal {time.perf_counter()-T0:.0f} s')
    finally: shutil.rmtree(tmp, ignore_errors=True)

if __name__=='__main__': main()
