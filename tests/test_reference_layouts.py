"""The reference's files, both ways: distilled image folders (ImageFolder layout, the reference's new{c}/class{c}_id{k}, old flat
png/), its per-batch soft-label files (FKD) against our label store, the DD-Ranking export, and pools that could not be loaded again."""
import dataclasses, io, json, re, zipfile
from pathlib import Path
import numpy as np
import pytest, torch
import torch.nn.functional as F
import fastcore.test as fct
from cvdd_nb.core import CVDDError
from cvdd_nb.data import DatasetInfo, normalize, denormalize
from cvdd_nb.experts import Expert, ExpertPool
from cvdd_nb.folders import as_uint8, folder_layout, image_bytes, read_image_folder, write_image_folder
from cvdd_nb.fkd import load_fkd_batch, store_from_fkd, store_to_fkd
from cvdd_nb.recover import Recovered
from cvdd_nb.relabel import make_committee, relabel, sampler_order
from cvdd_nb.evaluate import DistilledSet

@pytest.fixture(scope='module')
def pool(data, make_pool): return make_pool(data, [('a', 'convnet', 0.25, 2, 0, None), ('b', 'convnet', 0.5, 2, 1, None)])

def colour_info(K=12, size=(8, 8)):
    "A 3-channel dataset description with numeric class names (0 .. K-1: '10' sorts before '2' as a string)."
    return DatasetInfo('colours', K, [str(i) for i in range(K)], 3, size, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))

def colour_set(K=12, ipc=2, size=(8, 8), seed=0):
    "Smooth random colour images (size (H, W)), class-major, as a DistilledSet."
    info, g = colour_info(K, size), torch.Generator().manual_seed(seed)
    x01 = F.interpolate(torch.rand(K * ipc, 3, 3, 3, generator=g), size=size, mode='bilinear', align_corners=False)
    return DistilledSet(normalize(as_uint8(x01), info), torch.arange(K).repeat_interleave(ipc), info)

def pairs(root:Path)->list:
    "(uint8 image, label) of every sample torchvision's ImageFolder reads from `root`."
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(str(root))
    return [(torch.from_numpy(np.array(ds[i][0])).permute(2, 0, 1), ds[i][1]) for i in range(len(ds))]

# ---------------------------------------------------------------------------------------------------------
# image folders

def test_reference_layout_round_trip_keeps_pixels_and_labels(tmp_path):
    ds = colour_set()
    root = ds.export_folder(tmp_path/'syn')                                      # the reference layout, PNG
    fct.test_eq(sorted(p.name for p in root.iterdir())[10:12], ['new010', 'new011'])
    fct.test_eq(sorted(p.name for p in (root/'new010').iterdir()), ['class010_id000.png', 'class010_id001.png'])
    fct.test_eq(folder_layout(root), 'reference')
    back = DistilledSet.from_folder(root, ds.info)
    assert torch.equal(back.to_uint8(), ds.to_uint8()) and torch.equal(back.labels, ds.labels)
    assert torch.equal(back.images, ds.images)                                   # 8-bit images: normalised values identical too
    fct.test_eq([(x.tolist(), y) for x, y in pairs(root)], [(x.tolist(), int(y)) for x, y in zip(ds.to_uint8(), ds.labels)])

def test_imagefolder_reads_our_saved_folders_with_the_right_labels(tmp_path):
    ds = colour_set()
    ds.save(tmp_path/'ds')
    want = [(x.tolist(), int(y)) for x, y in zip(ds.to_uint8(), ds.labels)]
    fct.test_eq([(x.tolist(), y) for x, y in pairs(tmp_path/'ds'/'images')], want)
    n = len(ds); rec = Recovered(ds.images, ds.labels, [['a']] * n, torch.ones(n, 1), torch.zeros(n, 1), torch.zeros(n, 1), ds.info,
                                 dict(ipc=2, seed=0), [1.0], ['a'])
    rec.save(tmp_path/'rec')
    fct.test_eq([(x.tolist(), y) for x, y in pairs(tmp_path/'rec'/'images')], want)
    fct.test_eq(json.loads((tmp_path/'rec'/'recovered.json').read_text())['files']['images'], dict(folder='images/', layout='imagefolder', format='png'))
    assert torch.equal(Recovered.load(tmp_path/'rec').images, ds.images)

