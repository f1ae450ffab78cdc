"""Retrieval server: real process on a free localhost port, checked against brute force."""

import json
import math
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from environments.lucene import analyzer
from environments.search import data
from environments.search import server as server_mod
from environments.search.retriever import BM25Retriever
from tests import pyserini_rank

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir(tmp_path_factory) -> Path:
  # One built-in data dir for every search test file of the session.
  return tmp_path_factory.getbasetemp() / "search_data"


def start_server(corpus: Path, tmp: Path, extra=()) -> tuple[subprocess.Popen, str]:
  port_file = tmp / "url"
  proc = subprocess.Popen(
      [sys.executable, str(REPO / "launch" / "serve_retriever.py"), "--corpus", str(corpus),
       "--port", "0", "--port-file", str(port_file), *extra],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  line = proc.stdout.readline()  # blocks until READY (or EOF if it died)
  if not line.startswith("READY "):
    proc.kill()
    raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
  url = line.split()[1]
  assert port_file.read_text().strip() == url
  return proc, url


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
  return data.ensure_builtin_data(shared_data_dir(tmp_path_factory), seed=0)


@pytest.fixture(scope="module")
def server(builtin, tmp_path_factory):
  proc, url = start_server(builtin.corpus_path, tmp_path_factory.mktemp("srv"))
  yield url
  proc.terminate()
  proc.wait(10)


def _lucene_norm_length(num_terms: int) -> int:
  """The largest length Lucene's one-byte norm holds that is <= num_terms.

  SmallFloat.byte4ToInt's 256 values: 0..23 as they are, then 24 + a 4-bit mantissa
  (leading bit implied above 31) shifted left by the exponent.
  """
  table = []
  for byte in range(256):
    if byte < 24:
      table.append(byte)
    else:
      mantissa, exponent = (byte - 24) & 7, (byte - 24) >> 3
      table.append(24 + (mantissa if exponent == 0 else (mantissa | 8) << (exponent - 1)))
  return max(v for v in table if v <= num_terms)


def brute_force_bm25(docs: list[str], query: str, k1=0.9, b=0.4) -> list[float]:
  """Lucene 8's BM25 (pyserini's defaults), written out with plain loops -> [num_docs].

  score(d) = sum over query terms t (a repeated term again) of
             idf(t) * f / (f + k1 * (1 - b + b * norm_len(d) / avgdl)),
  idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)), N and avgdl over documents with a term.
  """
  f32 = np.float32
  doc_terms = [analyzer.analyze(d) for d in docs]
  with_terms = [t for t in doc_terms if t]
  n = len(with_terms)
  avgdl = f32(sum(len(t) for t in with_terms) / n)
  scores = [0.0] * len(docs)
  for term in analyzer.analyze(query):
    df = sum(1 for t in doc_terms if term in t)
    if df == 0:
      continue
    idf = f32(math.log(1 + (n - df + 0.5) / (df + 0.5)))
    for i, terms in enumerate(doc_terms):
      f = terms.count(term)
      if f:
        norm = f32(k1) * (f32(1 - f32(b)) + f32(b) * f32(_lucene_norm_length(len(terms)))
                          / avgdl)
        scores[i] += float(idf * f32(f / (f + float(norm))))
  return [float(f32(s)) for s in scores]


QUERIES = ["capital of France", "Skopje capital city", "Euro currency", "Shanghai city",
           "official language of Japan", "Iran land borders", "Tuvalu population",
           "what is the largest city of the country of Brazil", "French language French",
           "zzzunknownword", "the of and"]


def post(url, payload, **kw):
  return httpx.post(url + "/retrieve", json=payload, timeout=30, **kw)


def test_retrieve_matches_brute_force_bm25(server, builtin):
  rows = [json.loads(l) for l in builtin.corpus_path.read_text().splitlines()]
  docs = [r["contents"] for r in rows]
  r = post(server, {"queries": QUERIES, "topk": 5, "return_scores": True})
  assert r.status_code == 200
  result = r.json()["result"]
  assert len(result) == len(QUERIES)
  for query, hits in zip(QUERIES, result):
    expected = brute_force_bm25(docs, query)
    # Lucene's order: score, then id string; only documents with a query term.
    ranked = sorted((i for i, s in enumerate(expected) if s > 0),
                    key=lambda i: (-expected[i], rows[i]["id"]))
    assert [h["document"]["id"] for h in hits] == [rows[i]["id"] for i in ranked[:5]], query
    for h in hits:  # each returned document really has the score it is listed with
      assert docs[int(h["document"]["id"])] == h["document"]["contents"]
      assert h["score"] == pytest.approx(expected[int(h["document"]["id"])], rel=1e-6)
  assert result[QUERIES.index("zzzunknownword")] == []
  assert result[QUERIES.index("the of and")] == []  # Lucene's stop words


# A tiny corpus where the rule for each place is visible: scores from Lucene 8's
# formula (brute_force_bm25), ids in string order on ties ("10" before "2").
TINY_CORPUS = [
    ("0", '"Paris"\nParis is the capital of France.'),
    ("1", '"France"\nFrance is a country. Its capital is Paris.'),
    ("2", '"Lyon"\nLyon is a city in France.'),
    ("10", '"Nice"\nNice is a city in France.'),
    ("3", '"Cities"\nCities of France\'s south: Nice, Marseille, Toulon and Lyon.'),
    ("4", '"The"\nOf the, and.'),  # no terms: outside N and avgdl, as in Lucene
]
TINY_RANKINGS = {
    "capital of France": (["0", "1", "10", "2", "3"], [0.5297, 0.5066, 0.0479, 0.0479,
                                                        0.0416]),
    "capital capital": (["0", "1"], [0.9637, 0.8954]),  # a repeated term counts twice
    "cities": (["3", "10", "2"], [0.3484, 0.2967, 0.2967]),
    "Nice's city": (["10", "3", "2"], [0.9182, 0.7665, 0.2967]),
    "lyon france": (["2", "3", "1", "0", "10"], [0.6695, 0.4597, 0.0589, 0.0479, 0.0479]),
    "the and of": ([], []),
}


def test_tiny_corpus_rankings_are_pinned(tmp_path):
  corpus = tmp_path / "tiny.jsonl"
  corpus.write_text("".join(json.dumps({"id": i, "contents": c}) + "\n"
                            for i, c in TINY_CORPUS))
  retriever = BM25Retriever(corpus, verbose=False)
  docs = [c for _, c in TINY_CORPUS]
  for query, (ids, scores) in TINY_RANKINGS.items():
    (rows, got), = retriever.search([query], 10)
    assert [TINY_CORPUS[i][0] for i in rows] == ids, query
    assert [round(float(s), 4) for s in got] == scores, query
    expected = brute_force_bm25(docs, query)
    assert [float(s) for s in got] == pytest.approx([expected[i] for i in rows], rel=1e-6)
  # A tie across the cut: "10" (row 3) goes before "2" (row 2).
  (rows, _), = retriever.search(["capital of France"], 3)
  assert [TINY_CORPUS[i][0] for i in rows] == ["0", "1", "10"]


@pytest.mark.slow
def test_rankings_equal_pyserini_on_the_builtin_corpus(builtin, tmp_path):
  # Search-R1's BM25 is pyserini's LuceneSearcher over a default pyserini index of the
  # corpus; runs where pyserini is (in this interpreter or $EMPG_PYSERINI_PYTHON).
  python = pyserini_rank.pyserini_python()
  if python is None:
    pytest.skip("pyserini is not installed (not a project dependency): install it (and "
                "Java 11+) here, or set EMPG_PYSERINI_PYTHON to a python that has it")
  rows = [json.loads(l) for l in builtin.corpus_path.read_text().splitlines()]
  questions = [json.loads(l) for l in builtin.questions_path.read_text().splitlines()]
  rng = random.Random(0)
  queries = sorted({q for r in questions for q in r["queries"]})
  queries += [r["question"] for r in rng.sample(questions, 500)]
  words = [w for r in rows for w in r["contents"].split()]
  queries += [" ".join(rng.sample(words, rng.randint(1, 4))) for _ in range(1000)]
  k = 10
  lucene = pyserini_rank.ranked_ids(python, rows, queries, k, str(tmp_path))
  retriever = BM25Retriever(builtin.corpus_path, verbose=False)
  ours = [[retriever.corpus[int(i)]["id"] for i in idx]
          for idx, _ in retriever.search(queries, k)]
  same = sum(a == b for a, b in zip(ours, lucene))
  print(f"{len(queries)} queries: top-{k} lists equal to pyserini's for {same}")
  assert same / len(queries) >= 0.99


def test_batch_and_single_queries_agree(server):
  batch = post(server, {"queries": QUERIES, "topk": 3, "return_scores": True}).json()["result"]
  for q, hits in zip(QUERIES, batch):
    single = post(server, {"queries": [q], "topk": 3, "return_scores": True}).json()["result"]
    assert single == [hits]


def test_search_r1_response_shapes(server):
  with_scores = post(server, {"queries": ["capital of France"], "topk": 3,
                              "return_scores": True}).json()["result"][0]
  assert [set(h) for h in with_scores] == [{"document", "score"}] * 3
  assert any(h["document"]["contents"].startswith('"France"\nFrance is a country')
             for h in with_scores)
  docs_only = post(server, {"queries": ["capital of France"], "topk": 3}).json()["result"][0]
  assert docs_only == [h["document"] for h in with_scores]
  # Missing / null topk -> the server's --topk (3), as in Search-R1.
  assert len(post(server, {"queries": ["Paris"], "topk": None}).json()["result"][0]) == 3
  health = httpx.get(server + "/health").json()
  assert health["status"] == "ok" and health["num_docs"] > 1000


@pytest.mark.parametrize("payload", [
    {"queries": []},
    {"queries": [], "topk": 3, "return_scores": True},  # what Search-R1's rollout sends
    {"queries": [], "topk": 5},
])
def test_empty_query_list_is_an_empty_result(server, payload):
  # Search-R1 (llm_agent/generation.py) posts every turn's searches in one request, an
  # empty list when no trajectory searched, and reads response.json()["result"]; its
  # retrieval_server.py answers {"result": []} (one entry per query, none here).
  r = post(server, payload)
  assert r.status_code == 200, r.text
  assert r.json() == {"result": []}


@pytest.mark.parametrize("payload,status", [
    ({"queries": ["a"], "topk": 0}, 422),
    ({"queries": ["a"], "topk": 51}, 422),
    ({"queries": ["a"], "topk": "3"}, 422),
    ({"queries": ["a"], "topk": 2.0}, 422),
    ({"queries": ["a"], "topk": True}, 422),
    ({"queries": "capital of France"}, 422),
    ({"queries": ["a", 7]}, 422),
    ({"queries": ["a"], "return_scores": "yes"}, 422),
    ({"queries": ["a"], "topn": 3}, 422),
    (["a"], 422),
])
def test_bad_requests_get_4xx(server, payload, status):
  r = post(server, payload)
  assert r.status_code == status, r.text
  assert r.json()["error"]


@pytest.fixture(scope="module")
def small_server(builtin, tmp_path_factory):
  """A server with small per-request limits, to show each limit is a flag and a 413."""
  proc, url = start_server(builtin.corpus_path, tmp_path_factory.mktemp("small"),
                           ["--max-body-bytes", str(1 << 20), "--max-queries", "10",
                            "--max-query-chars", "100"])
  yield url
  proc.terminate()
  proc.wait(10)


def test_malformed_and_oversized_bodies(server, small_server):
  r = httpx.post(server + "/retrieve", content=b"{not json", timeout=10)
  assert r.status_code == 400 and "JSON" in r.json()["error"]
  big = json.dumps({"queries": ["x" * 50] * 30000}).encode()  # ~1.6 MB
  r = httpx.post(small_server + "/retrieve", content=big, timeout=10)
  assert r.status_code == 413 and "byte limit" in r.json()["error"]
  # Streamed without Content-Length: counted as it arrives.
  r = httpx.post(small_server + "/retrieve", content=iter([big[i:i + 65536]
                                                            for i in range(0, len(big), 65536)]),
                 timeout=10)
  assert r.status_code == 413
  r = post(small_server, {"queries": ["Paris"] * 11})
  assert r.status_code == 413 and "--max-queries" in r.json()["error"]
  r = post(small_server, {"queries": ["Paris", "y" * 101]})
  assert r.status_code == 413 and "--max-query-chars" in r.json()["error"]
  assert post(small_server, {"queries": ["Paris"] * 10, "topk": 5}).status_code == 200
  assert post(small_server, {"queries": ["y" * 100]}).status_code == 200
  # The default limit on query length.
  assert post(server, {"queries": ["y" * 8193]}).status_code == 413
  # The servers are still up and answering.
  assert post(server, {"queries": ["Paris"]}).status_code == 200
  assert post(small_server, {"queries": ["Paris"]}).status_code == 200


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"queries": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
])
def test_deeply_nested_json_is_a_400_not_a_500(server, body):
  # json's decoder raises RecursionError (not ValueError) on such bodies.
  r = httpx.post(server + "/retrieve", content=body, timeout=10)
  assert r.status_code == 400, r.text
  assert "nested" in r.json()["error"]
  assert post(server, {"queries": ["Paris"]}).status_code == 200


