"""The field's protocol: our rows on the shipped expert zoo, beside the published MNIST / Fashion-MNIST tables.

For each dataset and IPC it runs `configs/zoo/<dataset>_ipc<N>.toml` (CV-DD, SRe2L++ = the single best expert by the
same prior, random real images with the same soft labels, both with a ConvNet-3 and a ResNet-18 student and the KD
protocol; random real images and CV-DD images with hard labels and the DC/DSA/MTT protocol) over several seeds of the
whole distillation: seed s recovers its own images, draws its own random subset and trains its own students, the zoo
held fixed. Then one run (`--spread-seed`, default the first seed) trains its first student again with the other seeds on
its own images and labels (`cvdd_nb.pipeline.student_spread`): the spread a student adds alone.

    python bench/field.py                               # fashion_mnist IPC 10 (the target cell), then IPC 1, then mnist 10 and 1
    python bench/field.py --ipcs 1 10 50 --jobs 8 --device cuda   # everything, on a GPU
    python bench/field.py --quick                       # fashion_mnist IPC 10, one seed

Writes bench/results/field.{json,md} (or --results) after every finished run, so a partial table is never lost; rows
not measured yet read "pending". Every run lives in its own resumable folder under --work (default bench/.cache/field):
a stopped benchmark picks up where it stopped. Each finished run (and the priors, and the whole-data bound) is also
recorded in bench/results/field_runs/ (its numbers, config, commit, machine, wall time): a small file meant to be
committed, so a benchmark longer than one sitting accumulates across machines; a record counts only while its
config and the zoo pool's weights are exactly those of the run it stands for (else the run is made again). The vote
priors are computed once per zoo pool, on the zoo's validation hold-out (never the test split), and given to every run.
"""
from __future__ import annotations
import argparse, copy, datetime, hashlib, math, statistics, sys, time, tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(HERE))

from cvdd_nb.core import CVDDError, atomic_write, load_json, save_json, versions
from cvdd_nb.data import load_dataset, normalize
from cvdd_nb.experts import ExpertPool
from cvdd_nb.protocols import HardProtocol, train_hard
from cvdd_nb.pipeline import RunConfig, hard_tag, parse_override, pool_dir, run, set_key, student_spread, student_tag
from accuracy import git_commit, machine, run_jobs

SOFT = ('cvdd', 'sre2l++', 'random_soft')
HARD = ('random_hard', 'cvdd_hard')
NAMES = {'cvdd': 'CV-DD', 'sre2l++': 'SRe2L++ (best expert alone)', 'random_soft': 'random real, same soft labels',
         'random_hard': 'random real subset', 'cvdd_hard': 'CV-DD images, hard labels'}
ORDER = [('fashion_mnist', 10), ('fashion_mnist', 1), ('mnist', 10), ('mnist', 1), ('fashion_mnist', 50), ('mnist', 50)]


# ----------------------------------------------------------------------------------------------------------- configs
def read_config(folder:Path, dataset:str, ipc:int)->dict:
    p = folder/f'{dataset}_ipc{ipc}.toml'
    if not p.exists(): raise CVDDError(f'no config {p}', 'write one (see configs/zoo/) or pick --datasets/--ipcs that have one')
    with open(p, 'rb') as f: return tomllib.load(f)

def seed_config(cfg:dict, seed:int)->dict:
    "Seed `seed` of the whole distillation: recover, random draw and student all take it."
    c = copy.deepcopy(cfg); c['seed'] = seed; c['name'] = f"{cfg['name']}-s{seed}"
    c.setdefault('evaluate', {})['seeds'] = [seed]
    return c

def spread_job(c:dict, folder:Path, seeds:list)->dict:
    "{method: accs} of the run's first student trained again with `seeds` on the run's own soft sets."
    return {m: e.accs for m, e in student_spread(c, folder, seeds).items()}

def priors_config(cfg:dict, holdout:dict)->dict:
    "The run that computes the pool's distill priors once: seed of the zoo's hold-out, scored on that hold-out."
    c = copy.deepcopy(cfg); c['name'] = f"{cfg['dataset']}-priors"
    c['seed'] = c['valid_seed'] = holdout['seed']; c['valid'] = holdout['per_class']
    c['ipc'] = c.get('priors', {}).get('distill_ipc') or c['ipc']      # the cells of a dataset share one computation
    return c

