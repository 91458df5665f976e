"""Reliability (issue 9): bad input -> one clear CVDDError before work starts; NaN/inf in recover is caught;
SIGKILL at random points of recover, relabel and evaluate loses nothing and the resumed run is bit-identical;
the same config and seed give the same bits."""
import dataclasses, hashlib, io, json, math, os, pickle, random, signal, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest, torch
import fastcore.test as fct
from safetensors.torch import load as st_load
from cvdd_nb.core import CVDDError, RunDir, save_json
from cvdd_nb.data import Data, load_dataset, normalize, per_class_subset, write_idx
from cvdd_nb.testing import write_idx_fixture
from cvdd_nb.models import create_model
from cvdd_nb.experts import Expert, ExpertPool, train_expert, train_pool
from cvdd_nb.recover import RecoverConfig, Recovered, recover
from cvdd_nb.relabel import LabelStore, relabel
from cvdd_nb.evaluate import evaluate_set, train_student
from cvdd_nb.pipeline import TINY, RunConfig
import cvdd_nb.recover as R

ENV = {**os.environ, 'CVDD_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def pool_dir(data, tmp_path_factory):
    "TINY's two experts, trained once and shared (by absolute path) by every run here."
    d = tmp_path_factory.mktemp('pool')
    train_pool([('convnet', 'convnet', 0.25), ('resnet18', 'resnet18', 0.125)], data, d, dict(epochs=3), quiet=True)
    return d

@pytest.fixture(scope='module')
def pool(pool_dir): return ExpertPool.load(pool_dir)

def _raises(fn, msg:str):
    "`fn()` raises a CVDDError whose message contains `msg`; returns its first line (for the issue table)."
    with pytest.raises(CVDDError) as e: fn()
    assert msg in str(e.value), str(e.value)
    return str(e.value).splitlines()[0]

# ---------------------------------------------------------------------------------------------------------
# bad inputs: one clear error, before any work

def test_damaged_json_files(pool_dir, tmp_path):
    RunDir(tmp_path/'run', config={}, seed=0)
    save_json(tmp_path/'run/manifest.json', dict(config={}))
    _raises(lambda: RunDir(tmp_path/'run'), "missing the field 'stages'")
    save_json(tmp_path/'run/manifest.json', dict(stages=[]))
    _raises(lambda: RunDir(tmp_path/'run'), "field 'stages' should be dict")
    import shutil; shutil.copytree(pool_dir, tmp_path/'p')
    ej = tmp_path/'p/convnet/expert.json'; good = json.loads(ej.read_text())
    for change, msg in [(dict(class_names=None), "field 'class_names' should be list"), (dict(in_chans='1'), "field 'in_chans' should be int"),
                        (dict(arch={'width': 0.25}), "arch has no model name"), (dict(img_size=[8]), 'img_size'),
                        (dict(class_names=list(range(9))), 'class_names')]:
        save_json(ej, {**good, **change}); _raises(lambda: Expert.load(tmp_path/'p/convnet'), msg)
    save_json(ej, {k: v for k, v in good.items() if k != 'mean'}); _raises(lambda: Expert.load(tmp_path/'p/convnet'), "missing the field 'mean'")
    save_json(ej, good)
    pj = tmp_path/'p/pool.json'; gp = json.loads(pj.read_text())
    save_json(pj, {**gp, 'experts': 'convnet'}); _raises(lambda: ExpertPool.load(tmp_path/'p'), "field 'experts' should be list")
    save_json(pj, {**gp, 'experts': [1, 2]}); _raises(lambda: ExpertPool.load(tmp_path/'p'), 'expert names')
    save_json(pj, {**gp, 'experts': ['../convnet']}); _raises(lambda: ExpertPool.load(tmp_path/'p'), 'expert names')
    (tmp_path/'p/pool.json').write_text('{"experts": ["convnet"'); _raises(lambda: ExpertPool.load(tmp_path/'p'), 'not valid JSON')

def test_damaged_label_store(pool, data, tmp_path):
    x = normalize(per_class_subset(data.train, 2, 0).x, data.info)
    relabel(x, pool, data.info, dict(epochs=1), out=tmp_path/'l')
    lj = tmp_path/'l/labels.json'; good = json.loads(lj.read_text())
    save_json(lj, {k: v for k, v in good.items() if k != 'n'}); _raises(lambda: LabelStore.load(tmp_path/'l'), "missing the field 'n'")
    save_json(lj, {**good, 'n': '20'}); _raises(lambda: LabelStore.load(tmp_path/'l'), "field 'n' should be int")
    save_json(lj, {**good, 'config': {**good['config'], 'epoch': 3}}); _raises(lambda: LabelStore.load(tmp_path/'l'), 'unknown RelabelConfig setting(s): epoch')
    save_json(lj, good)
    f = tmp_path/'l/labels.safetensors'; b = f.read_bytes(); f.write_bytes(b[:len(b) // 2])
    _raises(lambda: LabelStore.load(tmp_path/'l'), 'is damaged')

def test_truncated_and_corrupted_weights(pool_dir, data, tmp_path):
    import shutil; shutil.copytree(pool_dir, tmp_path/'p')
    f = tmp_path/'p/convnet/model.safetensors'; b = f.read_bytes()
    f.write_bytes(b[:len(b) - 100]); _raises(lambda: Expert.load(tmp_path/'p/convnet'), 'damaged, truncated or not a weights file')
    f.write_bytes(b[:8] + bytes(64) + b[72:]); _raises(lambda: Expert.load(tmp_path/'p/convnet'), 'damaged, truncated or not a weights file')
    f.write_bytes(b'')                        ; _raises(lambda: Expert.load(tmp_path/'p/convnet'), 'damaged, truncated or not a weights file')
    m = create_model('convnet', 10, 1, 8, width=0.25); buf = io.BytesIO(); torch.save(m.state_dict(), buf)
    (tmp_path/'w.pth').write_bytes(buf.getvalue()[:-50])
    _raises(lambda: Expert.from_weights('convnet', tmp_path/'w.pth', data.info, width=0.25), 'damaged, truncated or not a weights file')

def test_damaged_recovered_images_is_a_clear_error(pool, data, tmp_path):
    recover(pool, data, dict(iterations=2), out=tmp_path, quiet=True)
    f = tmp_path/'images.safetensors'; f.write_bytes(f.read_bytes()[:-20])
    _raises(lambda: Recovered.load(tmp_path), 'is damaged')

class _Evil:
    def __reduce__(self): return (os.system, ('echo pwned > /dev/null',))

def test_pickles_are_refused(data, tmp_path):
    m = create_model('convnet', 10, 1, 8, width=0.25)
    torch.save({'state_dict': m.state_dict(), 'hook': _Evil()}, tmp_path/'evil.pth')
    _raises(lambda: Expert.from_weights('convnet', tmp_path/'evil.pth', data.info, width=0.25), 'refused by torch.load(weights_only=True)')
    x = normalize(per_class_subset(data.train, 1, 0).x, data.info); y = torch.arange(10)
    from cvdd_nb.relabel import Augmenter
    torch.save(dict(key={}, model=_Evil()), tmp_path/'student.pt')      # a poisoned student checkpoint
    _raises(lambda: train_student(x, y, data.info, Augmenter(data.info, dict(epochs=1)), dict(epochs=1), hard=True, checkpoint=tmp_path/'student.pt'),
            'cannot be read (UnpicklingError: it holds more than tensors')

MISMATCH = [(dict(num_classes=9, class_names=list('012345678')), 'has 10 classes but'),
            (dict(class_names=list('0123456798')), "class 8 is '8' for the expert but '9'"),
            (dict(channels=3, mean=(.5,) * 3, std=(.2,) * 3), 'takes 1-channel images'),
            (dict(img_size=(16, 16)), 'expects 8x8 images')]

@pytest.mark.parametrize('change,msg', MISMATCH)
def test_expert_dataset_mismatch_stops_recover_and_relabel(pool, data, change, msg):
    bad = Data(data.train, data.test, dataclasses.replace(data.info, **change))
    calls = []
    h = pool[0].model.register_forward_hook(lambda *a: calls.append(1))
    try:
        _raises(lambda: recover(pool, bad, dict(iterations=2), quiet=True), msg)
        x = torch.zeros(10, bad.info.channels, *bad.info.img_size)
        _raises(lambda: relabel(x, pool, bad.info, dict(epochs=1)), msg)
    finally: h.remove()
    fct.test_eq(calls, [])                                    # no expert ran: the error came before the work

def test_expert_without_bn_and_with_nan_weights(pool, data):
    import torch.nn as nn
    _raises(lambda: Expert(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), pool[0].meta), 'no BatchNorm2d layer')
    e = Expert(create_model(**pool[0].meta.arch), pool[0].meta, name='nan')
    e.model.load_state_dict(pool[0].model.state_dict())
    with torch.no_grad(): next(e.model.parameters())[0].fill_(float('nan'))
    _raises(lambda: e.check(data.info), 'NaN or inf')
    _raises(lambda: recover(ExpertPool([e, pool[1]]), data, dict(iterations=2), quiet=True), 'NaN or inf')

def test_unknown_names_list_valid_ones():
    _raises(lambda: load_dataset('cifar11'), 'use one of: digits, mnist, fashion_mnist')
    _raises(lambda: create_model('resnet19', 10), 'use one of: convnet, resnet18, resnet50')
    _raises(lambda: RecoverConfig(voter='majority'), 'use one of: prior, equal, random')
    _raises(lambda: RecoverConfig(schedule='round'), 'use one of: pairs, random, fixed, top')
    _raises(lambda: RunConfig(experts=dict(archs=['resnet19'])), "unknown model 'resnet19'")

@pytest.mark.parametrize('ipc', [0, -1])
def test_ipc_zero_or_negative(data, ipc):
    _raises(lambda: RecoverConfig(ipc=ipc), 'ipc must be an integer >= 1')
    _raises(lambda: RunConfig(ipc=ipc), 'ipc must be an integer >= 1')
    _raises(lambda: per_class_subset(data.train, ipc), 'ipc must be >= 1')

@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_nan_or_inf_in_data(pool, data, bad, tmp_path):
    sub = per_class_subset(data.train, 2, 0); x = normalize(sub.x, data.info); x[3, 0, 2, 2] = bad
    _raises(lambda: relabel(x, pool, data.info, dict(epochs=1)), 'contain NaN or inf (first: index 3)')
    _raises(lambda: evaluate_set(x, sub.y, data.info, data.test, pool, config=dict(epochs=1)), 'contain NaN or inf')
    _raises(lambda: recover(pool, data, dict(iterations=2), priors=[bad, 1.0], quiet=True), 'priors must be finite')
    # a dataset folder whose image file holds floats (with a NaN) instead of uint8 pixels
    root = write_idx_fixture(tmp_path/'fm', n_train=20, n_test=10)
    a = np.zeros((20, 28, 28), np.float32); a[0, 0, 0] = bad
    write_idx(root/'train-images-idx3-ubyte.gz', a)
    _raises(lambda: load_dataset('fashion_mnist', root=root), 'expected uint8 images')

# ---------------------------------------------------------------------------------------------------------
# numerical faults inside the recover loop

SMALL = dict(ipc=1, iterations=12, min_scale=0.5, checkpoint_every=4)

def _poison(model, calls:set, value=float('nan')):
    n = [0]
    def hook(m, i, o):
        if not torch.is_grad_enabled(): return None
        n[0] += 1
        return o * value if n[0] in calls else None
    return model.register_forward_hook(hook)

@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_isolated_nonfinite_steps_are_skipped(pool, data, value):
    clean = recover(pool, data, SMALL, quiet=True)
    h = _poison(pool[0].model, {3, 8}, value)
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always'); r = recover(pool, data, SMALL, quiet=True)
    finally: h.remove()
    fct.test_eq(len([x for x in w if 'step skipped' in str(x.message)]), 2)
    assert torch.isfinite(r.images).all() and torch.isfinite(r.ce).all() and torch.isfinite(r.bn).all()
    assert not torch.equal(r.images, clean.images)

def test_nonfinite_step_halves_the_lr_for_the_rest_of_the_unit(pool, data, tmp_path):
    """Each skipped step halves the lr of every later step of its unit (the callbacks see the lr each step used), the next
    unit starts at the configured lr again, and the halved scale is what the progress checkpoint records and a resume uses."""
    from safetensors import safe_open
    cfg = dict(SMALL, classes_per_chunk=5, callback_every=1)                 # two units of 12 steps each, run one after the other
    seen = []
    h = _poison(pool[0].model, {3, 8})                                        # bad steps 3 and 8 of the first unit
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always'); recover(pool, data, cfg, quiet=True, callbacks=[lambda s: seen.append((s.units[0], s.step, s.lr))])
    finally: h.remove()
    fct.test_eq([str(x.message).split(': ')[-1] for x in w if 'step skipped' in str(x.message)],
                ['step skipped, lr now 0.5 x the schedule', 'step skipped, lr now 0.25 x the schedule'])
    lr, T = RecoverConfig().lr, cfg['iterations']
    scale = {u: [round(l / R.cosine_lr(s - 1, T, lr), 12) for uu, s, l in seen if uu == u] for u in dict.fromkeys(u for u, _, _ in seen)}
    fct.test_eq(list(scale), ['k0_c0', 'k0_c1'])
    fct.test_eq(scale['k0_c0'], [1.0] * 3 + [0.5] * 5 + [0.25] * 4)          # step 3 at full lr (it was skipped), 4-8 at half, 9-12 at a quarter
    fct.test_eq(scale['k0_c1'], [1.0] * 12)                                    # a new unit: the configured lr
    # stopped after step 5 (one bad step behind it): the checkpoint holds the halved scale, and the resumed steps use it
    h = _poison(pool[0].model, {3})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); assert recover(pool, data, cfg, out=tmp_path, quiet=True, stop_after=5) is None
    finally: h.remove()
    with safe_open(str(tmp_path/'checkpoint/progress.safetensors'), framework='pt') as f: fct.test_eq((f.metadata()['step'], f.metadata()['lr_scale']), ('5', '0.5'))
    seen.clear(); recover(pool, data, cfg, out=tmp_path, quiet=True, callbacks=[lambda s: seen.append((s.units[0], s.step, s.lr))])
    fct.test_eq([(u, s, round(l / R.cosine_lr(s - 1, T, lr), 12)) for u, s, l in seen if u == 'k0_c0'], [('k0_c0', s, 0.5) for s in range(6, 13)])

def test_nonfinite_update_is_rolled_back(pool, data, monkeypatch):
    "Finite gradients but an update that writes NaN into the pixels: the step is rolled back and skipped."
    calls, orig = [0], R.adam_step
    def bad_adam(x, *a, **kw):
        calls[0] += 1; orig(x, *a, **kw)
        if calls[0] == 5: x.view(-1)[0] = float('nan')
    monkeypatch.setattr(R, 'adam_step', bad_adam)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); r = recover(pool, data, SMALL, quiet=True)
    fct.test_eq(len([x for x in w if 'step skipped' in str(x.message)]), 1)
    assert torch.isfinite(r.images).all()

