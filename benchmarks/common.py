"What the benchmarks share: memory readings of this process and the CPU's name (printed beside every figure)."
import os, platform

MB = 2**20

def status_kb(key:str)->int:
    "A value of /proc/self/status in kB (0 when unavailable)."
    try:
        for line in open('/proc/self/status'):
            if line.startswith(key+':'): return int(line.split()[1])
    except OSError: pass
    return 0

def reset_peak()->bool:
    "Reset VmHWM to the current resident size (Linux >= 4.0, our own process)."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False

def cpu_model()->str:
    "The CPU's model name (machines of one kind differ: AMX or only AVX-512 BF16 changes the fast paths' gains)."
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or 'unknown CPU'
