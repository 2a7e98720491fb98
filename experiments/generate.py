r"""Talk to a trained NEO run, or continue text with a bare pretrained backbone.

A trained run (the workdir of `experiments.quickstart` or `experiments.train`):

  python -m experiments.generate --workdir=W
      interactive: type a request, get items (titles, types, log-probabilities) and text;
      `help` lists the forms, `quit` (or end of input) leaves:
        recommend user=196 type=movie format=mixed k=10
        search "dark sci-fi" type=movie
        describe user=196
        explain user=196 item=50
        prompt <raw prompt text, SID markup allowed>
        reload: follow the items added / withdrawn by experiments.add_items since
        any other text: a search over every type for that text
      recommend and search take allow=ID,ID,... and added_since=DATE (or unix seconds): the
      answer holds only those items / the items added since (the "new releases").

  python -m experiments.generate --workdir=W --batch_in=requests.jsonl \
      --batch_out=answers.jsonl
      one JSON request per line (fields: neo_jax/run/serving.py), answered in batches; a bad
      line (bad JSON, unknown user/item/type/format/task, missing or misplaced field) is
      reported on stderr and as {"line": n, "error": ...} in the output, and the batch goes
      on. Answers are appended per chunk (--chunk requests); an unexpected error while
      answering a chunk is reported for its lines and the batch goes on. After a kill, the
      same command with --resume answers only the lines --batch_out lacks (an existing
      --batch_out without --resume is refused). Exits with status 1 when any line was bad
      or failed. Before each chunk the catalog is reloaded when experiments.add_items changed
      it (result: catalog_reloads, catalog/version).

Both modes answer from the run's current catalog: the trained items with those added and
without those withdrawn by `python -m experiments.add_items --workdir=W` (W/catalog_update/).

A bare backbone (no NEO training):

  python -m experiments.generate --backbone=smollm2-135m \
      --prompt="The capital of France is" --max_new_tokens=8

--workdir takes a workdir (its main model, W/neo_multi) or any run directory in it (e.g.
W/neo_mono_recommend, W/ablation_no_grounding). Every mode ends by printing a flat result
object (nothing is written into the trained run's directories).
"""

from __future__ import annotations

import errno
import sys
import time

from absl import flags

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.run.config import UserError

flags.adopt_module_key_flags(common)

_BACKBONE = flags.DEFINE_string('backbone', None, 'packaged backbone name or a .gguf path')
_WORKDIR = flags.DEFINE_string('workdir', None, 'a trained NEO run to load: a workdir or one '
                               'of its run directories')
_BATCH_IN = flags.DEFINE_string('batch_in', None, 'JSONL requests (with --workdir)')
_BATCH_OUT = flags.DEFINE_string('batch_out', None, 'JSONL answers (with --batch_in)')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'requests per compiled batch (default: 16 in --batch_in mode, 1 '
    'interactively)')
_PROMPT = flags.DEFINE_string('prompt', 'The capital of France is', 'text to continue')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', None,
                                'tokens to generate at most (default: 8 with --backbone, 48 '
                                'with --workdir)')
_DTYPE = flags.DEFINE_enum('dtype', None, ['auto', 'model', 'float32', 'bfloat16'],
                           "precision: with --backbone the compute dtype (default float32; "
                           "'auto' and 'model' mean float32); with --workdir the one NEO ranks "
                           "and generates in (default: the run's eval.dtype, 'auto' = bfloat16 "
                           'on a CPU)')

_RESUME = flags.DEFINE_bool(
    'resume', False, 'with --batch_out holding answers of an interrupted run of the same '
    '--batch_in: answer only the lines it lacks (each line is answered exactly once)')
_CHUNK = flags.DEFINE_integer(
    'chunk', 256, 'requests answered per chunk in batch mode; each chunk\'s answers are '
    'appended to --batch_out (and synced) when it is done, so a kill loses at most one chunk')


