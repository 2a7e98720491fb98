"""Task mixture weights and the stage plan (merged stages, no grounding)."""

import collections

import pytest

from experiments.configs import quickstart
from neo_jax.run import config as config_lib
from neo_jax.run import training
from neo_jax.tasks.types import Example
from neo_jax.train import mixture


def _examples(counts):
  out = []
  for task, n in counts.items():
    fmt = 'text' if task in ('user_summary', 'sid_to_text', 'sid_to_type') else 'ids'
    out += [Example(task, f'{task} prompt {i}', f'answer {i}', fmt) for i in range(n)]
  return out


def test_counts_follow_the_weights_with_largest_remainder():
  exs = _examples({'recommend': 100, 'search': 30, 'user_summary': 20})
  out = mixture.apply_mixture(exs, {'recommend': 1, 'search': 1, 'user_summary': 2}, seed=0)
  # N = 150; shares 37.5, 37.5, 75: the first half-example goes to recommend (stable order).
  assert collections.Counter(e.task for e in out) == {
      'recommend': 38, 'search': 37, 'user_summary': 75}
  # search (30 available, 37 wanted): every example once, 7 of them twice.
  search = collections.Counter(e.prompt for e in out if e.task == 'search')
  assert len(search) == 30 and sorted(search.values()) == [1] * 23 + [2] * 7
  # user_summary (20 available, 75 wanted): 3 full copies and 15 distinct extra.
  summ = collections.Counter(e.prompt for e in out if e.task == 'user_summary')
  assert sorted(summ.values()) == [3] * 5 + [4] * 15
  # recommend (100 available, 38 wanted): distinct examples, a subset of the input.
  rec = [e for e in out if e.task == 'recommend']
  assert len(set(rec)) == 38 and set(rec) <= set(exs)


def test_zero_weight_removes_a_task_and_resampling_is_deterministic():
  exs = _examples({'recommend': 10, 'search': 7, 'sid_to_text': 5})
  w = {'recommend': 1.0, 'search': 0, 'sid_to_text': 0.0}
  out = mixture.apply_mixture(exs, w, seed=3)
  assert [e.prompt for e in out] == [f'recommend prompt {i}' for i in range(10)]
  a = mixture.apply_mixture(exs, {'recommend': 1, 'search': 3, 'sid_to_text': 1}, seed=5)
  b = mixture.apply_mixture(exs, {'recommend': 1, 'search': 3, 'sid_to_text': 1}, seed=5)
  c = mixture.apply_mixture(exs, {'recommend': 1, 'search': 3, 'sid_to_text': 1}, seed=6)
  assert a == b and a != c
  assert mixture.apply_mixture(exs, None) == exs and mixture.apply_mixture(exs, {}) == exs


@pytest.mark.parametrize('weights, match', [
    ({'recommend': 1, 'search': 1, 'reccomend': 1}, 'unknown task'),
    ({'recommend': 1}, 'does not name'),
    ({'recommend': 1, 'search': -1}, '>= 0'),
    ({'recommend': 0, 'search': 0}, 'nothing to train'),
    ({'recommend': 1, 'search': 1, 'user_summary': 1}, 'no examples'),
])
def test_bad_mixtures_are_clear_errors(weights, match):
  with pytest.raises(ValueError, match=match):
    mixture.apply_mixture(_examples({'recommend': 4, 'search': 4}), weights)


def _cfg(**train):
  c = quickstart.get_config()
  c.grounding.steps, c.capability.steps = 5, 7
  c.train.update(train)
  return config_lib.validate(c)


def _stage_examples():
  grounding = _examples({'sid_to_text': 4, 'text_to_sid': 3})
  extra = _examples({'sid_to_type': 2})  # grounding examples not in the capability stage
  capability = _examples({'recommend': 6, 'search': 2}) + grounding
  return {'grounding': grounding + extra, 'capability': capability}


def test_stage_plan_applies_the_mixture_to_the_capability_stage_only():
  c = _cfg()
  c.tasks.mixture = 'recommend:1,search:1,sid_to_text:0,text_to_sid:0'
  plan = training.stage_plan(c, _stage_examples())
  assert [p[0] for p in plan] == ['grounding', 'capability']
  assert len(plan[0][1]) == 9
  assert collections.Counter(e.task for e in plan[1][1]) == {'recommend': 4, 'search': 4}


