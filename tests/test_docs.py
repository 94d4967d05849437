"""The documentation names only things that exist: README.md, docs/*.md and BENCHMARKS.md are parsed and every
config file, `python -m` module, `hatnet-*` console script, repository path and relative link they mention is
checked against the working tree. Fast: nothing is run or imported beyond `importlib.util.find_spec`.

A failure lists each offender as `FILE:LINE: text`.
"""
import glob
import importlib.util
import os
import re
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 250


def _doc_files() -> list[str]:
  files = ['README.md', 'BENCHMARKS.md'] + sorted(os.path.relpath(p, ROOT)
                                                  for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
  return [f for f in files if os.path.exists(os.path.join(ROOT, f))]


DOCS = _doc_files()


def _read(doc: str) -> str:
  with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
    return f.read()


def _matches(pattern: str, flags=0):
  """(doc, line number, the line's text, match) for every match of `pattern` in every doc."""
  for doc in DOCS:
    text = _read(doc)
    for m in re.finditer(pattern, text, flags):
      line = text.count('\n', 0, m.start()) + 1
      yield doc, line, text.splitlines()[line - 1].strip(), m


def _report(bad: list[str], what: str) -> str:
  return f'{len(bad)} {what}:\n' + '\n'.join(bad)


def test_the_docs_are_found():
  assert {'README.md', 'BENCHMARKS.md'} <= set(DOCS)
  assert any(d.startswith('docs' + os.sep) for d in DOCS), 'no docs/*.md found'


def test_config_flags_name_existing_files():
  """(a) every `--config=configs/....py` (a `:arg` suffix stripped) exists."""
  bad, seen = [], 0
  for doc, line, text, m in _matches(r'--config=(configs/[\w/.-]+?\.py)(?::[\w,.-]*)?(?![\w/])'):
    seen += 1
    if not os.path.isfile(os.path.join(ROOT, m.group(1))):
      bad.append(f'{doc}:{line}: {m.group(1)} does not exist: {text}')
  assert seen, 'no --config=configs/... found in the docs'
  assert not bad, _report(bad, 'config files that do not exist')


def test_python_m_modules_exist():
  """(b) every `python -m MODULE` is a module that importlib finds (the repo root is on sys.path)."""
  bad, seen = [], set()
  for doc, line, text, m in _matches(r'python3?\s+-m\s+([A-Za-z_][\w.]*)'):
    module = m.group(1).rstrip('.')
    seen.add(module)
    try:
      found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as e:  # a missing parent package
      found, why = False, f'{type(e).__name__}: {e}'
    else:
      why = 'not found'
    if not found:
      bad.append(f'{doc}:{line}: python -m {module}: {why}: {text}')
  assert 'hatnet_jax.tools.predict' in seen and 'hatnet_jax.sweep' in seen, sorted(seen)
  assert not bad, _report(bad, '`python -m` modules that do not exist')


def _project() -> dict:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


_SHORTHAND_PAGES = ('README.md', os.path.join('docs', 'tools.md'))


def test_console_scripts_are_declared():
  """(c) every `hatnet-*` console script mentioned is in pyproject.toml's [project.scripts], and only the pages
  that list the shorthand mention one; `hatnet-jax` is the distribution's name."""
  project = _project()
  scripts = set(project.get('scripts', {}))
  bad = []
  for doc, line, text, m in _matches(r'(?<![\w/.-])(hatnet-[a-z][a-z0-9-]*[a-z0-9])(?![\w/-])'):
    name = m.group(1)
    if name == project['name']:
      continue
    if name not in scripts:
      bad.append(f'{doc}:{line}: {name} is not in [project.scripts] ({sorted(scripts)}): {text}')
    elif doc not in _SHORTHAND_PAGES:
      bad.append(f'{doc}:{line}: {name}: the docs spell commands `python -m ...`; console scripts are listed '
                 f'only in {", ".join(_SHORTHAND_PAGES)}: {text}')
  assert not bad, _report(bad, 'console scripts that pyproject.toml does not declare')


def test_every_console_script_is_documented_once_as_shorthand():
  """The docs spell commands `python -m ...`; the console scripts are listed in README.md and docs/tools.md."""
  scripts = set(_project().get('scripts', {}))
  for doc in _SHORTHAND_PAGES:
    text = _read(doc)
    missing = sorted(s for s in scripts if not re.search(rf'`{re.escape(s)}`', text))
    assert not missing, f'{doc} does not list the console scripts {missing}'


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: markdown marks dropped, lower case, punctuation removed, spaces -> '-'."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links keep their text
  text = text.strip().lower()
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(path: str) -> set[str]:
  """The heading anchors of a markdown file (fenced code skipped; repeated headings get -1, -2, ...)."""
  anchors, counts, fenced = set(), {}, False
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.lstrip().startswith('```'):
        fenced = not fenced
        continue
      m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
      if m and not fenced:
        slug = _slug(m.group(1))
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f'{slug}-{n}')
  return anchors


