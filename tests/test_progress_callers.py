"""The run's own callers of the ranker and of packing send the progress lines to the run's
log, named: validation during training (`training.make_recall_eval_fn`), the experiment's
rankers (`experiment.Rankers`: '<system> validation', '<system> test', ...) and the stages'
packing (`training.pack_stage`, `resolve_budgets`)."""

import types

import ml_collections

from neo_jax.decode.trie import SIDTrie
from neo_jax.run import config as config_lib
from neo_jax.run import experiment
from neo_jax.run import training
from neo_jax.tasks.types import Example

from test_decode_ranker import _setup
from test_train_data import CharTokenizer, _examples

PROMPTS = [f'Task: recommend. Type: movie. Format: ids. History: {w}. Answer: '
           for w in ('a', 'a b', 'b c a', 'c', 'b', 'a c')]


def _cfg(batch_size=2, seq_len=72):
  """The run config's defaults with a small decoding batch (several batches per call)."""
  c = config_lib.defaults()
  c.train.seq_len, c.eval.batch_size = seq_len, batch_size
  return c


def test_validation_ranker_lines_go_to_the_stage_log(progress_on):
  sid_map, tok, model = _setup()
  requests = [Example(task='recommend', prompt=p, completion='', output_format='ids',
                      target_type='movie', target_items=(0,)) for p in PROMPTS]
  lines = []
  eval_fn = training.make_recall_eval_fn(_cfg(), tok, sid_map, requests, k=2, log=lines.append)
  figures = eval_fn(model)
  assert {'recommend/recall@2', 'recommend/ndcg@2'} <= set(figures)
  assert lines and all(line.startswith('validation rank: ') for line in lines)
  assert lines[-1].startswith('validation rank: 6 requests in ')


def test_experiment_rankers_name_the_system_and_the_split(progress_on):
  sid_map, tok, model = _setup()
  art = types.SimpleNamespace(tokenizer=tok, trie=SIDTrie.build(sid_map, tok.sid))
  lines = []
  rankers = experiment.Rankers(_cfg(), lines.append)
  rankers(model, art, 'neo_multi validation').rank(PROMPTS, ['movie'] * 6, num_beams=2)
  assert lines and all(line.startswith('neo_multi validation rank: ') for line in lines)
  lines.clear()
  ranker = rankers(model, art, 'neo_multi test')  # the same ranker, renamed
  ranker.rank(PROMPTS, ['movie'] * 6, num_beams=2)
  assert lines and all(line.startswith('neo_multi test rank: ') for line in lines)


def test_stage_packing_lines_go_to_the_log(progress_on):
  lines = []
  tcfg = ml_collections.ConfigDict({'seq_len': 64, 'batch_size': 4})
  packed = training.pack_stage(_examples(30, seed=5), CharTokenizer(), tcfg, seed=1,
                               log=lines.append)
  assert f'packing: write: {packed.num_rows}/{packed.num_rows} rows' in [
      line.split(',')[0] for line in lines]
  assert {line.split(':')[0] for line in lines} == {'packing'}
