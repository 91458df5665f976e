"""Tests of cvdd_nb.reference: the CV-DD reference's expert pools imported as ours. The fixtures are data, not code: per model
its key names and shapes, the seed of its weights and the logits the reference's own model code gave on a seeded input."""
import contextlib, io, json, os
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest, torch
import fastcore.test as fct

from cvdd_nb.core import CVDDError
from cvdd_nb.data import CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, load_dataset
from cvdd_nb.testing import write_cifar_fixture, write_imagefolder_fixture
from cvdd_nb.experts import ExpertPool
from cvdd_nb.models import create_model, read_state_dict
from cvdd_nb.reference import (REFERENCE_DATASETS, REFERENCE_NAMES, rename_reference, seeded_input, seeded_state_dict,
                               write_reference_pool)

FIXTURES = Path(__file__).parent/'fixtures'/'reference'
CASES = ('cifar10', 'imagenette')
PREFIXED = dict(cifar10='ResNet18', imagenette='Densenet121')     # saved with `module.` keys, as by a multi-GPU run

pytestmark = pytest.mark.usefixtures('one_thread')


def fixture(case): return json.loads((FIXTURES/f'{case}.json').read_text())

def info_for(case, **kw):
    "The DatasetInfo of a dataset prepared as the reference prepares it."
    r, s = REFERENCE_DATASETS[case], fixture(case)['img_size']
    names = CIFAR10_CLASSES if case == 'cifar10' else [f'class {i}' for i in range(10)]
    return DatasetInfo(case, 10, names, 3, (s, s), r['mean'], r['std'], resize='crop' if s == 224 else 'none', **kw)

def max_diff(model, fx, name):
    with torch.no_grad(): return (model(seeded_input(fx['input']['seed'], fx['input']['shape'])) - torch.tensor(fx['experts'][name]['logits'])).abs().max().item()


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    "Each case's five experts, written as a user's reference pool (one of them with `module.` keys), imported, saved and loaded back."
    out = {}
    for case in CASES:
        d = tmp_path_factory.mktemp(case); fx = fixture(case)
        write_reference_pool(d/'ref', fx); write_reference_pool(d/'ref', fx, names=[PREFIXED[case]], prefix='module.')
        pool = ExpertPool.from_reference(d/'ref', info_for(case), out=d/'pool')
        out[case] = (pool, ExpertPool.load(d/'pool'), d/'ref')
    return out


def test_fixtures_are_small_data():
    files = sorted(FIXTURES.iterdir())
    fct.test_eq([f.name for f in files], ['cifar10.json', 'imagenette.json'])
    assert sum(f.stat().st_size for f in files) < 300_000
    for case in CASES:
        fx = fixture(case)
        fct.test_eq(list(fx['experts']), list(REFERENCE_NAMES))
        for e in fx['experts'].values():
            fct.test_eq(len(e['keys']), len(e['shapes'])); fct.test_eq(len(e['logits']), fx['input']['shape'][0])
            assert max(abs(v) for row in e['logits'] for v in row) > 0.1          # logits large enough to tell a wrong model


def test_prefixed_file_really_has_module_keys(imported):
    assert all(k.startswith('module.') for k in torch.load(imported['cifar10'][2]/'ResNet18.pth', weights_only=True))


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('name', REFERENCE_NAMES)
def test_logits_equal_the_reference(imported, case, name):
    pool, back, _ = imported[case]
    fx = fixture(case)
    assert max_diff(pool[name].model, fx, name) <= 1e-5, (case, name, max_diff(pool[name].model, fx, name))
    assert max_diff(back[name].model, fx, name) <= 1e-5                       # the saved pool is the same
    arch = pool[name].meta.arch['name']
    assert arch.startswith('tv:') == (case == 'imagenette'), arch             # 224 px pools are torchvision models
    fct.test_eq((pool[name].meta.mean, pool[name].meta.std), (list(REFERENCE_DATASETS[case]['mean']), list(REFERENCE_DATASETS[case]['std'])))
    fct.test_eq(pool[name].meta.origin['file'], str(imported[case][2]/f'{name}.pth'))


