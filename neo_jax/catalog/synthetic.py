"""A synthetic multi-type catalog with users, histories, queries and user summaries.

The quickstart's default data, and the generator of the multi-million-item catalogs of the
scale benchmarks. What a model can learn from it, by construction:
  - Item text carries the item's latent topic: titles, descriptions and tags are built from
    topic word lists (a secondary topic adds one word of noise-with-meaning).
  - Items of a (type, topic) form series ("Part 2", "Volume 3", "Episode 4") in popularity
    order; popularity within a topic follows a Zipf-like law.
  - A user has sparse Dirichlet preferences over a few topics that drift, over the history,
    toward one other topic; mostly consumes one main type and crosses to others; often
    continues the series of the last item, and often stays on the last item's topic. So the
    next item is predictable from recent history better than from popularity alone.
  - Search queries are made of words of the relevant items' titles and topic; user summaries
    name the main type and top topics actually present in the history.

Layout without materialising the catalog. Within type t, items are "slots" grouped by topic
(a block of consecutive slots per topic, slot order = popularity rank within the topic); a
slot's catalog row is an affine permutation `row = (a * slot + b) mod N_t`, so row order does
not reveal topic. Every item field is a closed-form function of (seed, type, slot) through a
counter-based hash, so any range of rows can be generated independently: `write_synthetic`
streams chunks with bounded memory and its files do not depend on the chunk size. Users and
queries draw from numpy generators seeded per fixed-size block of users (queries).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from neo_jax.catalog import io
from neo_jax.catalog.types import Catalog, Dataset, Interactions, Query, User

# ---------------------------------------------------------------------------------------------
# Word lists. Topic words are disjoint across topics (tested), so a word names its topic.

TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ('jazz', ('saxophone', 'trumpet', 'bebop', 'swing', 'improvisation', 'bassline',
              'nightclub', 'trombone', 'ragtime', 'bandleader', 'syncopation', 'clarinet',
              'vibraphone', 'bluesman', 'standards')),
    ('astronomy', ('telescope', 'galaxy', 'nebula', 'comet', 'orbit', 'planet', 'supernova',
                   'constellation', 'asteroid', 'eclipse', 'quasar', 'observatory', 'meteor',
                   'cosmos', 'starlight')),
    ('cooking', ('recipe', 'kitchen', 'pastry', 'skillet', 'sourdough', 'braise', 'spices',
                 'chef', 'dumplings', 'broth', 'oven', 'marinade', 'noodles', 'flavor',
                 'baking')),
    ('gardening', ('garden', 'seedling', 'compost', 'orchard', 'tulip', 'greenhouse',
                   'pruning', 'soil', 'harvest', 'vegetable', 'hedge', 'rosebush', 'trowel',
                   'perennial', 'mulch')),
    ('history', ('empire', 'dynasty', 'medieval', 'revolution', 'archive', 'pharaoh',
                 'kingdom', 'treaty', 'ancient', 'chronicle', 'monarch', 'colonial', 'siege',
                 'renaissance', 'artifact')),
    ('football', ('striker', 'goalkeeper', 'stadium', 'league', 'penalty', 'midfield',
                  'referee', 'tournament', 'dribble', 'championship', 'kickoff', 'offside',
                  'coach', 'derby', 'transfer')),
    ('mystery', ('detective', 'murder', 'clue', 'suspect', 'alibi', 'inspector', 'poison',
                 'heist', 'witness', 'sleuth', 'riddle', 'culprit', 'evidence',
                 'interrogation', 'whodunit')),
    ('romance', ('love', 'wedding', 'heartbreak', 'courtship', 'sweetheart', 'kiss',
                 'proposal', 'valentine', 'passion', 'honeymoon', 'darling', 'flirtation',
                 'engagement', 'longing', 'affection')),
    ('science fiction', ('robot', 'starship', 'android', 'cyborg', 'alien', 'warp',
                         'dystopia', 'hologram', 'laser', 'spaceport', 'mutant', 'teleport',
                         'clone', 'mech', 'galactic')),
    ('war', ('soldier', 'battalion', 'trench', 'regiment', 'battlefield', 'general',
             'submarine', 'artillery', 'infantry', 'sniper', 'bunker', 'squadron',
             'armistice', 'frontline', 'veteran')),
    ('travel', ('passport', 'backpacking', 'island', 'voyage', 'hostel', 'itinerary',
                'airport', 'expedition', 'wanderlust', 'cruise', 'luggage', 'souvenir',
                'roadtrip', 'border', 'postcard')),
    ('finance', ('market', 'investing', 'stocks', 'budget', 'inflation', 'dividend',
                 'portfolio', 'banker', 'mortgage', 'startup', 'savings', 'currency',
                 'recession', 'hedgefund', 'wealth')),
    ('technology', ('software', 'algorithm', 'programming', 'computer', 'database', 'coding',
                    'hacker', 'silicon', 'processor', 'network', 'compiler', 'gadget',
                    'internet', 'server', 'debugging')),
    ('fitness', ('workout', 'marathon', 'yoga', 'fitness', 'nutrition', 'cardio',
                 'stretching', 'gym', 'protein', 'running', 'wellness', 'pilates',
                 'dumbbell', 'sprint', 'endurance')),
    ('classical music', ('symphony', 'orchestra', 'violin', 'sonata', 'concerto', 'composer',
                         'opera', 'conductor', 'cello', 'piano', 'overture', 'quartet',
                         'aria', 'baroque', 'harpsichord')),
    ('wildlife', ('wolf', 'safari', 'rainforest', 'elephant', 'migration', 'predator',
                  'savanna', 'whale', 'tiger', 'wilderness', 'falcon', 'coral', 'gorilla',
                  'habitat', 'antelope')),
    ('horror', ('ghost', 'haunted', 'vampire', 'zombie', 'graveyard', 'curse', 'werewolf',
                'demon', 'nightmare', 'crypt', 'possession', 'witch', 'scream', 'phantom',
                'coffin')),
    ('comedy', ('sitcom', 'prank', 'jokes', 'satire', 'parody', 'standup', 'slapstick',
                'laughter', 'clown', 'sketch', 'punchline', 'blunder', 'mischief', 'farce',
                'comedian')),
    ('philosophy', ('ethics', 'stoic', 'metaphysics', 'logic', 'virtue', 'existential',
                    'socrates', 'morality', 'wisdom', 'reason', 'dialectic', 'consciousness',
                    'paradox', 'meditation', 'utopia')),
    ('motorsport', ('racing', 'engine', 'turbo', 'rally', 'motorcycle', 'garage',
                    'horsepower', 'pitstop', 'speedway', 'convertible', 'mechanic',
                    'grandprix', 'roadster', 'piston', 'overtaking')),
    ('politics', ('election', 'senate', 'campaign', 'parliament', 'ballot', 'democracy',
                  'president', 'congress', 'diplomacy', 'policy', 'minister', 'referendum',
                  'lobbyist', 'scandal', 'governor')),
    ('fashion', ('couture', 'runway', 'designer', 'fabric', 'tailoring', 'vintage',
                 'sneakers', 'boutique', 'denim', 'silk', 'wardrobe', 'jewelry', 'catwalk',
                 'stylist', 'handbag')),
    ('painting', ('canvas', 'painter', 'watercolor', 'sculpture', 'gallery', 'portrait',
                  'brushstroke', 'mural', 'easel', 'fresco', 'sketchbook', 'museum',
                  'impressionist', 'charcoal', 'pigment')),
    ('sailing', ('sailboat', 'harbor', 'lighthouse', 'anchor', 'mariner', 'tide', 'regatta',
                 'captain', 'shipwreck', 'lagoon', 'schooner', 'compass', 'navigator', 'reef',
                 'seafarer')),
)

ADJECTIVES = (
    'silent', 'golden', 'hidden', 'last', 'little', 'broken', 'wild', 'secret', 'bright',
    'lost', 'quiet', 'endless', 'burning', 'forgotten', 'crimson', 'gentle', 'hollow',
    'restless', 'distant', 'electric', 'velvet', 'bitter', 'frozen', 'northern', 'sudden',
    'tender', 'savage', 'wandering', 'midnight', 'summer', 'winter', 'faded', 'brave',
    'strange', 'shining', 'lonely', 'curious', 'final', 'hungry', 'silver')
NOUNS = (
    'tales', 'chronicles', 'diaries', 'letters', 'notes', 'stories', 'road', 'house',
    'years', 'days', 'dreams', 'affair', 'secrets', 'hour', 'season', 'voices', 'echoes',
    'game', 'hearts', 'world', 'files', 'legacy', 'promise', 'shadows', 'way', 'river',
    'city', 'song', 'circle', 'hours')
NAMES = (
    'Ada', 'Bruno', 'Clara', 'Dmitri', 'Elena', 'Felix', 'Greta', 'Hugo', 'Iris', 'Jonas',
    'Kira', 'Leo', 'Mira', 'Nico', 'Olga', 'Pablo', 'Quinn', 'Rosa', 'Sami', 'Tara', 'Umar',
    'Vera', 'Wren', 'Yara', 'Zane', 'Anya', 'Basil', 'Cora', 'Dario', 'Esme')
FILLER_SENTENCES = (
    'Critics call it a quiet surprise.', 'A favourite among returning fans.',
    'Told with warmth and a steady hand.', 'Short, sharp and easy to recommend.',
    'Slow to start, impossible to put down.', 'Newcomers and experts alike will enjoy it.',
    'Full of small, well observed moments.', 'It rewards a second visit.',
    'Funny, sad and honest in equal measure.', 'A confident debut from a new voice.',
    'Long, ambitious and occasionally uneven.', 'The ending divides its audience.')
# Words a query drops from a title because they carry no meaning for search.
QUERY_STOPWORDS = frozenset(('the', 'a', 'of', 'for'))

def _with_article(word: str) -> str:
  return ('An ' if word[0] in 'AEIOUaeiou' else 'A ') + word


# Series-name templates: {tw} a capitalised topic word, {a_tw} the same with its article.
_TITLE_TEMPLATES = (
    'The {adj} {tw}', "{name}'s {tw} {noun}", '{tw} {noun}', '{adj} {tw} {noun}',
    '{a_tw} for {name}', '{noun} of the {adj} {tw}')
# Capitalised and article forms, computed once rather than per item.
_ADJ_CAP = tuple(a.capitalize() for a in ADJECTIVES)
_ADJ_A = tuple(_with_article(a) for a in ADJECTIVES)
_NOUN_CAP = tuple(n.capitalize() for n in NOUNS)


@dataclasses.dataclass(frozen=True)
class TypeStyle:
  """How items of an entity type are written about."""
  noun: str  # one item: 'film'
  plural: str  # 'movies'
  verb: str  # what a user does with it: 'watches'
  part: str  # numbering of a series: 'Part'
  # Template with {adj} {Adj} {A_adj} ('An endless') {tw1} {tw2} {sw} {filler}.
  description: str


TYPE_STYLES: dict[str, TypeStyle] = {
    'movie': TypeStyle('film', 'movies', 'watches', 'Part',
                       '{A_adj} film about {tw1} and {tw2}, with a detour into {sw}. '
                       '{filler}'),
    'book': TypeStyle('book', 'books', 'reads', 'Volume',
                      '{A_adj} book on {tw1} and {tw2}, touching on {sw} along the way. '
                      '{filler}'),
    'podcast': TypeStyle('show', 'podcasts', 'listens to', 'Episode',
                         '{Adj} conversations about {tw1} and {tw2}; this episode also '
                         'covers {sw}. {filler}'),
    'article': TypeStyle('article', 'articles', 'reads', 'Part',
                         '{A_adj} article on {tw1} and {tw2}, with a note on {sw}. '
                         '{filler}'),
    'game': TypeStyle('game', 'games', 'plays', 'Chapter',
                      '{A_adj} game of {tw1} and {tw2}, with a side quest about {sw}. '
                      '{filler}'),
}


def type_style(type_name: str) -> TypeStyle:
  """The style of a type; types without one get a generic style named after the type."""
  if type_name in TYPE_STYLES:
    return TYPE_STYLES[type_name]
  return TypeStyle(type_name, f'{type_name} items', 'enjoys', 'Part',
                   '{A_adj} ' + type_name + ' about {tw1} and {tw2}, with some {sw}. {filler}')


# Hand-formatted JSON (much faster than json.dumps at 10M items) is valid only because no
# generated string contains a quote, backslash or control character; checked here.
_JSON_SAFE = re.compile(r"[A-Za-z0-9_ ,.;:'!?{}-]*")
for _word in ([n for n, _ in TOPICS] + [w for _, ws in TOPICS for w in ws] + list(ADJECTIVES)
              + list(NOUNS) + list(NAMES) + list(FILLER_SENTENCES) + list(_TITLE_TEMPLATES)
              + [f.description for f in TYPE_STYLES.values()]):
  assert _JSON_SAFE.fullmatch(_word), _word
del _word


# ---------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass
class SyntheticConfig:
  """Everything the generator's output is a deterministic function of.

  Attributes:
    seed: the seed; equal configs give byte-identical files.
    item_counts: entity type name -> number of items (>= num_topics each); file order.
    items_per_type: when set, every type of `item_counts` gets this many items instead (a
      one-number knob for configs); kept, so the config records how it was made.
    num_topics: latent topics, the first `num_topics` of `TOPICS`.
    num_users: users, each with min_events..max_events interactions.
    min_events, max_events: inclusive range of history lengths (uniform).
    topics_per_user: inclusive (min, max) number of topics a user likes.
    preference_concentration: Dirichlet concentration over a user's liked topics.
    drift: weight that a user's last event puts on the drift topic; the weight grows
      linearly from 0 at the first event.
    cross_type_prob: chance that an event is of a type other than the user's main type.
    topic_stickiness: chance that an event stays on the previous event's topic.
    series_length: items per series; 1 makes every item stand alone.
    series_continue_prob: chance that a user continues the series of the previous item
      (when it has a next part).
    popularity_alpha: Zipf exponent of popularity over an item's rank within its topic.
    topic_size_concentration: Dirichlet concentration of topic sizes within a type (large
      means equal sizes).
    secondary_tag_prob: chance that an item's tags also name its secondary topic.
    num_queries: search queries.
    item_query_prob: chance that a query for a later part of a series asks for that part
      (one relevant item) rather than for the whole series.
    start_time: earliest first-event time, integer seconds since the epoch.
    start_spread_seconds: users' first events are uniform over this span.
    mean_gap_seconds: mean of the exponential gap between a user's events.
    name: the dataset's name.
  """

  seed: int = 0
  item_counts: dict[str, int] = dataclasses.field(
      default_factory=lambda: {'movie': 1200, 'book': 1000, 'podcast': 800})
  items_per_type: int | None = None
  num_topics: int = 20
  num_users: int = 2000
  min_events: int = 8
  max_events: int = 40
  topics_per_user: tuple[int, int] = (2, 4)
  preference_concentration: float = 1.0
  drift: float = 0.5
  cross_type_prob: float = 0.2
  topic_stickiness: float = 0.5
  series_length: int = 4
  series_continue_prob: float = 0.5
  popularity_alpha: float = 1.0
  topic_size_concentration: float = 5.0
  secondary_tag_prob: float = 0.3
  num_queries: int = 2000
  item_query_prob: float = 0.6
  start_time: int = 1_577_836_800
  start_spread_seconds: int = 365 * 86_400
  mean_gap_seconds: float = 2 * 86_400.0
  name: str = 'synthetic'

  def __post_init__(self):
    self.item_counts = dict(self.item_counts)
    if self.items_per_type is not None:
      self.item_counts = {t: self.items_per_type for t in self.item_counts}
    self.topics_per_user = tuple(self.topics_per_user)

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""

    def fail(field, message):
      raise ValueError(f'SyntheticConfig.{field}: {message}')

    if int(self.seed) != self.seed or self.seed < 0:
      fail('seed', f'must be an integer >= 0, got {self.seed}')
    if not self.item_counts:
      fail('item_counts', 'needs at least one entity type')
    if not 2 <= self.num_topics <= len(TOPICS):
      fail('num_topics', f'must be in [2, {len(TOPICS)}], got {self.num_topics}')
    for t, n in self.item_counts.items():
      if not io.TYPE_NAME_RE.fullmatch(t):
        fail('item_counts', f'type name {t!r} must match {io.TYPE_NAME_RE.pattern}')
      if int(n) != n or n < self.num_topics:
        fail('item_counts', f'{t!r} has {n} items; every type needs an integer count >= '
             f'num_topics ({self.num_topics}) so that every topic has items')
    if self.num_users < 1:
      fail('num_users', f'must be >= 1, got {self.num_users}')
    if not 1 <= self.min_events <= self.max_events:
      fail('min_events', f'need 1 <= min_events <= max_events, got {self.min_events}, '
           f'{self.max_events}')
    lo, hi = self.topics_per_user
    if not 1 <= lo <= hi <= self.num_topics - 1:
      fail('topics_per_user', f'need 1 <= min <= max <= num_topics - 1 (one topic is left '
           f'to drift to), got {self.topics_per_user}')
    for field in ('drift', 'cross_type_prob', 'topic_stickiness', 'series_continue_prob',
                  'secondary_tag_prob', 'item_query_prob'):
      value = getattr(self, field)
      if not 0.0 <= value <= 1.0:
        fail(field, f'must be a probability in [0, 1], got {value}')
    if len(self.item_counts) == 1 and self.cross_type_prob > 0:
      fail('cross_type_prob', 'must be 0 with a single entity type')
    for field in ('preference_concentration', 'topic_size_concentration',
                  'mean_gap_seconds'):
      if not getattr(self, field) > 0:
        fail(field, f'must be > 0, got {getattr(self, field)}')
    if self.popularity_alpha < 0:
      fail('popularity_alpha', f'must be >= 0, got {self.popularity_alpha}')
    if self.series_length < 1:
      fail('series_length', f'must be >= 1, got {self.series_length}')
    if self.num_queries < 0:
      fail('num_queries', f'must be >= 0, got {self.num_queries}')
    if self.start_spread_seconds < 1:
      fail('start_spread_seconds', f'must be >= 1, got {self.start_spread_seconds}')

  @property
  def num_items(self) -> int:
    return int(sum(self.item_counts.values()))

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['topics_per_user'] = list(self.topics_per_user)
    return d


# ---------------------------------------------------------------------------------------------
# Counter-based randomness for items: any slot's fields without generating its neighbours.

_U64 = np.uint64


def _key(seed: int, *labels: str | int) -> np.uint64:
  words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF]
  for label in labels:
    words.append(zlib.crc32(label.encode()) if isinstance(label, str) else int(label))
  return np.random.SeedSequence(words).generate_state(1, np.uint64)[0]


def _hash(key: np.uint64, counter: np.ndarray) -> np.ndarray:
  """splitmix64 of (key + counter * golden ratio): (N,) uint64, uniform bits."""
  z = counter.astype(_U64) * _U64(0x9E3779B97F4A7C15) + key
  z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
  return z ^ (z >> _U64(31))


def _picks(seed: int, label: str, type_index: int, counter: np.ndarray,
           sizes: tuple[int, ...]) -> list[np.ndarray]:
  """One (N,) int64 array in [0, m) per m in `sizes`, independent of each other.

  Each pick uses its own 16 bits of a hash of (seed, label, type, counter); bias < m / 2**16.
  """
  out = []
  for j in range(0, len(sizes), 4):
    h = _hash(_key(seed, label, type_index, j), counter)
    for k, m in enumerate(sizes[j:j + 4]):
      out.append((((h >> _U64(16 * k)) & _U64(0xFFFF)) % _U64(m)).astype(np.int64))
  return out


def _zipf_rank(u: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
  """Rank in [0, n) with P(rank = r) ~ (r + 1)**-alpha, by inverting the continuous law.

  Args:
    u: (B,) uniforms in [0, 1).
    n: (B,) int, sizes (>= 1).
  """
  n1 = n.astype(np.float64) + 1.0
  if abs(alpha - 1.0) < 1e-9:
    x = np.exp(u * np.log(n1))
  else:
    e = 1.0 - alpha
    x = (1.0 + u * (n1**e - 1.0))**(1.0 / e)
  return np.clip(np.floor(x).astype(np.int64) - 1, 0, n.astype(np.int64) - 1)


@dataclasses.dataclass
class _TypeLayout:
  name: str
  index: int  # position in config order
  count: int
  row_offset: int  # global catalog row of this type's row 0
  cum_sizes: np.ndarray  # (T + 1,) int64: topic k owns slots [cum[k], cum[k + 1])
  a: int  # row = (a * slot + b) mod count
  b: int
  a_inv: int
  style: TypeStyle

  def rows_of_slots(self, slot: np.ndarray) -> np.ndarray:
    return (slot * self.a + self.b) % self.count

  def slots_of_rows(self, row: np.ndarray) -> np.ndarray:
    return ((row - self.b) % self.count) * self.a_inv % self.count


class _Layout:
  """Per-type tables: topic block sizes and the slot <-> row permutation (O(types x T))."""

  def __init__(self, config: SyntheticConfig):
    config.validate()
    self.config = config
    self.num_topics = config.num_topics
    self.topic_names = tuple(name for name, _ in TOPICS[:config.num_topics])
    self.topic_words = [list(words) for _, words in TOPICS[:config.num_topics]]
    self.topic_words_cap = [[w.capitalize() for w in ws] for ws in self.topic_words]
    self.topic_words_a = [[_with_article(w) for w in ws] for ws in self.topic_words_cap]
    self.types: list[_TypeLayout] = []
    offset = 0
    for ti, (name, count) in enumerate(config.item_counts.items()):
      count = int(count)
      rng = np.random.default_rng([config.seed, 1, ti])
      weights = rng.dirichlet(np.full(self.num_topics, config.topic_size_concentration))
      sizes = 1 + rng.multinomial(count - self.num_topics, weights)
      a = int(rng.integers(1, count)) if count > 1 else 1
      while math.gcd(a, count) != 1:
        a = a % (count - 1) + 1
      b = int(rng.integers(0, count))
      self.types.append(_TypeLayout(
          name=name, index=ti, count=count, row_offset=offset,
          cum_sizes=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
          a=a, b=b, a_inv=pow(a, -1, count) if count > 1 else 1, style=type_style(name)))
      offset += count
    self.num_items = offset
    # sizes_YxT[y, k]: items of type y and topic k.
    self.sizes_YxT = np.stack([np.diff(t.cum_sizes) for t in self.types])
    self.cum_YxT = np.stack([t.cum_sizes[:-1] for t in self.types])
    self.row_offsets = np.array([t.row_offset for t in self.types], np.int64)
    self.type_names_sorted = tuple(sorted(config.item_counts))
    self.sorted_index = np.array([self.type_names_sorted.index(t.name) for t in self.types],
                                 np.int32)

  def global_rows(self, type_idx: np.ndarray, topic: np.ndarray,
                  rank: np.ndarray) -> np.ndarray:
    """(B,) int64 catalog rows of items given by (type in config order, topic, rank)."""
    slot = self.cum_YxT[type_idx, topic] + rank
    rows = np.empty_like(slot)
    for t in self.types:
      sel = type_idx == t.index
      rows[sel] = t.rows_of_slots(slot[sel]) + t.row_offset
    return rows

  def item_id(self, type_idx: int, row_in_type: int) -> str:
    return f'{self.types[type_idx].name}-{row_in_type}'


# ---------------------------------------------------------------------------------------------
# Items.


@dataclasses.dataclass
class _ItemFields:
  """Latent fields of K items of one type (arrays (K,))."""
  topic: np.ndarray
  rank: np.ndarray  # popularity rank within (type, topic), 0 = most popular
  series: np.ndarray  # series number within (type, topic)
  episode: np.ndarray  # 1-based part number within the series
  secondary: np.ndarray  # secondary topic (!= topic)


def _item_fields(layout: _Layout, t: _TypeLayout, slot: np.ndarray) -> _ItemFields:
  topic = np.searchsorted(t.cum_sizes, slot, side='right') - 1
  rank = slot - t.cum_sizes[topic]
  length = layout.config.series_length
  (offset,) = _picks(layout.config.seed, 'secondary', t.index, slot, (layout.num_topics - 1,))
  secondary = (topic + 1 + offset) % layout.num_topics
  return _ItemFields(topic=topic, rank=rank, series=rank // length,
                     episode=rank % length + 1, secondary=secondary)


def _series_names(layout: _Layout, t: _TypeLayout, topic: np.ndarray,
                  series: np.ndarray) -> list[str]:
  """Name of each (topic, series) of type t, e.g. "Ada's Telescope Diaries"."""
  template, word, adj, noun, name = (p.tolist() for p in _picks(
      layout.config.seed, 'series', t.index, topic * (1 << 40) + series,
      (len(_TITLE_TEMPLATES), 15, len(ADJECTIVES), len(NOUNS), len(NAMES))))
  words_cap, words_a = layout.topic_words_cap, layout.topic_words_a
  return [
      _TITLE_TEMPLATES[k].format(tw=words_cap[tp][w], a_tw=words_a[tp][w], adj=_ADJ_CAP[a],
                                 noun=_NOUN_CAP[n], name=NAMES[m])
      for k, tp, w, a, n, m in zip(template, topic.tolist(), word, adj, noun, name)]


def _titles(layout: _Layout, t: _TypeLayout, f: _ItemFields) -> list[str]:
  names = _series_names(layout, t, f.topic, f.series)
  part = t.style.part
  return [name if ep == 1 else f'{name}, {part} {ep}'
          for name, ep in zip(names, f.episode.tolist())]


@dataclasses.dataclass
class _ItemChunk:
  type_index: int  # config order
  rows_in_type: np.ndarray  # (K,) int64
  titles: list[str]
  descriptions: list[str]
  tags: list[tuple[str, ...]]
  years: list[int]
  popularity: np.ndarray  # (K,) float32


def _item_chunk(layout: _Layout, t: _TypeLayout, start: int, stop: int) -> _ItemChunk:
  rows = np.arange(start, stop, dtype=np.int64)
  slot = t.slots_of_rows(rows)
  f = _item_fields(layout, t, slot)
  cfg = layout.config
  tw1, tw2_offset, tw3, sw, adj, filler, year, secondary_draw = _picks(
      cfg.seed, 'description', t.index, slot,
      (15, 14, 15, 15, len(ADJECTIVES), len(FILLER_SENTENCES), 75, 1 << 16))
  tw2 = (tw1 + 1 + tw2_offset) % 15
  sw, adj, filler = sw.tolist(), adj.tolist(), filler.tolist()
  year = (1950 + year).tolist()
  with_secondary = (secondary_draw < round(cfg.secondary_tag_prob * (1 << 16))).tolist()
  words, names = layout.topic_words, layout.topic_names
  template = t.style.description
  descriptions, tags = [], []
  for tp, sec, w1, w2, w3, s, a, fl, ws in zip(f.topic.tolist(), f.secondary.tolist(),
                                               tw1.tolist(), tw2.tolist(), tw3.tolist(), sw,
                                               adj, filler, with_secondary):
    descriptions.append(template.format(
        adj=ADJECTIVES[a], Adj=_ADJ_CAP[a], A_adj=_ADJ_A[a], tw1=words[tp][w1],
        tw2=words[tp][w2], sw=words[sec][s], filler=FILLER_SENTENCES[fl]))
    tags.append((names[tp], words[tp][w3], names[sec]) if ws else (names[tp], words[tp][w3]))
  popularity = ((f.rank + 1.0)**-cfg.popularity_alpha).astype(np.float32)
  return _ItemChunk(type_index=t.index, rows_in_type=rows, titles=_titles(layout, t, f),
                    descriptions=descriptions, tags=tags, years=year,
                    popularity=popularity)


def _item_chunks(layout: _Layout, chunk_size: int) -> Iterator[_ItemChunk]:
  for t in layout.types:
    for start in range(0, t.count, chunk_size):
      yield _item_chunk(layout, t, start, min(start + chunk_size, t.count))


# ---------------------------------------------------------------------------------------------
# Users and their histories.

_USER_BLOCK = 512
_QUERY_BLOCK = 1024


@dataclasses.dataclass
class _UserBlock:
  """B users' latent state and histories (E = max_events; entries past n_events unused)."""
  first_user: int
  n_events: np.ndarray  # (B,) int64
  main_type: np.ndarray  # (B,) config-order type index
  prefs_BxT: np.ndarray  # (B, T) float64, rows sum to 1
  drift_topic: np.ndarray  # (B,)
  type_BxE: np.ndarray
  topic_BxE: np.ndarray
  rank_BxE: np.ndarray
  time_BxE: np.ndarray  # int64 seconds, strictly increasing along E
  row_BxE: np.ndarray  # global catalog row

  @property
  def mask_BxE(self) -> np.ndarray:
    return np.arange(self.type_BxE.shape[1])[None, :] < self.n_events[:, None]


