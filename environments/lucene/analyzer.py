"""Pyserini's default English analyzer (Lucene's), in Python (no Java).

Pyserini indexes JSON documents with its DefaultEnglishAnalyzer, and its LuceneSearcher
puts queries through the same analyzer. Upstream WebShop (pyserini 0.17.0: Anserini 0.14,
Lucene 8) and Search-R1's BM25 retriever both search that way, so both built-in search
families analyse text here (`environments/lucene/bm25.py` indexes the terms):

1. Lucene's StandardTokenizer (Unicode UAX #29 word boundaries): runs of letters, digits
   and `_`, where `.` `'` `:` join two letters (`e.g`, `don't`, `a:b`) and `.` `,` `;`
   `'` join two digits (`3.5`, `1,000`); letters and digits join directly (`16oz`);
   every other character separates. Each Han / Hiragana character is a token of its
   own; emoji are tokens.
2. EnglishPossessiveFilter: a trailing `'s` is dropped (`city's` -> `city`).
3. Lower-casing.
4. Lucene's English stop set (33 words, `STOP_WORDS`).
5. Porter stemming as Lucene's PorterStemmer does it: Martin Porter's own (reference)
   version of his algorithm, which differs from the published one (and from Snowball's
   `porter`) in step 2 (`bli` -> `ble` in place of `abli` -> `able`, and `logi` ->
   `log`: "assembly" -> "assembl"), and leaves words of one or two characters alone
   ("us" stays "us"). `_Porter` below is written from the algorithm's description.

`tests/test_webshop_search_upstream.py` pins concrete analyses taken from Lucene 8.3
(pyserini 0.17.0) and, when pyserini is installed, compares whole catalogs with it.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, which Anserini's default uses.
STOP_WORDS = frozenset("""
a an and are as at be but by for if in into is it no not of on or such that the their
then there these they this to was will with
""".split())

# Word-break classes of UAX #29 for the characters that can join two runs.
_MID_LETTER = frozenset(":\u00b7\u0387\u05f4\u2027\ufe13\ufe55\uff1a")
_MID_NUM = frozenset(",;\u037e\u0589\u060c\u060d\u066c\u07f8\u2044\ufe10\ufe14\ufe50\ufe54"
                     "\uff0c\uff1b")
_MID_NUM_LET = frozenset(".'\u2018\u2019\u2024\ufe52\uff07\uff0e")
_LETTER_JOINERS = _MID_LETTER | _MID_NUM_LET
_DIGIT_JOINERS = _MID_NUM | _MID_NUM_LET

# Han and Hiragana characters are single-character tokens in Lucene.
_IDEOGRAPHIC = ("\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                "\U00020000-\U0002fa1f")
# Runs of word characters (Python's \w: letters, digits, `_`; marks kept inside a run),
# single ideographs, and emoji with their variation selectors / joiners.
_EMOJI = ("\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2"
          "\u25aa-\u25fe\u2600-\u27bf\u2934\u2935\u2b00-\u2bff\u3030\u303d\u3297"
          "\u3299\U0001f000-\U0001faff")
# Digits that are not decimal digits (superscripts, fractions, circled): no tokens.
_OTHER_NUMBERS = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\u2460-\u24ff"


def _char_ranges(categories: tuple[str, ...], limit: int = 0x30000) -> str:
  """A regex class body of the code points below `limit` in the Unicode categories."""
  ranges, start = [], None
  for cp in range(limit + 1):
    inside = cp < limit and unicodedata.category(chr(cp)) in categories
    if inside and start is None:
      start = cp
    elif not inside and start is not None:
      ranges.append(re.escape(chr(start)) if cp - 1 == start
                    else f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
      start = None
  return "".join(ranges)


# Combining marks and format characters stay inside a word (UAX #29 rule WB4).
_MARKS = _char_ranges(("Mn", "Mc", "Me", "Cf"))
_REGIONAL = "\U0001f1e6-\U0001f1ff"
_PIECE = re.compile(
    rf"(?P<ideo>[{_IDEOGRAPHIC}])"
    rf"|(?P<flag>[{_REGIONAL}]{{1,2}})"
    rf"|(?P<keycap>[0-9#*]\ufe0f?\u20e3)"
    rf"|(?P<emoji>[{_EMOJI}](?:[\ufe0f\u200d\U0001f3fb-\U0001f3ff]+[{_EMOJI}]?)*)"
    rf"|(?P<word>(?:(?![{_IDEOGRAPHIC}{_OTHER_NUMBERS}])[\w{_MARKS}])+)")

_POSSESSIVE = ("'s", "\u2019s", "\uff07s")
_MAX_TOKEN_LENGTH = 255


def _char_class(ch: str) -> str:
  if ch.isdigit():
    return "d"
  if ch.isalpha():
    return "l"
  return "o"


def tokenize(text: str) -> list[str]:
  """StandardTokenizer's tokens of `text` (case kept)."""
  tokens: list[str] = []
  last_end = -2  # End of the last word run that may be extended by a joiner.
  for m in _PIECE.finditer(text):
    kind = m.lastgroup
    if kind != "word":
      tokens.append(m.group())
      last_end = -2
      continue
    piece = m.group()
    start = m.start()
    # Marks after a non-word character attach to it, not to the word that follows.
    while piece and not (piece[0].isalnum() or piece[0] == "_"):
      piece, start = piece[1:], start + 1
    if not piece:
      last_end = -2
      continue
    if (tokens and last_end == start - 1 and tokens[-1]):
      joiner = text[start - 1]
      left, right = _char_class(text[start - 2]), _char_class(piece[0])
      if ((left == right == "l" and joiner in _LETTER_JOINERS)
          or (left == right == "d" and joiner in _DIGIT_JOINERS)):
        tokens[-1] += joiner + piece
        last_end = m.end()
        continue
    if not any(c.isalnum() for c in piece):  # `_` alone is no token.
      last_end = -2
      continue
    tokens.append(piece)
    last_end = m.end()
  out = []
  for t in tokens:
    while len(t) > _MAX_TOKEN_LENGTH:
      out.append(t[:_MAX_TOKEN_LENGTH])
      t = t[_MAX_TOKEN_LENGTH:]
    out.append(t)
  return out


