#!/usr/bin/env python3
"""Copy a run's report files (report.md, results.json, PNGs, tables; never weights or checkpoints) into results/NAME/ with a SOURCE.md
that records the command, commit and date, so README numbers always come from files a run wrote.
   python tools/snapshot_results.py RUN_DIR NAME --command "cvdd demo" [--log LOG]
LOG: the output of `/usr/bin/time -f 'total %e s' COMMAND 2>&1 | tee LOG`; the command's total wall time and the
`cvdd` wall time it printed are read from it into SOURCE.md.   """
import argparse, datetime, re, shutil, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEP = ('.md', '.json', '.png', '.csv')

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('run'); ap.add_argument('name'); ap.add_argument('--command', required=True)
    ap.add_argument('--log', default='', help='output of `/usr/bin/time -f "total %%e s" COMMAND`')
    a = ap.parse_args(); src, dst = Path(a.run), ROOT/'results'/a.name
    # the run's top-level report files, plus the tables one folder down (evaluate/results.md, experts/pool.md)
    files = [p for p in [*src.glob('*'), *src.glob('*/*.md')] if p.is_file() and p.suffix in KEEP and p.stat().st_size < 2_000_000
             and not p.name.startswith('.')]
    if not files: raise SystemExit(f'no result files under {src}')
    shutil.rmtree(dst, ignore_errors=True)
    for p in files: (dst/p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(p, dst/p.relative_to(src))
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    timing = ''
    if a.log:
        log = Path(a.log).read_text()
        total, run = re.findall(r'^total ([\d.]+) s$', log, re.M), re.findall(r'wall time (\d+) s', log)
        if not total: raise SystemExit(f'{a.log} has no "total N s" line: run the command under /usr/bin/time -f "total %e s"')
        timing = f' Wall time of the whole command: {float(total[-1]) / 60:.1f} min' + (f' (of which the run itself: {int(run[-1]) / 60:.1f} min).' if run else '.')
    (dst/'SOURCE.md').write_text(f'Written by `{a.command}` at commit {commit or "?"} on {datetime.date.today()}; '
                                 f'copied from {src.name}/ by tools/snapshot_results.py.{timing}\n')
    print(f'{len(files)} files -> {dst}')

if __name__ == '__main__': main()
