"""Tiny random models and tokenizers built from config classes: no hub, no downloads."""

from __future__ import annotations

import functools
import string
from typing import Any, Tuple

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

WORDS = (
    "the a an is was it this that film movie plot great good bad dull loved hated really very "
    "not and or but of to in on for with paris france capital city berlin germany who what where "
    "when why how i you he she we they my your love hate best worst story actor actors scene end"
).split()
CORPUS = [
    "I loved this film, the plot was great.",
    "I hated this movie, the story was dull.",
    "Paris is the capital of France.",
    "Berlin is the capital city of Germany.",
    "What is the capital of France?",
    "The actors were really very good and the end was the best scene.",
    "It was not good, it was the worst film.",
] * 3

TEXT_LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
TOKEN_LABELS = {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER"}


@functools.cache
def _wordpiece() -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = specials + chars + ["##" + c for c in string.ascii_lowercase] + WORDS
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return tok


@functools.cache
def _bytelevel() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def bert_tokenizer(model_max_length: int = 64) -> Any:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_wordpiece().to_str()),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def gpt2_tokenizer(model_max_length: int = 64) -> Any:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bytelevel().to_str()),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


AUTO = {
    "feature-extraction": transformers.AutoModel,
    "text-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "fill-mask": transformers.AutoModelForMaskedLM,
    "text-generation": transformers.AutoModelForCausalLM,
    "text2text-generation": transformers.AutoModelForSeq2SeqLM,
}


def bert_config(vocab_size: int, **overrides: Any) -> Any:
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def gpt2_config(vocab_size: int, **overrides: Any) -> Any:
    kwargs = dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    kwargs.update(overrides)
    return transformers.GPT2Config(**kwargs)


def tiny(task: str, arch: str = "bert", seed: int = 0) -> Tuple[Any, Any]:
    """A tiny random ``(model, tokenizer)`` for ``task``."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        tok = gpt2_tokenizer()
        config = gpt2_config(len(tok))
        config.pad_token_id = tok.eos_token_id
    else:
        tok = bert_tokenizer()
        config = bert_config(len(tok))
        config.pad_token_id = tok.pad_token_id
    if task == "text-classification":
        config.num_labels = len(TEXT_LABELS)
        config.id2label = dict(TEXT_LABELS)
        config.label2id = {v: k for k, v in TEXT_LABELS.items()}
    if task == "token-classification":
        config.num_labels = len(TOKEN_LABELS)
        config.id2label = dict(TOKEN_LABELS)
        config.label2id = {v: k for k, v in TOKEN_LABELS.items()}
    model = AUTO[task].from_config(config).eval()
    return model, tok