def test_consecutive_faults_stop_cleanly_and_keep_the_checkpoint(pool, data, tmp_path):
    clean = recover(pool, data, SMALL, quiet=True)
    h = _poison(pool[0].model, {6, 7, 8})
    try: msg = _raises(lambda: recover(pool, data, SMALL, out=tmp_path, quiet=True), 'NaN/inf on 3 steps in a row')
    finally: h.remove()
    ck = tmp_path/'checkpoint'
    snap = {p.name: p.read_bytes() for p in ck.iterdir()}
    fct.test_eq(sorted(snap), ['progress.safetensors', 'run.json'])
    t = st_load(snap['progress.safetensors']); assert all(torch.isfinite(v).all() for k, v in t.items() if not k.endswith('.g'))
    from safetensors import safe_open
    with safe_open(str(ck/'progress.safetensors'), framework='pt') as f: fct.test_eq(f.metadata()['step'], '4')
    back = recover(pool, data, SMALL, out=tmp_path, quiet=True)          # the fault is gone: resume from step 4
    assert torch.equal(back.images, clean.images)

# ---------------------------------------------------------------------------------------------------------
# SIGKILL at random points of recover, relabel and evaluate; determinism

CHILD = r'''
import json, os, signal, sys
cfg_path, out, kind, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
counts = {}
def tick(name):
    counts[name] = counts.get(name, 0) + 1
    if name == kind and counts[name] == k: os.kill(os.getpid(), signal.SIGKILL)
import cvdd_nb.relabel as RL, cvdd_nb.evaluate as EV
from cvdd_nb import pipeline
_cl, _st, _rep = RL.compress_logits, EV.StudentStep.__call__, os.replace
def cl(*a, **kw): tick('relabel'); return _cl(*a, **kw)          # once per labelled batch
def st(self, *a, **kw): tick('evaluate'); return _st(self, *a, **kw)   # once per student optimiser step
def rep(a, b): tick('write'); return _rep(a, b)                  # atomic_write: temp file complete, not yet renamed
RL.compress_logits, EV.StudentStep.__call__, os.replace = cl, st, rep
pipeline.run(json.load(open(cfg_path)), out=out, callbacks=[lambda s: tick('recover')])
print(json.dumps(counts))
'''

