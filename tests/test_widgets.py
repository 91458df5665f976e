"Trait-level tests of cvdd_nb.widgets: values, callbacks, PNG bytes; no browser, no kernel."
import re

import ipywidgets as W
import pytest
import torch
import fastcore.test as fct

from cvdd_nb.data import load_dataset
from cvdd_nb.experts import ExpertPool, train_expert
from cvdd_nb.committee import vote_weights
from cvdd_nb.recover import History, RecoverConfig, recover
from cvdd_nb.evaluate import EvalResult, ResultsTable
from cvdd_nb.plots import PNG_SIGNATURE, fig_png, grid_figure, grid_png
from cvdd_nb.widgets import PoolView, RecoverWatcher, ResultsView, VoteInspector, pool_figure, pool_rows, votes_figure, votes_html

@pytest.fixture(scope='module')
def setup():
    data = load_dataset('digits')
    pool = ExpertPool([train_expert('convnet', data, dict(epochs=2), width=0.25, seed=0, name='a', quiet=True),
                       train_expert('convnet', data, dict(epochs=2), width=0.5, seed=1, name='b', arch_kw=dict(depth=2), quiet=True),
                       train_expert('convnet', data, dict(epochs=1), width=0.25, seed=2, name='c', quiet=True)])
    return data, pool

def _leaves(w):
    yield w
    for c in getattr(w, 'children', ()): yield from _leaves(c)

def _shown(v): return [float(s) for s in re.findall(r'class="cvdd-w"[^>]*>([0-9.]+)<', v.table.value)]

def test_png_twins():
    x = torch.rand(6, 3, 8, 8)
    fct.test_eq(grid_png(x, 2)[:8], PNG_SIGNATURE)
    fct.test_ne(grid_png(x, 2), grid_png(x.flip(0), 2))
    fct.test_eq(grid_png(x, 3), fig_png(grid_figure(x, 3)))                    # deterministic bytes
    fct.test_fail(lambda: grid_figure(x, 4), contains='do not fill rows')
    fct.test_eq(len(votes_figure(['a', 'b'], [1.0, 2.0], 1.0).axes), 1)

def test_watcher_live_scrub_zoom(setup):
    data, pool = setup
    cfg = RecoverConfig(ipc=2, iterations=20, callback_every=2, min_scale=0.5)
    w, seen = RecoverWatcher(data.info, 2, every=4), []
    blank = w.image.value
    probe = lambda s: seen.append((s.done, bytes(w.image.value)))             # runs after the watcher, during recover
    rec = recover(pool, data, cfg, callbacks=[w, probe], quiet=True)
    assert len({b for _, b in seen}) >= 8, 'the grid did not keep changing while recover ran'
    assert all(b[:8] == PNG_SIGNATURE for _, b in seen) and seen[0][1] != blank
    fct.test_eq([f['done'] for f in w.frames], [2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40])
    fct.test_eq((w.frame.max, w.frame.value, w.draws), (10, 10, 11))
    fct.test_close(w.image_of(-1), rec.images01(), eps=0.5 / 255 + 1e-6)
    fct.test_eq(w.image.value, grid_png(w.image_of(-1), 2, data.info.class_names, cell=w.cell))   # widget == static twin
    assert "<span class='cvdd-iter'>20</span> / 20" in w.status.value and 'finished' in w.status.value
    assert re.search(r"cvdd-lr'>[0-9.e-]+<", w.status.value) and re.search(r"cvdd-loss'>[0-9.]+<", w.status.value)
    last = w.image.value
    w.frame.value = 0
    fct.test_ne(w.image.value, last)
    assert "<span class='cvdd-iter'>2</span> / 20" in w.status.value and 'running' in w.status.value
    fct.test_eq((w.image_of(0).view(10, 2, -1)[:, 1] == 1).all(), True)      # IPC index 1 not started yet
    w.pick.value = 7
    fct.test_eq(w.zoom.layout.display, None); fct.test_eq(w.zoom.value[:8], PNG_SIGNATURE)
    z = w.zoom.value; w.frame.value = 10
    fct.test_ne(w.zoom.value, z)
    w.pick.value = -1; fct.test_eq(w.zoom.layout.display, 'none')
    assert not any(isinstance(x, W.Output) for x in _leaves(w.widget))       # pictures are Image bytes, never Output captures

def test_watcher_frames_bounded_and_new_run(setup):
    data, pool = setup
    w = RecoverWatcher(data.info, 1, every=1, max_frames=4)
    recover(pool, data, RecoverConfig(ipc=1, iterations=12, callback_every=1), callbacks=[w], quiet=True)
    assert len(w.frames) <= 4 and w.frames[-1]['done'] == 12
    recover(pool, data, RecoverConfig(ipc=1, iterations=3, callback_every=1), callbacks=[w], quiet=True)
    fct.test_eq([f['done'] for f in w.frames], [1, 2, 3])