class _Porter:
  """One word's Porter stem: `b` the letters, `k` the last index, `j` a step's stem end."""

  def __init__(self, word: str):
    self.b = list(word)
    self.k = len(word) - 1
    self.j = 0

  def cons(self, i: int) -> bool:
    ch = self.b[i]
    if ch in "aeiou":
      return False
    if ch == "y":
      return i == 0 or not self.cons(i - 1)
    return True

  def m(self) -> int:
    """Number of vowel-consonant sequences in b[0..j]."""
    n, i, j = 0, 0, self.j
    while True:
      if i > j:
        return n
      if not self.cons(i):
        break
      i += 1
    i += 1
    while True:
      while True:
        if i > j:
          return n
        if self.cons(i):
          break
        i += 1
      i += 1
      n += 1
      while True:
        if i > j:
          return n
        if not self.cons(i):
          break
        i += 1
      i += 1

  def vowel_in_stem(self) -> bool:
    return any(not self.cons(i) for i in range(self.j + 1))

  def double_c(self, j: int) -> bool:
    return j >= 1 and self.b[j] == self.b[j - 1] and self.cons(j)

  def cvc(self, i: int) -> bool:
    if i < 2 or not self.cons(i) or self.cons(i - 1) or not self.cons(i - 2):
      return False
    return self.b[i] not in "wxy"

  def ends(self, s: str) -> bool:
    n = len(s)
    if n > self.k + 1 or "".join(self.b[self.k - n + 1:self.k + 1]) != s:
      return False
    self.j = self.k - n
    return True

  def set_to(self, s: str) -> None:
    self.b[self.j + 1:] = list(s)
    self.k = self.j + len(s)

  def r(self, s: str) -> None:
    if self.m() > 0:
      self.set_to(s)

  def step1ab(self) -> None:
    b = self.b
    if b[self.k] == "s":
      if self.ends("sses"):
        self.k -= 2
      elif self.ends("ies"):
        self.set_to("i")
      elif b[self.k - 1] != "s":
        self.k -= 1
    del b[self.k + 1:]
    if self.ends("eed"):
      if self.m() > 0:
        self.k -= 1
    elif (self.ends("ed") or self.ends("ing")) and self.vowel_in_stem():
      self.k = self.j
      del b[self.k + 1:]
      if self.ends("at"):
        self.set_to("ate")
      elif self.ends("bl"):
        self.set_to("ble")
      elif self.ends("iz"):
        self.set_to("ize")
      elif self.double_c(self.k):
        if b[self.k] not in "lsz":
          self.k -= 1
      elif self.m() == 1 and self.cvc(self.k):
        self.set_to("e")
    del b[self.k + 1:]

  def step1c(self) -> None:
    if self.ends("y") and self.vowel_in_stem():
      self.b[self.k] = "i"

  def _first_rule(self, rules) -> None:
    """Applies r() with the first rule whose suffix ends the word (the others not)."""
    for suffix, replacement in rules:
      if self.ends(suffix):
        self.r(replacement)
        return

  def step2(self) -> None:
    if self.k == 0:
      return
    self._first_rule(_STEP2.get(self.b[self.k - 1], ()))
    del self.b[self.k + 1:]

  def step3(self) -> None:
    self._first_rule(_STEP3.get(self.b[self.k], ()))
    del self.b[self.k + 1:]

  def step4(self) -> None:
    if self.k == 0:
      return
    ch = self.b[self.k - 1]
    if ch == "o":
      if not ((self.ends("ion") and self.j >= 0 and self.b[self.j] in "st")
              or self.ends("ou")):
        return
    elif not any(self.ends(s) for s in _STEP4.get(ch, ())):
      return
    if self.m() > 1:
      self.k = self.j
      del self.b[self.k + 1:]

  def step5(self) -> None:
    self.j = self.k
    if self.b[self.k] == "e":
      a = self.m()
      if a > 1 or (a == 1 and not self.cvc(self.k - 1)):
        self.k -= 1
    if self.b[self.k] == "l" and self.double_c(self.k) and self.m() > 1:
      self.k -= 1
    del self.b[self.k + 1:]

  def stem(self) -> str:
    if self.k > 1:
      self.step1ab()
      self.step1c()
      self.step2()
      self.step3()
      self.step4()
      self.step5()
    return "".join(self.b[:self.k + 1])