def _child(tmp, out, kind='none', k=0):
    return subprocess.run([sys.executable, str(tmp/'child.py'), str(tmp/'cfg.json'), str(out), kind, str(k)],
                          capture_output=True, text=True, env=ENV, timeout=240)

def _is_temp(p:Path)->bool: return p.name.startswith('.') and p.name.endswith('.tmp')

def _snapshot(out:Path)->dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob('*')) if p.is_file() and not _is_temp(p)}

def _damaged(out:Path)->list:
    "Files that are not readable as what their name says (a torn write read as valid would show up here)."
    bad = []
    for p in out.rglob('*'):
        if not p.is_file() or _is_temp(p): continue
        try:
            if p.suffix == '.json': json.loads(p.read_text())
            elif p.suffix == '.safetensors': st_load(p.read_bytes())
            elif p.suffix == '.png': assert p.read_bytes()[:4] == b'\x89PNG'
        except Exception: bad.append(str(p.relative_to(out)))
    return bad

def _done_files(out:Path, snap:dict)->set:
    "Files of stages the manifest calls done (final outputs: they must never change again)."
    m = json.loads((out/'manifest.json').read_text()) if (out/'manifest.json').exists() else {'stages': {}}
    done = [n for n, s in m['stages'].items() if s.get('status') == 'done']
    pre = {'experts': [], 'priors': ['priors.json'], 'recover_cvdd': ['recover/cvdd/'], 'recover_sre2l++': ['recover/sre2l++/'],
           'relabel': ['labels/'], 'evaluate': ['evaluate/']}
    return {f for f in snap for n in done for p in pre.get(n, []) if f.startswith(p) and not f.endswith('.jsonl')}