def pool_holdout(cfg:dict, root:Path)->dict:
    "The validation hold-out every expert of the config's pool was kept out of (they must agree)."
    pool = ExpertPool.load(pool_dir(root, cfg['experts']['pool']))
    hs = {(e.meta.holdout or {}).get('seed') for e in pool} , {(e.meta.holdout or {}).get('per_class') for e in pool}
    if len(hs[0]) != 1 or len(hs[1]) != 1 or None in hs[0]:
        raise CVDDError(f"the experts of {cfg['experts']['pool']} record no common validation hold-out", 'use a zoo pool (built by `cvdd experts train --zoo`)')
    return dict(seed=hs[0].pop(), per_class=hs[1].pop())

def zoo_priors(cfg:dict, work:Path, records:Path|None=None, compute:bool=True)->dict|None:
    "{expert: prior}, the reference's distill priors of the config's pool, computed once on its validation hold-out (None: not recorded, not computed)."
    c = priors_config(cfg, pool_holdout(cfg, work)); key = record_key(c, work)
    if records and (r := load_record(records/cfg['dataset']/'priors.json', key)): return r['results']
    if not compute: return None
    out = work/cfg['dataset']/c['name']
    t0 = time.perf_counter(); run(c, out=out, until='priors')
    p = load_json(out/'priors.json', dict(priors=list, experts=list))
    res = dict(values=dict(zip(p['experts'], p['priors'])), valid=c['valid'], valid_seed=c['valid_seed'], mode=p['mode'],
               folder=str(out.relative_to(work)))
    if records: save_record(records/cfg['dataset']/'priors.json', key, res, time.perf_counter() - t0, c.get('device', 'auto'))
    return res


# ----------------------------------------------------------------------------------------------------------- records
def pool_fingerprint(cfg:dict, work:Path)->str:
    "sha256 of the weights of every expert in the config's pool (a rebuilt zoo makes every record stale)."
    h = hashlib.sha256()
    for f in sorted(pool_dir(work, cfg['experts']['pool']).glob('*/model.safetensors')): h.update(f.parent.name.encode()); h.update(f.read_bytes())
    return h.hexdigest()[:16]

def record_key(c:dict, work:Path)->dict:
    "What a run's numbers depend on: its whole config (less where the data sit and which device ran it) and the pool's weights."
    d = RunConfig.from_dict(c).to_dict(); d.pop('root', None); d.pop('device', None)
    return dict(config=d, pool=pool_fingerprint(c, work))

def load_record(p:Path, key:dict)->dict|None:
    "The record at `p` if it was made for exactly `key`; None (and a note when one is there but stale)."
    if not p.exists(): return None
    r = load_json(p)
    if r.get('key') == key: return r
    print(f'bench: {p} was recorded for another config or pool: running it again', file=sys.stderr); return None

def save_record(p:Path, key:dict, results, wall_s:float, device:str='auto'):
    save_json(p, dict(key=key, results=results, wall_s=round(wall_s, 1), commit=git_commit(), machine=machine(device),
                      date=datetime.date.today().isoformat(), versions=versions()))


def full_data(dataset:str, hard:dict, epochs:int, work:Path, device:str, root:str='')->dict:
    "The bound: the DC protocol's student trained on the whole training set for `epochs` (lr / 10 at half), seed 0."
    hp = HardProtocol.from_dict(dict(hard, epochs=epochs)); tag = f'{hp.student}-w{hp.width:g}'
    p = work/dataset/'full'/f'{tag}-dc-e{epochs}.json'
    if p.exists(): return load_json(p)
    data = load_dataset(dataset, root=root or None)
    r = train_hard(normalize(data.train.x, data.info), data.train.y, data.info, hp, seed=0, test=data.test, device=None if device == 'auto' else device)
    out = dict(dataset=dataset, student=tag, epochs=epochs, acc=round(r.acc, 2), train_images=len(data.train), seconds=round(r.seconds, 1), protocol=hp.to_dict())
    save_json(p, out); return out


# ----------------------------------------------------------------------------------------------------------- statistics
def spread(dist:list, students:list)->dict:
    """mean and std over seeds of the whole distillation (`dist`), the std of students alone on one set (`students`),
    and what is left for recover and the random draw: sqrt(max(total^2 - student^2, 0))."""
    sd = statistics.stdev(dist) if len(dist) > 1 else None
    ss = statistics.stdev(students) if len(students) > 1 else None
    rec = math.sqrt(max(sd ** 2 - ss ** 2, 0.0)) if sd is not None and ss is not None else None
    return dict(mean=statistics.fmean(dist), std=sd, n=len(dist), accs=list(dist), student_std=ss, student_accs=list(students), recover_std=rec)

