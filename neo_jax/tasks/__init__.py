"""Prompt templates and example builders for every task and output format."""

from neo_jax.tasks.builders import (describe_items, grounded_rationale, query_of,
                                    recommend_examples, search_examples, sid_to_text_examples,
                                    sid_to_type_examples, split_queries, text_to_sid_examples,
                                    tokenizer_corpus, user_summary_examples)
from neo_jax.tasks.prompts import (TASK_NAMES, TEMPLATES, header, plain_text, prompt_body,
                                   reformat_prompt, render_history, render_prompt, render_sid,
                                   template_texts, type_field)
from neo_jax.tasks.types import GROUNDING_TASKS, OUTPUT_FORMATS, TASKS, Example
