"""Resume is proven by counting work, not by comparing bits: a run that silently started over would be deterministic too.
Each resumed call must do exactly the work that was left (optimisation steps, epochs labelled, student epochs), and a
damaged checkpoint is reported by a warning that names the file, with the work it costs counted."""
import warnings
import pytest, torch
from cvdd_nb.core import counting
from cvdd_nb.recover import StopRecover, recover
from cvdd_nb.relabel import relabel
from cvdd_nb.evaluate import train_student
from cvdd_nb.relabel import Augmenter

pytestmark = pytest.mark.usefixtures('one_thread')

SMALL = dict(ipc=2, iterations=30, min_scale=0.5, checkpoint_every=7, callback_every=1)   # 2 units x 30 steps, in sequence
TOTAL = 60

@pytest.fixture(scope='module')
def pool(data, make_pool): return make_pool(data, [('a', 'convnet', 0.25, 2, 0, None), ('b', 'resnet18', 0.125, 3, 1, None)])

@pytest.fixture(scope='module')
def full(pool, data): return recover(pool, data, SMALL, quiet=True)

def _recover(pool, data, out, **kw):
    "recover(...) and the optimisation steps this call ran."
    with counting() as c: r = recover(pool, data, SMALL, out=out, quiet=True, **kw)
    return r, c['recover_steps']

@pytest.mark.parametrize('stop', [1, 12, 30, 45])
def test_recover_resume_runs_only_the_steps_left(pool, data, full, tmp_path, stop):
    def cb(s):
        if s.done == stop: raise StopRecover()
    r, first = _recover(pool, data, tmp_path, callbacks=[cb])
    assert r is None and first == stop
    back, rest = _recover(pool, data, tmp_path)
    assert rest == TOTAL - stop, f'the resumed call ran {rest} steps, {TOTAL - stop} were left'
    assert torch.equal(back.images, full.images)
    again, none = _recover(pool, data, tmp_path)
    assert none == 0 and torch.equal(again.images, full.images)          # finished: loads, runs nothing

def test_recover_resume_after_a_crash_loses_only_the_steps_since_the_checkpoint(pool, data, full, tmp_path):
    def crash(s):
        if s.done == 40: raise RuntimeError('killed')                  # unit 1, step 10; its last checkpoint is step 7
    with counting() as c, pytest.raises(RuntimeError, match='killed'): recover(pool, data, SMALL, out=tmp_path, callbacks=[crash], quiet=True)
    assert c['recover_steps'] == 40
    r, three = _recover(pool, data, tmp_path, stop_after=3)
    assert r is None and three == 3                                   # steps 8-10 of unit 1 again (lost with the crash)
    back, rest = _recover(pool, data, tmp_path)
    assert rest == TOTAL - 40 and torch.equal(back.images, full.images)

