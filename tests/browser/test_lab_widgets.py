"""Proof in a real browser: JupyterLab + headless Debian chromium (driven by PyPI playwright) runs the
quickstart tutorial (a copy, in a temporary folder) and checks what the page shows:

- the RecoverWatcher's grid picture (<img class="cvdd-grid">) changes while the recover cell is running,
- the VoteInspector's vote bars render and the weights read from the page sum to 1,
- no cell wrote to stderr (or raised).

Screenshots go to $CVDD_ARTIFACTS (default: tests/browser/artifacts/, which git ignores).
Skipped, saying why, only when chromium, playwright or jupyterlab cannot be found. Needs:
    apt-get install -y chromium ; pip install jupyterlab playwright   (never `playwright install`)"""
import hashlib, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT/'nbs'/'tutorials'/'01_quickstart.ipynb'
CHROMIUM = shutil.which('chromium') or ('/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
DEADLINE = 150          # seconds: a guard against hangs (a run takes about 45 s on 2 idle cores)

def _missing():
    if CHROMIUM is None: return 'chromium not found (Debian: apt-get install -y chromium)'
    for mod, pkg in (('playwright.sync_api', 'playwright'), ('jupyterlab', 'jupyterlab'), ('ipykernel', 'ipykernel')):
        try: __import__(mod)
        except ImportError: return f'{pkg} is not installed (pip install jupyterlab playwright; never `playwright install`)'
    return None

pytestmark = pytest.mark.skipif(_missing() is not None, reason=f'browser check skipped: {_missing()}')

def _port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _get(url:str, data:bytes|None=None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method='POST' if data is not None else 'GET'), timeout=5) as r:
        return r.status, r.read()

def _settings(d:Path):
    "User settings: render every cell (no virtual scrolling), no news or update checks."
    for ext, body in (('@jupyterlab/notebook-extension/tracker', {'windowingMode': 'none'}),
                      ('@jupyterlab/apputils-extension/notification', {'fetchNews': 'false', 'checkForUpdates': False})):
        p = d/f'{ext}.jupyterlab-settings'; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps(body))

