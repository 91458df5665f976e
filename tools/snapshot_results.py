#!/usr/bin/env python3
"""Copy a run's report files (report.md, results.json, PNGs, tables; never weights or checkpoints) into results/NAME/ with a SOURCE.md
that records the command, commit and date, so README numbers always come from files a run wrote.
   python tools/snapshot_results.py RUN_DIR NAME --command "cvdd demo"   """
import argparse, datetime, shutil, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEP = ('.md', '.json', '.png', '.csv')

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('run'); ap.add_argument('name'); ap.add_argument('--command', required=True)
    a = ap.parse_args(); src, dst = Path(a.run), ROOT/'results'/a.name
    # the run's top-level report files, plus the tables one folder down (evaluate/results.md, experts/pool.md)
    files = [p for p in [*src.glob('*'), *src.glob('*/*.md')] if p.is_file() and p.suffix in KEEP and p.stat().st_size < 2_000_000
             and not p.name.startswith('.')]
    if not files: raise SystemExit(f'no result files under {src}')
    shutil.rmtree(dst, ignore_errors=True)
    for p in files: (dst/p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(p, dst/p.relative_to(src))
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    (dst/'SOURCE.md').write_text(f'Written by `{a.command}` at commit {commit or "?"} on {datetime.date.today()}; '
                                 f'copied from {src.name}/ by tools/snapshot_results.py.\n')
    print(f'{len(files)} files -> {dst}')

if __name__ == '__main__': main()
