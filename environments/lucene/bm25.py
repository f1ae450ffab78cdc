"""BM25 ranking as pyserini's LuceneSearcher computes it (Lucene 8), in NumPy.

One index over one text field per document, built by streaming the documents once, and
searched with a bag of the query's terms, as `LuceneSearcher(index).search(query, k)`
with its defaults (BM25 k1 = 0.9, b = 0.4). Both built-in search families rank with it:
WebShop's product search and the search-QA retriever.

- terms: `analyzer.analyze` (pyserini's DefaultEnglishAnalyzer);
- document length: the number of terms, stored as Lucene stores norms, in one byte
  (SmallFloat.intToByte4: exact below 40, then 4 significant bits), and read back from
  that byte, so documents of 84 to 87 terms score alike;
- avgdl = total terms / documents with a term (float32); idf = ln(1 + (N - df + 0.5) /
  (df + 0.5)) with N the documents with a term; a term scores weight * float32(f / (f +
  k1 * (1 - b + b * len / avgdl))) with weight = idf (Lucene 8 has no (k1 + 1) factor),
  in float32 as Lucene; a query term that occurs n times adds its score n times, and a
  document's terms are summed in float64 and rounded to float32 (Lucene's disjunction sum);
- hits: the documents with at least one query term, best first, ties by the document's
  id string (Anserini sorts on score, then on its `id` field, as UTF-8 bytes; not on
  indexing order), then by indexing order (Lucene's last resort, for repeated ids).

Pinned against pyserini 0.17.0 on WebShop's catalog (tests/test_webshop_search_upstream.py:
top-50 lists identical for 10,566 of 10,566 queries).

The build holds one chunk of documents' postings in memory at a time (spilled to disk
between the two passes) plus the vocabulary, the per-document lengths and ids; with a
`directory` the postings are written into memory-mapped files there, and `load` maps them
back, so a 21M-passage corpus needs neither its text nor its postings in RAM.
Files (all NumPy .npy or JSON, nothing pickled):
  terms.json       the vocabulary, in row order
  indptr.npy       int64 [num_terms + 1]: row r's postings are [indptr[r], indptr[r+1])
  doc_rows.npy     int32 [num_postings]: document (indexing order), ascending in a row
  term_scores.npy  float32 [num_postings]: the term's BM25 score in that document
  id_rank.npy      int32 [num_docs]: each document's place in id order (the tie-break)
  meta.json        format, counts, k1, b; written last (marks a complete index)
"""

from __future__ import annotations

import array
import collections
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from environments.lucene import analyzer

K1 = 0.9
B = 0.4
INDEX_FORMAT = "lucene-bm25-v1"
# Documents analysed between two spills of postings (about 100 MB of arrays for
# passage-sized documents).
DEFAULT_CHUNK_DOCS = 65_536


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


def _lucene_lengths(lengths: np.ndarray) -> np.ndarray:
  """`lucene_length` of each entry of int64 [n] -> float32 [n] (one call per distinct)."""
  distinct, inverse = np.unique(lengths, return_inverse=True)
  table = np.array([lucene_length(int(x)) for x in distinct], np.float32)
  return table[inverse.reshape(-1)]


class _Spill:
  """One chunk's postings, in document order: term id, document row, frequency."""

  def __init__(self, folder: str, number: int, terms: np.ndarray, rows: np.ndarray,
               freqs: np.ndarray):
    self._path = os.path.join(folder, f"chunk{number}.npz")
    np.savez(self._path, terms=terms, rows=rows, freqs=freqs)

  def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(self._path) as z:
      out = z["terms"], z["rows"], z["freqs"]
    os.remove(self._path)  # Read once; frees the disk as the second pass goes.
    return out


def _new_array(directory: Path | None, name: str, dtype, shape: tuple[int, ...]):
  if directory is None:
    return np.empty(shape, dtype)
  return np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype,
                                   shape=shape)


