"""WebShop reward R: each term, r_type tiers, colour reduction, price ranges."""

import random

import pytest

from environments.webshop import reward as rw
from environments.webshop.data import Product, selling_price

JAR = Product(
    asin="B0JAR00001", title="Zenvia Long Clear Glass Storage Jar with Airtight Lid, 32 oz",
    description="A jar that keeps pasta fresh. It is lead free.",
    bullets=("DISHWASHER SAFE: goes in the dishwasher.", "Stackable design"),
    pricing=(19.99,), price_text="$19.99",
    options={"color": ["navy blue", "clear"], "size": ["16 oz", "32 oz"]},
    attributes=("bpa free", "dishwasher safe"), category="kitchen",
    query="glass jar",
    product_category="Home & Kitchen › Kitchen & Dining › Storage › Canisters")


def _goal(**overrides):
  goal = {
      "asin": JAR.asin, "category": "kitchen", "query": "glass jar",
      "name": JAR.title, "product_category": JAR.product_category,
      "instruction_text": "i need a long clear glass jar", "attributes": ["bpa free"],
      "price_upper": 30.0, "goal_options": {"size": "32 oz"},
  }
  goal.update(overrides)
  return goal


def _r(goal, price=19.99, options=None, product=JAR):
  return rw.purchase_reward(product, goal, price, options or {})


def test_full_match_is_one():
  r = _r(_goal(), options={"size": "32 oz"})
  assert r.reward == 1.0
  assert (r.num_attribute_matches, r.num_option_matches, r.r_price) == (1, 1, 1)


def test_formula_counts_each_term_over_its_denominator():
  goal = _goal(attributes=["bpa free", "gluten free"],
               goal_options={"size": "32 oz", "color": "clear"})
  # 1 of 2 attributes, 1 of 2 options, price ok -> 3 / 5.
  assert _r(goal, options={"size": "32 oz"}).reward == pytest.approx(3 / 5)
  # Nothing chosen, price too high -> 1 / 5.
  assert _r(goal, price=99.0).reward == pytest.approx(1 / 5)


def test_attribute_matches_fuzzily_or_in_text():
  assert _r(_goal(attributes=["BPA-free"])).num_attribute_matches == 1  # fuzzy > 85
  assert _r(_goal(attributes=["lead free"])).num_attribute_matches == 1  # description
  assert _r(_goal(attributes=["stackable"])).num_attribute_matches == 1  # bullet points
  assert _r(_goal(attributes=["airtight lid"])).num_attribute_matches == 1  # title
  assert _r(_goal(attributes=["gluten free"])).num_attribute_matches == 0


def test_option_match_and_colour_reduction():
  assert _r(_goal(), options={"size": "16 oz"}).num_option_matches == 0
  assert _r(_goal(), options={"size": "32 oz"}).num_option_matches == 1
  # Both sides reduce to "blue" before the fuzzy comparison.
  assert rw.count_option_matches(["light blue"], ["navy blue"]) == 1
  assert rw.normalize_color("navy blue") == "blue"
  assert rw.normalize_color("32 oz") == "32 oz"
  assert rw.count_option_matches(["black"], ["white"]) == 0
  # A list of option values (human goals) works like a dict's values.
  assert _r(_goal(goal_options=["32 oz"]), options={"size": "32 oz"}).reward == 1.0


def test_price_term_and_price_range():
  assert _r(_goal(price_upper=30.0), price=29.99).r_price == 1
  assert _r(_goal(price_upper=30.0), price=30.0).r_price == 1
  assert _r(_goal(price_upper=30.0), price=30.01).r_price == 0
  ranged = selling_price("B0RANGE001", (10.0, 19.99), seed=3)
  assert 10.0 <= ranged <= 19.99
  assert ranged == selling_price("B0RANGE001", (10.0, 19.99), seed=3)
  assert selling_price("B0FIXED001", (25.99,), seed=3) == 25.99


@pytest.mark.parametrize("title,query,category,expected", [
    # Same query and shared nouns -> 1.0.
    ("Acme Glass Jar", "glass jar", "Home & Kitchen › Other", 1.0),
    # title_score 1/6 (only "jar"), no query or category match -> 0.5.
    ("Acme Ceramic Jar", "vase", "Garden › Pots", 0.5),
    # Same, but two shared category levels -> 1.0.
    ("Acme Ceramic Jar", "vase", "Home & Kitchen › Kitchen & Dining › Pots", 1.0),
    # No shared noun at all -> 0.0 even with the same query.
    ("Acme Ceramic Vase", "glass jar", "Home & Kitchen › Other", 0.0),
])
def test_type_reward_tiers(title, query, category, expected):
  t = rw.type_reward(query, category, title, "glass jar", JAR.product_category,
                     JAR.title)
  assert t.r_type == expected


def test_type_reward_low_title_score_tier():
  # 11 goal nouns, one shared: title_score 1/11 < 0.1 -> 0.1 whatever else matches.
  long_name = " ".join(f"widget{c}" for c in "abcdefghijk")
  t = rw.type_reward("q", "A › B", "widgeta", "q", "A › B", long_name)
  assert t.title_score == pytest.approx(1 / 11)
  assert t.query_match and t.category_match
  assert t.r_type == 0.1


def test_goal_without_nouns_scores_point_two():
  t = rw.type_reward("q", "A", "anything", "q", "B", "With and For 32")
  assert t.title_score == 0.2 and t.r_type == 1.0  # query matches


def test_title_nouns_heuristic():
  # As spaCy (en_core_web_sm 3.8.0) tags these: capitalised adjectives, colours and units
  # are PROPN / NOUN, function words and numbers are not; "T-Shirt" is two tokens.
  nouns = rw.title_nouns("Zenvia Long Clear Glass Storage Jar with Airtight Lid, 32 oz")
  assert nouns == {"zenvia", "long", "clear", "glass", "storage", "jar", "airtight", "lid",
                   "oz"}
  assert rw.title_nouns("Navy Blue T-Shirt") == {"navy", "blue", "t", "shirt"}


def test_reward_is_bounded_for_random_choices():
  rng = random.Random(0)
  values = [v for vs in JAR.options.values() for v in vs]
  for _ in range(200):
    options = {f"o{i}": rng.choice(values) for i in range(rng.randint(0, 3))}
    r = _r(_goal(attributes=rng.sample(["bpa free", "x", "lead free"], 2)),
           price=rng.uniform(0, 60), options=options).reward
    assert 0.0 <= r <= 1.0
