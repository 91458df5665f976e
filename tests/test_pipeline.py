"The whole run: `cvdd run` end to end, kill -9 and resume, bad configs, shipped configs."
import json, os, signal, subprocess, sys, time, tomllib
from pathlib import Path
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError, load_json
from cvdd_nb.pipeline import DIGITS_DEMO, TINY, RunConfig, load_config, run, student_tag
from cvdd_nb.recover import Recovered

ROOT = Path(__file__).resolve().parent.parent
CVDD = str(Path(sys.executable).parent/'cvdd')
ENV = {**os.environ, 'CVDD_PROGRESS': '0', 'OMP_NUM_THREADS': '1'}

def test_cli_run_end_to_end(tiny_cfg, tmp_path):
    r = subprocess.run([CVDD, '--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run')], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    res = load_json(tmp_path/'run/results.json', dict(dataset=str, ipc=int, methods=dict, timing_s=dict))
    fct.test_eq((res['dataset'], res['ipc']), ('digits', 2))
    fct.test_eq(set(res['methods']), {'cvdd', 'sre2l++', 'random_soft', 'random_hard'})
    for m in res['methods'].values():
        assert set(m) >= {'acc_mean', 'acc_std', 'accs'} and all(0 <= a <= 100 for a in m['accs'])
    assert set(res['timing_s']) >= {'experts', 'recover', 'relabel', 'evaluate'} and all(v >= 0 for v in res['timing_s'].values())
    report = (tmp_path/'run/report.md').read_text()
    assert '| cvdd | soft |' in report and '![images](images.png)' in report
    for f in ('images.png', 'votes.png', 'losses.png', 'accuracy.png'): assert (tmp_path/'run'/f).read_bytes()[:4] == b'\x89PNG'
    shown = subprocess.run([CVDD, 'show', str(tmp_path/'run')], capture_output=True, text=True, env=ENV)
    assert shown.returncode == 0 and '| random_hard |' in shown.stdout
    # a finished run is not recomputed: every file a stage wrote (experts, priors, images, labels, students' results) is
    # left as it was, not written again (same inode, mtime and bytes); only the run's summary files are rendered again
    before = _files(tmp_path/'run')
    again = subprocess.run([CVDD, '--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run')], capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr
    after = _files(tmp_path/'run')
    fct.test_eq(sorted(after), sorted(before))
    rewritten = sorted(p for p in before if before[p][:2] != after[p][:2])
    fct.test_eq([p for p in rewritten if p not in RENDERED], [])
    fct.test_eq([after[p][2] == before[p][2] for p in ('evaluate/results.json', 'evaluate/results.md')], [True, True])   # the same table
    assert any(p.startswith('recover/cvdd/') for p in before) and any(p.startswith('labels/') for p in before) and any(p.startswith('evaluate/') for p in before)
    fct.test_eq(load_json(tmp_path/'run/results.json')['methods'], res['methods'])

RENDERED = {'manifest.json', 'results.json', 'report.md', 'accuracy.png', 'images.png', 'votes.png', 'losses.png',   # rewritten by every call
            'evaluate/results.json', 'evaluate/results.md'}                                           # (the table, from the students' files)

def _files(d:Path)->dict:
    "{relative path: (inode, mtime_ns, bytes)} of every file under `d`."
    return {str(p.relative_to(d)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.rglob('*')) if p.is_file()}

