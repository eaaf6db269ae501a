"""Start-up cost of `darknb enhance` on a small file: this working tree against an earlier revision, side by side.

    python benchmarks/enhance_startup.py [--against REV] [--runs N]

REV (default 06e5032, the last commit before the command table) is checked out into a temporary git worktree.
Both trees restore the same small generated dark DNG with the bundled model in fresh processes, alternately, and
the script prints the median wall time of each (the whole command, from the interpreter's start to the written file),
the time to import `darknb.restore`, their ratio, and which heavy libraries each imported.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_model

RUN = """
import sys, time; t0 = time.perf_counter()
sys.path.insert(0, {tree!r})
from darknb.cli import main
import darknb.restore; t_import = time.perf_counter()-t0
rc = main(['enhance', {src!r}, '-o', {out!r}, '--ratio', '100', '--force'])
heavy = ','.join(m for m in ('fastai', 'pandas', 'matplotlib', 'fastcore.docments') if m in sys.modules) or 'none'
print(f'{{t_import:.3f}} {{rc}} {{heavy}}')
"""

def run(tree:Path, src:Path, out:Path)->tuple[float,float,str]:
    "Wall time of one `darknb enhance` in a fresh process (with the interpreter's start), the time to import `darknb.restore`, the heavy modules loaded."
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, '-c', RUN.format(tree=str(tree), src=str(src), out=str(out))],
                       capture_output=True, text=True, env={**os.environ, 'PYTHONDONTWRITEBYTECODE': '1'})
    wall = time.perf_counter()-t0
    if r.returncode!=0 or not r.stdout.strip(): sys.exit(f'{tree}: enhance failed:\n{r.stderr[-2000:]}')
    t_import,rc,heavy = r.stdout.split()[-3:]
    if rc!='0': sys.exit(f'{tree}: enhance exited {rc}:\n{r.stderr[-2000:]}')
    return wall, float(t_import), heavy

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--against', default='06e5032', help='the revision to compare with (default: before the command table)')
    p.add_argument('--runs', type=int, default=5, help='runs of each tree (default 5)')
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from darknb.raw import sample_dng
    from darknb.restore import demo_frames
    from darknb.raw import write_dng, describe
    with tempfile.TemporaryDirectory(prefix='darknb-bench-') as d:
        d = Path(d)
        _,dark,info = demo_frames('coffee', 100, 1600, 0)   # a 600 x 396 dark frame: start-up dominates
        src = write_dng(d/'small.dng', dark, info.raw_pattern, info.black_levels, info.white_level, wb=info.wb[:3],
                        exposure_time=0.001, iso=1600)
        old = d/'old'
        subprocess.run(['git', '-C', str(ROOT), 'worktree', 'add', '--detach', str(old), a.against], check=True, capture_output=True)
        try:
            times = {'before': [], 'after': []}; imports = {'before': [], 'after': []}; heavy = {}
            for i in range(a.runs+1):  # the first round warms the disk cache and is not counted
                for k,tree in (('before', old), ('after', ROOT)):
                    t,ti,h = run(tree, src, d/f'out-{k}')
                    if i: times[k].append(t); imports[k].append(ti); heavy[k] = h
        finally: subprocess.run(['git', '-C', str(ROOT), 'worktree', 'remove', '--force', str(old)], capture_output=True)
    med = {k: statistics.median(v) for k,v in times.items()}
    print(f'CPU: {cpu_model()} ({os.cpu_count()} cores); {a.runs} runs each, alternating; small file {info.width} x {info.height}')
    print(f'{"tree":8s} {"median s":>9s} {"min s":>7s} {"import s":>9s}  heavy modules imported')
    for k in ('before', 'after'):
        print(f'{k:8s} {med[k]:9.2f} {min(times[k]):7.2f} {statistics.median(imports[k]):9.2f}  {heavy[k]}  ({"revision "+a.against if k=="before" else "this tree"})')
    print(f'after / before: {med["after"]/med["before"]:.2f}')

if __name__=='__main__': main()
