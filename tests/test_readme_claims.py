"""The README's prose about its tables, checked against the files the tables come from: a new table that breaks a
sentence fails here, and the sentence is rewritten. Each test quotes the sentence it checks."""
import json, tomllib
from pathlib import Path
import pytest
import fastcore.test as fct

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT/'README.md').read_text()

def _rows():
    "{(dataset, ipc, student family): methods} of the accuracy benchmark, with gaps and seed spreads."
    d = json.loads((ROOT/'bench/results/accuracy.json').read_text())
    return {(r['dataset'], r['ipc'], r['student'].split('-')[0]): r['methods'] for r in d['rows']}, d['meta']

def _gap(m, a, b): return m[a]['acc_mean'] - m[b]['acc_mean']
def _spreads(m, a, b): return m[a]['acc_std'] + m[b]['acc_std']

def _says(text:str):
    "The README holds this sentence (line breaks aside): the claim tested is the one the reader sees."
    flat = lambda s: ' '.join(s.split())
    assert flat(text) in flat(README), text

def test_cvdd_vs_random_soft():
    rows, _ = _rows()
    _says("The distilled images are ahead of a random real subset with the same soft labels in every row at IPC 1 and 10 "
          "and at Fashion-MNIST IPC 50, by more than the two seed spreads added in all of those rows but one (Fashion-MNIST "
          "IPC 1 with the ResNet-18 student, where CV-DD's own spread is larger than its lead).")
    ahead = {k: m for k, m in rows.items() if k[1] in (1, 10) or k[:2] == ('fashion_mnist', 50)}
    fct.test_eq(len(ahead), 10)
    assert all(_gap(m, 'cvdd', 'random_soft') > 0 for m in ahead.values()), {k: _gap(m, 'cvdd', 'random_soft') for k, m in ahead.items()}
    within = [k for k, m in ahead.items() if _gap(m, 'cvdd', 'random_soft') <= _spreads(m, 'cvdd', 'random_soft')]
    fct.test_eq(within, [('fashion_mnist', 1, 'resnet18')])
    m = rows['fashion_mnist', 1, 'resnet18']; assert m['cvdd']['acc_std'] > _gap(m, 'cvdd', 'random_soft')
    _says("They are behind it at MNIST IPC 50, with both students, where 50 real digits per class with soft labels already "
          "teach as much as this CPU budget's 100 recover steps can add.")
    assert all(_gap(rows['mnist', 50, s], 'cvdd', 'random_soft') < 0 for s in ('convnet', 'resnet18'))
    cfg = tomllib.loads((ROOT/'configs/mnist_ipc50.toml').read_text())
    fct.test_eq((cfg['ipc'], cfg['recover']['iterations']), (50, 100))

def test_hard_labels_at_ipc1():
    rows, _ = _rows()
    _says('Hard labels trail the same subset with soft labels far behind at IPC 1, in every row.')
    gaps = {k: _gap(m, 'random_soft', 'random_hard') for k, m in rows.items() if k[1] == 1}
    fct.test_eq(len(gaps), 4)
    assert all(g >= 10 for g in gaps.values()), gaps            # "far": ten points or more

def test_cvdd_vs_sre2l():
    rows, _ = _rows()
    _says("CV-DD is ahead of SRe2L++ in some rows and behind in others, by less than a point in every row but one (again "
          "Fashion-MNIST IPC 1 with the ResNet-18 student, where CV-DD's lead is smaller than its own seed spread), and in "
          "most rows by less than the two seed spreads added")
    g = {k: _gap(m, 'cvdd', 'sre2l++') for k, m in rows.items()}
    assert any(v > 0 for v in g.values()) and any(v < 0 for v in g.values()), g
    fct.test_eq([k for k, v in g.items() if abs(v) >= 1], [('fashion_mnist', 1, 'resnet18')])
    m = rows['fashion_mnist', 1, 'resnet18']; assert 0 < g['fashion_mnist', 1, 'resnet18'] < m['cvdd']['acc_std']
    small = [k for k, m in rows.items() if abs(g[k]) < _spreads(m, 'cvdd', 'sre2l++')]
    assert len(small) > len(rows) / 2, (len(small), len(rows))
    _says('at Fashion-MNIST IPC 10, the setting the benchmark was aimed at, the two are level within the seed spread with both students.')
    for s in ('convnet', 'resnet18'):
        m = rows['fashion_mnist', 10, s]; assert abs(g['fashion_mnist', 10, s]) < max(m['cvdd']['acc_std'], m['sre2l++']['acc_std']), (s, m)

def test_benchmark_budget():
    _, meta = _rows()
    _says('budgets sized to finish in under two hours on two CPU cores')
    assert meta['wall_s'] < 2 * 3600 and 'of 2 core(s)' in meta['machine'], meta
    for f in sorted((ROOT/'configs').glob('*_mnist_ipc*.toml')) + sorted((ROOT/'configs').glob('mnist_ipc*.toml')):
        fct.test_eq(len(tomllib.loads(f.read_text())['evaluate']['seeds']), 3)          # "over three seeds"

