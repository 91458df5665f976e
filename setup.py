"Package metadata comes from settings.ini (nbdev 2 convention); edit there, not here."
from configparser import ConfigParser
import shlex, setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
for k in 'version description keywords author author_email license min_python lib_name lib_path user'.split():
    assert k in cfg, f'settings.ini is missing `{k}`'

licenses = dict(apache2='Apache-2.0', mit='MIT', bsd3='BSD-3-Clause')
reqs = shlex.split(cfg.get('requirements', '')) + shlex.split(cfg.get('pip_requirements', ''))
dev = shlex.split(cfg.get('dev_requirements', ''))

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    keywords=cfg['keywords'], author=cfg['author'], author_email=cfg['author_email'],
    license=licenses.get(cfg['license'], cfg['license']), url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True, python_requires='>=' + cfg['min_python'],
    install_requires=reqs, extras_require={'dev': dev}, zip_safe=False,
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Science/Research',
                 'Programming Language :: Python :: 3', 'Topic :: Scientific/Engineering :: Artificial Intelligence'],
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