def test_cifar_mobilenet_is_the_reference_variant(imported):
    fct.test_eq(imported['cifar10'][0]['MobileNetV2'].meta.arch['name'], 'mobilenetv2_ref')
    fct.test_eq(imported['cifar10'][0]['MobileNetV2'].meta.params, 2_296_922)


def test_renaming_alone_is_wrong_for_densenet(imported):
    "The channel reorder is what makes DenseNet right: without it the weights load and the logits are far off."
    m = create_model('densenet121', 10)
    m.load_state_dict(rename_reference(read_state_dict(imported['cifar10'][2]/'Densenet121.pth'), 'Densenet121')); m.eval()
    assert max_diff(m, fixture('cifar10'), 'Densenet121') > 0.05


def test_seeded_weights_are_a_function_of_the_seed():
    e = fixture('cifar10')['experts']['ShuffleNetV2']; shapes = list(zip(e['keys'], e['shapes']))
    a, b, c = seeded_state_dict(shapes, e['seed']), seeded_state_dict(shapes, e['seed']), seeded_state_dict(shapes, e['seed'] + 1)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a['conv1.weight'], c['conv1.weight'])
    assert all((v > 0).all() for k, v in a.items() if k.endswith('running_var'))
    assert all(v.dtype == torch.int64 for k, v in a.items() if k.endswith('num_batches_tracked'))


# ---------------------------------------------------------------- wrong input: one clear error each

def one_error(f, *parts):
    "`f()` raises exactly one CVDDError whose message holds every part, with a fix."
    with pytest.raises(CVDDError) as e: f()
    for p in parts: assert p in str(e.value), (p, str(e.value))
    assert e.value.fix and 'Traceback' not in str(e.value)


def test_wrong_or_missing_files(tmp_path):
    fx, info = fixture('cifar10'), info_for('cifar10')
    src = write_reference_pool(tmp_path/'ref', fx, names=['ResNet18', 'ShuffleNetV2'])
    one_error(lambda: ExpertPool.from_reference(tmp_path/'nope', info), 'is not a folder')
    (tmp_path/'empty').mkdir(); (tmp_path/'empty'/'resnet18.pt').write_bytes(b'')
    one_error(lambda: ExpertPool.from_reference(tmp_path/'empty', info), "holds none of the reference's files", 'it holds resnet18.pt')
    one_error(lambda: ExpertPool.from_reference(src, info, names=['ResNet18', 'Densenet121']), 'has no Densenet121.pth', 'import the ones it has (ResNet18, ShuffleNetV2)')
    one_error(lambda: ExpertPool.from_reference(src, info, names=['resnet18']), "unknown reference model 'resnet18'")
    wrong = tmp_path/'wrong'; wrong.mkdir(); (wrong/'ResNet50.pth').write_bytes((src/'ResNet18.pth').read_bytes())
    one_error(lambda: ExpertPool.from_reference(wrong, info), 'does not fit the model', "check that ResNet50.pth is the reference's ResNet50")
    tv = tmp_path/'tv'; write_reference_pool(tv, fixture('imagenette'), names=['ShuffleNetV2'])
    one_error(lambda: ExpertPool.from_reference(tv, info), "is not the reference's ShuffleNetV2", '224 px pools hold torchvision models')
    c100 = tmp_path/'c100'; c100.mkdir()
    sd = torch.load(src/'ShuffleNetV2.pth', weights_only=True); sd['linear.weight'], sd['linear.bias'] = torch.zeros(100, 1024), torch.zeros(100)
    torch.save(sd, c100/'ShuffleNetV2.pth')
    one_error(lambda: ExpertPool.from_reference(c100, info), 'has a head of 100 classes, cifar10 has 10')
    (c100/'ShuffleNetV2.pth').write_bytes((src/'ShuffleNetV2.pth').read_bytes()[:5000])
    one_error(lambda: ExpertPool.from_reference(c100, info), 'could not be read')


class _Evil:
    def __reduce__(self): return (os.makedirs, ('/tmp/cvdd_reference_pwned',))

