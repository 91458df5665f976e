"Tests for cvdd_nb.models: small-image architectures, timm/torchvision factory, safe weight loading."
import json, os, pickle
os.environ.setdefault('HF_HUB_OFFLINE', '1')   # a stray download must fail, not hang

import pytest, torch, torch.nn as nn
import fastcore.test as fct
from safetensors.torch import save_file

from cvdd_nb.core import CVDDError
from cvdd_nb.models import (create_model, list_models, bn_layers, has_batchnorm, count_params,
                            read_state_dict, load_weights)

SMALL = ['convnet', 'resnet18', 'resnet50', 'mobilenetv2', 'mobilenetv2_ref', 'shufflenetv2', 'densenet121']
SHAPES = [(1, 8), (1, 28), (3, 32)]


pytestmark = pytest.mark.usefixtures('one_thread')     # tiny forwards: 1 thread avoids OpenMP stalls on 2 busy cores


def shapes(m): return {k: tuple(v.shape) for k, v in m.state_dict().items()}
def same_sd(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_list_models(): fct.test_eq(list_models(), SMALL)


@pytest.mark.parametrize('name', SMALL)
@pytest.mark.parametrize('c,s', SHAPES)
def test_forward_shapes_and_bn(name, c, s):
    m = create_model(name, 5, in_chans=c, img_size=s, width=0.25)
    for mode in (m.train, m.eval):
        mode(); fct.test_eq(tuple(m(torch.randn(2, c, s, s)).shape), (2, 5))
    assert has_batchnorm(m) and len(bn_layers(m)) >= 3
    assert all(isinstance(b, nn.BatchNorm2d) for b in bn_layers(m))
    assert not any(isinstance(l, nn.MaxPool2d) for l in m.modules())     # CIFAR-style: no max-pool


@pytest.mark.parametrize('name', SMALL)
def test_backward_and_channels_last(name):
    m = create_model(name, 4, in_chans=1, img_size=8, width=0.25)
    torch.nn.functional.cross_entropy(m(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())   # no dead parameters
    m.eval(); x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = m(x); m.to(memory_format=torch.channels_last)   # the GPU path uses channels_last
        fct.test_close(m(x.contiguous(memory_format=torch.channels_last)), y, eps=1e-4)


@pytest.mark.parametrize('name', SMALL)
def test_rebuild_from_spec(name):
    torch.manual_seed(0)
    m = create_model(name, 10, in_chans=1, img_size=28, width=0.25)
    spec = json.loads(json.dumps(m.cvdd_spec))              # JSON-able, and survives the trip
    fct.test_eq(set(spec), {'name', 'num_classes', 'in_chans', 'img_size', 'width', 'kwargs'})
    m2 = create_model(**spec)
    fct.test_eq(shapes(m2), shapes(m)); fct.test_eq(m2.cvdd_spec, m.cvdd_spec)
    torch.manual_seed(0)                                   # seeded construction is reproducible
    assert same_sd(create_model(**spec).state_dict(), m.state_dict())


def test_spec_records_arch_kwargs():
    m = create_model('convnet', 10, 1, 28, width=0.5, depth=2, net_width=64)
    fct.test_eq(m.cvdd_spec, dict(name='convnet', num_classes=10, in_chans=1, img_size=28, width=0.5,
                                  kwargs=dict(depth=2, net_width=64)))
    fct.test_eq(create_model('shufflenetv2', 10).cvdd_spec['kwargs'], dict(scale=0.5, min_size=1))
    fct.test_eq(create_model('resnet18', 10, img_size=(28, 32), width=0.25).cvdd_spec['img_size'], [28, 32])


@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'mobilenetv2', 'mobilenetv2_ref', 'shufflenetv2', 'densenet121'])
def test_min_size_keeps_resolution(name):
    "min_size stops the downsampling: the last feature map of an 8 px image is 4 px, not 1 px; the weights are the same."
    side = {}
    def last_map(m, size, **kw):
        net = create_model(name, 10, 1, size, width=0.25, **kw)
        convs = [l for l in net.modules() if isinstance(l, torch.nn.Conv2d)]
        convs[-1].register_forward_hook(lambda mod, i, o: side.__setitem__('s', o.shape[-1]))
        net.eval()(torch.randn(2, 1, size, size)); return side['s'], net
    s1, n1 = last_map(None, 8); s4, n4 = last_map(None, 8, min_size=4)
    fct.test_eq((s1, s4), (1, 4))
    fct.test_eq(shapes(n1), shapes(n4))
    if name != 'densenet121':                                     # strided convs round up: 28 -> 14 -> 7 -> 4 either way
        fct.test_eq(last_map(None, 28, min_size=4)[0], last_map(None, 28)[0])


