"The field-protocol benchmark (bench/field.py) end to end at tiny budgets on the shipped digits zoo, resumable, and its statistics."
import json, math, os, statistics, subprocess, sys
from pathlib import Path
import pytest
import fastcore.test as fct
from cvdd_nb.core import load_json
from conftest import toml_text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'bench'))
import field
ENV = {**os.environ, 'CVDD_PROGRESS': '0', 'OMP_NUM_THREADS': '1'}

def tiny(ipc:int)->dict:
    "A digits config of the benchmark's shape (zoo pool, distill priors, two KD students, DC protocol), seconds of work."
    return dict(name=f'zoo-digits-ipc{ipc}', dataset='digits', ipc=ipc, seed=0, experts=dict(pool='zoo:digits'),
                priors=dict(mode='distill', distill_ipc=1, distill_iterations=2, distill_epochs=1),
                recover=dict(iterations=3, init='real', min_scale=0.5),
                evaluate=dict(seeds=[0, 1], methods=['cvdd', 'sre2l++', 'random_soft', 'random_hard', 'cvdd_hard'], hard_protocol='dc',
                              hard=dict(epochs=2), student=dict(student='convnet3', width=0.25, epochs=1)))

def test_spread_splits_the_variance():
    s = field.spread([80.0, 82.0, 84.0], [81.0, 82.0, 83.0])
    fct.test_close(s['mean'], 82.0); fct.test_close(s['std'], 2.0); fct.test_close(s['student_std'], 1.0)
    fct.test_close(s['recover_std'], math.sqrt(3.0))
    fct.test_eq(field.spread([80.0, 80.5], [79.0, 85.0])['recover_std'], 0.0)      # students alone vary more: nothing left
    fct.test_eq(field.spread([80.0], [80.0])['std'], None)
    fct.test_close(field.pooled(dict(std=3.0), dict(std=4.0)), math.sqrt(12.5))

def test_cell_takes_each_runs_own_seed():
    "Seed s of the distillation is scored by its own student s; the student spread comes from the spread seed's run only."
    runs = [dict(seed=0, seeds=[0], by_student={'t': {'cvdd': dict(accs=[70.0])}, 'u': {'cvdd': dict(accs=[50.0])}}),
            dict(seed=1, seeds=[1], by_student={'t': {'cvdd': dict(accs=[60.0])}, 'u': {'cvdd': dict(accs=[52.0])}})]
    extra = dict(seed=0, tag='t', accs={'cvdd': [71.0, 75.0]})
    c = field.cell(runs, 't', 'cvdd', extra)
    fct.test_eq((c['accs'], c['student_accs']), ([70.0, 60.0], [70.0, 71.0, 75.0]))
    fct.test_close(c['student_std'], statistics.stdev([70.0, 71.0, 75.0]))
    fct.test_eq(field.cell(runs, 't', 'cvdd', dict(extra, seed=1))['student_accs'], [60.0, 71.0, 75.0])
    fct.test_eq(field.cell(runs, 'u', 'cvdd', extra)['student_std'], None)          # only the first student is retrained
    fct.test_eq(field.cell(runs, 't', 'sre2l++', extra), None)
    fct.test_eq((c['student_seed'], field.cell(runs, 't', 'cvdd', dict(extra, seed=1))['student_seed']), (0, 1))   # named in the table
    fct.test_eq(field.cell(runs, 'u', 'cvdd', extra)['student_seed'], None)

