"""A small byte-level BPE tokenizer folder with a ChatML chat template, for the chat and SFT tests."""

import json

CHAT_TEMPLATE = (
  "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
  "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = "Name a colour. Blue. Another? Red. You are helpful. What is the sea? Water. Say hi. Hi there."


def chat_tokenizer_folder(folder, vocab_size: int = 300):
  """Writes tokenizer.json (trained on WORDS, <|im_start|> and <|im_end|> special) and tokenizer_config.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator([WORDS], trainer)
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))
  config = {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  return folder
