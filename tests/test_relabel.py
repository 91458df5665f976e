"Relabel: BSSL leaves teachers untouched, the replay is a pure function of (seed, epoch, batch), labels are made on the mixed batch, the store round-trips."
import dataclasses, math
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
import fastcore.test as fct
from cvdd_nb.core import CVDDError
from cvdd_nb.experts import ExpertPool
from cvdd_nb.models import create_model
from cvdd_nb.augment import BatchAug, apply_aug, draw_batch, resized_crop
from cvdd_nb.relabel import (Augmenter, LabelStore, OnlineLabeler, RelabelConfig, batch_bounds, bssl_mode, compress_logits,
                             expand_logits, label_source, label_weights, make_committee, relabel, store_bytes, teacher_logits)

PRIORS = [80.0, 90.0]

@pytest.fixture(scope='module')
def pool(data, make_pool): return make_pool(data, [('a', 'convnet', 0.25, 2, 0, None), ('b', 'resnet18', 0.125, 3, 1, None)])

class DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.drop, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.9), nn.Linear(4 * 64, 10)
    def forward(self, x): return self.fc(self.drop(F.relu(self.bn(self.conv(x))).flatten(1)))

def _snapshot(m): return {k: v.clone() for k, v in m.state_dict().items()}

def _same_state(m, snap):
    sd = m.state_dict(); fct.test_eq(set(sd), set(snap))
    for k, v in sd.items(): assert torch.equal(v, snap[k]) and v.dtype == snap[k].dtype, k

def test_bssl_leaves_teacher_bit_identical_and_dropout_off(xy):
    torch.manual_seed(0); net = DropNet()
    net.bn.running_mean.uniform_(-1, 1); net.bn.running_var.uniform_(0.5, 2); net.bn.num_batches_tracked.fill_(5)
    net.train(); snap, flags = _snapshot(net), [m.training for m in net.modules()]
    x = xy[0][:16]
    z1 = teacher_logits(net, x, sub_batch=8); z2 = teacher_logits(net, x, sub_batch=8)
    assert torch.equal(z1, z2)                                           # dropout(0.9) would make these differ
    _same_state(net, snap)
    fct.test_eq([m.training for m in net.modules()], flags); assert net.bn.track_running_stats
    with torch.no_grad():
        def hand(c):
            h = F.batch_norm(net.conv(c), None, None, net.bn.weight, net.bn.bias, training=True, eps=net.bn.eps)
            return net.fc(F.relu(h).flatten(1))
        fct.test_close(z1, torch.cat([hand(x[:8]), hand(x[8:])]), eps=1e-5)