def _run_backbone() -> dict:
  from neo_jax.model import backbones  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  dtype = _DTYPE.value if _DTYPE.value in ('float32', 'bfloat16') else 'float32'
  model, tok = backbones.load_backbone(_BACKBONE.value, dtype=dtype)
  if tok is None:
    raise UserError(f'{_BACKBONE.value} has no tokenizer this tool can read yet; use a '
                         '.gguf backbone')
  seconds_load = time.perf_counter() - t0
  prompt_ids = tok.encode_text(_PROMPT.value)
  ids, timing = backbones.greedy_generate(model, prompt_ids, _MAX_NEW.value or 8, tok.eos_id)
  text = tok.decode(ids)
  print(f'prompt: {_PROMPT.value!r} ({len(prompt_ids)} tokens)')
  print(f'continuation: {text!r}')
  return {'backbone': _BACKBONE.value, 'prompt': _PROMPT.value, 'text': text,
          'new_tokens': len(ids), 'seconds_load': seconds_load,
          'seconds_first_call': timing['seconds_first_call'], 'seconds': timing['seconds'],
          'tokens_per_second': timing['tokens_per_second'], 'dtype': dtype}


def _service(batch_size: int):
  from neo_jax.run import catalog_update  # pylint: disable=g-import-not-at-top
  from neo_jax.run import serving  # pylint: disable=g-import-not-at-top
  from neo_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  run = workdir_lib.load_run(_WORKDIR.value, log=lambda s: print(s, file=sys.stderr, flush=True))
  cfg = run.config
  svc = serving.Service(run.artifacts, prompt_len=int(cfg.train.seq_len) - 8,
                        history_len=int(cfg.tasks.history_len), batch_size=batch_size,
                        max_new_tokens=_MAX_NEW.value or 48,
                        catalog_base=catalog_update.base_of(run),
                        dtype=_DTYPE.value or cfg.eval.dtype)
  facts = {f'run/{k}': v for k, v in workdir_lib.describe(run).items()}
  facts.update(_catalog_facts(svc))
  facts['serving/dtype'] = svc.ranker.dtype or 'model'
  facts['seconds_load'] = time.perf_counter() - t0
  return svc, facts


def _catalog_facts(svc) -> dict:
  return {f'catalog/{k}': v for k, v in svc.catalog_facts().items()}


def _help(svc) -> str:
  user = sorted(svc.histories, key=lambda u: -len(svc.histories[u]))[0]
  row = int(svc.histories[user][-1])
  item, type_name = svc.catalog.ids[row], svc.catalog.type_of(row)
  return '\n'.join([
      'Requests (user and item ids are those of the dataset):',
      f'  recommend user={user} type={type_name} format=ids k=10 exclude_history=true',
      f'  recommend user={user} format=mixed      IDs with a written rationale',
      f'  recommend user={user} format=text       the answer as text only',
      f'  search "a few words" type={type_name} k=5',
      f'  describe user={user}                    a summary of the user',
      f'  explain user={user} item={item}          why this item, in the model\'s words',
      '  prompt <raw prompt>                  any prompt; SID markup allowed',
      f'  recommend user={user} allow={item}   only these items (ids, comma-separated)',
      f'  search "a few words" added_since=2026-12-01   only items added since (add_items)',
      '  reload                               follow experiments.add_items changes',
      '  <any other text>                     a search over every type',
      f'  types: {", ".join(svc.catalog.type_names)}; formats: ids, text, mixed',
      '  help, quit'])


