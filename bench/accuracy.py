"""Accuracy benchmark: does the committee beat a single expert and a random real subset?

For each dataset (fashion_mnist, mnist) and IPC (1, 10, 50) it runs the whole pipeline from `configs/<dataset>_ipc<N>.toml`
(CV-DD, SRe2L++ = the single best expert, random real subset with soft and with hard labels; a ConvNet-BN and a
ResNet-18 student; 3 seeds), and trains the same students on the full training data for the upper bound.

    python bench/accuracy.py                  # the whole benchmark (CPU budget: under 2 hours on 2 cores)
    python bench/accuracy.py --quick          # fashion_mnist, IPC 10, one seed (under 20 minutes on 2 cores)
    python bench/accuracy.py --ablation       # fashion_mnist IPC 10, one change at a time, scored on a validation split
    python bench/accuracy.py --device cuda --jobs 8 ...   # on a GPU: several runs at once
    python bench/accuracy.py --render                # only rewrite accuracy.md from accuracy.json (no runs)

Writes bench/results/accuracy{,_quick}.{json,md} or ablation.{json,md} (or --results). Every run lives in its own
resumable run folder under --work (default bench/.cache/accuracy, git-ignored): an interrupted benchmark picks up
where it stopped. The experts of a dataset are trained once and shared by all of its runs.
"""
from __future__ import annotations
import argparse, concurrent.futures as cf, copy, json, os, sys, time, tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torch

from cvdd_nb.core import CVDDError, atomic_write, load_json, save_json, versions
from cvdd_nb.data import load_dataset
from cvdd_nb.experts import ExpertRecipe, train_expert
from cvdd_nb.evaluate import EvalConfig
from cvdd_nb.pipeline import RunConfig, parse_override, run, set_key, student_tag
from cvdd_nb.zoo import git_commit as zoo_git_commit, machine

METHODS = ('cvdd', 'sre2l++', 'random_soft', 'random_hard')

# One change at a time against the defaults of configs/fashion_mnist_ipc10.toml (scored on a validation split held
# out of the training data, never on the test split). Each entry: name -> (what it tests, overrides).
ABLATION = {
    'defaults': ('the shipped config', {}),
    'init noise': ('SRe2L start: Gaussian noise', {'recover.init': 'noise'}),
    'init real': ('start from random real images', {'recover.init': 'real'}),
    'init patches': ('RDED start: 2x2 mosaics of easy real crops', {'recover.init': 'patches'}),
    'single expert': ('committee of 1: the best expert (SRe2L++)', {'recover.committee_size': 1, 'recover.schedule': 'top'}),
    'committee 3': ('three experts per image', {'recover.committee_size': 3}),
    'schedule random': ('a seeded random committee per IPC index', {'recover.schedule': 'random'}),
    'equal votes': ('every member weighted the same', {'recover.voter': 'equal'}),
    'temperature 1': ('sharper votes (T = 1)', {'recover.temperature': 1.0}),
    'temperature 20': ('flatter votes (T = 20)', {'recover.temperature': 20.0}),
    'prior distill': ('the reference prior: accuracy of each expert\'s own SRe2L++ student', {'priors.mode': 'distill'}),
    'augment shared': ('one crop for the whole batch (reference)', {'recover.augment': 'shared'}),
    'cda': ('CDA curriculum of the crop scale', {'recover.cda': True}),
    'more iterations': ('twice the recover iterations', {'recover.iterations': '2x'}),
    'fewer iterations': ('half the recover iterations', {'recover.iterations': '0.5x'}),
    'lr x4': ('4x the recover learning rate', {'recover.lr': '4x'}),
    'no BN term': ('cross-entropy only (r_bn = 0)', {'recover.r_bn': 0.0}),
    'no BSSL': ('labels with the running BN statistics', {'relabel.bssl': False}),
}


# ----------------------------------------------------------------------------------------------------------- configs
def read_config(dataset:str, ipc:int)->dict:
    p = ROOT/'configs'/f'{dataset}_ipc{ipc}.toml'
    with open(p, 'rb') as f: return tomllib.load(f)

def git_commit()->str:
    "The commit of everything but the tables this script rewrites."
    return zoo_git_commit(ROOT, paths=('.', ':(exclude)bench/results'))


# ----------------------------------------------------------------------------------------------------------- runs
def _call(args):
    "One job (in a worker process when --jobs > 1): fn(*fa) with `threads` torch threads, timed."
    fn, fa, threads = args
    if threads: torch.set_num_threads(threads)
    t0 = time.perf_counter(); r = fn(*fa)
    return dict(results=r, wall_s=round(time.perf_counter() - t0, 1))

