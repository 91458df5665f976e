"Distributed: 2 gloo processes give the single-process recover images, label store and student; DDP experts agree; torchrun CLI."
import os, subprocess, sys
import pytest, torch
import fastcore.test as fct
from cvdd_nb.core import CVDDError
from cvdd_nb.experts import train_expert
from cvdd_nb.recover import Recovered, RecoverConfig, recover
from cvdd_nb.relabel import LabelStore, relabel
from cvdd_nb.evaluate import train_student
from cvdd_nb.distributed import (DistEnv, all_gather, broadcast, ddp_train_expert, ddp_train_student, distributed_recover,
                                 distributed_relabel, init_distributed, launch_local, shard)

pytestmark = pytest.mark.usefixtures('one_thread')     # bit-identity: the same thread count as torchrun and launch_local use

@pytest.fixture(scope='module')
def pool(data, make_pool):
    return make_pool(data, [('convnet', 'convnet', 0.25, 3, 0, None), ('convnet_d2', 'convnet', 0.5, 3, 2, dict(depth=2)),
                            ('resnet18', 'resnet18', 0.125, 3, 1, None)])

RCFG = RecoverConfig(ipc=3, iterations=6, min_scale=0.5)     # pairs of 3 experts: 3 units, committees (0, 1), (0, 2), (1, 2)
MIX = dict(grouped=True, mix_committees=True, max_group=2)    # groups [k0, k1] (expert 0 runs on both units at once), [k2]

def _worker(pool, data, out):
    "What every rank runs: each stage once, distributed; results written by rank 0 and returned by all."
    env = init_distributed()
    seq = distributed_recover(pool, data, RCFG, quiet=True, env=env)
    mix = distributed_recover(pool, data, RCFG.replace(**MIX), out=out, quiet=True, env=env)
    st = distributed_relabel(seq.images, pool, data.info, dict(epochs=3, topk=4), out=os.path.join(out, 'labels'), env=env)
    stu = ddp_train_student(seq.images, seq.labels, data.info, st, dict(epochs=3), seed=0, test=data.test, env=env)
    ex = ddp_train_expert('convnet', data, dict(epochs=3), width=0.25, seed=3, quiet=True, env=env)
    return dict(rank=env.rank, world=env.world_size, seq=seq.images, ce=seq.ce, bn=seq.bn, mix=mix.images, store=st.tensors,
                student=stu.model.state_dict(), acc=stu.acc, loss=[h['loss'] for h in stu.history],
                expert=ex.model.state_dict(), expert_acc=ex.meta.test_acc)

@pytest.fixture(scope='module')
def two(pool, data, tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    return launch_local(_worker, 2, pool, data, str(out)), out

def test_without_torchrun_everything_is_single_process(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE'): monkeypatch.delenv(k, raising=False)
    env = init_distributed()
    fct.test_eq((env.rank, env.world_size, env.active, env.main, env.backend), (0, 1, False, True, None))
    fct.test_eq(all_gather(3, env), [3]); fct.test_eq(broadcast('x', env), 'x')
    fct.test_eq([shard(7, DistEnv(r, 3)) for r in range(3)], [[0, 3, 6], [1, 4], [2, 5]])
    monkeypatch.setenv('RANK', '0'); monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.delenv('MASTER_ADDR', raising=False)
    with pytest.raises(CVDDError, match='MASTER_ADDR'): init_distributed()

def test_recover_is_bit_identical(two, pool, data):
    res, out = two
    one = recover(pool, data, RCFG, quiet=True)
    one_mix = recover(pool, data, RCFG.replace(**MIX), quiet=True)
    fct.test_close(one_mix.images, one.images, eps=1e-4)              # grouping changes at most the rounding
    fct.test_eq([r['rank'] for r in res], [0, 1]); fct.test_eq(res[0]['world'], 2)
    for r in res:                                                       # every rank holds the whole, single-process result
        assert torch.equal(r['seq'], one.images) and torch.equal(r['ce'], one.ce) and torch.equal(r['bn'], one.bn)
        assert torch.equal(r['mix'], one_mix.images)
    saved = Recovered.load(out)                                         # rank 0 wrote it, the checkpoints are gone
    assert torch.equal(saved.images, one_mix.images) and not (out/'checkpoint').exists()
    fct.test_eq(saved.committee, one_mix.committee)

def test_relabel_gives_the_same_store(two, pool, data):
    res, out = two
    one = relabel(res[0]['seq'], pool, data.info, dict(epochs=3, topk=4))
    back = LabelStore.load(out/'labels')
    for r in res + [dict(store=back.tensors)]:
        fct.test_eq(sorted(r['store']), sorted(one.tensors))
        for k, v in one.tensors.items(): assert torch.equal(r['store'][k], v), k
    fct.test_eq(back.meta['images'], one.meta['images'])

def test_ddp_student_equals_single_process(two, pool, data):
    res, _ = two
    st = relabel(res[0]['seq'], pool, data.info, dict(epochs=3, topk=4))
    one = train_student(res[0]['seq'], recover(pool, data, RCFG, quiet=True).labels, data.info, st, dict(epochs=3), seed=0, test=data.test)
    sd = one.model.state_dict()
    for r in res:
        for k, v in r['student'].items():
            if 'running' in k: fct.test_close(v, sd[k], eps=1e-5)       # BN running statistics: replayed, equal to rounding
            else: assert torch.equal(v, sd[k]), k                       # weights (and num_batches_tracked): bit for bit
        fct.test_eq(r['acc'], one.acc); fct.test_eq(r['loss'], [h['loss'] for h in one.history])

def test_ddp_experts_agree_across_ranks_and_with_one_process(two, data):
    res, _ = two
    for k, v in res[0]['expert'].items(): assert torch.equal(v, res[1]['expert'][k]), k
    single = train_expert('convnet', data, dict(epochs=3), width=0.25, seed=3, quiet=True)
    # not bit-identical (each rank's BN normalises its half batch), but as accurate
    assert abs(res[0]['expert_acc'] - single.meta.test_acc) < 15, (res[0]['expert_acc'], single.meta.test_acc)
    assert res[0]['expert_acc'] > 25                                   # chance: 10

def test_torchrun_cli_matches_one_process(pool, data, tmp_path):
    pool.save(tmp_path/'pool')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'cvdd_nb.distributed',
           'recover', '--pool', str(tmp_path/'pool'), '--dataset', 'digits', '--out', str(tmp_path/'r'), '--quiet',
           '--set', 'ipc=2', '--set', 'iterations=4', '--set', 'min_scale=0.5']
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1', CVDD_PROGRESS='0'), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert '2 process(es)' in p.stdout
    one = recover(pool, data, ipc=2, iterations=4, min_scale=0.5, quiet=True)
    assert torch.equal(Recovered.load(tmp_path/'r').images, one.images)
    bad = subprocess.run([sys.executable, '-m', 'cvdd_nb.distributed', 'recover', '--pool', str(tmp_path/'pool'), '--dataset', 'digits',
                          '--out', str(tmp_path/'x'), '--set', 'schedule=pair'], capture_output=True, text=True, timeout=120)
    fct.test_eq(bad.returncode, 2); assert 'pairs, random, fixed, top' in bad.stderr