def test_jpeg_on_request(tmp_path):
    ds = colour_set()
    ds.save(tmp_path/'ds', images='jpg'); root = ds.export_folder(tmp_path/'ref', fmt='jpg')
    assert all(p.read_bytes()[:3] == b'\xff\xd8\xff' for p in root.rglob('*.jpg')) and not list(root.rglob('*.png'))
    fct.test_eq(sorted(p.name for p in (tmp_path/'ds'/'images'/'0000_0').iterdir()), ['000.jpg', '001.jpg'])
    assert torch.equal(read_image_folder(tmp_path/'ds').labels, ds.labels)
    assert torch.equal(DistilledSet.from_folder(root, ds.info).labels, ds.labels)

def test_old_flat_png_folders_still_load_and_read(tmp_path, data, xy):
    x, y = xy; ds = DistilledSet(x, y, data.info)
    old = tmp_path/'old'; ds.save(old, images=None)
    meta = json.loads((old/'distilled.json').read_text()); meta['files'] = dict(tensors='distilled.safetensors', png='png/', labels=None)
    (old/'distilled.json').write_text(json.dumps(meta))                       # a folder as the previous version saved it
    (old/'png').mkdir()
    for i, (c, k) in enumerate((c, k) for c in range(10) for k in range(3)): (old/'png'/f'{c:04d}_{k:03d}.png').write_bytes(image_bytes(ds.to_uint8()[i]))
    assert torch.equal(DistilledSet.load(old).images, x)
    r = read_image_folder(old)
    fct.test_eq((r.layout, r.files[:2]), ('flat', ['0000_000.png', '0000_001.png']))
    assert torch.equal(r.labels, y) and torch.equal(r.images, ds.to_uint8())
    assert torch.equal(DistilledSet.from_folder(old, data.info).labels, y)

def _loose(root):  (root/'a.png').write_bytes(image_bytes(torch.zeros(3, 4, 4)))
def _empty(root):  root.mkdir(exist_ok=True)
def _empty_class(root): (root/'cat').mkdir(); (root/'dog').mkdir(); (root/'dog'/'x.png').write_bytes(image_bytes(torch.zeros(3, 4, 4)))
def _hidden(root): _empty_class(root); (root/'cat'/'y.png').write_bytes(image_bytes(torch.zeros(3, 4, 4))); (root/'.ipynb_checkpoints').mkdir()
def _mixed(root):  _empty_class(root); (root/'cat'/'y.png').write_bytes(image_bytes(torch.zeros(3, 4, 4))); _loose(root)
def _gap(root):
    for c in ('000', '002'): (root/f'new{c}').mkdir(); (root/f'new{c}'/f'class{c}_id000.png').write_bytes(image_bytes(torch.zeros(3, 4, 4)))

@pytest.mark.parametrize('make,problem,fix', [
    (_loose, 'neither layout: it holds 1 image file(s) but no class folders', 'put each class in its own sub-folder'),
    (_empty, 'neither layout: it holds no class folders and no images', 'put each class in its own sub-folder'),
    (_empty_class, "class folder(s) ['cat']", 'add images'),
    (_hidden, 'hidden folder(s)', 'remove them'),
    (_mixed, 'also 1 loose image file(s)', 'put each class in its own sub-folder'),
    (_gap, 'new002 is class 1 in sorted order', 'without gaps')])
def test_a_folder_in_neither_layout_is_one_clear_error(tmp_path, make, problem, fix):
    root = tmp_path/'r'; root.mkdir(); make(root)
    with pytest.raises(CVDDError) as e: read_image_folder(root)
    assert problem in e.value.problem and fix in e.value.fix, str(e.value)

def test_write_never_replaces_a_folder_it_did_not_write(tmp_path):
    ds = colour_set()
    (tmp_path/'data'/'n01440764').mkdir(parents=True); (tmp_path/'data'/'n01440764'/'n01440764_10026.JPEG').write_bytes(b'x')
    with pytest.raises(CVDDError, match='holds files that are not a distilled image folder'): ds.export_folder(tmp_path/'data')
    assert (tmp_path/'data'/'n01440764'/'n01440764_10026.JPEG').exists()
    ds.export_folder(tmp_path/'ok'); ds.subset_ipc(1).export_folder(tmp_path/'ok')          # a smaller set leaves no stale files
    fct.test_eq(len(list((tmp_path/'ok').rglob('*.png'))), 12)
    with pytest.raises(CVDDError, match='3-digit'): write_image_folder(tmp_path/'big', torch.zeros(1001, 3, 2, 2, dtype=torch.uint8), [0] * 1001, ['a'], 'reference')