def test_a_pickle_that_runs_code_is_refused(tmp_path):
    (tmp_path/'ref').mkdir(); torch.save({'conv1.weight': torch.zeros(1), 'x': _Evil()}, tmp_path/'ref'/'ResNet18.pth')
    one_error(lambda: ExpertPool.from_reference(tmp_path/'ref', info_for('cifar10')), 'refused by torch.load(weights_only=True)')
    assert not Path('/tmp/cvdd_reference_pwned').exists()


def test_normalisation_mismatch_is_refused(tmp_path, imported):
    root = write_cifar_fixture(tmp_path/'c10')
    old = load_dataset('cifar10', root=root, norm=((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))   # the former default
    src = imported['cifar10'][2]
    one_error(lambda: ExpertPool.from_reference(src, old, names=['ShuffleNetV2']), 'std=[0.2023, 0.1994, 0.201]', 'norm=')
    one_error(lambda: imported['cifar10'][1].check(old.info), 'was trained with normalisation')      # a saved pool, by the usual check
    data = load_dataset('cifar10', root=root)                                                          # the default: the reference's
    imported['cifar10'][1].check(data.info)
    stretched = info_for('imagenette'); stretched.resize = 'stretch'
    one_error(lambda: ExpertPool.from_reference(imported['imagenette'][2], stretched), "resize='crop'")
    data_norm = info_for('imagenette'); data_norm.mean, data_norm.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    one_error(lambda: ExpertPool.from_reference(imported['imagenette'][2], data_norm), "norm='imagenet'")


def test_imagenette_folder_at_224(tmp_path, imported):
    "A real ImageNette-layout folder, loaded as the reference prepares it, and torchvision experts measured on it."
    root = write_imagefolder_fixture(tmp_path/'nette', classes=10, layout='imagenette', size=(230, 250), n_per_class=1, n_test_per_class=1)
    data = load_dataset('imagenette', root=root, img_size=224)
    fct.test_eq((data.info.resize, data.info.mean), ('crop', IMAGENET_MEAN))
    pool = ExpertPool.from_reference(imported['imagenette'][2], data, names=['ShuffleNetV2', 'MobileNetV2'], min_margin=-100)
    fct.test_eq([e.meta.img_size for e in pool], [[224, 224]] * 2)
    assert all(e.meta.test_acc is not None for e in pool)
    fct.test_eq(pool['ShuffleNetV2'].meta.class_names, data.info.class_names)
    one_error(lambda: ExpertPool.from_reference(imported['imagenette'][2], load_dataset('imagenette', root=root, img_size=112), names=['ShuffleNetV2']),
              'expects 224x224 images')


def test_cli_import_end_to_end(tmp_path, imported):
    from cvdd_nb.cli import main
    root = write_cifar_fixture(tmp_path/'c10')
    src = write_reference_pool(tmp_path/'ref', fixture('cifar10'), names=['ShuffleNetV2', 'MobileNetV2'], prefix='module.')
    args = ['--quiet', 'experts', 'import', str(src), '--dataset', 'cifar10', '--root', str(root), '--out', str(tmp_path/'pool')]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()): rc = main(args)
    fct.test_eq(rc, 2); assert 'near chance' in err.getvalue() and 'Traceback' not in err.getvalue()   # random weights: the usual check speaks
    assert not (tmp_path/'pool'/'pool.json').exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out): rc = main(args + ['--min-margin', '-100'])
    fct.test_eq(rc, 0); assert '2 reference experts for cifar10' in out.getvalue() and '| MobileNetV2 | mobilenetv2_ref |' in out.getvalue()
    pool = ExpertPool.load(tmp_path/'pool')
    fct.test_eq(pool.names, ['ShuffleNetV2', 'MobileNetV2'])
    assert all(e.meta.test_acc is not None for e in pool)
    for e in pool: assert max_diff(e.model, fixture('cifar10'), e.name) <= 1e-5
    err = io.StringIO()
    with contextlib.redirect_stderr(err): rc = main(['experts', 'import', str(tmp_path/'none'), '--dataset', 'cifar10', '--root', str(root), '--out', str(tmp_path/'p2')])
    fct.test_eq(rc, 2); assert 'is not a folder' in err.getvalue()
