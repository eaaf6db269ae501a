"""A bounded fuzz run of the RAW open path: truncations, bit flips and random bytes of real RAW files, and how each ended.

Every input goes through what every command does first, `darknb.raw.read_mosaic` (open, decode, check) and
`describe`, in a worker process. A worker that dies from a signal or takes longer than `--per-input` seconds is
recorded as a crash or a hang (and replaced); an exception other than `RawError` is a bug. The run stops at
`--time` seconds. Inputs: the real files of `$DARKNB_DATA/raw` (the generated samples when absent), each also as a
lossless-JPEG DNG (`write_dng(compression='ljpeg')`) when imagecodecs is installed.

    python benchmarks/fuzz_raw.py --time 120 --seeds 0 1 2
"""
import argparse, collections, multiprocessing as mp, queue, re, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_model

def mutations(data:bytes, rng:np.random.Generator):
    "One damaged copy of `data` per kind: a truncation, a few bit flips, random bytes over 1 % or 0.01 % of it, a zeroed block."
    n = len(data)
    yield 'truncated', data[:int(rng.integers(1, n))]
    b = bytearray(data)
    for i in rng.choice(n, 8, replace=False): b[i] ^= 1 << int(rng.integers(8))
    yield 'bit flips', bytes(b)
    for frac,name in ((0.01, 'random 1%'), (0.0001, 'random 0.01%')):
        a = np.frombuffer(data, np.uint8).copy()
        idx = rng.choice(n, max(1, int(n*frac)), replace=False); a[idx] = rng.integers(0, 256, len(idx), dtype=np.uint8)
        yield name, a.tobytes()
    a = np.frombuffer(data, np.uint8).copy(); at = int(rng.integers(0, n)); a[at:at+4096] = 0
    yield 'zeroed 4 KiB', a.tobytes()

def worker(jobs, results):
    import re, warnings; warnings.filterwarnings('ignore')
    from darknb.raw import read_mosaic, describe, RawError
    from darknb.core import quiet_stderr
    while True:
        job = jobs.get()
        if job is None: return
        key,data = job
        results.put((key, 'started', None))
        try:
            with quiet_stderr():
                describe(data); read_mosaic(data)
            end,why = 'decoded', None
        except RawError as e: end,why = 'refused', re.sub(r'\d[\d.]*', 'N', (e.reason or str(e)).split(' (')[0])[:70]  # one line a kind
        except Exception as e: end,why = 'BUG', f'{type(e).__name__}: {str(e)[:80]}'
        results.put((key, end, why))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--time', type=float, default=120, help='stop after this many seconds')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--per-input', type=float, default=30, help='seconds before an input counts as a hang')
    a = ap.parse_args()
    from darknb.raw import real_raw_files, sample_raw_files, read_mosaic, write_dng
    files = real_raw_files() or sample_raw_files()
    sources = {f.name: f.read_bytes() for f in files}
    try:
        import imagecodecs  # noqa: F401
        with tempfile.TemporaryDirectory() as d:
            for f in files:
                m,info = read_mosaic(f, kinds=('bayer',), normalized=False)
                p = write_dng(Path(d)/f'{f.stem}-ljpeg.dng', m, np.asarray(info.raw_pattern), info.black_levels, info.white_level, compression='ljpeg')
                sources[p.name] = p.read_bytes()
    except ImportError: print('imagecodecs not installed: no lossless-JPEG DNGs')
    inputs = [((name, seed, kind), blob) for seed in a.seeds for name,data in sources.items()
              for kind,blob in mutations(data, np.random.default_rng(seed))]
    print(f'CPU: {cpu_model()}; {len(sources)} source files, {len(inputs)} inputs planned, time limit {a.time:g} s')
    ctx = mp.get_context('spawn')
    counts, examples = collections.Counter(), {}
    t0, i = time.time(), 0
    def start():
        jobs, results = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=worker, args=(jobs, results), daemon=True); p.start()
        return p, jobs, results
    p, jobs, results = start()
    while i<len(inputs) and time.time()-t0<a.time:
        key,blob = inputs[i]; jobs.put((key, blob))
        try:
            results.get(timeout=120)                       # 'started' (the worker may still be importing)
            _,end,why = results.get(timeout=a.per_input)
        except queue.Empty:
            end,why = ('CRASH', f'signal {-p.exitcode}') if p.exitcode is not None else ('HANG', f'over {a.per_input:g} s')
            p.kill(); p.join(); p, jobs, results = start()
        kind = key[2]
        counts[(kind, end, why)] += 1
        examples.setdefault((end, why), key)
        i += 1
    jobs.put(None); p.join(10)
    print(f'tried {i} of {len(inputs)} inputs in {time.time()-t0:.0f} s\n')
    w = max(len(str(w)) for (_,_,w) in counts) if counts else 10
    print(f"{'mutation':14s} {'ended':8s} {'how':{w}s} count")
    for (kind,end,why),n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[1])): print(f'{kind:14s} {end:8s} {str(why or ""):{w}s} {n:5d}')
    ends = collections.Counter()
    for (_,end,_),n in counts.items(): ends[end] += n
    print('\nin all: ' + ', '.join(f'{k} {v}' for k,v in sorted(ends.items())))
    bad = {k: v for k,v in examples.items() if k[0] in ('BUG', 'CRASH', 'HANG')}
    for (end,why),key in bad.items(): print(f'  {end} {why}: first at {key}')
    return 1 if bad else 0

if __name__=='__main__': sys.exit(main())
