#!/usr/bin/env python3
"""Chat-template fixtures for ftk tokenize, made by HuggingFace transformers.

For each conversation, renders the chat template of a fixture tokenizer_config.json with
transformers' apply_chat_template, and writes one JSON line:
  messages     the conversation (the last message is the assistant's reply)
  text, ids    the whole conversation (add_generation_prompt=False); ids = tokenizer(text,
               add_special_tokens=False), what apply_chat_template(tokenize=True) returns
  prompt_text, prompt_ids   messages[:-1] with add_generation_prompt=True: the prompt
The Llama-3 template in llama3-128k appends the assistant header even without
add_generation_prompt; for whole conversations that trailing header is removed (recorded as
"stripped_generation_prompt"), so text/ids end with the reply's <|eot_id|>.
The first line records the package versions.

Run from the repository root with the project venv:
  .venv/bin/python tests/oracle/chat_templates.py
writes tests/fixtures/templates/{llama3,qwen3}.jsonl.
"""
import json
import platform
import sys

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

FIX = "../shared/fixtures/tokenizers"
if len(sys.argv) > 1:
    FIX = sys.argv[1]

S = {"role": "system", "content": "You are a helpful assistant."}


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


CONVERSATIONS = [
    [u("Hello!"), a("Hi! How can I help you today?")],
    [S, u("Hello!"), a("Hi! How can I help you today?")],
    [u("What is 2+2?"), a("4"), u("And 3+3?"), a("6")],
    [S, u("What is 2+2?"), a("4"), u("And 3+3?"), a("6")],
    [{"role": "system", "content": "Answer in French."}, u("Good morning"), a("Bonjour"),
     u("Good night"), a("Bonne nuit"), u("Thank you"), a("Merci")],
    [u("Write a Python function that adds two numbers."),
     a("```python\ndef add(a, b):\n    return a + b\n```")],
    [u("用中文介绍一下你自己。"), a("我是一个乐于助人的人工智能助手。")],
    [S, u("Tell me a joke with emoji 😀"), a("Why did the 🐔 cross the road? To get to the other side! 😂")],
    [u("List three colors.\nOne per line."), a("Red\nGreen\nBlue")],
    [u("Say 'quoted' \"text\" and {{braces}}"), a("'quoted' \"text\" and {{braces}}")],
    [u("Numbers: 1234567890 and 3.14159"), a("The numbers are 1234567890 and 3.14159.")],
    [S, u("first question"), a("first answer"), u("second question"), a("second answer"),
     u("third question"), a("third answer")],
    # a reply with reasoning, and reasoning in the history (Qwen3 drops it there)
    [u("What is 7*6?"), a("<think>\n7 times 6 is 42.\n</think>\n\n42"), u("And 6*7?"),
     a("<think>\nSame thing.\n</think>\n\n42")],
]


def render(tok, name, msgs, gen):
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def main():
    versions = {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
        "python": platform.python_version(),
    }
    for name, folder in (("llama3", "llama3-128k"), ("qwen3", "qwen3-151k")):
        tok = AutoTokenizer.from_pretrained(f"{FIX}/{folder}")
        out = [json.dumps({"oracle": "tests/oracle/chat_templates.py", "tokenizer": folder, "versions": versions})]
        for msgs in CONVERSATIONS:
            text = render(tok, name, msgs, False)
            stripped = False
            header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
            if name == "llama3" and text.endswith(header):
                text = text[: -len(header)]
                stripped = True
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if not stripped:  # what apply_chat_template(tokenize=True) gives, checked
                direct = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
                if isinstance(direct, dict) or hasattr(direct, "keys"):
                    direct = direct["input_ids"]
                assert list(direct) == ids, (name, msgs)
            prompt_text = render(tok, name, msgs[:-1], True)
            prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
            out.append(json.dumps({"messages": msgs, "text": text, "ids": ids, "prompt_text": prompt_text,
                                   "prompt_ids": prompt_ids, "stripped_generation_prompt": stripped},
                                  ensure_ascii=False))
        with open(f"tests/fixtures/templates/{name}.jsonl", "w") as f:
            f.write("\n".join(out) + "\n")
        print(f"tests/fixtures/templates/{name}.jsonl: {len(out) - 1} conversations")


if __name__ == "__main__":
    main()
