"Recover: BN hooks, votes, schedules, the single-expert path, resume, grouped execution, held-out check."
import itertools, math
import pytest, torch
import torch.nn.functional as F
import fastcore.test as fct
from cvdd_nb.core import CVDDError, make_generator
from cvdd_nb.data import pixel_bounds
from cvdd_nb.models import bn_layers, create_model
from cvdd_nb.experts import ExpertPool, train_expert
from cvdd_nb.committee import (BNStats, committee_loss, committee_plan, committee_schedule, compute_priors, unit_seed,
                               vote_weights)
from cvdd_nb.augment import draw_augment
from cvdd_nb.recover import History, Recovered, RecoverConfig, StopRecover, init_bank, initial_images, recover

pytestmark = pytest.mark.usefixtures('one_thread')     # one thread: 250 s -> 35 s on a busy 2-core machine

@pytest.fixture(scope='module')
def pool(data, make_pool):
    "Three tiny experts of two architectures (a few seconds)."
    return make_pool(data, [('convnet', 'convnet', 0.25, 4, 0, None), ('convnet_d2', 'convnet', 0.5, 4, 1, dict(depth=2)),
                            ('resnet18', 'resnet18', 0.125, 6, 2, None)])

# small runs shared by several tests
SMALL = dict(ipc=2, iterations=30, min_scale=0.5, checkpoint_every=7, callback_every=1)

@pytest.fixture(scope='module')
def full(pool, data): return recover(pool, data, SMALL, quiet=True)

def test_hooks_equal_direct_statistics_and_are_removed():
    torch.manual_seed(0)
    m = create_model('resnet18', 10, 3, 16, width=0.125).eval()
    for l in bn_layers(m): l.running_mean.uniform_(-1, 1); l.running_var.uniform_(0.5, 2)
    x, seen = torch.randn(8, 3, 16, 16), []
    hs = [l.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach())) for l in bn_layers(m)]
    with BNStats(m, segments=4) as st:
        m(x); bn = st.loss(first_bn_mul=10.0)
        got = list(zip(st.mean, st.var))
    for h in hs: h.remove()
    fct.test_eq(len(seen), len(bn_layers(m)))                      # every BN, shortcut BNs too
    assert any('shortcut' in n for n, mod in m.named_modules() if isinstance(mod, torch.nn.BatchNorm2d))
    for c, (mu, var) in zip(seen, got):
        for s, part in enumerate(c.split(2)):
            fct.test_close(mu[s], torch.mean(part, (0, 2, 3)), eps=1e-5)
            fct.test_close(var[s], torch.var(part, (0, 2, 3), unbiased=False), eps=1e-5)
    for s in range(4):
        direct = sum((10.0 if i == 0 else 1.0) * (torch.norm(c[2*s:2*s+2].mean((0, 2, 3)) - l.running_mean) + torch.norm(c[2*s:2*s+2].var((0, 2, 3), unbiased=False) - l.running_var))
                     for i, (c, l) in enumerate(zip(seen, bn_layers(m))))
        fct.test_close(bn[s], direct, eps=1e-3)
    fct.test_eq(sum(len(l._forward_pre_hooks) for l in bn_layers(m)), 0)
    with pytest.raises(CVDDError, match='cannot be cut into 3'):
        with BNStats(m, segments=3): m(x)
    fct.test_eq(sum(len(l._forward_pre_hooks) for l in bn_layers(m)), 0)   # removed on error too

def test_vote_weights_are_softmax_of_priors_over_T():
    for pri, T in (([70.0, 80.0], 5.0), ([26.1, 24.4, 25.0, 30.0], 5.0), ([1.0, 2.0], 0.5)):
        w = vote_weights(pri, T)
        fct.test_close(w, torch.softmax(torch.tensor(pri) / T, 0), eps=1e-6)
        fct.test_close(w.sum(), 1.0, eps=1e-6)
    assert vote_weights([90.0, 80.0])[0] > vote_weights([90.0, 80.0])[1]