def cell(runs:list, tag:str, method:str, extra:dict|None=None)->dict|None:
    """One method of one student over the finished runs of a (dataset, IPC), each a results dict with its `seed`: the
    `spread` of the student of each run's own seed; the student-only spread from `extra` = dict(seed, tag, accs={method:
    [accs of more students on that seed's run]}), with that run's own student first; None if no run has the method."""
    dist, students = [], []
    for r in runs:
        m = r['by_student'].get(tag, {}).get(method)
        if m is None: continue
        dist.append(m['accs'][r['seeds'].index(r['seed'])])
        if extra and r['seed'] == extra['seed'] and tag == extra['tag'] and method in extra['accs']: students = [dist[-1], *extra['accs'][method]]
    return dict(spread(dist, students), student_seed=extra['seed'] if students else None) if dist else None

def to_json(cells:dict)->dict:
    "{(dataset, ipc): {(tag, method): cell}} -> {'dataset/ipc': {'tag|method': cell}}, and back with `from_json`."
    return {f'{d}/{i}': {f'{t}|{m}': c for (t, m), c in cs.items()} for (d, i), cs in cells.items()}

def from_json(cells:dict)->dict:
    return {(k.split('/')[0], int(k.split('/')[1])): {tuple(a.split('|')): c for a, c in cs.items()} for k, cs in cells.items()}

def fmt(c:dict|None, pending='pending')->str:
    if not c: return pending
    return f"{c['mean']:.2f} ± {c['std']:.2f}" if c['std'] is not None else f"{c['mean']:.2f} (1 seed)"

def pooled(a:dict, b:dict)->float|None:
    "The pooled seed spread of two cells: sqrt((sa^2 + sb^2) / 2)."
    if a['std'] is None or b['std'] is None: return None
    return math.sqrt((a['std'] ** 2 + b['std'] ** 2) / 2)


# ----------------------------------------------------------------------------------------------------------- tables
def rows_of(cells:dict, students:list, hard:str|None)->list:
    "(label, protocol, {ipc: cell}) for our rows of one dataset."
    rows = []
    for tag in students:
        for m in SOFT: rows.append((NAMES[m], f'{tag}, KD on soft labels', {ipc: c.get((tag, m)) for ipc, c in cells.items()}))
    if hard:
        for m in HARD: rows.append((NAMES[m], f'{hard.removesuffix("-dc")}, hard labels, DC protocol', {ipc: c.get((hard, m)) for ipc, c in cells.items()}))
    return rows

def targets(cells:dict)->list:
    "The issue's targets, each met or missed by how much (Fashion-MNIST IPC 10, ConvNet-3, KD; MNIST IPC 10)."
    out, t = [], 'convnet3-w1'
    fm, mn = cells.get(('fashion_mnist', 10), {}), cells.get(('mnist', 10), {})
    def line(what, value, goal, extra=''):
        if value is None: return f'- {what}: pending'
        ok = value >= goal
        return f"- {what}: {value:.2f} vs {goal:.2f}: **{'met' if ok else 'missed'}**{'' if ok else f' by {goal - value:.2f}'}{extra}"
    cv = fm.get((t, 'cvdd'))
    out.append(line('Fashion-MNIST IPC 10, CV-DD (ConvNet-3, KD) >= 86.0 (IDC)', cv and cv['mean'], 86.0))
    out.append(line('... the field\'s best, 88.5 (RCIG; stretch)', cv and cv['mean'], 88.5))
    for other, margin in (('sre2l++', 1.0), ('random_soft', 2.0)):
        o = fm.get((t, other))
        if cv and o:
            p = pooled(cv, o); d = cv['mean'] - o['mean']
            extra = f'; pooled seed spread {p:.2f}: the gap is {"more" if p is not None and d > p else "not more"} than it' if p is not None else ''
            out.append(line(f'Fashion-MNIST IPC 10, CV-DD - {NAMES[other]} >= +{margin:.1f}', d, margin, extra))
        else: out.append(f'- Fashion-MNIST IPC 10, CV-DD - {NAMES[other]} >= +{margin:.1f}: pending')
    mc = mn.get((t, 'cvdd'))
    out.append(line('MNIST IPC 10, CV-DD (ConvNet-3, KD) >= 98.5', mc and mc['mean'], 98.5))
    return out

