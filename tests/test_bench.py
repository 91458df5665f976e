"The accuracy benchmark script: tiny budgets on digits, end to end, resumable, and its tables read back."
import json, os, subprocess, sys
from pathlib import Path
import fastcore.test as fct
from cvdd_nb.core import load_json

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'CVDD_PROGRESS': '0', 'OMP_NUM_THREADS': '1'}
TINY = ['experts.epochs=3', 'experts.train_per_class=0', "experts.archs=['convnet:0.25','resnet18:0.125']", 'recover.iterations=4', 'priors.mode="accuracy"',
        'evaluate.student.epochs=2', 'evaluate.student.width=0.25', 'evaluate.seeds=[0]']

def _bench(*args):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'accuracy.py'), *args], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

def test_benchmark_tables(tmp_path):
    args = ['--datasets', 'digits', '--ipcs', '1', '--full-epochs', '1', '--work', str(tmp_path/'work'), '--results', str(tmp_path/'acc'),
            '--set', *TINY, "evaluate.students=[{student='resnet18',width=0.125,epochs=2}]"]
    _bench(*args)
    res = load_json(tmp_path/'acc.json', dict(meta=dict, rows=list))
    fct.test_eq([(r['dataset'], r['ipc'], r['student']) for r in res['rows']], [('digits', 1, 'convnet-w0.25'), ('digits', 1, 'resnet18-w0.125')])
    run = load_json(tmp_path/'work/digits/digits-ipc1/results.json')
    for r in res['rows']:                                      # the table is the run's results, per student
        fct.test_eq(r['methods'], run['by_student'][r['student']])
        fct.test_eq(set(r['methods']), {'cvdd', 'sre2l++', 'random_soft', 'random_hard'})
        assert 0 <= r['full'] <= 100
    assert res['meta']['complete'] and res['meta']['budgets'][0]['config'] == 'configs/digits_ipc1.toml'
    # the full-data students were trained once, before the runs, and their accuracies are the table's
    full = {f['student']: f for f in res['meta']['full_data']}
    fct.test_eq(set(full), {'convnet-w0.25', 'resnet18-w0.125'})
    for r in res['rows']: fct.test_eq(r['full'], load_json(tmp_path/'work/digits/full'/f"{r['student']}.json")['acc'])
    assert 0 < res['meta']['shared_s'] <= res['meta']['wall_s']
    md = (tmp_path/'acc.md').read_text()
    assert '| digits | 1 | resnet18-w0.125 |' in md and 'experts 2 x 3 ep' in md
    # the priors each run voted with are recorded beside its budget and shown (the README's prose may only cite a file)
    fct.test_eq(res['meta']['budgets'][0]['priors'], run['priors'])
    assert '| `configs/digits_ipc1.toml` | ' + ' | '.join(f'{n}: {v:.2f}' for n, v in run['priors'].items()) + ' |' in md
    # --render writes the same table again from the JSON alone, running nothing
    (tmp_path/'acc.md').unlink(); _bench('--render', '--results', str(tmp_path/'acc'))
    fct.test_eq((tmp_path/'acc.md').read_text(), md)
    # a second call finds every run finished and recomputes nothing: same numbers
    _bench(*args)
    fct.test_eq(load_json(tmp_path/'acc.json')['rows'], res['rows'])

def test_ablation_one_change_at_a_time(tmp_path):
    _bench('--ablation', '--only', 'init noise', '--ablation-ipc', '1', '--valid', '20', '--work', str(tmp_path/'work'), '--jobs', '2', '--threads', '1',
           '--results', str(tmp_path/'abl'), '--set', 'dataset="digits"', *TINY)
    res = load_json(tmp_path/'abl.json', dict(meta=dict, rows=list))
    fct.test_eq([r['name'] for r in res['rows']], ['defaults', 'init noise'])
    fct.test_eq(res['rows'][1]['overrides'], {'recover.init': 'noise'})
    assert set(res['meta']['baselines']) == {'sre2l++', 'random_soft', 'random_hard'} and res['meta']['valid'] == 20
    cfg = load_json(tmp_path/'work/ablation/abl-init-noise/manifest.json')['config']
    fct.test_eq((cfg['recover']['init'], cfg['valid'], cfg['evaluate']['methods']), ('noise', 20, ['cvdd']))
    assert 'validation split of 20 training images per class' in (tmp_path/'abl.md').read_text()

def test_benchmark_ctrl_c_and_locked_folders(tmp_path):
    "Ctrl-C: exit 130 with its one line; a run folder another process holds: the one-line error naming that process."
    import signal, time
    args = [sys.executable, str(ROOT/'bench'/'accuracy.py'), '--datasets', 'digits', '--ipcs', '1', '--full-epochs', '0',
            '--work', str(tmp_path/'work'), '--results', str(tmp_path/'acc'), '--set', *TINY[:5], 'recover.iterations=4000',
            'evaluate.student.epochs=2', 'evaluate.student.width=0.25', 'evaluate.seeds=[0]']
    # a child of a background job inherits SIGINT ignored (POSIX shells do that for `cmd &`): undo it, as a terminal has it
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not any('recover_cvdd' in m.read_text() for m in (tmp_path/'work').rglob('manifest.json')):
        assert p.poll() is None and time.monotonic() - t0 < 300, 'the benchmark never reached recover_cvdd'   # a loaded machine can take minutes
        time.sleep(0.1)
    p.send_signal(signal.SIGINT); _, err = p.communicate(timeout=120)
    fct.test_eq(p.returncode, 130)
    fct.test_eq(err.strip().splitlines()[-1], 'bench: stopped (Ctrl-C); run the same command again to resume')
    run_dir = next(m.parent for m in (tmp_path/'work').rglob('manifest.json') if 'recover_cvdd' in m.read_text())
    holder = subprocess.Popen([sys.executable, '-c', f'import time; from cvdd_nb.core import FolderLock; FolderLock({str(run_dir)!r}); '
                               'print("locked", flush=True); time.sleep(120)'], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == 'locked'
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT)
    holder.kill(); holder.wait()
    fct.test_eq(r.returncode, 2)
    assert f'is in use by process {holder.pid}' in r.stderr.strip().splitlines()[0], r.stderr[-2000:]