def test_lone_surrogate_query_is_a_422(server):
  # '\\ud800' is valid JSON for a lone surrogate; the byte-level decode of a model's
  # output can produce one. It is the request's fault, so 4xx, never a 500.
  body = b'{"queries": ["capital of France", "capital \\ud800 of"], "topk": 3}'
  assert json.loads(body)["queries"][1] == "capital \ud800 of"
  r = httpx.post(server + "/retrieve", content=body, timeout=10)
  assert r.status_code == 422, r.text
  assert "Query 1" in r.json()["error"] and "surrogate" in r.json()["error"]
  # A valid surrogate pair (an emoji) is fine.
  body = b'{"queries": ["capital \\ud83d\\ude00 of France"], "topk": 3}'
  assert httpx.post(server + "/retrieve", content=body, timeout=10).status_code == 200


def test_default_limits_take_a_search_r1_batch(server):
  # Search-R1's default rollout: train_batch_size 512 x n_agent 5 trajectories, each
  # search in one request of topk 3..5; a query is at most one 500-token response.
  queries = [f"capital of country number {i} " + "word " * 380 for i in range(512 * 5)]
  assert max(len(q) for q in queries) >= 1900
  r = post(server, {"queries": queries, "topk": 5, "return_scores": True})
  assert r.status_code == 200, r.text[:500]
  assert [len(h) for h in r.json()["result"]] == [5] * 2560
  # And at the limits themselves, checked without the retrieval work: ASCII queries of
  # the longest length, and non-ASCII ones of 2,000 characters escaped as requests does.
  for text in ("q" * server_mod.MAX_QUERY_CHARS, "\u00e9" * 2000):
    body = json.dumps({"queries": [text] * 2560, "topk": 5, "return_scores": True}).encode()
    assert len(body) <= server_mod.MAX_BODY_BYTES
    assert len(server_mod.parse_retrieve_request(body, 3)[0]) == 2560