def _user_block(layout: _Layout, block: int) -> _UserBlock:
  cfg = layout.config
  first = block * _USER_BLOCK
  B = min(_USER_BLOCK, cfg.num_users - first)
  E, T, Y, L = cfg.max_events, layout.num_topics, len(layout.types), cfg.series_length
  rng = np.random.default_rng([cfg.seed, 2, block])

  n_events = rng.integers(cfg.min_events, cfg.max_events + 1, B)
  counts = np.array([t.count for t in layout.types], np.float64)
  main_type = rng.choice(Y, size=B, p=counts / counts.sum())
  # Liked topics: the k smallest of T random keys; drift topic: the best of the rest.
  k = rng.integers(cfg.topics_per_user[0], cfg.topics_per_user[1] + 1, B)
  order_BxT = np.argsort(rng.random((B, T)), axis=1)
  liked_BxT = np.zeros((B, T), bool)
  np.put_along_axis(liked_BxT, order_BxT, np.arange(T)[None, :] < k[:, None], axis=1)
  drift_topic = np.take_along_axis(order_BxT, k[:, None], axis=1)[:, 0]
  gamma_BxT = rng.gamma(cfg.preference_concentration, 1.0, (B, T)) * liked_BxT
  # A liked topic can draw a gamma of exactly 0 only with probability ~0; guard anyway so
  # that a row never sums to 0.
  gamma_BxT = np.where(liked_BxT, np.maximum(gamma_BxT, 1e-12), 0.0)
  prefs_BxT = gamma_BxT / gamma_BxT.sum(1, keepdims=True)
  drift_BxT = np.eye(T)[drift_topic]
  start = cfg.start_time + rng.integers(0, cfg.start_spread_seconds, B)

  u_BxEx5 = rng.random((B, E, 5))
  offset_BxE = rng.integers(1, Y, (B, E)) if Y > 1 else np.zeros((B, E), np.int64)
  gap_BxE = np.maximum(1, np.rint(rng.exponential(cfg.mean_gap_seconds, (B, E)))).astype(
      np.int64)

  type_BxE = np.zeros((B, E), np.int64)
  topic_BxE = np.zeros((B, E), np.int64)
  rank_BxE = np.zeros((B, E), np.int64)
  time_BxE = np.zeros((B, E), np.int64)
  denom = np.maximum(n_events - 1, 1).astype(np.float64)
  for e in range(E):
    u_topic, u_stick, u_cross, u_rank, u_cont = (u_BxEx5[:, e, j] for j in range(5))
    w = cfg.drift * np.minimum(e / denom, 1.0)
    p_BxT = (1.0 - w)[:, None] * prefs_BxT + w[:, None] * drift_BxT
    cum_BxT = np.cumsum(p_BxT, axis=1)
    topic = np.minimum((cum_BxT < (u_topic * cum_BxT[:, -1])[:, None]).sum(1), T - 1)
    typ = np.where(u_cross < cfg.cross_type_prob, (main_type + offset_BxE[:, e]) % Y,
                   main_type)
    if e > 0:
      prev_type, prev_topic, prev_rank = type_BxE[:, e - 1], topic_BxE[:, e - 1], rank_BxE[
          :, e - 1]
      topic = np.where(u_stick < cfg.topic_stickiness, prev_topic, topic)
    rank = _zipf_rank(u_rank, layout.sizes_YxT[typ, topic], cfg.popularity_alpha)
    if e > 0:
      has_next = ((prev_rank % L < L - 1) &
                  (prev_rank + 1 < layout.sizes_YxT[prev_type, prev_topic]))
      cont = has_next & (u_cont < cfg.series_continue_prob)
      typ = np.where(cont, prev_type, typ)
      topic = np.where(cont, prev_topic, topic)
      rank = np.where(cont, prev_rank + 1, rank)
      time_BxE[:, e] = time_BxE[:, e - 1] + gap_BxE[:, e]
    else:
      time_BxE[:, e] = start
    type_BxE[:, e], topic_BxE[:, e], rank_BxE[:, e] = typ, topic, rank

  row_BxE = layout.global_rows(type_BxE.reshape(-1), topic_BxE.reshape(-1),
                               rank_BxE.reshape(-1)).reshape(B, E)
  return _UserBlock(first_user=first, n_events=n_events, main_type=main_type,
                    prefs_BxT=prefs_BxT, drift_topic=drift_topic, type_BxE=type_BxE,
                    topic_BxE=topic_BxE, rank_BxE=rank_BxE, time_BxE=time_BxE,
                    row_BxE=row_BxE)