def test_bssl_on_a_real_expert_and_restores_after_errors(pool, xy):
    m = pool['b'].model; snap = _snapshot(m); x = xy[0][:16]
    z = teacher_logits(m, x); _same_state(m, snap)
    assert not m.training and all(not mod.training for mod in m.modules())
    with torch.no_grad(): ev = m(x)
    assert (z - ev).abs().max() > 1e-3                                   # batch statistics, not running ones
    fct.test_close(teacher_logits(m, x, bssl=False), ev, eps=1e-5)
    with pytest.raises(RuntimeError, match='inside'):
        with bssl_mode(m):
            assert all(mod.training for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
            raise RuntimeError('inside')
    assert all(mod.track_running_stats and not mod.training for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
    _same_state(m, snap)

def test_committee_votes_subset_and_single_teacher(pool, data, xy):
    x = xy[0][:16]
    com = make_committee(pool, data.info, dict(temperature=5.0), PRIORS)
    fct.test_close(com.weights, torch.softmax(torch.tensor(PRIORS) / 5, 0), eps=1e-6)
    fct.test_close(com(x), com.weights[0] * teacher_logits(pool['a'].model, x) + com.weights[1] * teacher_logits(pool['b'].model, x), eps=1e-5)
    one = make_committee(pool, data.info, None, PRIORS, names=['b'])
    assert torch.equal(one(x), teacher_logits(pool['b'].model, x))
    fct.test_eq(make_committee(pool).weights, torch.full((2,), 0.5))
    fct.test_eq(label_weights([1.0, 1.0, 1.0]), torch.full((3,), 1 / 3))
    with pytest.raises(CVDDError, match='unknown teacher'): make_committee(pool, names=['c'])
    with pytest.raises(CVDDError, match='class 0 is'): make_committee(pool, dataclasses.replace(data.info, class_names=list('abcdefghij')))

def test_replay_is_a_pure_function_of_seed_epoch_batch(data):
    cfg = RelabelConfig(seed=3)
    a1, a2 = Augmenter(data.info, cfg).plan(30, 2), Augmenter(data.info, cfg).plan(30, 2)
    assert all(p.same(q) for p, q in zip(a1, a2))
    assert not any(p.same(q) for p, q in zip(a1, Augmenter(data.info, cfg.replace(seed=4)).plan(30, 2)))
    assert not a1[0].same(Augmenter(data.info, cfg).plan(30, 3)[0])
    fct.test_eq(sorted(torch.cat([a.idx for a in a1]).tolist()), list(range(30)))
    b = draw_batch(a1[1].idx, 3, 2, 1, (8, 8), cfg, flip=False)
    assert b.same(a1[1])
    fct.test_eq(batch_bounds(33, 16), [(0, 16), (16, 33)])

def test_flip_setting(data, xy):
    assert not any(a.flips.any() for a in Augmenter(data.info, RelabelConfig()).plan(40, 0))          # auto: digits are not flipped
    assert any(a.flips.any() for a in Augmenter(data.info, RelabelConfig(flip='yes')).plan(40, 0))
    cifar = dataclasses.replace(data.info, name='cifar10')
    assert any(a.flips.any() for a in Augmenter(cifar, RelabelConfig()).plan(40, 0))

def test_resized_crop_matches_interpolate(xy):
    x = xy[0][:3]; cr = torch.tensor([[1, 2, 5, 3], [0, 0, 8, 8], [4, 4, 2, 2]]); fl = torch.tensor([False, True, False])
    ref = [F.interpolate(x[i:i+1, :, t:t+h, l:l+w], size=(8, 8), mode='bilinear', align_corners=False) for i, (t, l, h, w) in enumerate(cr.tolist())]
    ref[1] = ref[1].flip(3)
    fct.test_close(resized_crop(x, cr, fl), torch.cat(ref), eps=1e-5)

@pytest.mark.parametrize('mix', ['cutmix', 'mixup', 'none'])
def test_labels_are_made_on_the_mixed_batch(pool, data, xy, mix):
    x = xy[0]; st = relabel(x, pool, data.info, dict(epochs=2, mix=mix), PRIORS)
    com = make_committee(pool, data.info, st.config, PRIORS)
    for e in range(2):
        for b in range(len(st.bounds)):
            a = st.aug(e, b); xm = apply_aug(x, a)
            assert torch.equal(st.logits(e, b), com(xm).half().float())       # teachers on exactly the mixed batch
            xc = resized_crop(x[a.idx], a.crops, a.flips)
            if mix == 'mixup': fct.test_close(xm, a.lam * xc + (1 - a.lam) * xc[a.perm], eps=1e-6)
            if mix == 'none': assert torch.equal(xm, xc)
            if mix == 'cutmix':
                y0, y1, x0, x1 = a.box.tolist()
                assert torch.equal(xm[:, :, y0:y1, x0:x1], xc[a.perm][:, :, y0:y1, x0:x1])
                fct.test_close(a.lam, 1 - (y1 - y0) * (x1 - x0) / 64, eps=1e-6)
    if mix != 'none':                                                         # the unmixed batch would get other labels
        a = st.aug(0, 0)
        assert (st.logits(0, 0) - com(resized_crop(x[a.idx], a.crops, a.flips)).half().float()).abs().max() > 1e-2

def test_store_roundtrip_one_file_and_sizes(pool, data, xy, tmp_path):
    x = xy[0]; st = relabel(x, pool, data.info, dict(epochs=3), PRIORS, out=tmp_path/'l')
    fct.test_eq(sorted(p.name for p in (tmp_path/'l').iterdir()), ['labels.json', 'labels.safetensors'])
    fct.test_eq(st.nbytes, sum(p.stat().st_size for p in (tmp_path/'l').iterdir()))
    back = LabelStore.load(tmp_path/'l')
    fct.test_eq(set(back.tensors), set(st.tensors))
    for k, v in st.tensors.items(): assert torch.equal(back.tensors[k], v) and back.tensors[k].dtype == v.dtype, k
    fct.test_eq((back.teachers, back.weights, back.config), (st.teachers, st.weights, st.config))
    fct.test_eq(back.tensors['logits'].dtype, torch.float16)
    fct.test_eq(store_bytes(30, 10, 3), sum(v.numel() * v.element_size() for v in st.tensors.values()))
    for e in range(3):
        for b, a in enumerate(Augmenter(data.info, st.config).plan(30, e)): assert back.aug(e, b).same(a)
    (tmp_path/'l/labels.safetensors').write_bytes(b'garbage')
    with pytest.raises(CVDDError, match='damaged'): LabelStore.load(tmp_path/'l')
    with pytest.raises(CVDDError, match='does not exist'): LabelStore.load(tmp_path/'nothing')

def test_topk_store_reconstructs(pool, data, xy):
    x = xy[0]; full = relabel(x, pool, data.info, dict(epochs=1), PRIORS); top = relabel(x, pool, data.info, dict(epochs=1, topk=3), PRIORS)
    assert 'logits' not in top.tensors and top.tensors['indices'].dtype == torch.int16
    for b in range(len(full.bounds)):
        zf, zt = full.logits(0, b), top.logits(0, b)
        v, i = zf.topk(3, 1)
        assert torch.equal(zt.gather(1, i), v)                               # the k kept logits are exact (fp16)
        assert torch.equal(zt.argmax(1), zf.argmax(1))
        rest = torch.ones_like(zf, dtype=torch.bool).scatter_(1, i, False)
        fct.test_close(zt[rest].view(-1, 7).mean(1), zf[rest].view(-1, 7).mean(1), eps=2e-2)
    z = torch.randn(4, 10)
    assert torch.equal(expand_logits(compress_logits(z, 10), 10), z.half().float())
    assert top.nbytes < full.nbytes

@pytest.mark.parametrize('topk', [0, 4])
def test_stored_and_online_yield_identical_batches(pool, data, xy, topk):
    x = xy[0]; cfg = RelabelConfig(epochs=2, topk=topk, mix='mixup')
    st, on = relabel(x, pool, data.info, cfg, PRIORS), OnlineLabeler(pool, data.info, cfg, PRIORS)
    for e in range(2):
        n = 0
        for p, q in zip(st.replay(x, e), on.replay(x, e)):
            assert torch.equal(p.x, q.x) and torch.equal(p.logits, q.logits) and p.aug.same(q.aug); n += 1
        fct.test_eq(n, len(st.bounds))

def test_bad_inputs_raise(pool, data, xy):
    x, y = xy
    with pytest.raises(CVDDError, match=r'must be \(N, C, H, W\)'): relabel(x[0], pool, data.info)
    nan = x.clone(); nan[2, 0, 0, 0] = float('nan')
    with pytest.raises(CVDDError, match='NaN or inf'): relabel(nan, pool, data.info)
    with pytest.raises(CVDDError, match='normalised floats'): relabel((x * 10).to(torch.uint8), pool, data.info)
    with pytest.raises(CVDDError, match='images are'): relabel(x[:, :, :6], pool, data.info)
    with pytest.raises(CVDDError, match='2 priors'): relabel(x, ExpertPool([pool['a']]), data.info, priors=[1.0, 2.0])
    with pytest.raises(CVDDError, match='unknown mix'): RelabelConfig(mix='cutout')
    with pytest.raises(CVDDError, match='unknown RelabelConfig'): RelabelConfig.from_dict(dict(epoch=1))
    st = relabel(x, pool, data.info, dict(epochs=1), PRIORS)
    with pytest.raises(CVDDError, match='other images'): label_source(x.flip(0), None, data.info, store=st)
    with pytest.raises(CVDDError, match='holds labels for 30 images'): st.check(x[:10])
    with pytest.raises(CVDDError, match='holds 1 epochs'): list(st.replay(x, 1))
