"""WebShop search ranks as upstream's pyserini/Lucene BM25 (issue 14, item 4).

The pinned values below were produced by pyserini 0.17.0 (Anserini 0.14.3, Lucene 8.3,
OpenJDK 17) through tests/pyserini_rank.py. The slow test reruns that comparison on the
synthetic catalog when pyserini is available: in this interpreter, or in the one
named by $EMPG_PYSERINI_PYTHON (pyserini is not a project dependency; it needs Java).
"""

from __future__ import annotations

import random
import re

import pytest

from environments.lucene import analyzer as lucene_analyzer
from environments.lucene.bm25 import lucene_length
from environments.webshop.data import Product
from environments.webshop.search_engine import SEARCH_RETURN_N, SearchEngine, document_text
from tests import pyserini_rank


def _product(asin: str, title: str, **fields) -> Product:
  base = dict(asin=asin, title=title, description="", bullets=(), pricing=(10.0,),
              price_text="$10.0", options={}, attributes=(), category="c", query="q",
              product_category="a › b")
  base.update(fields)
  return Product(**base)


# Catalog order differs from ASIN order on purpose: Lucene breaks ties by ASIN.
TINY = [
    ("B0000000B2", "running shoe for kids"),
    ("B0000000B3", "men's running shoes, lightweight and breathable"),
    ("B0000000B1", "running shoe for kids"),
    ("B0000000B4", "assembly required: 3.5-inch wooden bookshelf; easy assembly"),
    ("B0000000B5", "the u.s.a. made café table, no assembly"),
    ("B0000000B6", " ".join("abcdefghijklmnopqrstuvwxyz")
     + " " + " ".join(c + c for c in "abcdefghijklmnopqrstuvwxyz") + " shoe"),
]
# query -> (ids, scores rounded to 4 decimals as pyserini reports them)
LUCENE_TINY = {
    "running shoes": (["B0000000B1", "B0000000B2", "B0000000B3", "B0000000B6"],
                      [0.6983, 0.6983, 0.6747, 0.1464]),
    "easy assembly bookshelf": (["B0000000B4", "B0000000B5"], [2.4873, 0.6121]),
    "U.S.A. table": (["B0000000B5"], [1.8316]),
    "shoe shoe": (["B0000000B1", "B0000000B2", "B0000000B3", "B0000000B6"],
                  [0.5437, 0.5437, 0.5253, 0.2928]),
    "shoe": (["B0000000B1", "B0000000B2", "B0000000B3", "B0000000B6"],
             [0.2719, 0.2719, 0.2627, 0.1464]),
    "the and of": ([], []),
}


def test_tiny_catalog_ranks_and_scores_as_lucene():
  products = [_product(a, t) for a, t in TINY]
  engine = SearchEngine.build(products)
  index = {p.asin: i for i, p in enumerate(products)}
  for query, (ids, scores) in LUCENE_TINY.items():
    assert engine.search(query) == ids, query
    ours = engine.scores(query)
    assert [round(float(ours[index[a]]), 4) for a in ids] == scores, query


# Lucene's analyzer output for these strings.
LUCENE_ANALYZED = {
    "Men's T-Shirt, 100% Cotton (Pack of 3) - Size XL/XXL; 1,000mAh battery 5.5\" 12.5oz":
        ["men", "t", "shirt", "100", "cotton", "pack", "3", "size", "xl", "xxl",
         "1,000mah", "batteri", "5.5", "12.5oz"],
    "The city's 3.5-inch wi-fi e.g. U.S.A. us is running jars 30-day don't ponies 12:30 "
    "a:b x 1 café ❤️ flavor_x generalization assembly":
        ["citi", "3.5", "inch", "wi", "fi", "e.g", "u.s.a", "us", "run", "jar", "30",
         "dai", "don't", "poni", "12", "30", "a:b", "x", "1", "café", "❤️", "flavor_x",
         "gener", "assembl"],
    "naïve résumé Über straße ÉCOLE Ø 18'' x 24'' ½ ² ³ ™ ® © İstanbul":
        ["naïv", "résumé", "über", "straße", "école", "ø", "18", "x", "24", "™", "®",
         "©", "istanbul"],
    "flag 🇺🇸 usa 🇯🇵🇬🇧 keycap 1️⃣ #️⃣ family 👨\u200d👩\u200d👧 heart ♥ star ★ ☺ ✔ check":
        ["flag", "🇺🇸", "usa", "🇯🇵", "🇬🇧", "keycap", "1️⃣", "#️⃣", "famili",
         "👨\u200d👩\u200d👧", "heart", "♥", "star", "★", "☺", "✔", "check"],
    "hebrew שלום ג'ירפה ka タ_イ lao ລາວ khmer ខ្មែរ arabic مرحبا ١٢٣ devanagari नमस्ते":
        ["hebrew", "שלום", "ג'ירפה", "ka", "タ_イ", "lao", "ລາວ", "khmer", "ខ្មែរ", "arab",
         "مرحبا", "١٢٣", "devanagari", "नमस्ते"],
}


