"""Answer extraction and rewards of the Search-R1 protocol.

`normalize_answer` is SQuAD's / Search-R1's: lowercase, drop punctuation, drop the
articles a/an/the, collapse whitespace. Exact match compares against every gold answer.
"""

from __future__ import annotations

import collections
import re
import string

_KINDS = ("search", "answer")
_PUNCT = set(string.punctuation)
REWARD_KINDS = ("em", "f1", "em_format")


def parse_action(text: str) -> tuple[str | None, str]:
  """First `<search>..</search>` or `<answer>..</answer>` -> (kind, stripped content).

  Search-R1's rule: the first tag pair in the response wins; no pair -> (None, '').
  The same result as the regex `<(search|answer)>(.*?)</\1>` (DOTALL) in linear time: an
  opening tag has a pair iff its closing tag occurs after it, which the last closing
  tag's position answers, so unmatched openings (hostile output) cost no rescans.
  """
  last_close = {k: text.rfind(f"</{k}>") for k in _KINDS}
  start = 0
  while True:
    found = [(i, k) for k in _KINDS if (i := text.find(f"<{k}>", start)) >= 0]
    if not found:
      return None, ""
    i, kind = min(found)
    body = i + len(kind) + 2
    if last_close[kind] >= body:
      return kind, text[body:text.find(f"</{kind}>", body)].strip()
    start = i + 1


def normalize_answer(text: str) -> str:
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCT)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def exact_match(prediction: str, golden_answers: list[str]) -> bool:
  pred = normalize_answer(prediction)
  return any(normalize_answer(g) == pred for g in golden_answers)


def f1_score(prediction: str, golden_answers: list[str]) -> float:
  """Max over gold answers of the token-level F1 of the normalised strings."""
  pred = normalize_answer(prediction).split()
  best = 0.0
  for gold in golden_answers:
    ref = normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
      continue
    precision, recall = same / len(pred), same / len(ref)
    best = max(best, 2 * precision * recall / (precision + recall))
  return best


def contains_answer(text: str, golden_answers: list[str]) -> bool:
  """Whether any normalised gold answer occurs in the normalised `text` (retrieval hit)."""
  norm = normalize_answer(text)
  return any(normalize_answer(g) and normalize_answer(g) in norm for g in golden_answers)


def episode_reward(kind: str, answer: str | None, golden_answers: list[str],
                   well_formed: bool, retrieval_hit: bool,
                   structure_format_score: float = 0.2, final_format_score: float = 0.1,
                   retrieval_score: float = 0.1) -> float:
  """Reward of a finished episode.

  Args:
    kind: 'em' (1/0), 'f1' (token F1), or 'em_format' (Search-R1's format-shaped EM:
      qa_em_format.py's scheme with structure/final-format/retrieval credits).
    answer: the answer given, or None if the episode ran out of turns.
    well_formed: every action of the episode parsed (no invalid output).
    retrieval_hit: some retrieved passage contained a gold answer.
  """
  if kind == "em":
    return float(answer is not None and exact_match(answer, golden_answers))
  if kind == "f1":
    return f1_score(answer, golden_answers) if answer is not None else 0.0
  if kind != "em_format":
    raise ValueError(f"reward_kind must be one of {REWARD_KINDS}, got {kind!r}.")
  shaped = structure_format_score + (retrieval_score if retrieval_hit else 0.0)
  if answer is None:
    return shaped if well_formed else 0.0
  if exact_match(answer, golden_answers):
    return 1.0 if well_formed else 1.0 - structure_format_score
  return shaped if well_formed else final_format_score