# Step 2's rules by the word's second-to-last letter, Porter's reference version.
_STEP2 = {
    "a": (("ational", "ate"), ("tional", "tion")),
    "c": (("enci", "ence"), ("anci", "ance")),
    "e": (("izer", "ize"),),
    "l": (("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
          ("ousli", "ous")),
    "o": (("ization", "ize"), ("ation", "ate"), ("ator", "ate")),
    "s": (("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous")),
    "t": (("aliti", "al"), ("iviti", "ive"), ("biliti", "ble")),
    "g": (("logi", "log"),),
}
# Step 3's rules by the word's last letter.
_STEP3 = {
    "e": (("icate", "ic"), ("ative", ""), ("alize", "al")),
    "i": (("iciti", "ic"),),
    "l": (("ical", "ic"), ("ful", "")),
    "s": (("ness", ""),),
}
# Step 4's suffixes (removed when m > 1) by the word's second-to-last letter.
_STEP4 = {
    "a": ("al",), "c": ("ance", "ence"), "e": ("er",), "i": ("ic",),
    "l": ("able", "ible"), "n": ("ant", "ement", "ment", "ent"), "s": ("ism",),
    "t": ("ate", "iti"), "u": ("ous",), "v": ("ive",), "z": ("ize",),
}


@functools.lru_cache(maxsize=200_000)
def stem(word: str) -> str:
  """Lucene's Porter stem of a lower-case token (words of <= 2 characters unchanged)."""
  if len(word) <= 2:
    return word
  return _Porter(word).stem()


def analyze(text: str) -> list[str]:
  """The terms Lucene indexes (or searches) for `text`, in order."""
  terms: list[str] = []
  # Whitespace never joins two tokens, belongs to none, and carries no marks, so each
  # whitespace-free run is analysed alone; natural text repeats its runs ("the",
  # "France.") so much that caching them makes indexing a corpus several times faster.
  for run in text.split():
    terms.extend(_analyze_run(run))
  return terms


@functools.lru_cache(maxsize=1 << 19)
def _analyze_run(run: str) -> tuple[str, ...]:
  """`analyze` of a text without whitespace."""
  terms = []
  for token in tokenize(run):
    if token[-2:].lower() in _POSSESSIVE:
      token = token[:-2]
    # Java lower-cases code point by code point: U+0130 becomes 'i', not 'i' + U+0307.
    token = token.replace("\u0130", "i").lower()
    if not token or token in STOP_WORDS:
      continue
    terms.append(stem(token))
  return tuple(terms)
