"Fixtures shared by the test modules: the embedded digits data, a few real images, tiny expert pools, one intra-op thread."
import pytest, torch
from cvdd_nb.data import load_dataset, normalize, per_class_subset
from cvdd_nb.experts import ExpertPool, train_expert

@pytest.fixture(scope='module')
def data(): return load_dataset('digits')

@pytest.fixture(scope='module')
def xy(data):
    "Three real images per class, normalised, with their classes."
    s = per_class_subset(data.train, 3, seed=0)
    return normalize(s.x, data.info), s.y

def tiny_pool(data, spec:list)->ExpertPool:
    "Tiny experts trained in seconds: spec = [(name, arch, width, epochs, seed, arch_kw or None), ...]."
    return ExpertPool([train_expert(arch, data, dict(epochs=ep), width=w, seed=s, name=n, arch_kw=kw, quiet=True)
                       for n, arch, w, ep, s, kw in spec])

@pytest.fixture(scope='session')
def make_pool(): return tiny_pool

@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread: tiny tensors run fastest so, immune to oversubscription on a busy 2-core machine, and bit-identity
    across processes (torchrun, launch_local) needs the same thread count everywhere. Modules opt in with `usefixtures`."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
