"""The shared Lucene BM25 index (environments/lucene/bm25.py): build, save, tie order.

Its scores are pinned against Lucene in tests/test_webshop_search_upstream.py and
tests/test_search_server.py; here: the streaming build is one index however the
documents are chunked, a saved index maps back equal, and hits are ordered as Anserini.
"""

import json

import numpy as np
import pytest

from environments.lucene.bm25 import INDEX_FORMAT, Bm25Index

DOCS = [
    ("d3", "Red running shoes for men"),
    ("d1", "red shoes"),
    ("d2", "red shoes"),
    ("a9", "The of and"),  # no terms
    ("d2", "red shoes"),  # a repeated id: ties fall back to indexing order
    ("d0", "blue running shorts, running socks and running shoes"),
    ("e5", "Shoes: red, blue; sizes 8.5 and 9"),
]
QUERIES = ["red shoes", "running", "shoes shoes blue", "8.5", "sizes", "the and", "zzz", ""]


def _same(a: Bm25Index, b: Bm25Index) -> None:
  for q in QUERIES:
    np.testing.assert_array_equal(a.scores(q), b.scores(q))
    for k in (1, 2, 3, 10):
      (ra, sa), (rb, sb) = a.search(q, k), b.search(q, k)
      np.testing.assert_array_equal(ra, rb)
      np.testing.assert_array_equal(sa, sb)


def test_chunked_build_equals_one_chunk():
  whole = Bm25Index.build(DOCS)
  for chunk_docs in (1, 2, 3):
    _same(whole, Bm25Index.build(iter(DOCS), chunk_docs=chunk_docs))


def test_saved_index_maps_back_equal(tmp_path):
  saved = Bm25Index.build(iter(DOCS), tmp_path, chunk_docs=2)
  assert Bm25Index.is_complete(tmp_path)
  meta = json.loads((tmp_path / "meta.json").read_text())
  assert meta["format"] == INDEX_FORMAT and meta["num_docs"] == len(DOCS)
  # Only the index's files stay; the spilled chunks went to a removed temp folder.
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "doc_rows.npy", "id_rank.npy", "indptr.npy", "meta.json", "term_scores.npy",
      "terms.json"]
  assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(".tmp-bm25-spill")]
  loaded = Bm25Index.load(tmp_path)
  assert isinstance(loaded._term_scores, np.memmap)  # pylint: disable=protected-access
  _same(Bm25Index.build(DOCS), saved)
  _same(saved, loaded)


def test_hits_are_matching_documents_by_score_then_id_then_row():
  index = Bm25Index.build(DOCS)
  rows, scores = index.search("red shoes", 10)
  # d1, d2 (row 2) and d2 (row 4) tie: id order, then indexing order; the stop-word-only
  # document and the one without "red"/"shoe" terms are no hits.
  ids = [DOCS[i][0] for i in rows]
  assert ids[:3] == ["d1", "d2", "d2"] and list(rows[1:3]) == [2, 4]
  assert scores[0] == scores[1] == scores[2] and np.all(np.diff(scores) <= 0)
  assert set(ids) == {"d0", "d1", "d2", "d3", "e5"}
  assert scores.dtype == np.float32 and rows.dtype == np.int64
  np.testing.assert_array_equal(scores, index.scores("red shoes")[rows])
  # k cuts through the tie in the same order.
  assert list(index.search("red shoes", 2)[0]) == [1, 2]
  assert [len(index.search(q, 5)[0]) for q in ("the and", "zzz", "")] == [0, 0, 0]


def test_empty_corpus_and_stop_word_only_corpus():
  for docs in ([], [("x", "the of")]):
    index = Bm25Index.build(docs)
    assert index.num_docs == len(docs)
    assert len(index.search("anything", 3)[0]) == 0
    assert index.scores("anything").shape == (len(docs),)


def test_damaged_index_is_an_error_not_a_wrong_answer(tmp_path):
  Bm25Index.build(DOCS, tmp_path)
  np.save(tmp_path / "id_rank.npy", np.zeros(2, np.int32))
  with pytest.raises(ValueError):
    Bm25Index.load(tmp_path)