def test_pairs_schedule_order_and_coverage():
    s = committee_schedule(5, 2, 10, 'pairs')
    fct.test_eq(s, list(itertools.combinations(range(5), 2)))
    fct.test_eq(sorted(s), sorted(set(s)))                           # each pair exactly once
    s3 = committee_schedule(4, 3, 8, 'pairs')
    fct.test_eq(s3[:4], list(itertools.combinations(range(4), 3))); fct.test_eq(s3[4:], s3[:4])
    fct.test_eq(committee_schedule(5, 2, 4, 'random', seed=1), committee_schedule(5, 2, 4, 'random', seed=1))
    fct.test_eq(committee_schedule(3, 2, 2, 'top', priors=[10, 30, 20]), [(1, 2)] * 2)

def test_bad_names_and_ipc_raise(pool, data):
    for kw, msg in ((dict(ipc=0), 'ipc must be an integer >= 1'), (dict(schedule='pair'), 'pairs, random, fixed, top'),
                    (dict(voter='borda'), 'prior, equal, random'), (dict(init='zeros'), 'noise, real, patches'),
                    (dict(patch_band='tricky'), 'easy, medium, hard'), (dict(augment='mix'), 'shared, per_sample'),
                    (dict(bn_norm='sqrt'), 'none, layers'), (dict(flip='maybe'), 'auto, yes, no'), (dict(prior='oracle'), 'accuracy, given')):
        with pytest.raises(CVDDError, match=msg): recover(pool, data, quiet=True, **kw)
    with pytest.raises(CVDDError, match='valid settings'): RecoverConfig.from_dict(dict(iters=3))
    with pytest.raises(CVDDError, match='does not fit a pool of 3'): recover(pool, data, committee_size=4, quiet=True)
    with pytest.raises(CVDDError, match='unknown expert'): recover(pool, data, schedule='fixed', members=['vgg', 'convnet'], quiet=True)
    with pytest.raises(CVDDError, match='needs the evaluate stage'): compute_priors(pool, 'distill')

def _sre2l_reference(model, data, cfg):
    "An independent single-expert recover (torch.optim.Adam, LambdaLR, BN statistics by hand) with recover's random draws."
    info, T = data.info, cfg.iterations
    g = make_generator(unit_seed(cfg.seed, 'unit', 0, 0))
    x = torch.randn((10, 1, 8, 8), generator=g).requires_grad_()
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / T)))
    lo, hi, y, layers, seen = *pixel_bounds(info), torch.arange(10), bn_layers(model), {}
    hs = [l.register_forward_hook(lambda mod, inp, out: seen.__setitem__(mod, inp[0])) for l in layers]
    for step in range(T):
        p = draw_augment(10, 8, 8, True, (cfg.min_scale, 1.0), False, 1, g)
        i, j, h, w = p.boxes[0].tolist()
        xa = F.interpolate(x[:, :, i:i+h, j:j+w], size=(8, 8), mode='bilinear', align_corners=False) if (h, w) != (8, 8) else x
        xa = torch.roll(xa, tuple(p.shifts[0].tolist()), (2, 3))
        out = model(xa)
        bn = sum((cfg.first_bn_mul if li == 0 else 1.0) * (torch.norm(seen[l].mean([0, 2, 3]) - l.running_mean, 2)
                 + torch.norm(seen[l].permute(1, 0, 2, 3).reshape(seen[l].shape[1], -1).var(1, unbiased=False) - l.running_var, 2))
                 for li, l in enumerate(layers))
        loss = F.cross_entropy(out, y) + cfg.r_bn * bn
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        with torch.no_grad(): x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    for h in hs: h.remove()
    return x.detach()

def test_committee_of_one_is_the_single_expert_path(pool, data):
    cfg = RecoverConfig(ipc=1, iterations=25, committee_size=1, schedule='fixed', members=['convnet_d2'], min_scale=0.5)
    r1 = recover(pool, data, cfg, quiet=True)
    r2 = recover(ExpertPool([pool['convnet_d2']]), data, cfg.replace(members=None), quiet=True)
    assert torch.equal(r1.images, r2.images)                           # the rest of the pool plays no part
    fct.test_eq(r1.weights, torch.ones(10, 1)); fct.test_eq(r1.committee[0], ['convnet_d2'])
    ref = _sre2l_reference(pool['convnet_d2'].model, data, cfg)
    fct.test_close(r1.images, ref, eps=1e-4)                           # = a hand-written SRe2L loop