def test_kill_during_recover_then_resume_gives_same_images(tiny_cfg, tmp_path):
    over = ['--set', 'recover.iterations=60', '--set', 'recover.checkpoint_every=5']
    ref = subprocess.run([CVDD, '--quiet', 'recover', '--config', str(tiny_cfg), '--out', str(tmp_path/'ref'), *over], capture_output=True, text=True, env=ENV)
    assert ref.returncode == 0, ref.stderr
    p = subprocess.Popen([CVDD, '--quiet', 'recover', '--config', str(tiny_cfg), '--out', str(tmp_path/'kill'), *over], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path/'kill/recover/cvdd/checkpoint'
    deadline = time.time() + 240
    while time.time() < deadline and not (ck.exists() and any(ck.iterdir())): time.sleep(0.05)
    time.sleep(0.3); p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, 'recover finished before it could be killed'
    assert not (tmp_path/'kill/recover/cvdd/recovered.json').exists()
    man = load_json(tmp_path/'kill/manifest.json')
    fct.test_eq(man['stages']['experts']['status'], 'done')
    res = subprocess.run([CVDD, '--quiet', 'recover', '--config', str(tiny_cfg), '--out', str(tmp_path/'kill'), *over], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    a, b = Recovered.load(tmp_path/'ref/recover/cvdd'), Recovered.load(tmp_path/'kill/recover/cvdd')
    assert torch.equal(a.images, b.images)
    assert torch.equal(Recovered.load(tmp_path/'ref/recover/sre2l++').images, Recovered.load(tmp_path/'kill/recover/sre2l++').images)

@pytest.mark.parametrize('sets,msg', [
    (['dataset=cifar11'], "unknown dataset 'cifar11'"),
    (['experts.archs=["resnet19"]'], "unknown model 'resnet19'"),
    (['ipc=0'], 'ipc must be an integer >= 1'),
    (['ipc=-2'], 'ipc must be an integer >= 1'),
    (['ipc=200', 'recover.init="real"'], 'needs 200 real images per class'),
    (['recover.init="patches"'], 'lower ipc (or recover.mipc'),
    (['recover.voter="majority"'], "unknown voter 'majority'"),
    (['recover.schedule="round"'], "unknown schedule 'round'"),
    (['recover.iteration=5'], 'valid settings: ipc, iterations'),
    (['experts.pool="/nonexistent/pool"'], 'holds no pool.json'),
    (['evaluate.methods=["cvdd","dm"]'], "unknown method 'dm'"),
])
def test_bad_configs_fail_before_work(tiny_cfg, tmp_path, sets, msg, capsys):
    from cvdd_nb.cli import main
    args = [a for s in sets for a in ('--set', s)]
    fct.test_eq(main(['run', '--config', str(tiny_cfg), '--out', str(tmp_path/'r'), *args]), 2)
    err = capsys.readouterr().err
    assert msg in err, err
    assert not (tmp_path/'r').exists()                   # nothing was written, no expert trained

def test_bad_config_exit_status_from_the_console_script(tmp_path):
    r = subprocess.run([CVDD, 'run', '--config', str(tmp_path/'none.toml')], capture_output=True, text=True, env=ENV)
    fct.test_eq(r.returncode, 2); assert 'does not exist' in r.stderr and 'Traceback' not in r.stderr

def test_shipped_configs_are_valid():
    files = sorted((ROOT/'configs').glob('*.toml'))
    assert len(files) >= 14
    for f in files: load_config(f)
    names = {f.stem for f in files}
    for ds in ('fashion_mnist', 'mnist', 'cifar10', 'cifar100'):
        assert {f'{ds}_ipc1', f'{ds}_ipc10', f'{ds}_ipc50'} <= names, ds
    assert {'digits_ipc1', 'digits_ipc10'} <= names
    zoo = sorted((ROOT/'configs'/'zoo').glob('*.toml'))       # the field benchmark's configs (bench/field.py)
    fct.test_eq({f.stem for f in zoo}, {f'{ds}_ipc{i}' for ds in ('fashion_mnist', 'mnist') for i in (1, 10, 50)})
    for f in zoo:
        c = load_config(f); sc = c.stage_configs()
        assert c.to_dict()['experts']['pool'] == f"zoo:{c.dataset}" and sc['hard'] is not None, f
        fct.test_eq([student_tag(s) for s in sc['students']], ['convnet3-w1', 'resnet18-w0.5'])

def test_demo_config_file_matches_the_embedded_demo():
    fct.test_eq(load_config(ROOT/'configs'/'digits_ipc10.toml').to_dict(), RunConfig.from_dict(DIGITS_DEMO).to_dict())

def test_distill_priors_run_single_expert_pipelines(tiny_cfg, tmp_path):
    "priors.mode = 'distill' (the reference meaning): each expert distils alone, a student is scored on it."
    cfg = load_config(tiny_cfg, ['priors.mode="distill"', 'priors.distill_iterations=5'])
    run(cfg, out=tmp_path/'d', until='priors')
    p = load_json(tmp_path/'d/priors.json', dict(priors=list, experts=list))
    fct.test_eq((p['mode'], p['experts']), ('distill', ['convnet', 'resnet18']))
    assert all(0 <= a <= 100 for a in p['priors'])
    for name in p['experts']: assert (tmp_path/'d/priors'/name/'recovered.json').exists()   # its own SRe2L++ images
    r = Recovered.load(tmp_path/'d/priors/convnet'); fct.test_eq(set(map(tuple, r.committee)), {('convnet',)})

def test_hard_label_methods_train_with_the_dc_protocol(tiny_cfg, tmp_path):
    """evaluate.hard_protocol = 'dc': the hard-label sets train once, a ConvNet-3 with the DC/DSA/MTT protocol, in their own
    table; the KD student trains only the soft sets; the accuracies are those `evaluate_hard` gives for the same images."""
    from cvdd_nb.data import load_dataset, normalize, per_class_subset
    from cvdd_nb.protocols import evaluate_hard
    cfg = load_config(tiny_cfg, ['evaluate.methods=["cvdd", "random_hard", "cvdd_hard"]', 'evaluate.hard_protocol="dc"', 'evaluate.hard={epochs=3}'])
    res = run(cfg, out=tmp_path/'run')
    fct.test_eq(set(res['by_student']), {'convnet-w0.25', 'convnet3-w1-dc'})
    fct.test_eq(set(res['by_student']['convnet-w0.25']), {'cvdd'})
    fct.test_eq(set(res['by_student']['convnet3-w1-dc']), {'random_hard', 'cvdd_hard'})
    fct.test_eq(set(res['methods']), {'cvdd'})
    row = load_json(tmp_path/'run/evaluate/convnet3-w1-dc/random_hard.json')
    fct.test_eq((row['student'], row['labels'], row['epochs']), ('convnet3', 'hard', 3))
    data = load_dataset('digits'); sub = per_class_subset(data.train, cfg.ipc, cfg.seed, data.info.num_classes)
    again = evaluate_hard(normalize(sub.x, data.info), sub.y, data.info, data.test, dict(epochs=3), seeds=tuple(cfg.stage_configs()['evaluate'].seeds))
    fct.test_eq(res['by_student']['convnet3-w1-dc']['random_hard']['accs'], again.accs)
    with pytest.raises(CVDDError, match='hard protocol'): load_config(tiny_cfg, ['evaluate.hard_protocol="mtt"'])

def test_valid_seed_fixes_the_holdout_across_run_seeds(tmp_path, data):
    "valid_seed: runs of seeds 0 and 1 validate on the same hold-out, the zoo's check follows it."
    from cvdd_nb.pipeline import check_holdout, holdout
    from cvdd_nb.experts import ExpertPool, train_expert
    a, b = RunConfig(valid=5, seed=1, valid_seed=0), RunConfig(valid=5, seed=1)
    fct.test_eq((a.holdout_seed, b.holdout_seed), (0, 1))
    fct.test_eq(holdout(data, 5, a.holdout_seed).test.y.tolist(), holdout(data, 5, 0).test.y.tolist())
    assert not torch.equal(holdout(data, 5, 0).test.x, holdout(data, 5, 1).test.x)
    e = train_expert('convnet', data, dict(epochs=1), width=0.25, quiet=True); e.meta.holdout = dict(per_class=20, seed=0)
    pool = ExpertPool([e]); check_holdout(pool, a)                     # the hold-out it was kept out of
    with pytest.raises(CVDDError, match='valid_seed = 0'): check_holdout(pool, b)
