"Fixtures shared by the test modules: the embedded digits data, a few real images, tiny expert pools, one intra-op thread."
import json
import pytest, torch
from cvdd_nb.data import load_dataset, normalize, per_class_subset
from cvdd_nb.testing import tiny_pool

@pytest.fixture(scope='module')
def data(): return load_dataset('digits')

@pytest.fixture(scope='module')
def xy(data):
    "Three real images per class, normalised, with their classes."
    s = per_class_subset(data.train, 3, seed=0)
    return normalize(s.x, data.info), s.y

@pytest.fixture(scope='session')
def make_pool(): return tiny_pool

@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread: tiny tensors run fastest so, immune to oversubscription on a busy 2-core machine, and bit-identity
    across processes (torchrun, launch_local) needs the same thread count everywhere. Modules opt in with `usefixtures`."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def toml_text(d:dict)->str:
    "A tiny TOML writer for the test configs (tables one level deep plus [evaluate.student])."
    top = [f'{k} = {json.dumps(v)}' for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            top.append(f'[{k}]'); top += [f'{a} = {json.dumps(b)}' for a, b in v.items() if not isinstance(b, dict)]
            top += [f'[{k}.{a}]\n' + '\n'.join(f'{x} = {json.dumps(y)}' for x, y in b.items()) for a, b in v.items() if isinstance(b, dict)]
    return '\n'.join(top) + '\n'

@pytest.fixture(scope='module')
def tiny_cfg(tmp_path_factory):
    "TINY with its two experts trained once, here, and reused by every run (`experts.pool`)."
    d = tmp_path_factory.mktemp('cfg')
    from cvdd_nb.experts import train_pool
    from cvdd_nb.pipeline import TINY
    train_pool([('convnet', 'convnet', 0.25), ('resnet18', 'resnet18', 0.125)], load_dataset('digits'), d/'pool', dict(epochs=3), quiet=True)
    p = d/'tiny.toml'; p.write_text(toml_text(dict(TINY, experts=dict(pool=str(d/'pool'))))); return p