def test_field_benchmark_end_to_end(tmp_path):
    cfgs = tmp_path/'configs'; cfgs.mkdir()
    (cfgs/'digits_ipc1.toml').write_text(toml_text(tiny(1)))
    args = [sys.executable, str(ROOT/'bench'/'field.py'), '--datasets', 'digits', '--ipcs', '1', '--seeds', '0', '1', '--configs', str(cfgs),
            '--work', str(tmp_path/'work'), '--results', str(tmp_path/'field'), '--full-epochs', '1']
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT); assert r.returncode == 0, r.stderr[-3000:]
    res = load_json(tmp_path/'field.json', dict(meta=dict, cells=dict))
    meta, cells = res['meta'], res['cells']['digits/1']
    assert meta['complete'] and meta['seeds'] == 2
    fct.test_eq(set(cells), {f'convnet3-w0.25|{m}' for m in ('cvdd', 'sre2l++', 'random_soft')} | {f'convnet3-w1-dc|{m}' for m in ('random_hard', 'cvdd_hard')})
    # each run used its own seed everywhere, and the priors the benchmark computed once on the zoo's hold-out
    pri = load_json(tmp_path/'work/digits/digits-priors/priors.json')
    for s in (0, 1):
        m = load_json(tmp_path/f'work/digits/zoo-digits-ipc1-s{s}/manifest.json')['config']
        fct.test_eq((m['seed'], m['evaluate']['seeds'], m['priors']), (s, [s], dict(mode='given', values=dict(zip(pri['experts'], pri['priors'])))))
    pc = load_json(tmp_path/'work/digits/digits-priors/manifest.json')['config']
    fct.test_eq((pc['valid'], pc['valid_seed']), (20, 0))                    # the digits zoo's hold-out
    # the table's numbers are the runs' own: run s, student seed s
    r0, r1 = (load_json(tmp_path/f'work/digits/zoo-digits-ipc1-s{s}/results.json') for s in (0, 1))
    c = cells['convnet3-w0.25|cvdd']
    fct.test_eq(c['accs'], [r0['by_student']['convnet3-w0.25']['cvdd']['accs'][0], r1['by_student']['convnet3-w0.25']['cvdd']['accs'][0]])
    # the student spread: run 0's first student again with seed 1, on run 0's own images and labels
    sp = load_json(tmp_path/'work/digits/zoo-digits-ipc1-s0/evaluate/spread/cvdd.json')
    fct.test_eq((sp['seeds'], c['student_accs']), ([1], [r0['by_student']['convnet3-w0.25']['cvdd']['accs'][0], *sp['accs']]))
    assert 'student_accs' in cells['convnet3-w0.25|random_soft'] and len(cells['convnet3-w0.25|random_soft']['student_accs']) == 2
    fct.test_eq(load_json(tmp_path/'work/digits/zoo-digits-ipc1-s0/results.json'), r0)        # the run's own results untouched
    fct.test_eq(cells['convnet3-w1-dc|random_hard']['accs'][1], r1['by_student']['convnet3-w1-dc']['random_hard']['accs'][0])
    md = (tmp_path/'field.md').read_text()
    assert '| ours: CV-DD | convnet3-w0.25, KD on soft labels |' in md and '| ours: random real subset | convnet3-w1, hard labels, DC protocol |' in md
    assert '| ours: whole training set | convnet3-w1, hard labels, DC protocol, 1 epoch(s) |' in md
    # a second call recomputes nothing: the same numbers
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT); assert r.returncode == 0, r.stderr[-3000:]
    fct.test_eq(load_json(tmp_path/'field.json')['cells'], res['cells'])
    # every finished run is recorded beside the results; with the run folders gone (another machine, a later sitting)
    # the records alone rebuild the table, and no run folder is made again
    recs = sorted(p.name for p in (tmp_path/'field_runs'/'digits').glob('*.json'))
    fct.test_eq(recs, ['full-convnet3-w1-dc-e1.json', 'priors.json', 'zoo-digits-ipc1-s0-spread.json', 'zoo-digits-ipc1-s0.json', 'zoo-digits-ipc1-s1.json'])
    import shutil; shutil.rmtree(tmp_path/'work')
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT); assert r.returncode == 0, r.stderr[-3000:]
    fct.test_eq(load_json(tmp_path/'field.json')['cells'], res['cells'])
    fct.test_eq(sorted(p.name for p in (tmp_path/'work'/'digits').iterdir()) if (tmp_path/'work'/'digits').exists() else [], [])
    # --records-only runs nothing: a cell without records reads pending
    (cfgs/'digits_ipc2.toml').write_text(toml_text(tiny(2)))
    r = subprocess.run([*args, '--ipcs', '1', '2', '--records-only', '--results', str(tmp_path/'ro')], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    ro = load_json(tmp_path/'ro.json'); fct.test_eq((ro['cells'], ro['meta']['complete']), (res['cells'], False))
    assert '| ours: CV-DD | convnet3-w0.25, KD on soft labels | ' + field.fmt(field.from_json(res['cells'])[('digits', 1)][('convnet3-w0.25', 'cvdd')]) + ' | pending |' in (tmp_path/'ro.md').read_text()
    fct.test_eq(sorted(p.name for p in (tmp_path/'work'/'digits').iterdir()) if (tmp_path/'work'/'digits').exists() else [], [])
    # a record made for another config does not count: a changed setting runs seed 1 again (and says so)
    rec = tmp_path/'field_runs/digits/zoo-digits-ipc1-s1.json'; d = json.loads(rec.read_text())
    d['key']['config']['recover']['iterations'] = 99; rec.write_text(json.dumps(d))
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT); assert r.returncode == 0, r.stderr[-3000:]
    assert 'zoo-digits-ipc1-s1.json was recorded for another config or pool: running it again' in r.stderr
    fct.test_eq(sorted(p.name for p in (tmp_path/'work'/'digits').iterdir()), ['zoo-digits-ipc1-s1'])
    fct.test_eq(load_json(rec)['key']['config']['recover']['iterations'], 3)

def test_published_rows_name_their_protocol():
    import tomllib
    pub = tomllib.loads((ROOT/'bench'/'published.toml').read_text())
    for ds in ('fashion_mnist', 'mnist'):
        for row in pub[ds]: assert row['labels'] in ('hard', 'learned') and row['status'] and row['acc'], row
    md = field.markdown(dict(meta=dict(complete=False, ipcs=[1, 10], seeds=3, command='c', commit='x', machine='m', wall_s=60, datasets=['fashion_mnist'],
                                       students=['convnet3-w1'], hard_tag='convnet3-w1-dc', priors={}, full_data=[], runs=[]), cells={}), pub)
    assert '| published: IDC (factor 2) | ConvNet-3, hard labels (read (IDC README)) | 81.0 | 86.0 |' in md
    assert '| ours: CV-DD | convnet3-w1, KD on soft labels | pending | pending |' in md
    assert '- Fashion-MNIST IPC 10, CV-DD (ConvNet-3, KD) >= 86.0 (IDC): pending' in md

def test_the_cells_of_a_dataset_share_one_priors_run():
    "IPC 1 and IPC 10 differ in name and ipc only: their distill priors (at distill_ipc) are one computation, one record."
    import tomllib
    cfgs = [tomllib.loads((ROOT/'configs'/'zoo'/f'fashion_mnist_ipc{n}.toml').read_text()) for n in (1, 10)]
    hold = dict(seed=0, per_class=500)
    a, b = (field.priors_config(c, hold) for c in cfgs)
    fct.test_eq(a, b); fct.test_eq(a['ipc'], cfgs[1]['priors']['distill_ipc'])
    assert cfgs[0]['ipc'] != cfgs[1]['ipc']