def test_relative_links_point_to_files_in_the_repo():
  """(d) every relative markdown link `[text](path)` names an existing file (and, with `#anchor` into a
  markdown file, an existing heading)."""
  bad, seen = [], 0
  for doc, line, text, m in _matches(r'\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)'):
    target = m.group(1)
    if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
      continue
    seen += 1
    path, _, anchor = target.partition('#')
    full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
    if not full.startswith(ROOT + os.sep):
      bad.append(f'{doc}:{line}: {target} leaves the repository: {text}')
    elif not os.path.exists(full):
      bad.append(f'{doc}:{line}: {target}: {os.path.relpath(full, ROOT)} does not exist: {text}')
    elif anchor and full.endswith('.md') and anchor not in _anchors(full):
      bad.append(f'{doc}:{line}: {target}: no heading #{anchor} in {os.path.relpath(full, ROOT)}: {text}')
  assert seen, 'no relative links found in the docs'
  assert not bad, _report(bad, 'relative links to nothing')


# A repository path: one of these folders, then path characters; it must end in a file name with an
# extension or in '/'. A path followed by '*', '{' or '<' is a pattern or a placeholder, not checked.
_PATH = re.compile(r'(?<![\w./~$-])((?:benchmarks|configs|docs|hatnet_jax|tests)/(?:[\w.-]+/)*(?:[\w-]+\.\w+)?)'
                   r'(?![\w*{<])')


def test_repository_paths_exist():
  """(e) every `benchmarks/*.py` and `configs/*.py` path mentioned exists; so does every other path into
  hatnet_jax/, tests/ or docs/ (a file, or a folder written with its trailing '/')."""
  bad, seen = [], set()
  for doc, line, text, m in _matches(_PATH.pattern):
    path = m.group(1)
    if not (path.endswith('/') or re.search(r'\.\w+$', path)):
      continue  # e.g. `configs/hatnet_` of `configs/hatnet_*.py`
    path = path.split(':')[0]
    seen.add(path)
    if not os.path.exists(os.path.join(ROOT, path)):
      bad.append(f'{doc}:{line}: {path} does not exist: {text}')
  assert any(p.startswith('benchmarks/') for p in seen) and any(p.startswith('configs/') for p in seen), seen
  assert not bad, _report(bad, 'paths that do not exist')


def _defines(module_file: str, name: str) -> bool:
  with open(module_file, encoding='utf-8') as f:
    source = f.read()
  return re.search(rf'^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]|\bimport\b[^\n]*\b{name}\b', source, re.M) is not None


def test_dotted_package_names_exist():
  """Every `hatnet_jax.a.b.name` names a module, or a function/class/constant defined in one."""
  bad = []
  for doc, line, text, m in _matches(r'(?<![\w./])hatnet_jax(?:\.[A-Za-z_]\w*)+'):
    parts = m.group(0).split('.')
    n, module_file = 1, os.path.join(ROOT, 'hatnet_jax', '__init__.py')
    while n < len(parts) and os.path.isdir(os.path.join(ROOT, *parts[:n])):  # walk the packages on disk
      package = os.path.join(ROOT, *parts[:n + 1])
      if os.path.isfile(os.path.join(package, '__init__.py')):
        module_file = os.path.join(package, '__init__.py')
      elif os.path.isfile(package + '.py'):
        module_file = package + '.py'
      else:
        break
      n += 1
    rest = parts[n:]
    ok = not rest or (len(rest) == 1 and _defines(module_file, rest[0]))
    if not ok:
      bad.append(f'{doc}:{line}: {m.group(0)}: {".".join(rest)} is not defined in {".".join(parts[:n])}: {text}')
  assert not bad, _report(bad, 'dotted names that do not exist')


def test_readme_is_short():
  """(f) README.md stays an overview; the details live in docs/."""
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    n = sum(1 for _ in f)
  assert n <= README_MAX_LINES, f'README.md: {n} lines, more than {README_MAX_LINES}; move details to docs/'


@pytest.mark.parametrize('doc', [d for d in DOCS if d != 'BENCHMARKS.md'])
def test_test_command_is_the_documented_one(doc):
  """Where a page gives the quick test command, it is the one CI runs."""
  text = _read(doc)
  for m in re.finditer(r'python -m pytest[^`\n]*', text):
    cmd = m.group(0).strip()
    assert cmd in ('python -m pytest -q -m "not slow" tests', 'python -m pytest -q -m slow tests'), (
        f'{doc}:{text.count(chr(10), 0, m.start()) + 1}: unexpected test command: {cmd}')