def test_user_corpus_index_is_cached_and_rebuilt_on_change(tmp_path):
  corpus = tmp_path / "my corpus.jsonl"
  rows = [{"id": f"doc-{i}", "contents": f'"T{i}"\nalpha beta {"gamma " * i}'}
          for i in range(6)]
  corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  # An index bm25s wrote before (same corpus, older format) is never read as ours.
  from environments.search.corpus import file_fingerprint  # pylint: disable=g-import-not-at-top
  old = tmp_path / f"{corpus.name}.bm25s-{file_fingerprint(corpus)[:16]}"
  old.mkdir()
  (old / "meta.json").write_text(json.dumps({"format": "bm25s-v1"}))
  first = BM25Retriever(corpus, verbose=False)
  assert first.index_dir.parent == tmp_path and (first.index_dir / "meta.json").is_file()
  assert ".lucene-bm25-" in first.index_dir.name and first.index_dir != old
  (idx, scores), = first.search(["gamma"], 2)
  assert [first.corpus[int(i)]["id"] for i in idx] == ["doc-5", "doc-4"]
  again = BM25Retriever(corpus, verbose=False)
  assert again.index_dir == first.index_dir
  # A damaged cache is rebuilt, not read.
  np.save(first.index_dir / "doc_rows.npy", np.zeros(1, np.int32))
  rebuilt = BM25Retriever(corpus, verbose=False)
  assert rebuilt.index_dir == first.index_dir
  assert [rebuilt.corpus[int(i)]["id"] for i in rebuilt.search(["gamma"], 2)[0][0]] == [
      "doc-5", "doc-4"]
  time.sleep(0.01)
  corpus.write_text(corpus.read_text() + json.dumps({"id": "x", "contents": '"X"\ndelta'}) + "\n")
  changed = BM25Retriever(corpus, verbose=False)
  assert changed.index_dir != first.index_dir and len(changed.corpus) == 7
  (idx, _), = changed.search(["delta"], 1)
  assert changed.corpus[int(idx[0])]["id"] == "x"


