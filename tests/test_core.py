"Core plumbing: atomic writes under failure, manifests, config gate."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError, Config, RunDir, atomic_write, load_json, save_json, set_seed, make_generator
import dataclasses

def test_atomic_write_keeps_old_content_when_writer_dies(tmp_path):
    target = tmp_path/'big.bin'; atomic_write(target, b'old')
    code = textwrap.dedent(f"""
        import os, cvdd_nb.core as c
        real = os.replace
        def boom(*a): os.kill(os.getpid(), 9)
        c.os.replace = boom
        c.atomic_write({str(target)!r}, b'new' * 1000)
    """)
    r = subprocess.run([sys.executable, '-c', code])
    fct.test_eq(r.returncode, -signal.SIGKILL)
    fct.test_eq(target.read_bytes(), b'old')            # the torn write never replaced the file

def test_atomic_write_cleans_temp_on_error(tmp_path):
    with pytest.raises(TypeError): atomic_write(tmp_path/'x', 123)
    fct.test_eq(list(tmp_path.iterdir()), [])

def test_load_json_reports_type_and_missing(tmp_path):
    save_json(tmp_path/'m.json', dict(a=1, stages=[]))
    with pytest.raises(CVDDError, match="field 'stages' should be dict"): load_json(tmp_path/'m.json', dict(stages=dict))
    with pytest.raises(CVDDError, match='does not exist'): load_json(tmp_path/'none.json')
    (tmp_path/'t.json').write_text('{"a": ')
    with pytest.raises(CVDDError, match='not valid JSON'): load_json(tmp_path/'t.json')

def test_rundir_rejects_damaged_manifest(tmp_path):
    (tmp_path/'manifest.json').write_text('[1, 2]')
    with pytest.raises(CVDDError, match='not a JSON object'): RunDir(tmp_path)

def test_rundir_records_versions_seed_and_stage_times(tmp_path):
    rd = RunDir(tmp_path/'r', config=dict(a=1), seed=7)
    with rd.stage('experts'): pass
    m = json.loads((tmp_path/'r/manifest.json').read_text())
    fct.test_eq((m['seed'], m['config'], m['stages']['experts']['status']), (7, dict(a=1), 'done'))
    assert {'torch', 'python', 'cvdd_nb'} <= set(m['versions'])

@dataclasses.dataclass
class _C(Config):
    n:int = 1
    x:float = 0.5
    name:str = 'a'

def test_config_gate():
    fct.test_eq(_C.from_dict(dict(x=2)).x, 2)
    with pytest.raises(CVDDError, match='unknown _C setting'): _C.from_dict(dict(nn=1))
    with pytest.raises(CVDDError, match='should be float'): _C.from_dict(dict(x='2'))
    with pytest.raises(CVDDError, match='should be str'): _C.from_dict(dict(name=3))

def test_generators_are_independent_of_global_seed():
    a = torch.rand(3, generator=make_generator(1)); set_seed(99); torch.rand(5)
    fct.test_eq(torch.rand(3, generator=make_generator(1)), a)