def test_merge_stages_puts_both_stages_examples_in_one_stage():
  exs = _stage_examples()
  plan = training.stage_plan(_cfg(merge_stages=True), exs)
  assert [p[0] for p in plan] == ['capability']
  name, merged, scfg = plan[0]
  assert scfg.steps == 12 and scfg.learning_rate == quickstart.get_config().capability.learning_rate
  assert scfg.time_budget_s == 0.0
  timed = _cfg(merge_stages=True)
  timed.grounding.time_budget_s, timed.capability.time_budget_s = 100.0, 250.0
  assert training.stage_plan(timed, exs)[0][2].time_budget_s == 350.0  # both stages' time
  # Every example of both stages, each once (grounding ones were already in capability).
  assert sorted(merged, key=repr) == sorted(set(exs['capability']) | set(exs['grounding']),
                                            key=repr)
  no_grounding = _cfg()
  no_grounding.grounding.steps = 0
  assert [p[0] for p in training.stage_plan(no_grounding, exs)] == ['capability']


class _CharTokenizer:
  """One id per character; 0 pad, 1 bos, 2 eos."""
  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text):
    return [ord(c) + 3 for c in text]


def test_budgets_in_passes_become_steps_from_the_packed_rows():
  from neo_jax.train.data import pack_examples
  exs = _stage_examples()
  tok = _CharTokenizer()
  c = _cfg(seq_len=32, batch_size=2)
  c.grounding.passes, c.capability.passes, c.capability.max_steps = 3.0, 2.5, 0
  resolved, facts = training.resolve_budgets(c, exs, tok)
  rows = {s: pack_examples(exs[s], tok, 32, 2, seed=training.train_seed(c)).num_rows
          for s in ('grounding', 'capability')}
  assert rows['capability'] > rows['grounding'] > 1  # the examples fill several rows
  assert resolved.grounding.steps == -(-3 * rows['grounding'] // 2)
  assert resolved.capability.steps == int(-(-2.5 * rows['capability'] // 2))
  assert resolved.grounding.passes == resolved.capability.passes == 0.0
  assert facts['budget/capability/rows'] == rows['capability']
  assert facts['budget/capability/capped'] is False
  assert facts['budget/capability/passes_trained'] == pytest.approx(
      resolved.capability.steps * 2 / rows['capability'], abs=1e-3)
  assert c.grounding.steps == 5  # the input config is left as it was
  # max_steps caps; a stage without passes keeps its steps; no passes at all: no change.
  c.capability.max_steps = 3
  c.grounding.passes = 0.0
  capped, facts = training.resolve_budgets(c, exs, tok)
  assert capped.capability.steps == 3 and capped.grounding.steps == 5
  assert facts['budget/capability/capped'] is True
  assert facts['budget/capability/passes_trained'] == pytest.approx(
      3 * 2 / rows['capability'], abs=1e-3)
  assert 'budget/grounding/steps' not in facts
  c.capability.passes = 0.0
  assert training.resolve_budgets(c, exs, tok) == (c, {})


def test_the_budget_and_the_training_of_a_stage_share_one_packing():
  exs = _stage_examples()
  tok = _CharTokenizer()
  c = _cfg(seq_len=32, batch_size=2)
  c.capability.passes = 1.0
  resolved, facts = training.resolve_budgets(c, exs, tok)
  (_, capability, scfg), = [p for p in training.stage_plan(resolved, exs)
                            if p[0] == 'capability']
  seed = training.train_seed(resolved)
  packed = training.pack_stage(capability, tok, resolved.train, seed)
  assert packed.num_rows == facts['budget/capability/rows'] and scfg.steps > 0
  assert training.pack_stage(capability, tok, resolved.train, seed) is packed
  # Another tokenizer, another shape or other examples is another packing.
  assert training.pack_stage(capability, _CharTokenizer(), resolved.train, seed) is not packed
  assert training.pack_stage(capability[1:], tok, resolved.train, seed).num_rows > 0


def test_a_stage_budgeted_in_passes_trains_even_with_zero_steps():
  c = _cfg()
  c.grounding.steps, c.grounding.passes = 0, 1.0
  assert training.stage_names(c) == ['grounding', 'capability']
  c.grounding.passes = 0.0
  assert training.stage_names(c) == ['capability']


@pytest.mark.parametrize('how, backbone, random_init, rows_only', [
    ('auto', '', False, False),  # a random decoder: every parameter
    ('auto', 'smollm2-135m', False, True),  # a pretrained backbone: the paper's SID rows
    ('auto', 'smollm2-135m', True, False),
    ('sid_rows', '', False, True),
    ('all', 'smollm2-135m', False, False),
])
def test_what_grounding_trains(how, backbone, random_init, rows_only):
  c = quickstart.get_config()
  c.grounding.trainable, c.model.backbone, c.model.random_init = how, backbone, random_init
  assert training.grounding_trains_rows(c) is rows_only