def test_convnet_pooling_and_width():
    m = create_model('convnet', 10, 1, 8, width=0.25)                # 8 -> 4 -> 2 -> 1
    fct.test_eq(sum(isinstance(l, nn.AvgPool2d) for l in m.modules()), 3)
    fct.test_eq(m.classifier.in_features, 32)
    m = create_model('convnet', 10, 1, 8, depth=4, net_width=16)    # no pooling below 1 px
    fct.test_eq(sum(isinstance(l, nn.AvgPool2d) for l in m.modules()), 3)
    fct.test_eq(tuple(m(torch.randn(2, 1, 8, 8)).shape), (2, 10))
    fct.test_fail(lambda: create_model('convnet', 10, 1, 8)(torch.randn(2, 1, 28, 28)), contains='built for (8, 8) images')


def test_published_sizes_and_width():
    fct.test_eq(count_params(create_model('resnet18', 10)), 11_173_962)
    fct.test_eq(count_params(create_model('mobilenetv2', 10)), 2_236_682)          # = torchvision's
    fct.test_eq(count_params(create_model('mobilenetv2_ref', 10)), 2_296_922)      # = the CV-DD reference's
    fct.test_eq(count_params(create_model('shufflenetv2', 1000, scale=1.0)), 2_278_604)
    for name in SMALL:   # the width multiplier shrinks every architecture a lot
        assert count_params(create_model(name, 10, width=0.25)) < count_params(create_model(name, 10)) / 8, name
    for w in (0.3, 0.35, 0.7):                                    # stage widths stay even for the channel split
        m, seen = create_model('shufflenetv2', 10, width=w), []
        for u in m.modules():
            if type(u).__name__ == 'ShuffleUnit': u.register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape[1]))
        m(torch.randn(2, 3, 8, 8)); assert len(seen) == 16 and all(c % 2 == 0 for c in seen), (w, seen)
    fct.test_eq(min(b.num_features for b in bn_layers(create_model('resnet18', 10, width=0.01))), 8)


def test_bn_layers_order_and_shortcuts():
    m = create_model('resnet18', 10, width=0.25)
    bns = bn_layers(m)
    fct.test_eq(len(bns), 1 + 16 + 3)                            # stem, 8 blocks x 2, 3 shortcut BNs
    assert bns[0] is [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)][0]
    assert bns[0].num_features == 16                             # the stem BN comes first
    names = [n for n, x in m.named_modules() if isinstance(x, nn.BatchNorm2d)]
    fct.test_eq(sum('shortcut' in n for n in names), 3)
    fct.test_eq(len(bn_layers(create_model('resnet50', 10, width=0.25))), 1 + 16 * 3 + 4)
    assert not has_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten()))
    fct.test_eq(count_params(nn.Linear(4, 3)), 15)


def test_timm_offline_in_chans():
    m = create_model('timm:resnet18', 10, in_chans=1)
    fct.test_eq(tuple(m(torch.randn(2, 1, 32, 32)).shape), (2, 10))
    assert has_batchnorm(m); fct.test_eq(m.cvdd_spec['name'], 'timm:resnet18')
    fct.test_eq(shapes(create_model(**m.cvdd_spec)), shapes(m))
    fct.test_fail(lambda: create_model('timm:resnet_18', 10), contains="unknown timm model 'resnet_18' (did you mean: resnet18")
    fct.test_fail(lambda: create_model('timm:resnet18', 10, pretrained=True), contains='never downloads')


def test_torchvision_offline():
    m = create_model('tv:resnet18', 10)
    fct.test_eq(tuple(m(torch.randn(2, 3, 32, 32)).shape), (2, 10)); assert has_batchnorm(m)
    m1 = create_model('tv:resnet18', 7, in_chans=1)                # first conv replaced
    fct.test_eq(m1.conv1.in_channels, 1); fct.test_eq(tuple(m1(torch.randn(2, 1, 32, 32)).shape), (2, 7))
    fct.test_eq(shapes(create_model(**m1.cvdd_spec)), shapes(m1))
    fct.test_fail(lambda: create_model('tv:resnet_18', 10), contains='did you mean: resnet18')
    fct.test_fail(lambda: create_model('tv:resnet18', 10, width=0.5), contains='only applies to the small architectures')


@pytest.mark.parametrize('fmt', ['safetensors', 'pth', 'ckpt'])
def test_weights_round_trip(tmp_path, fmt):
    torch.manual_seed(1)
    m = create_model('resnet18', 10, in_chans=1, img_size=28, width=0.25)
    with torch.no_grad():                                         # make running stats non-trivial
        m.train(); m(torch.randn(8, 1, 28, 28))
    p = tmp_path/f'w.{"safetensors" if fmt == "safetensors" else "pth"}'
    sd = m.state_dict()
    if fmt == 'safetensors': save_file(sd, p)
    elif fmt == 'pth': torch.save(sd, p)
    else: torch.save({'model': {'module.' + k: v for k, v in sd.items()}, 'epoch': 9}, p)   # DDP checkpoint
    assert same_sd(read_state_dict(p), sd)
    torch.manual_seed(2)
    m2 = create_model(**m.cvdd_spec, weights=p)
    m.eval(); m2.eval(); x = torch.randn(3, 1, 28, 28)
    with torch.no_grad(): assert torch.equal(m(x), m2(x))


