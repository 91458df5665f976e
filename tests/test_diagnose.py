"bench/diagnose.py: what each distilled set of a finished run carries, checked against direct computation on a tiny run."
import subprocess, sys
from pathlib import Path
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError, load_json
from cvdd_nb.data import load_dataset, normalize, per_class_subset
from cvdd_nb.experts import ExpertPool
from cvdd_nb.pipeline import TINY, run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'bench'))
import diagnose

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp('d')/'tiny'; run(TINY, out=out); return out

def test_measures_match_direct_computation(tiny):
    res = diagnose.diagnose(tiny, n_views=4)
    fct.test_eq(sorted(res), ['cvdd', 'random_soft', 'sre2l++'])
    data, pool = load_dataset('digits'), ExpertPool.load(tiny/'experts')
    sub = per_class_subset(data.train, TINY['ipc'], 0, data.info.num_classes); x = normalize(sub.x, data.info)
    with torch.no_grad():
        for e in pool: fct.test_close(res['random_soft']['reads'][e.name], 100 * (e.model.eval()(x).argmax(1) == sub.y).float().mean().item(), eps=0.01)
    for s in res.values(): assert 0 <= s['agree'] <= 100 and 0 <= s['correct'] <= 100 and 0 <= s['entropy'] <= torch.log(torch.tensor(10.)).item()
    fct.test_eq(diagnose.diagnose(tiny, n_views=4), res)                        # the same crops every time

def test_one_expert_always_agrees(tiny):
    x = torch.randn(6, 1, 8, 8); y = torch.tensor([0, 0, 1, 1, 2, 2]); pool = ExpertPool.load(tiny/'experts')
    one = ExpertPool([pool[0]])
    fct.test_eq(diagnose.carried(x, y, one, 3, False)['agree'], 100.0)
    v = diagnose.views(x, 2, flip=False); fct.test_eq(v.shape, (2, 6, 1, 8, 8)); fct.test_eq(v, diagnose.views(x, 2, flip=False))

def test_cli_writes_tables_and_refuses_a_non_run(tiny, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'bench/diagnose.py'), str(tiny), '--views', '2', '--out', str(tmp_path/'d')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    d = load_json(tmp_path/'d.json'); assert set(d['runs']['tiny']) == {'cvdd', 'sre2l++', 'random_soft'} and d['meta']['commit']
    assert '| cvdd |' in (tmp_path/'d.md').read_text() and 'bench/diagnose.py' in (tmp_path/'d.md').read_text()
    (tmp_path/'empty').mkdir()
    r = subprocess.run([sys.executable, str(ROOT/'bench/diagnose.py'), str(tmp_path/'empty')], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith('diagnose: error:') and 'manifest.json does not exist' in r.stderr, r.stderr
