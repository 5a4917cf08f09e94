"""The engine simulator's tokenisation rule and its deterministic text (pure Python, no Triton).

Tokenisation rule: a text is cut into pieces by PIECE, `\\s*\\S{1,4}|\\s+`: each piece is the
whitespace before it plus at most 4 non-space characters (a longer word is cut into pieces of 4),
and trailing whitespace is one piece of its own. English averages ~4.7 letters a word, so a word
and its space make ~1.4 pieces: ~4 characters a token, about what a BPE tokenizer gives.
num_input_tokens is the number of pieces of the prompt.

Generated text: token k of choice c is `" " + WORDS[i]` where i comes from a blake2b hash of
(blake2b of the prompt, seed, c, k), so it is a function of (prompt, seed, choice, position) and a
generation can be resumed exactly at any position. Every word has at most 4 characters, so a
generated text cut by PIECE gives back exactly its tokens (a multi-turn prompt that quotes an
answer has the answer's tokens).

Token ids: a generated token's id is its word's index in WORDS (0..63), so `token_text(id)` turns
ids (the model's `output_token_ids`, a continuation's `continuation_token_ids`) back into text.

Logprobs (`token_logprobs`): every position has a distribution over the 64 words, a function of the
same key as its token (prompt, seed, choice, position): the chosen word has probability p in
[0.3, 0.95], the other 63 words, in an order drawn from the key, share part (50-90 %) of the rest
in geometrically decreasing shares. So the probabilities of any words listed sum to less than 1,
a greedy token (whose shares are capped below p) is always rank 1, and a sampled one sometimes is
not: rank 2 or 3 when the first shares outweigh its p, as happens with a real model.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct

PIECE = re.compile(r"\s*\S{1,4}|\s+")

# 64 short words (each at most 4 characters, so " word" is one piece), a few with punctuation
WORDS = (
    "the", "of", "and", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "as",
    "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
    "not", "what", "all", "were", "we", "when", "your", "can", "said", "use", "an", "each", "she", "do",
    "how", "if", "will", "up", "out", "many", "then", "them", "so", "some", "her", "make", "like",
    "time", "look", "more", "day.", "now,", "way.", "yes,", "new.",
)
assert all(1 <= len(w) <= 4 for w in WORDS)

_MASK64 = (1 << 64) - 1


def pieces(text: str) -> list[str]:
    """The tokens of `text` under the simulator's rule (see the module docstring)."""
    return PIECE.findall(text)


def prompt_digest(prompt: str) -> bytes:
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()


def token_id(digest: bytes, seed: int, choice: int, position: int) -> int:
    """The id (index in WORDS) of token `position` (0-based) of choice `choice`."""
    key = digest + struct.pack("<QII", seed & _MASK64, choice, position)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % len(WORDS)


def token_logprobs(
    digest: bytes, seed: int, choice: int, position: int, k: int, greedy: bool = False
) -> dict[str, dict]:
    """The logprobs of token `position` of choice `choice` (whose id token_id gives for the same
    key) and of the k most likely words of that position but it, as Triton's vLLM backend reports
    them: {"<id>": {"logprob", "rank", "decoded_token"}, ...}, the chosen token first, the others
    best first (k + 1 entries, or k when the chosen word is among the best k). `greedy`: the chosen
    word is the most likely one (temperature 0)."""
    chosen = token_id(digest, seed, choice, position)
    key = digest + struct.pack("<QIIB", seed & _MASK64, choice, position, 1)
    bits = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    p = 0.3 + 0.65 * (bits & 0xFFFF) / 0xFFFF  # the chosen word's probability
    share = 0.5 + 0.4 * ((bits >> 16) & 0xFFFF) / 0xFFFF  # of the rest, what the other words have
    ratio = 0.3 + 0.4 * ((bits >> 32) & 0xFFFF) / 0xFFFF  # each word's probability over the one before
    first = (1 - p) * share * (1 - ratio)  # the best other word's (the 63 sum to < (1 - p) * share)
    if greedy:
        first = min(first, 0.9 * p)
    offset, stride = (bits >> 48) & 63, 2 * ((bits >> 54) & 31) + 1  # odd: a permutation of the 64 ids
    others = [w for w in ((chosen + offset + stride * j) % len(WORDS) for j in range(len(WORDS))) if w != chosen]
    rank = 1
    while rank <= len(others) and first * ratio ** (rank - 1) > p:
        rank += 1  # the other words more likely than the chosen one
    out = {str(chosen): {"logprob": math.log(p), "rank": rank, "decoded_token": token_text(chosen)}}
    for j, word in enumerate(others[:k]):
        place = j + 1 if j + 1 < rank else j + 2  # the chosen word holds place `rank`
        if place > k:
            break
        out[str(word)] = {"logprob": math.log(first * ratio ** j), "rank": place, "decoded_token": token_text(word)}
    return out


def token_text(token_id_: int) -> str:
    """The text of a generated token id: its word with a leading space."""
    return " " + WORDS[token_id_]


def is_token_id(value: int) -> bool:
    return 0 <= value < len(WORDS)


def token(digest: bytes, seed: int, choice: int, position: int) -> str:
    """Token `position` (0-based) of choice `choice`: one word with a leading space."""
    return token_text(token_id(digest, seed, choice, position))


def block_hash(parent: bytes, block: list[str]) -> bytes:
    """vLLM-style chained hash of one full KV block: hash(parent block's hash, the block's tokens)."""
    h = hashlib.blake2b(parent, digest_size=16)
    for piece in block:
        data = piece.encode("utf-8")
        h.update(struct.pack("<I", len(data)))
        h.update(data)
    return h.digest()


class StopMatcher:
    """Finds stop sequences in growing text; holds back text that could still become one
    (the same rule as the smollm2 model's: a stream never shows part of a stop sequence)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]

    def find(self, text: str, start: int = 0) -> int | None:
        """Index of the earliest stop sequence in text (searching from `start`), or None."""
        best = None
        for stop in self.stops:
            at = text.find(stop, max(0, start - len(stop) + 1))
            if at != -1 and (best is None or at < best):
                best = at
        return best

    def safe_length(self, text: str) -> int:
        """Length of the prefix of text that cannot be the start of a stop sequence."""
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return len(text) - hold