def test_weights_mismatch_names_keys(tmp_path):
    save_file(create_model('resnet18', 10, width=0.25).state_dict(), tmp_path/'w.safetensors')
    fct.test_fail(lambda: create_model('resnet18', 100, width=0.25, weights=tmp_path/'w.safetensors'),
                  contains='classifier.weight (10, 128) vs (100, 128)')
    fct.test_fail(lambda: create_model('resnet50', 10, width=0.25, weights=tmp_path/'w.safetensors'), contains='missing keys')
    sd = create_model('resnet18', 10, width=0.25).state_dict(); sd['extra.weight'] = torch.zeros(1)
    fct.test_fail(lambda: load_weights(create_model('resnet18', 10, width=0.25), sd), contains='unexpected keys (1): extra.weight')


def test_damaged_files_raise(tmp_path):
    sd = create_model('convnet', 10, 1, 8, width=0.25).state_dict()
    save_file(sd, tmp_path/'w.safetensors'); torch.save(sd, tmp_path/'w.pth')
    raw, rawp = (tmp_path/'w.safetensors').read_bytes(), (tmp_path/'w.pth').read_bytes()
    (tmp_path/'cut.safetensors').write_bytes(raw[:len(raw) // 2])
    (tmp_path/'head.safetensors').write_bytes(raw[:5])
    (tmp_path/'junk.safetensors').write_bytes(b'\x00garbage' * 50)
    (tmp_path/'cut.pth').write_bytes(rawp[:len(rawp) // 2])
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    for f in ['cut.safetensors', 'head.safetensors', 'junk.safetensors', 'cut.pth', 'junk.pth']:
        with pytest.raises(CVDDError) as e: read_state_dict(tmp_path/f)
        assert f in str(e.value) and 'fix:' in str(e.value), str(e.value)
    fct.test_fail(lambda: read_state_dict(tmp_path/'missing.pth'), contains='does not exist')
    torch.save({'epoch': 3, 'lr': 0.1}, tmp_path/'meta.pth')
    fct.test_fail(lambda: read_state_dict(tmp_path/'meta.pth'), contains='are not tensors')


class _Evil:
    "Unpickling this would create a folder: weights_only must refuse it."
    def __init__(self, target): self.target = target
    def __reduce__(self): return (os.makedirs, (self.target,))


@pytest.mark.parametrize('via', ['torch', 'pickle'])
def test_malicious_pickle_refused(tmp_path, via):
    target, p = str(tmp_path/'pwned'), tmp_path/'evil.pth'
    obj = {'w': torch.zeros(2), 'x': _Evil(target)}
    if via == 'torch': torch.save(obj, p)
    else:
        with open(p, 'wb') as f: pickle.dump(obj, f, protocol=2)
    with pytest.raises(CVDDError) as e: read_state_dict(p)
    assert 'evil.pth' in str(e.value) and 'fix:' in str(e.value)
    if via == 'torch': assert 'holds objects other than tensors' in str(e.value)
    assert not os.path.exists(target)
    with pytest.raises(CVDDError): create_model('convnet', 10, weights=p)


def test_bad_names_and_args():
    valid = 'use one of: convnet, resnet18, resnet50, mobilenetv2, mobilenetv2_ref, shufflenetv2, densenet121, convnet3, timm:<name>, tv:<name>'
    fct.test_fail(lambda: create_model('resnet', 10), contains=valid)
    fct.test_fail(lambda: create_model('foo:resnet18', 10), contains=valid)
    fct.test_fail(lambda: create_model('resnet18', 1), contains='num_classes must be an integer >= 2')
    fct.test_fail(lambda: create_model('resnet18', 2.5), contains='num_classes must be an integer')
    fct.test_fail(lambda: create_model('resnet18', 10, in_chans=0), contains='in_chans must be an integer >= 1')
    fct.test_fail(lambda: create_model('resnet18', 10, img_size=7), contains='at least 8 px')
    fct.test_fail(lambda: create_model('resnet18', 10, img_size=(32, 4)), contains='at least 8 px')
    fct.test_fail(lambda: create_model('resnet18', 10, width=-1), contains='width must be a number > 0')
    fct.test_fail(lambda: create_model('convnet', 10, depht=2), contains='convnet accepts: depth, net_width')
    fct.test_fail(lambda: create_model('shufflenetv2', 10, scale=0.7), contains='pass scale=0.5')
    fct.test_fail(lambda: create_model('convnet', 10, net_width=object()), contains='cannot be stored as JSON')
    with pytest.raises(CVDDError): create_model('densenet', 10)
    with pytest.raises(ValueError): create_model('densenet', 10)      # CVDDError is a ValueError