def _die_with_parent():
    "Worker initializer: on Linux, end this worker when the benchmark process ends (even by SIGKILL), so no orphan keeps writing."
    if not sys.platform.startswith('linux'): return
    import ctypes, ctypes.util, signal
    try: ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError): return                                    # no glibc-style prctl: workers may outlive a kill
    if os.getppid() == 1: os._exit(1)                                           # the parent is already gone

def run_jobs(jobs:list, n:int, threads:int, done=None)->list:
    "Run (fn, args) jobs, n at a time in fresh processes (n = 1: here, in order); `done(i, result)` as each one ends."
    outs = [None] * len(jobs)
    if n <= 1:
        for i, (fn, fa) in enumerate(jobs):
            outs[i] = _call((fn, fa, threads))
            if done: done(i, outs[i])
        return outs
    ctx = __import__('multiprocessing').get_context('spawn')
    with cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_die_with_parent) as ex:
        futs = {ex.submit(_call, (fn, fa, threads)): i for i, (fn, fa) in enumerate(jobs)}
        for f in cf.as_completed(futs):
            i = futs[f]; outs[i] = f.result()
            if done: done(i, outs[i])
    return outs

def run_many(jobs:list, n:int, threads:int, done=None)->list:
    "Pipeline runs: (cfg, out) jobs through `run_jobs`."
    return run_jobs([(run, (c, o)) for c, o in jobs], n, threads, done)

def pool_config(cfg:dict, work:Path)->tuple:
    "The config that trains a dataset's shared experts, and the folder they land in."
    keep = ('dataset', 'root', 'seed', 'valid', 'device', 'experts')          # only what the experts depend on
    c = {k: copy.deepcopy(cfg[k]) for k in keep if k in cfg}; c['name'] = f"{cfg['dataset']}-experts"
    return c, work/cfg['dataset']/'experts-run'

def with_pool(cfg:dict, work:Path)->dict:
    "The config on the dataset's shared pool: the one it names (a folder or a zoo name, e.g. 'zoo:fashion_mnist'), else the one trained here."
    if cfg.get('experts', {}).get('pool'): return copy.deepcopy(cfg)
    c = copy.deepcopy(cfg); c.setdefault('experts', {})['pool'] = str((work/cfg['dataset']/'experts-run'/'experts').resolve()); return c

def prepare(cfg:dict, work:Path)->dict:
    "A dataset's shared experts, then their distill priors (cached beside the pool): everything its runs share."
    if cfg.get('experts', {}).get('pool', '').startswith('zoo:'): return dict(dataset=cfg['dataset'])   # shipped experts; priors per run
    pc, out = pool_config(cfg, work); run(pc, out=out, until='experts')
    c = with_pool(cfg, work); c['name'] = f"{cfg['dataset']}-priors"
    run(c, out=work/cfg['dataset']/c['name'], until='priors')
    return dict(dataset=cfg['dataset'])

def cost(cfg:dict)->float:
    "A rough relative cost of a run (images x (recover iterations + student epochs)), to start the largest first."
    sc = RunConfig.from_dict(cfg).stage_configs()
    return cfg['ipc'] * (sc['recover'].iterations + sum(s.epochs * (2 if s.student.startswith('resnet') else 1) for s in sc['students']))

def full_data(dataset:str, student:dict, epochs:int, work:Path, device:str, root:str='')->dict:
    "A student trained on the whole training set (hard labels, the experts' recipe): the upper bound."
    s = EvalConfig.from_dict(student); tag = student_tag(s)
    p = work/dataset/'full'/f'{tag}.json'
    if p.exists(): return load_json(p)
    data = load_dataset(dataset, root=root or None); t0 = time.perf_counter()
    e = train_expert(s.student, data, ExpertRecipe(epochs=epochs, batch_size=128), width=s.width, seed=0,
                     device=None if device == 'auto' else device, arch_kw=s.student_kw or None, quiet=True)
    r = dict(dataset=dataset, student=tag, epochs=epochs, acc=round(e.meta.test_acc, 2), train_images=len(data.train), seconds=round(time.perf_counter() - t0, 1))
    save_json(p, r); return r


# ----------------------------------------------------------------------------------------------------------- tables
def fmt(m:dict|None)->str:
    if not m: return '-'
    return f"{m['acc_mean']:.2f} ± {m['acc_std']:.2f}" if len(m['accs']) > 1 else f"{m['acc_mean']:.2f}"

