"""Talk to a trained model in the terminal: `refinery chat` (operator/refinery_operator/cli.py).

    session = ChatSession.load(Path("runs/tiny-chat/rlhf/model"), template="chat")
    session.reply("What does the cow say?", stream=sys.stdout)   # tokens printed as they come
    session.reply("And the duck?")                               # multi-turn: the history is kept

`template="chat"` renders the conversation with the tokenizer's chat template (multi-turn);
`"plain"` sends the text as it is, as a model trained on plain prompts (the example pipeline)
saw them — one turn at a time, since such a model never learned where a turn ends.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from .export.bundle import check_complete

Template = Literal["chat", "plain"]


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    template: Template = "chat"
    max_new_tokens: int = 64
    temperature: float = 0.0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, model_dir: Path, **kwargs) -> ChatSession:
        """Refuses (ModelError) a folder without config, weights or tokenizer."""
        from transformers.utils import logging as hf_logging

        from .modeling import load_model
        from .tokenizer import load_tokenizer

        hf_logging.disable_progress_bar()  # "Loading weights" bars would mix with the conversation
        check_complete(model_dir)
        return cls(load_model(model_dir).eval(), load_tokenizer(model_dir), **kwargs)

    def prompt_ids(self, text: str):
        if self.template == "plain":
            return self.tokenizer(text, return_tensors="pt")["input_ids"]
        messages = [*self.history, {"role": "user", "content": text}]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return ids["input_ids"]

    def reply(self, text: str, stream: TextIO | None = None) -> str:
        """The model's answer to `text` (streamed to `stream` token by token when given)."""
        import torch
        from transformers import TextIteratorStreamer

        input_ids = self.prompt_ids(text)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature else {"do_sample": False}
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.max_new_tokens,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                      streamer=streamer, **sampling)
        worker = threading.Thread(target=self._generate, kwargs=kwargs, daemon=True)
        worker.start()
        parts = []
        for piece in streamer:  # generate() runs in the worker; tokens arrive here as they are decoded
            parts.append(piece)
            if stream is not None:
                stream.write(piece)
                stream.flush()
        worker.join()
        answer = "".join(parts)
        if self.template == "chat":
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer.strip()}]
        return answer

    def _generate(self, **kwargs) -> None:
        import torch

        with torch.inference_mode():
            self.model.generate(**kwargs)


def interactive(session: ChatSession, name: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """A read-reply loop: `/reset` forgets the history, `/exit` (or an empty line, or EOF) ends it."""
    stdout.write(f"chatting with {name} ({session.template} template); /reset forgets the conversation, /exit ends it\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        text = line.strip()
        if not line or not text or text == "/exit":
            stdout.write("\n")
            return 0
        if text == "/reset":
            session.history.clear()
            stdout.write("(history cleared)\n")
            continue
        stdout.write("model>")
        session.reply(text, stream=stdout)
        stdout.write("\n")
