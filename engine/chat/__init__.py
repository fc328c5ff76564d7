"""Chat formats: the model's own template (jinja or harmony), tool-call and reasoning parsers."""

from engine.chat.format import ChatFormat
from engine.chat.parsers import ParsedOutput, ToolCall, parse_output, split_reasoning
from engine.chat.template import ChatTemplate

__all__ = ["ChatFormat", "ChatTemplate", "ParsedOutput", "ToolCall", "parse_output", "split_reasoning"]
