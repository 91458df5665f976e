"""`cvdd sets` end to end, through the installed console script: a reference image folder and its FKD label files (written
by our own writers, as the reference's recover and relabel leave them) go through `sets import` and `sets export` unchanged;
an imported set evaluates with its labels; bad input is exit status 2 and one message that names the fix."""
import os, subprocess, sys
from pathlib import Path
import pytest, torch
import fastcore.test as fct
from cvdd_nb.data import normalize, per_class_subset
from cvdd_nb.testing import write_cifar_fixture
from cvdd_nb.evaluate import DistilledSet
from cvdd_nb.fkd import fkd_folder, load_fkd_batch, store_to_fkd
from cvdd_nb.folders import image_bytes, read_image_folder
from cvdd_nb.recover import Recovered
from cvdd_nb.relabel import relabel

EXE = Path(sys.executable).parent/'cvdd'       # the console script `pip install -e .` made
ENV = dict(os.environ, OMP_NUM_THREADS='1', CVDD_PROGRESS='0')

def cvdd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), '--quiet', *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)

def files(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())

def same(x, y):
    "Equal values of equal types (tensors: equal dtype and shape too)."
    fct.test_eq(type(x), type(y))
    if isinstance(x, torch.Tensor): assert x.dtype == y.dtype and torch.equal(x, y), (x, y)
    else: fct.test_eq(x, y)

@pytest.fixture(scope='module')
def ref(tmp_path_factory, data, make_pool):
    "40 digits (IPC 4) in the reference layout (PNG), with a teacher's soft labels in the reference's files and order."
    tmp = tmp_path_factory.mktemp('ref')
    sub = per_class_subset(data.train, 4, seed=0)
    ds = DistilledSet(normalize(sub.x, data.info), sub.y, data.info)
    pool = make_pool(data, [('a', 'convnet', 0.25, 2, 0, None)])
    st = relabel(ds.images, pool, data.info, dict(epochs=2, batch_size=16, seed=42), order='torch')
    return dict(tmp=tmp, ds=ds, pool=pool, st=st, syn=ds.export_folder(tmp/'syn'), fkd=store_to_fkd(st, fkd_folder(tmp/'fkd', 16, 4)))

@pytest.fixture(scope='module')
def imported(ref):
    "The reference folder and labels imported by `cvdd sets import`."
    out = ref['tmp']/'set'
    r = cvdd('sets', 'import', ref['syn'], '--dataset', 'digits', '--fkd', ref['fkd'], '--out', out)
    assert r.returncode == 0, r.stderr
    assert '40 images of digits (10 classes, IPC 4, reference layout)' in r.stdout, r.stdout
    assert "labels: the reference's soft labels, 2 epochs in batches of 16 (cutmix)" in r.stdout, r.stdout
    return out

def test_reference_folder_and_labels_round_trip(ref, imported, tmp_path):
    r = cvdd('sets', 'export', imported, '--layout', 'reference', '--fkd', '--out', tmp_path/'back')
    assert r.returncode == 0, r.stderr
    back, fkd = tmp_path/'back'/'images', tmp_path/'back'/'fkd_bs16_ipc4'
    fct.test_eq(files(back), files(ref['syn'])); fct.test_eq(files(fkd), files(ref['fkd']))   # the same file names
    a, b = read_image_folder(ref['syn']), read_image_folder(back)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)               # the same pixels (PNG), the same classes
    for f in files(ref['fkd']):                                                              # the same crops, flips, mix and logits
        theirs, ours = load_fkd_batch(ref['fkd']/f), load_fkd_batch(fkd/f)
        fct.test_eq(len(theirs), len(ours))
        for x, y in zip(theirs, ours): same(x, y)

def test_imported_labels_go_to_the_images_the_reference_gives_them(ref, imported):
    "The files do not say which image a label is for: the reference's loader order (--fkd-seed) does; the set's store must follow it."
    got, st = DistilledSet.load(imported), ref['st']
    assert torch.equal(got.images, ref['ds'].images) and torch.equal(got.labels, ref['ds'].labels)
    for e in range(st.epochs):
        for b in range(len(st.bounds)):
            assert got.store.aug(e, b).same(st.aug(e, b)), (e, b)                            # the same images, crops, flips, mix
            assert torch.equal(got.store.logits(e, b), st.logits(e, b)), (e, b)