def test_processes_racing_on_a_fresh_index(tmp_path):
  corpus = tmp_path / "race.jsonl"
  corpus.write_text("".join(json.dumps({"id": i, "contents": c}) + "\n"
                            for i, c in TINY_CORPUS))
  code = ("import sys; from environments.search.retriever import BM25Retriever; "
          "r = BM25Retriever(sys.argv[1], verbose=False); "
          "print([int(i) for i in r.search(['capital of France'], 3)[0][0]])")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(corpus)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(3)]
  outputs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], outputs
  assert {out for out, _ in outputs} == {"[0, 1, 3]\n"}
  # No temp folders left (builds and spills); one published index.
  assert not [p for p in tmp_path.iterdir()
              if p.name.startswith((".tmp", f".{corpus.name}.lucene"))]
  assert len([p for p in tmp_path.iterdir() if ".lucene-bm25-" in p.name]) == 1


def test_bad_corpus_is_a_clear_error(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": 1, "text": "no contents field"}\n')
  with pytest.raises(ValueError, match="contents"):
    BM25Retriever(bad, verbose=False)
  with pytest.raises(FileNotFoundError):
    BM25Retriever(tmp_path / "missing.jsonl", verbose=False)


def test_fixed_port_and_refusal_of_a_busy_port(builtin, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    busy = s.getsockname()[1]
    s.listen(1)
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "serve_retriever.py"), "--corpus",
         str(builtin.corpus_path), "--port", str(busy)],
        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "Address already in use" in proc.stderr
