"""Run folders behave like a well-made tool: file modes follow the umask, a full disk is one line and resumes, Ctrl-C is
one line with exit 130 and resumes to the same results, one process per folder, settings hold in every stage."""
import contextlib, errno, io, json, os, signal, socket, subprocess, sys, time
from pathlib import Path
from unittest import mock
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError, LOCK_NAME, load_json
from cvdd_nb.cli import main
from cvdd_nb.data import load_dataset
from cvdd_nb.experts import Expert, ExpertPool, evaluate_model, train_expert
from cvdd_nb.models import create_model
from cvdd_nb.pipeline import TINY, run

CVDD = str(Path(sys.executable).parent/'cvdd')
ENV = {**os.environ, 'CVDD_PROGRESS': '0', 'OMP_NUM_THREADS': '1'}

@pytest.fixture(scope='module')
def reference(tiny_cfg, tmp_path_factory):
    "The results of an uninterrupted run."
    out = tmp_path_factory.mktemp('ref')/'run'
    fct.test_eq(main(['--quiet', 'run', '--config', str(tiny_cfg), '--out', str(out)]), 0)
    return load_json(out/'results.json')['methods']

def accs(out:Path)->dict: return {m: r['accs'] for m, r in load_json(out/'results.json')['methods'].items()}

def test_min_margin_holds_in_every_stage(tmp_path, data):
    "A near-chance expert the config allows (experts.min_margin) is accepted by recover and relabel too, not re-refused."
    weak = Expert(create_model('convnet', 10, 1, 8, width=0.25), train_expert('convnet', data, dict(epochs=1), width=0.25, quiet=True).meta, 'weak')
    weak.meta.test_acc = evaluate_model(weak.model, data.test, data.info)
    ok = train_expert('resnet18', data, dict(epochs=2), width=0.125, quiet=True, name='ok')
    ExpertPool([weak, ok]).save(tmp_path/'pool')
    cfg = dict(TINY, experts=dict(pool=str(tmp_path/'pool'), min_margin=-100.0))
    res = run(cfg, out=tmp_path/'run')
    assert set(res['methods']) == {'cvdd', 'sre2l++', 'random_soft', 'random_hard'}
    with pytest.raises(CVDDError, match='near chance'): run(dict(cfg, experts=dict(pool=str(tmp_path/'pool'))), out=tmp_path/'run2')

@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o077, 0o600)])
def test_file_modes_follow_the_umask(tmp_path, umask, mode):
    r = subprocess.run([CVDD, '--quiet', 'experts', 'train', '--arch', 'convnet:0.25', '--epochs', '4', '--out', str(tmp_path/'pool')],
                       capture_output=True, text=True, env=ENV, preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr
    files = [p for p in (tmp_path/'pool').rglob('*') if p.is_file()]
    assert len(files) >= 4 and all(p.stat().st_mode & 0o777 == mode for p in files), [(p.name, oct(p.stat().st_mode)) for p in files]

def test_full_disk_is_one_line_and_resumes(tiny_cfg, reference, tmp_path):
    "The 12th file write hits a full disk: exit 2 and one line naming the file and the fix; the rerun gives the uninterrupted results."
    real, calls = os.fsync, []
    def fsync(fd):
        calls.append(fd)
        if len(calls) == 12: raise OSError(errno.ENOSPC, 'No space left on device')
        return real(fd)
    err = io.StringIO()
    with mock.patch('cvdd_nb.core.os.fsync', fsync), contextlib.redirect_stderr(err):
        rc = main(['--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run')])
    fct.test_eq(rc, 2)
    lines = [l for l in err.getvalue().splitlines() if l.strip()]
    assert lines[0].startswith('cvdd: error: cannot write ') and 'the disk is full' in lines[0] and 'MiB free' in lines[0], lines
    assert len(lines) == 2 and 'another --out folder' in lines[1], lines
    assert not list((tmp_path/'run').rglob('*.tmp'))                                       # nothing half-written left
    fct.test_eq(main(['--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run')]), 0)
    fct.test_eq(accs(tmp_path/'run'), {m: r['accs'] for m, r in reference.items()})

