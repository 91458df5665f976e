"""Lever 1 of `../shared/docs/levers.md` on the validation hold-out: do weak, early-stopped teachers make better soft labels?

Random real images (IPC 10 of Fashion-MNIST, drawn from the training split less the zoo's hold-out) are labelled by the
zoo's six experts, final or their early snapshots (`experts.teachers = "zoo:fashion_mnist@e1"`, `@e3`), voting with the
zoo's distill priors; a ConvNet-3 student learns them by KD with the field config's recipe (300 epochs) and is scored on
the hold-out (500 images per class; never the test split). Only the labels change between variants, so the random
subset isolates what the teachers give (recover is not involved).

    python bench/lever_teachers.py [--variants final e1 e3] [--seeds 0 1] [--work DIR]

Each variant is a resumable run folder under --work; writes bench/results/lever_teachers.{json,md}.
"""
from __future__ import annotations
import argparse, copy, statistics, sys, time, tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cvdd_nb.core import atomic_write, load_json, save_json
from cvdd_nb.pipeline import run
from cvdd_nb.zoo import git_commit, machine

TEACHERS = {'final': '', 'e1': 'zoo:fashion_mnist@e1', 'e3': 'zoo:fashion_mnist@e3'}

def variant_config(name:str, seeds:list)->dict:
    "The field config of Fashion-MNIST IPC 10, on the hold-out, random_soft only, labelled by the teachers of `name`."
    c = tomllib.loads((ROOT/'configs/zoo/fashion_mnist_ipc10.toml').read_text())
    pri = load_json(HERE/'results/field_runs/fashion_mnist/priors.json')['results']
    c.update(name=f'lever-teachers-{name}', valid=pri['valid'], valid_seed=pri['valid_seed'], priors=dict(mode='given', values=pri['values']))
    c['evaluate'] = dict(c['evaluate'], methods=['random_soft'], seeds=list(seeds), students=[])
    c['experts'] = dict(c['experts'], teachers=TEACHERS[name])
    return c

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--variants', nargs='+', default=list(TEACHERS), choices=list(TEACHERS))
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--work', default=str(HERE/'.cache'/'lever_teachers'))
    p.add_argument('--out', default=str(HERE/'results'/'lever_teachers'))
    a = p.parse_args(argv); t0 = time.perf_counter(); rows = {}
    for v in a.variants:
        c = variant_config(v, a.seeds); r = run(c, out=Path(a.work)/c['name'])
        accs = r['methods']['random_soft']['accs']
        rows[v] = dict(teachers=TEACHERS[v] or 'zoo:fashion_mnist', accs=accs, mean=statistics.fmean(accs),
                       std=statistics.stdev(accs) if len(accs) > 1 else None, label_teachers=r['label_teachers'])
    meta = dict(command=' '.join(['python', 'bench/lever_teachers.py', *(argv if argv is not None else sys.argv[1:])]), commit=git_commit(),
                machine=machine('auto'), wall_s=round(time.perf_counter() - t0, 1), seeds=a.seeds)
    save_json(a.out + '.json', dict(meta=meta, rows=rows))
    md = ['# Lever 1: early-stopped teachers label random real images (validation hold-out)', '',
          'Fashion-MNIST, IPC 10, random real images (one draw, seed 0), soft labels from the zoo experts named, ConvNet-3 student, '
          'KD, 300 epochs; accuracy (%) on the zoo\'s validation hold-out (500 per class), one value per student seed. '
          f"Command: `{meta['command']}` at commit `{meta['commit']}`, {meta['machine']}.", '',
          '| teachers | student seeds | accuracy per seed | mean ± std |', '|---|---|---|---|']
    for v, r in rows.items():
        md.append(f"| {r['teachers']} | {', '.join(map(str, a.seeds))} | {', '.join(f'{x:.2f}' for x in r['accs'])} | "
                  + (f"{r['mean']:.2f} ± {r['std']:.2f}" if r['std'] is not None else f"{r['mean']:.2f}") + ' |')
    atomic_write(a.out + '.md', '\n'.join(md) + '\n'); print('\n'.join(md))

if __name__ == '__main__': main()
