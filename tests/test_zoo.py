"""The shipped expert zoo: every expert scores what its metadata says on the real test split, meets the thresholds,
rebuilds from its recipe, refuses the wrong dataset; the zoo README is generated from the metadata; zoo names work
wherever a pool is accepted."""
import json, subprocess, sys
from pathlib import Path
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError
from cvdd_nb.data import load_dataset
from cvdd_nb.experts import Expert, ExpertPool, default_flip, evaluate_model, resolve_pool, zoo_root
from cvdd_nb.models import create_model
from cvdd_nb.zoo import ZOO, zoo_markdown

ROOT = Path(__file__).resolve().parent.parent
CVDD = str(Path(sys.executable).parent/'cvdd')
# What the issue asks of each pool: (best expert at least, every expert at least), test accuracy in %.
THRESHOLDS = dict(digits=(97.0, 97.0), mnist=(99.3, 99.0), fashion_mnist=(92.5, 90.0))

def shipped(ds:str)->bool: return (ROOT/'zoo'/ds/'pool.json').exists()

def dataset_or_skip(ds:str):
    try: return load_dataset(ds)
    except CVDDError as e: pytest.skip(f'{ds} is not installed here: {e.problem}')

def pools_of(ds:str)->dict:
    "The final pool and each snapshot pool of `ds`: {'final' | epoch: pool}."
    return {'final': ExpertPool.load(f'zoo:{ds}'), **{k: ExpertPool.load(f'zoo:{ds}@e{k}') for k in ZOO[ds].snapshots}}

def test_zoo_root_is_the_repo_zoo():
    fct.test_eq(zoo_root(), ROOT/'zoo')

@pytest.mark.parametrize('ds', list(ZOO))
def test_shipped_experts_score_what_they_record(ds):
    "Each stored expert (final and snapshots), evaluated now on the real test split, matches its metadata within 0.05 points."
    if not shipped(ds): pytest.skip(f'zoo:{ds} is not built yet (cvdd experts train --zoo {ds})')
    data = dataset_or_skip(ds)
    torch.set_num_threads(1)
    for k, pool in pools_of(ds).items():
        pool.check(data.info)
        fct.test_eq(pool.names, [e[0] for e in ZOO[ds].experts])
        for e in pool:
            acc = evaluate_model(e.model, data.test, data.info)
            assert abs(acc - e.meta.test_acc) <= 0.05, (ds, k, e.name, acc, e.meta.test_acc)
            fct.test_eq(e.meta.epochs, ZOO[ds].recipe['epochs'] if k == 'final' else k)

MISSED = dict(digits='issue 14: ResNet-50, MobileNetV2 and ShuffleNetV2 score 95.8-96.9 % on digits, under the 97 % asked')

@pytest.mark.parametrize('ds', [pytest.param(d, marks=pytest.mark.xfail(strict=True, reason=MISSED[d])) if d in MISSED else d for d in ZOO])
def test_shipped_experts_meet_the_thresholds(ds):
    if not shipped(ds): pytest.skip(f'zoo:{ds} is not built yet (cvdd experts train --zoo {ds})')
    best, each = THRESHOLDS[ds]
    accs = {e.name: e.meta.test_acc for e in ExpertPool.load(f'zoo:{ds}')}
    assert max(accs.values()) >= best, accs
    assert min(accs.values()) >= each, accs

@pytest.mark.parametrize('ds', list(ZOO))
def test_recorded_recipe_rebuilds_the_architecture(ds):
    "The spec's architecture (name, width, arguments) and recipe are what each stored expert records, and fit its weights."
    if not shipped(ds): pytest.skip(f'zoo:{ds} is not built yet')
    spec = ZOO[ds]
    for i, (e, (name, arch, width, kw)) in enumerate(zip(ExpertPool.load(f'zoo:{ds}'), spec.experts)):
        m = e.meta
        built = create_model(arch, len(m.class_names), in_chans=m.in_chans, img_size=m.img_size[0], width=width, **kw)
        fct.test_eq(built.cvdd_spec, m.arch)
        fct.test_eq({k: v.shape for k, v in built.state_dict().items()}, {k: v.shape for k, v in e.model.state_dict().items()})
        for k, v in spec.recipe_for(name).to_dict().items():
            if k == 'flip' and v == 'auto': v = default_flip(ds)            # recorded as resolved for the dataset
            if not (k == 'pad' and v < 0): fct.test_eq(m.recipe[k], v)
        fct.test_eq((m.seed, m.holdout, m.dtype), (spec.seed + i, dict(per_class=spec.holdout, seed=spec.seed), 'float16'))
        for k in ('command', 'commit', 'machine', 'date'): assert m.origin.get(k), (e.name, k)
        assert m.valid_acc is not None and m.seconds > 0

def test_zoo_readme_is_generated_from_the_metadata():
    fct.test_eq((ROOT/'zoo'/'README.md').read_text(), zoo_markdown(ROOT/'zoo'))

def test_zoo_fits_in_git_budget():
    size = sum(p.stat().st_size for p in (ROOT/'zoo').rglob('*') if p.is_file() and '.build' not in p.parts)
    assert size <= 60e6, size

def test_wrong_dataset_is_the_usual_clear_error():
    with pytest.raises(CVDDError, match='expects 8x8 images but dataset mnist has 28x28'):
        ExpertPool.load('zoo:digits').check(dataset_or_skip('mnist').info)
    if shipped('mnist'):
        with pytest.raises(CVDDError, match='orders its classes differently'):
            ExpertPool.load('zoo:mnist').check(dataset_or_skip('fashion_mnist').info)

def test_bad_zoo_names():
    with pytest.raises(CVDDError, match="no zoo pool"): resolve_pool('zoo:cifar10')
    with pytest.raises(CVDDError, match='write zoo:DATASET'): resolve_pool('zoo:digits@final')
    with pytest.raises(CVDDError, match="no zoo pool"): resolve_pool('zoo:digits@e7')

def test_cli_lists_and_checks_a_zoo_pool():
    out = subprocess.run([CVDD, 'experts', 'list', 'zoo:digits'], capture_output=True, text=True)
    assert out.returncode == 0 and '| convnet | convnet |' in out.stdout, out.stderr
    out = subprocess.run([CVDD, 'experts', 'check', 'zoo:digits', '--dataset', 'digits'],
                         capture_output=True, text=True)
    assert out.returncode == 0 and '6 experts fit digits' in out.stdout, out.stderr

def test_a_run_on_a_zoo_pool(tmp_path):
    "A config names a zoo pool instead of training experts; a validation split larger than the zoo's hold-out is refused."
    from cvdd_nb.pipeline import TINY, run
    cfg = dict(TINY, experts=dict(pool='zoo:digits'), valid=20)
    res = run(cfg, out=tmp_path/'run')
    fct.test_eq([r['name'] for r in res['experts']], [e[0] for e in ZOO['digits'].experts])
    assert not (ROOT/'zoo'/'digits'/'priors').exists()            # nothing is written into the zoo
    with pytest.raises(CVDDError, match='it was trained on some of them'): run(dict(cfg, valid=30), out=tmp_path/'run30')
