"""What a user chooses on the page, as one value that the browser keeps between visits.

The sampler names map onto the runtime's sampling parameters: each sampler
switches on its own truncation stage and leaves the others at their neutral
value, so the control a user sees is the only one that acts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SAMPLERS = ("greedy", "top-k", "top-p", "min-p")

# The controls each sampler uses; the page hides the others.
SAMPLER_CONTROLS: dict[str, frozenset[str]] = {
    "greedy": frozenset(),
    "top-k": frozenset({"temperature", "top_k", "seed"}),
    "top-p": frozenset({"temperature", "top_p", "seed"}),
    "min-p": frozenset({"temperature", "min_p", "seed"}),
}


@dataclass
class Settings:
    model: str = ""  # a model path from the catalog; "" = the first one
    backend: str = ""  # "" = the best usable backend for the model
    sampler: str = "top-p"
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.05
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    seed: int = -1  # -1: a fresh seed every turn
    system_prompt: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> Settings:
        """Settings from what a browser stored; unknown keys and values of the wrong type are ignored."""
        s = cls()
        if not isinstance(data, dict):
            return s
        for f in fields(cls):
            value = data.get(f.name)
            default = getattr(s, f.name)
            if value is None:
                continue
            try:
                value = type(default)(value)
            except (TypeError, ValueError):
                continue
            setattr(s, f.name, value)
        if s.sampler not in SAMPLERS:
            s.sampler = cls.sampler
        return s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ValueError with a sentence a user understands when a value is out of range."""
        checks = [
            (self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r} (one of {', '.join(SAMPLERS)})"),
            (self.temperature > 0 or self.sampler == "greedy", "temperature must be above 0 (or choose greedy)"),
            (self.top_k >= 1, "top-k must be at least 1"),
            (0 < self.top_p <= 1, "top-p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min-p must be in [0, 1]"),
            (self.max_new_tokens >= 1, "max new tokens must be at least 1"),
            (self.repetition_penalty > 0, "repetition penalty must be above 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for the runtime's SamplingParams (llama2.sampling)."""
        seed = None if self.seed < 0 else int(self.seed)
        if self.sampler == "greedy":
            return {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                    "repeat_penalty": self.repetition_penalty, "seed": seed}
        return {
            "temperature": self.temperature,
            "top_k": self.top_k if self.sampler == "top-k" else 0,
            "top_p": self.top_p if self.sampler == "top-p" else 1.0,
            "min_p": self.min_p if self.sampler == "min-p" else 0.0,
            "repeat_penalty": self.repetition_penalty,
            "seed": seed,
        }
