"""Prompt templates and example builders for every task and output format."""

from neo_jax.tasks.builders import (describe_items, grounded_rationale, history_examples,
                                    profile_summary,
                                    query_grounding_examples, query_of, recommend_examples,
                                    search_examples, sid_to_text_examples, sid_to_type_examples,
                                    text_to_sid_examples, tokenizer_corpus,
                                    user_profile_examples, user_summary_examples)
from neo_jax.tasks.facts import (SummaryVocabulary, UserProfile, item_era, item_relations,
                                 item_year, named_attributes, relation_name, score_summary,
                                 user_profile)
from neo_jax.tasks.prompts import (TASK_NAMES, TEMPLATES, header, plain_text, prompt_body,
                                   reformat_prompt, render_history, render_prompt, render_sid,
                                   template_texts, type_field)
from neo_jax.tasks.queries import QUERY_TEMPLATES, GeneratedQueries, generate_queries
from neo_jax.tasks.rationale import Claim, RationaleCheck, check_rationale
from neo_jax.tasks.suite import TaskExamples, build_task_examples
from neo_jax.tasks.types import GROUNDING_TASKS, OUTPUT_FORMATS, TASKS, Example