def test_loss_falls(pool, data, full):
    start = initial_images(pool, data, SMALL)
    def clean(images):
        tot = 0.0
        for p in committee_plan(pool, RecoverConfig(**SMALL)):
            idx = list(range(p['k'], len(images), 2))
            tot += committee_loss([pool[n].model for n in p['names']], p['weights'], images[idx], full.labels[idx])[0].item()
        return tot
    assert clean(full.images) < 0.6 * clean(start), (clean(start), clean(full.images))
    lo, hi = pixel_bounds(data.info)
    assert (full.images >= lo - 1e-6).all() and (full.images <= hi + 1e-6).all()

def _same_run(a, b):
    "Two recover results equal up to float summation order."
    # The grouped path sums the same terms in another order; Adam's normalised step can turn a last-bit difference of a
    # near-zero gradient into a full step on a few pixels (an Intel Xeon with AVX-512: 12 of 1,280 pixels off by 4e-3
    # after 25 steps, all others within 1e-6).
    d = (a.images - b.images).abs()
    assert (d <= 1e-4).float().mean() >= 0.98 and d.max() <= 2e-2, (d.max(), (d > 1e-4).sum())
    fct.test_close(a.ce, b.ce, eps=1e-3); fct.test_close(a.bn, b.bn, eps=1e-2)

def test_grouped_equals_sequential(pool, data):
    for aug in ('shared', 'per_sample'):
        short = RecoverConfig(ipc=2, iterations=5, classes_per_chunk=3, schedule='fixed', augment=aug, min_scale=0.5)
        fct.test_close(recover(pool, data, short, grouped=True, quiet=True).images, recover(pool, data, short, quiet=True).images, eps=1e-5)
        cfg = short.replace(iterations=25)
        seq, grp = recover(pool, data, cfg, quiet=True), recover(pool, data, cfg, grouped=True, quiet=True)
        assert not torch.equal(seq.images, initial_images(pool, data, cfg))
        _same_run(grp, seq)
    # 4 chunks of 3, 3, 3, 1 classes: units of unequal size never share a pass
    g3 = recover(pool, data, cfg, grouped=True, max_group=2, quiet=True)
    _same_run(g3, seq)

@pytest.mark.parametrize('stop', [1, 7, 12, 30, 31, 45])
def test_resume_is_bit_identical(pool, data, full, tmp_path, stop):
    def cb(s):
        if s.done == stop: raise StopRecover()
    assert recover(pool, data, SMALL, out=tmp_path, callbacks=[cb], quiet=True) is None
    back = recover(pool, data, SMALL, out=tmp_path, quiet=True)
    assert torch.equal(back.images, full.images)
    assert torch.equal(back.ce, full.ce) and back.committee == full.committee

def test_resume_after_crash_and_stop_after(pool, data, full, tmp_path):
    def crash(s):
        if s.done == 40: raise RuntimeError('killed')                  # unit 1, step 10: last checkpoint at step 7
    with pytest.raises(RuntimeError, match='killed'): recover(pool, data, SMALL, out=tmp_path, callbacks=[crash], quiet=True)
    assert (tmp_path/'checkpoint'/'progress.safetensors').exists() and (tmp_path/'checkpoint'/'k0_c0.safetensors').exists()
    assert recover(pool, data, SMALL, out=tmp_path, stop_after=3, quiet=True) is None
    back = recover(pool, data, SMALL, out=tmp_path, quiet=True)
    assert torch.equal(back.images, full.images)
    again = recover(pool, data, SMALL, out=tmp_path, quiet=True)      # finished: loads, runs nothing
    assert torch.equal(again.images, full.images)
    with pytest.raises(CVDDError, match='differs in: ipc'): recover(pool, data, SMALL, out=tmp_path, ipc=3, quiet=True)

