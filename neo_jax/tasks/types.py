"""A task example: a prompt and the completion the model learns to write, both as text with
SID markup. Tokenisation and packing happen in train/; evaluation reads `target_items`."""

from __future__ import annotations

import dataclasses

TASKS = ('recommend', 'search', 'user_summary', 'sid_to_text', 'text_to_sid', 'sid_to_type',
         'history')
GROUNDING_TASKS = ('sid_to_text', 'text_to_sid', 'sid_to_type')
OUTPUT_FORMATS = ('ids', 'text', 'mixed')


@dataclasses.dataclass(frozen=True)
class Example:
  task: str
  prompt: str
  completion: str
  output_format: str
  target_type: str | None = None
  # Catalog rows the completion names, in order (evaluation ground truth).
  target_items: tuple[int, ...] = ()
  user_id: str | None = None

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f'unknown task {self.task!r}; known: {TASKS}')
    if self.output_format not in OUTPUT_FORMATS:
      raise ValueError(f'unknown output format {self.output_format!r}; known: {OUTPUT_FORMATS}')
