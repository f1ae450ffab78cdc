"""Title nouns for WebShop's r_type (issue 14, item 6).

Upstream keeps the NOUN / PROPN tokens spaCy finds in each title. The expected sets below
are en_core_web_sm 3.8.0's tags (upstream loads en_core_web_lg), which the heuristic
reproduces; the spaCy mode is tested when a spaCy English pipeline is installed.
"""

from __future__ import annotations

import pytest

from environments.webshop import reward as rw

# title -> spaCy's NOUN/PROPN words (lowercased), as tagged by en_core_web_sm 3.8.0.
SPACY_NOUNS = {
    "Chocolate Bar": {"chocolate", "bar"},
    "Dark Chocolate Bar with Sea Salt, 3.5 oz (Pack of 12)":
        {"dark", "chocolate", "bar", "sea", "salt", "oz", "pack"},
    "Navy Blue Men's Running Shoes": {"navy", "blue", "men", "running", "shoes"},
    "Acme Stainless Steel Water Bottle 32 oz":
        {"acme", "stainless", "steel", "water", "bottle", "oz"},
    "Cozy Paws Natural Unscented Cat Litter, Easy Scoop & Biodegradable":
        {"cozy", "paws", "natural", "unscented", "cat", "litter", "easy", "scoop",
         "biodegradable"},
    "Lunavie Crew Neck T-shirt, Machine Wash":
        {"lunavie", "crew", "neck", "t", "shirt", "machine", "wash"},
}

# Where the heuristic and en_core_web_sm differ (documented in reward.py).
KNOWN_DIFFERENCES = {
    # spaCy: 'Deskmate' and 'Large' are not nouns here.
    "Deskmate Large Display Calculator, Dual Power": (
        {"deskmate", "large", "display", "calculator", "dual", "power"},
        {"display", "calculator", "dual", "power"}),
    # spaCy: 'Five' is PROPN in this title; the heuristic drops number words.
    "Urban Thread Slim Fit Jeans, Button Closure & Five Pocket": (
        {"urban", "thread", "slim", "fit", "jeans", "button", "closure", "pocket"},
        {"urban", "thread", "slim", "fit", "jeans", "button", "closure", "five",
         "pocket"}),
}


@pytest.mark.parametrize("title", sorted(SPACY_NOUNS))
def test_heuristic_keeps_what_spacy_tags_as_nouns(title):
  assert rw.heuristic_title_nouns(title) == SPACY_NOUNS[title]


@pytest.mark.parametrize("title", sorted(KNOWN_DIFFERENCES))
def test_known_differences_from_spacy(title):
  heuristic, _ = KNOWN_DIFFERENCES[title]
  assert rw.heuristic_title_nouns(title) == heuristic


def test_colour_words_count_as_nouns_as_upstream():
  # Upstream: 'chocolate' is a noun of both titles -> title_score 0.5 -> r_type 1.0. The
  # earlier heuristic dropped colour words, so the goal's only noun was 'bar' -> 0.0.
  r = rw.type_reward("cookies", "grocery › snacks", "Chocolate Chip Cookies",
                     "candy", "grocery › candy › bars", "Chocolate Bar")
  assert r.title_score == 0.5 and r.r_type == 1.0


def test_closed_class_words_and_clitics_are_not_nouns():
  assert rw.heuristic_title_nouns("The One for Her, and It's All Yours") == {"yours"}
  assert rw.heuristic_title_nouns("") == set()
  # A goal title without nouns scores 0.2 (upstream's rule).
  assert rw.type_reward("q", "a › b", "Anything", "q", "a › b", "With and For").title_score == 0.2


def test_missing_spacy_pipeline_is_a_clear_error(monkeypatch):
  pytest.importorskip("spacy")
  monkeypatch.setenv(rw.TITLE_NOUNS_ENV, "no_such_pipeline_xyz")
  with pytest.raises(RuntimeError, match="spacy download"):
    rw.title_nouns("Chocolate Bar")


def _installed_english_pipeline() -> str | None:
  try:
    import spacy.util  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  names = [n for n in spacy.util.get_installed_models() if n.startswith("en_core_web")]
  return names[0] if names else None


def test_spacy_mode_uses_the_pipelines_tags(monkeypatch):
  name = _installed_english_pipeline()
  if name is None:
    pytest.skip("no spaCy English pipeline installed (not on PyPI: python -m spacy "
                "download en_core_web_lg)")
  import spacy  # pylint: disable=g-import-not-at-top
  nlp = spacy.load(name)
  monkeypatch.setenv(rw.TITLE_NOUNS_ENV, name)
  for title in SPACY_NOUNS:
    expected = {t.text.lower() for t in nlp(title) if t.pos_ in ("NOUN", "PROPN")}
    assert rw.title_nouns(title) == expected
