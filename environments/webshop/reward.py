"""WebShop's purchase reward R, term by term (docs/formats.md "Reward on buying product p").

    R = r_type * (n_attr_match + n_option_match + r_price)
              / (len(goal.attributes) + len(goal.options) + 1)

Fuzzy matching is thefuzz's `fuzz.token_set_ratio` as upstream calls it (thefuzz >= 0.20
runs on rapidfuzz): `full_process(s, force_ascii=True)` first deletes the characters
U+0080..U+00FF (so 'crème' becomes 'crme', not 'creme'), then rapidfuzz's default
processor lowercases and turns non-alphanumerics into spaces; the score is rounded to an
integer before the `> 85` test.

Options. Upstream's `get_reward` passes a dict goal's options as `(name, value)` pairs and
a list goal's as strings. Each goes through `normalize_color` (`colour in option`: a
substring test on a string, an element test on a pair) and is then compared as
`str(option)`, so a pair reads "('size', '28 ounce')" -> "size 28 ounce" and the option
name takes part in the match: "12 ounce" does not match it, while it does match a bare
"28 ounce" (87.5).

Title nouns. Upstream tags both titles with spaCy (en_core_web_lg) and keeps the lowercased
text of NOUN / PROPN tokens. Set $EMPG_WEBSHOP_TITLE_NOUNS to the name of an installed
spaCy pipeline (e.g. en_core_web_lg, installed with `python -m spacy download`; spaCy's
English pipelines are not on PyPI) for exactly that. By default a heuristic stands in:
spaCy tags almost every capitalised title word PROPN, colours, adjectives and units
included ("Chocolate Bar", "Navy Blue", "Stainless Steel", "oz"), so the heuristic keeps
every run of letters (split at hyphens, digits and apostrophes, as spaCy's tokenizer
splits "T-Shirt" and "Men's") except closed-class words (`NON_NOUN_WORDS`: determiners,
prepositions, conjunctions, pronouns, auxiliaries, number words) and clitics after an
apostrophe ('s, 't). Measured against en_core_web_sm 3.8.0 on the synthetic catalog's 996
titles: the whole noun set agrees for 84% (the earlier stop-list heuristic, which also
dropped colours, sizes and adjectives: 31%), title_score for 98.9% and r_type for 99.7%
of 10,500 (goal, product) pairs. Where they differ, spaCy tags some capitalised words ADJ
or VERB ("Free", "Included", "Little", some brand names). title_score = |nouns(goal.name)
& nouns(p.title)| / |nouns(goal.name)|, and 0.2 when the goal title has no nouns
(upstream's rule).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from rapidfuzz import fuzz
from rapidfuzz import utils as fuzz_utils

# Environment variable choosing the title-noun tagger: "heuristic" (default) or the name
# of an installed spaCy pipeline (upstream: en_core_web_lg) for upstream's exact nouns.
TITLE_NOUNS_ENV = "EMPG_WEBSHOP_TITLE_NOUNS"
_SPACY_HINT = ("spaCy's English pipelines are not on PyPI: python -m spacy download "
               "en_core_web_lg")

# Fuzzy ratio a match must exceed (upstream: `score > 85`).
FUZZY_MATCH_THRESHOLD = 85

# Colour words an option value is reduced to before matching; the first word of this
# list that occurs (as a substring) in the value wins, as upstream does.
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige",
    "black", "blue", "blush", "bordeaux", "bronze", "brown", "burgundy", "camel", "camo",
    "caramel", "champagne", "charcoal", "cheetah", "chestnut", "chocolate", "christmas",
    "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal", "dark",
    "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape",
    "graphite", "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy",
    "khaki", "lavender", "lemon", "leopard", "light", "lilac", "lime", "magenta",
    "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom",
    "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink",
    "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire",
    "seashell", "silver", "skull", "slate", "steel", "stone", "stonewash", "sunflower",
    "tan", "taupe", "teal", "tiger", "turquoise", "violet", "walnut", "wheat", "white",
    "wine", "yellow",
)

# Closed-class words (determiners, prepositions, conjunctions, pronouns, auxiliaries,
# number words): spaCy does not tag them NOUN / PROPN even when capitalised in a title.
NON_NOUN_WORDS = frozenset("""
a an the and or nor but if so as of for with without within in on at to by from into onto
over under up down out off per plus than via vs versus about above after against along
among around before behind below beneath beside besides between beyond during except
inside near outside since through throughout toward towards until upon while
this that these those its it is are be was were been am not no all any each every both
either neither some such only own same too very can will just your you our we they them
their his her him she he who whom which what when where why how my me i us
one two three four five six seven eight nine ten eleven twelve twenty hundred
""".split())
# Runs of letters (spaCy splits "T-Shirt" into T, -, Shirt and "Men's" into Men, 's).
_LETTER_RUN = re.compile(r"[^\W\d_]+")
_CLITICS = frozenset({"s", "t", "d", "ll", "re", "ve", "m"})


# thefuzz's `ascii_only` deletes these code points (it does not transliterate them).
_LATIN1_HIGH = {code: None for code in range(128, 256)}

GoalOption = str | tuple[str, str]


def normalize_color(value: GoalOption) -> GoalOption:
  """The first colour word `in` the value, else the value (upstream's normalize_color).

  On a string `in` is a substring test; on a (name, value) pair it is an element test, so
  a pair only reduces when its value (or name) is exactly a colour word.
  """
  for color in COLOR_SET:
    if color in value:
      return color
  return value


def fuzzy_process(text: object) -> str:
  """thefuzz's full_process(text, force_ascii=True): str(), drop U+0080..U+00FF, clean."""
  return fuzz_utils.default_process(str(text).translate(_LATIN1_HIGH))


def fuzzy_ratio(a: object, b: object) -> int:
  """thefuzz's `fuzz.token_set_ratio(a, b)`: an integer in [0, 100]."""
  return int(round(fuzz.token_set_ratio(fuzzy_process(a), fuzzy_process(b))))


def heuristic_title_nouns(title: str) -> set[str]:
  """The title's words spaCy would likely tag NOUN / PROPN (see the module docstring)."""
  nouns = set()
  for m in _LETTER_RUN.finditer(title):
    word = m.group().lower()
    after_apostrophe = m.start() > 0 and title[m.start() - 1] in "'\u2019"
    if word in NON_NOUN_WORDS or (after_apostrophe and word in _CLITICS):
      continue
    nouns.add(word)
  return nouns


@functools.lru_cache(maxsize=4)
def _spacy_pipeline(name: str):
  try:
    import spacy  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(f"{TITLE_NOUNS_ENV}={name!r} needs spaCy (pip install spacy) and "
                       f"that pipeline ({_SPACY_HINT})") from e
  try:
    return spacy.load(name, disable=["parser", "ner", "lemmatizer"])
  except OSError as e:
    raise RuntimeError(f"{TITLE_NOUNS_ENV}={name!r}: spaCy has no pipeline {name!r} "
                       f"installed ({_SPACY_HINT}).") from e


@functools.lru_cache(maxsize=100_000)
def _spacy_title_nouns(name: str, title: str) -> frozenset[str]:
  return frozenset(t.text.lower() for t in _spacy_pipeline(name)(title)
                   if t.pos_ in ("NOUN", "PROPN"))


def title_nouns(title: str) -> set[str]:
  """The title's nouns: spaCy's when $EMPG_WEBSHOP_TITLE_NOUNS names a pipeline, else the
  heuristic's."""
  mode = os.environ.get(TITLE_NOUNS_ENV, "heuristic").strip() or "heuristic"
  if mode == "heuristic":
    return heuristic_title_nouns(title)
  return set(_spacy_title_nouns(mode, title))


@dataclasses.dataclass(frozen=True)
class TypeReward:
  r_type: float
  query_match: bool
  category_match: bool
  title_score: float


def type_reward(product_query: str, product_category: str, product_title: str,
                goal_query: str, goal_category: str, goal_name: str) -> TypeReward:
  """r_type: 1.0, 0.5 without query/category/title evidence, 0.1 / 0.0 for weak titles."""
  query_match = product_query == goal_query
  product_levels = {x.strip() for x in product_category.split("›")}
  goal_levels = {x.strip() for x in goal_category.split("›")}
  category_match = len(product_levels & goal_levels) >= 2
  goal_nouns = title_nouns(goal_name)
  if goal_nouns:
    title_score = len(goal_nouns & title_nouns(product_title)) / len(goal_nouns)
  else:
    title_score = 0.2
  r_type = 1.0
  if not (query_match or category_match or title_score > 0.2):
    r_type = 0.5
  if title_score < 0.1:
    r_type = 0.1
  if title_score == 0.0:
    r_type = 0.0
  return TypeReward(r_type, query_match, category_match, title_score)


def count_attribute_matches(goal_attributes: Sequence[str],
                            product_attributes: Sequence[str], product_title: str,
                            product_bullets: Sequence[str],
                            product_description: str) -> int:
  """Goal attributes found fuzzily in p's attributes, or verbatim in its text."""
  title = product_title.lower()
  bullets = " ".join(product_bullets).lower()
  description = product_description.lower()
  matches = 0
  for goal_attr in goal_attributes:
    if any(fuzzy_ratio(p_attr, goal_attr) > FUZZY_MATCH_THRESHOLD
           for p_attr in product_attributes):
      matches += 1
    elif goal_attr in title or goal_attr in bullets or goal_attr in description:
      matches += 1
  return matches


def goal_option_values(goal_options: Mapping[str, str] | Sequence[str]) -> list[str]:
  """Goal options as a list of values: a dict's values ({name: value}) or the list."""
  if isinstance(goal_options, Mapping):
    return [str(v) for v in goal_options.values()]
  return [str(v) for v in goal_options]


def goal_option_items(goal_options: Mapping[str, str] | Sequence[str]
                      ) -> list[GoalOption]:
  """The goal options upstream's matcher sees: a dict's (name, value) pairs, or the list."""
  if isinstance(goal_options, Mapping):
    return [(str(k), str(v)) for k, v in goal_options.items()]
  return [str(v) for v in goal_options]


def count_option_matches(goal_options: Mapping[str, str] | Sequence[str],
                         chosen_options: Iterable[str]) -> int:
  """Goal options matched by some chosen value, both colour-reduced first (upstream)."""
  chosen = [normalize_color(o) for o in chosen_options]
  matches = 0
  for goal_option in goal_option_items(goal_options):
    goal_option = normalize_color(goal_option)
    if any(fuzzy_ratio(c, goal_option) > FUZZY_MATCH_THRESHOLD for c in chosen):
      matches += 1
  return matches


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
  """R and its terms, for logging and tests."""
  reward: float
  r_type: float
  num_attribute_matches: int
  num_option_matches: int
  r_price: int
  title_score: float
  query_match: bool
  category_match: bool


def purchase_reward(product: Any, goal: Mapping[str, Any], price: float,
                    chosen_options: Mapping[str, str]) -> RewardBreakdown:
  """R for buying `product` at `price` with `chosen_options` {name: value} for `goal`.

  Args:
    product: a `data.Product` (title, description, bullets, attributes, query,
      product_category).
    goal: a WebShop goal dict (`attributes`, `goal_options`, `price_upper`, `query`,
      `product_category`, `name`).
    price: the price the product sells at (a range's sampled price).
    chosen_options: options clicked on the product page.
  """
  t = type_reward(product.query, product.product_category, product.title,
                  goal["query"], goal["product_category"], goal["name"])
  goal_attributes = list(goal["attributes"])
  goal_options = goal["goal_options"]
  n_attr = count_attribute_matches(goal_attributes, product.attributes, product.title,
                                   product.bullets, product.description)
  n_opt = count_option_matches(goal_options, chosen_options.values())
  r_price = int(price <= float(goal["price_upper"]))
  total = (n_attr + n_opt + r_price) / (len(goal_attributes) + len(goal_options) + 1)
  return RewardBreakdown(
      reward=total * t.r_type, r_type=t.r_type, num_attribute_matches=n_attr,
      num_option_matches=n_opt, r_price=r_price, title_score=t.title_score,
      query_match=t.query_match, category_match=t.category_match)

