"""Text and token ids for an EngineClient whose model runs elsewhere (an OpenAI-compatible server,
Ray engine replicas): the model's own tokenizer.json and chat template, read from a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class LocalTokenizer:
    """Mixin giving an EngineClient `encode`/`decode`/`special_id` and `chat_format`; call
    `_load_tokenizer(path)` (a model directory or its tokenizer.json) in `__init__`."""

    tokenizer: Any
    tokenizer_dir: Path
    _chat_format: Any

    def _load_tokenizer(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        self.tokenizer_dir = path if path.is_dir() else path.parent
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
        self._chat_format = None

    @property
    def chat_format(self) -> Any:
        """The model's chat format (engine.chat.ChatFormat), read from the local directory on first use."""
        if self._chat_format is None:
            from engine.chat import ChatFormat

            specials = tuple(t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special)
            self._chat_format = ChatFormat.from_model_dir(self.tokenizer_dir, control_tokens=specials)
        return self._chat_format

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def special_id(self, token: str) -> int:
        """The id of special token `token`; ValueError naming it when the tokenizer has none."""
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"the model's tokenizer has no special token {token!r}")
        return int(idx)