def test_demo_claims():
    res = json.loads((ROOT/'results/demo/results.json').read_text()); m = res['methods']
    _says('three experts of similar strength (their priors, in `results/demo/report.md`, are within about a point of each other)')
    pri = list(res['priors'].values()); fct.test_eq(len(pri), 3); assert max(pri) - min(pri) < 1.5, pri
    _says('CV-DD comes out on top, but by less than a point over SRe2L++ and the random subset with the same soft labels, '
          "which is within their seed-to-seed spread; hard labels trail by several points.")
    fct.test_eq(max(m, key=lambda k: m[k]['acc_mean']), 'cvdd')
    for b in ('sre2l++', 'random_soft'):
        assert 0 < _gap(m, 'cvdd', b) < 1 and _gap(m, 'cvdd', b) < max(m['cvdd']['acc_std'], m[b]['acc_std']), (b, m[b])
    assert _gap(m, 'cvdd', 'random_hard') >= 3                       # "several points"

def test_demo_thread_count_claims():
    "The second fresh run (one thread) beside the first (torch's default two): what the README says moves between them."
    runs = {n: json.loads((ROOT/f'results/{n}/results.json').read_text())['methods'] for n in ('demo', 'demo_1thread')}
    _says('with torch on one thread instead of two (`OMP_NUM_THREADS=1 make demo`; `results/demo_1thread/`)')
    assert 'OMP_NUM_THREADS=1 make demo' in (ROOT/'results/demo_1thread/SOURCE.md').read_text()
    assert 'OMP_NUM_THREADS' not in (ROOT/'results/demo/SOURCE.md').read_text()
    _says('CV-DD is on top there too and hard labels still trail by several points, but its lead over SRe2L++ is about three '
          'points instead of a fraction of one')
    one = runs['demo_1thread']
    fct.test_eq(max(one, key=lambda k: one[k]['acc_mean']), 'cvdd'); assert _gap(one, 'cvdd', 'random_hard') >= 3
    assert 2.5 <= _gap(one, 'cvdd', 'sre2l++') < 3.5 and 0 < _gap(runs['demo'], 'cvdd', 'sre2l++') < 1, runs
    _says('the means move by up to about one and a half points between the two runs (SRe2L++ the most), more than the ± of most rows')
    move = {m: abs(runs['demo'][m]['acc_mean'] - one[m]['acc_mean']) for m in one}
    fct.test_eq(max(move, key=move.get), 'sre2l++'); assert 1.25 <= max(move.values()) < 1.75, move
    stds = [r[m]['acc_std'] for r in runs.values() for m in r]
    assert sum(s < max(move.values()) for s in stds) > len(stds) / 2, (stds, move)

def test_demo_numbers_are_the_config_and_the_data():
    "The demo's list: each number is a parameter of configs/digits_ipc10.toml (or a default it keeps) or a fact of the data."
    from cvdd_nb.data import load_dataset
    from cvdd_nb.evaluate import EvalConfig
    cfg = tomllib.loads((ROOT/'configs/digits_ipc10.toml').read_text())
    _says('(1,438 train / 359 test images, 10 classes)')
    d = load_dataset('digits'); fct.test_eq((len(d.train), len(d.test), d.info.num_classes), (1438, 359, 10))
    _says('| `digits` (default) | scikit-learn\'s bundled copy, fixed stratified 80/20 split | 1,438 / 359, 1×8×8 |')
    _says('15 epochs each'); fct.test_eq(cfg['experts']['epochs'], 15)
    _says('10 images per class from real starting images, 300 Adam steps each (lr 0.05,')
    fct.test_eq((cfg['ipc'], cfg['recover']['init'], cfg['recover']['iterations'], cfg['recover']['lr']), (10, 'real', 300, 0.05))
    _says('(3 seeds, 100 epochs, KD at T = 20, the default)')
    fct.test_eq((len(cfg['evaluate']['seeds']), cfg['evaluate']['student']['epochs']), (3, 100))
    assert 'temperature' not in cfg['evaluate']['student'] and EvalConfig().temperature == 20.0
    _says('the 3 pairs of 3, cycling'); fct.test_eq(len(cfg['experts']['archs']), 3)

def test_reference_tolerance_is_the_tested_one():
    _says("experts give the reference's logits to 1e-5, the tolerance `tests/test_reference.py` checks")
    assert '<= 1e-5' in (ROOT/'tests/test_reference.py').read_text()

def test_priors_in_prose_are_gone():
    "No prior is typed into the prose any more: the benchmark's JSON does not hold them (from the next run on, its table will)."
    import re
    for old in ('79.5', '68.5', '63.1', '52.8'): assert not re.search(rf'(?<![\d.]){re.escape(old)}(?![\d])', README), old   # not inside 79.54
    for old in ('by a wide margin', 'within about a point of each other in every row'): assert old not in README, old

def _field():
    "The field benchmark's cells {(dataset, ipc): {(student, method): cell}} and its meta."
    import sys; sys.path.insert(0, str(ROOT/'bench')); import field
    d = json.loads((ROOT/'bench/results/field.json').read_text()); return field.from_json(d['cells']), d['meta'], field

