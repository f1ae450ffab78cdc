"""The built-in offline data: corpus + questions, built once under the data dir.

    data_dir/v2/corpus.jsonl                   Search-R1 JSONL corpus ({id, contents})
    data_dir/v2/corpus.jsonl.lucene-bm25-*/    its BM25 index (built by the evidence check)
    data_dir/v2/questions-seed{S}.jsonl        all splits, one question per line
    data_dir/v2/questions-seed{S}.report.json  what the evidence check kept

Built under a file lock with atomic writes, so concurrent env workers build it once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from environments.files import atomic_write_text
from environments.search.corpus import write_corpus

# v2: questions checked against Lucene's BM25 (v1: bm25s's), which keeps other questions.
DATA_VERSION = "v2"


def default_data_dir() -> Path:
  root = os.environ.get("EMPG_DATA_DIR")
  return Path(root) / "search" if root else Path(os.path.expanduser("~/.cache/empg_jax/search"))


@dataclasses.dataclass(frozen=True)
class BuiltinData:
  root: Path
  corpus_path: Path
  questions_path: Path
  server_dir: Path


def builtin_paths(data_dir: str | os.PathLike | None, seed: int = 0) -> BuiltinData:
  root = Path(data_dir) if data_dir else default_data_dir()
  v = root / DATA_VERSION
  return BuiltinData(root=root, corpus_path=v / "corpus.jsonl",
                     questions_path=v / f"questions-seed{seed}.jsonl",
                     server_dir=root / "server")


def ensure_builtin_data(data_dir: str | os.PathLike | None = None, seed: int = 0,
                        verbose: bool = False) -> BuiltinData:
  """Builds the corpus, its BM25 index and the questions of `seed` if missing."""
  from environments.search.managed import FileLock  # pylint: disable=g-import-not-at-top
  paths = builtin_paths(data_dir, seed)
  if paths.corpus_path.is_file() and paths.questions_path.is_file():
    return paths
  paths.corpus_path.parent.mkdir(parents=True, exist_ok=True)
  with FileLock(paths.corpus_path.parent / "build.lock"):
    if paths.corpus_path.is_file() and paths.questions_path.is_file():
      return paths  # another process built it while we waited
    from environments.search import questions, world  # pylint: disable=g-import-not-at-top
    from environments.search.retriever import BM25Retriever  # pylint: disable=g-import-not-at-top
    w = world.build_world()
    if not paths.corpus_path.is_file():
      write_corpus(paths.corpus_path, list(world.passages(w)))
    bm25 = BM25Retriever(paths.corpus_path, verbose=verbose)

    def search_titles(queries):
      return [[bm25.corpus[int(i)]["contents"].partition("\n")[2] for i in idx]
              for idx, _ in bm25.search(queries, questions.TOPK)]

    rows, report = questions.generate_questions(w, seed, search_titles)
    atomic_write_text(paths.questions_path,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(paths.questions_path.with_suffix(".report.json"),
                      json.dumps(report, indent=1))
  return paths