# ---------------------------------------------------------------------------------------------------------
# the reference's per-batch soft labels (FKD)

def test_sampler_order_is_the_reference_loaders_order():
    sampler = torch.utils.data.RandomSampler(range(23), generator=torch.Generator().manual_seed(42))
    batches = torch.utils.data.BatchSampler(sampler, 5, drop_last=False)
    for e in range(4): assert torch.equal(torch.tensor([i for b in batches for i in b]), sampler_order(23, 42, e)), e

@pytest.mark.parametrize('mix,topk', [('cutmix', 0), ('mixup', 0), ('none', 0), ('cutmix', 3)])
def test_store_to_fkd_to_store_is_exact(pool, data, xy, tmp_path, mix, topk):
    x, _ = xy                                                                    # 30 images in batches of 8
    store = relabel(x, pool, data.info, dict(epochs=2, batch_size=8, mix=mix, topk=topk, flip='yes', seed=42), order='torch')
    store_to_fkd(store, tmp_path/'fkd_bs8_ipc3')
    back = store_from_fkd(tmp_path/'fkd_bs8_ipc3', x, data.info)
    fct.test_eq((back.epochs, back.config.batch_size, back.config.mix, back.bounds), (2, 8, mix, store.bounds))
    for e in range(2):
        for b in range(len(store.bounds)):
            assert back.aug(e, b).same(store.aug(e, b)), (e, b)
            assert torch.equal(back.logits(e, b), store.logits(e, b)), (e, b)
        for ours, theirs in zip(store.replay(x, e), back.replay(x, e)): assert torch.equal(ours.x, theirs.x) and torch.equal(ours.logits, theirs.logits)
    again = tmp_path/'again'; store_to_fkd(back, again)                          # and the files written from the converted store are the same
    for f in sorted((tmp_path/'fkd_bs8_ipc3').rglob('*.tar')):
        a, b = load_fkd_batch(f), load_fkd_batch(again/f.relative_to(tmp_path/'fkd_bs8_ipc3'))
        for u, v in zip(a, b): assert (torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v), f

# -- the reference's side, written from its documented meaning ---------------------------------------------