def test_recover_damaged_checkpoints_are_named_and_redone(pool, data, full, tmp_path):
    r, first = _recover(pool, data, tmp_path, stop_after=40)          # unit k0 finished, unit k1 saved at its step 10
    assert r is None and first == 40
    ck = tmp_path/'checkpoint'
    (ck/'progress.safetensors').write_bytes(b'\0' * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always'); back, rest = _recover(pool, data, tmp_path)
    msgs = [str(w.message) for w in caught if 'unreadable' in str(w.message)]
    assert len(msgs) == 1 and 'progress.safetensors' in msgs[0] and 'starts over' in msgs[0], msgs
    assert rest == 30, rest                                           # unit k1 from step 0; k0 was read from its file
    assert torch.equal(back.images, full.images)
    r2, _ = _recover(pool, data, tmp_path/'two', stop_after=40)
    (tmp_path/'two'/'checkpoint'/'k0_c0.safetensors').write_bytes(b'\0' * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always'); back2, rest2 = _recover(pool, data, tmp_path/'two')
    msgs = [str(w.message) for w in caught if 'unreadable' in str(w.message)]
    assert len(msgs) == 1 and 'k0_c0.safetensors' in msgs[0] and 'optimised again' in msgs[0], msgs
    assert rest2 == 30 + 20, rest2                                    # k0 again; k1 from its step 10
    assert torch.equal(back2.images, full.images)

def _crash_at(monkeypatch, batch:int):
    "Make relabel fail on its `batch`-th labelled batch (counted over the whole call), as a power cut would."
    import cvdd_nb.relabel as RLM
    orig, n = RLM.compress_logits, [0]
    def dies(*a, **kw):
        n[0] += 1
        if n[0] == batch: raise RuntimeError('power cut')
        return orig(*a, **kw)
    monkeypatch.setattr(RLM, 'compress_logits', dies)
    return monkeypatch

RL = dict(epochs=6, batch_size=10)             # 30 images: 3 batches per epoch

def test_relabel_resume_labels_only_the_epochs_left(pool, data, xy, tmp_path, monkeypatch):
    x = xy[0]
    ref = relabel(x, pool, data.info, RL, quiet=True)
    with monkeypatch.context() as mp:
        _crash_at(mp, 4 * 3 + 2)                # 4 epochs of 3 batches labelled, then epoch 4 fails in its second batch
        with counting() as c, pytest.raises(RuntimeError, match='power cut'): relabel(x, pool, data.info, RL, out=tmp_path, quiet=True)
    assert c['relabel_epochs'] == 4
    with counting() as c: back = relabel(x, pool, data.info, RL, out=tmp_path, quiet=True)
    assert c['relabel_epochs'] == 2, c                                # epochs 4 and 5 only
    for k, v in ref.tensors.items(): assert torch.equal(back.tensors[k], v), k

def test_relabel_damaged_epoch_is_named_and_labelled_again(pool, data, xy, tmp_path, monkeypatch):
    x = xy[0]
    ref = relabel(x, pool, data.info, RL, quiet=True)
    with monkeypatch.context() as mp:
        _crash_at(mp, 4 * 3 + 2)
        with pytest.raises(RuntimeError, match='power cut'): relabel(x, pool, data.info, RL, out=tmp_path, quiet=True)
    bad = tmp_path/'partial'/'e0002.safetensors'; bad.write_bytes(bad.read_bytes()[:-30])
    with warnings.catch_warnings(record=True) as caught, counting() as c:
        warnings.simplefilter('always'); back = relabel(x, pool, data.info, RL, out=tmp_path, quiet=True)
    msgs = [str(w.message) for w in caught if 'unreadable' in str(w.message)]
    assert len(msgs) == 1 and 'e0002.safetensors' in msgs[0] and 'labelled again' in msgs[0], msgs
    assert c['relabel_epochs'] == 3, c                                # epoch 2 again, then 4 and 5
    for k, v in ref.tensors.items(): assert torch.equal(back.tensors[k], v), k

def test_student_resume_trains_only_the_epochs_left(data, xy, tmp_path):
    x, y = xy
    src, cfg = Augmenter(data.info, dict(epochs=6, batch_size=10)), dict(epochs=6, student='convnet', width=0.25)
    ref = train_student(x, y, data.info, src, cfg, hard=True, seed=3)
    import cvdd_nb.evaluate as EV
    orig, n = EV.student_epoch, [0]
    def dies(*a, **kw):
        n[0] += 1
        if n[0] == 5: raise RuntimeError('power cut')                 # in epoch 4: epochs 0-3 are checkpointed
        return orig(*a, **kw)
    EV.student_epoch = dies
    try:
        with counting() as c, pytest.raises(RuntimeError, match='power cut'): train_student(x, y, data.info, src, cfg, hard=True, seed=3, checkpoint=tmp_path/'s.pt')
    finally: EV.student_epoch = orig
    assert c['student_epochs'] == 4
    with counting() as c: back = train_student(x, y, data.info, src, cfg, hard=True, seed=3, checkpoint=tmp_path/'s.pt')
    assert c['student_epochs'] == 2, c
    assert [h['loss'] for h in back.history] == [h['loss'] for h in ref.history]
    for (k, a), b in zip(back.model.state_dict().items(), ref.model.state_dict().values()): assert torch.equal(a, b), k
    (tmp_path/'s.pt').write_bytes(b'PK\x03\x04 torn')                 # a damaged checkpoint: named, and the student trained again
    with warnings.catch_warnings(record=True) as caught, counting() as c:
        warnings.simplefilter('always'); again = train_student(x, y, data.info, src, cfg, hard=True, seed=3, checkpoint=tmp_path/'s.pt')
    msgs = [str(w.message) for w in caught if 'unreadable' in str(w.message)]
    assert len(msgs) == 1 and 's.pt' in msgs[0] and 'from epoch 0' in msgs[0], msgs
    assert c['student_epochs'] == 6
    assert [h['loss'] for h in again.history] == [h['loss'] for h in ref.history]
