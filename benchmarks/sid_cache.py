"""Memory and speed of SID training data: the memory-mapped `RawCache` against loading every image into RAM.

The official SID training code decodes every RAW file once and keeps it in memory as float32 (packed input x ratio,
and the target), so its memory grows with the dataset (64 GB and more for Sony). `darknb.sid` decodes each file once
into an on-disk cache of packed uint16 arrays and reads patches through memory maps.

This script generates SID-like pairs of the real Sony size (mosaic 2848 x 4256, packed 4 x 1424 x 2128; several
short frames share one long frame, as in SID), then, for a growing number of pairs, runs each way in a fresh
process and measures:

- the time to get ready (official: decode everything; cache: nothing, it was built once before),
- peak memory above the process's baseline: Python/numpy heap (tracemalloc) and peak resident size (VmHWM, reset
  after imports; it also counts pages of memory-mapped files while they are mapped),
- patches per second of random 512x512 patches (crop, x ratio, clip at 1, flips/transpose, to torch).

The cache is read three times: "cold" after asking the kernel to drop the cache files from its page cache
(posix_fadvise DONTNEED on our own files only), "warm", and warm with the memory maps kept open
(`RawCache(keep_open=True)`: no page faults on pages read before, but RSS then counts them). Everything is written under a temporary folder that is
removed at the end (unless --keep). Run from the repository root:

    python benchmarks/sid_cache.py                 # 4, 8, 16, 32 pairs, RAW task; under 3 minutes on 2 cores
    python benchmarks/sid_cache.py --counts 4 8 --task srgb
"""
import argparse, json, os, subprocess, sys, tempfile, time, shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's darknb

from common import MB, status_kb, reset_peak, cpu_model

def evict(paths):
    "Ask the kernel to drop these files (ours) from the page cache."
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try: os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally: os.close(fd)
        except (OSError, AttributeError): pass

# ------------------------------------------------------------------ data generation

def make_dataset(root:Path, n:int, shorts_per_long:int, H:int, W:int, seed:int=0):
    "n SID-named pairs (0.1 s shorts, 10 s longs) of H x W RGGB mosaics, written as DNG, and their list file."
    import numpy as np
    from darknb.raw import write_dng, pattern_from_str
    rng = np.random.default_rng(seed)
    pat = pattern_from_str('RGGB')
    (root/'Sony/short').mkdir(parents=True); (root/'Sony/long').mkdir(parents=True)
    base = (512 + rng.gamma(2.0, 1500, (H, W))).clip(0, 16383).astype(np.uint16)  # a bright "scene"
    lines = []
    for k in range(n):
        scene = k//shorts_per_long + 1
        lname = f'0{scene:04d}_00_10s.dng'
        if k%shorts_per_long == 0:
            write_dng(root/'Sony/long'/lname, np.roll(base, 16*scene, axis=1), pat, [512]*4, 16383, exposure_time=10)
        dark = 512 + (np.roll(base, 16*scene, axis=1)-512)//100 + rng.integers(0, 8, (H, W), dtype=np.uint16)  # 1/100 of the light
        sname = f'0{scene:04d}_{k%shorts_per_long:02d}_0.1s.dng'
        write_dng(root/'Sony/short'/sname, dark, pat, [512]*4, 16383, exposure_time=0.1)
        lines.append(f'./Sony/short/{sname} ./Sony/long/{lname} ISO800 F8')
    (root/'Sony_train_list.txt').write_text('\n'.join(lines)+'\n')

# ------------------------------------------------------------------ one measurement (in a fresh process)

