"""The bm25s search baseline against our own BM25 (an independent implementation)."""

import numpy as np
import pytest

from neo_jax.catalog.splits import Split
from neo_jax.catalog.types import Catalog, Dataset, Interactions, Query
from neo_jax.baselines import bm25
from neo_jax.eval.validation import Validator

TITLES = ['red apple pie recipe', 'green apple orchard', 'blue sky jazz', 'jazz night in paris',
          'apple jazz fusion', 'quiet night sky', 'the night of the red moon',
          'paris in the spring', 'orchard of blue apples', 'fusion cooking at night']


def _dataset():
  n = len(TITLES)
  cat = Catalog(ids=[str(i) for i in range(n)], type_names=('a', 'b'),
                type_index=np.array([i % 2 for i in range(n)], np.int32), titles=TITLES,
                descriptions=[''] * n, tags=[()] * n, attributes=[{}] * n,
                popularity=np.full(n, np.nan, np.float32))
  inter = Interactions(['u'], np.zeros(2, np.int32), np.array([0, 1], np.int32),
                       np.array([0, 1], np.int64))
  return Dataset('tiny', cat, inter), Split(train={'u': np.array([0, 1], np.int32)}, valid=[],
                                            test=[])


@pytest.mark.parametrize('k1,b', [(1.2, 0.75), (2.0, 0.3)])
def test_bm25s_scores_equal_ours_over_k1_plus_1(k1, b):
  import bm25s
  ds, split = _dataset()
  ours = bm25.BM25(k1=k1, b=b)
  ours.fit(ds, split)
  retriever = bm25s.BM25(k1=k1, b=b, method='lucene')
  retriever.index([bm25.words(ds.catalog.text(i)) for i in range(len(ds.catalog))],
                  show_progress=False)
  for query in ('apple jazz', 'night in paris', 'blue orchard of the sky', 'moon'):
    toks = sorted(set(bm25.words(query)))  # ours counts a repeated word once
    np.testing.assert_allclose(retriever.get_scores(toks) * (k1 + 1), ours.scores([query])[0],
                               rtol=1e-5, atol=1e-6)


def test_bm25s_baseline_ranks_within_type_and_tunes_on_validation():
  ds, split = _dataset()
  model = bm25.BM25S()
  valid = [Query('apple orchard', (1,)), Query('jazz night', (3,))]
  facts = model.fit(ds, split, validator=Validator(ds.catalog, split.valid, valid))
  grid = {(k1, b): facts[f'valid_search_ndcg@10/k1={k1},b={b}']
          for k1, b in bm25.BM25S.K1_B_GRID}
  assert (facts['k1'], facts['b']) == max(grid, key=lambda kb: (grid[kb], -list(grid).index(kb)))
  ranked = model.rank_search(['jazz night in paris', 'apple', 'the of'], ['b', 'a', None], 4)
  assert ranked.dtype == np.int32 and ranked.shape == (3, 4)
  assert ranked[0, 0] == 3
  assert all(ds.catalog.type_of(int(r)) == 'b' for r in ranked[0])
  # Type a (even rows) holds 'apple' in rows 4 (3 words, first: shorter) and 0 (4 words);
  # 'apples' (row 8) is another word, so the rest tie at 0 and follow by row.
  assert ranked[1].tolist() == [4, 0, 2, 6]
  # Only stop words: every item ties at 0 and the lowest rows come first.
  assert ranked[2].tolist() == [0, 1, 2, 3]
  with pytest.raises(NotImplementedError, match='does not recommend'):
    model.rank_recommend([[0]], ['a'], 3)
  with pytest.raises(ValueError, match='target types'):
    model.rank_search(['a'], ['a', 'b'], 3)


def test_bm25s_and_ours_agree_on_top_item_of_exact_titles():
  ds, split = _dataset()
  lib = bm25.BM25S(stopwords=None)
  lib.fit(ds, split)
  ours = bm25.BM25()
  ours.fit(ds, split)
  types = [ds.catalog.type_of(i) for i in range(len(TITLES))]
  np.testing.assert_array_equal(lib.rank_search(TITLES, types, 1)[:, 0], np.arange(len(TITLES)))
  np.testing.assert_array_equal(ours.rank_search(TITLES, types, 1)[:, 0], np.arange(len(TITLES)))
