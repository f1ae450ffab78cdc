"""Product search as upstream WebShop's Lucene BM25 ranks it, in Python (no Java).

Upstream (search_engine/convert_product_file_format.py) indexes, per product, one
`contents` field: `title + " " + description + " " + first bullet + " " + option text`,
lowercased, where option text is `name: v1, v2, and name2: ...` (names and values as the
item page shows them). Pyserini 0.17.0 (Anserini 0.14.3, Lucene 8) indexes it with its
default English analyzer and answers `search(query, k=50)` with BM25 (k1 = 0.9, b = 0.4)
over a bag of the query's terms. Here, the same, computed as Lucene computes it:

- terms: `lucene_analyzer.analyze` (StandardTokenizer, possessives, lower case, Lucene's
  33 English stop words, Porter stemming as Lucene's PorterStemmer);
- document length: the number of terms, stored as Lucene stores norms, in one byte
  (SmallFloat.intToByte4: exact below 40, then 4 significant bits), and read back from
  that byte, so documents of 84 to 87 terms score alike;
- avgdl = total terms / documents with a term (float32); idf = ln(1 + (N - df + 0.5) /
  (df + 0.5)); a term scores weight * float32(f / (f + k1 * (1 - b + b * len / avgdl)))
  with weight = idf (Lucene 8 has no (k1 + 1) factor), in float32 as Lucene; a query
  term that occurs n times adds its score n times, and a document's terms are summed in
  float64 and rounded to float32 (Lucene's disjunction sum);
- hits: the 50 best documents with at least one query term, best first, ties by ASIN
  (Anserini sorts on score, then on its `id` field; not on catalog order).

`tests/test_webshop_search_upstream.py` pins this on concrete examples and, when pyserini
is installed, compares the rankings with Lucene's own.

The index (vocabulary, per-term document lists and float32 term scores) is saved under
`<cache_dir>/bm25-v<N>-<key>/` (built in a temp folder, then renamed, so concurrent
builders are safe) and loaded from there by later processes.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from environments.webshop import lucene_analyzer
from environments.webshop.data import Product

SEARCH_RETURN_N = 50
INDEX_FORMAT_VERSION = 2
K1 = 0.9
B = 0.4


def tokenize(text: str) -> list[str]:
  """The terms upstream's Lucene analyzer makes of `text`."""
  return lucene_analyzer.analyze(text)


def document_text(product: Product) -> str:
  """The text upstream indexes for a product."""
  option_text = ", and ".join(f"{name}: {', '.join(values)}"
                              for name, values in product.options.items())
  first_bullet = product.bullets[0] if product.bullets else ""
  return " ".join([product.title, product.description, first_bullet,
                   option_text]).lower()


def _int_to_byte4(i: int) -> int:
  """Lucene's SmallFloat.intToByte4: a non-negative int in one byte (exact below 40)."""
  if i < 24:
    return i
  i -= 24
  num_bits = i.bit_length()
  if num_bits < 4:
    return 24 + i
  shift = num_bits - 4
  return 24 + (((i >> shift) & 0x07) | ((shift + 1) << 3))


def _byte4_to_int(byte: int) -> int:
  """Lucene's SmallFloat.byte4ToInt, the inverse of _int_to_byte4 on its image."""
  if byte < 24:
    return byte
  i = byte - 24
  bits, shift = i & 0x07, (i >> 3) - 1
  return 24 + (bits if shift == -1 else (bits | 0x08) << shift)


def lucene_length(num_terms: int) -> int:
  """The document length BM25 reads back from Lucene's one-byte norm."""
  return _byte4_to_int(_int_to_byte4(num_terms))