def child(a):
    import tracemalloc
    import numpy as np, torch
    from darknb.raw import open_raw, pack_mosaic
    from darknb.sid import sid_pairs, RawCache, SIDDataset, sid_render
    torch.set_num_threads(1)
    pairs = sid_pairs(a.root)[:a.n]
    reset_peak()
    base_rss = status_kb('VmRSS')
    tracemalloc.start()
    t0 = time.perf_counter()
    if a.method == 'official':
        # as in SID's train_Sony.py: decode once, keep packed input x ratio and the target as float32 in RAM
        def packed(path):  # SID's pack_raw, with the file's levels
            with open_raw(path) as r:
                im = r.raw_image_visible.astype(np.float32)
                black, white = float(np.mean(r.black_level_per_channel)), float(r.white_level)
                pat = r.raw_pattern.copy()
            return pack_mosaic(np.maximum(im-black, 0)/(white-black), pat)
        inputs = [packed(p.short)*np.float32(p.ratio) for p in pairs]
        targets = {}
        for p in pairs:
            if p.long not in targets:
                targets[p.long] = packed(p.long) if a.task == 'raw' else np.float32(sid_render(p.long)/65535.0).transpose(2, 0, 1)
        s = 1 if a.task == 'raw' else 2
        rng = np.random.default_rng(0)
        def item(i):
            x, y = inputs[i], targets[pairs[i].long]
            yy, xx = rng.integers(0, x.shape[1]-a.patch+1), rng.integers(0, x.shape[2]-a.patch+1)
            xp = x[:, yy:yy+a.patch, xx:xx+a.patch]; yp = y[:, yy*s:(yy+a.patch)*s, xx*s:(xx+a.patch)*s]
            if rng.random() < 0.5: xp, yp = xp[:, ::-1], yp[:, ::-1]
            if rng.random() < 0.5: xp, yp = xp[:, :, ::-1], yp[:, :, ::-1]
            if rng.random() < 0.5: xp, yp = xp.transpose(0, 2, 1), yp.transpose(0, 2, 1)
            return torch.from_numpy(np.ascontiguousarray(np.minimum(xp, 1))), torch.from_numpy(np.ascontiguousarray(yp))
    else:
        ds = SIDDataset(pairs, task=a.task, patch=a.patch, cache=RawCache(a.cache, keep_open=a.method == 'open'), train=True)
        item = ds.__getitem__
    ready = time.perf_counter()-t0
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    t1 = time.perf_counter()
    for _ in range(a.patches):
        x, y = item(int(rng.integers(len(pairs))))
    rate = a.patches/(time.perf_counter()-t1)
    heap = tracemalloc.get_traced_memory()[1]
    print(json.dumps(dict(ready_s=ready, patches_per_s=rate, heap_mb=heap/MB,
                          peak_rss_mb=(status_kb('VmHWM')-base_rss)/1024, shape=list(x.shape)+list(y.shape))))