def _counts(index_BxE: np.ndarray, select_BxE: np.ndarray, size: int) -> np.ndarray:
  """(B, size) int64: per row, how often each value of `index_BxE` occurs where selected."""
  B = index_BxE.shape[0]
  flat = (np.arange(B)[:, None] * size + index_BxE)[select_BxE]
  return np.bincount(flat, minlength=B * size).reshape(B, size)


def _summaries(layout: _Layout, ub: _UserBlock) -> tuple[list[str], list[dict[str, Any]]]:
  """Text summary and attributes {main_type, top_topics} of each user's actual history."""
  Y, T = len(layout.types), layout.num_topics
  mask = ub.mask_BxE
  B = mask.shape[0]
  type_counts = _counts(ub.type_BxE, mask, Y)
  main = type_counts.argmax(1)
  in_main = mask & (ub.type_BxE == main[:, None])
  topic_counts = _counts(ub.topic_BxE, in_main, T)
  top1 = topic_counts.argmax(1)
  rest = topic_counts.copy()
  rest[np.arange(B), top1] = 0
  top2 = np.where(rest.max(1) > 0, rest.argmax(1), -1)
  # "Lately": the last quarter (at least two events) of the history, all types.
  recent_len = np.maximum(2, ub.n_events // 4)
  e = np.arange(mask.shape[1])[None, :]
  recent = mask & (e >= (ub.n_events - recent_len)[:, None])
  recent_counts = _counts(ub.topic_BxE, recent, T)
  lately = recent_counts.argmax(1)
  lately = np.where((recent_counts.max(1) >= 2) & (lately != top1) & (lately != top2),
                    lately, -1)
  other_counts = type_counts.copy()
  other_counts[np.arange(B), main] = 0
  other = np.where(other_counts.max(1) > 0, other_counts.argmax(1), -1)
  other_topic = _counts(ub.topic_BxE, mask & (ub.type_BxE == other[:, None]), T).argmax(1)

  names = layout.topic_names
  summaries, attributes = [], []
  for b in range(B):
    style = layout.types[main[b]].style
    top = [names[top1[b]]] + ([names[top2[b]]] if top2[b] >= 0 else [])
    text = f'Mostly {style.verb} {style.plural} about {" and ".join(top)}'
    if lately[b] >= 0:
      text += f'; lately more into {names[lately[b]]}'
    if other[b] >= 0:
      o = layout.types[other[b]].style
      text += f'; also {o.verb} {o.plural} about {names[other_topic[b]]}'
    summaries.append(text + '.')
    attributes.append({'main_type': layout.types[main[b]].name, 'top_topics': top})
  return summaries, attributes


def _user_blocks(layout: _Layout) -> Iterator[_UserBlock]:
  for block in range(-(-layout.config.num_users // _USER_BLOCK)):
    yield _user_block(layout, block)


# ---------------------------------------------------------------------------------------------
# Queries.


@dataclasses.dataclass
class _QueryBlock:
  texts: list[str]
  relevant: list[list[int]]  # global catalog rows; the series in part order


def _query_block(layout: _Layout, block: int) -> _QueryBlock:
  cfg = layout.config
  first = block * _QUERY_BLOCK
  B = min(_QUERY_BLOCK, cfg.num_queries - first)
  L, Y = cfg.series_length, len(layout.types)
  rng = np.random.default_rng([cfg.seed, 3, block])
  counts = np.array([t.count for t in layout.types], np.float64)
  typ = rng.choice(Y, size=B, p=counts / counts.sum())
  u = rng.random((B, 4))
  # A topic with probability proportional to its size, then an item by popularity.
  slot_u = np.floor(u[:, 0] * counts[typ]).astype(np.int64)
  topic = np.empty(B, np.int64)
  for t in layout.types:
    sel = typ == t.index
    topic[sel] = np.searchsorted(t.cum_sizes, slot_u[sel], side='right') - 1
  size = layout.sizes_YxT[typ, topic]
  rank = _zipf_rank(u[:, 1], size, cfg.popularity_alpha)
  series, episode = rank // L, rank % L + 1
  series_len = np.minimum(L, size - series * L)
  ask_item = (episode >= 2) & (u[:, 2] < cfg.item_query_prob)
  template = np.floor(u[:, 3] * 1e6).astype(np.int64)

  names = [None] * B
  for t in layout.types:
    sel = np.flatnonzero(typ == t.index)
    for i, name in zip(sel.tolist(), _series_names(layout, t, topic[sel], series[sel])):
      names[i] = name
  texts, rel_type, rel_topic, rel_rank, rel_len = [], [], [], [], []
  for b in range(B):
    style = layout.types[typ[b]].style
    words = ' '.join(w for w in names[b].lower().split() if w not in QUERY_STOPWORDS)
    if ask_item[b]:
      part = f'{style.part.lower()} {episode[b]}'
      choices = (f'{words} {part}', f'{words} {style.noun} {part}', f'{part} of {words}')
      ranks = [rank[b]]
    else:
      choices = (words, f'{words} {style.plural}', f'the {words} {style.noun}',
                 f'{words} {layout.topic_names[topic[b]]}', f'looking for {words}')
      ranks = list(range(series[b] * L, series[b] * L + series_len[b]))
    texts.append(choices[template[b] % len(choices)])
    rel_type.extend([typ[b]] * len(ranks))
    rel_topic.extend([topic[b]] * len(ranks))
    rel_rank.extend(ranks)
    rel_len.append(len(ranks))
  rows = layout.global_rows(np.array(rel_type, np.int64), np.array(rel_topic, np.int64),
                            np.array(rel_rank, np.int64)).tolist()
  bounds = np.cumsum([0] + rel_len).tolist()
  relevant = [rows[bounds[b]:bounds[b + 1]] for b in range(B)]
  return _QueryBlock(texts=texts, relevant=relevant)


def _query_blocks(layout: _Layout) -> Iterator[_QueryBlock]:
  for block in range(-(-layout.config.num_queries // _QUERY_BLOCK)):
    yield _query_block(layout, block)


# ---------------------------------------------------------------------------------------------
# Public API.


def generate_synthetic(config: SyntheticConfig) -> Dataset:
  """The dataset in memory; equal to `load_dataset` of what `write_synthetic` writes.

  Meant for small configurations (the quickstart); use `write_synthetic` at scale.
  """
  layout = _Layout(config)
  ids, type_index, titles, descriptions, tags, attributes, popularity = ([] for _ in range(7))
  for chunk in _item_chunks(layout, 1 << 16):
    t = layout.types[chunk.type_index]
    ids.extend(f'{t.name}-{r}' for r in chunk.rows_in_type.tolist())
    type_index.append(np.full(len(chunk.titles), layout.sorted_index[t.index], np.int32))
    titles.extend(chunk.titles)
    descriptions.extend(chunk.descriptions)
    tags.extend(chunk.tags)
    attributes.extend({'year': y} for y in chunk.years)
    popularity.append(chunk.popularity)
  catalog = Catalog(ids=ids, type_names=layout.type_names_sorted,
                    type_index=np.concatenate(type_index), titles=titles,
                    descriptions=descriptions, tags=tags, attributes=attributes,
                    popularity=np.concatenate(popularity))

  user_parts, item_parts, time_parts, users = [], [], [], {}
  for ub in _user_blocks(layout):
    mask = ub.mask_BxE
    B = mask.shape[0]
    user_parts.append(np.broadcast_to(
        (ub.first_user + np.arange(B))[:, None], mask.shape)[mask].astype(np.int32))
    item_parts.append(ub.row_BxE[mask].astype(np.int32))
    time_parts.append(ub.time_BxE[mask])
    summaries, attrs = _summaries(layout, ub)
    for b in range(B):
      uid = f'u{ub.first_user + b}'
      users[uid] = User(id=uid, attributes=attrs[b], summary=summaries[b])
  interactions = Interactions(
      user_names=[f'u{u}' for u in range(config.num_users)],
      user_index=np.concatenate(user_parts), item_index=np.concatenate(item_parts),
      timestamp=np.concatenate(time_parts))

  queries = []
  for qb in _query_blocks(layout):
    queries.extend(Query(text=text, item_index=tuple(rows))
                   for text, rows in zip(qb.texts, qb.relevant))
  return Dataset(name=config.name, catalog=catalog, interactions=interactions,
                 queries=queries, users=users)


ProgressFn = Callable[[str, int, int, float], None]
CONFIG_FILE = 'synthetic_config.json'


def write_synthetic(config: SyntheticConfig, directory: str | os.PathLike,
                    chunk_size: int = 100_000, overwrite: bool = False,
                    progress: ProgressFn | None = None) -> dict[str, Any]:
  """Streams the dataset to `directory` in the generic format, atomically.

  Memory is bounded by `chunk_size` items (or queries) at a time, and by a fixed block of
  users; the files do not depend on `chunk_size`. Also writes synthetic_config.json (the
  config, for provenance; `load_dataset` ignores it).

  Args:
    config: what to generate.
    directory: the dataset directory to create.
    chunk_size: items or queries generated and written per step.
    overwrite: replace a non-empty `directory`.
    progress: called after each chunk as progress(stage, done, total, seconds_since_start),
      stage in ('items', 'users', 'queries').

  Returns:
    Flat summary: num_items, num_types, num_users, num_interactions, num_queries, seconds,
    items_per_second.
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
  start = time.perf_counter()
  layout = _Layout(config)
  report = progress or (lambda *_: None)
  num_interactions = 0
  with io.atomic_directory(directory, overwrite) as tmp:
    with open(os.path.join(tmp, CONFIG_FILE), 'w', encoding='utf-8') as f:
      json.dump(config.to_json(), f, indent=1)
      f.write('\n')

    done = 0
    with open(os.path.join(tmp, io.ITEMS_FILE), 'w', encoding='utf-8') as f:
      for chunk in _item_chunks(layout, chunk_size):
        t = layout.types[chunk.type_index].name
        lines = []
        for row, title, desc, tags, year, pop in zip(
            chunk.rows_in_type.tolist(), chunk.titles, chunk.descriptions, chunk.tags,
            chunk.years, chunk.popularity.tolist()):
          tag_list = ', '.join(f'"{x}"' for x in tags)
          lines.append(f'{{"id": "{t}-{row}", "type": "{t}", "title": "{title}", '
                       f'"description": "{desc}", "tags": [{tag_list}], '
                       f'"attributes": {{"year": {year}}}, "popularity": {pop:.9g}}}\n')
        f.write(''.join(lines))
        done += len(lines)
        report('items', done, layout.num_items, time.perf_counter() - start)
    item_seconds = time.perf_counter() - start

    type_prefix = [t.name + '-' for t in layout.types]
    with open(os.path.join(tmp, io.INTERACTIONS_FILE), 'w', encoding='utf-8') as fi, \
         open(os.path.join(tmp, io.USERS_FILE), 'w', encoding='utf-8') as fu:
      fi.write(','.join(io.REQUIRED_COLUMNS) + '\n')
      for ub in _user_blocks(layout):
        mask = ub.mask_BxE
        B = mask.shape[0]
        user_E = np.broadcast_to((ub.first_user + np.arange(B))[:, None], mask.shape)[mask]
        type_E = ub.type_BxE[mask]
        row_in_type_E = ub.row_BxE[mask] - layout.row_offsets[type_E]
        fi.write(''.join(
            f'u{u},{type_prefix[y]}{r},{ts}\n' for u, y, r, ts in zip(
                user_E.tolist(), type_E.tolist(), row_in_type_E.tolist(),
                ub.time_BxE[mask].tolist())))
        num_interactions += int(mask.sum())
        summaries, attrs = _summaries(layout, ub)
        fu.write(''.join(
            json.dumps({'id': f'u{ub.first_user + b}', 'attributes': attrs[b],
                        'summary': summaries[b]}) + '\n' for b in range(B)))
        report('users', ub.first_user + B, config.num_users, time.perf_counter() - start)

    with open(os.path.join(tmp, io.QUERIES_FILE), 'w', encoding='utf-8') as f:
      for qb in _query_blocks(layout):
        f.write(''.join(
            json.dumps({'query': text, 'item_ids': [_row_id(layout, r) for r in rows]}) + '\n'
            for text, rows in zip(qb.texts, qb.relevant)))
      report('queries', config.num_queries, config.num_queries, time.perf_counter() - start)
  seconds = time.perf_counter() - start
  return {
      'num_items': layout.num_items,
      'num_types': len(layout.types),
      'num_users': config.num_users,
      'num_interactions': num_interactions,
      'num_queries': config.num_queries,
      'seconds': round(seconds, 3),
      'item_seconds': round(item_seconds, 3),
      'items_per_second': round(layout.num_items / max(item_seconds, 1e-9), 1),
  }


def _row_id(layout: _Layout, row: int) -> str:
  y = int(np.searchsorted(layout.row_offsets, row, side='right') - 1)
  return layout.item_id(y, row - int(layout.row_offsets[y]))


@dataclasses.dataclass
class SyntheticTruth:
  """The latent variables behind a generated dataset (for tests and analysis).

  Attributes:
    topic_names: (T,) names of the topics.
    item_topic: (N,) int32 topic of each catalog row.
    item_secondary_topic: (N,) int32, != item_topic.
    item_series: (N,) int64 id of the item's series, unique across types and topics.
    item_episode: (N,) int32 1-based part number within the series.
    series_next: (N,) int32 catalog row of the next part of the series, -1 for the last.
    item_rank: (N,) int32 popularity rank within (type, topic); 0 = most popular.
    user_preferences: (U, T) float32 topic preferences at the first event.
    user_drift_topic: (U,) int32 topic that preferences drift toward.
    user_main_type: (U,) entity type name the user mostly consumes.
  """
  topic_names: tuple[str, ...]
  item_topic: np.ndarray
  item_secondary_topic: np.ndarray
  item_series: np.ndarray
  item_episode: np.ndarray
  series_next: np.ndarray
  item_rank: np.ndarray
  user_preferences: np.ndarray
  user_drift_topic: np.ndarray
  user_main_type: list[str]


def synthetic_truth(config: SyntheticConfig) -> SyntheticTruth:
  """Latent topics, series and user preferences of `generate_synthetic(config)`."""
  layout = _Layout(config)
  N, L = layout.num_items, config.series_length
  topic = np.empty(N, np.int32)
  secondary = np.empty(N, np.int32)
  series = np.empty(N, np.int64)
  episode = np.empty(N, np.int32)
  rank = np.empty(N, np.int32)
  series_next = np.full(N, -1, np.int32)
  for t in layout.types:
    rows = np.arange(t.count, dtype=np.int64)
    f = _item_fields(layout, t, t.slots_of_rows(rows))
    g = rows + t.row_offset
    topic[g], secondary[g], episode[g], rank[g] = f.topic, f.secondary, f.episode, f.rank
    # The global slot of the series' first part identifies the series.
    series[g] = t.row_offset + t.cum_sizes[f.topic] + f.series * L
    size = layout.sizes_YxT[t.index, f.topic]
    has_next = (f.episode < L) & (f.rank + 1 < size)
    nxt = t.rows_of_slots(t.cum_sizes[f.topic] + f.rank + 1) + t.row_offset
    series_next[g] = np.where(has_next, nxt, -1)
  prefs, drift, main = [], [], []
  for ub in _user_blocks(layout):
    prefs.append(ub.prefs_BxT.astype(np.float32))
    drift.append(ub.drift_topic.astype(np.int32))
    main.extend(layout.types[y].name for y in ub.main_type.tolist())
  return SyntheticTruth(
      topic_names=layout.topic_names, item_topic=topic, item_secondary_topic=secondary,
      item_series=series, item_episode=episode, series_next=series_next, item_rank=rank,
      user_preferences=np.concatenate(prefs), user_drift_topic=np.concatenate(drift),
      user_main_type=main)
