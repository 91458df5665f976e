"Project-level checks: packaging metadata, README, notebooks, CLI entry point."
import configparser, json, subprocess, sys
from pathlib import Path
import fastcore.test as fct
import cvdd_nb

ROOT = Path(__file__).resolve().parent.parent

def test_version_matches_settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    fct.test_eq(cvdd_nb.__version__, cfg['DEFAULT']['version'])

def test_readme_in_sync():
    r = subprocess.run([sys.executable, 'tools/make_readme.py', '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout

def test_readme_has_exactly_two_setup_commands():
    text = (ROOT/'README.md').read_text()
    block = text.split('```bash', 1)[1].split('```', 1)[0]
    cmds = [l.split('#')[0].strip() for l in block.strip().splitlines() if l.split('#')[0].strip()]
    fct.test_eq(cmds, ['make demo', 'make test'])

def test_notebooks_have_no_widget_state():
    r = subprocess.run([sys.executable, 'tools/check_notebooks.py'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout

def test_widget_state_check_can_fail(tmp_path):
    sys.path.insert(0, str(ROOT/'tools'))
    import check_notebooks
    nb = dict(cells=[dict(cell_type='code', source='', metadata={}, outputs=[dict(output_type='display_data',
              data={'application/vnd.jupyter.widget-view+json': {}}, metadata={})])], metadata={'widgets': {}}, nbformat=4, nbformat_minor=5)
    (tmp_path/'x.ipynb').write_text(json.dumps(nb))
    fct.test_eq(len(check_notebooks.problems(tmp_path/'x.ipynb')), 2)

def test_every_notebook_is_exported_or_a_tutorial():
    mods = {p.stem for p in (ROOT/'cvdd_nb').glob('*.py')}
    for nb in sorted((ROOT/'nbs').glob('[0-9]*.ipynb')):
        src = json.loads(nb.read_text())['cells'][0]['source']
        src = src if isinstance(src, str) else ''.join(src)
        assert 'default_exp' in src, f'{nb.name} does not start with #| default_exp'
        assert src.split('default_exp')[1].split()[0] in mods, f'{nb.name} is not exported: run nbdev_export'

def test_cli_help_runs():
    exe = Path(sys.executable).parent/'cvdd'         # the console script `pip install` made
    assert exe.exists(), 'cvdd is not installed: pip install -e .'
    for args in (['--help'], ['experts', 'train', '--help']):
        r = subprocess.run([str(exe), *args], capture_output=True, text=True)
        fct.test_eq(r.returncode, 0); assert '--help' in r.stdout or 'usage' in r.stdout
    r = subprocess.run([str(exe), 'experts', 'list', '/nonexistent/pool'], capture_output=True, text=True)
    fct.test_eq(r.returncode, 2); assert 'holds no pool.json' in r.stderr and 'Traceback' not in r.stderr
