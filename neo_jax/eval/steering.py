"""Steerability, user understanding and faithfulness of a NEO model on test requests, and the
sample generations a run shows (one per output format and a user summary).

What is measured (the scorers are in `neo_jax.eval.understanding`):
  type steerability    only the prompt's `Type:` changes; decoded with constraints off (an
                       invalid SID counts as off-type), and with the trie on but every type
                       allowed (`type_steerability/trie_any_type`);
  format steerability  only the prompt's `Format:` changes; constraints off; the answer is
                       checked, not only its form (`ids`: SID spans only; `text`: names a
                       catalog item by its title, no span; `mixed`: both);
  user understanding   generated user summaries against each user's profile, on users whose
                       summary was never a training target (`summary_test` holds only them);
  faithfulness         the rationale of a 'mixed' recommendation must be true of the item it
                       names first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog.types import Catalog, User
from neo_jax.decode.ranker import NEORanker
from neo_jax.eval import understanding
from neo_jax.eval.protocol import SplitGuard, subsample
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import builders
from neo_jax.tasks import facts
from neo_jax.tasks import prompts
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.sid_vocab import SIDVocab


@dataclasses.dataclass(frozen=True)
class SteerSettings:
  """requests: recommendations re-typed / re-formatted (0: no steerability measure); beams:
  of the type measure; understanding_requests: user summaries and explanations (0: none);
  max_new_tokens: per generation;
  history_len: items a prompt shows; seed: of the request subsets."""
  requests: int
  beams: int
  understanding_requests: int
  max_new_tokens: int
  history_len: int
  seed: int


def _type_steering(ranker: NEORanker, rec: list[Example], catalog: Catalog, beams: int
                   ) -> dict[str, Any]:
  out: dict[str, Any] = {}
  if not rec:  # not asked for (experiment.steer_requests=0)
    return out
  if len(catalog.type_names) <= 1:
    out['type_steerability'] = None
    out['type_steerability/status'] = (f'not measurable: the catalog has one entity type '
                                       f'({", ".join(catalog.type_names)})')
    return out
  prompts_, wanted = [], []
  for ex in rec:
    for t in catalog.type_names:
      prompts_.append(understanding.retype_prompt(ex.prompt, 'recommend', ex.target_type, t))
      wanted.append(t)
  items, _ = ranker.rank(prompts_, [None] * len(prompts_), num_beams=beams)
  named = [[catalog.type_of(int(i)) for i in row if i >= 0] for row in items]
  out['type_steerability/trie_any_type'] = understanding.type_steerability(
      wanted, named)['type_steerability']
  items, _, _ = ranker.rank(prompts_, wanted, num_beams=beams, constrained=False)
  named = [[catalog.type_of(int(i)) if i >= 0 else None for i in row] for row in items]
  steer = understanding.type_steerability(wanted, named)
  out['type_steerability/status'] = ('measured: Type: changed in the prompt, constraints off '
                                     '(invalid SIDs count as off-type)')
  out['type_steerability'] = steer['type_steerability']
  out['type_steerability/answers_all_on_type'] = steer['answers_all_on_type']
  out['type_steerability/items'] = steer['items']
  return out


def _format_steering(ranker: NEORanker, rec: list[Example], catalog: Catalog,
                     max_new_tokens: int, keep) -> dict[str, Any]:
  fmt_prompts, fmt_wanted, fmt_types = [], [], []
  for ex in rec:
    for fmt in prompts.OUTPUT_FORMATS:
      fmt_prompts.append(prompts.reformat_prompt(ex.prompt, 'recommend', ex.target_type, fmt))
      fmt_wanted.append(fmt)
      fmt_types.append(ex.target_type)
  if not fmt_prompts:
    return {}
  gens, _ = ranker.generate(fmt_prompts, 'mixed', target_types=fmt_types,
                            max_new_tokens=max_new_tokens, constrained=False)
  fs = understanding.format_steerability(fmt_wanted, [g[0] for g in gens],
                                         titles=catalog.titles)
  keep('format', fmt_prompts, [g[0] for g in gens], 6)
  out = {k: v for k, v in fs.items() if k.startswith('format_steerability')}
  out['format_steerability/answers'] = fs['answers']
  out['format_steerability/constraints_off'] = 1
  return out


def steer_and_understand(ranker: NEORanker, guard: SplitGuard, catalog: Catalog,
                         users: dict[str, User], sid_map: SIDMap, s: SteerSettings,
                         samples_path: str | None = None) -> dict[str, Any]:
  """Type and format steerability, user understanding and faithfulness (module docstring) on
  test requests read through `guard` (after `open_test`). The first generations of each kind
  (prompt, output) go to `samples_path` (JSON) for reading."""
  samples: list[dict[str, str]] = []

  def keep(kind, prompts_, texts, n=5):
    samples.extend({'kind': kind, 'prompt': p, 'output': t}
                   for p, t in list(zip(prompts_, texts))[:n])

  stage = 'final/steer'
  # 0 requests: the measure is skipped (subsample's 0 would mean every request).
  rec = subsample(guard.examples('rec_test', stage), s.requests, s.seed) if s.requests else []
  by_user = {t.user_id: t.history for t in guard.targets('test', stage)}
  out = _type_steering(ranker, rec, catalog, s.beams)
  out.update(_format_steering(ranker, rec, catalog, s.max_new_tokens, keep))
  # User understanding (decoding admits every format, like every generation here: one
  # compiled program; the summary's SID spans, if any, name no attribute).
  n = s.understanding_requests
  summ = subsample(guard.examples('summary_test', stage), n, s.seed) if n else []
  if summ:
    gens = ranker.generate([x.prompt for x in summ], 'mixed', max_new_tokens=s.max_new_tokens,
                           max_items=3)
    vocab = facts.vocabulary_from(catalog, users)
    profiles = [facts.user_profile(catalog, by_user.get(x.user_id, np.zeros(0, np.int64)),
                                   users.get(x.user_id)) for x in summ]
    out.update(understanding.summary_understanding([g[0] for g in gens], profiles, vocab))
    keep('user_summary', [x.prompt for x in summ], [g[0] for g in gens])
  # Recsplanation faithfulness: the rationale must be true of the first item the answer names.
  expl = subsample(guard.examples('explain_test', stage), n, s.seed) if n else []
  if expl:
    gens = ranker.generate([x.prompt for x in expl], 'mixed',
                           target_types=[x.target_type for x in expl],
                           max_new_tokens=s.max_new_tokens, max_items=3)
    reachable = sid_map.reachable()
    hists = [[int(h) for h in by_user[x.user_id] if reachable[h]][-s.history_len:]
             for x in expl]
    items = [g[1][0] if g[1] else None for g in gens]
    fa = understanding.rationale_faithfulness([g[0] for g in gens], catalog, items, hists)
    out.update({f'explain/{k}': v for k, v in fa.items()})
    keep('explain', [x.prompt for x in expl], [g[0] for g in gens])
  if samples_path:  # a local path or a URI (catalog.atomic)
    atomic.write_text(samples_path, json.dumps(samples, indent=1))
  return out


def sample_generations(ranker: NEORanker, guard: SplitGuard, sid_map: SIDMap, vocab: SIDVocab,
                       catalog: Catalog, max_new_tokens: int = 48) -> list[dict[str, Any]]:
  """Steering by prompt alone, for the first test user with a held-out summary: a
  recommendation in each output format (`ids`, `text`, `mixed`) and a summary of the user,
  with every item named decoded back to its title and type ((row, title, type), row None for an SID of no catalog item)."""
  rec = guard.examples('rec_test', 'final/samples')
  if not rec:
    return []
  # The first test user whose summary was held out from training (summary_test holds only
  # those), so that the summary shown is of a user the model never learned a summary for.
  summaries = {e.user_id: e for e in guard.examples('summary_test', 'final/samples')}
  ex = next((e for e in rec if e.user_id in summaries), rec[0])
  requests = [(ex.task, fmt, prompts.reformat_prompt(ex.prompt, ex.task, ex.target_type, fmt),
               ex.target_type) for fmt in prompts.OUTPUT_FORMATS]
  if ex.user_id in summaries:
    requests.append(('user_summary', 'text', summaries[ex.user_id].prompt, None))
  out = []
  for task, fmt, prompt, target_type in requests:
    text, _ = ranker.generate([prompt], fmt, target_types=[target_type],
                              max_new_tokens=max_new_tokens, max_items=3)[0]
    items = builders.describe_items(text, sid_map, vocab, catalog)
    out.append({'task': task, 'format': fmt, 'prompt': prompt, 'output': text, 'items': items})
  return out
