"""What a distilled set carries, measured on finished runs (issue 15: why does the committee tie the single expert?).

For each soft-labelled set of a run (CV-DD, SRe2L++, the random real subset of the same size) and each expert of the
run's pool:
- **reads**: the share of the clean images the expert classifies as their class (cross-architecture reading: an image
  made for one network may speak to it alone);
- on random-resized crops of the images (the views relabel and the student see; teachers in eval mode here):
  **agree**, the share of views on which every expert gives the same class; **correct**, the share on which the
  committee's mean probability picks the image's class; **entropy**, the mean entropy (nats) of that mean probability.
  Views that every teacher reads the same way, with a confident label, teach a student little beyond a hard label
  (`../shared/docs/levers.md`: recovered images that are "too easy");
- **spread**: the diversity within a class, the root-mean-square pixel distance between two images of the same class
  (normalised space), averaged over classes.

    python bench/diagnose.py RUN [RUN ...] [--views 32] [--out bench/results/diagnose]

Writes OUT.json (every number) and OUT.md (a table per run).
"""
from __future__ import annotations
import argparse, itertools, math, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cvdd_nb.core import CVDDError, atomic_write, load_json, make_generator, save_json
from cvdd_nb.data import load_dataset
from cvdd_nb.experts import ExpertPool
from cvdd_nb.recover import Recovered
from cvdd_nb.experts import resolve_flip
from cvdd_nb.pipeline import RunConfig, holdout, pool_dir, run_sets
from cvdd_nb.zoo import git_commit, machine


def views(x:torch.Tensor, n:int, flip:bool, seed:int=0)->torch.Tensor:
    "`n` random-resized crops (scale 0.08-1) of every image, resized back: (n, N, C, H, W); the same crops for every set."
    torch.manual_seed(seed)
    crop = v2.RandomResizedCrop(x.shape[-2:], scale=(0.08, 1.0), antialias=True)
    out = torch.stack([torch.stack([crop(img) for img in x]) for _ in range(n)])
    if flip:
        g = make_generator(seed); m = torch.rand(out.shape[:2], generator=g) < 0.5
        out[m] = out[m].flip(-1)
    return out

@torch.no_grad()
def carried(x:torch.Tensor, y:torch.Tensor, pool:ExpertPool, n_views:int, flip:bool, batch:int=512)->dict:
    "The measures of one set (see the module's docstring)."
    reads, logits = {}, []
    vx = views(x, n_views, flip).flatten(0, 1); vy = y.repeat(n_views)
    for e in pool:
        m = e.model.eval()
        reads[e.name] = round(100 * (m(x).argmax(1) == y).float().mean().item(), 2)
        logits.append(torch.cat([m(vx[i:i + batch]) for i in range(0, len(vx), batch)]))
    lg = torch.stack(logits)                                   # (experts, views, classes)
    pred = lg.argmax(-1); p = F.softmax(lg, -1).mean(0)
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
    K = int(y.max()) + 1
    dists = [torch.pdist(x[y == c].flatten(1)).div(math.sqrt(x[0].numel())).mean().item() for c in range(K) if (y == c).sum() > 1]
    return dict(reads=reads, agree=round(100 * (pred == pred[0]).all(0).float().mean().item(), 2),
                correct=round(100 * (p.argmax(-1) == vy).float().mean().item(), 2), entropy=round(ent.mean().item(), 4),
                spread=round(sum(dists) / len(dists), 4) if dists else None, images=len(x), views=n_views)

def diagnose(folder:Path, n_views:int=32)->dict:
    "{method: measures} for the soft-labelled sets of the finished run in `folder`."
    m = load_json(folder/'manifest.json')
    if not m.get('config'): raise CVDDError(f'{folder} holds no run (no config in its manifest)', 'point at a run folder written by `cvdd run`')
    cfg = RunConfig.from_dict(m['config']); sc = cfg.stage_configs()
    data = load_dataset(cfg.dataset, root=cfg.root or None)
    if cfg.valid: data = holdout(data, cfg.valid, cfg.holdout_seed)
    pool = ExpertPool.load(pool_dir(folder, sc['experts'].pool) if sc['experts'].pool else folder/'experts')
    recs = {r: Recovered.load(folder/'recover'/r) for r in ('cvdd', 'sre2l++') if (folder/'recover'/r/'recovered.json').exists()}
    if 'cvdd' not in recs: raise CVDDError(f'{folder}: recover has not finished', 'finish the run first (run the same command again)')
    sets = run_sets(cfg.replace(evaluate=dict(cfg.evaluate, methods=[k for k in ('cvdd', 'sre2l++', 'random_soft') if k in recs or k == 'random_soft'])), data, recs)
    flip = resolve_flip(sc['relabel'].flip, data.info.name)
    return {k: carried(x, y, pool, n_views, flip) for k, (x, y, _) in sets.items()}

def markdown(res:dict, meta:dict|None=None)->str:
    md = ['# What each distilled set carries', '',
          'Per run and set: each expert\'s reading of the clean images (% classified as their class), and on random-resized crops '
          '(eval-mode teachers): the share of crops on which every expert agrees, on which the committee\'s mean probability is '
          'right, and its mean entropy (nats); spread: RMS pixel distance between two images of a class (normalised). Written by '
          '`bench/diagnose.py` (its docstring says why each matters)' + (f" as `{meta['command']}` at commit `{meta['commit']}`, {meta['machine']}." if meta else '.'), '']
    for run, sets in res.items():
        experts = list(next(iter(sets.values()))['reads'])
        md += [f'## `{run}`', '', '| set | ' + ' | '.join(f'reads: {e}' for e in experts) + ' | agree % | correct % | entropy | spread |',
               '|---|' + '---|' * (len(experts) + 4)]
        for k, s in sets.items():
            md.append(f'| {k} | ' + ' | '.join(f"{s['reads'][e]:.1f}" for e in experts) + f" | {s['agree']:.1f} | {s['correct']:.1f} | {s['entropy']:.3f} | {s['spread']:.3f} |")
        md.append('')
    return '\n'.join(md)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+'); p.add_argument('--views', type=int, default=32)
    p.add_argument('--out', default=str(HERE/'results'/'diagnose'), help='output path without extension')
    a = p.parse_args(argv)
    try: res = {Path(r).name: diagnose(Path(r), a.views) for r in a.runs}
    except CVDDError as e: print(f'diagnose: error: {e}', file=sys.stderr); sys.exit(2)
    meta = dict(command=' '.join(['python', 'bench/diagnose.py', *(argv if argv is not None else sys.argv[1:])]), commit=git_commit(), machine=machine('auto'))
    save_json(a.out + '.json', dict(meta=meta, runs=res)); atomic_write(a.out + '.md', markdown(res, meta)); print(markdown(res, meta))

if __name__ == '__main__': main()