def test_save_load_is_lossless(full, tmp_path):
    full.save(tmp_path/'r')
    back = Recovered.load(tmp_path/'r')
    assert torch.equal(back.images, full.images) and torch.equal(back.weights, full.weights)
    fct.test_eq((back.committee, back.config, back.info), (full.committee, full.config, full.info))
    fct.test_eq(len(list((tmp_path/'r'/'images').rglob('*.png'))), 20)
    import numpy as np
    from PIL import Image
    png = torch.from_numpy(np.array(Image.open(tmp_path/'r'/'images'/f'0001_{full.info.class_names[1]}'/'000.png'))).float()
    fct.test_close(png / 255, full.images01()[2, 0], eps=0.5 / 255 + 1e-6)  # the PNG is the 8-bit view of image (class 1, k 0)

def test_history_records_and_votes(pool, data):
    h = History(image_every=4)
    rec = recover(pool, data, SMALL, callbacks=[h], callback_every=5, quiet=True)
    fct.test_eq(len(h), 2 * 6)
    r = h.records[0]
    fct.test_eq((r['ce'].shape, r['bn'].shape, r['weights'].shape, r['images'].shape), ((2, 1), (2, 1), (1, 2), (10, 1, 8, 8)))
    fct.test_eq(['images' in r for r in h.records[:5]], [True, False, False, False, True])
    fct.test_close(rec.weights[0], vote_weights([pool['convnet'].meta.test_acc, pool['convnet_d2'].meta.test_acc]), eps=1e-6)
    fct.test_eq([v['names'] for v in rec.votes()], [['convnet', 'convnet_d2'], ['convnet', 'resnet18']])

def test_inits(pool, data):
    real = init_bank(RecoverConfig(ipc=2, init='real'), data, pool)
    fct.test_eq((real.shape, real.dtype), ((10, 2, 1, 8, 8), torch.uint8))
    easy = init_bank(RecoverConfig(ipc=1, init='patches', mipc=40, patch_band='easy'), data, pool)
    hard = init_bank(RecoverConfig(ipc=1, init='patches', mipc=40, patch_band='hard'), data, pool)
    obs = max(pool, key=lambda e: e.meta.test_acc).model              # the default observer: the most accurate expert
    ce = lambda b: F.cross_entropy(obs(b[:, 0]), torch.arange(10)).item()
    assert ce(easy) < ce(hard)
    with pytest.raises(CVDDError, match='lower mipc to at most'): init_bank(RecoverConfig(ipc=1, init='patches'), data, pool)
    r = recover(pool, data, ipc=1, iterations=3, init='real', quiet=True)
    assert r is not None and not torch.equal(r.images, initial_images(pool, data, ipc=1, init='noise'))

def test_heldout_expert_reads_recovered_images(pool, data):
    "Images distilled by committees of convnets and a ResNet-18 are read by a DenseNet that never voted."
    held = train_expert('densenet121', data, dict(epochs=4), width=0.125, seed=11, quiet=True)
    assert held.meta.test_acc > 60
    rec = recover(pool, data, ipc=3, iterations=300, min_scale=0.5, quiet=True)
    acc = (held.model(rec.images).argmax(1) == rec.labels).float().mean().item()
    print(f'held-out densenet121 reads {100 * acc:.0f}% of the recovered images as their class (chance 10%)')
    assert acc >= 0.5, acc

@pytest.mark.parametrize('kw', [dict(cda=True, augment='per_sample'), dict(bn_norm='layers', voter='equal', flip='yes'),
                                dict(voter='random', schedule='random', roll=0), dict(committee_size=3, schedule='top', init='real'),
                                dict(init='patches', mipc=20, patch_band='medium', classes_per_chunk=4, grouped=True)])
def test_options_run(pool, data, kw):
    cfg = RecoverConfig(ipc=2, iterations=4, **kw)
    rec = recover(pool, data, cfg, quiet=True)
    start = initial_images(pool, data, cfg)
    assert torch.isfinite(rec.images).all() and not torch.equal(rec.images, start)
    fct.test_close(rec.weights.sum(1), torch.ones(20), eps=1e-5)
    fct.test_eq(rec.weights.shape, (20, cfg.committee_size))