def _results(out:Path)->dict:
    "What must be bit-identical: every tensor file and image, the label files, the accuracies."
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*'))
             if p.is_file() and not _is_temp(p) and p.suffix in ('.safetensors', '.png') and p.parent != out}
    accs = {p.stem: json.loads(p.read_text())['accs'] for p in sorted((out/'evaluate').glob('*.json')) if p.stem != 'results'}
    return dict(files=files, accs=accs, methods=json.loads((out/'results.json').read_text())['methods'])

def test_sigkill_anywhere_loses_nothing_and_resumes_bit_identical(pool_dir, tmp_path):
    cfg = dict(TINY, experts=dict(pool=str(pool_dir)), recover=dict(TINY['recover'], checkpoint_every=3, callback_every=1))
    (tmp_path/'cfg.json').write_text(json.dumps(cfg)); (tmp_path/'child.py').write_text(CHILD)
    r = _child(tmp_path, tmp_path/'ref'); assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    r2 = _child(tmp_path, tmp_path/'ref2'); assert r2.returncode == 0, r2.stderr
    ref = _results(tmp_path/'ref')
    fct.test_eq(_results(tmp_path/'ref2'), ref)                  # determinism: same config + seed -> same bits
    assert len(ref['files']) > 40 and ref['accs']

    rng = random.Random(9)                                       # random kill points, seeded
    plan = ([('recover', rng.randint(1, 25)) for _ in range(3)] + [('write', rng.randint(1, 30))] +
            [('relabel', rng.randint(2, 4)) for _ in range(3)] + [('write', rng.randint(1, 10))] +
            [('evaluate', rng.randint(1, 5)) for _ in range(3)])
    out, survived, lost, log, temps = tmp_path/'kill', {}, 0, [], 0
    for kind, k in plan:
        before = _snapshot(out) if out.exists() else {}
        keep = _done_files(out, before) if out.exists() else set()
        p = _child(tmp_path, out, kind, k)
        assert p.returncode == -signal.SIGKILL, (kind, k, p.returncode, p.stderr[-2000:])
        after = _snapshot(out)
        changed = [f for f in keep if after.get(f) != before[f]]
        lost += sum((out/f).stat().st_size if (out/f).exists() else 1 for f in changed)
        assert not changed, (kind, k, changed)                   # finished outputs are never touched again
        assert not _damaged(out), (kind, k, _damaged(out))       # nothing torn is readable as valid
        survived[kind] = survived.get(kind, 0) + 1; log.append((kind, k, len(after)))
        temps += sum(_is_temp(p) for p in out.rglob('*'))         # a kill inside atomic_write leaves its temp file ...
    p = _child(tmp_path, out); assert p.returncode == 0, p.stderr
    assert temps > 0; fct.test_eq([p.name for p in out.rglob('*') if _is_temp(p)], [])   # ... which the next run removes
    got = _results(out)
    fct.test_eq(sorted(got['files']), sorted(ref['files']))
    differ = [f for f in ref['files'] if got['files'][f] != ref['files'][f]]
    lost += sum(len(ref['files'][f]) for f in differ)
    fct.test_eq(differ, []); fct.test_eq(got['accs'], ref['accs']); fct.test_eq(got['methods'], ref['methods'])
    fct.test_eq(lost, 0)
    fct.test_eq(survived, dict(recover=3, write=2, relabel=3, evaluate=3))
    print(f'\nkills (stage, kill point, files on disk): {log}\ncalls in an uninterrupted run: {counts}\nbytes lost: {lost}')