class Bm25Index:
  """BM25 over documents given as (id, text); rows are the documents' indexing order."""

  def __init__(self, terms: list[str], indptr: np.ndarray, doc_rows: np.ndarray,
               term_scores: np.ndarray, id_rank: np.ndarray):
    if (len(indptr) != len(terms) + 1 or len(doc_rows) != len(term_scores)
        or int(indptr[-1]) != len(doc_rows)
        or (len(doc_rows) and int(doc_rows.max(initial=0)) >= len(id_rank))):
      raise ValueError("BM25 index arrays are inconsistent")
    self._vocab = {term: row for row, term in enumerate(terms)}
    self._indptr = indptr            # int64 [num_terms + 1]
    self._doc_rows = doc_rows        # int32 [num_postings], ascending within a term
    self._term_scores = term_scores  # float32 [num_postings]
    self._id_rank = id_rank          # int32 [num_docs]: place in id (UTF-8) order

  @property
  def num_docs(self) -> int:
    return len(self._id_rank)

  @property
  def vocabulary(self) -> dict[str, int]:
    """term -> row (read-only use)."""
    return self._vocab

  # --- building -----------------------------------------------------------------------

  @classmethod
  def build(cls, docs: Iterable[tuple[str, str]], directory: str | os.PathLike | None = None,
            chunk_docs: int = DEFAULT_CHUNK_DOCS, k1: float = K1,
            b: float = B) -> "Bm25Index":
    """Indexes (id, text) pairs, streamed once.

    With `directory` (an existing, empty folder) the index is written there and returned
    memory-mapped; else it is held in memory. Spilled chunks go to a temporary folder
    beside `directory` (or the system's), removed when done.
    """
    directory = Path(directory) if directory is not None else None
    vocab: dict[str, int] = {}
    df = np.zeros(0, np.int64)
    lengths_parts, id_parts, spills = [], [], []
    spill_parent = str(directory.parent) if directory is not None else None
    with tempfile.TemporaryDirectory(prefix=".tmp-bm25-spill-", dir=spill_parent) as spill:
      num_docs = 0
      docs = iter(docs)
      while chunk := list(itertools.islice(docs, chunk_docs)):
        # Flat int32 buffers: a chunk of passages holds millions of postings.
        terms, freqs, sizes, lengths = array.array("i"), array.array("i"), [], []
        for _, text in chunk:
          counts = collections.Counter(analyzer.analyze(text))
          terms.extend(vocab.setdefault(t, len(vocab)) for t in counts)
          freqs.extend(counts.values())
          sizes.append(len(counts))
          lengths.append(sum(counts.values()))
        term_arr = np.frombuffer(terms, np.int32)
        rows = np.repeat(np.arange(num_docs, num_docs + len(chunk), dtype=np.int32), sizes)
        spills.append(_Spill(spill, len(spills), term_arr, rows,
                             np.frombuffer(freqs, np.int32)))
        chunk_df = np.bincount(term_arr, minlength=len(vocab))
        df = np.concatenate([df, np.zeros(len(vocab) - len(df), np.int64)]) + chunk_df
        lengths_parts.append(np.array(lengths, np.int64))
        # Ids as UTF-8 bytes: NumPy sorts them bytewise, as Lucene sorts its `id` terms.
        id_parts.append(np.array([doc_id.encode("utf-8") for doc_id, _ in chunk], "S"))
        num_docs += len(chunk)
        del chunk, terms, freqs
      return cls._assemble(vocab, df, lengths_parts, id_parts, spills, directory, k1, b)

  @classmethod
  def _assemble(cls, vocab: dict[str, int], df: np.ndarray, lengths_parts: list,
                id_parts: list, spills: list[_Spill], directory: Path | None, k1: float,
                b: float) -> "Bm25Index":
    """Second pass: scores every posting and writes it at its place in term order."""
    lengths = (np.concatenate(lengths_parts) if lengths_parts
               else np.zeros(0, np.int64))                                    # [num_docs]
    num_docs = len(lengths)
    indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)          # [terms + 1]
    num_postings = int(indptr[-1])
    doc_rows = _new_array(directory, "doc_rows", np.int32, (num_postings,))
    term_scores = _new_array(directory, "term_scores", np.float32, (num_postings,))
    doc_count = int(np.count_nonzero(lengths))
    idf, denominator = np.zeros(0, np.float32), np.zeros(0, np.float64)
    if doc_count:
      avgdl = np.float32(lengths.sum() / doc_count)
      k1_32, b_32 = np.float32(k1), np.float32(b)
      # BM25Similarity's per-norm cache, in float32 as Lucene computes it.  [num_docs]
      denominator = (k1_32 * ((np.float32(1) - b_32) + b_32 * _lucene_lengths(lengths)
                              / avgdl)).astype(np.float64)
      idf = np.log(1 + (doc_count - df + 0.5) / (df + 0.5)).astype(np.float32)  # [terms]
    cursor = indptr[:-1].copy()  # next free place of each term's postings
    for spill in spills:
      terms, rows, freqs = spill.read()
      order = np.argsort(terms, kind="stable")  # by term; rows stay ascending
      terms, rows, freqs = terms[order], rows[order], freqs[order].astype(np.float64)
      first, start, count = np.unique(terms, return_index=True, return_counts=True)
      place = cursor[terms] + (np.arange(len(terms)) - np.repeat(start, count))
      cursor[first] += count
      doc_rows[place] = rows
      term_scores[place] = idf[terms] * (freqs / (freqs + denominator[rows])).astype(
          np.float32)
    id_rank = _new_array(directory, "id_rank", np.int32, (num_docs,))
    if num_docs:
      ids = np.concatenate(id_parts)
      id_rank[np.argsort(ids, kind="stable")] = np.arange(num_docs, dtype=np.int32)
    terms = sorted(vocab, key=vocab.__getitem__)
    if directory is None:
      return cls(terms, indptr, doc_rows, term_scores, id_rank)
    for mapped in (doc_rows, term_scores, id_rank):
      mapped.flush()
    del doc_rows, term_scores, id_rank
    np.save(directory / "indptr.npy", indptr)
    (directory / "terms.json").write_text(json.dumps(terms, ensure_ascii=False),
                                          encoding="utf-8")
    (directory / "meta.json").write_text(json.dumps({
        "format": INDEX_FORMAT, "num_docs": num_docs, "num_terms": len(terms),
        "num_postings": num_postings, "k1": k1, "b": b}))
    return cls.load(directory)

  # --- loading ------------------------------------------------------------------------

  @staticmethod
  def is_complete(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds an index of this format (its meta.json is written last)."""
    try:
      meta = json.loads((Path(directory) / "meta.json").read_text())
    except (OSError, ValueError):
      return False
    return isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "Bm25Index":
    """Maps the index saved in `directory` (ValueError / OSError when damaged)."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    if meta.get("format") != INDEX_FORMAT:
      raise ValueError(f"{directory} is not a {INDEX_FORMAT} index")
    terms = json.loads((directory / "terms.json").read_text(encoding="utf-8"))
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
              for name in ("indptr", "doc_rows", "term_scores", "id_rank")}
    index = cls(terms, np.asarray(arrays["indptr"]), arrays["doc_rows"],
                arrays["term_scores"], arrays["id_rank"])
    if (index.num_docs != meta.get("num_docs")
        or len(index._doc_rows) != meta.get("num_postings")):
      raise ValueError(f"index {directory} is inconsistent with its meta.json")
    return index

  # --- searching ----------------------------------------------------------------------

  def _postings(self, query: str) -> tuple[np.ndarray, np.ndarray]:
    """The query terms' postings, term after term in query order.

    -> (document rows int32 [p], float64 scores [p] with a repeated term's multiplied)
    """
    rows, scores = [], []
    for term, count in collections.Counter(analyzer.analyze(query)).items():
      row = self._vocab.get(term)
      if row is None:
        continue
      lo, hi = int(self._indptr[row]), int(self._indptr[row + 1])
      rows.append(np.asarray(self._doc_rows[lo:hi]))
      # Each repetition of a term is one more clause of Lucene's bag-of-words query.
      scores.append(count * np.asarray(self._term_scores[lo:hi], np.float64))
    if not rows:
      return np.zeros(0, np.int32), np.zeros(0, np.float64)
    return np.concatenate(rows), np.concatenate(scores)

  def scores(self, query: str) -> np.ndarray:
    """BM25 score of every document for `query`, in indexing order. float32 [num_docs]"""
    rows, scores = self._postings(query)
    # bincount adds each document's terms in query order, as the clauses are summed.
    return np.bincount(rows, weights=scores, minlength=self.num_docs).astype(np.float32)

  def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (at most) k best documents that hold a query term, best first.

    Ties by document id (as UTF-8 bytes), then indexing order, as Anserini sorts
    Lucene's hits. -> (rows int64 [k'], scores float32 [k']), k' <= k
    """
    rows, scores = self._postings(query)
    if not len(rows) or k < 1:
      return np.zeros(0, np.int64), np.zeros(0, np.float32)
    # Summed in the order of `scores` (query order), then rounded as Lucene's float.
    if len(rows) * 16 > self.num_docs:  # many postings: one pass over all documents
      totals = np.bincount(rows, weights=scores, minlength=self.num_docs)
      hits = np.flatnonzero(totals)
      totals = totals[hits].astype(np.float32)
    else:  # few: sort the postings' documents instead
      hits, inverse = np.unique(rows, return_inverse=True)
      totals = np.bincount(inverse.reshape(-1), weights=scores).astype(np.float32)
    if k < len(hits):
      # Everything tied with the k-th score stays a candidate for the tie-break.
      kth = np.partition(totals, -k)[-k]
      keep = np.flatnonzero(totals >= kth)
      hits, totals = hits[keep], totals[keep]
    order = np.lexsort((hits, np.asarray(self._id_rank)[hits], -totals))[:k]
    return hits[order].astype(np.int64), totals[order]
