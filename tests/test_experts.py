"Experts: training, save/load round trip, every mismatch raises, pools resume, the CLI."
import dataclasses, json, os, subprocess, sys
from pathlib import Path
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError
from cvdd_nb.data import load_dataset, normalize
from cvdd_nb.testing import write_cifar_fixture
from cvdd_nb.experts import Expert, ExpertPool, train_expert, train_pool, evaluate_model
from cvdd_nb.models import create_model
from safetensors.torch import load as st_load, save as st_save

@pytest.fixture(scope='module')
def expert(data): return train_expert('convnet', data, dict(epochs=3), width=0.25, seed=1, quiet=True)

def test_expert_learns_and_records_its_recipe(expert, data):
    assert expert.meta.test_acc > 50
    fct.test_eq(expert.meta.class_names, data.info.class_names)
    fct.test_eq((expert.meta.seed, expert.meta.recipe['epochs'], expert.meta.recipe['lr']), (1, 3, 1e-3))
    fct.test_close(evaluate_model(expert.model, data.test, data.info), expert.meta.test_acc)

def test_save_load_identical_outputs(expert, data, tmp_path):
    expert.save(tmp_path/'e'); back = Expert.load(tmp_path/'e')
    x = normalize(data.test.x, data.info)
    assert torch.equal(back.model(x), expert.model(x))
    fct.test_eq(back.meta, expert.meta)
    for a, b in zip(back.model.state_dict().values(), expert.model.state_dict().values()): assert torch.equal(a, b)

@pytest.mark.parametrize('change,msg', [
    (dict(num_classes=9, class_names=list('012345678')), 'has 10 classes but'),
    (dict(class_names=['0', '1', '3', '2', '4', '5', '6', '7', '8', '9']), "class 2 is '2' for the expert but '3'"),
    (dict(channels=3, mean=(.5,)*3, std=(.2,)*3), 'takes 1-channel images'),
    (dict(img_size=(28, 28)), 'expects 8x8 images'),
    (dict(std=(0.5,)), 'normalisation'),
])
def test_every_mismatch_raises(expert, data, change, msg):
    with pytest.raises(CVDDError, match=msg.replace('(', r'\(')): expert.check(dataclasses.replace(data.info, **change))

def test_near_chance_expert_is_flagged(data):
    raw = Expert(create_model('convnet', 10, 1, 8, width=0.25), train_expert('convnet', data, dict(epochs=1), width=0.25, quiet=True).meta)
    raw.meta.test_acc = evaluate_model(raw.model, data.test, data.info)    # an untrained network
    with pytest.raises(CVDDError, match='near chance'): raw.check(data.info)

def test_model_without_bn_is_refused(expert):
    with pytest.raises(CVDDError, match='no BatchNorm2d'): Expert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), expert.meta)

def test_damaged_files_raise(expert, tmp_path):
    expert.save(tmp_path/'e')
    w = tmp_path/'e/model.safetensors'; w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CVDDError): Expert.load(tmp_path/'e')
    expert.save(tmp_path/'f'); (tmp_path/'f/expert.json').write_text('{"arch": 3}')
    with pytest.raises(CVDDError, match="field 'arch' should be dict"): Expert.load(tmp_path/'f')

def test_wrong_architecture_for_weights(expert, tmp_path):
    expert.save(tmp_path/'e')
    d = json.loads((tmp_path/'e/expert.json').read_text()); d['arch']['width'] = 0.5
    (tmp_path/'e/expert.json').write_text(json.dumps(d))
    with pytest.raises(CVDDError, match='does not match the architecture'): Expert.load(tmp_path/'e')

def test_from_weights_timm_and_pth(data, tmp_path):
    m = create_model('timm:resnet18', 10, in_chans=1, img_size=8)
    torch.save(m.state_dict(), tmp_path/'r.pth')
    e = Expert.from_weights('timm:resnet18', tmp_path/'r.pth', data.info)
    x = normalize(data.test.x[:4], data.info)
    assert torch.equal(e.model(x), m.eval()(x))
    fct.test_eq(e.meta.arch['name'], 'timm:resnet18')

def test_cifar_shaped_expert(tmp_path):
    write_cifar_fixture(tmp_path, 'cifar10', n_train=40, n_test=20)
    d = load_dataset('cifar10', root=tmp_path)
    e = train_expert('resnet18', d, dict(epochs=1, batch_size=20), width=0.125, quiet=True)
    fct.test_eq(e.meta.img_size, [32, 32]); fct.test_eq(e.meta.recipe['flip'], True); fct.test_eq(e.meta.recipe['pad'], 4)

def test_pool_roundtrip_and_resume(data, tmp_path):
    archs = [('a', 'convnet', 0.25), ('b', 'shufflenetv2', 0.5)]
    pool = train_pool(archs, data, tmp_path/'p', dict(epochs=1), quiet=True)
    assert (tmp_path/'p/pool.md').read_text().startswith('| expert |')
    # delete one expert: only it is retrained, the other is loaded as it was. A seeded retrain would give back the trained
    # weights, so first mark expert a's saved weights (one value changed on disk): a loaded expert keeps the mark, a retrained one loses it
    import shutil; shutil.rmtree(tmp_path/'p/b')
    f = tmp_path/'p/a/model.safetensors'; sd = st_load(f.read_bytes()); k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k].view(-1)[0] = 123.0; f.write_bytes(st_save(sd, metadata={'format': 'pt'}))
    again = train_pool(archs, data, tmp_path/'p', dict(epochs=1), quiet=True)
    fct.test_eq(again['a'].model.state_dict()[k].view(-1)[0].item(), 123.0)
    got = again['a'].model.state_dict(); assert all(torch.equal(v.to(got[n].dtype), got[n]) for n, v in sd.items())   # every tensor as on disk
    fct.test_eq(st_load(f.read_bytes())[k].view(-1)[0].item(), 123.0)                    # and so it is saved again
    fct.test_eq(again.table(), pool.table()[:1] + again.table()[1:])
    fct.test_eq(again['b'].meta.test_acc, pool['b'].meta.test_acc)       # seeded: retrained identically
    fct.test_eq(ExpertPool.load(tmp_path/'p').names, ['a', 'b'])

def test_cli_experts_train_list_check(tmp_path):
    exe = Path(sys.executable).parent/'cvdd'
    r = subprocess.run([str(exe), 'experts', 'train', '--arch', 'convnet:0.25', 'resnet18:0.125', '--epochs', '4', '--out', str(tmp_path/'pool')],
                       capture_output=True, text=True, env={**os.environ, 'CVDD_PROGRESS': '0'})
    assert r.returncode == 0, r.stderr; assert '| resnet18 | resnet18 | 0.125 |' in r.stdout, r.stderr
    r = subprocess.run([str(exe), 'experts', 'check', str(tmp_path/'pool'), '--dataset', 'digits'], capture_output=True, text=True)
    fct.test_eq(r.returncode, 0); assert '2 experts fit digits' in r.stdout
    r = subprocess.run([str(exe), 'experts', 'train', '--arch', 'vgg11', '--out', str(tmp_path/'x')], capture_output=True, text=True)
    fct.test_eq(r.returncode, 2); assert "unknown model 'vgg11'" in r.stderr or 'vgg11' in r.stderr