def budget_line(cfg:dict)->str:
    sc = RunConfig.from_dict(cfg).stage_configs(); ex, rc = sc['experts'], sc['recover']
    st = ', '.join(f'{student_tag(s)} {s.epochs} ep' for s in sc['students'])
    sub = f' on {ex.train_per_class}/class' if ex.train_per_class else ''
    return (f"experts {len(ex.archs)} x {ex.epochs} ep{sub}; priors {sc['priors'].mode}; recover {rc.iterations} it ({rc.init} init, committee {rc.committee_size}, "
            f"{rc.schedule}, T={rc.temperature:g}); students {st}; seeds {len(sc['evaluate'].seeds)}")

def accuracy_markdown(rows:list, meta:dict)->str:
    md = [f"# Accuracy benchmark ({meta['mode']}{'' if meta.get('complete', True) else ', partial: the runs finished so far'})", '',
          f"Final-epoch top-1 accuracy (%) on the real test split, mean ± std over seeds. Command: `{meta['command']}` at commit "
          f"`{meta['commit']}`, {meta['machine']}, {meta['wall_s'] / 60:.1f} min in all"
          + (f" ({meta['shared_s'] / 60:.1f} min of it for the shared work first: each dataset's experts and distill priors, and the full-data students)" if meta.get('shared_s') else '')
          + '. Full data: the same student trained on the whole training set with hard labels (one seed'
          + (f", {meta['full_data'][0]['epochs']} epoch(s))." if meta.get('full_data') else ').'), '',
          '| dataset | IPC | student | CV-DD | SRe2L++ | random soft | random hard | full data | CV-DD - SRe2L++ | CV-DD - random soft |',
          '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        m = r['methods']; d = lambda a, b: f"{m[a]['acc_mean'] - m[b]['acc_mean']:+.2f}" if a in m and b in m else '-'
        md.append(f"| {r['dataset']} | {r['ipc']} | {r['student']} | {fmt(m.get('cvdd'))} | {fmt(m.get('sre2l++'))} | {fmt(m.get('random_soft'))} | "
                  f"{fmt(m.get('random_hard'))} | {r['full'] if r['full'] is not None else '-'} | {d('cvdd', 'sre2l++')} | {d('cvdd', 'random_soft')} |")
    md += ['', '## Budgets (from the configs)', '', '| config | budget | wall (min) |', '|---|---|---|']
    md += [f"| `{b['config']}` | {b['budget']} | {b['wall_s'] / 60:.1f} |" for b in meta['budgets']]
    pri = [b for b in meta['budgets'] if b.get('priors')]         # (files written before the priors were recorded have none)
    if pri:
        md += ['', '## Priors the runs voted with', '', '| config | ' + ' | '.join(['expert: prior'] * max(len(b['priors']) for b in pri)) + ' |',
               '|---|' + '---|' * max(len(b['priors']) for b in pri)]
        md += [f"| `{b['config']}` | " + ' | '.join(f'{n}: {v:.2f}' for n, v in b['priors'].items()) + ' |' for b in pri]
    return '\n'.join(md) + '\n'

def render(name:str)->None:
    "Write `name`.md again from `name`.json (after a change to the table's layout), without running anything."
    d = load_json(name + '.json', dict(meta=dict, rows=list))
    atomic_write(name + '.md', (accuracy_markdown if 'budgets' in d['meta'] else ablation_markdown)(d['rows'], d['meta']))

def ablation_markdown(rows:list, meta:dict)->str:
    base = next(r for r in rows if r['name'] == 'defaults')['acc_mean']
    md = [f"# Ablation: fashion_mnist, IPC {meta['ipc']}, one change at a time", '',
          f"CV-DD accuracy (%) of a {meta['student']} student on a validation split of {meta['valid']} training images per class "
          f"(held out of training; the test split is never used here), mean ± std over {meta['seeds']} seed(s). "
          f"Defaults: {meta['budget']}. Command: `{meta['command']}` at commit `{meta['commit']}`, {meta['machine']}, "
          f"{meta['wall_s'] / 60:.1f} min.", '',
          '| variant | what changes | CV-DD | vs defaults |', '|---|---|---|---|']
    for r in rows:
        md.append(f"| {r['name']} | {r['what']} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | {r['acc_mean'] - base:+.2f} |")
    if meta.get('baselines'):
        md += ['', 'Baselines on the same validation split, with the defaults: ' +
               ', '.join(f"{k} {v['acc_mean']:.2f} ± {v['acc_std']:.2f}" for k, v in meta['baselines'].items()) + '.']
    return '\n'.join(md) + '\n'


# ----------------------------------------------------------------------------------------------------------- modes
def benchmark(a)->None:
    quick = a.quick
    datasets, ipcs = (['fashion_mnist'], [10]) if quick else (a.datasets, a.ipcs)
    work = Path(a.work); t0 = time.perf_counter()
    cfgs = {}
    for ds in datasets:
        for ipc in ipcs:
            c = read_config(ds, ipc); c['device'] = a.device
            if a.root.get(ds): c['root'] = a.root[ds]
            if quick: c['evaluate']['seeds'] = c['evaluate']['seeds'][:1]; c['name'] += '-quick'
            for kv in a.set: set_key(c, *parse_override(kv))
            cfgs[ds, ipc] = c
    # 1. what the runs share, side by side before they start: each dataset's experts and distill priors (their settings
    #    must agree across the dataset's configs), and the full-data upper bound of every student
    for ds in datasets:
        ex = {json.dumps(cfgs[ds, i].get('experts', {}), sort_keys=True) for i in ipcs}
        if len(ex) > 1: sys.exit(f'the configs of {ds} train different experts ({ex}); give them the same [experts] table')
    students = {(ds, student_tag(s)): s.to_dict() for (ds, ipc), c in cfgs.items() for s in RunConfig.from_dict(c).stage_configs()['students']}
    prep = [(prepare, (cfgs[ds, ipcs[0]], work)) for ds in datasets]
    prep += [(full_data, (ds, s, a.full_epochs, work, a.device, a.root.get(ds, ''))) for (ds, _), s in students.items()] if a.full_epochs else []
    full = {}
    for (fn, fa), o in zip(prep, run_jobs(prep, a.jobs, a.threads)):
        if fn is full_data: full[fa[0], o['results']['student']] = o['results']
    t_prep = time.perf_counter() - t0
    # 2. the runs (shared experts and priors), largest first so the lanes end together; each adds its rows as it ends
    keys = sorted(cfgs, key=lambda k: -cost(cfgs[k])); name = a.results or str(HERE/'results'/('accuracy_quick' if quick else 'accuracy'))
    outs, done_rows = [None] * len(keys), {}

    def done(i, o):
        k = keys[i]; outs[i] = o
        sc = RunConfig.from_dict(cfgs[k]).stage_configs(); rows = []
        for s in sc['students']:
            tag = student_tag(s)
            f = full.get((k[0], tag))
            rows.append(dict(dataset=k[0], ipc=k[1], student=tag, methods=o['results']['by_student'][tag],
                             full=f['acc'] if f else None, full_epochs=a.full_epochs))
        done_rows[k] = rows
        order = sorted(done_rows, key=lambda k: (datasets.index(k[0]), k[1]))
        budgets = [dict(config=f'configs/{k[0]}_ipc{k[1]}.toml', budget=budget_line(cfgs[k]), wall_s=outs[keys.index(k)]['wall_s'],
                        priors=outs[keys.index(k)]['results'].get('priors')) for k in order]      # {expert: prior} the run voted with
        meta = dict(mode='quick' if quick else 'full', complete=len(done_rows) == len(keys), command=' '.join(['python', 'bench/accuracy.py', *sys.argv[1:]]),
                    commit=git_commit(), machine=machine(a.device), versions=versions(), wall_s=round(time.perf_counter() - t0, 1),
                    shared_s=round(t_prep, 1), full_data=list(full.values()), budgets=budgets)
        allrows = [r for k in order for r in done_rows[k]]
        save_json(name + '.json', dict(meta=meta, rows=allrows))
        atomic_write(name + '.md', accuracy_markdown(allrows, meta))
    run_many([(with_pool(cfgs[k], work), work/k[0]/f"{cfgs[k]['name']}") for k in keys], a.jobs, a.threads, done)
    print(Path(name + '.md').read_text())

def ablation(a)->None:
    work, t0 = Path(a.work)/'ablation', time.perf_counter()
    base = read_config('fashion_mnist', a.ablation_ipc); base['device'] = a.device; base['valid'] = a.valid
    if a.root.get('fashion_mnist'): base['root'] = a.root['fashion_mnist']
    base['evaluate']['students'] = []                       # the ConvNet student only
    if a.seeds: base['evaluate']['seeds'] = a.seeds
    for kv in a.set: set_key(base, *parse_override(kv))
    variants = dict(ABLATION)
    if a.variants:
        with open(a.variants, 'rb') as f: variants = {k: (v.pop('what', k), v) for k, v in tomllib.load(f).items()}
    if a.only: variants = {k: v for k, v in variants.items() if k in a.only or k == 'defaults'}
    prepare(base, work)                         # experts and distill priors once, before variants run side by side
    jobs, names = [], []
    for name, (what, over) in variants.items():
        c = with_pool(base, work); c['name'] = 'abl-' + name.replace(' ', '-')
        c['evaluate']['methods'] = list(METHODS) if name == 'defaults' else ['cvdd']
        for k, v in over.items(): set_key(c, k, v)
        jobs.append((c, work/c['name'])); names.append((name, what))
    name, outs = a.results or str(HERE/'results'/'ablation'), [None] * len(jobs)

    def write(i=None, o=None):                  # after every finished variant: a partial table is never lost
        if i is not None: outs[i] = o
        rows = [dict(name=n, what=w, **{k: o['results']['methods']['cvdd'][k] for k in ('acc_mean', 'acc_std', 'accs')}, wall_s=o['wall_s'],
                     overrides=variants[n][1]) for (n, w), o in zip(names, outs) if o is not None]
        if outs[0] is None: return
        d = outs[0]['results']
        meta = dict(ipc=a.ablation_ipc, valid=a.valid, student=student_tag(EvalConfig.from_dict(base['evaluate']['student'])),
                    seeds=len(RunConfig.from_dict(base).stage_configs()['evaluate'].seeds), budget=budget_line(base),
                    baselines={m: d['methods'][m] for m in METHODS[1:] if m in d['methods']}, complete=all(x is not None for x in outs),
                    command=' '.join(['python', 'bench/accuracy.py', *sys.argv[1:]]), commit=git_commit(), machine=machine(a.device),
                    versions=versions(), wall_s=round(time.perf_counter() - t0, 1))
        save_json(name + '.json', dict(meta=meta, rows=rows))
        atomic_write(name + '.md', ablation_markdown(rows, meta))
        return meta
    run_many(jobs, a.jobs, a.threads, write)
    write(); print(Path(name + '.md').read_text())

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fashion_mnist, IPC 10, one seed')
    p.add_argument('--ablation', action='store_true', help='one change at a time at fashion_mnist IPC 10, on a validation split')
    p.add_argument('--datasets', nargs='+', default=['fashion_mnist', 'mnist'])
    p.add_argument('--ipcs', nargs='+', type=int, default=[1, 10, 50])
    p.add_argument('--full-epochs', type=int, default=None, help='epochs of the full-data upper bound (0: skip it; default 1, 0 with --quick)')
    p.add_argument('--ablation-ipc', type=int, default=10)
    p.add_argument('--valid', type=int, default=500, help='ablation: training images per class held out as the validation split')
    p.add_argument('--seeds', nargs='+', type=int, default=None, help='ablation: student seeds (default: the config\'s)')
    p.add_argument('--variants', default='', help='ablation: a TOML file of [name] tables of dotted overrides (instead of the built-in list)')
    p.add_argument('--only', nargs='+', default=None, help='ablation: run only these variants (and the defaults)')
    p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE', help='overrides for every config, e.g. recover.iterations=100')
    p.add_argument('--root', nargs='*', default=[], metavar='DATASET=DIR', help='dataset folders, e.g. fashion_mnist=/data/fmnist')
    p.add_argument('--device', default='auto')
    p.add_argument('--jobs', type=int, default=1, help='runs at a time, each in its own process')
    p.add_argument('--threads', type=int, default=0, help='torch threads per run (0: torch default)')
    p.add_argument('--work', default=str(HERE/'.cache'/'accuracy'), help='run folders (resumable)')
    p.add_argument('--results', default='', help='output path without extension')
    p.add_argument('--render', action='store_true', help='only write the .md of --results (default: the benchmark\'s) again from its .json')
    a = p.parse_args(argv)
    if a.full_epochs is None: a.full_epochs = 0 if a.quick else 1      # --quick leaves out the full-data bound unless asked
    a.root = dict(r.split('=', 1) for r in a.root)
    if a.render: return render(a.results or str(HERE/'results'/('ablation' if a.ablation else 'accuracy_quick' if a.quick else 'accuracy')))
    try: ablation(a) if a.ablation else benchmark(a)
    except CVDDError as e: print(f'bench: error: {e}', file=sys.stderr); sys.exit(2)         # one message, as `cvdd` gives
    except KeyboardInterrupt:
        print('bench: stopped (Ctrl-C); run the same command again to resume', file=sys.stderr); sys.exit(130)

if __name__ == '__main__': main()
