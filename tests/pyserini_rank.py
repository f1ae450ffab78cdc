"""Runs a search with pyserini, for the tests that compare our Lucene BM25 with Lucene's.

Used by tests/test_webshop_search_upstream.py (upstream WebShop's index) and
tests/test_search_server.py (Search-R1's BM25 retriever, whose index pyserini builds from
the corpus with the same defaults). The tests call `ranked_ids`, which runs this file
under `pyserini_python()`; by hand:
  python tests/pyserini_rank.py REQUEST.json RESPONSE.json
REQUEST: {"docs": [{"id", "contents"}], "queries": [str], "k": int, "analyze": [str]}.
The documents are indexed as upstream's search_engine/run_indexing.sh does (JsonCollection,
DefaultLuceneDocumentGenerator, one thread) and each query is searched with a
LuceneSearcher's defaults (BM25 k1=0.9, b=0.4) for its top k. RESPONSE:
{"ids": [[docid]], "scores": [[float]], "analyzed": [[term]]}.

pyserini 0.17.0 imports faiss, torch and transformers at import time although its Lucene
searcher needs none of them; when they are not installed they are stubbed here.
"""

import importlib.abc
import importlib.util
import importlib.machinery
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

_OPTIONAL = ("faiss", "torch", "transformers", "onnxruntime", "sklearn", "spacy",
             "nmslib", "lightgbm", "sentencepiece")


class _StubLoader(importlib.abc.Loader):

  def create_module(self, spec):
    module = mock.MagicMock()
    module.__path__ = []
    module.__spec__ = spec
    return module

  def exec_module(self, module):
    pass


class _StubFinder(importlib.abc.MetaPathFinder):
  """Stubs the optional packages that are not installed."""

  def __init__(self, missing):
    self.missing = missing

  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in self.missing:
      return importlib.machinery.ModuleSpec(name, _StubLoader(), is_package=True)
    return None


def _import_pyserini():
  missing = {m for m in _OPTIONAL if importlib.util.find_spec(m) is None}
  sys.meta_path.insert(0, _StubFinder(missing))
  from pyserini.analysis import Analyzer, get_lucene_analyzer  # pylint: disable=g-import-not-at-top
  from pyserini.pyclass import autoclass  # pylint: disable=g-import-not-at-top
  from pyserini.search.lucene import LuceneSearcher  # pylint: disable=g-import-not-at-top
  return Analyzer, get_lucene_analyzer, autoclass, LuceneSearcher


def main(request_path: str, response_path: str) -> None:
  with open(request_path) as f:
    request = json.load(f)
  analyzer_cls, get_lucene_analyzer, autoclass, searcher_cls = _import_pyserini()
  with tempfile.TemporaryDirectory() as tmp:
    docs_dir, index_dir = os.path.join(tmp, "docs"), os.path.join(tmp, "index")
    os.makedirs(docs_dir)
    with open(os.path.join(docs_dir, "documents.jsonl"), "w") as f:
      for doc in request["docs"]:
        f.write(json.dumps(doc) + "\n")
    autoclass("io.anserini.index.IndexCollection").main([
        "-collection", "JsonCollection", "-input", docs_dir, "-index", index_dir,
        "-generator", "DefaultLuceneDocumentGenerator", "-threads", "1",
        "-storePositions", "-storeDocvectors", "-storeRaw"])
    searcher = searcher_cls(index_dir)
    ids, scores = [], []
    for query in request["queries"]:
      hits = searcher.search(query, k=request.get("k", 50))
      ids.append([h.docid for h in hits])
      scores.append([h.score for h in hits])
    analyzer = analyzer_cls(get_lucene_analyzer())
    analyzed = [list(analyzer.analyze(t)) for t in request.get("analyze", [])]
  with open(response_path, "w") as f:
    json.dump({"ids": ids, "scores": scores, "analyzed": analyzed}, f)


def pyserini_python() -> str | None:
  """An interpreter with pyserini: $EMPG_PYSERINI_PYTHON, else this one if it has it."""
  env = os.environ.get("EMPG_PYSERINI_PYTHON")
  if env:
    return env
  return sys.executable if importlib.util.find_spec("pyserini") is not None else None


def ranked_ids(python: str, docs: list[dict], queries: list[str], k: int,
               workdir: str) -> list[list[str]]:
  """Lucene's top-k document ids for each query, over `docs` ({id, contents})."""
  request, response = os.path.join(workdir, "request.json"), os.path.join(workdir,
                                                                         "response.json")
  with open(request, "w") as f:
    json.dump({"docs": docs, "queries": queries, "k": k}, f)
  subprocess.run([python, os.path.abspath(__file__), request, response], check=True,
                 capture_output=True, timeout=1800)
  with open(response) as f:
    return json.load(f)["ids"]


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