def run_child(script, root, cache, method, n, a)->dict:
    cmd = [sys.executable, script, '--child', method, '--root', str(root), '--cache', str(cache), '--n', str(n),
           '--task', a.task, '--patch', str(a.patch), '--patches', str(a.patches)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0: raise RuntimeError(f'{method} n={n} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])

# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--counts', type=int, nargs='+', default=[4, 8, 16, 32], help='numbers of pairs')
    ap.add_argument('--size', type=int, nargs=2, default=[2848, 4256], help='mosaic height width (Sony a7S II)')
    ap.add_argument('--shorts-per-long', type=int, default=4)
    ap.add_argument('--task', choices=['raw', 'srgb'], default='raw')
    ap.add_argument('--patch', type=int, default=512)
    ap.add_argument('--patches', type=int, default=100, help='patches timed per run')
    ap.add_argument('--workdir', default=None); ap.add_argument('--keep', action='store_true')
    ap.add_argument('--child', default=None); ap.add_argument('--root'); ap.add_argument('--cache'); ap.add_argument('--n', type=int)
    a = ap.parse_args()
    if a.child:
        a.method = a.child
        return child(a)

    H, W = a.size
    if a.patch > min(H, W)//2: ap.error(f'--patch {a.patch} is larger than the packed frame {H//2}x{W//2}')
    t_start = time.perf_counter()
    work = Path(a.workdir or tempfile.mkdtemp(prefix='darknb-sid-bench-'))
    root, cache_root = work/'data', work/'cache'
    nmax = max(a.counts)
    try:
        t = time.perf_counter()
        make_dataset(root, nmax, a.shorts_per_long, H, W)
        print(f'generated {nmax} pairs ({nmax + -(-nmax//a.shorts_per_long)} DNG files, {H}x{W}) in {time.perf_counter()-t:.1f} s')
        from darknb.sid import sid_pairs, RawCache, SIDDataset
        pairs = sid_pairs(root)
        cache = RawCache(cache_root)
        files = SIDDataset(pairs, task=a.task, patch=a.patch, cache=cache).needs()
        t = time.perf_counter()
        n_entries = sum(cache.build(fs, (k,)) for k, fs in files.items() if fs)
        build = time.perf_counter()-t
        disk = sum(f.stat().st_size for f in cache_root.iterdir())/MB
        print(f'cache built once: {n_entries} entries in {build:.1f} s ({build/n_entries:.2f} s each), {disk:.0f} MB on disk')
        cache_files = [str(f) for f in cache_root.iterdir() if f.suffix == '.npy']

        rows = []
        script = str(Path(__file__).resolve())
        names = {'official': 'official: all in RAM', 'cold': 'memmap, cold cache', 'warm': 'memmap, warm',
                 'open': 'memmap, kept open'}
        for n in a.counts:
            r = {'official': run_child(script, root, cache_root, 'official', n, a)}
            evict(cache_files)
            r['cold'] = run_child(script, root, cache_root, 'memmap', n, a)
            r['warm'] = run_child(script, root, cache_root, 'memmap', n, a)
            r['open'] = run_child(script, root, cache_root, 'open', n, a)
            rows.append((n, r))
            print(f'  {n} pairs done', flush=True)

        print(f'\nSID-like pairs, mosaic {H}x{W} (packed 4x{H//2}x{W//2}), {a.shorts_per_long} shorts per long, '
              f'task {a.task!r}, {a.patches} random {a.patch}x{a.patch} patches per run, 1 thread; CPU {cpu_model()}')
        print('memory: peak above the process baseline; heap = tracemalloc (Python + numpy), RSS = VmHWM\n')
        hdr = f"{'pairs':>5}  {'method':<21} {'ready s':>7} {'heap MB':>8} {'peak RSS MB':>11} {'patches/s':>9}"
        print(hdr); print('-'*len(hdr))
        for n, r in rows:
            for k, v in r.items():
                print(f"{n:>5}  {names[k]:<21} {v['ready_s']:>7.1f} {v['heap_mb']:>8.0f} {v['peak_rss_mb']:>11.0f} {v['patches_per_s']:>9.0f}")
        print('\npairs  RSS official / memmap   patches/s memmap (cold, warm, kept open) / official')
        for n, r in rows:
            o = r['official']
            print(f"{n:>5}  {o['peak_rss_mb']/max(r['warm']['peak_rss_mb'], 1):>20.0f}x   "
                  + ', '.join(f"{r[k]['patches_per_s']/o['patches_per_s']:.2f}" for k in ('cold', 'warm', 'open')))
        (n0, r0), (n1, r1) = rows[0], rows[-1]
        if n1 > n0:
            print(f"\nfrom {n0} to {n1} pairs the official way's peak RSS grows "
                  f"{(r1['official']['peak_rss_mb']-r0['official']['peak_rss_mb'])/(n1-n0):.0f} MB per pair; the memmap cache's "
                  f"{(r1['warm']['peak_rss_mb']-r0['warm']['peak_rss_mb'])/(n1-n0):+.1f} MB per pair")
        print(f'total {time.perf_counter()-t_start:.0f} s')
    finally:
        if not a.keep and not a.workdir: shutil.rmtree(work, ignore_errors=True)

if __name__ == '__main__': main()