@pytest.mark.parametrize("text", sorted(LUCENE_ANALYZED))
def test_analyzer_matches_lucene(text):
  assert lucene_analyzer.analyze(text) == LUCENE_ANALYZED[text]


def test_porter_stems_as_lucene_not_as_snowball():
  # Lucene's PorterStemmer is Porter's reference version: 'bli' -> 'ble', 'logi' -> 'log'
  # in step 2, and words of <= 2 letters untouched (Snowball's porter: assembli, u).
  assert lucene_analyzer.stem("assembly") == "assembl"
  assert lucene_analyzer.stem("analogies") == "analog"
  assert lucene_analyzer.stem("us") == "us"
  assert [lucene_analyzer.stem(w) for w in
          ("caresses", "ponies", "agreed", "hopping", "relational", "electrical",
           "generalizations", "adjustable", "controll", "sensibility")] == [
              "caress", "poni", "agre", "hop", "relat", "electr", "gener", "adjust",
              "control", "sensibl"]


def test_stop_words_are_lucenes_33():
  assert len(lucene_analyzer.STOP_WORDS) == 33
  # bm25s's English list drops these; Lucene indexes them.
  assert lucene_analyzer.analyze("i am looking for something you can use") == [
      "i", "am", "look", "someth", "you", "can", "us"]


def test_document_lengths_are_lucenes_one_byte_norms():
  # Exact up to 39, then 4 significant bits: 40-41 -> 40, 84-87 -> 84, 1000 -> 984.
  assert [lucene_length(n) for n in (0, 1, 23, 24, 39, 40, 41, 55, 56)] == [
      0, 1, 23, 24, 39, 40, 40, 54, 56]
  assert {lucene_length(n) for n in range(84, 88)} == {84}
  assert lucene_length(1000) == 984


def test_document_text_is_upstreams_contents_field():
  p = _product("B000000001", "Cozy Mug", description="A Mug.", bullets=("Big", "x"),
               options={"color": ["red", "blue"], "size": ["12 oz"]})
  assert document_text(p) == ("cozy mug a mug. big color: red, blue, and size: 12 oz")
  assert document_text(_product("B000000002", "T")) == "t   "


def _catalog_queries(catalog, rng: random.Random) -> list[tuple[str, str, str]]:
  """(type, query, target) for the goals, titles and random word bags of a catalog."""
  from environments.webshop.expert import instruction_query  # pylint: disable=g-import-not-at-top
  queries = [("instruction", instruction_query(g["instruction_text"]), g["asin"])
             for g in catalog.goals[:2000]]
  queries += [("instruction_with_price", g["instruction_text"].lower(), g["asin"])
              for g in rng.sample(catalog.goals, 300)]
  queries += [("goal_query", q, a) for q, a in
              {g["query"]: g["asin"] for g in catalog.goals}.items()]
  queries += [("title", p.title.lower(), p.asin) for p in catalog.products]
  for _ in range(1000):
    p = rng.choice(catalog.products)
    words = re.findall(r"\S+", document_text(p))
    queries.append(("words", " ".join(rng.sample(words, min(rng.randint(1, 4),
                                                             len(words)))), p.asin))
  return queries


@pytest.mark.slow
def test_rankings_equal_pyserini_on_the_synthetic_catalog(tmp_path):
  python = pyserini_rank.pyserini_python()
  if python is None:
    pytest.skip("pyserini is not installed (not a project dependency): install "
                "pyserini==0.17.0 (and Java 11+) here, or set EMPG_PYSERINI_PYTHON to a "
                "python that has it")
  from environments.webshop.env import load_shop  # pylint: disable=g-import-not-at-top
  catalog, _ = load_shop(str(tmp_path / "data"), seed=0)
  engine = SearchEngine.build(catalog.products)
  queries = _catalog_queries(catalog, random.Random(0))
  lucene = pyserini_rank.ranked_ids(
      python, [{"id": p.asin, "contents": document_text(p)} for p in catalog.products],
      [q for _, q, _ in queries], SEARCH_RETURN_N, str(tmp_path))

  def page(ids, asin):
    return ids.index(asin) // 10 if asin in ids else None

  same_top10 = same_list = same_page = 0
  for (kind, query, target), theirs in zip(queries, lucene):
    ours = engine.search(query)
    same_top10 += set(ours[:10]) == set(theirs[:10])
    same_list += ours == theirs
    same_page += page(ours, target) == page(theirs, target)
  n = len(queries)
  print(f"{n} queries: top-10 sets {same_top10 / n:.4f}, top-50 lists "
        f"{same_list / n:.4f}, target page {same_page / n:.4f}")
  assert same_top10 / n >= 0.90
  assert same_page / n >= 0.99
  # Measured at 1.0000 for all three (issue 14); a drop means a real difference.
  assert same_list / n >= 0.99
