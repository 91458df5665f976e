"""The library's shape (issue 18): chapters at the quickstart's pace, one code path for one process and many, shared
helpers once. Each test reads the sources, so a change that undoes the structure fails here."""
import ast, json, re, statistics
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT/'cvdd_nb'
CHAPTERS = ['04_recover', '04a_committee', '04b_augment', '05_relabel']

def code_cells(name:str)->list:
    nb = json.loads((ROOT/'nbs'/f'{name}.ipynb').read_text())
    return [''.join(c['source']) if isinstance(c['source'], list) else c['source'] for c in nb['cells'] if c['cell_type'] == 'code']

def definitions(src:str)->int:
    "Top-level def/class statements of a cell (a @patch method counts as one)."
    return sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for n in ast.parse('\n'.join(l for l in src.split('\n') if not l.startswith('#|'))).body)

@pytest.mark.parametrize('name', CHAPTERS)
def test_chapter_cells_are_small(name):
    "Median code cell <= 8 lines, none over 30."
    lines = [len(s.splitlines()) for s in code_cells(name)]
    assert statistics.median(lines) <= 8, statistics.median(lines)
    assert max(lines) <= 30, [(i, n) for i, n in enumerate(lines) if n > 30]

@pytest.mark.parametrize('name', CHAPTERS)
def test_one_definition_per_export_cell_then_a_demonstration(name):
    cells = code_cells(name)
    exports = [i for i, s in enumerate(cells) if s.startswith('#| export')]
    assert all(definitions(cells[i]) <= 1 for i in exports), [i for i in exports if definitions(cells[i]) > 1]
    body = [i for i in exports if definitions(cells[i]) == 1]
    no_demo = [i for i in body if i + 1 < len(cells) and cells[i + 1].startswith(('#| export', '#| hide'))]
    assert not no_demo, [cells[i].split('\n')[1][:60] for i in no_demo]

def test_distributed_imports_no_private_name():
    tree = ast.parse((LIB/'distributed.py').read_text())
    private = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names if a.name.startswith('_')]
    assert not private, private

def test_distributed_holds_no_copy_of_a_stage_loop():
    "The distributed functions call the single-process stages; none runs its own loop over units, epochs or batches."
    src = (LIB/'distributed.py').read_text()
    for loop in ('run_group(', 'student_epoch(', '_train_epoch(', 'aug.plan(', 'compress_logits('):
        assert loop not in src, loop

def test_helpers_exist_once():
    lib = {p.name: p.read_text() for p in LIB.glob('*.py') if p.name != '_modidx.py'}
    count = lambda pat: sum(len(re.findall(pat, s, re.M)) for s in lib.values())
    assert count(r'^def resolve_flip\(') == 1 and count(r'^FLIPS = ') == 0
    assert count(r'^def parse_arch_spec\(') == 1
    assert not any(re.search(r"\.r?partition\(':'\)", lib[n]) for n in ('pipeline.py', 'cli.py'))   # arch specs: parse_arch_spec
    assert count(r'isinstance\(config, \w+\) else \w+\.from_dict') == 1          # Config.coerce itself; the rest call it
    assert count(r"channels_last == 'auto' else") == 0                             # resolve_auto instead
    assert count(r'^def (mixed_)?committee_loss\(') == 1
    assert count(r'^def write_\w+_fixture\(') == 3 and all('_fixture(' not in re.sub(r'#.*', '', s) for n, s in lib.items()
                                                            if n in ('data.py', 'recover.py', 'relabel.py'))

def test_no_line_over_120_characters():
    """Library code lines fit in 120 characters (852 did not before issue 18). Not counted, as nbdev generates them:
    the module docstring (a chapter's one-line description) and the `__all__` list."""
    long = []
    for p in LIB.glob('*.py'):
        if p.name == '_modidx.py': continue
        lines, in_all = p.read_text().split('\n'), False
        for i, l in enumerate(lines):
            in_all = l.startswith('__all__') or (in_all and l.startswith(' '))
            if len(l) > 120 and not in_all and not (l.startswith('"""') and i < 3): long.append(f'{p.name}:{i + 1}')
    assert not long, long