class SearchEngine:
  """Top-50 BM25 search over a catalog; `search(query)` -> ASINs, best first."""

  def __init__(self, vocab: dict[str, int], indptr: np.ndarray, doc_ids: np.ndarray,
               term_scores: np.ndarray, asins: Sequence[str]):
    self._vocab = vocab              # term -> row
    self._indptr = indptr            # [num_terms + 1] int64
    self._doc_ids = doc_ids          # [nnz] int32, ascending within a row
    self._term_scores = term_scores  # [nnz] float32: the term's score in that document
    self._asins = list(asins)
    # Each product's place in ASIN (string) order: Lucene's tie-break is the doc id.
    self._asin_rank = np.empty(len(self._asins), np.int64)
    self._asin_rank[sorted(range(len(self._asins)), key=self._asins.__getitem__)] = (
        np.arange(len(self._asins)))

  @classmethod
  def build(cls, products: Sequence[Product]) -> "SearchEngine":
    n = len(products)
    first_seen: dict[str, int] = {}  # term -> id in order of first occurrence
    term_lists, freq_lists = [], []
    lengths = np.zeros(n, np.int64)
    for i, product in enumerate(products):
      counts = collections.Counter(tokenize(document_text(product)))
      lengths[i] = sum(counts.values())
      term_lists.append(np.fromiter(
          (first_seen.setdefault(t, len(first_seen)) for t in counts), np.int64,
          len(counts)))
      freq_lists.append(np.fromiter(counts.values(), np.float64, len(counts)))
    terms = sorted(first_seen)
    vocab = {term: row for row, term in enumerate(terms)}
    remap = np.empty(len(terms), np.int64)
    remap[[first_seen[t] for t in terms]] = np.arange(len(terms))
    rows = remap[np.concatenate(term_lists)] if term_lists else np.zeros(0, np.int64)
    doc_ids = np.repeat(np.arange(n, dtype=np.int32), [len(t) for t in term_lists])
    freqs = np.concatenate(freq_lists) if freq_lists else np.zeros(0, np.float64)
    order = np.lexsort((doc_ids, rows))  # postings by term, then document
    rows, doc_ids, freqs = rows[order], doc_ids[order], freqs[order]
    df = np.bincount(rows, minlength=len(terms))
    indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
    doc_count = int(np.count_nonzero(lengths))
    term_scores = np.zeros(len(doc_ids), np.float32)
    if doc_count:
      avgdl = np.float32(lengths.sum() / doc_count)
      norm_length = np.array([lucene_length(int(x)) for x in lengths], np.float32)
      k1, b = np.float32(K1), np.float32(B)
      # BM25Similarity's per-norm cache, in float32 as Lucene computes it.
      denominator = (k1 * ((np.float32(1) - b) + b * norm_length / avgdl)).astype(
          np.float64)
      idf = np.log(1 + (doc_count - df + 0.5) / (df + 0.5)).astype(np.float32)
      tf_part = (freqs / (freqs + denominator[doc_ids])).astype(np.float32)
      term_scores = idf[rows] * tf_part
    return cls(vocab, indptr, doc_ids, term_scores.astype(np.float32),
               [p.asin for p in products])

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
          return cls._load(index_dir, asins)
      except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
      damaged = True  # Unreadable, or for other products: replaced below.
    engine = cls.build(products)
    engine._save(index_dir, replace=damaged)
    return engine

  @classmethod
  def _load(cls, index_dir: str, asins: Sequence[str]) -> "SearchEngine":
    with open(os.path.join(index_dir, "vocab.json")) as f:
      terms = json.load(f)
    with np.load(os.path.join(index_dir, "postings.npz")) as z:
      indptr, doc_ids, term_scores = z["indptr"], z["doc_ids"], z["term_scores"]
    if (len(indptr) != len(terms) + 1 or len(doc_ids) != len(term_scores)
        or int(indptr[-1]) != len(doc_ids)
        or (len(doc_ids) and int(doc_ids.max()) >= len(asins))):
      raise ValueError(f"index {index_dir} is inconsistent")
    return cls({t: row for row, t in enumerate(terms)}, indptr, doc_ids, term_scores,
               asins)

  def _save(self, index_dir: str, replace: bool) -> None:
    """Writes the index to a temp folder, then renames it to `index_dir`.

    A complete index already there is kept (another process built the same one),
    unless `replace` (it was found damaged): then it is moved aside and deleted.
    """
    parent = os.path.dirname(index_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-bm25-")
    try:
      with open(os.path.join(tmp, "vocab.json"), "w") as f:
        json.dump(sorted(self._vocab, key=self._vocab.get), f)
      np.savez(os.path.join(tmp, "postings.npz"), indptr=self._indptr,
               doc_ids=self._doc_ids, term_scores=self._term_scores)
      with open(os.path.join(tmp, "asins.json"), "w") as f:
        json.dump(self._asins, f)
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
    total = np.zeros(len(self._asins), np.float64)
    for term, count in collections.Counter(tokenize(query)).items():
      row = self._vocab.get(term)
      if row is None:
        continue
      lo, hi = self._indptr[row], self._indptr[row + 1]
      # Each repetition of a term is one more clause of Lucene's bag-of-words query.
      total[self._doc_ids[lo:hi]] += count * self._term_scores[lo:hi].astype(np.float64)
    return total.astype(np.float32)

  def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[str]:
    """ASINs of the (at most) k best matching products, best first.

    As Anserini orders Lucene's hits: by score, ties by document id (the ASIN, as a
    string). (pyserini also rounds the scores it reports to 4 decimals; the order stays.)
    """
    scores = self.scores(query)
    hits = np.flatnonzero(scores > 0)
    top = hits[np.lexsort((self._asin_rank[hits], -scores[hits]))][:k]
    return [self._asins[i] for i in top]