def markdown(res:dict, published:dict)->str:
    meta = res['meta']; ipcs = meta['ipcs']
    md = [f"# The field's protocol{'' if meta['complete'] else ' (partial: the runs finished so far)'}", '',
          f"Final-epoch top-1 accuracy (%) on the real test split, mean ± std over {meta['seeds']} seed(s) of the whole distillation "
          f"(each seed its own recover, random draw and student; the expert zoo fixed). Command: `{meta['command']}` at commit "
          f"`{meta['commit']}`, {meta['machine']}, {meta['wall_s'] / 60:.1f} min for this call; the runs it reports took "
          f"{sum(r['wall_s'] for r in meta['runs']) / 60:.1f} min (each with its commit and machine under Runs). Ours: the protocol named in each row "
          "(KD: soft labels from the zoo committee, AdamW, the kit's student recipe; DC protocol: hard labels, SGD 0.01, DSA, "
          f"{meta.get('hard_epochs', '?')} epochs). Published rows: ConvNet-3 students, the labels named; `bench/published.toml` says where each was read.", '']
    allcells = from_json(res['cells'])
    for ds in meta['datasets']:
        cells = {ipc: allcells.get((ds, ipc), {}) for ipc in ipcs}
        md += [f'## {ds}', '', '| method | protocol | ' + ' | '.join(f'IPC {i}' for i in ipcs) + ' |', '|---|---|' + '---|' * len(ipcs)]
        for label, proto, by in rows_of(cells, meta['students'], meta.get('hard_tag')):
            md.append(f'| ours: {label} | {proto} | ' + ' | '.join(fmt(by[i]) for i in ipcs) + ' |')
        full = [f for f in meta['full_data'] if f['dataset'] == ds]
        for f in full:
            md.append(f"| ours: whole training set | {f['student']}, hard labels, DC protocol, {f['epochs']} epoch(s) | {f['acc']:.2f} | " + ' | '.join('' for _ in ipcs[1:]) + ' |')
        if not full: md.append('| ours: whole training set | convnet3-w1, hard labels | pending | ' + ' | '.join('' for _ in ipcs[1:]) + ' |')
        for p in published.get(ds, []):
            a = p['acc']
            vals = [f"{a['full']}" if 'full' in a and i == ipcs[0] else (f"{a[str(i)]}" if str(i) in a else '') for i in ipcs]
            md.append(f"| published: {p['method']} | ConvNet-3, {p['labels']} labels ({p['status']}) | " + ' | '.join(vals) + ' |')
        md.append('')
    md += ['## Where the spread comes from', '',
           'Per cell: the std over seeds of the whole distillation; the std of students alone (the first student, trained with '
           'every seed on the images and labels of one run of the cell, the run of the seed named); what is left for recover '
           'and the random draw, sqrt(max(total² - student², 0)).', '',
           '| dataset | IPC | student | method | total std | student std (run of seed) | recover std |',
           '|---|---|---|---|---|---|---|']
    f2 = lambda v: '-' if v is None else f'{v:.2f}'
    for (ds, ipc), cs in allcells.items():
        for (tag, m), c in cs.items():
            ss = f2(c['student_std']) + (f" ({c['student_seed']})" if c.get('student_seed') is not None else '')
            md.append(f'| {ds} | {ipc} | {tag} | {m} | {f2(c["std"])} | {ss} | {f2(c["recover_std"])} |')
    md += ['', '## Targets', '', *targets(allcells), '',
           '## Priors', '', 'The vote priors of every run (the reference\'s distill prior: the accuracy of each expert\'s own SRe2L++ '
           'student), computed once per pool and scored on the zoo\'s validation hold-out:', '']
    for ds, p in meta['priors'].items():
        md.append(f"- {ds}: " + ', '.join(f'{n} {v:.2f}' for n, v in p['values'].items()) + f" ({p['valid']} images per class, hold-out seed {p['valid_seed']})")
    md += ['', '## Runs', '', 'Each run as recorded in `field_runs/` (a run measured in an earlier sitting keeps its own commit and machine).', '',
           '| config | seed | wall (min) | commit | machine |', '|---|---|---|---|---|']
    md += [f"| `{r['config']}` | {r['seed']} | {r['wall_s'] / 60:.1f} | `{r.get('commit', '?')}` | {r.get('machine', '?')} |" for r in meta['runs']]
    return '\n'.join(md) + '\n'