STAGES = ['recover', 'relabel', 'evaluate']                      # the CHILD's tick names, in run order
WORK = dict(recover=['recover_cvdd', 'recover_sre2l++'], relabel=['relabel'], evaluate=['evaluate'])

@pytest.fixture(scope='module')
def killed_ref(pool_dir, tmp_path_factory):
    "An uninterrupted TINY run (checkpoints every 3 recover steps): its folder and the CHILD's counts of what it did."
    d = tmp_path_factory.mktemp('counts')
    cfg = dict(TINY, experts=dict(pool=str(pool_dir)), recover=dict(TINY['recover'], checkpoint_every=3, callback_every=1))
    (d/'cfg.json').write_text(json.dumps(cfg)); (d/'child.py').write_text(CHILD)
    r = _child(d, d/'ref'); assert r.returncode == 0, r.stderr
    return d, json.loads(r.stdout.strip().splitlines()[-1])

def _work(out:Path, kind:str)->int:
    "The work the manifest says the last call did in `kind`'s stages (recover steps, epochs labelled, student epochs)."
    st = json.loads((out/'manifest.json').read_text())['stages']
    return sum(sum(st[s]['work'].values()) for s in WORK[kind])

@pytest.mark.parametrize('kind', STAGES)
def test_sigkill_then_resume_does_only_the_work_left(killed_ref, kind):
    d, ref = killed_ref
    # kill one tick after the first checkpoint: recover step 10 (checkpoint at 9), relabel's first batch of epoch 1,
    # the first student's first step of epoch 1 (a checkpoint per epoch); what the resume must redo is known exactly
    per = dict(recover=9, relabel=ref['relabel'] // _work(d/'ref', 'relabel'), evaluate=ref['evaluate'] // _work(d/'ref', 'evaluate'))[kind]
    p = _child(d, d/kind, kind, per + 1); assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    r = _child(d, d/kind); assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for s in STAGES[:STAGES.index(kind)]: assert got.get(s, 0) == 0, (s, got)           # finished before the kill: not redone
    assert got.get(kind, 0) == ref[kind] - per, (kind, per, got, ref)                   # all but what the checkpoint held
    for s in STAGES[STAGES.index(kind) + 1:]: assert got[s] == ref[s], (s, got, ref)
    for s in STAGES:                                                                       # the manifest says the same
        full, now = _work(d/'ref', s), _work(d/kind, s)
        assert full > 0
        if s == kind: assert 0 < now < full, (s, now, full)
        else: assert now == (0 if STAGES.index(s) < STAGES.index(kind) else full), (s, now, full)
