"""The architecture, checked on the source: imports flow one way through the layers, no module
cycle, no function over 120 lines, and only the run layer reads a config."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'neo_jax'
LAYERS = ('catalog', 'sid', 'tokenizer', 'model', 'tasks', 'train', 'decode', 'baselines',
          'eval', 'run')
MAX_LINES = 120


def _modules() -> dict[str, ast.Module]:
  out = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
    out[name.removesuffix('.__init__')] = ast.parse(path.read_text(), str(path))
  return out


def _imports(name: str, tree: ast.Module) -> set[str]:
  """neo_jax modules `name` imports (a `from package import module` counts as the module)."""
  found = set()
  package = name if name.count('.') == 1 and (PACKAGE / name.split('.')[1]).is_dir() else (
      name.rsplit('.', 1)[0])
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('neo_jax')}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      if base.startswith('neo_jax'):
        found.add(base)
        found |= {f'{base}.{a.name}' for a in node.names}
  return found


def _layer(module: str) -> str | None:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else None


def test_every_package_is_a_layer():
  packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / '__init__.py').exists()}
  assert packages == set(LAYERS)
  top = {p.name for p in PACKAGE.glob('*.py')}
  assert top == {'__init__.py'}, f'modules outside the layers: {sorted(top)}'


def test_imports_flow_one_way():
  rank = {n: i for i, n in enumerate(LAYERS)}
  modules = _modules()
  against = []
  for name, tree in modules.items():
    me = _layer(name)
    for dep in _imports(name, tree):
      layer = _layer(dep)
      if me in rank and layer in rank and rank[layer] > rank[me]:
        against.append(f'{name} imports {dep}')
  assert not against, against


def test_no_import_cycle():
  modules = _modules()
  graph = {name: {d for d in _imports(name, tree) if d in modules and d != name}
           for name, tree in modules.items()}
  # A package's __init__ re-exporting its own modules is not a cycle of code.
  graph = {n: {d for d in deps if not n.startswith(d + '.')} for n, deps in graph.items()}
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(graph[n]):
      if state.get(d) == 1:
        pytest.fail('import cycle: ' + ' -> '.join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d)
    stack.pop()
    state[n] = 2

  for n in sorted(graph):
    if n not in state:
      visit(n)


def test_functions_are_short():
  long = []
  for path in sorted(PACKAGE.rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_LINES:
          long.append(f'{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)')
  assert not long, long


def test_only_the_run_layer_reads_a_config():
  readers = []
  for name, tree in _modules().items():
    if _layer(name) == 'run':
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        if any(m and m.startswith('ml_collections') for m in mods):
          readers.append(name)
  assert not readers, f'modules below neo_jax/run that take an ml_collections config: {readers}'


def test_the_check_finds_what_it_looks_for():
  """The scanners above are able to fail: they see a backward import, a cycle and a long
  function in hand-made sources."""
  tree = ast.parse('from neo_jax.run import stages\nimport neo_jax.eval.metrics\n')
  assert _imports('neo_jax.catalog.io', tree) >= {'neo_jax.run', 'neo_jax.run.stages',
                                                   'neo_jax.eval.metrics'}
  rel = ast.parse('from . import trie\nfrom .beam_search import x\n')
  assert _imports('neo_jax.decode.generate', rel) >= {'neo_jax.decode.trie',
                                                      'neo_jax.decode.beam_search'}
  body = 'def f():\n' + '  x = 1\n' * MAX_LINES
  fn = ast.parse(body).body[0]
  assert fn.end_lineno - fn.lineno + 1 > MAX_LINES
