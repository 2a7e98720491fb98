"""The paper's ablations as configs (each changes only what it ablates), the random-init
decoder, and the pipeline's training path with mixture, validation, best-checkpoint restore
and LoRA wired together."""

import json
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.configs import ablation_no_grounding, ablation_random_init
from experiments.configs import ablation_stages_merged, quickstart, quickstart_smollm2
from neo_jax.run import experiment
from neo_jax.run import stages
from neo_jax.run import workdir as workdir_lib
from neo_jax.model import backbones, lora
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from test_quickstart import TINY


def _flat(c):
  out = {}
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update({f'{k}.{kk}': vv for kk, vv in _flat(v).items()})
    else:
      out[k] = v
  return out


def _diff(a, b):
  fa, fb = _flat(a), _flat(b)
  return {k: fb.get(k) for k in set(fa) | set(fb) if fa.get(k, '<absent>') != fb.get(k, '<absent>')}


@pytest.mark.parametrize('module, base, expected', [
    (ablation_no_grounding, quickstart, {'grounding.steps': 0}),
    (ablation_stages_merged, quickstart, {'train.merge_stages': True}),
    (ablation_random_init, quickstart_smollm2, {'model.random_init': True}),
])
def test_each_ablation_changes_only_what_it_ablates(module, base, expected):
  assert _diff(base.get_config(), module.get_config()) == expected


def test_random_init_builds_the_backbone_shape_without_reading_its_weights(monkeypatch):
  def no_weights(*args, **kwargs):
    raise AssertionError('random_init must not load the pretrained weights')

  monkeypatch.setattr(backbones, 'load_backbone', no_weights)
  cfg = ablation_random_init.get_config()
  cfg.model.param_dtype = cfg.model.dtype = 'bfloat16'  # half the memory, same shape
  tok = types.SimpleNamespace(text_vocab_size=49152, vocab_size=49152 + 40)
  model = stages.build_model(cfg, tok)
  preset = get_config('smollm2-135m')
  for field in ('d_model', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim',
                'tie_embeddings'):
    assert getattr(model.cfg, field) == getattr(preset, field), field
  assert model.cfg.vocab_size == 49152 + 40
  assert model.cfg.remat == 'full'


@pytest.mark.parametrize('how, backbone, spread', [
    ('mean', '', 'near_mean'), ('random', '', 'like_text'), ('auto', '', 'like_text'),
    ('auto', 'smollm2-135m', 'near_mean')])
def test_sid_rows_start_as_model_sid_init_says(how, backbone, spread, monkeypatch):
  """`model.sid_init`: 'mean' starts every SID row at the text rows' mean (1% of their spread
  apart), 'random' as spread out as the text rows; 'auto' is 'random' for a random decoder and
  'mean' for a pretrained backbone (here the backbone's shape with random weights, loaded
  through a stand-in)."""
  cfg = quickstart.get_config()
  cfg.model.update(dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                        mlp_dim=64, sid_init=how, backbone=backbone))
  if backbone:
    def tiny_backbone(name, **kwargs):
      return Decoder(get_config('tiny', d_model=32, vocab_size=300),
                            rngs=nnx.Rngs(0)), None
    monkeypatch.setattr(backbones, 'load_backbone', tiny_backbone)
  model = stages.build_model(cfg, types.SimpleNamespace(text_vocab_size=300, vocab_size=340))
  rows = np.asarray(model.embed_tokens[...])
  text_sd, sid_sd = rows[:300].std(axis=0).mean(), rows[300:].std(axis=0).mean()
  assert rows.shape == (340, 32)
  if spread == 'near_mean':
    assert sid_sd < 0.05 * text_sd
    np.testing.assert_allclose(rows[300:].mean(0), rows[:300].mean(0), atol=0.05 * text_sd)
  else:
    assert 0.7 * text_sd < sid_sd < 1.3 * text_sd


def test_pipeline_training_with_mixture_validation_best_and_lora(tmp_path):
  cfg = quickstart.get_config()
  for key, value in TINY.items():
    node = cfg
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg.data.dataset = 'synthetic'
  cfg.grounding.steps, cfg.capability.steps = 2, 4
  cfg.capability.eval_every = 2
  cfg.capability.lora_rank, cfg.capability.lora_alpha = 2, 4.0
  cfg.tasks.mixture = ('recommend:2,search:1,user_summary:0,sid_to_text:1,text_to_sid:1,'
                       'sid_to_type:0,history:0')
  cfg.train.valid_requests = 4
  cfg.train.best_metric = 'valid/recommend/recall@10'
  cfg.train.restore_best = True
  lines = []
  cfg, art, guard, _ = experiment.prepare(cfg, str(tmp_path), lines.append)
  model, facts = experiment.train_neo('neo_multi', cfg, art, guard, str(tmp_path), lines.append)
  facts = {k.replace('neo_multi/train/', 'train/'): v for k, v in facts.items()}
  assert not lora.has_lora(model) and not nnx.state(model, lora.LoRAParam)
  assert 'train/capability_examples/user_summary' not in facts
  assert 'train/capability_examples/sid_to_type' not in facts
  rec = facts['train/capability_examples/recommend']
  assert abs(rec - 2 * facts['train/capability_examples/search']) <= 1
  assert facts['train/valid_examples'] > 0
  assert any('LoRA rank 2' in l for l in lines)
  records = [json.loads(l) for l in open(tmp_path / 'neo_multi' / 'logs' / 'capability.jsonl')]
  valid = [r for r in records if 'valid/recommend/recall@10' in r]
  assert [r['step'] for r in valid] == [2, 4]
  values = [r['valid/recommend/recall@10'] for r in valid]
  assert all(0.0 <= v <= 1.0 for v in values)
  best = facts['train/capability_best_step']
  assert facts['train/capability_best_value'] == max(values)
  assert values[[2, 4].index(best)] == max(values)
  assert np.isfinite(facts['train/capability_final_loss'])
  # The reloaded run is the model the stage ended with (the restored best), not its last step.
  run = workdir_lib.load_run(str(tmp_path))
  assert (run.stage, run.step) == ('capability', facts['train/capability_model_step'])
  assert run.step == (best if facts['train/capability_restored_best'] else 4)
  tokens = jnp.asarray([[art.tokenizer.bos_id, 5, 6, 7]], jnp.int32)
  np.testing.assert_array_equal(np.asarray(run.artifacts.model(tokens)),
                                np.asarray(model(tokens)))
