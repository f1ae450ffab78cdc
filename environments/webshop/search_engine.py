"""Product search as upstream WebShop's pyserini/Lucene BM25 ranks it (no Java).

Upstream (search_engine/convert_product_file_format.py) indexes, per product, one
`contents` field: `title + " " + description + " " + first bullet + " " + option text`,
lowercased, where option text is `name: v1, v2, and name2: ...` (names and values as the
item page shows them), with the ASIN as the document id. Pyserini 0.17.0 (Anserini
0.14.3, Lucene 8) indexes it with its default English analyzer and answers
`search(query, k=50)` with BM25 (k1 = 0.9, b = 0.4). `environments/lucene/` computes
exactly that (analyzer and BM25, shared with the search-QA retriever); this module adds
what is WebShop's own: the document text of a product, the ASIN as the tie-break id
(ties go by ASIN, not by catalog order) and the index cache.

`tests/test_webshop_search_upstream.py` pins this on concrete examples and, when pyserini
is installed, compares the rankings with Lucene's own.

The index is saved under `<cache_dir>/bm25-v<N>-<key>/` (built in a temp folder, then
renamed, so concurrent builders are safe) with the catalog's ASINs, and memory-mapped
from there by later processes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np

from environments.lucene.bm25 import Bm25Index
from environments.webshop.data import Product

SEARCH_RETURN_N = 50
# v3: the shared environments/lucene index files (v2 was postings.npz + vocab.json).
INDEX_FORMAT_VERSION = 3


def document_text(product: Product) -> str:
  """The text upstream indexes for a product."""
  option_text = ", and ".join(f"{name}: {', '.join(values)}"
                              for name, values in product.options.items())
  first_bullet = product.bullets[0] if product.bullets else ""
  return " ".join([product.title, product.description, first_bullet,
                   option_text]).lower()


def _documents(products: Sequence[Product]):
  return ((p.asin, document_text(p)) for p in products)


class SearchEngine:
  """Top-50 BM25 search over a catalog; `search(query)` -> ASINs, best first."""

  def __init__(self, index: Bm25Index, asins: Sequence[str]):
    if index.num_docs != len(asins):
      raise ValueError(f"index of {index.num_docs} products for {len(asins)} ASINs")
    self._index = index
    self._asins = list(asins)

  @classmethod
  def build(cls, products: Sequence[Product]) -> "SearchEngine":
    return cls(Bm25Index.build(_documents(products)), [p.asin for p in products])

  @classmethod
  def load_or_build(cls, products: Sequence[Product], cache_dir: str | None,
                    key: str) -> "SearchEngine":
    """Loads the index saved under `cache_dir` for `key`, else builds and saves it."""
    if cache_dir is None:
      return cls.build(products)
    index_dir = os.path.join(cache_dir, f"bm25-v{INDEX_FORMAT_VERSION}-{key}")
    asins = [p.asin for p in products]
    damaged = False
    if os.path.isdir(index_dir):
      try:
        with open(os.path.join(index_dir, "asins.json")) as f:
          saved_asins = json.load(f)
        if saved_asins == asins:
          return cls(Bm25Index.load(index_dir), asins)
      except (OSError, ValueError, KeyError):
        pass
      damaged = True  # Unreadable, or for other products: replaced below.
    cls._build_and_save(products, index_dir, replace=damaged)
    return cls(Bm25Index.load(index_dir), asins)

  @staticmethod
  def _build_and_save(products: Sequence[Product], index_dir: str, replace: bool) -> None:
    """Builds the index in a temp folder, then renames it to `index_dir`.

    A complete index already there is kept (another process built the same one),
    unless `replace` (it was found damaged): then it is moved aside and deleted.
    """
    parent = os.path.dirname(index_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-bm25-")
    try:
      Bm25Index.build(_documents(products), tmp)
      with open(os.path.join(tmp, "asins.json"), "w") as f:
        json.dump([p.asin for p in products], f)
      os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared.
      if replace:
        trash = tempfile.mkdtemp(dir=parent, prefix=".tmp-old-bm25-")
        try:
          os.rename(index_dir, os.path.join(trash, "index"))
        except OSError:
          pass  # Already moved by another process.
        shutil.rmtree(trash, ignore_errors=True)
      try:
        os.rename(tmp, index_dir)
      except OSError:
        pass  # Another process renamed its identical index into place first.
    finally:
      if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)

  def scores(self, query: str) -> np.ndarray:
    """BM25 score of every product for `query`, in catalog order. [num_products] float32"""
    return self._index.scores(query)

  def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[str]:
    """ASINs of the (at most) k best matching products, best first.

    As Anserini orders Lucene's hits: by score, ties by document id (the ASIN, as a
    string). (pyserini also rounds the scores it reports to 4 decimals; the order stays.)
    """
    rows, _ = self._index.search(query, k)
    return [self._asins[i] for i in rows]