def test_vote_inspector(setup):
    data, pool = setup
    cfg = RecoverConfig(ipc=3, iterations=10, callback_every=1, min_scale=0.5)
    vi, hist = VoteInspector.from_config(pool, cfg, every=5), History()
    fct.test_eq(vi.temp.value, 5.0)
    rec = recover(pool, data, cfg, callbacks=[vi, hist], quiet=True)
    fct.test_eq(vi.k.value, 2)                                               # followed the run
    fct.test_eq(vi.terms_of(0)['step'], list(range(1, 11))); fct.test_eq(vi.terms_of(0)['bn'].shape, (10, 2))
    for k in range(3):
        vi.k.value = k
        pri = [pool[n].meta.test_acc for n in vi.names]
        fct.test_eq(vi.names, rec.committee[k])
        fct.test_close(vi.weights, rec.weights[k], eps=1e-6)                 # at the run's T: the weights it used
        for T in vi.temp.options:
            vi.temp.value = T[1]
            fct.test_close(vi.weights.sum(), 1.0, eps=1e-6)
            fct.test_close(vi.weights, torch.softmax(torch.tensor(pri, dtype=torch.float64) / T[1], 0).float(), eps=1e-6)
            fct.test_close(_shown(vi), vi.weights.tolist(), eps=1e-4)
            fct.test_close(sum(_shown(vi)), 1.0, eps=3e-4)
        vi.reset_t.click()
    png, tab = vi.plot.value, vi.table.value
    vi.temp.value = 0.5
    fct.test_ne(vi.plot.value, png); fct.test_ne(vi.table.value, tab)
    fct.test_eq(vi.plot.value, fig_png(votes_figure(vi.names, [vi.priors[n] for n in vi.names], 0.5, vi.entry['weights'], vi.terms_of(), 'IPC index 2')))
    v2 = VoteInspector.from_recovered(rec, hist)
    for k in range(3): fct.test_close(v2.terms_of(k)['ce'], vi.terms_of(k)['ce'], eps=1e-6)
    fct.test_fail(lambda: VoteInspector(rec.votes(), dict(a=1.0)), contains="no prior for ['b', 'c']")

def test_votes_html():
    h = votes_html(['x', 'y'], [1.0, 3.0], vote_weights([1.0, 3.0], 2.0), 2.0, [0.5, 0.5])
    fct.test_close([float(v) for v in re.findall(r'class="cvdd-w"[^>]*>([0-9.]+)<', h)], vote_weights([1.0, 3.0], 2.0).tolist(), eps=1e-4)
    fct.test_eq(h.count('class="cvdd-bar"'), 2)

def test_pool_view(setup):
    data, pool = setup
    pv = PoolView(pool, [10.0, 20.0, 30.5])
    for e in pool: assert f'>{e.name}<' in pv.html.value and f'>{e.meta.params:,}<' in pv.html.value and f'>{e.meta.test_acc:.1f}<' in pv.html.value
    assert '>30.50<' in pv.html.value
    pv.update()
    fct.test_eq([r['prior'] for r in pv.rows], [e.meta.test_acc for e in pool])
    fct.test_eq(len(pool_figure(pool_rows(pool)).axes[0].tables[0].get_celld()), 4 * 7)
    fct.test_fail(lambda: PoolView(pool, [1.0]), contains='1 priors for 3 experts')

def test_results_view():
    tab = ResultsTable([EvalResult('cvdd', [70.0, 72.0], [0, 1], student='convnet', ipc=2, epochs=5),
                        EvalResult('random_soft', [60.0, 61.0], [0, 1], student='convnet', ipc=2, epochs=5),
                        EvalResult('random_hard', [50.0, 52.0], [0, 1], 'hard', student='convnet', ipc=2, epochs=5)], 'tiny')
    rv = ResultsView(tab)
    assert '>cvdd<' in rv.html.value and '>71.00 ± 1.41<' in rv.html.value and '>+10.50<' in rv.html.value
    assert '>random_hard (baseline)<' in rv.html.value
    fct.test_eq(rv.chart.value, fig_png(tab.plot(), 80))                     # widget == static twin
    c = rv.chart.value
    rv.update(ResultsTable(tab.results[1:]))
    fct.test_ne(rv.chart.value, c); assert '>cvdd<' not in rv.html.value


def test_headless_imports_no_widgets():
    "The pipeline and the CLI draw their reports with cvdd_nb.plots: a headless run never loads ipywidgets."
    import subprocess, sys
    code = "import sys, cvdd_nb.pipeline, cvdd_nb.cli, cvdd_nb.plots; assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True); assert r.returncode == 0, r.stderr[-2000:]