# ----------------------------------------------------------------------------------------------------------- the benchmark
def benchmark(a)->dict:
    work, t0 = Path(a.work), time.perf_counter()
    keys = [(d, i) for d, i in ORDER if d in a.datasets and i in a.ipcs] + [(d, i) for d in a.datasets for i in a.ipcs if (d, i) not in ORDER]
    cfgs = {}
    for k in keys:
        c = read_config(Path(a.configs), *k); c['device'] = a.device
        if a.root.get(k[0]): c['root'] = a.root[k[0]]
        for kv in a.set: set_key(c, *parse_override(kv))
        cfgs[k] = c
    name = a.results or str(HERE/'results'/('field_quick' if a.quick else 'field'))
    records = Path(name).parent/'field_runs'            # shared by --quick and the full benchmark: the same runs
    # 1. once per dataset: the pool's distill priors on its validation hold-out, then given to every run
    priors = {}
    for ds in dict.fromkeys(d for d, _ in keys):
        first = cfgs[next(k for k in keys if k[0] == ds)]
        if first.get('priors', {}).get('mode') != 'distill': continue
        if (p := zoo_priors(first, work, records, compute=not a.records_only)): priors[ds] = p
    for k, c in cfgs.items():
        if k[0] in priors: c['priors'] = dict(mode='given', values=priors[k[0]]['values'])
    # 2. the runs, seed by seed (the target cell first), then the full-data bounds
    sc0 = RunConfig.from_dict(next(iter(cfgs.values()))).stage_configs()
    students = [student_tag(s) for s in sc0['students']]; htag = hard_tag(sc0['hard']) if sc0['hard'] else None
    jobs, what, keyed = [], [], []          # every job; what it is; (record file, key) for each
    for s in a.seeds:
        for k in keys:
            c = seed_config(cfgs[k], s)
            jobs.append((run, (c, work/k[0]/c['name']))); what.append(('run', k, s))
            keyed.append((records/k[0]/f"{c['name']}.json", record_key(c, work)))
    sp = a.seeds[0] if a.spread_seed is None else a.spread_seed
    if sp not in a.seeds: raise CVDDError(f'--spread-seed {sp} is not one of --seeds {a.seeds}', 'name one of the seeds the benchmark runs')
    more = [s for s in a.seeds if s != sp]
    if more:                                # after the runs: the spread seed's run trains its first student with the other seeds
        for k in keys:
            c = seed_config(cfgs[k], sp)
            jobs.append((spread_job, (c, work/k[0]/c['name'], more))); what.append(('spread', k, sp))
            keyed.append((records/k[0]/f"{c['name']}-spread.json", dict(run=record_key(c, work), seeds=more)))
    if a.full_epochs:
        for ds in dict.fromkeys(d for d, _ in keys):
            hp = RunConfig.from_dict(cfgs[next(k for k in keys if k[0] == ds)]).stage_configs()['hard'] or HardProtocol()
            jobs.append((full_data, (ds, hp.to_dict(), a.full_epochs, work, a.device, a.root.get(ds, '')))); what.append(('full', (ds, None), None))
            hk = dict(protocol=HardProtocol.from_dict(dict(hp.to_dict(), epochs=a.full_epochs)).to_dict(), dataset=ds)
            keyed.append((records/ds/f"full-{hp.student}-w{hp.width:g}-dc-e{a.full_epochs}.json", hk))
    published = tomllib.loads((HERE/'published.toml').read_text())
    outs = [None] * len(jobs)
    for i, (p, key) in enumerate(keyed):                 # what an earlier sitting (any machine) already measured
        if (r := load_record(p, key)): outs[i] = dict(results=r['results'], wall_s=r['wall_s'], commit=r['commit'], machine=r['machine'])
    for i, (kind, k, s) in enumerate(what):              # a spread recorded on another seed's run of the cell counts too
        if kind != 'spread' or outs[i] is not None: continue
        for s2 in (x for x in a.seeds if x != s):
            c2 = seed_config(cfgs[k], s2); others = [x for x in a.seeds if x != s2]
            if (r := load_record(records/k[0]/f"{c2['name']}-spread.json", dict(run=record_key(c2, work), seeds=others))):
                outs[i], what[i] = dict(results=r['results'], wall_s=r['wall_s'], commit=r['commit'], machine=r['machine']), (kind, k, s2)
                break
    todo = [] if a.records_only else [i for i, o in enumerate(outs) if o is None]

    def finished(i, o):
        p, key = keyed[i]
        save_record(p, key, o['results'], o['wall_s'], a.device)
        write(i, dict(o, commit=git_commit(), machine=machine(a.device)))

    def write(i=None, o=None):
        if i is not None: outs[i] = o
        runs_by, extra = {}, {}
        for (kind, k, s), o in zip(what, outs):
            if o is not None and kind == 'run': runs_by.setdefault(k, []).append((s, o))
            if o is not None and kind == 'spread': extra[k] = dict(seed=s, tag=students[0], accs=o['results'])
        cells = {k: {(t, m): c for t in [*students, *([htag] if htag else [])] for m in [*SOFT, *HARD]
                     if (c := cell([dict(o['results'], seed=s) for s, o in rs], t, m, extra.get(k)))} for k, rs in runs_by.items()}
        meta = dict(mode='quick' if a.quick else 'full', complete=all(o is not None for o in outs), datasets=list(dict.fromkeys(d for d, _ in keys)),
                    ipcs=sorted(set(i for _, i in keys)), seeds=len(a.seeds), seed_list=a.seeds, students=students, hard_tag=htag,
                    hard_epochs=sc0['hard'].epochs if sc0['hard'] else None, priors=priors,
                    full_data=[o['results'] for (kind, *_), o in zip(what, outs) if kind == 'full' and o is not None],
                    spread_seed=sp if more else None,
                    runs=[dict(config=f"{Path(a.configs).relative_to(ROOT) if Path(a.configs).resolve().is_relative_to(ROOT) else a.configs}/{k[0]}_ipc{k[1]}.toml",
                               seed=s if kind == 'run' else f'{s}: students {", ".join(str(x) for x in a.seeds if x != s)}',
                               wall_s=o['wall_s'], commit=o['commit'], machine=o['machine'])
                          for (kind, k, s), o in zip(what, outs) if kind in ('run', 'spread') and o is not None],
                    command=' '.join(['python', 'bench/field.py', *sys.argv[1:]]), commit=git_commit(), machine=machine(a.device),
                    versions=versions(), wall_s=round(time.perf_counter() - t0, 1))
        res = dict(meta=meta, cells=to_json(cells))
        save_json(name + '.json', res); atomic_write(name + '.md', markdown(res, published))
        return res
    for phase in (('run', 'full'), ('spread',)):           # a spread job needs its run finished
        now = [i for i in todo if what[i][0] in phase]
        if now: run_jobs([jobs[i] for i in now], a.jobs, a.threads, lambda j, o, now=now: finished(now[j], o))
    res = write(); print(Path(name + '.md').read_text()); return res

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fashion_mnist, IPC 10, one seed')
    p.add_argument('--datasets', nargs='+', default=['fashion_mnist', 'mnist'])
    p.add_argument('--ipcs', nargs='+', type=int, default=[1, 10])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2], help='seeds of the whole distillation')
    p.add_argument('--spread-seed', type=int, default=None, help="the run whose first student is trained again with the other seeds (default: the first seed)")
    p.add_argument('--configs', default=str(ROOT/'configs'/'zoo'), help='folder of <dataset>_ipc<N>.toml')
    p.add_argument('--full-epochs', type=int, default=0, help='epochs of the whole-training-set bound (the DC protocol\'s ConvNet-3; 0: skip it)')
    p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE', help='overrides for every config, e.g. recover.iterations=100')
    p.add_argument('--root', nargs='*', default=[], metavar='DATASET=DIR', help='dataset folders, e.g. fashion_mnist=/data/fmnist')
    p.add_argument('--records-only', action='store_true', help='run nothing: the table from the runs recorded in field_runs/ (the rest pending)')
    p.add_argument('--device', default='auto')
    p.add_argument('--jobs', type=int, default=1, help='runs at a time, each in its own process')
    p.add_argument('--threads', type=int, default=0, help='torch threads per run (0: torch default)')
    p.add_argument('--work', default=str(HERE/'.cache'/'field'), help='run folders (resumable)')
    p.add_argument('--results', default='', help='output path without extension')
    a = p.parse_args(argv)
    if a.quick: a.datasets, a.ipcs, a.seeds = ['fashion_mnist'], [10], a.seeds[:1]
    a.root = dict(r.split('=', 1) for r in a.root)
    try: benchmark(a)
    except CVDDError as e: print(f'bench: error: {e}', file=sys.stderr); sys.exit(2)
    except KeyboardInterrupt:
        print('bench: stopped (Ctrl-C); run the same command again to resume', file=sys.stderr); sys.exit(130)

if __name__ == '__main__': main()
