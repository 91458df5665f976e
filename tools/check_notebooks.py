#!/usr/bin/env python3
"""Fail when a notebook carries saved widget state or widget outputs (random model ids that churn diffs
and show dead widgets on GitHub). Clear the widget cells' outputs before committing."""
import json, sys
from pathlib import Path

def problems(path):
    nb, out = json.loads(Path(path).read_text()), []
    if 'widgets' in nb.get('metadata', {}): out.append('notebook metadata holds saved widget state ("widgets")')
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            if 'application/vnd.jupyter.widget-view+json' in o.get('data', {}): out.append(f'cell {i} has a widget output')
    return out

if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent/'nbs'
    bad = {str(p.relative_to(root.parent)): pr for p in sorted(root.rglob('*.ipynb'))
           if '.ipynb_checkpoints' not in p.parts and (pr := problems(p))}
    for p, pr in bad.items(): print(f'{p}: ' + '; '.join(pr))
    if bad: sys.exit('notebooks carry widget state: clear those outputs (and metadata.widgets) before committing')
    print(f'{len(list(root.rglob("*.ipynb")))} notebooks free of widget state')
