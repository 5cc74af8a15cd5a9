"""A stand-in teacher that replays stored chains: the demo's teacher when no API key is at hand.

It answers mulcot's teacher prompts with the chain a real teacher wrote for the same post (the MulCoT-RD authors'
Qwen2.5-VL-72B chains for the embedded sample). It is not a model: it cannot explain a label it did not predict,
so a post whose stored chain is wrong stays wrong after stage 2's retries. Everything it produces is recorded under
the teacher name ``replay:<source>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.annotate.chat_server import Reply, post_of
from mulcot.errors import MulcotError


@dataclass
class ReplayResponder:
    """Serve ``chains[(text, aspect)]`` for every prompt about that post."""

    chains: dict[tuple[str, str | None], str]
    source: str

    @classmethod
    def from_release(cls, folder: str | Path) -> ReplayResponder:
        """Chains from the authors' release format (JSON arrays with text, aspect and cot) in ``folder``."""
        folder = Path(folder)
        files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
        chains: dict[tuple[str, str | None], str] = {}
        for file in files:
            if not file.is_file():
                raise MulcotError(f"{file}: no stored chains to replay")
            for item in json.loads(file.read_text(encoding="utf-8")):
                if item.get("cot"):
                    chains[(item["text"].strip(), (item.get("aspect") or "").strip() or None)] = item["cot"]
        if not chains:
            raise MulcotError(f"{folder}: no stored chains to replay")
        return cls(chains=chains, source="mulcot-rd-release")

    def describe(self) -> str:
        return (f"{len(self.chains)} stored chains of the MulCoT-RD authors' Qwen2.5-VL-72B teacher, replayed "
                "(no model is called)")

    def __call__(self, body: dict[str, Any]) -> Reply:
        text, aspect = post_of(body)
        chain = self.chains.get((text.strip(), aspect.strip() if aspect else None))
        if chain is None:
            return Reply(status=404, text=None)
        return Reply(text=chain)