def reference_relabel(folder, out, epochs, B, mix, seed=42, K=12, fp16=False):
    "Soft-label files as the reference's relabel writes them (random logits stand in for its teachers)."
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import RandomResizedCrop
    torch.manual_seed(1); np.random.seed(1)
    ds = ImageFolder(str(folder))
    batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(seed)), B, False)
    for e in range(epochs):
        (out/f'epoch_{e}').mkdir(parents=True)
        for b, idx in enumerate(batches):
            coords = []
            for i in idx:
                im = ds[i][0]; t, l, h, w = RandomResizedCrop.get_params(im, (0.08, 1.0), (3 / 4, 4 / 3))
                coords.append(torch.FloatTensor((t / im.size[1], l / im.size[0], h / im.size[1], w / im.size[0])))
            flips, n = torch.tensor([bool(torch.rand(1) < 0.5) for _ in idx]), len(idx)
            perm, lam, bbox = None, None, None
            if mix != 'none': perm, lam = torch.randperm(n), np.random.beta(1.0, 1.0)
            if mix == 'cutmix':                                                  # rand_bbox on an NCHW size: its 'W' is size[2], the rows
                W_, H_ = im.size[1], im.size[0]; r = np.sqrt(1.0 - lam); cw, ch = int(W_ * r), int(H_ * r)
                cx, cy = np.random.randint(W_), np.random.randint(H_)
                bbox = [np.clip(cx - cw // 2, 0, W_), np.clip(cy - ch // 2, 0, H_), np.clip(cx + cw // 2, 0, W_), np.clip(cy + ch // 2, 0, H_)]
            z = torch.randn(n, K)
            torch.save([torch.stack(coords), flips, perm, lam, bbox, z.half() if fp16 else z], out/f'epoch_{e}'/f'batch_{b}.tar')

def reference_batches(x, fkd, epoch, B, resize, seed=42):
    "Each batch of `epoch` as the reference's trainer builds it from images `x` (N, C, H, W): (images, soft labels)."
    sampler = torch.utils.data.RandomSampler(range(len(x)), generator=torch.Generator().manual_seed(seed))
    for _ in range(epoch): list(sampler)
    H, W = x.shape[2:]
    for b, idx in enumerate(torch.utils.data.BatchSampler(sampler, B, False)):
        coords, flip, mix_index, lam, bbox, logits = load_fkd_batch(fkd/f'epoch_{epoch}'/f'batch_{b}.tar')
        views = []
        for p, i in enumerate(idx):
            v = resize(x[i], coords[p, 0].item() * H, coords[p, 1].item() * W, coords[p, 2].item() * H, coords[p, 3].item() * W)
            views.append(v.flip(-1) if flip[p] else v)                          # the flip of the resized crop
        v = torch.stack(views)
        if bbox is not None: v[:, :, bbox[0]:bbox[2], bbox[1]:bbox[3]] = v[mix_index, :, bbox[0]:bbox[2], bbox[1]:bbox[3]]
        elif mix_index is not None: v = lam * v + (1 - lam) * v[mix_index]
        yield v, logits

def tensor_crop(img, t, l, h, w):
    "A bilinear resized crop of a float image (the box rounded, as PIL rounds it), plain F.interpolate."
    t, l, h, w = (round(v) for v in (t, l, h, w))
    return F.interpolate(img[None, :, t:t + h, l:l + w], size=img.shape[1:], mode='bilinear', align_corners=False, antialias=False)[0]

def pil_crop(info):
    "torchvision's resized_crop on the 8-bit PIL image, then ToTensor and Normalize: the reference's transform."
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    def f(img, t, l, h, w):
        im = Image.fromarray(as_uint8(denormalize(img, info)).permute(1, 2, 0).numpy())
        im = TF.resized_crop(im, t, l, h, w, list(img.shape[1:]), InterpolationMode.BILINEAR)
        return TF.normalize(TF.to_tensor(im), info.mean, info.std)
    return f

@pytest.mark.parametrize('mix,fp16', [('cutmix', False), ('mixup', False), ('none', True), ('cutmix', True)])
def test_reference_files_convert_to_the_views_its_trainer_makes(tmp_path, mix, fp16):
    ds = colour_set(K=12, ipc=2, size=(10, 14))                                  # 24 images in batches of 5 (last one 4), not square
    folder = ds.export_folder(tmp_path/'syn')
    reference_relabel(folder, tmp_path/'fkd_bs5_ipc2', epochs=2, B=5, mix=mix, fp16=fp16)
    x = DistilledSet.from_folder(folder, ds.info).images
    store = store_from_fkd(tmp_path/'fkd_bs5_ipc2', x, ds.info)
    fct.test_eq((store.config.mix, store.tensors['logits'].dtype), (mix, torch.half if fp16 else torch.float32))
    std = torch.tensor(ds.info.std).view(1, 3, 1, 1)
    for e in range(2):
        ours = list(store.replay(x, e))
        for (v, z), o in zip(reference_batches(x, tmp_path/'fkd_bs5_ipc2', e, 5, tensor_crop), ours):
            fct.test_close(o.x, v, eps=2e-5); assert torch.equal(o.logits, z.float())        # same views (float resize), same targets
        for (v, z), o in zip(reference_batches(x, tmp_path/'fkd_bs5_ipc2', e, 5, pil_crop(ds.info)), ours):
            assert ((o.x - v) * std).abs().max() <= 1.01 / 255                   # the PIL path: up to its 8-bit rounding

def test_reference_files_are_read_without_unpickling(tmp_path):
    e = [torch.rand(2, 4), torch.tensor([True, False]), torch.tensor([1, 0]), np.float64(0.25), list(np.clip([1, 0, 5, 3], 0, 4)), torch.randn(2, 3)]
    buf = io.BytesIO(); torch.save(e, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue())); out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as z:                     # the same file as NumPy 1 names its scalars
        for n in zin.namelist():
            d = zin.read(n)
            z.writestr(n, d.replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar') if n.endswith('data.pkl') else d)
    assert b'numpy.core.multiarray\nscalar' in zipfile.ZipFile(io.BytesIO(out.getvalue())).read([n for n in zin.namelist() if n.endswith('data.pkl')][0])
    (tmp_path/'np1.tar').write_bytes(out.getvalue())
    got = load_fkd_batch(tmp_path/'np1.tar'); fct.test_eq((got[3], got[4]), (0.25, [1, 0, 4, 3]))
    class Evil:
        def __reduce__(self): return (Path.write_text, (tmp_path/'ran', 'x'))
    torch.save([Evil(), 1, 2, 3, 4, 5], tmp_path/'evil.tar')
    with pytest.raises(CVDDError, match='cannot be read as a soft-label file'): load_fkd_batch(tmp_path/'evil.tar')
    assert not (tmp_path/'ran').exists()

def test_fkd_refusals(pool, data, xy, tmp_path):
    x, _ = xy
    ours = relabel(x, pool, data.info, dict(epochs=1, batch_size=8, seed=42))   # our own order
    with pytest.raises(CVDDError, match="not in the order the reference's loader draws") as e: store_to_fkd(ours, tmp_path/'a')
    assert "order='torch'" in e.value.fix
    odd = relabel(x[:17], pool, data.info, dict(epochs=1, batch_size=8, seed=42), order='torch')
    with pytest.raises(CVDDError, match='last batch of one'): store_to_fkd(odd, tmp_path/'b')
    good = relabel(x, pool, data.info, dict(epochs=1, batch_size=8, seed=42), order='torch'); store_to_fkd(good, tmp_path/'c')
    with pytest.raises(CVDDError, match='but 20 images make 3'): store_from_fkd(tmp_path/'c', x[:20], data.info)
    with pytest.raises(CVDDError, match='is not empty'): store_to_fkd(good, tmp_path/'c')
    (tmp_path/'c'/'epoch_0'/'batch_1.tar').unlink()
    with pytest.raises(CVDDError, match='the files are incomplete'): store_from_fkd(tmp_path/'c', x, data.info)

# ---------------------------------------------------------------------------------------------------------
# DD-Ranking

def test_ddranking_export(pool, data, xy, tmp_path):
    x, y = xy; perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    ds = DistilledSet(x[perm], y[perm], data.info)                               # classes interleaved
    ds.export_ddranking(tmp_path/'d', teachers=pool, syn_lr=0.02)
    load = lambda f: torch.load(tmp_path/'d'/f, map_location='cpu', weights_only=True)
    images, soft, hard = load('images.pt'), load('labels.pt'), load('hard_labels.pt')
    fct.test_eq((images.shape, images.dtype, soft.shape, soft.dtype, hard.dtype), ((30, 1, 8, 8), torch.float32, (30, 10), torch.float32, torch.int64))
    assert torch.equal(hard, torch.tensor(np.array([np.ones(3) * i for i in range(10)]), dtype=torch.long).view(-1))   # DD-Ranking's own labels
    order = torch.argsort(ds.labels, stable=True)
    assert torch.equal(images, ds.images[order])                                 # normalised with the dataset's mean/std, class-major
    fct.test_close(denormalize(images, data.info, clamp=False), ds.images01()[order], eps=1e-6); assert images.min() < -0.5
    fct.test_close(soft, make_committee(pool, data.info).label_all(images), eps=1e-6)   # one soft label per image, in the same order
    fct.test_eq(load('lr.pt').item(), 0.02)
    meta = json.loads((tmp_path/'d'/'meta.json').read_text())
    fct.test_eq((meta['mean'], meta['std'], meta['ipc'], sorted(meta['files'])), (list(data.info.mean), list(data.info.std), 3, ['hard_labels.pt', 'images.pt', 'labels.pt', 'lr.pt']))
    ds.export_ddranking(tmp_path/'h'); fct.test_eq(sorted(p.name for p in (tmp_path/'h').iterdir()), ['hard_labels.pt', 'images.pt', 'meta.json'])
    with pytest.raises(CVDDError, match='same number of images in every class'): DistilledSet(x[:29], y[:29], data.info).export_ddranking(tmp_path/'u')

# ---------------------------------------------------------------------------------------------------------
# pools that could not be loaded again

def test_pool_save_refuses_an_expert_it_could_not_rebuild(pool, tmp_path):
    e = pool['a']
    alien = Expert(e.model, dataclasses.replace(e.meta, arch=dict(e.meta.arch, name='my_net')), name='alien')
    with pytest.raises(CVDDError) as err: ExpertPool([pool['b'], alien]).save(tmp_path/'p')
    assert "expert 'alien'" in err.value.problem and "'my_net' cannot be rebuilt" in err.value.problem and 'create_model' in err.value.fix
    assert not (tmp_path/'p').exists()
    narrow = Expert(pool['b'].model, dataclasses.replace(pool['b'].meta, arch=dict(pool['b'].meta.arch, width=0.25)), name='narrow')
    with pytest.raises(CVDDError, match="expert 'narrow' could not be loaded again: its weights do not fit"): ExpertPool([narrow]).save(tmp_path/'q')
    ExpertPool([pool['a'], pool['b']]).save(tmp_path/'ok')
    fct.test_eq(ExpertPool.load(tmp_path/'ok').names, ['a', 'b'])