def test_an_imported_set_evaluates_with_its_labels(imported):
    r = cvdd('sets', 'evaluate', imported, '--dataset', 'digits', '--seeds', '0', '1')
    assert r.returncode == 0, r.stderr
    row = next(l for l in r.stdout.splitlines() if l.startswith('| imported |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    fct.test_eq(cells[:5], ['imported', 'soft', 'convnet', '4', '2'])                        # stored labels, their 2 epochs
    fct.test_eq(cells[6], '2'); fct.test_eq(len(cells[7].split(',')), 2)                    # one student per seed

def test_a_run_folder_exports_its_images_but_not_labels_in_its_own_order(ref, tmp_path):
    ds, n = ref['ds'], len(ref['ds'])
    w = lambda: torch.full((n, 1), 1.0)
    Recovered(ds.images, ds.labels, [['a']] * n, w(), w(), w(), ds.info, dict(ipc=4, seed=0), [1.0], ['a']).save(tmp_path/'run'/'recover'/'cvdd')
    relabel(ds.images, ref['pool'], ds.info, dict(epochs=1, batch_size=16), out=tmp_path/'run'/'labels'/'cvdd')   # the pipeline's order
    r = cvdd('sets', 'export', tmp_path/'run', '--layout', 'imagefolder', '--out', tmp_path/'if')
    assert r.returncode == 0, r.stderr
    got = read_image_folder(tmp_path/'if'/'images')
    assert torch.equal(got.images, ds.to_uint8()) and torch.equal(got.labels, ds.labels)
    r = cvdd('sets', 'export', tmp_path/'run', '--layout', 'reference', '--fkd', '--out', tmp_path/'no')
    fct.test_eq(r.returncode, 2); assert "follow the kit's own image order" in r.stderr and not (tmp_path/'no').exists()

@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cifar')
    return dict(c10=write_cifar_fixture(tmp/'c10'), c100=write_cifar_fixture(tmp/'c100', 'cifar100'))

def _loose(ref, tmp):
    (tmp/'loose').mkdir()
    for i in range(3): (tmp/'loose'/f'img{i}.png').write_bytes(image_bytes(ref['ds'].to_uint8()[i]))
    return tmp/'loose'

def _fewer(ref, tmp): return ref['ds'].subset_ipc(3).export_folder(tmp/'fewer')
def _plain(ref, tmp): return ref['ds'].save(tmp/'plain')

BAD = {   # case: (arguments, the problem, the fix)
    'wrong dataset (image size)': (lambda r, c, t: ['import', r['syn'], '--dataset', 'cifar10', '--root', c['c10']],
                                   'holds 10 classes of 8x8 images; cifar10 has 10 classes of 32x32 images', 'pass the --dataset the images were distilled from'),
    'wrong dataset (classes)': (lambda r, c, t: ['import', r['syn'], '--dataset', 'cifar100', '--root', c['c100']],
                                'cifar100 has 100 classes of 32x32 images', 'pass the --dataset the images were distilled from'),
    'missing folder': (lambda r, c, t: ['import', t/'nowhere', '--dataset', 'digits'], 'nowhere is not a folder', 'point at the image folder of a distilled set'),
    'folder in no layout': (lambda r, c, t: ['import', _loose(r, t), '--dataset', 'digits'],
                            'is in neither layout: it holds 3 image file(s) but no class folders', 'put each class in its own sub-folder'),
    'labels of other images': (lambda r, c, t: ['import', _fewer(r, t), '--dataset', 'digits', '--fkd', r['fkd']],
                               'holds 3 batches of 16 per epoch, but 30 images make 2', 'pass all the distilled images these labels were made for'),
    'no labels to export': (lambda r, c, t: ['export', _plain(r, t), '--layout', 'reference', '--fkd'], 'holds no stored soft labels', 'export without --fkd'),
}

@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_exit_2_and_one_message_naming_the_fix(case, ref, cifar, tmp_path):
    args, problem, fix = BAD[case]
    r = cvdd('sets', *args(ref, cifar, tmp_path), '--out', tmp_path/'out')
    fct.test_eq(r.returncode, 2)
    lines = r.stderr.splitlines()
    fct.test_eq(len(lines), 2); assert 'Traceback' not in r.stderr, r.stderr                  # one message: the problem, then the fix
    assert lines[0].startswith('cvdd: error: ') and problem in lines[0], r.stderr
    assert lines[1].startswith('  fix: ') and fix in lines[1], r.stderr
    assert not (tmp_path/'out').exists()                                                      # refused before anything was written