def _cell_indices(nb:dict):
    "(index of the recover cell, of the code cell before it, of the last code cell) among all cells."
    code = [i for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']
    src = lambda i: ''.join(nb['cells'][i]['source'])
    rec = next(i for i in code if 'callbacks=[watcher' in src(i))
    return rec, max(i for i in code if i < rec), code[-1]

def _kill_ours(srv:subprocess.Popen, tmp:Path):
    "Stop the server's process group and any kernel it started (found by our private runtime folder), by pid."
    if srv.poll() is None:
        try: os.killpg(srv.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: srv.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL); srv.wait(5)
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: cmd = (p/'cmdline').read_bytes().decode(errors='replace')
        except OSError: continue
        if str(tmp) in cmd and int(p.name) != os.getpid():
            try: os.kill(int(p.name), signal.SIGKILL)
            except ProcessLookupError: pass

POLL_JS = """([rec, prev, last]) => {
  const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
  const prompt = i => (cells[i]?.querySelector('.jp-InputPrompt')?.textContent || '').trim();
  const img = document.querySelector('.jp-OutputArea-output img.cvdd-grid');
  const err = document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]');
  return {rec: prompt(rec), prev: prompt(prev), last: prompt(last), src: img ? img.getAttribute('src') : null,
          status: document.querySelector('.cvdd-status')?.textContent || '', errors: Array.from(err).map(e => e.textContent.slice(0, 500))};
}"""

HASH_JS = """async (src) => {
  try { const b = new Uint8Array(await (await fetch(src)).arrayBuffer());
        const h = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', b))).map(x => x.toString(16).padStart(2, '0')).join('');
        return {sig: Array.from(b.slice(0, 8)), hash: h}; }
  catch (e) { return null; }
}"""

VOTES_JS = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output table.cvdd-votes tr')).slice(1).map(tr => {
  const bar = tr.querySelector('.cvdd-bar'), td = bar.parentElement, cs = getComputedStyle(td);
  const inner = td.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  return {name: tr.cells[0].textContent, w: parseFloat(tr.querySelector('.cvdd-w').textContent), used: parseFloat(tr.cells[4].textContent),
          bar: bar.getBoundingClientRect().width, inner: inner, visible: bar.getBoundingClientRect().height > 0};
})"""

def test_quickstart_widgets_in_jupyterlab():
    from playwright.sync_api import sync_playwright
    t_start = time.monotonic()
    art = Path(os.environ.get('CVDD_ARTIFACTS') or ROOT/'tests'/'browser'/'artifacts'); art.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='cvdd-lab-'))
    work = tmp/'nbs'; work.mkdir()
    shutil.copy(NOTEBOOK, work/NOTEBOOK.name)           # JupyterLab may autosave: never on the tracked file
    _settings(tmp/'settings')
    nb = json.loads(NOTEBOOK.read_text()); idx = _cell_indices(nb)
    port = _port()
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp/'cfg'), 'JUPYTER_RUNTIME_DIR': str(tmp/'rt'),
           'JUPYTERLAB_SETTINGS_DIR': str(tmp/'settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(tmp/'ws'),
           'CVDD_PROGRESS': '0', 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    log = open(tmp/'server.log', 'wb')
    srv = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--allow-root',
                            '--IdentityProvider.token=', '--ServerApp.password=', '--ServerApp.disable_check_xsrf=True',
                            f'--ServerApp.root_dir={work}', '--LabApp.news_url=None',
                            '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate', '--LabApp.expose_app_in_browser=True'],
                           cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            try:
                if _get(f'http://127.0.0.1:{port}/api/status')[0] == 200: break
            except OSError: pass
            assert srv.poll() is None, (tmp/'server.log').read_text()[-3000:]
            time.sleep(0.2)
        else: pytest.fail('JupyterLab did not answer within 60 s:\n' + (tmp/'server.log').read_text()[-3000:])

        marks = {'server': time.monotonic() - t_start}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                page = browser.new_page(viewport={'width': 1500, 'height': 1150})
                page.goto(f'http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}', timeout=60_000)
                page.wait_for_function('window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel', timeout=60_000)
                # execute() returns a promise that settles when the command is done: do not wait for it
                page.evaluate("() => { window.jupyterapp.commands.execute('application:toggle-left-area'); return 1; }")
                page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return 1; }")
                marks['kernel'] = time.monotonic() - t_start

                # sample the grid while the recover cell runs: prompt of the recover cell "[*]", the one before it done
                seen, running_hashes, shot_running, state, trace = set(), set(), False, {}, []
                while time.monotonic() - t_start < DEADLINE - 15:
                    state = page.evaluate(POLL_JS, list(idx))
                    trace.append((round(time.monotonic() - t_start, 1), state['prev'], state['rec'], state['last'], (state['src'] or '')[-12:]))
                    assert not state['errors'], f"a cell wrote to stderr or raised: {state['errors']}"
                    running = state['rec'] == '[*]:' and re.fullmatch(r'\[\d+\]:', state['prev']) is not None
                    if running: marks.setdefault('recover', time.monotonic() - t_start)
                    elif 'recover' in marks: marks.setdefault('recovered', time.monotonic() - t_start)
                    if running and state['src'] and state['src'] not in seen:
                        seen.add(state['src'])
                        h = page.evaluate(HASH_JS, state['src'])
                        if h is not None:
                            assert bytes(h['sig']) == b'\x89PNG\r\n\x1a\n', h['sig']
                            running_hashes.add(h['hash'])
                        if len(running_hashes) == 3 and not shot_running:
                            page.locator('img.cvdd-grid').evaluate("e => e.scrollIntoView({block: 'start'})")
                            page.screenshot(path=str(art/'lab_widgets_running.png')); shot_running = True
                    if re.fullmatch(r'\[\d+\]:', state['last']): marks['done'] = time.monotonic() - t_start; break
                    page.wait_for_timeout(150)
                else:
                    page.screenshot(path=str(art/'lab_widgets_timeout.png'))
                    pytest.fail(f'the quickstart did not finish in time; last state {state}')

                assert len(running_hashes) >= 2, f'the grid picture did not change while recover ran ({len(running_hashes)} distinct pictures, {len(seen)} srcs); trace {trace[::max(1, len(trace) // 40)]}'
                page.wait_for_timeout(500)
                state = page.evaluate(POLL_JS, list(idx))
                assert not state['errors'], f"a cell wrote to stderr or raised: {state['errors']}"
                assert 'finished' in state['status'], state['status']

                votes = page.evaluate(VOTES_JS)
                assert len(votes) == 2, votes                                   # committees of two
                assert abs(sum(v['w'] for v in votes) - 1) < 2e-3, votes
                for v in votes:
                    assert v['visible'] and v['inner'] > 0, v
                    assert abs(v['w'] - v['used']) < 2e-4, v                    # the slider is back at the run's T
                    assert abs(v['bar'] / v['inner'] - v['w']) < 0.02 or (v['w'] < 0.01 and v['bar'] <= 2), v   # bar length = weight
                assert page.locator('img.cvdd-votes-plot').count() == 1
                assert page.locator('img.cvdd-results-chart').count() == 2      # section 5's table, section 7's settings vs defaults

                page.locator('img.cvdd-grid').evaluate("e => e.scrollIntoView({block: 'start'})")
                page.wait_for_timeout(300)
                page.screenshot(path=str(art/'lab_widgets.png'))
                print(f'browser check: {len(running_hashes)} distinct grid pictures while recover ran; votes {votes}; '
                      f'screenshots in {art}; seconds since start: ' + ', '.join(f'{k} {v:.0f}' for k, v in marks.items()))
            finally:
                browser.close()
    finally:
        try: _get(f'http://127.0.0.1:{port}/api/shutdown', b'')       # stops the kernels, then the server
        except OSError: pass
        try: srv.wait(10)
        except subprocess.TimeoutExpired: pass
        _kill_ours(srv, tmp)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