def test_field_claims():
    cells, meta, field = _field(); c = cells[('fashion_mnist', 10)]
    cv, sp, rs = (c[('convnet3-w1', m)] for m in ('cvdd', 'sre2l++', 'random_soft'))
    fct.test_eq((cv['n'], sp['n'], rs['n']), (3, 3, 3))
    _says('CV-DD is ahead of random real images with the same soft labels by more than their pooled seed spread, and level '
          "with SRe2L++: the gap is smaller than either method's seed spread")
    assert cv['mean'] - rs['mean'] > field.pooled(cv, rs), (cv, rs)
    assert abs(cv['mean'] - sp['mean']) < min(cv['std'], sp['std']), (cv, sp)
    _says("It misses the 86.0 target (IDC's published number at this cell) by about six points, and it stands below the "
          'published hard-label rows of DC, DSA and IDC as well.')
    assert 5.5 <= 86.0 - cv['mean'] < 6.5, cv['mean']
    pub = {r['method']: r['acc']['10'] for r in tomllib.loads((ROOT/'bench/published.toml').read_text())['fashion_mnist'] if '10' in r['acc']}
    assert all(cv['mean'] < pub[m] for m in ('DC', 'DSA', 'IDC-I', 'IDC (factor 2)')), (cv['mean'], pub)

def test_diagnosis_claims():
    runs = json.loads((ROOT/'bench/results/diagnose.json').read_text())['runs']
    fct.test_eq(sorted(runs), ['zoo-fashion_mnist-ipc10-s1', 'zoo-fashion_mnist-ipc10-s2'])
    _says("the committee's images are read as their class by every zoo expert but SRe2L++'s own (the ConvNet) at least as often as SRe2L++'s")
    _says('all six experts agree on about two thirds of their random crops, against just over half for SRe2L++\'s images and '
          "for random real ones, and the committee's label on those crops is more confident (lower entropy)")
    for r in runs.values():
        cv, sp, rs = r['cvdd'], r['sre2l++'], r['random_soft']
        fct.test_eq(len(cv['reads']), 6)
        assert all(cv['reads'][e] >= sp['reads'][e] for e in cv['reads'] if e != 'convnet'), (cv['reads'], sp['reads'])  # convnet made SRe2L++'s
        assert 60 <= cv['agree'] <= 72 and 50 < sp['agree'] < 60 and 50 < rs['agree'] < 60, (cv['agree'], sp['agree'], rs['agree'])
        assert cv['entropy'] < min(sp['entropy'], rs['entropy'])

def test_lever_claims():
    d = json.loads((ROOT/'bench/results/lever_teachers.json').read_text())['rows']
    _says("early-stopped teachers (the zoo's epoch-1 snapshots) making the soft labels, gave no gain on the validation hold-out")
    fct.test_eq(d['e1']['teachers'], 'zoo:fashion_mnist@e1')
    assert d['e1']['mean'] <= d['final']['mean'] + max(d['e1']['std'], d['final']['std']), d

def test_field_resnet_claims():
    cells, meta, field = _field(); c = cells[('fashion_mnist', 10)]
    cv, sp, rs = (c[('resnet18-w0.5', m)] for m in ('cvdd', 'sre2l++', 'random_soft'))
    _says('With the ResNet-18 student the picture turns: CV-DD is ahead of SRe2L++ by more than their pooled seed spread')
    assert cv['n'] == 3 and cv['mean'] - sp['mean'] > field.pooled(cv, sp), (cv, sp)
    _says('but level with random real images with the same soft labels.')
    assert abs(cv['mean'] - rs['mean']) < min(cv['std'], rs['std']), (cv, rs)
    pri = meta['priors']['fashion_mnist']['values']; fct.test_eq(max(pri, key=pri.get), 'convnet')     # SRe2L++'s expert

def test_field_ipc1_claims():
    cells, meta, field = _field(); c = cells[('fashion_mnist', 1)]
    cv, sp, rs = (c[('convnet3-w1', m)] for m in ('cvdd', 'sre2l++', 'random_soft'))
    fct.test_eq((cv['n'], sp['n'], rs['n']), (3, 3, 3))
    _says('CV-DD, SRe2L++ and random real images differ by less than their seed spreads, and the random subset\'s spread is the largest')
    for a, b in ((cv, sp), (cv, rs), (sp, rs)): assert abs(a['mean'] - b['mean']) < max(a['std'], b['std']), (a, b)
    assert rs['std'] > max(cv['std'], sp['std']), (rs, cv, sp)
    _says('All three stand below every published distillation row, from DC on.')
    pub = {r['method']: r['acc']['1'] for r in tomllib.loads((ROOT/'bench/published.toml').read_text())['fashion_mnist'] if '1' in r['acc']}
    rows = [m for m in pub if m != 'random real subset']
    assert len(rows) >= 7 and all(max(cv['mean'], sp['mean'], rs['mean']) < pub[m] for m in rows), pub
    _says('Our random single images with hard labels under the DC protocol land within their seed spread of the published random row.')
    rh = c[('convnet3-w1-dc', 'random_hard')]
    assert abs(rh['mean'] - pub['random real subset']) < rh['std'], (rh, pub['random real subset'])