def _interactive() -> dict:
  from neo_jax.run import catalog_update  # pylint: disable=g-import-not-at-top
  from neo_jax.run import serving  # pylint: disable=g-import-not-at-top
  svc, facts = _service(batch_size=_BATCH_SIZE.value or 1)
  print(f'NEO run {facts["run/workdir"]} ({facts["run/stage"]} step {facts["run/step"]}): '
        f'{facts["run/num_items"]} items ({facts["run/types"]}), {facts["run/num_users"]} users. '
        f'{_catalog_line(svc)}'
        "Type 'help' for the request forms, 'quit' to leave.", flush=True)
  answered = errors = reloads = 0
  seconds = 0.0
  while True:
    print('neo> ', end='', flush=True)
    line = sys.stdin.readline()
    if not line:  # end of input
      print()
      break
    if not sys.stdin.isatty():  # piped input: echo it, so that the transcript reads as typed
      print(line.rstrip('\n'), flush=True)
    line = line.strip()
    if not line:
      continue
    if line in ('quit', 'exit'):
      break
    if line in ('help', '?'):
      print(_help(svc), flush=True)
      continue
    if line == 'reload':
      try:
        out = svc.reload_catalog()
      except catalog_update.CatalogUpdateError as e:
        errors += 1
        print(f'error: {e}', flush=True)
        continue
      reloads += 1
      print(f'catalog version {out["version"]}: {out["added"]} added, {out["removed"]} '
            f'withdrawn by this reload; {out["live_items"]} live items of {out["items"]}'
            + (' (the trie grew: one recompilation)' if out['grown'] else ''), flush=True)
      continue
    try:
      req = svc.parse_command(line)
    except serving.RequestError as e:
      errors += 1
      print(f'error: {e}', flush=True)
      continue
    out, dt = svc.answer_timed([req])
    seconds += dt
    answered += 1
    print(serving.format_answer(out[0]) + f'\n({dt:.2f}s)', flush=True)
  return {**facts, **_catalog_facts(svc), 'mode': 'interactive', 'answered': answered,
          'errors': errors, 'catalog_reloads': reloads, 'seconds_answer': seconds}


def _catalog_line(svc) -> str:
  c = svc.catalog_facts()
  if c['version'] is None:
    return ''
  return (f'Catalog version {c["version"]}: {c["added"]} items added, {c["removed"]} '
          f'withdrawn, {c["live_items"]} live. ')


def _batch() -> dict:
  from neo_jax.run import serving  # pylint: disable=g-import-not-at-top
  if not _BATCH_OUT.value:
    raise UserError('--batch_in needs --batch_out (where the answers go)')
  if not atomic.as_path(_BATCH_IN.value).exists():  # local paths or URIs
    raise UserError(f'--batch_in={_BATCH_IN.value}: no such file')
  out = atomic.as_path(_BATCH_OUT.value)
  if out.exists() and out.stat().length > 0 and not _RESUME.value:
    raise UserError(f'--batch_out={_BATCH_OUT.value} exists; pass --resume to answer only the '
                    'lines it lacks, or remove it')
  svc, facts = _service(batch_size=_BATCH_SIZE.value or 16)
  try:
    counts = serving.answer_file(svc, _BATCH_IN.value, _BATCH_OUT.value,
                                 resume=_RESUME.value, chunk=_CHUNK.value, follow_catalog=True,
                                 log=lambda s: print(s, file=sys.stderr, flush=True))
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise UserError(f'{e}; rerun the same command with --resume when there is space') from e
    raise
  print(f'{counts["answered"]} answered, {counts["bad"]} bad, {counts["failed"]} failed, '
        f'{counts["blank_lines"]} blank lines, {counts["resumed_lines"]} already answered -> '
        f'{_BATCH_OUT.value}', file=sys.stderr)
  seconds = counts['seconds_answer']
  return {**facts, **_catalog_facts(svc), 'mode': 'batch', **counts,
          'requests_per_second': counts['answered'] / seconds if seconds > 0 else 0.0,
          'batch_size': svc.ranker.batch_size}


def main(argv):
  common.start(argv)
  if (_WORKDIR.value is None) == (_BACKBONE.value is None):
    raise UserError('give exactly one of --workdir (a trained NEO run) and --backbone')
  if _BATCH_IN.value is not None and _WORKDIR.value is None:
    raise UserError('--batch_in needs --workdir')
  if _WORKDIR.value is None:
    result = _run_backbone()
  elif _BATCH_IN.value is not None:
    result = _batch()
  else:
    result = _interactive()
  print(atomic.dumps(result, sort_keys=True))
  if result.get('bad') or result.get('failed'):
    sys.exit(1)


if __name__ == '__main__':
  common.run(main)