STAGE_CALLS = dict(experts='cvdd_nb.pipeline.ExpertPool.load', priors='cvdd_nb.pipeline.compute_priors',
                   recover_cvdd='cvdd_nb.pipeline.recover', relabel='cvdd_nb.pipeline.relabel', evaluate='cvdd_nb.pipeline.evaluate_set')

@pytest.mark.parametrize('stage', list(STAGE_CALLS))
def test_ctrl_c_in_each_stage(tiny_cfg, reference, tmp_path, stage):
    "Ctrl-C inside a stage: exit 130 and one line naming the stage; the same command then gives the uninterrupted results."
    err = io.StringIO()
    with mock.patch(STAGE_CALLS[stage], side_effect=KeyboardInterrupt), contextlib.redirect_stderr(err):
        rc = main(['--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run')])
    fct.test_eq(rc, 130)
    fct.test_eq(err.getvalue().strip().splitlines(), [f'cvdd: stopped in stage {stage} (Ctrl-C); run the same command again to resume'])
    fct.test_eq(load_json(tmp_path/'run'/'manifest.json')['stages'][stage]['status'], 'stopped')
    fct.test_eq(main(['--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run')]), 0)
    fct.test_eq(accs(tmp_path/'run'), {m: r['accs'] for m, r in reference.items()})

def _sigint_default():
    "A child started from a background job inherits SIGINT ignored (POSIX shells do that for `cmd &`): undo it, as a terminal would have it."
    signal.signal(signal.SIGINT, signal.SIG_DFL)

def test_sigint_from_the_terminal(tiny_cfg, tmp_path):
    "A real SIGINT to a running `cvdd run`, in recover: exit 130, one line on stderr, no traceback."
    p = subprocess.Popen([CVDD, '--quiet', 'run', '--config', str(tiny_cfg), '--out', str(tmp_path/'run'), '--set', 'recover.iterations=5000'],
                         stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_sigint_default)
    m = tmp_path/'run'/'manifest.json'
    for _ in range(3000):                       # up to 5 min on a loaded machine; the stage starts after the experts
        if m.exists() and '"recover_cvdd"' in m.read_text(): break
        assert p.poll() is None, f'cvdd ended before recover: {p.stderr.read()}'
        time.sleep(0.1)
    else: p.kill(); pytest.fail('recover never started')
    p.send_signal(signal.SIGINT); _, err = p.communicate(timeout=300)
    fct.test_eq(p.returncode, 130)
    fct.test_eq(err.strip().splitlines(), ['cvdd: stopped in stage recover_cvdd (Ctrl-C); run the same command again to resume'])
    fct.test_eq(load_json(m)['stages']['recover_cvdd']['status'], 'stopped')

def _holder(folder:Path)->subprocess.Popen:
    "Another process that holds the lock of `folder` until killed."
    p = subprocess.Popen([sys.executable, '-c', f'import time; from cvdd_nb.core import FolderLock; FolderLock({str(folder)!r}); '
                          'print("locked", flush=True); time.sleep(120)'], stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == 'locked'
    return p

@pytest.mark.parametrize('cmd', ['run', 'experts'])
def test_one_process_per_folder(tiny_cfg, tmp_path, cmd):
    "A second process is refused with the first one's pid; once that one is killed, its lock is taken over with a warning."
    out = tmp_path/'run'
    args = ['--quiet', 'run', '--config', str(tiny_cfg), '--out', str(out)] if cmd == 'run' else \
           ['--quiet', 'experts', 'train', '--arch', 'convnet:0.25', '--epochs', '4', '--out', str(out)]
    first = _holder(out)
    r = subprocess.run([CVDD, *args], capture_output=True, text=True, env=ENV)
    fct.test_eq(r.returncode, 2)
    assert f'is in use by process {first.pid} on {socket.gethostname()}' in r.stderr, r.stderr
    first.kill(); first.wait()
    r = subprocess.run([CVDD, *args], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f'taking over the stale lock of process {first.pid}' in r.stderr, r.stderr
    assert not (out/LOCK_NAME).exists()                                          # released when the command ended
